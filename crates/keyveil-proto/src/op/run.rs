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

operation!(Logs => RunLogs);
operation!(Stop => RunStopped);

/// The reply to [`Logs`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunLogs {
    /// Run id.
    pub run_id: String,
    /// Grant id.
    pub grant_id: String,
    /// Environment name.
    pub environment: String,
    /// argv as the requester gave it, every whole stored value masked (`[REDACTED:NAME]`).
    pub argv: Vec<String>,
    /// Process id of its reaper (its process group).
    pub pid: i64,
    /// Start (RFC 3339).
    pub started_at: String,
    /// Offset `output` starts at.
    pub from: u64,
    /// Offset to read from next.
    pub next: u64,
    /// Offset of the end of the output so far.
    pub end: u64,
    /// Redacted stdout and stderr, combined (UTF-8, lossy).
    pub output: String,
    /// Bytes between the asked offset and the oldest byte kept: lost.
    pub dropped: u64,
    /// Bytes dropped from the ring since the start.
    pub dropped_total: u64,
    /// Whether the run is still live.
    pub running: bool,
    /// Whether it was ended by `stop`.
    pub stopped: bool,
    /// How it ended, once it has.
    #[serde(flatten)]
    pub ended: Option<LogsEnd>,
}

/// How a background run ended, in [`RunLogs`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsEnd {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Killed because its grant ended.
    pub revoked: bool,
    /// Redactions made.
    pub redactions: u64,
    /// Wall time, milliseconds.
    pub duration_ms: u64,
    /// Values it wrote into files (variable, path, form; never the value).
    pub write_leaks: Vec<LeakSeen>,
}

/// A value a background run wrote into a file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakSeen {
    /// Variable.
    pub variable: String,
    /// File (`archive!member` in archives).
    pub path: String,
    /// Form it was found in.
    pub form: String,
}

/// The reply to [`Stop`], after the run ended (or a few seconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStopped {
    /// Run id.
    pub run_id: String,
    /// Whether this call stopped it (`false`: it had already ended).
    pub stopped: bool,
    /// Whether it still runs.
    pub running: bool,
    /// Exit code and signal, once ended.
    #[serde(flatten)]
    pub ended: Option<ExitSeen>,
}

/// Exit code and signal of an ended run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ExitSeen {
    /// Exit code (128 + signal when killed).
    pub exit_code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
}

/// The reply to `Request::Start` once the run is spawned (after any `Pending` replies).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    /// Run id, for [`Logs`] and [`Stop`].
    pub run_id: String,
    /// The grant it runs under.
    pub grant_id: String,
    /// Process id of its reaper (its process group).
    pub pid: i64,
}
