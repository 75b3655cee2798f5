//! The broker itself: status, lock, shutdown, factor challenges, the web page's one-time links.

use serde::{Deserialize, Serialize};

/// A fresh challenge for proving a factor (see `factor_proof.rs`); replies [`Challenge`].
#[derive(Debug, Serialize, Deserialize)]
pub struct FactorChallenge {
    /// 64 hex digits of the CLI's random nonce.
    pub client_nonce: String,
    /// For a TOTP code: the CLI's SPAKE2 messages (hex), one per candidate time step.
    #[serde(default)]
    pub totp: Vec<String>,
}

/// A one-time URL of the local page where the human types the value of a declared variable
/// that has none yet (the value goes from the browser to the broker, never through a client).
#[derive(Debug, Serialize, Deserialize)]
pub struct SetUrl {
    /// Environment name.
    pub environment: String,
    /// Variable name.
    pub name: String,
}
