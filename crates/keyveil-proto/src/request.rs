//! Requests: what a client (the CLI, the MCP server, the web page) asks the broker.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::op;

/// Who is asking: shown to the human at approval, and part of a grant's scope.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
    /// final [`RunResult`](crate::RunResult) (the MCP server).
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
    /// Seconds to wait for an approval before replying [`Reply::Pending`](crate::Reply::Pending) as final.
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
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
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
    /// CI mode: an ephemeral vault under a random key, the manifest and allowlist frozen
    /// (`keyveil ci start`, `docs/ci.md`).
    Ci(Box<crate::op::CiBootstrap>),
}

/// The longest `NAME=value` string, in bytes with its terminating NUL, that Linux lets one
/// environment entry of a new program be (`MAX_ARG_STRLEN`, 32 pages of 4 KiB): a longer one
/// makes `execve` fail with `E2BIG`. `set` refuses values that could never be injected.
pub const MAX_ENV_STRING: usize = 131_072;

/// The message and hint when `NAME=value` is over [`MAX_ENV_STRING`], or `None` when it fits.
pub fn env_string_too_long(name: &str, value_len: usize) -> Option<(String, String)> {
    let total = name.len().saturating_add(value_len).saturating_add(2);
    (total > MAX_ENV_STRING).then(|| {
        (
            format!(
                "the value of {name} is {value_len} bytes: Linux cannot pass an environment entry (NAME=value) over {MAX_ENV_STRING} bytes to a program, so it could never be injected; nothing was stored"
            ),
            format!(
                "keep values under {} bytes for this name; store a large secret (a key file, a bundle) in a file and keep its path or a short key to it in keyveil",
                MAX_ENV_STRING.saturating_sub(name.len()).saturating_sub(2)
            ),
        )
    })
}

/// The shortest vault passphrase `init` accepts, in bytes of UTF-8 (the broker refuses a
/// shorter one; the CLI says so right after the first entry).
pub const MIN_PASSPHRASE_LEN: usize = 8;

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
    FactorChallenge(op::FactorChallenge),
    /// Drop the decrypted vault from memory; revoke all grants.
    Lock,
    /// Stop the broker and its runs.
    Shutdown,
    /// Environments with variable names.
    EnvList,
    /// One environment in detail.
    EnvShow(op::EnvShow),
    /// The real names behind an environment's aliases (`hide_names` policy): needs the factor.
    EnvReveal(op::EnvReveal),
    /// Create an environment.
    EnvCreate(op::EnvCreate),
    /// Remove an environment and all its variables (with a stored value: needs the factor).
    EnvRemove(op::EnvRemove),
    /// Store a value (from the human's CLI only).
    VarSet(op::VarSet),
    /// Generate a random value inside the broker.
    VarGenerate(op::VarGenerate),
    /// Delete a variable (with a stored value: needs the factor).
    VarUnset(op::VarUnset),
    /// Declare a variable (agent side): generated now, or awaiting a human's value.
    VarDeclare(op::VarDeclare),
    /// Run a command under a grant (creating a request if none matches).
    Run(RunRequest),
    /// Create a request for access.
    RequestAccess(AccessRequest),
    /// State of a request.
    AccessStatus(op::AccessStatus),
    /// Pending requests.
    Requests,
    /// Approve a request with the human's factor.
    Approve(op::Approve),
    /// Approve with hidden names, step one: check the factor, hold the approval, reveal the
    /// request's real names sealed for the CLI (`op::ApproveReveal`).
    ApproveReveal(op::ApproveReveal),
    /// Approve with hidden names, step two: the held approval's ticket (`op::ApproveConfirm`).
    ApproveConfirm(op::ApproveConfirm),
    /// Deny a request.
    Deny(op::Deny),
    /// Live grants (of one client if `client` is set).
    Grants(op::Grants),
    /// Revoke one grant, or all.
    Revoke(op::Revoke),
    /// Start TOTP enrolment (passphrase required); returns the `otpauth://` URI once, sealed
    /// under the factor key (`sealed_uri`, `sealed_qr`; associated data `factor_enroll`).
    FactorEnroll(op::FactorEnroll),
    /// Finish TOTP enrolment with a first code from the authenticator.
    FactorConfirm(op::FactorConfirm),
    /// An environment's policy.
    PolicyShow(op::PolicyShow),
    /// Change an environment's policy (always needs a factor: passphrase or TOTP).
    PolicySet(op::PolicySet),
    /// Recent audit entries.
    Audit(op::Audit),
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
    Sweep(op::Sweep),
    /// Watch host transcript folders and the roots (`keyveil sweep --watch`): the broker keeps
    /// the connection and sends a [`crate::Reply::Sweep`] per batch of findings until the client leaves.
    SweepWatch(op::Sweep),
    /// Start a long-running command (dev server, watcher) under a grant, like [`Request::Run`]
    /// (same approval wait), but reply as soon as it is spawned: `Ok {run_id, grant_id, pid}`.
    /// Its redacted output is read with [`Request::Logs`]; it ends on [`Request::Stop`], at its
    /// timeout, or when its grant ends.
    Start(RunRequest),
    /// Redacted output of a background run, from a byte offset of its combined output.
    Logs(op::Logs),
    /// Stop a background run: SIGTERM to its process group, SIGKILL after 2 s.
    Stop(op::Stop),
    /// A one-time URL of the local page where the human types the value of a declared variable
    /// that has none yet (the value goes from the browser to the broker, never through a client).
    SetUrl(op::SetUrl),
    /// Create a mount: a FIFO whose every read is a request (`docs/mounts.md`).
    Mount(op::Mount),
    /// Remove a mount and its FIFO.
    Unmount(op::Unmount),
    /// List mounts.
    Mounts(op::Mounts),
    /// Approve a project manifest's digest with the factor (`keyveil project apply`).
    ProjectApprove(op::ProjectApprove),
    /// The manifests environments are pinned to (`keyveil project status`).
    ProjectStatus,
    /// CI mode: scan artifact folders for every value the job used (`keyveil ci scan`).
    CiScan(op::CiScan),
    /// CI mode: end the job's broker and write its signed audit chain (`keyveil ci finish`).
    CiFinish(op::CiFinish),
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
            Request::EnvReveal(op::EnvReveal { factor, .. })
            | Request::EnvRemove(op::EnvRemove { factor, .. })
            | Request::VarSet(op::VarSet { factor, .. })
            | Request::VarGenerate(op::VarGenerate { factor, .. })
            | Request::VarUnset(op::VarUnset { factor, .. })
            | Request::Approve(op::Approve { factor, .. })
            | Request::ApproveReveal(op::ApproveReveal { factor, .. })
            | Request::FactorEnroll(op::FactorEnroll { factor })
            | Request::PolicySet(op::PolicySet { factor, .. })
            | Request::ProjectApprove(op::ProjectApprove { factor, .. }) => factor.as_ref(),
            Request::DynamicAdd(d) => d.factor.as_ref(),
            Request::Sweep(s) | Request::SweepWatch(s) => s.factor.as_ref(),
            _ => None,
        }
    }

    /// Puts a factor proof into this request (where it has a place for one).
    pub fn set_factor(&mut self, proof: FactorProof) {
        match self {
            Request::EnvReveal(op::EnvReveal { factor, .. })
            | Request::EnvRemove(op::EnvRemove { factor, .. })
            | Request::VarSet(op::VarSet { factor, .. })
            | Request::VarGenerate(op::VarGenerate { factor, .. })
            | Request::VarUnset(op::VarUnset { factor, .. })
            | Request::Approve(op::Approve { factor, .. })
            | Request::ApproveReveal(op::ApproveReveal { factor, .. })
            | Request::FactorEnroll(op::FactorEnroll { factor })
            | Request::PolicySet(op::PolicySet { factor, .. })
            | Request::ProjectApprove(op::ProjectApprove { factor, .. }) => *factor = Some(proof),
            Request::DynamicAdd(d) => d.factor = Some(proof),
            Request::Sweep(s) | Request::SweepWatch(s) => s.factor = Some(proof),
            _ => {}
        }
    }

    /// The `op` name for logs and audit (never the payload).
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::FactorChallenge(op::FactorChallenge { .. }) => "factor_challenge",
            Request::Lock => "lock",
            Request::Shutdown => "shutdown",
            Request::EnvList => "env_list",
            Request::EnvShow(op::EnvShow { .. }) => "env_show",
            Request::EnvReveal(op::EnvReveal { .. }) => "env_reveal",
            Request::EnvCreate(op::EnvCreate { .. }) => "env_create",
            Request::EnvRemove(op::EnvRemove { .. }) => "env_remove",
            Request::VarSet(op::VarSet { .. }) => "var_set",
            Request::VarGenerate(op::VarGenerate { .. }) => "var_generate",
            Request::VarUnset(op::VarUnset { .. }) => "var_unset",
            Request::VarDeclare(op::VarDeclare { .. }) => "var_declare",
            Request::Run(_) => "run",
            Request::RequestAccess(_) => "request_access",
            Request::AccessStatus(op::AccessStatus { .. }) => "access_status",
            Request::Requests => "requests",
            Request::Approve(op::Approve { .. }) => "approve",
            Request::ApproveReveal(op::ApproveReveal { .. }) => "approve_reveal",
            Request::ApproveConfirm(op::ApproveConfirm { .. }) => "approve_confirm",
            Request::FactorEnroll(op::FactorEnroll { .. }) => "factor_enroll",
            Request::FactorConfirm(op::FactorConfirm { .. }) => "factor_confirm",
            Request::PolicyShow(op::PolicyShow { .. }) => "policy_show",
            Request::PolicySet(op::PolicySet { .. }) => "policy_set",
            Request::Deny(op::Deny { .. }) => "deny",
            Request::Grants(op::Grants { .. }) => "grants",
            Request::Revoke(op::Revoke { .. }) => "revoke",
            Request::Audit(op::Audit { .. }) => "audit",
            Request::AuditVerify => "audit_verify",
            Request::WebUrl => "web_url",
            Request::DynamicAdd(_) => "dynamic_add",
            Request::Sweep(_) => "sweep",
            Request::SweepWatch(_) => "sweep_watch",
            Request::Start(_) => "start",
            Request::Logs(op::Logs { .. }) => "logs",
            Request::Stop(op::Stop { .. }) => "stop",
            Request::SetUrl(op::SetUrl { .. }) => "set_url",
            Request::Mount(_) => "mount",
            Request::Unmount(_) => "unmount",
            Request::Mounts(_) => "mounts",
            Request::ProjectApprove(_) => "project_approve",
            Request::ProjectStatus => "project_status",
            Request::CiScan(_) => "ci_scan",
            Request::CiFinish(_) => "ci_finish",
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
    /// Let this environment's OpenBao variables send their login secret over plain HTTP, and
    /// its PostgreSQL and Redis variables their admin password, to a loopback port held by a process of
    /// the broker's own user or one of its subordinate uids (a `bao proxy` or dev server of
    /// yours, which an agent of your uid could also hold). Off by default: a listener of
    /// another user is accepted, one of yours is refused before anything is sent.
    InsecureLoopback {
        /// `true` to allow.
        allow: bool,
    },
    /// Bind a variable to hosts: runs get a placeholder, and the run's egress proxy sends the
    /// value only to these destinations (`docs/egress.md`). Replaces an earlier binding.
    Bind {
        /// Variable name.
        variable: String,
        /// `host` or `host:port` (443 when absent), at least one.
        hosts: Vec<String>,
        /// Also swap the value into the request's path and query (default: headers only).
        #[serde(default)]
        url: bool,
        /// Also swap the value into the request's body and trailers (default: headers only).
        #[serde(default)]
        body: bool,
    },
    /// Remove a variable's binding (runs get its value again).
    Unbind {
        /// Variable name.
        variable: String,
    },
    /// Extra root certificates (PEM text) the egress proxy trusts upstream (`None`: the
    /// system's only).
    EgressRoots {
        /// PEM certificates.
        pem: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn debug_of_requests_never_shows_a_passphrase_or_value() {
        let r = Request::VarSet(op::VarSet {
            environment: "e".into(),
            name: "N".into(),
            value: Some(Passphrase::new("hunter2-planted-value".into())),
            sealed_value: None,
            factor: None,
        });
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("[sensitive]"));
        let json = serde_json::to_string(&r).unwrap();
        let back: Request = serde_json::from_str(&json).unwrap();
        match back {
            Request::VarSet(op::VarSet { value, .. }) => {
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

    #[test]
    fn an_operation_type_keeps_the_wire_shape_of_its_request() {
        // Every operation is a type wrapped by its `Request` variant: the JSON is still one flat
        // object tagged by `op` (what existing clients and the factor digests see).
        let r = Request::EnvShow(op::EnvShow {
            name: "app".into(),
            versions: false,
        });
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"op": "env_show", "name": "app"})
        );
        let back: Request =
            serde_json::from_str(r#"{"op":"revoke","grant_id":null,"all":true,"client":"mcp:x"}"#)
                .unwrap();
        match &back {
            Request::Revoke(op::Revoke { all, client, .. }) => {
                assert!(*all);
                assert_eq!(client.as_deref(), Some("mcp:x"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::json!({"op": "revoke", "grant_id": null, "all": true, "client": "mcp:x"})
        );
        for unit in [Request::Status, Request::Requests, Request::AuditVerify] {
            let v = serde_json::to_value(&unit).unwrap();
            assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
        }
    }

    #[test]
    fn a_sweep_is_a_typed_operation_with_the_same_wire_shape() {
        let r: Request = serde_json::from_str(
            r#"{"op":"sweep_watch","roots":["/w"],"home":null,"contain":true}"#,
        )
        .unwrap();
        match &r {
            Request::SweepWatch(op::Sweep { roots, contain, .. }) => {
                assert_eq!(roots, &["/w".to_owned()]);
                assert!(*contain);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.op(), "sweep_watch");
        let sweep: Request = op::Sweep {
            roots: Vec::new(),
            home: None,
            contain: false,
            scrub_transcripts: false,
            recent_seconds: None,
            max_seconds: None,
            progress: false,
            factor: None,
        }
        .into();
        assert_eq!(serde_json::to_value(&sweep).unwrap()["op"], "sweep");
        // A watch's batches never end the exchange.
        assert!(!crate::Reply::Sweep(op::SweepReply { sealed: "x".into() }).is_final());
        assert!(!crate::Reply::SweepProgress(op::SweepProgress::default()).is_final());
        // A sweep without progress serialises as before (its digest is unchanged).
        assert!(
            serde_json::to_value(&sweep)
                .unwrap()
                .get("progress")
                .is_none()
        );
    }
}
