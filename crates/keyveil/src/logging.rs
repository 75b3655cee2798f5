//! Logging set-up: always stderr (the MCP server's stdout is the protocol), level from
//! `KEYVEIL_LOG` (default `info` for the broker, `warn` for clients). Nothing logged carries a
//! value: requests are logged by `op` name only.
//!
//! Logging never panics and never fails an operation: the broker's stderr is `broker.log`,
//! which lives on a disk the agent can fill. A line that cannot be written is dropped and
//! counted ([`lost_lines`]); tracing's own report of a failed write (an `eprintln!`, which
//! panics when stderr cannot be written) is turned off.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

/// Log lines that could not be written (a full disk, a closed stderr) since start.
static LOST: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written since the process started.
pub(crate) fn lost_lines() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// Stderr that never fails: a write that fails is counted and reported as done.
struct Lossy;

impl Write for Lossy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().lock().write_all(buf).is_err() {
            LOST.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().lock().flush();
        Ok(())
    }
}

fn init(default: &str) {
    let filter = EnvFilter::try_from_env("KEYVEIL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Lossy)
        .with_ansi(false)
        .log_internal_errors(false)
        .try_init();
}

/// The broker's logging (stderr, redirected to `broker.log` when auto-started).
pub(crate) fn init_broker() {
    init("info");
}

/// CLI and MCP logging.
pub(crate) fn init_cli() {
    init("warn");
}
