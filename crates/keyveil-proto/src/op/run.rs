//! Runs: background runs' output and stop.

use serde::{Deserialize, Serialize};

/// Redacted output of a background run, from a byte offset of its combined output.
#[derive(Debug, Serialize, Deserialize)]
pub struct Logs {
    /// Run id (`r-...`).
    pub run_id: String,
    /// Offset to read from (0: the start; earlier output may have been dropped).
    #[serde(default)]
    pub from: u64,
    /// Most bytes to return (default and cap 64 KiB).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// Only runs of this client scope key (`mcp:NAME`); `None` for the human's CLI.
    #[serde(default)]
    pub client: Option<String>,
}

/// Stop a background run: SIGTERM to its process group, SIGKILL after 2 s.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stop {
    /// Run id.
    pub run_id: String,
    /// Only runs of this client scope key; `None` for the human's CLI.
    #[serde(default)]
    pub client: Option<String>,
}
