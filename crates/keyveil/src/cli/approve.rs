//! `keyveil approve`: one request at the terminal, `--web` (the approval page link), `--watch`
//! (a live approver on `/dev/tty`).
#![allow(clippy::indexing_slicing)]

use super::*;

pub(crate) async fn approve(paths: &Paths, a: ApproveArgs) -> Result<i32> {
    if a.watch {
        return watch(paths).await;
    }
    if a.web {
        return approve_web(paths, a.print).await;
    }
    let id = match a.id {
        Some(id) => id,
        None => only_pending(paths).await?,
    };
    let ttl_seconds = match &a.ttl {
        None => None,
        Some(t) => Some(parse_duration(t)?),
    };
    refuse_argv_factor(a.totp.as_ref())?;
    // A factor piped in is read first (a script); one typed at the terminal only after the card.
    let ask = |a: &ApproveArgs| {
        factor_input(
            a.passphrase_stdin,
            a.totp.as_ref(),
            a.totp_stdin,
            "Vault passphrase (or TOTP code) to approve: ",
        )
    };
    let mut input = if !a.confirm && (a.passphrase_stdin || a.totp_stdin) {
        Some(ask(&a)?)
    } else {
        None
    };
    // Show the human what they approve before asking for the factor; the approval is bound to
    // this card's digest, so what the broker grants is what was shown here.
    let d = call(paths, Request::Requests).await?;
    let Some(card) = d["requests"]
        .as_array()
        .and_then(|l| l.iter().find(|r| r["id"] == id))
        .cloned()
    else {
        return Err(Exit {
            code: 1,
            message: format!(
                "no pending request #{id}\nhint: list pending requests with `keyveil requests`"
            ),
        }
        .into());
    };
    note(crate::card::render_styled(
        &card,
        crate::card::Style::for_terminal(std::io::IsTerminal::is_terminal(&std::io::stderr())),
    ));
    let req = Request::Approve {
        request_id: id,
        card: crate::factor_proof::card_digest(&card),
        factor: None,
        confirm: a.confirm,
        ttl_seconds,
        uses: a.uses,
        any_command: a.any_command,
        prefix: a.prefix,
        subdirs: a.subdirs,
    };
    let d = if a.confirm {
        call(paths, req).await?
    } else {
        let input = match input.take() {
            Some(i) => i,
            None => ask(&a)?,
        };
        call_signed(paths, &input, req).await?
    };
    say(format!(
        "approved request #{id}: grant {} until {} ({})",
        d["grant_id"].as_str().unwrap_or(""),
        crate::when::human_time(d["expires_at"].as_str().unwrap_or("")),
        super::words::uses_left(&d["uses_left"])
    ));
    Ok(0)
}

/// The id of the one pending request, for `keyveil approve` without an id; when none or
/// several are pending, an error that lists them and says how to choose.
pub(crate) async fn only_pending(paths: &Paths) -> Result<u64> {
    let d = call(paths, Request::Requests).await?;
    let list = d["requests"].as_array().cloned().unwrap_or_default();
    match list.as_slice() {
        [] => Err(Exit {
            code: 1,
            message: "no request is pending\nhint: `keyveil approve --watch` waits for requests and shows each as it comes".into(),
        }
        .into()),
        [one] => one["id"]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("the broker sent a request without an id")),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|r| {
                    format!(
                        "  #{}  {}  env={}  from {}",
                        r["id"],
                        crate::display::clip(&crate::card::argv_inline(&r["argv"]), 80),
                        crate::display::visible(r["environment"].as_str().unwrap_or("")),
                        crate::display::visible(r["client"]["name"].as_str().unwrap_or("?")),
                    )
                })
                .collect();
            Err(Exit {
                code: 2,
                message: format!(
                    "{} requests are pending; name the one to approve:\n{}\nhint: `keyveil approve ID` (e.g. `keyveil approve {}`); `keyveil requests` shows each card",
                    many.len(),
                    lines.join("\n"),
                    many.first().map(|r| r["id"].to_string()).unwrap_or_default()
                ),
            }
            .into())
        }
    }
}

/// `approve --web`: asks the broker for a one-time link to its approval page; prints it, or
/// opens it with `xdg-open` when there is a desktop session (and `--print` is not given).
pub(crate) async fn approve_web(paths: &Paths, print_only: bool) -> Result<i32> {
    let d = call(paths, Request::WebUrl).await?;
    let Some(url) = d.get("url").and_then(serde_json::Value::as_str) else {
        bail!("the broker sent no approval-page link");
    };
    let desktop = ["DISPLAY", "WAYLAND_DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()));
    if !print_only && desktop {
        let opened = std::process::Command::new("xdg-open")
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_ok() {
            note("opened the approval page in your browser (the link works once, for 5 minutes)");
            note(
                "hint: if no browser appeared, run `keyveil approve --web --print` and open that link",
            );
            return Ok(0);
        }
    }
    say(url);
    note(
        "open this link in your browser: it works once, for 5 minutes; approving still needs your passphrase",
    );
    Ok(0)
}

/// `keyveil approve --watch`: a live approver that reads answers and the factor from
/// `/dev/tty` only, never from stdin (an agent that controls our stdin cannot answer).
pub(crate) async fn watch(paths: &Paths) -> Result<i32> {
    use std::io::BufRead;
    let tty_in = std::fs::File::open("/dev/tty").map_err(|e| Exit {
        code: 2,
        message: format!("`keyveil approve --watch` needs a terminal: cannot open /dev/tty: {e}\nhint: approve from a terminal with `keyveil approve ID`"),
    })?;
    let mut tty_out = std::fs::OpenOptions::new().write(true).open("/dev/tty")?;
    let mut lines = std::io::BufReader::new(tty_in).lines();
    let mut seen = std::collections::BTreeSet::new();
    let _ = writeln!(tty_out, "keyveil: watching for requests (Ctrl-C to stop)");
    loop {
        let d = call(paths, Request::Requests).await?;
        for r in d["requests"].as_array().cloned().unwrap_or_default() {
            let Some(id) = r["id"].as_u64() else { continue };
            if !seen.insert(id) {
                continue;
            }
            let _ = writeln!(
                tty_out,
                "\n{}",
                crate::card::render_styled(&r, crate::card::Style::for_terminal(true))
            );
            let _ = write!(
                tty_out,
                "[a]pprove once, approve for [t]30 minutes, [d]eny, [s]kip? "
            );
            let _ = tty_out.flush();
            let answer = tokio::task::block_in_place(|| lines.next())
                .transpose()?
                .unwrap_or_default();
            let (ttl, deny) = match answer.trim() {
                "a" | "A" => (None, false),
                "t" | "T" => (Some(1800), false),
                "d" | "D" => (None, true),
                _ => {
                    let _ = writeln!(tty_out, "skipped #{id}");
                    continue;
                }
            };
            let outcome = if deny {
                call(
                    paths,
                    Request::Deny {
                        request_id: id,
                        reason: Some("denied at the terminal".into()),
                    },
                )
                .await
                .map(|_| format!("denied #{id}"))
            } else {
                let input = tokio::task::block_in_place(|| {
                    factor_input(false, None, false, "Vault passphrase (or TOTP code): ")
                })?;
                call_signed(
                    paths,
                    &input,
                    Request::Approve {
                        request_id: id,
                        card: crate::factor_proof::card_digest(&r),
                        factor: None,
                        confirm: false,
                        ttl_seconds: ttl,
                        uses: None,
                        any_command: false,
                        prefix: false,
                        subdirs: false,
                    },
                )
                .await
                .map(|d| {
                    format!(
                        "approved #{id}: grant {}",
                        d["grant_id"].as_str().unwrap_or("")
                    )
                })
            };
            match outcome {
                Ok(m) => {
                    let _ = writeln!(tty_out, "{m}");
                }
                Err(e) => {
                    let _ = writeln!(tty_out, "error: {e}");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
