//! The sweep: every copy of every stored value outside keyveil (`keyveil sweep`,
//! `docs/sweep.md`). Its findings never travel in the clear: the reply is sealed for the CLI
//! that proved the factor.

use serde::{Deserialize, Serialize};

use crate::request::FactorProof;

/// Most roots one sweep takes.
pub const MAX_SWEEP_ROOTS: usize = 256;

/// Search for copies of every stored value, and optionally contain them: the payload of
/// [`crate::Request::Sweep`] (replies [`SweepReply`]) and of [`crate::Request::SweepWatch`]
/// (the broker keeps the connection and sends a [`crate::Reply::Sweep`] per batch of findings).
/// Needs the factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sweep {
    /// Absolute paths swept whole (with the git repositories at or below them).
    #[serde(default)]
    pub roots: Vec<String>,
    /// Absolute `$HOME` whose top-level files and dot-directories are swept; `None` skips it.
    #[serde(default)]
    pub home: Option<String>,
    /// Contain what is found: revoke its grants (killing their runs; dynamic credentials are
    /// destroyed at their source), mark it compromised, record an incident.
    #[serde(default)]
    pub contain: bool,
    /// With `contain`: also rewrite the copies found in agent host transcripts to the
    /// redactor's marker. Signed with the factor: the human's confirmation.
    #[serde(default)]
    pub scrub_transcripts: bool,
    /// Findings in files whose inode changed less than this many seconds ago are flagged
    /// `recent` (default 86 400).
    #[serde(default)]
    pub recent_seconds: Option<u64>,
    /// Wall-clock budget in seconds (default 600, at most 3 600).
    #[serde(default)]
    pub max_seconds: Option<u64>,
    /// Send [`crate::Reply::SweepProgress`] frames while sweeping (about four a second), before
    /// the final reply (the CLI asks when it draws a progress line on a terminal).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
    /// Proof of the human's factor (required).
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

operation!(Sweep => SweepReply);

/// The reply to [`Sweep`] (and each batch of a watch): everything is sealed for the CLI that
/// proved the factor (`factor_proof::seal_in_transit`, associated data `b"sweep"`), so a relay
/// at the socket learns nothing, not even whether anything was found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReply {
    /// The sealed findings (the `keyveil` crate's `SweepOutcome` as JSON).
    pub sealed: String,
}

/// How far a sweep has got ([`crate::Reply::SweepProgress`]): work done, never what was found
/// (it travels in the clear, and a count of findings would answer a planted guess).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SweepProgress {
    /// Files read so far.
    pub files: u64,
    /// Bytes matched so far (file bytes, decompressed bytes and git objects).
    pub bytes: u64,
    /// Git objects matched so far.
    pub git_objects: u64,
    /// Milliseconds since the sweep started.
    pub elapsed_ms: u64,
    /// The sweep's time budget, milliseconds.
    pub budget_ms: u64,
}

/// A variable a sweep found outside keyveil and that was not replaced since (part of
/// `env show`'s variables): when, where, how many copies, and what to do.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CompromiseMark {
    /// When the sweep found it.
    pub found_at: jiff::Timestamp,
    /// The kinds of places the copies were in (`file`, `transcript`, `history`, `git`, ...).
    pub kinds: Vec<String>,
    /// Copies found.
    pub copies: u64,
    /// What to do (rotate at the source, then `keyveil set`).
    pub hint: String,
}
