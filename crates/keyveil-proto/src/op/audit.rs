//! The audit log.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Recent audit entries.
#[derive(Debug, Serialize, Deserialize)]
pub struct Audit {
    /// Last N entries.
    pub limit: Option<usize>,
}

operation!(Audit => AuditEntries);

unit_operation!(
    /// Verify the audit chain (and move its seal forward).
    AuditVerify => AuditVerified
);

/// The reply to [`Audit`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntries {
    /// The last entries, oldest first.
    pub entries: Vec<AuditEntry>,
}

/// One audit log entry (`docs/audit-format.md`): never a value. The chain's fields are
/// optional here only so that a line someone edited is still shown as it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its line number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When it was written (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// The event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The event's own fields, and the chain's (`prev`, `mac`).
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The reply to [`AuditVerify`] when the chain verifies (a chain that does not is an error).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditVerified {
    /// Always `true`.
    pub ok: bool,
    /// Entries in the log.
    pub entries: u64,
    /// The `seq` the vault had sealed before this check.
    pub sealed_seq: Option<u64>,
    /// `audit.gap` entries: what could not be written before each.
    pub gaps: Vec<GapSeen>,
    /// Entries not written yet (the log cannot be written now).
    pub pending_gap: Option<PendingGap>,
    /// `audit_unclean_end` entries: a broker stopped without sealing the log.
    pub unclean_ends: Vec<UncleanEnd>,
    /// `audit_quarantined` entries: a log that failed verification at unlock was moved aside
    /// and this one started (what the sealed checkpoint knew and what is missing).
    #[serde(default)]
    pub quarantined: Vec<Quarantined>,
}

/// An `audit_quarantined` entry in [`AuditVerified::quarantined`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Quarantined {
    /// Its line in the current log.
    pub seq: Option<u64>,
    /// Where the old log was moved (as recorded; shown escaped).
    pub moved_to: String,
    /// Lines of the moved log that verify from its start.
    pub verified_lines: Option<u64>,
    /// Its first line that fails.
    pub first_bad_line: Option<u64>,
    /// The entries the vault's sealed checkpoint vouched for.
    pub sealed_seq: Option<u64>,
    /// Entries the checkpoint vouched for that the moved log no longer holds.
    pub missing: u64,
}

/// An `audit.gap` entry in [`AuditVerified::gaps`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GapSeen {
    /// Its line.
    pub seq: u64,
    /// When it was written.
    pub ts: String,
    /// Entries of events that happened and are missing.
    pub lost: u64,
    /// Entries of actions that were refused.
    pub refused: u64,
    /// Event name → how many.
    pub events: BTreeMap<String, u64>,
    /// When the first missing entry failed (RFC 3339), empty if unknown.
    pub first: String,
    /// When the last one failed, empty if unknown.
    pub last: String,
}

/// Entries the broker holds because the log cannot be written now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingGap {
    /// Events that happened.
    pub lost: u64,
    /// Actions refused.
    pub refused: u64,
    /// Event name → how many.
    pub events: BTreeMap<String, u64>,
}

/// An `audit_unclean_end` entry in [`AuditVerified::unclean_ends`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UncleanEnd {
    /// Its line.
    pub seq: Option<u64>,
    /// The last line the stopped broker had sealed.
    pub sealed_seq: Option<u64>,
}
