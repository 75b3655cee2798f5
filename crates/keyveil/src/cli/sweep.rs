//! `keyveil sweep`: find every copy of a value that already escaped, and contain it
//! (see `docs/sweep.md`). The broker sweeps; this command proves the human's factor, sends
//! the paths, and shows the findings it alone can open.
// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::{Exit, FactorArgs, auth_exit, expect, expect_ok, factor_input, note, say};
use crate::authorize;
use crate::client;
use crate::paths::Paths;
use crate::sweep::wire::SweepOutcome;
use crate::sweep::{Finding, Location};
use keyveil_proto::{Reply, Request, op};

/// `keyveil sweep [--json] [--contain] [PATHS...]`.
#[derive(Debug, Args)]
#[command(
    after_help = "Exit status: 0 nothing found, 1 found, 2 error (3: your factor was refused).

Examples:
  keyveil sweep                      # this directory (its git history too) and $HOME
  keyveil sweep ~/src --json         # every repository under ~/src, as JSON
  keyveil sweep --contain            # then revoke, mark compromised, record an incident"
)]
pub(crate) struct SweepArgs {
    /// Directories (or files) to sweep whole, with every git repository at or below them
    /// (default: the current directory; with --watch, none: only the host folders).
    pub paths: Vec<PathBuf>,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// For each variable found: revoke its grants (killing their runs; dynamic credentials are
    /// destroyed at their source), mark it compromised, record an incident in the audit log.
    #[arg(long)]
    pub contain: bool,
    /// With --contain: rewrite copies found in an agent host's text transcript (Codex, Claude
    /// Code, Gemini, Copilot, VS Code/Cursor) to `[REDACTED:ENV/NAME]`: copies of values
    /// rotated since a sweep found them, and of minted credentials (destroyed first). A current
    /// value's copies are left with a note: rotate it, then scrub. Giving this flag with your
    /// factor is your confirmation; SQLite stores are left as they are (with a note).
    #[arg(long, requires = "contain")]
    pub scrub_transcripts: bool,
    /// Do not sweep $HOME (its top-level files and dot-directories: agent transcripts, shell
    /// histories, credential files).
    #[arg(long)]
    pub no_home: bool,
    /// Keep watching agent host transcript folders, shell histories and the paths given, and
    /// report (with --contain: contain) a value within a second of it landing there. Runs
    /// until interrupted; nothing is swept first (run a sweep for what is already there).
    #[arg(long, conflicts_with = "scrub_transcripts")]
    pub watch: bool,
    /// Give up after this many seconds (default 600, at most 3600); what was left is said.
    #[arg(long, value_name = "SECONDS")]
    pub max_seconds: Option<u64>,
    /// Your factor (asked at the terminal unless given).
    #[command(flatten)]
    pub factor: FactorArgs,
}

/// Runs `keyveil sweep`: exit 0 nothing found, 1 found, 2 error (3 refused factor).
pub(crate) async fn run(paths: &Paths, a: SweepArgs) -> Result<i32> {
    match sweep(paths, a).await {
        Ok(code) => Ok(code),
        Err(e) => {
            let code = e.downcast_ref::<Exit>().map_or(2, |x| x.code);
            Err(Exit {
                code: if code == 1 || code == 0 { 2 } else { code },
                message: format!("{e:#}"),
            }
            .into())
        }
    }
}

async fn sweep(paths: &Paths, a: SweepArgs) -> Result<i32> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    // A watch watches the host folders, and only the paths given: the current directory by
    // default would put a recursive inotify watch on all of it (often the whole home).
    let given = if a.paths.is_empty() && !a.watch {
        vec![cwd.clone()]
    } else {
        a.paths.clone()
    };
    let mut roots = Vec::new();
    for p in given {
        let abs = if p.is_absolute() { p } else { cwd.join(p) };
        if !abs.exists() {
            return Err(Exit {
                code: 2,
                message: format!(
                    "no such file or directory: {}\nhint: give directories to sweep, or none for the current directory",
                    keyveil_proto::display::visible(&abs.to_string_lossy())
                ),
            }
            .into());
        }
        roots.push(abs.to_string_lossy().into_owned());
    }
    let home = if a.no_home {
        None
    } else {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .map(|h| h.to_string_lossy().into_owned())
    };
    let input = factor_input(
        a.factor.passphrase_stdin,
        a.factor.totp.as_ref(),
        a.factor.totp_stdin,
        "Vault passphrase to sweep: ",
    )?;
    let auth = authorize::authorize(paths, &input)
        .await
        .map_err(auth_exit)?;
    let body = op::Sweep {
        roots,
        home,
        contain: a.contain,
        scrub_transcripts: a.scrub_transcripts,
        recent_seconds: None,
        max_seconds: a.max_seconds,
        // A progress line on a terminal; quiet otherwise.
        progress: !a.watch && !a.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        factor: None,
    };
    if a.watch {
        let mut req = Request::SweepWatch(body);
        auth.sign(&mut req);
        return watch(paths, &auth, &req, a.json).await;
    }
    let progress = body.progress;
    let mut req = Request::Sweep(body);
    auth.sign(&mut req);
    let reply = if progress {
        expect::<op::Sweep>(with_progress(paths, &req).await?)?
    } else {
        expect::<op::Sweep>(client::call(paths, &req).await?)?
    };
    let plain = auth
        .open(b"sweep", &reply.sealed)
        .context("the findings did not come sealed from the broker that proved itself")?;
    let outcome: SweepOutcome =
        serde_json::from_slice(&plain).context("unreadable findings from the broker")?;
    if a.json {
        say(ascii_json(
            &serde_json::to_string(&outcome).unwrap_or_default(),
        ));
    } else {
        say(render(&outcome));
    }
    Ok(i32::from(!outcome.report.findings.is_empty()))
}

/// Sends `req` and draws each [`Reply::SweepProgress`] on one line of the terminal (stderr),
/// erased before the final reply is returned.
async fn with_progress(paths: &Paths, req: &Request) -> Result<Reply> {
    use std::io::Write as _;
    let mut conn = client::Connection::open(paths).await?;
    conn.send(req).await?;
    let mut drawn = false;
    let result = loop {
        let Some(ev) = conn.next().await? else {
            break Err(anyhow::anyhow!(
                "the broker closed the connection before replying"
            ));
        };
        match ev {
            client::Event::Reply(Reply::SweepProgress(p)) => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K{}", progress_line(&p));
                let _ = err.flush();
                drawn = true;
            }
            client::Event::Reply(r) if r.is_final() => break Ok(r),
            _ => {}
        }
    };
    if drawn {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K");
        let _ = err.flush();
    }
    result
}

/// One progress line: a bar of the time budget spent, and the work done so far.
pub(crate) fn progress_line(p: &op::SweepProgress) -> String {
    const WIDTH: u64 = 20;
    let filled = (p.elapsed_ms.saturating_mul(WIDTH))
        .checked_div(p.budget_ms)
        .unwrap_or(0)
        .min(WIDTH);
    format!(
        "sweeping [{}{}] {} files, {} MiB, {} git objects; {} s of at most {} s",
        "#".repeat(usize::try_from(filled).unwrap_or(0)),
        ".".repeat(usize::try_from(WIDTH - filled).unwrap_or(0)),
        p.files,
        p.bytes >> 20,
        p.git_objects,
        p.elapsed_ms / 1000,
        p.budget_ms / 1000
    )
}

/// `--watch`: prints each batch of findings as it comes; ends when the broker closes.
async fn watch(
    paths: &Paths,
    auth: &authorize::Authorized,
    req: &Request,
    json: bool,
) -> Result<i32> {
    let mut conn = client::Connection::open(paths).await?;
    conn.send(req).await?;
    let mut found = false;
    let mut hello = true;
    while let Some(ev) = conn.next().await? {
        let client::Event::Reply(reply) = ev else {
            continue;
        };
        let sealed = match reply {
            Reply::Sweep(r) => r.sealed,
            other => {
                expect_ok(other)?;
                continue;
            }
        };
        let plain = auth
            .open(b"sweep", &sealed)
            .context("the findings did not come sealed from the broker that proved itself")?;
        let o: SweepOutcome =
            serde_json::from_slice(&plain).context("unreadable findings from the broker")?;
        // The broker sends a frame every quarter second, found or not (the stream must not
        // say when something was found): most are empty, and nothing is shown for them.
        let first = std::mem::replace(&mut hello, false);
        if o.report.findings.is_empty() && o.report.notes.is_empty() && o.contained.is_empty() {
            continue;
        }
        found |= !o.report.findings.is_empty();
        if json {
            say(ascii_json(&serde_json::to_string(&o).unwrap_or_default()));
            continue;
        }
        for n in &o.report.notes {
            note(keyveil_proto::display::visible(n));
        }
        if first {
            note("watching; stop with Ctrl-C");
        }
        if o.report.findings.is_empty() && o.contained.is_empty() {
            continue;
        }
        let mut lines = Vec::new();
        if !o.report.findings.is_empty() {
            lines.push(format!(
                "{} found:",
                jiff::Timestamp::now().strftime("%H:%M:%S")
            ));
        }
        for f in &o.report.findings {
            lines.push(format!(
                "{}/{}{}",
                keyveil_proto::display::visible(&f.environment),
                keyveil_proto::display::visible(&f.variable),
                line(f)
            ));
        }
        let mut contained = o.clone();
        contained.report.findings.clear();
        let tail = render(&contained);
        lines.extend(
            tail.lines()
                .filter(|l| l.starts_with("contained "))
                .map(str::to_owned),
        );
        say(lines.join("\n"));
    }
    Ok(i32::from(found))
}

/// `json` with every character outside printable ASCII written as a JSON `\uXXXX` escape: a
/// planted file name may hold C1 controls (U+009B is CSI on some terminals) or bidi overrides,
/// which serde_json leaves as they are, and `--json` is often read on a terminal.
pub(crate) fn ascii_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// The human-readable report.
pub(crate) fn render(o: &SweepOutcome) -> String {
    let r = &o.report;
    let esc = |s: &str| keyveil_proto::display::visible(s);
    let mut out = Vec::new();
    let vars: std::collections::BTreeSet<(&str, &str)> = r
        .findings
        .iter()
        .map(|f| (f.environment.as_str(), f.variable.as_str()))
        .collect();
    out.push(format!(
        "sweep: {} {} of {} {} found ({} files, {} MiB, {} git {}, {} objects; {:.1} s)",
        r.findings.len(),
        if r.findings.len() == 1 {
            "copy"
        } else {
            "copies"
        },
        vars.len(),
        if vars.len() == 1 {
            "variable"
        } else {
            "variables"
        },
        r.files_scanned,
        r.bytes_scanned >> 20,
        r.repositories,
        if r.repositories == 1 {
            "repository"
        } else {
            "repositories"
        },
        r.git_objects,
        r.elapsed_ms as f64 / 1000.0
    ));
    let mut recent = false;
    for (env, var) in &vars {
        out.push(String::new());
        out.push(format!("{}/{}", esc(env), esc(var)));
        for f in r
            .findings
            .iter()
            .filter(|f| f.environment == *env && f.variable == *var)
        {
            recent |= f.recent;
            out.push(line(f));
        }
    }
    for c in &o.contained {
        let mut what = vec![format!(
            "{} {} revoked ({} {} stopped)",
            c.grants_revoked,
            if c.grants_revoked == 1 {
                "grant"
            } else {
                "grants"
            },
            c.runs_stopped,
            if c.runs_stopped == 1 { "run" } else { "runs" }
        )];
        if c.dynamic {
            what.push("its minted credentials destroyed at their source".into());
        }
        if c.marked {
            what.push("marked compromised".into());
        }
        what.extend(c.problems.iter().map(|p| format!("not done: {}", esc(p))));
        out.push(format!(
            "contained {}/{}: {}",
            esc(&c.environment),
            esc(&c.variable),
            what.join(", ")
        ));
    }
    for (path, n) in &o.scrubbed {
        out.push(format!(
            "rewrote {}: {n} {} now [REDACTED:...]",
            esc(path),
            if *n == 1 { "copy" } else { "copies" }
        ));
    }
    for n in &o.scrub_notes {
        out.push(format!("not rewritten: {}", esc(n)));
    }
    if r.truncated {
        out.push(String::new());
        out.push("incomplete: parts were left out:".into());
        out.extend(r.notes.iter().map(|n| format!("  {}", esc(n))));
    }
    if recent {
        out.push(String::new());
        out.push("* changed in the last 24 h: if you did not put the value there yourself, something may be probing the sweep with planted guesses; rotate the value either way".into());
    }
    if !r.findings.is_empty() {
        out.push(String::new());
        if o.contained.is_empty() {
            out.push("hint: rotate each value at its source and store the new one (`keyveil set ENV NAME`); `keyveil sweep --contain` also revokes its grants and marks it compromised; then delete the copies (for git history: rewrite it, e.g. with git filter-repo, and expire the reflog)".into());
        } else {
            out.push("hint: rotate each value at its source and store the new one (`keyveil set ENV NAME`), then delete the copies (for git history: rewrite it, e.g. with git filter-repo, and expire the reflog)".into());
        }
    }
    out.join("\n")
}

/// One finding on one line: kind, place, form (never a value).
fn line(f: &Finding) -> String {
    let esc = |s: &str| keyveil_proto::display::visible(s);
    let mark = if f.recent { "*" } else { " " };
    let what = match f.credential.as_str() {
        "minted" => " (a minted credential of a live grant)",
        "admin" => " (the dynamic variable's admin credential)",
        "former" => " (the value it had when a sweep found it, replaced since)",
        "former-unverified" => {
            " (the value it had when a sweep found it, stored without your factor, replaced since)"
        }
        _ => "",
    };
    let form = match f.form.as_str() {
        "raw" | "git-object" => String::new(),
        other => format!(" [{}]", esc(other)),
    };
    let place = match &f.location {
        Location::File { path, lines } => {
            let l = match lines.as_slice() {
                [] => String::new(),
                [one] => format!(" line {one}"),
                many => format!(
                    " lines {}",
                    many.iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            format!("{}{l}", esc(path))
        }
        Location::Git {
            repo,
            object,
            object_type,
            commits,
            path,
        } => {
            let at = match commits.as_slice() {
                [] => "no ref, reflog entry or stash reaches it".to_owned(),
                [c] => format!("commit {}", short(c)),
                // Newest first: the last listed is the oldest, where the copy came in.
                [rest @ .., c] => format!("commit {} (and {} newer)", short(c), rest.len()),
            };
            let p = path
                .as_deref()
                .map(|p| format!(" {}", esc(p)))
                .unwrap_or_default();
            format!("{} {at}{p} [{object_type} {}]", esc(repo), short(object))
        }
    };
    format!("  {mark}{:<15} {place}{form}{what}", f.kind)
}

fn short(oid: &str) -> &str {
    oid.get(..12).unwrap_or(oid)
}
