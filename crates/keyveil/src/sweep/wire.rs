//! What a sweep found and did: the plain text sealed inside `keyveil_proto::op::SweepReply`
//! (the request and the sealed reply themselves are `keyveil_proto::op::Sweep` and
//! `SweepReply`).

use serde::{Deserialize, Serialize};

use super::SweepReport;

/// What a sweep found and did (the plain text of `keyveil_proto::op::SweepReply::sealed`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SweepOutcome {
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
pub(crate) struct Contained {
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
