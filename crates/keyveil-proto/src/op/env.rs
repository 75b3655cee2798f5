//! Environments: list, show, reveal hidden names, create, remove.

use crate::request::FactorProof;
use serde::{Deserialize, Serialize};

/// One environment in detail.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvShow {
    /// Environment name.
    pub name: String,
}

/// The real names behind an environment's aliases (`hide_names` policy): needs the factor.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvReveal {
    /// Environment name.
    pub name: String,
    /// Proof of the human's factor.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

/// Create an environment.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvCreate {
    /// Environment name.
    pub name: String,
    /// Free text.
    pub description: String,
}

/// Remove an environment and all its variables (with a stored value: needs the factor).
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvRemove {
    /// Environment name.
    pub name: String,
    /// The human's factor, needed when a stored value would be removed.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}
