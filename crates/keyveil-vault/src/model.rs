//! The decrypted contents of a vault: environments, variables, policy.
//!
//! Everything here is serialised as JSON (the vault *payload*, see `docs/vault-format.md`) and is
//! only ever held in memory after decryption. Variables' values and the TOTP seed are
//! [`SealedValue`]s, encrypted in memory until used; dynamic engines' admin credentials are
//! [`SecretValue`]s, which zeroize their memory on drop. Neither prints its contents through
//! `Debug`, and neither has `Display`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::SealedValue;

/// Longest accepted variable name, in bytes (see [`is_valid_name`]).
pub const MAX_NAME_LEN: usize = 128;

/// Longest accepted environment name, in bytes (see [`is_valid_environment_name`]).
pub const MAX_ENVIRONMENT_NAME_LEN: usize = 64;

/// Default for [`Policy::max_ttl_seconds`]: 8 hours, in seconds.
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 8 * 60 * 60;

/// Everything a vault holds, as decrypted from its payload.
///
/// Serialised as one JSON object; unknown fields are ignored on read (and therefore dropped on
/// the next save), missing optional fields take their defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VaultData {
    /// Environments by name (see [`is_valid_environment_name`]).
    pub environments: BTreeMap<String, Environment>,
    /// Approval factors beyond the passphrase (placeholder; TOTP enrolment comes later).
    #[serde(default)]
    pub factors: Factors,
    /// The last audit-log position the broker vouched for, so a truncated audit log can be
    /// detected (see `docs/audit-format.md`). `None` until the broker records one.
    #[serde(default)]
    pub audit_checkpoint: Option<AuditCheckpoint>,
    /// A broker had the vault unlocked and has not closed its audit session (lock or stop)
    /// since: found `true` at unlock, the previous broker ended uncleanly (killed), and entries
    /// after [`VaultData::audit_checkpoint`] cannot be vouched for. Omitted while `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audit_session_open: bool,
    /// Vault-wide settings recorded from the human's own shell at `keyveil init`. Omitted from
    /// the payload while at their defaults (so older vaults re-encrypt byte for byte).
    #[serde(default, skip_serializing_if = "Settings::is_default")]
    pub settings: Settings,
    /// Variables whose value `keyveil sweep --contain` found outside keyveil, by
    /// `ENVIRONMENT/NAME` (real names). A mark older than the variable's `rotated_at` is spent.
    /// Omitted while empty (so older vaults re-encrypt byte for byte).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub compromised: BTreeMap<String, Compromise>,
    /// The project manifest (`keyveil.toml`) each environment was applied from, by environment
    /// name: the digest the human approved with the factor (`keyveil project apply`). A run or
    /// an approval for a pinned environment is refused while the file's digest differs. Kept
    /// when the environment is removed (a recreated environment stays pinned). Omitted while
    /// empty (so older vaults re-encrypt byte for byte).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub manifests: BTreeMap<String, ManifestPin>,
}

/// An approved project manifest (see [`VaultData::manifests`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPin {
    /// The manifest's absolute, canonical path, as the CLI that applied it resolved it.
    pub path: String,
    /// SHA-256 of the file's bytes as approved, 64 lowercase hex digits.
    pub sha256: String,
    /// When the human approved it (UTC).
    pub approved_at: jiff::Timestamp,
}

/// Where and when a sweep found copies of a variable's value (see
/// [`VaultData::compromised`]). Kinds of place and counts only: the exact places went to the
/// human who ran the sweep, never into the vault or a listing an agent can read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Compromise {
    /// When the sweep found it (UTC).
    pub found_at: jiff::Timestamp,
    /// Kinds of place (`claude-code`, `shell-history`, `git-history`, `file`, ...), sorted.
    pub kinds: Vec<String>,
    /// How many copies were found.
    pub copies: u64,
    /// The value the variable held when the sweep found it, kept sealed once the variable is
    /// rotated (a value stored after `found_at`) so that later sweeps still find its copies and
    /// `--scrub-transcripts` can rewrite them: a scrub rewrites copies of a rotated value only,
    /// never of a current one, whose rewritten copies would tell whoever planted guesses which
    /// one was right. `None` for a dynamic variable and for marks written before this field
    /// existed (omitted then, so older vaults re-encrypt byte for byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<SealedValue>,
    /// Whether [`Compromise::value`] was stored with the human's factor. A value stored
    /// without it (a first value) may be one an agent chose, such as a guess of another
    /// variable's value: once it is former, a scrub rewrites its copies only in a sweep that
    /// contained nothing, or which planted guess matched would show. `false` for marks written
    /// before this field existed (omitted then, so older vaults re-encrypt byte for byte).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub value_by_factor: bool,
}

/// Vault-wide settings. They decide what a granted child runs and where, so they live inside
/// the authenticated vault: a same-user process that edits files (or starts the broker with a
/// poisoned environment) cannot change them (design guarantee G7).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The `PATH` used to resolve `argv[0]` and given to granted children (`:`-separated
    /// absolute directories). `None`: `/usr/local/bin:/usr/bin:/bin`.
    pub path: Option<String>,
    /// The `HOME` given to granted children. `None`: the broker's own `HOME`.
    pub home: Option<String>,
}

impl Settings {
    /// Whether every field is at its default.
    pub fn is_default(&self) -> bool {
        *self == Settings::default()
    }
}

/// Approval factors enrolled for this vault, beyond the passphrase. They live inside the
/// authenticated vault, so an agent cannot enrol or remove a factor by editing files (design
/// guarantee G7).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Factors {
    /// The enrolled TOTP authenticator, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpFactor>,
}

/// An enrolled TOTP authenticator (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpFactor {
    /// The shared seed, RFC 4648 base32 without padding (a secret: never shown after
    /// enrolment), sealed in memory like variables' values.
    pub seed_base32: SealedValue,
    /// The last time step accepted (`unix_seconds / 30`); a code of this step or an earlier one
    /// is refused as a replay (RFC 6238 §5.2).
    pub last_step: u64,
    /// When it was enrolled.
    pub enrolled_at: jiff::Timestamp,
}

/// An auto-approve rule: asks matching it get a grant without a human at the time (the human
/// created the rule with their factor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoApproveRule {
    /// The argv, token by token.
    pub argv: Vec<String>,
    /// `argv` is a prefix (longer argv match, without code-executing options).
    #[serde(default)]
    pub prefix: bool,
    /// Canonical directory; the ask's working directory must be it or below it.
    pub cwd: String,
    /// Lifetime of the grants it creates, in seconds.
    pub ttl_seconds: u64,
    /// What the command ran when the human made the rule: the canonical path of its executable
    /// and of each input keyveil pinned (script, task-runner file, tool configuration, PATH
    /// directories) → its SHA-256 (or fingerprint). A request is auto-approved only while every
    /// one of its pins is among these with the same digest; a rule without them (made before
    /// keyveil bound them) approves nothing by itself.
    #[serde(default)]
    pub bound: std::collections::BTreeMap<String, String>,
}

/// A deny rule: asks matching it are refused without asking the human.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyRule {
    /// The argv, token by token.
    pub argv: Vec<String>,
    /// `argv` is a prefix.
    #[serde(default)]
    pub prefix: bool,
}

/// A position in the audit log: the sequence number and MAC (lowercase hex, 64 characters) of an
/// entry. Stored in the vault so that truncating the audit log after that entry is detectable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// `seq` of the entry (1-based).
    pub seq: u64,
    /// `mac` of the entry, lowercase hex.
    pub mac: String,
}

/// A named set of variables (`dev`, `staging`, ...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Environment {
    /// Free text for humans and agents; never a secret.
    pub description: String,
    /// Variables by name (see [`is_valid_name`]).
    pub variables: BTreeMap<String, Variable>,
    /// Access policy for this environment.
    #[serde(default)]
    pub policy: Policy,
    /// When the environment was created (UTC).
    pub created_at: jiff::Timestamp,
}

impl Environment {
    /// A new, empty environment with the default policy, created now.
    pub fn new(description: impl Into<String>) -> Environment {
        Environment {
            description: description.into(),
            variables: BTreeMap::new(),
            policy: Policy::default(),
            created_at: jiff::Timestamp::now(),
        }
    }
}

/// Per-environment access policy. Lives inside the authenticated vault, so it can only be changed
/// by a key holder (design guarantee G7). Every field has a default, so `{}` is a valid policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Which factor a human must present to approve a request. Default: [`FactorKind::Passphrase`].
    pub factor: FactorKind,
    /// Upper bound on a grant's lifetime, in seconds. Default: 28 800 (8 hours).
    pub max_ttl_seconds: u64,
    /// Whether variable names are hidden from agents (they see only the environment). Default:
    /// `false`.
    pub hide_names: bool,
    /// Whether this environment's OpenBao variables may send their login secret over plain
    /// HTTP to a loopback port held by the broker's own user (any process of that uid could
    /// hold it). Default: `false` (only a listener of another user is sent anything).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_loopback: bool,
    /// `PATH` for this environment's children, overriding [`Settings::path`]. Default: `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Auto-approve rules. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub auto_approve: Vec<AutoApproveRule>,
    /// Deny rules. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<DenyRule>,
    /// What to do when a run wrote a value into a file. Default: report.
    #[serde(skip_serializing_if = "WriteLeakAction::is_report")]
    pub write_leaks: WriteLeakAction,
    /// Host-bound variables: name → the destinations (`host` or `host:port`, lowercase) its
    /// value may be sent to. A bound variable reaches a run as a placeholder; the run's egress
    /// proxy swaps in the value only in HTTPS requests to these destinations. Default: none.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bindings: std::collections::BTreeMap<String, Vec<String>>,
    /// Where else in a request to its hosts a bound variable's placeholder is swapped for the
    /// value, besides the headers: name → [`BoundIn`]. Absent: headers only. Default: none.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bound_in: std::collections::BTreeMap<String, BoundIn>,
    /// Extra root certificates (PEM) the egress proxy trusts for upstream servers, on top of
    /// the system's (a private CA, a test server). Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_roots: Option<String>,
}

impl Policy {
    /// Where besides the headers a bound variable `name`'s placeholder is swapped for its
    /// value: its entry in [`Policy::bound_in`], or headers only ([`BoundIn::default`]) when it
    /// has none.
    pub fn bound_in_of(&self, name: &str) -> BoundIn {
        self.bound_in.get(name).copied().unwrap_or_default()
    }
}

/// The parts of a request to a bound host, besides its headers, where the egress proxy swaps a
/// bound variable's placeholder for its value. Each is opt-in: a host that stores what it is
/// sent there (a note, a gist, a message, a logged URL) can later give the value back to
/// whoever reads it, so only the parts an API needs the key in are swapped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoundIn {
    /// The request's path and query (`?key=…`).
    pub url: bool,
    /// The request's body and trailers (form and JSON posts).
    pub body: bool,
}

impl BoundIn {
    /// Headers only (the default).
    pub fn is_headers_only(&self) -> bool {
        !self.url && !self.body
    }
}

/// What the broker does when the post-run scan finds a value in a file a run wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteLeakAction {
    /// Report by variable and path in the run result and the audit log.
    #[default]
    Report,
    /// Report, and move the file aside (`NAME.keyveil-quarantine`, mode 0600).
    Quarantine,
    /// Report, and fail the run (exit code 1 when it would have been 0).
    Fail,
}

impl WriteLeakAction {
    /// Whether this is the default.
    pub fn is_report(&self) -> bool {
        *self == WriteLeakAction::Report
    }
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            factor: FactorKind::Passphrase,
            max_ttl_seconds: DEFAULT_MAX_TTL_SECONDS,
            hide_names: false,
            insecure_loopback: false,
            path: None,
            auto_approve: Vec::new(),
            deny: Vec::new(),
            write_leaks: WriteLeakAction::Report,
            bindings: std::collections::BTreeMap::new(),
            bound_in: std::collections::BTreeMap::new(),
            egress_roots: None,
        }
    }
}

/// The proof of human presence required to approve a request. Serialised in lowercase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FactorKind {
    /// The vault passphrase (always available).
    #[default]
    Passphrase,
    /// A TOTP code (RFC 6238) from an enrolled authenticator.
    Totp,
    /// A plain confirmation (no secret factor); only meaningful for low-value environments.
    Confirm,
}

/// One variable: a name (the map key in [`Environment::variables`]), its value and metadata.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Variable {
    /// The value, sealed in memory (read it with [`SealedValue::open`] where it is used);
    /// `None` means the variable is declared but still awaits a value from a human. In the
    /// payload: the plain JSON string.
    pub value: Option<SealedValue>,
    /// Free text; never a secret.
    pub description: String,
    /// Where the value comes from.
    pub source: Source,
    /// When the variable was created (UTC).
    pub created_at: jiff::Timestamp,
    /// When the value was last replaced (UTC), if ever.
    pub rotated_at: Option<jiff::Timestamp>,
    /// For a variable of source [`Source::Dynamic`] or [`Source::Provider`]: how its value is
    /// minted or fetched per grant (then `value` is `None`). Omitted when absent, so vaults
    /// written before this field existed re-encrypt byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicSource>,
    /// Who stored the current value, and when: with the human's factor, or by a call that
    /// proved none (a first value: anyone with the user's uid, an agent included, could have
    /// chosen it). `None` for variables stored before this was recorded (then unknown). Omitted
    /// when absent, so older vaults re-encrypt byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<StoreRecord>,
}

/// How a variable's current value (or declaration) was stored; see [`Variable::stored`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    /// When it was stored (UTC).
    pub at: jiff::Timestamp,
    /// The call proved the human's factor. `false`: a first value (or declaration) stored
    /// without it, which an agent may have chosen.
    pub factor: bool,
}

/// How a dynamic variable gets its value: the engine that mints it per grant (or the provider
/// it is fetched from at run time), the engine's administrative credential and its settings.
/// Interpreted by the broker (`crates/keyveil/src/dynamic`, see `docs/dynamic-credentials.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicSource {
    /// Engine name: `postgres`, `redis`, `openbao-database` or `openbao-kv`.
    pub engine: String,
    /// The administrative credential: an admin connection URL (`postgres`, `redis`) or an
    /// OpenBao token (`openbao-*`). A secret: never shown, never leaves the broker.
    pub admin: SecretValue,
    /// What a minted credential may do, written by the human: SQL statements with a `{{role}}`
    /// placeholder (`postgres`) or ACL rules (`redis`). Empty for the OpenBao engines.
    #[serde(default)]
    pub template: String,
    /// What is injected: `password`, `url` or `pg-env`.
    #[serde(default)]
    pub output: String,
    /// Engine settings that are not secrets (`address`, `mount`, `role`, `path`, `key`,
    /// `prefix`, `connect_url`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl Variable {
    /// A new variable created now, never rotated.
    pub fn new(
        value: Option<SealedValue>,
        description: impl Into<String>,
        source: Source,
    ) -> Variable {
        Variable {
            value,
            description: description.into(),
            source,
            created_at: jiff::Timestamp::now(),
            rotated_at: None,
            dynamic: None,
            stored: None,
        }
    }
}

/// Where a variable's value comes from. Serialised in lowercase (`"human"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Typed or piped in by a human.
    Human,
    /// Generated randomly by keyveil.
    Generated,
    /// Issued on demand by a dynamic-credential engine (e.g. a database role).
    Dynamic,
    /// Fetched from an external secret provider.
    Provider,
}

/// A secret value.
///
/// Its memory is zeroized on drop; `Debug` prints `[secret]`; there is deliberately no `Display`,
/// so a value cannot end up in a `format!` by accident. Read it with [`SecretValue::expose`], only
/// where it is about to be injected into a child process. Serialised as a plain JSON string (only
/// ever inside the encrypted payload).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<String>);

impl SecretValue {
    /// Wraps a value. The `String` is moved, not copied.
    pub fn new(value: String) -> SecretValue {
        SecretValue(Zeroizing::new(value))
    }

    /// The value itself. Every call site is a place where the secret leaves this wrapper: keep
    /// them few and audited.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Length of the value in bytes (UTF-8).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the value is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[secret]")
    }
}

impl Serialize for SecretValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<SecretValue, D::Error> {
        String::deserialize(deserializer).map(SecretValue::new)
    }
}

/// Whether `name` is a valid variable name: environment-variable rules, `[A-Za-z_][A-Za-z0-9_]*`,
/// 1 to [`MAX_NAME_LEN`] (128) bytes.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    name.len() <= MAX_NAME_LEN && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` is a valid environment name: `[A-Za-z0-9_][A-Za-z0-9_.-]*`, 1 to
/// [`MAX_ENVIRONMENT_NAME_LEN`] (64) bytes. A little looser than [`is_valid_name`] (`my-app.dev`
/// is fine) but never a path component like `..`, never an option like `-x`, never whitespace.
pub fn is_valid_environment_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    name.len() <= MAX_ENVIRONMENT_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `name` may name a *new* environment (`keyveil env create`, a project manifest):
/// `[A-Za-z_][A-Za-z0-9_-]*`, 1 to [`MAX_ENVIRONMENT_NAME_LEN`] (64) bytes. Stricter than
/// [`is_valid_environment_name`], which a vault's existing names must pass.
pub fn is_valid_new_environment_name(name: &str) -> bool {
    is_valid_environment_name(name)
        && name.bytes().all(|b| b != b'.')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
}
