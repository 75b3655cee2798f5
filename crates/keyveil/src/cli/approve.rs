//! `keyveil approve`: one request at the terminal, `--web` (the approval page link), `--watch`
//! (a live approver on `/dev/tty`).
#![allow(clippy::indexing_slicing)]

use super::*;
use keyveil_proto::op;

pub(crate) async fn approve(paths: &Paths, a: ApproveArgs) -> Result<i32> {
    if a.watch {
        return watch(paths).await;
    }
    if a.web {
        return approve_web(paths, a.print).await;
    }
    let ttl_seconds = match &a.ttl {
        None => None,
        Some(t) => Some(parse_duration(t)?),
    };
    // A locked vault: an agent's ask waits as a number; one passphrase entry unlocks and approves.
    // (A status this client cannot read is left to the ordinary path, which says what is wrong.)
    if let Ok(status) = call(paths, op::Status).await
        && status.locked
        && let Some(ask) = locked_ask(a.id, status.locked_asks)?
    {
        return approve_locked(paths, &a, ask, ttl_seconds).await;
    }
    let id = match a.id {
        Some(id) => id,
        None => only_pending(paths).await?,
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
    let d = call(paths, op::Requests).await?;
    let Some(card) = d.requests.into_iter().find(|r| r.id == id) else {
        return Err(Exit {
            code: 1,
            message: format!(
                "no pending request #{id}\nhint: list pending requests with `keyveil requests`"
            ),
        }
        .into());
    };
    let st = crate::card::Style::for_terminal(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    note(crate::card::render_styled(&card, st));
    note(crate::card::recap(&card, st));
    // Hidden names: the card shows aliases; the factor reveals the real ones before a yes.
    let hidden = !a.confirm && hides_names(paths, &card.environment).await;
    let req = op::Approve {
        request_id: id,
        card: crate::factor_proof::request_card_digest(&card),
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
        if hidden {
            let from_stdin = a.passphrase_stdin || a.totp_stdin;
            match approve_revealing(paths, &input, req, from_stdin).await? {
                Some(d) => d,
                None => return Ok(1),
            }
        } else {
            call_signed(paths, &input, req).await?
        }
    };
    say(format!(
        "approved request #{id}: grant {} until {} ({})",
        d.grant_id,
        crate::when::human_time(&d.expires_at.to_string()),
        super::words::uses_left(d.uses_left)
    ));
    Ok(0)
}

/// The ask to approve while the vault is locked: the one named, or the only one; `None` when
/// there is none (the ordinary path then says the vault is locked).
///
/// # Errors
/// Several wait and none was named.
fn locked_ask(id: Option<u64>, asks: Vec<op::LockedAsk>) -> Result<Option<op::LockedAsk>> {
    if let Some(id) = id {
        return Ok(asks.into_iter().find(|a| a.id == id));
    }
    if asks.len() > 1 {
        let lines: Vec<String> = asks
            .iter()
            .map(|a| format!("  {}", locked_line(a)))
            .collect();
        return Err(Exit {
            code: 2,
            message: format!(
                "the vault is locked and {} requests wait for it; name the one to approve:\n{}\nhint: `keyveil approve ID` (e.g. `keyveil approve {}`)",
                asks.len(),
                lines.join("\n"),
                asks.first().map(|a| a.id.to_string()).unwrap_or_default()
            ),
        }
        .into());
    }
    Ok(asks.into_iter().next())
}

/// One line about a locked ask (every part is the agent's text, escaped).
fn locked_line(a: &op::LockedAsk) -> String {
    use keyveil_proto::display::{clip, visible};
    format!(
        "#{}  {}  env={}  from {}",
        a.id,
        clip(
            &crate::card::argv_words(a.argv.iter().map(String::as_str)),
            80
        ),
        visible(&a.environment),
        visible(&a.client),
    )
}

/// What is known of an ask while the vault is locked, for the human's terminal.
fn locked_card(a: &op::LockedAsk) -> String {
    use keyveil_proto::display::{visible, visible_text};
    let mut out = format!(
        "request #{} (asked while the vault is locked)\n  client:      {}\n  environment: {}\n  variables:   {}\n  command:     {}\n  cwd:         {}\n",
        a.id,
        visible(&a.client),
        visible(&a.environment),
        match &a.variables {
            None => "all of the environment".to_owned(),
            Some(v) => v.iter().map(|n| visible(n)).collect::<Vec<_>>().join(", "),
        },
        crate::card::argv_words(a.argv.iter().map(String::as_str)),
        visible(&a.cwd),
    );
    if !a.pass_env.is_empty() {
        out.push_str(&format!(
            "  pass-env:    {}\n",
            a.pass_env
                .iter()
                .map(|n| visible(n))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(n) = a.stdin_bytes {
        out.push_str(&format!(
            "  stdin:       supplied by the requester ({n} bytes); shown on the full card after the unlock\n"
        ));
    }
    if let Some(r) = &a.reason {
        out.push_str(&format!("  reason:      {}\n", visible_text(r)));
    }
    out.push_str(
        "  (pins and risk flags are shown from the unlocked vault before anything is granted)",
    );
    out
}

/// Whether `card` (a request of the unlocked broker) is the call the locked card showed: the
/// same client, environment, argv and cwd, and no more than it showed: the same variables
/// (when it named them), pass-through names and standard input (present or not, and its length:
/// the locked broker's digest of it is keyed by that broker's own key, which the unlock, a new
/// broker, does not have; the text itself is shown on the full card before the yes, and the
/// approval binds that card's digest). The agent may send other calls with the same argv first;
/// the one the human read is the one approved.
fn same_as_locked(card: &op::RequestCard, ask: &op::LockedAsk) -> bool {
    let variables = ask.variables.as_ref().is_none_or(|v| {
        let mut v = v.clone();
        v.sort();
        v.dedup();
        let mut shown = card.variables.clone();
        shown.sort();
        v == shown
    });
    let mut pass_env = card.pass_env.clone();
    pass_env.sort();
    pass_env.dedup();
    card.client.name == ask.client
        && card.environment == ask.environment
        && card.argv.as_ref() == Some(&ask.argv)
        && card.cwd == ask.cwd
        && variables
        && pass_env == ask.pass_env
        && card.stdin.as_ref().map(|s| s.bytes) == ask.stdin_bytes
}

/// How long `approve` waits, after unlocking, for the agent's call to reach the unlocked broker.
const AGAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `keyveil approve` of an ask made while the vault is locked: shows what the agent sent,
/// reads the passphrase once (terminal or `--passphrase-stdin`), unlocks (a broker of our own,
/// as `keyveil unlock`), waits for the agent's call to come again, shows that request's full
/// card, asks for a yes on the same channel as the passphrase, and approves it signed with the
/// same passphrase. The factor is as required as ever: only the passphrase unlocks, and the
/// approval carries its proof and the digest of the card shown.
async fn approve_locked(
    paths: &Paths,
    a: &ApproveArgs,
    ask: op::LockedAsk,
    ttl_seconds: Option<u64>,
) -> Result<i32> {
    if a.confirm || a.totp.is_some() || a.totp_stdin {
        return Err(Exit {
            code: 2,
            message: "the vault is locked: only the passphrase unlocks it (neither a TOTP code nor --confirm can)\nhint: run `keyveil approve` without --totp/--confirm and type the passphrase".into(),
        }
        .into());
    }
    note(locked_card(&ask));
    let pass = read_secret_line(
        a.passphrase_stdin,
        &format!(
            "Vault passphrase (unlocks the vault and approves #{}): ",
            ask.id
        ),
    )?;
    authorize::unlock(paths, pass.clone())
        .await
        .map_err(auth_exit)?;
    note(format!(
        "unlocked; waiting for the agent to ask again (up to {} s)",
        AGAIN_WAIT.as_secs()
    ));
    let deadline = tokio::time::Instant::now() + AGAIN_WAIT;
    let card = loop {
        let d = call(paths, op::Requests).await?;
        if let Some(c) = d.requests.into_iter().find(|r| same_as_locked(r, &ask)) {
            break c;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Exit {
                code: 1,
                message: format!(
                    "the vault is unlocked, but the agent did not ask again within {} s; nothing was approved\nhint: when it asks, approve with `keyveil approve` (the vault stays unlocked)",
                    AGAIN_WAIT.as_secs()
                ),
            }
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let st = crate::card::Style::for_terminal(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    note(crate::card::render_styled(&card, st));
    note(crate::card::recap(&card, st));
    let hidden = hides_names(paths, &card.environment).await;
    if !hidden && !confirm_approval(a.passphrase_stdin, card.id)? {
        return Ok(1);
    }
    let req = op::Approve {
        request_id: card.id,
        card: crate::factor_proof::request_card_digest(&card),
        factor: None,
        confirm: false,
        ttl_seconds,
        uses: a.uses,
        any_command: a.any_command,
        prefix: a.prefix,
        subdirs: a.subdirs,
    };
    let input = FactorInput::Passphrase(pass);
    let d = if hidden {
        // The same yes, after the real names (the passphrase typed once proves the factor).
        match approve_revealing(paths, &input, req, a.passphrase_stdin).await? {
            Some(d) => d,
            None => return Ok(1),
        }
    } else {
        call_signed(paths, &input, req).await?
    };
    say(format!(
        "approved request #{}: grant {} until {} ({})",
        card.id,
        d.grant_id,
        crate::when::human_time(&d.expires_at.to_string()),
        super::words::uses_left(d.uses_left)
    ));
    Ok(0)
}

/// Whether `env`'s policy hides its names (readable without the factor). A policy that cannot
/// be read counts as not hiding them: the card then stays as shown, with aliases.
async fn hides_names(paths: &Paths, env: &str) -> bool {
    call(
        paths,
        op::PolicyShow {
            environment: env.to_owned(),
        },
    )
    .await
    .is_ok_and(|p| p.policy.hide_names)
}

/// Asks "Approve request #ID as shown? [y/N]" (see [`read_yes`] for where the answer comes
/// from); on anything but a yes, says the request stays pending. The one confirmation of the
/// locked approve and of the hidden-names reveal.
fn confirm_approval(from_stdin: bool, id: u64) -> Result<bool> {
    let question = format!("Approve request #{id} as shown? [y/N] ");
    let yes = tokio::task::block_in_place(|| read_yes(from_stdin, &question))?;
    if !yes {
        say(format!(
            "not approved; request #{id} stays pending (`keyveil approve {id}` or `keyveil deny {id}`)"
        ));
    }
    Ok(yes)
}

/// The real names of a request's variables, for the human who proved the factor.
fn revealed_lines(names: &[op::RevealedName]) -> String {
    use keyveil_proto::display::visible;
    let mut out = String::from("variables (real names, shown only to you):");
    for n in names {
        out.push_str(&format!(
            "\n  {} = {}",
            visible(&n.alias),
            visible(&n.real_name)
        ));
    }
    out
}

/// Approves `req` where the environment hides its names: the broker checks the factor `input`
/// and holds the approval (`op::ApproveReveal`; nothing is granted yet), the real names of the
/// request's variables come back sealed for this process and are shown, and only a yes
/// ([`confirm_approval`]) sends the one-time ticket that grants it (`op::ApproveConfirm`).
/// `Ok(None)`: the human said no; the request stays pending and the ticket lapses.
async fn approve_revealing(
    paths: &Paths,
    input: &FactorInput,
    req: op::Approve,
    from_stdin: bool,
) -> Result<Option<op::Approved>> {
    let id = req.request_id;
    let auth = authorize::authorize(paths, input)
        .await
        .map_err(auth_exit)?;
    let mut r = Request::ApproveReveal(op::ApproveReveal {
        request_id: id,
        card: req.card,
        factor: None,
        ttl_seconds: req.ttl_seconds,
        uses: req.uses,
        any_command: req.any_command,
        prefix: req.prefix,
        subdirs: req.subdirs,
    });
    auth.sign(&mut r);
    let held = expect::<op::ApproveReveal>(client::call(paths, &r).await?)?;
    let plain = auth
        .open(b"approve_reveal", &held.sealed)
        .context("the names did not come sealed from the broker that proved itself")?;
    let revealed: op::HeldReveal = serde_json::from_slice(&plain).context("unreadable names")?;
    note(revealed_lines(&revealed.names));
    if !confirm_approval(from_stdin, id)? {
        return Ok(None);
    }
    let d = call(
        paths,
        op::ApproveConfirm {
            request_id: id,
            ticket: revealed.ticket,
        },
    )
    .await?;
    Ok(Some(d))
}

/// A yes/no answer: the next line of stdin when the factor came from stdin (a script), else a
/// line typed at `/dev/tty` (never stdin, which an agent may feed).
fn read_yes(from_stdin: bool, question: &str) -> Result<bool> {
    use std::io::BufRead;
    let mut line = String::new();
    if from_stdin {
        std::io::stdin().lock().read_line(&mut line)?;
    } else {
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
            .map_err(|e| Exit {
                code: 2,
                message: format!("cannot open the terminal: {e}\nhint: approve from a terminal, or pipe the passphrase and the answer with --passphrase-stdin"),
            })?;
        let mut out = &tty;
        write!(out, "{question}")?;
        out.flush()?;
        std::io::BufReader::new(&tty).read_line(&mut line)?;
    }
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The id of the one pending request, for `keyveil approve` without an id; when none or
/// several are pending, an error that lists them and says how to choose.
pub(crate) async fn only_pending(paths: &Paths) -> Result<u64> {
    let list = call(paths, op::Requests).await?.requests;
    match list.as_slice() {
        [] => Err(Exit {
            code: 1,
            message: "no request is pending\nhint: `keyveil approve --watch` waits for requests and shows each as it comes".into(),
        }
        .into()),
        [one] => Ok(one.id),
        many => {
            let lines: Vec<String> = many
                .iter()
                .map(|r| {
                    format!(
                        "  #{}  {}  env={}  from {}",
                        r.id,
                        keyveil_proto::display::clip(
                            &match &r.argv {
                                None => "ANY COMMAND".to_owned(),
                                Some(argv) => {
                                    crate::card::argv_words(argv.iter().map(String::as_str))
                                }
                            },
                            80
                        ),
                        keyveil_proto::display::visible(&r.environment),
                        keyveil_proto::display::visible(&r.client.name),
                    )
                })
                .collect();
            Err(Exit {
                code: 2,
                message: format!(
                    "{} requests are pending; name the one to approve:\n{}\nhint: `keyveil approve ID` (e.g. `keyveil approve {}`); `keyveil requests` shows each card",
                    many.len(),
                    lines.join("\n"),
                    many.first().map(|r| r.id.to_string()).unwrap_or_default()
                ),
            }
            .into())
        }
    }
}

/// `approve --web`: asks the broker for a one-time link to its approval page; prints it, or
/// opens it with `xdg-open` when there is a desktop session (and `--print` is not given).
pub(crate) async fn approve_web(paths: &Paths, print_only: bool) -> Result<i32> {
    let d = call(paths, op::WebUrl).await?;
    let url = d.url.as_str();
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

/// The longer grant `approve --watch` offers (`8`): 8 hours, in seconds.
const WATCH_LONG_TTL: u64 = 8 * 3600;

/// Reads one key from the terminal `tty` without waiting for Enter: the terminal is put in raw
/// mode for that one read and given its settings back before returning (also on Ctrl-C, which
/// comes back as `'\u{3}'`). `None` when `tty` is not a terminal or cannot be switched.
fn read_key(tty: &std::fs::File) -> Option<char> {
    use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
    use std::io::Read;
    let saved = tcgetattr(tty).ok()?;
    let mut raw = saved.clone();
    raw.make_raw();
    tcsetattr(tty, OptionalActions::Now, &raw).ok()?;
    let mut b = [0u8; 1];
    let got = (&*tty).read(&mut b);
    let _ = tcsetattr(tty, OptionalActions::Now, &saved);
    match got {
        Ok(1) => Some(char::from(b[0])),
        _ => Some('\u{4}'),
    }
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
    let mut lines = std::io::BufReader::new(tty_in.try_clone()?).lines();
    let mut seen = std::collections::BTreeSet::new();
    let _ = writeln!(tty_out, "keyveil: watching for requests (Ctrl-C to stop)");
    loop {
        let d = call(paths, op::Requests).await?;
        for r in d.requests {
            let id = r.id;
            if !seen.insert(id) {
                continue;
            }
            // The bell (BEL) first, so a terminal in the background flags the new request.
            let _ = writeln!(
                tty_out,
                "\u{7}\n{}",
                crate::card::render_styled(&r, crate::card::Style::for_terminal(true))
            );
            let _ = write!(
                tty_out,
                "[a]pprove once, for [t]30 minutes or [8] hours, [d]eny, [s]kip? "
            );
            let _ = tty_out.flush();
            // One key, no Enter (a terminal in raw mode for that one read); a line where the
            // terminal cannot do that.
            let answer = match tokio::task::block_in_place(|| read_key(&tty_in)) {
                Some(k) => k,
                None => tokio::task::block_in_place(|| lines.next())
                    .transpose()?
                    .unwrap_or_default()
                    .trim()
                    .chars()
                    .next()
                    .unwrap_or('s'),
            };
            let _ = writeln!(tty_out, "{}", answer.escape_default());
            let (ttl, deny) = match answer {
                'a' | 'A' => (None, false),
                't' | 'T' => (Some(1800), false),
                '8' => (Some(WATCH_LONG_TTL), false),
                'd' | 'D' => (None, true),
                // Ctrl-C, Ctrl-D (raw mode turns them into keys).
                '\u{3}' | '\u{4}' => {
                    let _ = writeln!(tty_out, "stopped watching");
                    return Ok(130);
                }
                _ => {
                    let _ = writeln!(tty_out, "skipped #{id}");
                    continue;
                }
            };
            let outcome = if deny {
                call(
                    paths,
                    op::Deny {
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
                let req = op::Approve {
                    request_id: id,
                    card: crate::factor_proof::request_card_digest(&r),
                    factor: None,
                    confirm: false,
                    ttl_seconds: ttl,
                    uses: None,
                    any_command: false,
                    prefix: false,
                    subdirs: false,
                };
                if hides_names(paths, &r.environment).await {
                    approve_revealing(paths, &input, req, false)
                        .await
                        .map(|d| match d {
                            Some(d) => format!("approved #{id}: grant {}", d.grant_id),
                            None => format!("#{id} left pending"),
                        })
                } else {
                    call_signed(paths, &input, req)
                        .await
                        .map(|d| format!("approved #{id}: grant {}", d.grant_id))
                }
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
