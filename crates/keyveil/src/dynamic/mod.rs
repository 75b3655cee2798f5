//! Just-in-time credentials: a variable of source `dynamic` gets a credential minted at its
//! source for each grant, handed only to the grant's processes, and destroyed at the source when
//! the grant ends (revoked, expired, uses spent, vault locked, broker stopped). A variable backed
//! by an OpenBao KV v2 path is fetched at run time and held only for the spawn.
//!
//! The engine interface is three functions over a [`DynamicSpec`]:
//!
//! * [`mint`]: create a uniquely named credential (`<prefix><grant>_<random>`, a random
//!   40-character password) valid until the grant's expiry, with the rights of the human's
//!   template; returns the value to inject and a [`CredentialHandle`] (no secret inside).
//! * [`revoke`]: end the credential's sessions and delete it (idempotent).
//! * [`reap`]: delete every credential whose name starts with the spec's prefix and that this
//!   broker does not hold: what a crashed broker left behind. Prefixes always start with
//!   `keyveil_` and carry a random per-variable tag, so nothing else is touched.
//!
//! Engines: [`postgres`] (login roles), [`redis`] (ACL users) and, with the `openbao` cargo
//! feature, [`openbao`] (the database secrets engine: one lease per grant; KV v2 reads). To add
//! one (cloud STS, GitHub App tokens): a variant of [`EngineKind`], a module with
//! `mint`/`revoke`/`reap`, three match arms here. See `docs/dynamic-credentials.md`.
//!
//! Secrets (admin URL password, OpenBao token, minted passwords) never enter a
//! [`DynamicError`]: errors name the server as `user@host:port/db` only, and every reason text
//! from a server or driver is scrubbed of the secrets in play before it is kept.

#[cfg(feature = "openbao")]
pub(crate) mod bao_cgroup;
#[cfg(feature = "openbao")]
pub(crate) mod bao_conn;
#[cfg(feature = "openbao")]
pub(crate) mod bao_login;
pub(crate) mod grants;
#[cfg(feature = "openbao")]
pub(crate) mod openbao;
pub(crate) mod owner;
pub(crate) mod postgres;
pub(crate) mod redis;
pub(crate) mod target;

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use keyveil_vault::{DynamicSource, SecretValue};
use serde::Serialize;

pub(crate) use grants::{Held, Registry, push_outbox};

/// How long a request that OpenBao holds for a control group (two-person approval in OpenBao,
/// see `bao_cgroup`) may wait for its second approver, and where the wait is recorded.
#[cfg_attr(not(feature = "openbao"), allow(dead_code))]
pub(crate) struct CgWait<'a> {
    /// Wait until then; `None`: do not wait (a link, a check, a card), fail with the accessor.
    pub(crate) until: Option<std::time::Instant>,
    /// Called with an audit event name and its fields (no secret: the accessor, the path).
    pub(crate) notice: Option<&'a (dyn Fn(&'static str, serde_json::Value) + Send + Sync)>,
    /// Whether the wait is still wanted (the grant is not revoked), asked between polls.
    pub(crate) wanted: Option<&'a (dyn Fn() -> bool + Send + Sync)>,
}

impl CgWait<'_> {
    /// No waiting, nothing recorded.
    pub(crate) const NONE: CgWait<'static> = CgWait {
        until: None,
        notice: None,
        wanted: None,
    };

    /// Records `event` with `fields` where the caller asked.
    #[cfg_attr(not(feature = "openbao"), allow(dead_code))]
    pub(crate) fn note(&self, event: &'static str, fields: serde_json::Value) {
        if let Some(f) = self.notice {
            f(event, fields);
        }
    }
}

/// How long one engine operation (connect + statements) may take before it fails (10 s).
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Length of minted passwords in characters (`A-Za-z0-9`: about 238 bits).
pub(crate) const PASSWORD_LEN: usize = 40;
/// Every name prefix starts with this, so a reaper can only ever touch keyveil's own users.
pub(crate) const PREFIX_ROOT: &str = "keyveil_";

/// The kinds of source a dynamic variable can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum EngineKind {
    /// A PostgreSQL login role per grant (`CREATE ROLE ... VALID UNTIL`).
    Postgres,
    /// A Redis ACL user per grant (`ACL SETUSER`).
    Redis,
    /// An OpenBao (or HashiCorp Vault) database-secrets-engine lease per grant.
    OpenbaoDatabase,
    /// A value read from an OpenBao KV v2 secret at each spawn (nothing minted).
    OpenbaoKv,
}

impl EngineKind {
    /// Parses the name used on the command line and in the vault.
    pub(crate) fn parse(s: &str) -> Result<EngineKind, DynamicError> {
        match s {
            "postgres" | "postgresql" => Ok(EngineKind::Postgres),
            "redis" => Ok(EngineKind::Redis),
            "openbao-database" | "openbao" => Ok(EngineKind::OpenbaoDatabase),
            "openbao-kv" => Ok(EngineKind::OpenbaoKv),
            other => Err(DynamicError::Config(format!(
                "unknown engine {:?}: use postgres, redis, openbao-database or openbao-kv",
                keyveil_proto::display::clip(other, 40)
            ))),
        }
    }

    /// The canonical name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            EngineKind::Postgres => "postgres",
            EngineKind::Redis => "redis",
            EngineKind::OpenbaoDatabase => "openbao-database",
            EngineKind::OpenbaoKv => "openbao-kv",
        }
    }

    /// Whether a credential is minted per grant (and must be revoked).
    pub(crate) fn mints(self) -> bool {
        !matches!(self, EngineKind::OpenbaoKv)
    }
}

/// What is injected under the variable's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum OutputForm {
    /// The password; the user name goes into `<VAR>_USER`.
    Password,
    /// A full connection URL with user and password (`postgresql://...`, `redis://...`).
    Url,
    /// The URL, plus `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER`, `PGPASSWORD` (PostgreSQL only).
    PgEnv,
}

impl OutputForm {
    /// Parses `password`, `url`, `pg-env`.
    pub(crate) fn parse(s: &str) -> Result<OutputForm, DynamicError> {
        match s {
            "password" => Ok(OutputForm::Password),
            "url" => Ok(OutputForm::Url),
            "pg-env" | "pgenv" => Ok(OutputForm::PgEnv),
            other => Err(DynamicError::Config(format!(
                "unknown output {:?}: use password, url or pg-env",
                keyveil_proto::display::clip(other, 40)
            ))),
        }
    }

    /// The canonical name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OutputForm::Password => "password",
            OutputForm::Url => "url",
            OutputForm::PgEnv => "pg-env",
        }
    }
}

/// A dynamic variable's configuration, as stored (encrypted) in the vault with the variable
/// ([`DynamicSource`]); the admin credential is itself a vault secret.
#[derive(Debug, Clone)]
pub(crate) struct DynamicSpec {
    /// The engine.
    pub engine: EngineKind,
    /// Admin connection URL (`postgres`, `redis`) or OpenBao token (`openbao-*`).
    pub admin: SecretValue,
    /// The human's role template: SQL statements with `{{role}}` (PostgreSQL), ACL rules such
    /// as `~app:* +get +set` (Redis); empty for OpenBao.
    pub template: String,
    /// What is injected.
    pub output: OutputForm,
    /// Name prefix of minted users: `keyveil_` + a random tag + `_` (PostgreSQL, Redis).
    pub prefix: String,
    /// Non-secret engine settings: `address`, `mount`, `role`, `path`, `key`, `connect_url`.
    pub options: BTreeMap<String, String>,
    /// Whether a plain-HTTP loopback OpenBao node held by the broker's own user may be sent
    /// the login secret: the environment's `insecure-loopback` policy (set with the factor),
    /// never a stored option. `false`: only a listener of another user is (`bao_conn`).
    pub same_user_loopback: bool,
}

impl DynamicSpec {
    /// Reads a stored configuration, checking it; `same_user_loopback` is the environment's
    /// `insecure-loopback` policy.
    pub(crate) fn from_source(
        src: &DynamicSource,
        same_user_loopback: bool,
    ) -> Result<DynamicSpec, DynamicError> {
        let engine = EngineKind::parse(&src.engine)?;
        let output = if src.output.is_empty() {
            OutputForm::Url
        } else {
            OutputForm::parse(&src.output)?
        };
        let spec = DynamicSpec {
            engine,
            admin: src.admin.clone(),
            template: src.template.clone(),
            output,
            prefix: src.options.get("prefix").cloned().unwrap_or_default(),
            options: src.options.clone(),
            same_user_loopback,
        };
        spec.check()?;
        Ok(spec)
    }

    /// The configuration to store in the vault.
    pub(crate) fn to_source(&self) -> DynamicSource {
        let mut options = self.options.clone();
        if self.engine.mints() && !self.prefix.is_empty() {
            options.insert("prefix".into(), self.prefix.clone());
        }
        DynamicSource {
            engine: self.engine.name().to_owned(),
            admin: self.admin.clone(),
            template: self.template.clone(),
            output: self.output.name().to_owned(),
            options,
        }
    }

    /// A non-secret option.
    pub(crate) fn opt(&self, key: &str) -> Option<&str> {
        self.options
            .get(key)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Checks the combination of engine, output, template and options.
    pub(crate) fn check(&self) -> Result<(), DynamicError> {
        let cfg = |m: String| Err(DynamicError::Config(m));
        if self.engine.mints() && self.engine != EngineKind::OpenbaoDatabase {
            check_prefix(&self.prefix)?;
        }
        match self.engine {
            EngineKind::Postgres => {
                postgres::check_template(&self.template)?;
                target::Target::parse(self.admin.expose(), postgres::SCHEMES, 5432)?;
            }
            EngineKind::Redis => {
                redis::rules(&self.template)?;
                target::Target::parse(self.admin.expose(), redis::SCHEMES, 6379)?;
                if self.output == OutputForm::PgEnv {
                    return cfg("output pg-env is for PostgreSQL; use password or url".into());
                }
            }
            EngineKind::OpenbaoDatabase => {
                if self.opt("role").is_none() {
                    return cfg("the OpenBao database engine needs --role (the database role to draw credentials from)".into());
                }
                if self.output != OutputForm::Password && self.opt("connect_url").is_none() {
                    return cfg("output url or pg-env through OpenBao needs --connect-url (the database URL without credentials, e.g. postgresql://127.0.0.1:5432/app)".into());
                }
            }
            EngineKind::OpenbaoKv => {
                if self.opt("path").is_none() {
                    return cfg("an OpenBao KV variable needs --kv-path (the secret's path under the mount)".into());
                }
            }
        }
        #[cfg_attr(not(feature = "openbao"), allow(clippy::collapsible_if))]
        if matches!(
            self.engine,
            EngineKind::OpenbaoDatabase | EngineKind::OpenbaoKv
        ) {
            if self.opt("address").is_none() {
                return cfg("OpenBao needs --address (e.g. https://bao.example.com:8200)".into());
            }
            #[cfg(feature = "openbao")]
            bao_conn::check_options(self)?;
        }
        if let Some(c) = self.opt("connect_url") {
            let t = target::Target::parse(c, &["postgresql", "postgres", "redis"], 5432)?;
            if t.password.is_some() {
                return cfg(
                    "--connect-url must not hold a password: it is stored as a plain setting"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Where the engine's server is, as `user@host:port/db` or an OpenBao address: no secret.
    pub(crate) fn shown_target(&self) -> String {
        match self.engine {
            EngineKind::Postgres => {
                target::Target::parse(self.admin.expose(), postgres::SCHEMES, 5432)
                    .map(|t| t.shown())
                    .unwrap_or_else(|_| "(malformed admin URL)".into())
            }
            EngineKind::Redis => target::Target::parse(self.admin.expose(), redis::SCHEMES, 6379)
                .map(|t| t.shown())
                .unwrap_or_else(|_| "(malformed admin URL)".into()),
            EngineKind::OpenbaoDatabase => format!(
                "{} {}/creds/{}",
                self.opt("address").unwrap_or(""),
                self.opt("mount").unwrap_or("database"),
                self.opt("role").unwrap_or("")
            ),
            EngineKind::OpenbaoKv => format!(
                "{} {}/{}",
                self.opt("address").unwrap_or(""),
                self.opt("mount").unwrap_or("secret"),
                self.opt("path").unwrap_or("")
            ),
        }
    }

    /// The secrets this spec holds, for scrubbing reason texts.
    fn secrets(&self) -> Vec<String> {
        let mut v = vec![self.admin.expose().to_owned()];
        if let Ok(t) = target::Target::parse(
            self.admin.expose(),
            &["postgresql", "postgres", "redis", "rediss"],
            0,
        ) && let Some(p) = t.password
        {
            v.push(p.expose().to_owned());
            v.push(target::encode_userinfo(p.expose()));
        }
        v
    }
}

/// Checks a name prefix: `keyveil_` then lower-case letters, digits and `_`, at most 24 bytes.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), DynamicError> {
    if prefix.starts_with(PREFIX_ROOT)
        && prefix.len() <= 24
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(())
    } else {
        Err(DynamicError::Config(format!(
            "the name prefix must start with {PREFIX_ROOT:?} and use only a-z, 0-9 and '_' (at most 24 characters)"
        )))
    }
}

/// A fresh prefix: `keyveil_` + 6 random hex digits + `_`.
pub(crate) fn new_prefix() -> Result<String, DynamicError> {
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).map_err(|_| DynamicError::Random)?;
    Ok(format!("{PREFIX_ROOT}{}_", hex::encode(b)))
}

/// A minted credential: what is injected, and the handle that destroys it.
#[derive(Debug, Clone)]
pub(crate) struct Minted {
    /// Injected under the variable's name.
    pub value: SecretValue,
    /// Secret variables injected too, by the output form (`PGPASSWORD`): redacted like the
    /// value.
    pub extra_env: Vec<(String, SecretValue)>,
    /// Plain variables injected too (`<VAR>_USER`, `PGUSER`, `PGHOST`, ...): not secrets, not
    /// redacted (the user name is shown by `keyveil grants` anyway).
    pub plain_env: Vec<(String, String)>,
    /// What [`revoke`] needs; no secret inside.
    pub handle: CredentialHandle,
    /// When the credential stops working at its source (`VALID UNTIL`, lease end); for Redis,
    /// which has no expiry, the grant's expiry, enforced by the broker.
    pub expires_at: Timestamp,
}

/// Names a minted credential at its source. Holds no secret: shown by `keyveil grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CredentialHandle {
    /// The engine.
    pub engine: EngineKind,
    /// Role or user name (PostgreSQL, Redis, OpenBao's generated user).
    pub user: String,
    /// The OpenBao lease id (database engine), else empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub lease_id: String,
    /// OpenBao's request id of the call that drew the lease (its audit device logs it as
    /// `request.id`), else empty.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The server, `user@host:port/db` or the OpenBao address (no secret).
    pub target: String,
}

/// Why an engine operation failed. Never holds a secret (see the module docs).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DynamicError {
    /// The stored configuration or the command line is wrong (the human's to fix).
    #[error("invalid dynamic configuration: {0}")]
    Config(String),
    /// The server could not be reached or refused the admin login.
    #[error("cannot connect to {engine} at {target}: {reason}")]
    Connect {
        /// Engine name.
        engine: &'static str,
        /// `user@host:port/db` (no password).
        target: String,
        /// The driver's reason, scrubbed of secrets.
        reason: String,
    },
    /// The server refused an operation (missing privilege, bad template statement, ...).
    #[error("{engine} at {target} refused to {action}: {reason}")]
    Refused {
        /// Engine name.
        engine: &'static str,
        /// `user@host:port/db` (no password).
        target: String,
        /// What was attempted.
        action: &'static str,
        /// The server's reason, scrubbed of secrets.
        reason: String,
    },
    /// No answer within [`OP_TIMEOUT`].
    #[error("{engine} at {target} did not answer within {} s", OP_TIMEOUT.as_secs())]
    Timeout {
        /// Engine name.
        engine: &'static str,
        /// `user@host:port/db` (no password).
        target: String,
    },
    /// An OpenBao node refused or could not be reached: which node, what was attempted (with
    /// the path and namespace), its reason (scrubbed) and what to do.
    #[error("{engine} at {node} {what}: {reason}")]
    #[cfg_attr(not(feature = "openbao"), allow(dead_code))]
    Bao {
        /// Engine name.
        engine: &'static str,
        /// The node's address.
        node: String,
        /// What happened, with the path and namespace (`refused to read ... (secret/data/x)`).
        what: String,
        /// OpenBao's or the TLS stack's reason, scrubbed of secrets.
        reason: String,
        /// What to do next.
        hint: String,
    },
    /// The OS random source failed.
    #[error("the OS random source failed")]
    Random,
    /// This build has no support for the engine.
    #[cfg_attr(feature = "openbao", allow(dead_code))]
    #[error("this keyveil was built without the {0} engine (cargo feature `openbao`)")]
    Unsupported(&'static str),
}

impl DynamicError {
    /// What to do next, when the error knows better than its caller's generic hint.
    pub(crate) fn hint(&self) -> Option<&str> {
        match self {
            DynamicError::Bao { hint, .. } => Some(hint),
            DynamicError::Connect { reason, .. }
                if reason.contains(owner::NOT_SENT)
                    && reason.contains(crate::subuid::SUBUID_MARK) =>
            {
                Some(owner::SUBUID_UNREADABLE_HINT)
            }
            DynamicError::Connect { reason, .. } if reason.contains(owner::NOT_SENT) => {
                Some(owner::DB_OWNER_HINT)
            }
            _ => None,
        }
    }
}

/// The broker's OpenBao logins (an empty stand-in without the `openbao` feature).
#[cfg(feature = "openbao")]
pub(crate) use bao_login::Logins;
/// The broker's OpenBao logins (an empty stand-in without the `openbao` feature).
#[cfg(not(feature = "openbao"))]
#[derive(Debug, Default)]
pub(crate) struct Logins;

/// Removes every secret (at least 4 bytes long) from a reason text.
pub(crate) fn scrub(reason: impl Into<String>, secrets: &[&str]) -> String {
    let mut s: String = reason.into();
    for sec in secrets {
        if sec.len() >= 4 && s.contains(sec) {
            s = s.replace(sec, "[REDACTED]");
        }
    }
    s
}

/// Runs `fut` under [`OP_TIMEOUT`].
pub(crate) async fn timed<T>(
    engine: EngineKind,
    target: &str,
    fut: impl Future<Output = Result<T, DynamicError>>,
) -> Result<T, DynamicError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(DynamicError::Timeout {
            engine: engine.name(),
            target: target.to_owned(),
        }),
    }
}

/// A random `A-Za-z0-9` string (rejection sampling: no modulo bias).
pub(crate) fn random_alnum(len: usize) -> Result<String, DynamicError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|_| DynamicError::Random)?;
        for &b in &buf {
            // 248 = 4 * 62: bytes at or above it are dropped.
            if b < 248
                && out.len() < len
                && let Some(&c) = ALPHABET.get(usize::from(b % 62))
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// A user name for a grant: `<prefix><grant hex>_<6 random a-z0-9>` (at most 49 bytes, within
/// PostgreSQL's 63).
pub(crate) fn user_name(prefix: &str, grant_id: &str) -> Result<String, DynamicError> {
    let grant: String = grant_id
        .strip_prefix("g-")
        .unwrap_or(grant_id)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(16)
        .collect();
    let tail = random_alnum(6)?.to_ascii_lowercase();
    Ok(format!("{prefix}{grant}_{tail}"))
}

/// Mints a credential for `variable` under grant `grant_id`, valid until `expires_at`.
///
/// Errors: [`DynamicError`] (never with a secret inside).
#[cfg_attr(not(feature = "openbao"), allow(unused_variables))]
pub(crate) async fn mint(
    spec: &DynamicSpec,
    logins: &Logins,
    variable: &str,
    grant_id: &str,
    expires_at: Timestamp,
    wait: &CgWait<'_>,
) -> Result<Minted, DynamicError> {
    match spec.engine {
        EngineKind::Postgres => postgres::mint(spec, variable, grant_id, expires_at).await,
        EngineKind::Redis => redis::mint(spec, variable, grant_id, expires_at).await,
        #[cfg(feature = "openbao")]
        EngineKind::OpenbaoDatabase => {
            openbao::mint(spec, logins, variable, expires_at, wait).await
        }
        #[cfg(not(feature = "openbao"))]
        EngineKind::OpenbaoDatabase => Err(DynamicError::Unsupported("openbao-database")),
        EngineKind::OpenbaoKv => Err(DynamicError::Config(
            "an OpenBao KV variable is fetched, not minted".into(),
        )),
    }
}

/// Destroys a minted credential at its source: ends its sessions, deletes the role or user, or
/// revokes the lease. Succeeds if it is already gone.
#[cfg_attr(not(feature = "openbao"), allow(unused_variables))]
pub(crate) async fn revoke(
    spec: &DynamicSpec,
    logins: &Logins,
    handle: &CredentialHandle,
) -> Result<(), DynamicError> {
    match handle.engine {
        EngineKind::Postgres => postgres::revoke(spec, &handle.user).await,
        EngineKind::Redis => redis::revoke(spec, &handle.user).await,
        #[cfg(feature = "openbao")]
        EngineKind::OpenbaoDatabase => openbao::revoke(spec, logins, &handle.lease_id).await,
        #[cfg(not(feature = "openbao"))]
        EngineKind::OpenbaoDatabase => Err(DynamicError::Unsupported("openbao-database")),
        EngineKind::OpenbaoKv => Ok(()),
    }
}

/// Deletes every credential of this spec's prefix except those named in `keep` (held by a live
/// grant): what a crashed broker left behind. Returns how many were deleted. OpenBao leases are
/// not reaped: they end at the grant's expiry by themselves (see [`openbao`]).
pub(crate) async fn reap(spec: &DynamicSpec, keep: &[String]) -> Result<u32, DynamicError> {
    match spec.engine {
        EngineKind::Postgres => postgres::reap(spec, keep).await,
        EngineKind::Redis => redis::reap(spec, keep).await,
        EngineKind::OpenbaoDatabase | EngineKind::OpenbaoKv => Ok(0),
    }
}

/// Checks that the admin credential works (connects and can manage users), without minting.
#[cfg_attr(not(feature = "openbao"), allow(unused_variables))]
pub(crate) async fn check_admin(spec: &DynamicSpec, logins: &Logins) -> Result<(), DynamicError> {
    match spec.engine {
        EngineKind::Postgres => postgres::check_admin(spec).await,
        EngineKind::Redis => redis::check_admin(spec).await,
        #[cfg(feature = "openbao")]
        EngineKind::OpenbaoDatabase => openbao::check_role(spec, logins).await,
        #[cfg(feature = "openbao")]
        EngineKind::OpenbaoKv => openbao::read_kv(spec, logins).await.map(|_| ()),
        #[cfg(not(feature = "openbao"))]
        _ => Err(DynamicError::Unsupported("openbao")),
    }
}

/// What an output form injects: the value, secret extras (`PGPASSWORD`) and plain extras
/// (user, host, port, database: not secrets, so never redacted from output).
pub(crate) struct Shaped {
    /// Under the variable's name.
    pub value: SecretValue,
    /// Secret extras.
    pub extra_env: Vec<(String, SecretValue)>,
    /// Plain extras.
    pub plain_env: Vec<(String, String)>,
}

/// The value and extra variables for an output form.
fn shape(
    output: OutputForm,
    variable: &str,
    scheme: &str,
    user: &str,
    password: &str,
    host_port: (&str, u16),
    db: &str,
) -> Shaped {
    let (host, port) = host_port;
    let host_in_url = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let url = format!(
        "{scheme}://{}:{}@{host_in_url}:{port}{}{}",
        target::encode_userinfo(user),
        target::encode_userinfo(password),
        if db.is_empty() { "" } else { "/" },
        percent_encoding::utf8_percent_encode(db, percent_encoding::NON_ALPHANUMERIC)
    );
    match output {
        OutputForm::Password => Shaped {
            value: SecretValue::new(password.to_owned()),
            extra_env: Vec::new(),
            plain_env: vec![(format!("{variable}_USER"), user.to_owned())],
        },
        OutputForm::Url => Shaped {
            value: SecretValue::new(url),
            extra_env: Vec::new(),
            plain_env: Vec::new(),
        },
        OutputForm::PgEnv => Shaped {
            value: SecretValue::new(url),
            extra_env: vec![("PGPASSWORD".into(), SecretValue::new(password.to_owned()))],
            plain_env: vec![
                ("PGHOST".into(), host.to_owned()),
                ("PGPORT".into(), port.to_string()),
                ("PGDATABASE".into(), db.to_owned()),
                ("PGUSER".into(), user.to_owned()),
            ],
        },
    }
}

#[cfg(test)]
mod bench;
#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_passwords() {
        let p = new_prefix().unwrap();
        check_prefix(&p).unwrap();
        assert!(check_prefix("postgres_").is_err());
        assert!(check_prefix("keyveil_X").is_err());
        let n = user_name(&p, "g-0123456789ab").unwrap();
        assert!(n.starts_with(&format!("{p}0123456789ab_")), "{n}");
        assert!(n.len() <= 49);
        let pw = random_alnum(PASSWORD_LEN).unwrap();
        assert_eq!(pw.len(), 40);
        assert!(pw.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(pw, random_alnum(PASSWORD_LEN).unwrap());
    }

    #[test]
    fn shapes() {
        let sh = shape(
            OutputForm::PgEnv,
            "DB",
            "postgresql",
            "keyveil_a",
            "pw",
            ("127.0.0.1", 5432),
            "test",
        );
        assert_eq!(
            sh.value.expose(),
            "postgresql://keyveil_a:pw@127.0.0.1:5432/test"
        );
        assert_eq!((sh.extra_env.len(), sh.plain_env.len()), (1, 4));
        let sh = shape(
            OutputForm::Password,
            "R",
            "redis",
            "u",
            "pw",
            ("::1", 6379),
            "",
        );
        assert_eq!(sh.value.expose(), "pw");
        assert_eq!(sh.plain_env, vec![("R_USER".to_owned(), "u".to_owned())]);
    }

    #[test]
    fn specs_round_trip_and_are_checked() {
        let src = DynamicSource {
            engine: "postgres".into(),
            admin: SecretValue::new("postgresql://postgres:adminpw@127.0.0.1:5432/test".into()),
            template: "GRANT SELECT ON t TO {{role}}".into(),
            output: "url".into(),
            options: [("prefix".to_owned(), "keyveil_abc123_".to_owned())].into(),
        };
        let spec = DynamicSpec::from_source(&src, false).unwrap();
        assert_eq!(spec.to_source(), src);
        assert_eq!(spec.shown_target(), "postgres@127.0.0.1:5432/test");
        assert!(!format!("{spec:?}").contains("adminpw"));
        let mut bad = src.clone();
        bad.options.insert("prefix".into(), "app_".into());
        assert!(DynamicSpec::from_source(&bad, false).is_err());
        let mut bad = src.clone();
        bad.output = "pg-env".into();
        bad.engine = "redis".into();
        bad.admin = SecretValue::new("redis://127.0.0.1".into());
        bad.template = "~a:* +get".into();
        assert!(DynamicSpec::from_source(&bad, false).is_err());
        assert_eq!(scrub("x adminpw y", &["adminpw", "ab"]), "x [REDACTED] y");
    }
}
