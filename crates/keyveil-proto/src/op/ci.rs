//! CI mode (`keyveil ci`, `docs/ci.md`): a broker with no human and no factor, started in a
//! fresh home with an ephemeral vault, that runs only what a frozen allowlist covers. Its
//! start is a [`crate::Bootstrap::Ci`]; these are the operations of the job's later steps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Passphrase;

/// What `keyveil ci start` hands the broker it starts (inside [`crate::Bootstrap::Ci`]): the
/// files it froze and the secrets of the job, over the bootstrap's socket pair only.
#[derive(Debug, Serialize, Deserialize)]
pub struct CiBootstrap {
    /// The allowlist file (`--policy`): its canonical path and its bytes as read at start.
    pub policy_path: String,
    /// The allowlist's text.
    pub policy_text: String,
    /// The project manifest (`keyveil.toml`): canonical path, if there is one.
    #[serde(default)]
    pub manifest_path: Option<String>,
    /// The manifest's text as read at start.
    #[serde(default)]
    pub manifest_text: Option<String>,
    /// Values of the manifest's local variables, read from the start step's environment
    /// (variable name → value).
    #[serde(default)]
    pub values: BTreeMap<String, Passphrase>,
    /// The job's OIDC token, the login secret of every OpenBao source with `auth = "jwt"`.
    #[serde(default)]
    pub jwt: Option<Passphrase>,
    /// The OpenBao JWT role (`--role`), used where the manifest names none.
    #[serde(default)]
    pub auth_role: Option<String>,
    /// The OpenBao address (`--address`), used where the manifest names none.
    #[serde(default)]
    pub address: Option<String>,
    /// A CA bundle (PEM) for OpenBao (`--ca-file`), used where the manifest names none.
    #[serde(default)]
    pub ca_pem: Option<String>,
    /// Plain HTTP to a loopback OpenBao of the broker's own user is allowed (`--insecure-loopback`:
    /// a `bao proxy` the job runs as the runner's user).
    #[serde(default)]
    pub insecure_loopback: bool,
    /// The directory `ci start` ran in (canonical): rules' relative `cwd` are resolved in it.
    pub cwd: String,
    /// The start step's `PATH`, recorded as the policy PATH of granted children.
    #[serde(default)]
    pub path: Option<String>,
    /// The start step's `HOME`, given to granted children.
    #[serde(default)]
    pub home: Option<String>,
}

/// What a CI broker answers at start (inside [`crate::op::Bootstrapped::CiStarted`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CiStarted {
    /// The Ed25519 public key that will sign the audit chain's head at `ci finish`, as
    /// `ed25519:` and 64 lowercase hex digits. Print it to the job log before the agent runs.
    pub public_key: String,
    /// SHA-256 of the allowlist as frozen.
    pub policy_sha256: String,
    /// SHA-256 of the manifest as frozen, if there is one.
    #[serde(default)]
    pub manifest_sha256: Option<String>,
    /// The environments created.
    pub environments: Vec<String>,
    /// How many allowlist rules were frozen.
    pub rules: usize,
}

/// Scan folders (artifacts before upload) for every value the job used.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CiScan {
    /// Absolute folders or files.
    pub paths: Vec<PathBuf>,
    /// A fresh random nonce (64 hex digits): the broker signs its answer with it under its
    /// Ed25519 key, so a client holding the public key knows the job's broker answered.
    #[serde(default)]
    pub nonce: Option<String>,
}

/// One value found by [`CiScan`]: names and paths only, never a value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CiFinding {
    /// The variable whose value was found.
    pub variable: String,
    /// The file (for an archive member, `archive!member`).
    pub path: String,
    /// How it was found (`raw`, `gzip+tar`, ...; `docs/write-side.md`).
    pub form: String,
}

/// The reply to [`CiScan`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CiScanned {
    /// What was found (empty: clean).
    pub findings: Vec<CiFinding>,
    /// Files read.
    pub files_scanned: u64,
    /// Whether a limit cut the scan short (then "clean" is not proven).
    pub truncated: bool,
    /// With a nonce: the Ed25519 signature (hex) of the answer (see `ci_sign.rs`).
    #[serde(default)]
    pub signature: Option<String>,
}

operation!(CiScan => CiScanned);

/// End the CI broker: stop every run, revoke every grant, lease and OpenBao token, record the
/// end, sign the audit chain's head and write the chain to `out`; then the broker stops.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CiFinish {
    /// Absolute folder to write `audit.jsonl` and `audit-head.json` into (created if missing).
    pub out: PathBuf,
}

/// The reply to [`CiFinish`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CiFinished {
    /// The folder written.
    pub out: PathBuf,
    /// Entries in the signed chain.
    pub entries: u64,
    /// SHA-256 of the chain's last line (what was signed, with `entries`).
    pub head_sha256: String,
    /// The public key that verifies it.
    pub public_key: String,
}

operation!(CiFinish => CiFinished);
