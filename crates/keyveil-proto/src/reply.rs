//! Replies: what the broker answers, and the error classes behind CLI exit codes.

use serde::{Deserialize, Serialize};

/// Error classes; each maps to a CLI exit code (0 ok, 1 error, 2 usage, 3 denied, 4 locked, 5
/// timed out waiting for approval; see the README).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Generic failure (exit 1).
    Failed,
    /// Bad input (exit 2).
    Usage,
    /// Denied by the human, by policy, a wrong factor or a revoked grant (exit 3).
    Denied,
    /// The vault is locked (exit 4).
    Locked,
    /// Timed out waiting for approval (exit 5).
    Timeout,
    /// Something named does not exist (exit 1).
    NotFound,
}

impl ErrorCode {
    /// CLI exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Failed | ErrorCode::NotFound => 1,
            ErrorCode::Usage => 2,
            ErrorCode::Denied => 3,
            ErrorCode::Locked => 4,
            ErrorCode::Timeout => 5,
        }
    }
}

/// The result of one finished run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Run id (`r-` + hex).
    pub run_id: String,
    /// Grant id the run used.
    pub grant_id: String,
    /// Exit code, or `128 + signal` when the child was killed by a signal.
    pub exit_code: i32,
    /// Signal number that ended the child, if any.
    pub signal: Option<i32>,
    /// Number of redactions made across stdout and stderr.
    pub redactions: u64,
    /// Collected redacted stdout (UTF-8, lossy) in `Collect` mode.
    pub stdout: String,
    /// Collected redacted stderr (UTF-8, lossy) in `Collect` mode.
    pub stderr: String,
    /// `true` if a stream went over the cap and was cut.
    pub truncated: bool,
    /// `true` if the run hit its timeout and was killed.
    pub timed_out: bool,
    /// `true` if the grant was revoked while the run was live and the run was killed.
    pub revoked: bool,
    /// Wall time from spawn to exit, in milliseconds.
    pub duration_ms: u64,
    /// Values the run wrote into files (found by the post-run scan): variable and path, never
    /// the value.
    #[serde(default)]
    pub write_leaks: Vec<WriteLeak>,
    /// What the post-run scan covered.
    #[serde(default)]
    pub write_scan: Option<WriteScanSummary>,
}

/// A value found in a file a run wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteLeak {
    /// Variable name.
    pub variable: String,
    /// File (for archive members `archive!member`).
    pub path: String,
    /// The form it was found in (`raw`, `base64`, `utf-16le`, `gzip`, `git-object`, ...).
    pub form: String,
    /// What keyveil did: `reported`, `quarantined` (moved aside, mode 0600) or `failed` (the
    /// run's exit code was forced to 1 after reporting).
    pub action: String,
}

/// The extent of a post-run write scan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriteScanSummary {
    /// Files read.
    pub files_scanned: u64,
    /// Bytes read.
    pub bytes_scanned: u64,
    /// A limit cut the scan short.
    pub truncated: bool,
    /// Scan time, milliseconds.
    pub elapsed_ms: u64,
    /// How the changed files were found: `watched` (from the events of a watch of the working
    /// directory kept between runs) or `walked: WHY` (every entry examined). Empty from an
    /// older broker.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub how: String,
}

/// Broker → client JSON replies. Tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Success with a request-specific JSON payload.
    Ok {
        /// Payload.
        data: serde_json::Value,
    },
    /// Failure the user can act on.
    Error {
        /// Class.
        code: ErrorCode,
        /// What happened.
        message: String,
        /// What to do next.
        hint: Option<String>,
    },
    /// A run waits for approval (`is_final` false while the broker keeps waiting).
    Pending {
        /// Request id to approve.
        request_id: u64,
        /// What the human should do.
        hint: String,
        /// `true` when the broker has stopped waiting and closes the exchange.
        #[serde(rename = "final")]
        is_final: bool,
        /// `true` when the request waits for the locked vault (`docs/factors.md`): only
        /// `keyveil approve ID` at the human's terminal can approve it (one passphrase entry
        /// unlocks and approves); the approval page cannot act while the vault is locked.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        vault_locked: bool,
    },
    /// A run started under a grant.
    Started {
        /// Run id.
        run_id: String,
        /// Grant id.
        grant_id: String,
    },
    /// A run ended.
    Exit(RunResult),
    /// Findings of `keyveil sweep --watch`, sealed for the CLI that proved the factor (not
    /// final: the watch goes on).
    Sweep(crate::op::SweepReply),
    /// How far a sweep asked with `progress` has got (not final: the findings follow).
    SweepProgress(crate::op::SweepProgress),
}

impl Reply {
    /// Whether this reply ends the exchange.
    pub fn is_final(&self) -> bool {
        match self {
            Reply::Ok { .. } | Reply::Error { .. } | Reply::Exit(_) => true,
            Reply::Pending { is_final, .. } => *is_final,
            Reply::Started { .. } | Reply::Sweep(_) | Reply::SweepProgress(_) => false,
        }
    }

    /// Shorthand for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>, hint: Option<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
            hint,
        }
    }

    /// Shorthand for a success reply.
    pub fn ok(data: serde_json::Value) -> Reply {
        Reply::Ok { data }
    }
}
