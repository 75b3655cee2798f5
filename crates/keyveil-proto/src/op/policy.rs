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
