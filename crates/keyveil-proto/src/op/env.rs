//! Environments: list, show, reveal hidden names, create, remove.

use crate::request::FactorProof;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// One environment in detail.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnvShow {
    /// Environment name.
    pub name: String,
    /// Also ask OpenBao for the KV v2 version of each variable linked to a KV path
    /// ([`VariableInfo::kv_version`]): one request per path, so the CLI's `env show` sets it
    /// and the MCP server does not. Left out of the JSON when `false` (the request's shape is
    /// then the one older brokers know).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub versions: bool,
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

operation!(EnvShow => EnvDetail);
operation!(EnvReveal => EnvRevealed);
operation!(EnvCreate => EnvCreated);
operation!(EnvRemove => EnvRemoved);

unit_operation!(
    /// Environments with their variable names.
    EnvList => Environments
);

/// The reply to [`EnvList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environments {
    /// Every environment, by name.
    pub environments: Vec<EnvSummary>,
}

/// One environment in [`Environments`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvSummary {
    /// Environment name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its variable names as clients see them (aliases where names are hidden), sorted.
    pub variables: Vec<String>,
}

/// The reply to [`EnvShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvDetail {
    /// Environment name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its variables, sorted by the name shown.
    pub variables: Vec<VariableInfo>,
    /// Its policy as the vault stores it (`keyveil_vault::Policy`: factor, maximum grant
    /// lifetime, rules, ...), passed on as it is.
    pub policy: serde_json::Map<String, serde_json::Value>,
}

/// One variable in [`EnvDetail`] (never its value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariableInfo {
    /// The name as clients see it (an alias where names are hidden).
    pub name: String,
    /// Its description (empty where names are hidden: it could say what the name would).
    pub description: String,
    /// Where its value comes from: `human`, `generated`, `dynamic` or `provider`.
    pub source: String,
    /// Whether it holds a value (or a dynamic source).
    pub set: bool,
    /// Created.
    pub created_at: Timestamp,
    /// Its value last replaced.
    pub rotated_at: Option<Timestamp>,
    /// A sweep found its value outside keyveil and it was not replaced since (`null`
    /// otherwise).
    #[serde(default)]
    pub compromised: Option<super::CompromiseMark>,
    /// For a variable linked to an OpenBao KV v2 path, asked with [`EnvShow::versions`]: the
    /// secret's current version at OpenBao (KV v2 versions are per path, so every field of a
    /// path shows the same), or `null` when not asked, not linked, or OpenBao did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_version: Option<u64>,
    /// Whether its current value (or declaration) was stored with the human's factor: `false`
    /// for a first value stored without it (which an agent may have chosen), `null` where the
    /// vault did not record it (variables stored before it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_by_factor: Option<bool>,
    /// When its current value (or declaration) was stored, where recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Timestamp>,
    /// For a dynamic or provider variable, its engine (`postgres`, `openbao-kv`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// The reply to [`EnvReveal`]: the real names behind the aliases, sealed for the CLI that
/// proved the factor (`sealed_names`), or in clear for the approval page (`names`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvRevealed {
    /// Environment name.
    pub environment: String,
    /// Whether the environment hides its names.
    pub hide_names: bool,
    /// The JSON of `Vec<RevealedName>` sealed under the transit key (associated data
    /// `env_reveal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_names: Option<String>,
    /// The names, when not sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<RevealedName>>,
}

/// One name in [`EnvRevealed`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevealedName {
    /// The alias agents see.
    pub alias: String,
    /// The real name.
    pub real_name: String,
    /// Its description.
    pub description: String,
}

/// The reply to [`EnvCreate`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvCreated {
    /// The environment created.
    pub name: String,
}

/// The reply to [`EnvRemove`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvRemoved {
    /// The environment removed.
    pub removed: String,
}
