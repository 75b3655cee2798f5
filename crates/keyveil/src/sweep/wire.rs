//! The sweep's request and reply on the broker socket (typed; see `protocol.rs`).

use serde::{Deserialize, Serialize};

use super::SweepReport;
use crate::protocol::FactorProof;

/// Most roots one sweep takes.
pub const MAX_ROOTS: usize = 256;

/// `Request::Sweep`: search for copies of every stored value, and optionally contain them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRequest {
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
    /// redactor's marker (`sweep/scrub.rs`). Signed with the factor: the human's confirmation.
    #[serde(default)]
    pub scrub_transcripts: bool,
    /// Findings in files whose inode changed less than this many seconds ago are flagged
    /// `recent` (default 86 400).
    #[serde(default)]
    pub recent_seconds: Option<u64>,
    /// Wall-clock budget in seconds (default 600, at most 3 600).
    #[serde(default)]
    pub max_seconds: Option<u64>,
    /// Proof of the human's factor (required).
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// The `Ok` reply to a sweep: everything is sealed for the CLI that proved the factor
/// (`factor_proof::seal_in_transit`, associated data `b"sweep"`), so a relay at the socket
/// learns nothing, not even whether anything was found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepReply {
    /// A sealed [`SweepOutcome`] as JSON.
    pub sealed: String,
}

/// What a sweep found and did (the plain text of [`SweepReply::sealed`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SweepOutcome {
    /// What was searched and found.
    pub report: SweepReport,
    /// What was contained (with `contain`), one per variable found.
    #[serde(default)]
    pub contained: Vec<Contained>,
    /// Transcripts rewritten (with `scrub_transcripts`): path and markers put in.
    #[serde(default)]
    pub scrubbed: Vec<(String, u64)>,
    /// Transcripts not rewritten, and why.
    #[serde(default)]
    pub scrub_notes: Vec<String>,
}

/// The containment of one variable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Contained {
    /// Environment.
    pub environment: String,
    /// Variable, as clients see it.
    pub variable: String,
    /// Grants revoked because they held it.
    pub grants_revoked: u32,
    /// Runs under those grants that were stopped.
    pub runs_stopped: u32,
    /// Dynamic credentials destroyed at their source (the variable is minted per grant).
    pub dynamic: bool,
    /// The variable is marked compromised in the vault.
    pub marked: bool,
    /// Why something could not be done (no value).
    #[serde(default)]
    pub problems: Vec<String>,
}
