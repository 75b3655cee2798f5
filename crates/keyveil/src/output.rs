//! What every command line entry point shares, below `cli/` (which dispatches) and the
//! commands that live elsewhere (`setup`, `demo`): printing results (`say`, `note`), an error
//! that carries its exit code ([`Exit`]), and a broker reply turned into data or that error.

use std::io::Write;

use anyhow::{Result, bail};
use keyveil_proto::Reply;
use serde_json::Value;

/// An error that carries its exit code.
#[derive(Debug)]
pub(crate) struct Exit {
    /// Exit code.
    pub code: i32,
    /// Message (may end with `hint:` lines).
    pub message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// Writes a line to stdout (the one place the CLI prints results).
pub(crate) fn say(s: impl AsRef<str>) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", s.as_ref());
}

/// Writes a line to stderr.
pub(crate) fn note(s: impl AsRef<str>) {
    let mut o = std::io::stderr().lock();
    let _ = writeln!(o, "{}", s.as_ref());
}

/// Turns a broker reply into data or an [`Exit`] error.
pub(crate) fn expect_ok(reply: Reply) -> Result<Value> {
    match reply {
        Reply::Ok { data } => Ok(data),
        Reply::Error {
            code,
            message,
            hint,
        } => Err(Exit {
            code: code.exit_code(),
            message: match hint {
                Some(h) => format!("{message}\nhint: {h}"),
                None => message,
            },
        }
        .into()),
        other => bail!("unexpected reply from the broker: {}", kind_of(&other)),
    }
}

fn kind_of(r: &Reply) -> &'static str {
    match r {
        Reply::Ok { .. } => "ok",
        Reply::Error { .. } => "error",
        Reply::Pending { .. } => "pending",
        Reply::Started { .. } => "started",
        Reply::Exit(_) => "exit",
        Reply::Sweep(_) => "sweep",
        Reply::SweepProgress(_) => "sweep_progress",
    }
}
