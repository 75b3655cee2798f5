//! The TOTP factor and environments' policies.

use crate::request::{FactorProof, PolicyChange};
use serde::{Deserialize, Serialize};

/// Start TOTP enrolment (passphrase required); returns the `otpauth://` URI once, sealed
/// under the factor key (`sealed_uri`, `sealed_qr`; associated data `factor_enroll`).
#[derive(Debug, Serialize, Deserialize)]
pub struct FactorEnroll {
    /// Proof of the passphrase.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// Finish TOTP enrolment with a first code from the authenticator.
#[derive(Debug, Serialize, Deserialize)]
pub struct FactorConfirm {
    /// The code.
    pub code: String,
}

/// An environment's policy.
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicyShow {
    /// Environment.
    pub environment: String,
}

/// Change an environment's policy (always needs a factor: passphrase or TOTP).
#[derive(Debug, Serialize, Deserialize)]
pub struct PolicySet {
    /// Environment.
    pub environment: String,
    /// Proof of the human's factor.
    #[serde(default)]
    pub factor: Option<FactorProof>,
    /// The change.
    pub change: PolicyChange,
}

operation!(FactorEnroll => Enrolling);
operation!(FactorConfirm => Enrolled);
operation!(PolicyShow => PolicyShown);
operation!(PolicySet => PolicyChanged);

/// The reply to [`FactorEnroll`]: the `otpauth://` URI and its terminal QR code, each sealed
/// under the transit key (associated data `factor_enroll`) for the CLI that proved the factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolling {
    /// The sealed URI.
    pub sealed_uri: String,
    /// The sealed QR code (text).
    pub sealed_qr: String,
}

/// The reply to [`FactorConfirm`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enrolled {
    /// `totp`.
    pub enrolled: String,
}

/// The reply to [`PolicyShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyShown {
    /// Environment name.
    pub environment: String,
    /// The policy as the vault stores it.
    pub policy: PolicyView,
    /// `PATH` of its children (the environment's own, or the vault-wide one).
    pub effective_path: String,
    /// Whether a TOTP factor is enrolled.
    pub totp_enrolled: bool,
}

/// The reply to [`PolicySet`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyChanged {
    /// Environment name.
    pub environment: String,
    /// The policy after the change.
    pub policy: PolicyView,
    /// What the change means for the human, if anything.
    pub warning: Option<String>,
}

/// An environment's policy as clients read it (the vault's `Policy`; fields a client does not
/// read are kept in `other`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// `passphrase`, `totp` or `confirm`.
    pub factor: String,
    /// Upper bound of grant lifetimes, seconds.
    pub max_ttl_seconds: u64,
    /// Whether names are hidden from clients.
    #[serde(default)]
    pub hide_names: bool,
    /// Auto-approve rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auto_approve: Vec<AutoApproveRule>,
    /// Deny rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
    /// Variables bound to hosts (a placeholder in the child, the real value only to these
    /// destinations), by variable name (an alias where names are hidden).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<super::BoundVariable>,
    /// How many extra CA certificates the egress proxy trusts besides the system's, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_roots: Option<usize>,
    /// The rest of the policy.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// An auto-approve rule in [`PolicyView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutoApproveRule {
    /// argv tokens.
    pub argv: Vec<String>,
    /// argv is a prefix.
    pub prefix: bool,
    /// Directory.
    pub cwd: String,
    /// Grant lifetime, seconds.
    pub ttl_seconds: u64,
    /// What the command ran when the human made the rule: canonical path of the executable and
    /// of each pinned input → its SHA-256 (or fingerprint). A request is auto-approved only
    /// while all its pins are here with the same digest; an empty map approves nothing.
    #[serde(default)]
    pub bound: std::collections::BTreeMap<String, String>,
}

/// A deny rule in [`PolicyView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenyRule {
    /// argv tokens.
    pub argv: Vec<String>,
    /// argv is a prefix.
    pub prefix: bool,
}
