//! The host's own MCP listing (`claude mcp list` and the like): run with a short timeout, killed
//! after it, and judged.

use super::{Check, Level};
use crate::setup::Host;
use anyhow::{Context, Result};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a host's own MCP listing may take before it is killed.
pub(crate) const HOST_LISTING_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `argv` (a host CLI's MCP listing) with `timeout`; kills its process group after.
/// Returns `(exit success, stdout + stderr)`, or `None` when it did not finish in time.
pub(super) fn run_listing(
    program: &str,
    args: &[&str],
    cwd: &Path,
    timeout: Duration,
) -> Result<Option<(bool, String)>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    // The output goes to an unlinked file, not a pipe: a server the listing started may keep
    // a pipe open after the listing is gone.
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    let out_path = std::env::temp_dir().join(format!(".keyveil-doctor-{}", hex::encode(nonce)));
    let out = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&out_path)
        .with_context(|| format!("cannot create {}", out_path.display()))?;
    let _ = std::fs::remove_file(&out_path);
    let err = out.try_clone()?;
    let mut reader = out.try_clone()?;
    let mut child = std::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .env("NO_COLOR", "1")
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {program}"))?;
    let pgid = rustix::process::Pid::from_child(&child);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() >= timeout {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The listing may have started servers of its own: the whole group goes.
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    let _ = child.wait();
    let Some(status) = status else {
        return Ok(None);
    };
    let mut text = String::new();
    use std::io::Seek;
    reader.seek(std::io::SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    reader.take(256 * 1024).read_to_end(&mut bytes)?;
    text.push_str(&String::from_utf8_lossy(&bytes));
    Ok(Some((status.success(), text)))
}

/// Drops ANSI escape sequences.
pub(super) fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// What a host's MCP listing says about keyveil.
pub(super) fn judge_listing(host: Host, cli: &str, result: Option<(bool, String)>) -> Check {
    let shown = format!("`{cli} mcp list`");
    let Some((success, text)) = result else {
        return Check {
            level: Level::Warn,
            what: format!(
                "{}: {shown} did not answer within {} s (killed)",
                host.name(),
                HOST_LISTING_TIMEOUT.as_secs()
            ),
            hint: None,
        };
    };
    let text = plain(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("keyveil"))
        .collect();
    if lines.is_empty() {
        let last = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or("no output");
        return Check::fail(
            format!(
                "{}: {shown} does not list keyveil ({}: {last})",
                host.name(),
                if success { "it says" } else { "it failed" }
            ),
            format!(
                "run `keyveil setup {}` (or `--project` in this project); the host reads the file named above",
                host.name()
            ),
        );
    }
    // The line that says the most: prefer one with a status word.
    let line = lines
        .iter()
        .copied()
        .find(|l| {
            let l = l.to_lowercase();
            [
                "connect", "pending", "fail", "error", "disabled", "enabled", "trust",
            ]
            .iter()
            .any(|w| l.contains(w))
        })
        .or_else(|| lines.first().copied())
        .unwrap_or_default();
    let low = line.to_lowercase();
    let bad = [
        "pending",
        "fail",
        "error",
        "disconnected",
        "disabled",
        "not trusted",
        "✗",
        "✘",
        "needs",
    ]
    .iter()
    .any(|w| low.contains(w));
    if bad {
        Check::fail(
            format!("{}: {shown} says: {line}", host.name()),
            match host {
                Host::Claude if low.contains("pending") => "approve the project's keyveil server: `keyveil setup claude --project` writes enabledMcpjsonServers, or run `claude` here and accept it".to_owned(),
                Host::Gemini => "trust this folder in Gemini CLI (run `gemini` here once and choose to trust it); `keyveil doctor` lists the other checks above".to_owned(),
                _ => format!("see the checks above; `{cli} mcp list` shows the host's own view"),
            },
        )
    } else {
        Check::ok(format!("{}: {shown} says: {line}", host.name()))
    }
}
