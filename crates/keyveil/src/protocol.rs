//! The broker's IPC protocol: length-delimited frames over a Unix socket.
//!
//! Wire shape of one frame: a 4-byte big-endian length `N` (at most [`MAX_FRAME`] bytes),
//! then `N` bytes whose first byte is a tag:
//!
//! | tag | payload |
//! |---|---|
//! | `0` ([`TAG_JSON`]) | one UTF-8 JSON document: a [`Request`] (client → broker) or a [`Reply`] (broker → client) |
//! | `1` ([`TAG_STDOUT`]) | raw, already-redacted bytes of a run's stdout |
//! | `2` ([`TAG_STDERR`]) | raw, already-redacted bytes of a run's stderr |
//!
//! A connection carries one request and the replies to it; the last reply of a request is
//! always a JSON frame with [`Reply::is_final`] true.
//!
//! No factor (passphrase, TOTP code) ever travels over the socket: a change that needs one
//! carries a [`FactorProof`] bound to the request's digest (`factor_proof.rs`), after the CLI
//! has checked that the broker answering holds the vault's key. Passphrases reach a broker only
//! through the stdin pipe of a broker the CLI started itself (`init`, `unlock`). A secret
//! *value* appears in [`Request::VarSet`] (plain only for a first value, sealed under the factor
//! key when it replaces one) and in [`DynamicAddRequest::admin`]. No reply ever carries a value:
//! output frames are redacted before they are written.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Largest frame accepted in either direction, in bytes (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Frame tag of a JSON document.
pub const TAG_JSON: u8 = 0;
/// Frame tag of redacted stdout bytes.
pub const TAG_STDOUT: u8 = 1;
/// Frame tag of redacted stderr bytes.
pub const TAG_STDERR: u8 = 2;

/// Who is asking: shown to the human at approval, and part of a grant's scope.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    /// `cli` or `mcp`.
    pub kind: String,
    /// For MCP: the host's `clientInfo.name` (e.g. `codex-mcp-client`); for the CLI: `keyveil`.
    pub name: String,
    /// The client's self-declared version.
    pub version: String,
    /// Process id of the requesting process (the CLI or the MCP server).
    pub pid: u32,
}

impl ClientInfo {
    /// The identity a grant is bound to: `kind:name`.
    pub fn scope_key(&self) -> String {
        format!("{}:{}", self.kind, self.name)
    }
}

/// How a run's output travels back.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum OutputMode {
    /// Redacted output is sent as stdout/stderr frames as it arrives (the CLI).
    Stream,
    /// Redacted output is collected, each stream capped at `cap_bytes`, and returned in the
    /// final [`RunResult`] (the MCP server).
    Collect {
        /// Cap per stream, in bytes; the rest is drained and dropped (`truncated: true`).
        cap_bytes: usize,
    },
}

/// Ask to run a command with an environment's values injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    /// Who asks.
    pub client: ClientInfo,
    /// Environment name.
    pub environment: String,
    /// Subset of variables to inject; `None` means every variable of the environment.
    pub variables: Option<Vec<String>>,
    /// The command: `argv[0]` and its arguments, never a shell string.
    pub argv: Vec<String>,
    /// Absolute working directory.
    pub cwd: String,
    /// The requester's own (non-secret) environment. The child's environment is built from
    /// scratch: only locale and terminal variables (`LANG`, `LC_*`, `TERM`, `TZ`, ...) and the
    /// names in `pass_env` are taken from here.
    pub env: Vec<(String, String)>,
    /// Names of requester variables to pass through to the child; shown at approval and part of
    /// the grant's scope. Code-injection names (`LD_PRELOAD`, `BASH_ENV`, ...) are refused.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Bytes to write to the child's stdin, then close it; `None` connects stdin to /dev/null.
    pub stdin: Option<String>,
    /// Kill the run's process group after this many seconds (default 600).
    pub timeout_seconds: Option<u64>,
    /// The requester's stated reason (shown to the human as the requester's claim).
    pub reason: Option<String>,
    /// Requested grant lifetime in seconds, if the human approves for a duration.
    pub ttl_seconds: Option<u64>,
    /// Seconds to wait for an approval before replying [`Reply::Pending`] as final.
    pub wait_seconds: u64,
    /// How output comes back.
    pub output: OutputMode,
}

/// Ask for access without running anything yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessRequest {
    /// Who asks.
    pub client: ClientInfo,
    /// Environment name.
    pub environment: String,
    /// Subset of variables; `None` means all.
    pub variables: Option<Vec<String>>,
    /// Command to bind the grant to; `None` asks for any command (shown as such to the human).
    pub argv: Option<Vec<String>>,
    /// Names of requester variables to pass through (see [`RunRequest::pass_env`]).
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// The requester's values of the `pass_env` names: the card shows them and the grant binds
    /// them (a run with another value ends it). A name missing here is bound as unset.
    #[serde(default)]
    pub pass_values: Vec<(String, String)>,
    /// Absolute working directory.
    pub cwd: String,
    /// Requested lifetime in seconds.
    pub ttl_seconds: Option<u64>,
    /// The requester's reason.
    pub reason: Option<String>,
}

/// Character set of a generated value.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Charset {
    /// `A-Za-z0-9`.
    Alnum,
    /// `0-9a-f`.
    Hex,
    /// `A-Za-z0-9-_` (RFC 4648 §5 alphabet).
    Base64url,
    /// Printable ASCII without space (`!`..`~`).
    Ascii,
}

/// A passphrase or value as sent over the socket: zeroized when dropped, and its `Debug`
/// prints `[sensitive]` so a logged request never shows it.
#[derive(Clone, Default)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a string.
    pub fn new(s: String) -> Passphrase {
        Passphrase(Zeroizing::new(s))
    }
    /// The text, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[sensitive]")
    }
}

impl Serialize for Passphrase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Passphrase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Passphrase(Zeroizing::new(String::deserialize(d)?)))
    }
}

/// Proof of the human's factor attached to a change that needs it (approve, policy, enrolment,
/// revealing names, replacing or removing a stored value). It holds no factor: see
/// `factor_proof.rs` for how it is made and checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FactorProof {
    /// The challenge id from [`Request::FactorChallenge`]'s reply (used once).
    pub challenge: String,
    /// Which of the challenge's keys the proof uses (index into its `keys`).
    pub key: usize,
    /// 64 hex digits: `HMAC-SHA256(factor key, broker nonce ‖ request digest)`.
    pub proof: String,
}

/// One key a broker offers in a challenge (the reply's `keys` list).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChallengeKey {
    /// `passphrase` or `totp`.
    pub kind: String,
    /// 64 hex digits: the broker's `hello_mac` under this key over both nonces.
    pub mac: String,
    /// For `totp`: the broker's SPAKE2 message (hex) answering the CLI's message of the same index.
    #[serde(default)]
    pub msg: Option<String>,
}

/// The reply to [`Request::FactorChallenge`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Challenge {
    /// Challenge id, for [`FactorProof::challenge`].
    pub id: String,
    /// 64 hex digits: the broker's nonce.
    pub nonce: String,
    /// The keys the broker holds, each with its proof of holding it.
    pub keys: Vec<ChallengeKey>,
}

/// How a broker started by the CLI gets its passphrase: one JSON line on its stdin, written by
/// the CLI that spawned it (never a socket anyone could have replaced).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Bootstrap {
    /// Create the vault, then serve it unlocked.
    Init {
        /// New passphrase.
        passphrase: Passphrase,
        /// Argon2id memory in KiB (default: the vault crate's default).
        kdf_memory_kib: Option<u32>,
        /// The human's `PATH`, recorded as the policy PATH of granted children.
        path: Option<String>,
        /// The human's `HOME`, given to granted children.
        home: Option<String>,
    },
    /// Unlock the vault, then serve it.
    Unlock {
        /// Passphrase.
        passphrase: Passphrase,
    },
}

/// Start of the broker's error message when a change needs the factor and none was given; the
/// CLI recognises it and asks for the factor at the terminal.
pub const FACTOR_NEEDED: &str = "replacing or removing a stored value needs your factor";

/// Every request a client can send. Tagged by `op`.
// `RequestAccess` mirrors the MCP tool `request_access`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Broker state.
    Status,
    /// A fresh challenge for proving a factor (see `factor_proof.rs`); replies [`Challenge`].
    FactorChallenge {
        /// 64 hex digits of the CLI's random nonce.
        client_nonce: String,
        /// For a TOTP code: the CLI's SPAKE2 messages (hex), one per candidate time step.
        #[serde(default)]
        totp: Vec<String>,
    },
    /// Drop the decrypted vault from memory; revoke all grants.
    Lock,
    /// Stop the broker and its runs.
    Shutdown,
    /// Environments with variable names.
    EnvList,
    /// One environment in detail.
    EnvShow {
        /// Environment name.
        name: String,
    },
    /// The real names behind an environment's aliases (`hide_names` policy): needs the factor.
    EnvReveal {
        /// Environment name.
        name: String,
        /// Proof of the human's factor.
        #[serde(default)]
        factor: Option<FactorProof>,
    },
    /// Create an environment.
    EnvCreate {
        /// Environment name.
        name: String,
        /// Free text.
        description: String,
    },
    /// Remove an environment and all its variables (with a stored value: needs the factor).
    EnvRemove {
        /// Environment name.
        name: String,
        /// The human's factor, needed when a stored value would be removed.
        #[serde(default)]
        factor: Option<FactorProof>,
    },
    /// Store a value (from the human's CLI only).
    VarSet {
        /// Environment name.
        environment: String,
        /// Variable name.
        name: String,
        /// The value in plain text: only without a factor (a first value).
        #[serde(default)]
        value: Option<Passphrase>,
        /// The value sealed for the broker under the factor key (`factor_proof::seal_in_transit`,
        /// associated data `ENV/NAME`): required with a factor, so a relay never sees it.
        #[serde(default)]
        sealed_value: Option<String>,
        /// The human's factor, needed when it replaces a stored value.
        #[serde(default)]
        factor: Option<FactorProof>,
    },
    /// Generate a random value inside the broker.
    VarGenerate {
        /// Environment name.
        environment: String,
        /// Variable name.
        name: String,
        /// Length in characters.
        length: usize,
        /// Alphabet.
        charset: Charset,
        /// The human's factor, needed when it replaces a stored value.
        #[serde(default)]
        factor: Option<FactorProof>,
    },
    /// Delete a variable (with a stored value: needs the factor).
    VarUnset {
        /// Environment name.
        environment: String,
        /// Variable name.
        name: String,
        /// The human's factor, needed when a stored value would be removed.
        #[serde(default)]
        factor: Option<FactorProof>,
    },
    /// Declare a variable (agent side): generated now, or awaiting a human's value.
    VarDeclare {
        /// Environment name.
        environment: String,
        /// Variable name.
        name: String,
        /// Free text.
        description: Option<String>,
        /// `true`: generate a value now; `false`: wait for a human to `keyveil set` it.
        generate: bool,
        /// Length of a generated value in characters.
        length: Option<usize>,
    },
    /// Run a command under a grant (creating a request if none matches).
    Run(RunRequest),
    /// Create a request for access.
    RequestAccess(AccessRequest),
    /// State of a request.
    AccessStatus {
        /// Request id.
        request_id: u64,
    },
    /// Pending requests.
    Requests,
    /// Approve a request with the human's factor.
    Approve {
        /// Request id.
        request_id: u64,
        /// `factor_proof::card_digest` of the request as the human was shown it: the broker
        /// refuses the approval if its request no longer has this digest.
        card: String,
        /// Proof of the human's factor (absent only with `confirm`).
        #[serde(default)]
        factor: Option<FactorProof>,
        /// No secret factor: allowed only where the environment's policy is `confirm`.
        #[serde(default)]
        confirm: bool,
        /// Grant lifetime in seconds (absent: a one-use grant valid for 15 minutes).
        ttl_seconds: Option<u64>,
        /// Number of uses (absent: 1 without a TTL, unlimited within a TTL).
        uses: Option<u32>,
        /// Let the grant cover any command in the environment.
        any_command: bool,
        /// Cover longer argv that start with the approved one (token-wise, no code options).
        #[serde(default)]
        prefix: bool,
        /// Cover canonical subdirectories of the approved working directory.
        #[serde(default)]
        subdirs: bool,
    },
    /// Deny a request.
    Deny {
        /// Request id.
        request_id: u64,
        /// Reason shown to the requester.
        reason: Option<String>,
    },
    /// Live grants (of one client if `client` is set).
    Grants {
        /// Filter: a client scope key (`mcp:NAME`).
        client: Option<String>,
    },
    /// Revoke one grant, or all.
    Revoke {
        /// Grant id; `None` with `all` revokes every grant.
        grant_id: Option<String>,
        /// Revoke every live grant.
        all: bool,
        /// Only grants of this client scope key (used by MCP `revoke_grant`).
        client: Option<String>,
    },
    /// Start TOTP enrolment (passphrase required); returns the `otpauth://` URI once, sealed
    /// under the factor key (`sealed_uri`, `sealed_qr`; associated data `factor_enroll`).
    FactorEnroll {
        /// Proof of the passphrase.
        #[serde(default)]
        factor: Option<FactorProof>,
    },
    /// Finish TOTP enrolment with a first code from the authenticator.
    FactorConfirm {
        /// The code.
        code: String,
    },
    /// An environment's policy.
    PolicyShow {
        /// Environment.
        environment: String,
    },
    /// Change an environment's policy (always needs a factor: passphrase or TOTP).
    PolicySet {
        /// Environment.
        environment: String,
        /// Proof of the human's factor.
        #[serde(default)]
        factor: Option<FactorProof>,
        /// The change.
        change: PolicyChange,
    },
    /// Recent audit entries.
    Audit {
        /// Last N entries.
        limit: Option<usize>,
    },
    /// Verify the audit chain.
    AuditVerify,
    /// A one-time URL of the local web approval page (starts the page on first use).
    WebUrl,
    /// Declare a dynamic variable: a credential minted per grant at its source, or a value
    /// fetched from OpenBao at each spawn. From the human's CLI only: it carries the engine's
    /// admin credential.
    DynamicAdd(DynamicAddRequest),
    /// Search for copies of every stored value (`keyveil sweep`, `docs/sweep.md`): needs the
    /// factor; the findings come back sealed for the CLI that proved it.
    Sweep(crate::sweep::wire::SweepRequest),
    /// Watch host transcript folders and the roots (`keyveil sweep --watch`): the broker keeps
    /// the connection and sends a [`Reply::Sweep`] per batch of findings until the client leaves.
    SweepWatch(crate::sweep::wire::SweepRequest),
    /// Start a long-running command (dev server, watcher) under a grant, like [`Request::Run`]
    /// (same approval wait), but reply as soon as it is spawned: `Ok {run_id, grant_id, pid}`.
    /// Its redacted output is read with [`Request::Logs`]; it ends on [`Request::Stop`], at its
    /// timeout, or when its grant ends.
    Start(RunRequest),
    /// Redacted output of a background run, from a byte offset of its combined output.
    Logs {
        /// Run id (`r-...`).
        run_id: String,
        /// Offset to read from (0: the start; earlier output may have been dropped).
        #[serde(default)]
        from: u64,
        /// Most bytes to return (default and cap 64 KiB).
        #[serde(default)]
        max_bytes: Option<usize>,
        /// Only runs of this client scope key (`mcp:NAME`); `None` for the human's CLI.
        #[serde(default)]
        client: Option<String>,
    },
    /// Stop a background run: SIGTERM to its process group, SIGKILL after 2 s.
    Stop {
        /// Run id.
        run_id: String,
        /// Only runs of this client scope key; `None` for the human's CLI.
        #[serde(default)]
        client: Option<String>,
    },
    /// A one-time URL of the local page where the human types the value of a declared variable
    /// that has none yet (the value goes from the browser to the broker, never through a client).
    SetUrl {
        /// Environment name.
        environment: String,
        /// Variable name.
        name: String,
    },
}

/// A dynamic variable to declare (see `docs/dynamic-credentials.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DynamicAddRequest {
    /// Environment name.
    pub environment: String,
    /// Variable name; `None` for `openbao-kv` imports every field of the KV secret.
    pub name: Option<String>,
    /// `postgres`, `redis`, `openbao-database` or `openbao-kv`.
    pub engine: String,
    /// Admin connection URL (`postgres`, `redis`) or OpenBao token: a secret.
    pub admin: Passphrase,
    /// Role template: SQL with `{{role}}` (PostgreSQL), ACL rules (Redis).
    #[serde(default)]
    pub template: String,
    /// `password`, `url` or `pg-env` (empty: `url`, or `password` through OpenBao without a
    /// connect URL).
    #[serde(default)]
    pub output: String,
    /// Non-secret settings: `address`, `mount`, `role`, `path`, `key`, `connect_url`, `prefix`.
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Connect with the admin credential before storing it.
    #[serde(default)]
    pub check: bool,
    /// The human's factor, needed when the change replaces a variable that holds a value.
    #[serde(default)]
    pub factor: Option<FactorProof>,
}

impl Request {
    /// The factor proof this request carries, if any.
    pub fn factor(&self) -> Option<&FactorProof> {
        match self {
            Request::EnvReveal { factor, .. }
            | Request::EnvRemove { factor, .. }
            | Request::VarSet { factor, .. }
            | Request::VarGenerate { factor, .. }
            | Request::VarUnset { factor, .. }
            | Request::Approve { factor, .. }
            | Request::FactorEnroll { factor }
            | Request::PolicySet { factor, .. } => factor.as_ref(),
            Request::DynamicAdd(d) => d.factor.as_ref(),
            Request::Sweep(s) | Request::SweepWatch(s) => s.factor.as_ref(),
            _ => None,
        }
    }

    /// Puts a factor proof into this request (where it has a place for one).
    pub fn set_factor(&mut self, proof: FactorProof) {
        match self {
            Request::EnvReveal { factor, .. }
            | Request::EnvRemove { factor, .. }
            | Request::VarSet { factor, .. }
            | Request::VarGenerate { factor, .. }
            | Request::VarUnset { factor, .. }
            | Request::Approve { factor, .. }
            | Request::FactorEnroll { factor }
            | Request::PolicySet { factor, .. } => *factor = Some(proof),
            Request::DynamicAdd(d) => d.factor = Some(proof),
            Request::Sweep(s) | Request::SweepWatch(s) => s.factor = Some(proof),
            _ => {}
        }
    }

    /// The `op` name for logs and audit (never the payload).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::FactorChallenge { .. } => "factor_challenge",
            Request::Lock => "lock",
            Request::Shutdown => "shutdown",
            Request::EnvList => "env_list",
            Request::EnvShow { .. } => "env_show",
            Request::EnvReveal { .. } => "env_reveal",
            Request::EnvCreate { .. } => "env_create",
            Request::EnvRemove { .. } => "env_remove",
            Request::VarSet { .. } => "var_set",
            Request::VarGenerate { .. } => "var_generate",
            Request::VarUnset { .. } => "var_unset",
            Request::VarDeclare { .. } => "var_declare",
            Request::Run(_) => "run",
            Request::RequestAccess(_) => "request_access",
            Request::AccessStatus { .. } => "access_status",
            Request::Requests => "requests",
            Request::Approve { .. } => "approve",
            Request::FactorEnroll { .. } => "factor_enroll",
            Request::FactorConfirm { .. } => "factor_confirm",
            Request::PolicyShow { .. } => "policy_show",
            Request::PolicySet { .. } => "policy_set",
            Request::Deny { .. } => "deny",
            Request::Grants { .. } => "grants",
            Request::Revoke { .. } => "revoke",
            Request::Audit { .. } => "audit",
            Request::AuditVerify => "audit_verify",
            Request::WebUrl => "web_url",
            Request::DynamicAdd(_) => "dynamic_add",
            Request::Sweep(_) => "sweep",
            Request::SweepWatch(_) => "sweep_watch",
            Request::Start(_) => "start",
            Request::Logs { .. } => "logs",
            Request::Stop { .. } => "stop",
            Request::SetUrl { .. } => "set_url",
        }
    }
}

/// One change to an environment's policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "set", rename_all = "snake_case")]
pub enum PolicyChange {
    /// The factor approvals need: `passphrase`, `totp` (TOTP or passphrase), `confirm` (none).
    Factor {
        /// `passphrase` | `totp` | `confirm`.
        factor: String,
    },
    /// Upper bound of grant lifetimes, seconds.
    MaxTtl {
        /// Seconds.
        seconds: u64,
    },
    /// `PATH` of this environment's children (`None`: the vault-wide one).
    Path {
        /// `:`-separated absolute directories.
        path: Option<String>,
    },
    /// Add an auto-approve rule.
    AutoApproveAdd {
        /// argv tokens.
        argv: Vec<String>,
        /// argv is a prefix.
        prefix: bool,
        /// Directory (canonicalised by the broker).
        cwd: String,
        /// Grant lifetime, seconds.
        ttl_seconds: u64,
    },
    /// Remove auto-approve rule number `index` (0-based, as `policy show` lists them).
    AutoApproveRemove {
        /// Index.
        index: usize,
        /// `factor_proof::card_digest` of the rule as `policy show` listed it to the human: the
        /// broker removes rule `index` only if it is that rule.
        #[serde(default)]
        rule: String,
    },
    /// Add a deny rule.
    DenyAdd {
        /// argv tokens.
        argv: Vec<String>,
        /// argv is a prefix.
        prefix: bool,
    },
    /// Remove deny rule number `index`.
    DenyRemove {
        /// Index.
        index: usize,
        /// Digest of the rule as shown (see [`PolicyChange::AutoApproveRemove::rule`]).
        #[serde(default)]
        rule: String,
    },
    /// What to do when a run writes a value into a file: `report`, `quarantine`, `fail`.
    WriteLeaks {
        /// `report` | `quarantine` | `fail`.
        action: String,
    },
    /// Hide variable names from every client (agents see aliases, `HIDDEN_` + 12 hex digits).
    HideNames {
        /// `true` to hide.
        hide: bool,
    },
}

/// Error classes; each maps to a CLI exit code (0 ok, 1 error, 2 usage, 3 denied, 4 locked, 5
/// timed out waiting for approval; see the README).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Generic failure (exit 1).
    Failed,
    /// Bad input (exit 2).
    Usage,
    /// Denied by the human, by policy, a wrong factor or a revoked grant (exit 3).
    Denied,
    /// The vault is locked (exit 4).
    Locked,
    /// Timed out waiting for approval (exit 5).
    Timeout,
    /// Something named does not exist (exit 1).
    NotFound,
}

impl ErrorCode {
    /// CLI exit code for this class.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::Failed | ErrorCode::NotFound => 1,
            ErrorCode::Usage => 2,
            ErrorCode::Denied => 3,
            ErrorCode::Locked => 4,
            ErrorCode::Timeout => 5,
        }
    }
}

/// The result of one finished run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    /// Run id (`r-` + hex).
    pub run_id: String,
    /// Grant id the run used.
    pub grant_id: String,
    /// Exit code, or `128 + signal` when the child was killed by a signal.
    pub exit_code: i32,
    /// Signal number that ended the child, if any.
    pub signal: Option<i32>,
    /// Number of redactions made across stdout and stderr.
    pub redactions: u64,
    /// Collected redacted stdout (UTF-8, lossy) in `Collect` mode.
    pub stdout: String,
    /// Collected redacted stderr (UTF-8, lossy) in `Collect` mode.
    pub stderr: String,
    /// `true` if a stream went over the cap and was cut.
    pub truncated: bool,
    /// `true` if the run hit its timeout and was killed.
    pub timed_out: bool,
    /// `true` if the grant was revoked while the run was live and the run was killed.
    pub revoked: bool,
    /// Wall time from spawn to exit, in milliseconds.
    pub duration_ms: u64,
    /// Values the run wrote into files (found by the post-run scan): variable and path, never
    /// the value.
    #[serde(default)]
    pub write_leaks: Vec<WriteLeak>,
    /// What the post-run scan covered.
    #[serde(default)]
    pub write_scan: Option<WriteScanSummary>,
}

/// A value found in a file a run wrote.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteLeak {
    /// Variable name.
    pub variable: String,
    /// File (for archive members `archive!member`).
    pub path: String,
    /// The form it was found in (`raw`, `base64`, `utf-16le`, `gzip`, `git-object`, ...).
    pub form: String,
    /// What keyveil did: `reported`, `quarantined` (moved aside, mode 0600) or `failed` (the
    /// run's exit code was forced to 1 after reporting).
    pub action: String,
}

/// The extent of a post-run write scan.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriteScanSummary {
    /// Files read.
    pub files_scanned: u64,
    /// Bytes read.
    pub bytes_scanned: u64,
    /// A limit cut the scan short.
    pub truncated: bool,
    /// Scan time, milliseconds.
    pub elapsed_ms: u64,
}

/// Broker → client JSON replies. Tagged by `kind`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reply {
    /// Success with a request-specific JSON payload.
    Ok {
        /// Payload.
        data: serde_json::Value,
    },
    /// Failure the user can act on.
    Error {
        /// Class.
        code: ErrorCode,
        /// What happened.
        message: String,
        /// What to do next.
        hint: Option<String>,
    },
    /// A run waits for approval (`is_final` false while the broker keeps waiting).
    Pending {
        /// Request id to approve.
        request_id: u64,
        /// What the human should do.
        hint: String,
        /// `true` when the broker has stopped waiting and closes the exchange.
        #[serde(rename = "final")]
        is_final: bool,
    },
    /// A run started under a grant.
    Started {
        /// Run id.
        run_id: String,
        /// Grant id.
        grant_id: String,
    },
    /// A run ended.
    Exit(RunResult),
    /// Findings of `keyveil sweep --watch`, sealed for the CLI that proved the factor (not
    /// final: the watch goes on).
    Sweep(crate::sweep::wire::SweepReply),
}

impl Reply {
    /// Whether this reply ends the exchange.
    pub fn is_final(&self) -> bool {
        match self {
            Reply::Ok { .. } | Reply::Error { .. } | Reply::Exit(_) => true,
            Reply::Pending { is_final, .. } => *is_final,
            Reply::Started { .. } | Reply::Sweep(_) => false,
        }
    }

    /// Shorthand for an error reply.
    pub fn error(code: ErrorCode, message: impl Into<String>, hint: Option<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
            hint,
        }
    }

    /// Shorthand for a success reply.
    pub fn ok(data: serde_json::Value) -> Reply {
        Reply::Ok { data }
    }
}

/// A decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// A JSON document (still to be parsed as [`Request`] or [`Reply`]).
    Json(Bytes),
    /// Redacted stdout bytes.
    Stdout(Bytes),
    /// Redacted stderr bytes.
    Stderr(Bytes),
}

/// Errors decoding a frame body; the peer is at fault.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Zero-length frame (no tag byte).
    #[error("empty frame")]
    Empty,
    /// Unknown tag byte.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
}

impl Frame {
    /// Splits a frame body (after the length prefix) into tag and payload.
    pub fn decode(mut body: BytesMut) -> Result<Frame, FrameError> {
        if body.is_empty() {
            return Err(FrameError::Empty);
        }
        let tag = body.split_to(1);
        let payload = body.freeze();
        match tag.first().copied() {
            Some(TAG_JSON) => Ok(Frame::Json(payload)),
            Some(TAG_STDOUT) => Ok(Frame::Stdout(payload)),
            Some(TAG_STDERR) => Ok(Frame::Stderr(payload)),
            Some(t) => Err(FrameError::UnknownTag(t)),
            None => Err(FrameError::Empty),
        }
    }

    /// Encodes a tagged body (without the length prefix).
    pub fn encode(tag: u8, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::with_capacity(payload.len() + 1);
        b.extend_from_slice(&[tag]);
        b.extend_from_slice(payload);
        b.freeze()
    }

    /// Encodes a JSON value as a frame body.
    pub fn json<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
        let v = serde_json::to_vec(value)?;
        Ok(Frame::encode(TAG_JSON, &v))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn frame_round_trip_and_bad_tags() {
        let body = Frame::encode(TAG_STDERR, b"abc");
        match Frame::decode(BytesMut::from(&body[..])).unwrap() {
            Frame::Stderr(p) => assert_eq!(&p[..], b"abc"),
            other => panic!("wrong frame {other:?}"),
        }
        assert!(matches!(
            Frame::decode(BytesMut::new()),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            Frame::decode(BytesMut::from(&[9u8, 1][..])),
            Err(FrameError::UnknownTag(9))
        ));
    }

    #[test]
    fn debug_of_requests_never_shows_a_passphrase_or_value() {
        let r = Request::VarSet {
            environment: "e".into(),
            name: "N".into(),
            value: Some(Passphrase::new("hunter2-planted-value".into())),
            sealed_value: None,
            factor: None,
        };
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[sensitive]"));
        let json = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&json).unwrap();
        match back {
            Request::VarSet { value, .. } => {
                assert_eq!(value.unwrap().expose(), "hunter2-planted-value")
            }
            other => panic!("{other:?}"),
        }
        let b = Bootstrap::Unlock {
            passphrase: Passphrase::new("planted-factor-passphrase".into()),
        };
        assert!(!format!("{b:?}").contains("planted-factor"));
    }

    #[test]
    fn no_request_carries_a_factor_field_that_could_hold_a_passphrase() {
        // The old wire shapes (a passphrase or TOTP code in the request) are refused outright.
        for old in [
            r#"{"op":"unlock","passphrase":"p"}"#,
            r#"{"op":"init","passphrase":"p","kdf_memory_kib":null}"#,
            r#"{"op":"approve","request_id":1,"passphrase":"p","any_command":false,"ttl_seconds":null,"uses":null}"#,
        ] {
            assert!(serde_json::from_str::<Request>(old).is_err(), "{old}");
        }
    }
}
