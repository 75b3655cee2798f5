//! Project manifests (`keyveil.toml`): approving one's digest with the factor, and the pins.

use crate::request::FactorProof;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Approve a project manifest: the broker reads the file at `path`, checks that its SHA-256 is
/// the one the human was shown, and pins every environment it declares to that digest. Always
/// needs the factor (passphrase or TOTP; never `confirm`).
#[derive(Debug, Serialize, Deserialize)]
pub struct ProjectApprove {
    /// Absolute, canonical path of the manifest.
    pub path: String,
    /// SHA-256 of the manifest's bytes as shown in the plan, 64 lowercase hex digits.
    pub sha256: String,
    /// Proof of the human's factor.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// The reply to [`ProjectApprove`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectApproved {
    /// The manifest's path.
    pub path: String,
    /// The digest now pinned.
    pub sha256: String,
    /// The environments pinned to it.
    pub environments: Vec<String>,
}

operation!(ProjectApprove => ProjectApproved);

unit_operation!(
    /// The manifests environments are pinned to, and whether each file still has its digest.
    ProjectStatus => ProjectPins
);

/// The reply to [`ProjectStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectPins {
    /// One entry per pinned environment, by environment name.
    pub pins: Vec<ProjectPin>,
}

/// One pinned environment in [`ProjectPins`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectPin {
    /// Environment name.
    pub environment: String,
    /// The manifest's absolute path.
    pub path: String,
    /// The approved SHA-256 (hex).
    pub sha256: String,
    /// When it was approved (UTC).
    pub approved_at: Timestamp,
    /// The file's SHA-256 now (hex); `None` when it cannot be read (missing, not a regular
    /// file, too large).
    pub current: Option<String>,
}
