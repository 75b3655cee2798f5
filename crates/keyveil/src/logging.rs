//! Logging set-up: always stderr (the MCP server's stdout is the protocol), level from
//! `KEYVEIL_LOG` (default `info` for the broker, `warn` for clients). Nothing logged carries a
//! value: requests are logged by `op` name only.

use tracing_subscriber::EnvFilter;

fn init(default: &str) {
    let filter = EnvFilter::try_from_env("KEYVEIL_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
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
