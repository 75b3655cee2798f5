//! The broker's state: the unlocked vault, requests, grants, live runs, the factor guard and
//! the audit writer, behind one mutex that is never held across an `await`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use keyveil_vault::audit::AuditWriter;
use keyveil_vault::{SecretValue, Vault};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::protocol::{ClientInfo, ErrorCode, Reply};

/// A pending request lives this long before it expires unanswered (seconds).
pub const REQUEST_TTL_SECONDS: i64 = 600;
/// A grant approved without `--ttl` is one use, valid this long (seconds).
pub const ONCE_GRANT_TTL_SECONDS: u64 = 900;
/// A denial is remembered this long: the same ask from the same client is refused at once.
pub const DENIAL_MEMORY: Duration = Duration::from_secs(300);
/// Failed factor attempts allowed before approvals lock.
pub const MAX_FACTOR_FAILURES: u32 = 5;
/// First lockout after [`MAX_FACTOR_FAILURES`]; doubles with each further lockout.
pub const FACTOR_LOCKOUT: Duration = Duration::from_secs(60);

/// Where a request stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for the human.
    Pending,
    /// Approved; the grant it created.
    Approved {
        /// Grant id.
        grant_id: String,
    },
    /// Denied by the human.
    Denied {
        /// The human's reason, if any.
        reason: Option<String>,
    },
    /// Nobody answered in time.
    Expired,
}

/// An ask for access, waiting for (or past) a human decision.
#[derive(Debug, Clone, Serialize)]
pub struct AccessReq {
    /// Sequential id the human types in `keyveil approve ID`.
    pub id: u64,
    /// Who asked.
    pub client: ClientInfo,
    /// Environment name.
    pub environment: String,
    /// Variables asked for (resolved: never empty).
    pub variables: Vec<String>,
    /// The exact argv, or `None` for "any command" (request_access without a command).
    pub argv: Option<Vec<String>>,
    /// Canonical working directory.
    pub cwd: String,
    /// The requester's reason: its claim, not a fact.
    pub reason: Option<String>,
    /// Requested lifetime (seconds).
    pub ttl_seconds: Option<u64>,
    /// When it was made.
    pub created_at: Timestamp,
    /// State.
    #[serde(flatten)]
    pub state: RequestState,
    /// When the state last changed (used for denial memory).
    #[serde(skip)]
    pub decided: Option<Instant>,
}

impl AccessReq {
    /// Whether `other` asks for the same thing as this request.
    pub fn same_ask(
        &self,
        client: &ClientInfo,
        env: &str,
        vars: &[String],
        argv: Option<&[String]>,
        cwd: &str,
    ) -> bool {
        self.client.scope_key() == client.scope_key()
            && self.environment == env
            && self.variables == vars
            && self.argv.as_deref() == argv
            && self.cwd == cwd
    }

    /// The deadline of a pending request.
    pub fn expires_at(&self) -> Timestamp {
        self.created_at
            .saturating_add(jiff::SignedDuration::from_secs(REQUEST_TTL_SECONDS))
            .unwrap_or(self.created_at)
    }
}

/// What an approval creates.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    /// `g-` and 12 hex digits.
    pub id: String,
    /// The request it came from.
    pub request_id: u64,
    /// Client scope key (`mcp:NAME`, `cli:keyveil`).
    pub client: String,
    /// Environment name.
    pub environment: String,
    /// Variables it serves.
    pub variables: Vec<String>,
    /// Exact argv it covers; `None` covers any command.
    pub argv: Option<Vec<String>>,
    /// Canonical working directory a run must use.
    pub cwd: String,
    /// Creation time.
    pub created_at: Timestamp,
    /// Deadline.
    pub expires_at: Timestamp,
    /// Uses left; `None` is unlimited until the deadline.
    pub uses_left: Option<u32>,
    /// Runs started so far.
    pub runs: u32,
    /// Revoked (or expired) and unusable.
    pub revoked: bool,
    /// Cancelled on revocation: live runs under the grant watch it.
    #[serde(skip)]
    pub cancel: CancellationToken,
}

impl Grant {
    /// Whether the grant can serve this run now.
    pub fn covers(
        &self,
        client: &ClientInfo,
        env: &str,
        vars: &[String],
        argv: &[String],
        cwd: &str,
        now: Timestamp,
    ) -> bool {
        !self.revoked
            && self.expires_at > now
            && self.uses_left != Some(0)
            && self.client == client.scope_key()
            && self.environment == env
            && vars.iter().all(|v| self.variables.contains(v))
            && self.argv.as_ref().is_none_or(|a| a.as_slice() == argv)
            && self.cwd == cwd
    }

    /// Whether it is still usable at `now`.
    pub fn live(&self, now: Timestamp) -> bool {
        !self.revoked && self.expires_at > now && self.uses_left != Some(0)
    }
}

/// Rate limiting of failed factors.
#[derive(Debug, Default)]
pub struct FactorGuard {
    /// Consecutive failures since the last success or lockout.
    pub failures: u32,
    /// Number of lockouts so far (the lockout doubles each time).
    pub lockouts: u32,
    /// Approvals refused until then.
    pub locked_until: Option<Instant>,
}

impl FactorGuard {
    /// `Err(seconds left)` while locked out.
    pub fn check(&mut self, now: Instant) -> Result<(), u64> {
        match self.locked_until {
            Some(t) if t > now => Err(t.saturating_duration_since(now).as_secs().max(1)),
            Some(_) => {
                self.locked_until = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failure; returns the lockout length if this failure triggered one.
    pub fn fail(&mut self, now: Instant) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= MAX_FACTOR_FAILURES {
            let d = FACTOR_LOCKOUT.saturating_mul(1u32 << self.lockouts.min(10));
            self.lockouts += 1;
            self.failures = 0;
            self.locked_until = Some(now + d);
            return Some(d);
        }
        None
    }

    /// Records a success.
    pub fn succeed(&mut self) {
        self.failures = 0;
        self.lockouts = 0;
    }
}

/// A run in progress.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRun {
    /// Run id.
    pub id: String,
    /// Grant id.
    pub grant_id: String,
    /// Process group id (= the child's pid).
    pub pgid: i32,
    /// argv (redacted).
    pub argv: Vec<String>,
    /// Start.
    pub started_at: Timestamp,
}

/// Everything behind the broker's mutex.
#[derive(Default)]
pub struct Inner {
    /// The unlocked vault, or `None` while locked.
    pub vault: Option<Vault>,
    /// The audit writer (opened at unlock: its key comes from the vault).
    pub audit: Option<AuditWriter>,
    /// Next request id.
    pub next_request: u64,
    /// Requests by id.
    pub requests: BTreeMap<u64, AccessReq>,
    /// Grants by id.
    pub grants: BTreeMap<String, Grant>,
    /// Live runs by id.
    pub runs: BTreeMap<String, LiveRun>,
    /// Failed-factor rate limiting.
    pub factor: FactorGuard,
}

/// Error of a broker operation: becomes a [`Reply::Error`].
#[derive(Debug)]
pub struct OpError {
    /// Class.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
}

impl OpError {
    /// New error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
            hint: None,
        }
    }
    /// With a hint.
    pub fn hint(mut self, hint: impl Into<String>) -> OpError {
        self.hint = Some(hint.into());
        self
    }
    /// As a reply.
    pub fn reply(self) -> Reply {
        Reply::error(self.code, self.message, self.hint)
    }
}

/// Shorthand result.
pub type OpResult<T> = Result<T, OpError>;

/// The locked error, with its hint.
pub fn locked() -> OpError {
    OpError::new(ErrorCode::Locked, "the keyveil vault is locked")
        .hint("ask the user to run `keyveil unlock` in a terminal")
}

impl Inner {
    /// The vault, or the locked error.
    pub fn vault(&self) -> OpResult<&Vault> {
        self.vault.as_ref().ok_or_else(locked)
    }

    /// The vault mutably, or the locked error.
    pub fn vault_mut(&mut self) -> OpResult<&mut Vault> {
        self.vault.as_mut().ok_or_else(locked)
    }

    /// Appends an audit entry. Failures are logged, never fatal to the caller, but a run is
    /// refused earlier if the audit log cannot be opened at all.
    pub fn audit(&mut self, event: &str, fields: Value) {
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        match self.audit.as_mut() {
            Some(w) => {
                if let Err(e) = w.append(event, map) {
                    tracing::error!(event, error = %e, "cannot append to the audit log");
                }
            }
            None => tracing::info!(event, "audit log not open (vault locked)"),
        }
    }

    /// Resolves the variables a request asks for: all set variables when `None`; errors name
    /// unknown or unset ones.
    pub fn resolve_variables(&self, env: &str, asked: Option<&[String]>) -> OpResult<Vec<String>> {
        let vault = self.vault()?;
        let e = vault
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, vault))?;
        let names: Vec<String> = match asked {
            None => e
                .variables
                .iter()
                .filter(|(_, v)| v.value.is_some())
                .map(|(k, _)| k.clone())
                .collect(),
            Some(list) => {
                let mut out = Vec::new();
                for n in list {
                    match e.variables.get(n) {
                        None => {
                            return Err(OpError::new(
                                ErrorCode::NotFound,
                                format!("environment '{env}' has no variable '{n}'"),
                            )
                            .hint(format!("see its variables with `keyveil env show {env}` (MCP: describe_environment)")));
                        }
                        Some(v) if v.value.is_none() => {
                            return Err(OpError::new(
                                ErrorCode::Failed,
                                format!("variable '{n}' in '{env}' has no value yet"),
                            )
                            .hint(format!(
                                "ask the user to run `keyveil set {env} {n}` in a terminal"
                            )));
                        }
                        Some(_) => {
                            if !out.contains(n) {
                                out.push(n.clone());
                            }
                        }
                    }
                }
                out.sort();
                out
            }
        };
        if names.is_empty() {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("environment '{env}' has no variable with a value"),
            )
            .hint(format!(
                "ask the user to run `keyveil set {env} NAME` in a terminal"
            )));
        }
        Ok(names)
    }

    /// Copies out the values of `vars` for a spawn (zeroized when dropped).
    pub fn values(&self, env: &str, vars: &[String]) -> OpResult<Vec<(String, SecretValue)>> {
        let vault = self.vault()?;
        let e = vault
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, vault))?;
        let mut out = Vec::with_capacity(vars.len());
        for n in vars {
            let v = e
                .variables
                .get(n)
                .and_then(|v| v.value.as_ref())
                .ok_or_else(|| {
                    OpError::new(
                        ErrorCode::Failed,
                        format!("variable '{n}' in '{env}' has no value"),
                    )
                })?;
            out.push((n.clone(), SecretValue::new(v.expose().to_owned())));
        }
        Ok(out)
    }

    /// A redactor over every value of an environment: used to scrub argv before it is shown
    /// or audited (a human may have typed a value on a command line).
    pub fn env_redactor(&self, env: &str) -> crate::redact::Redactor {
        let pairs: Vec<(String, Vec<u8>)> = self
            .vault
            .as_ref()
            .and_then(|v| v.data().environments.get(env))
            .map(|e| {
                e.variables
                    .iter()
                    .filter_map(|(k, v)| {
                        v.value
                            .as_ref()
                            .map(|s| (k.clone(), s.expose().as_bytes().to_vec()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        crate::redact::Redactor::new(pairs)
    }

    /// Live grants that cover a run, soonest-expiring first.
    pub fn find_grant(
        &self,
        client: &ClientInfo,
        env: &str,
        vars: &[String],
        argv: &[String],
        cwd: &str,
    ) -> Option<String> {
        let now = Timestamp::now();
        self.grants
            .values()
            .filter(|g| g.covers(client, env, vars, argv, cwd, now))
            .min_by_key(|g| g.expires_at)
            .map(|g| g.id.clone())
    }

    /// Marks expired pending requests.
    pub fn expire_requests(&mut self) {
        let now = Timestamp::now();
        let mut expired = Vec::new();
        for r in self.requests.values_mut() {
            if r.state == RequestState::Pending && r.expires_at() <= now {
                r.state = RequestState::Expired;
                r.decided = Some(Instant::now());
                expired.push(r.id);
            }
        }
        for id in expired {
            self.audit("request_expired", json!({ "request_id": id }));
        }
        // Forget decided requests after a while, keeping the map small.
        self.requests.retain(|_, r| {
            r.state == RequestState::Pending
                || r.decided.is_none_or(|d| d.elapsed() < DENIAL_MEMORY * 2)
        });
    }

    /// Marks a grant revoked and cancels its runs. Returns whether it was live.
    pub fn revoke(&mut self, grant_id: &str, why: &str) -> bool {
        let Some(g) = self.grants.get_mut(grant_id) else {
            return false;
        };
        let was_live = !g.revoked;
        g.revoked = true;
        g.cancel.cancel();
        if was_live {
            let env = g.environment.clone();
            self.audit(
                "revoke",
                json!({ "grant_id": grant_id, "environment": env, "why": why }),
            );
        }
        was_live
    }
}

/// The "unknown environment" error, listing the ones that exist.
pub fn unknown_env(env: &str, vault: &Vault) -> OpError {
    let names: Vec<&str> = vault
        .data()
        .environments
        .keys()
        .map(String::as_str)
        .collect();
    OpError::new(ErrorCode::NotFound, format!("no environment named '{env}'")).hint(
        if names.is_empty() {
            "no environment exists yet; the user can create one with `keyveil env create NAME`"
                .to_owned()
        } else {
            format!("environments: {}", names.join(", "))
        },
    )
}

/// A fresh random id: `prefix` + 12 hex digits.
pub fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        // getrandom failing is unrecoverable for a security tool; fall back to time+pid so the
        // id is at least unique, and log it.
        tracing::error!("getrandom failed while making an id");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!(
            "{prefix}{:012x}",
            (t as u64) ^ u64::from(std::process::id())
        );
    }
    format!("{prefix}{}", hex::encode(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn client(name: &str) -> ClientInfo {
        ClientInfo {
            kind: "mcp".into(),
            name: name.into(),
            version: "1".into(),
            pid: 1,
        }
    }

    fn grant(argv: Option<Vec<String>>) -> Grant {
        let now = Timestamp::now();
        Grant {
            id: "g-1".into(),
            request_id: 1,
            client: "mcp:host".into(),
            environment: "demo".into(),
            variables: vec!["A".into(), "B".into()],
            argv,
            cwd: "/w".into(),
            created_at: now,
            expires_at: now
                .saturating_add(jiff::SignedDuration::from_secs(60))
                .unwrap(),
            uses_left: Some(1),
            runs: 0,
            revoked: false,
            cancel: CancellationToken::new(),
        }
    }

    #[test]
    fn a_grant_covers_only_its_scope() {
        let now = Timestamp::now();
        let argv = vec!["echo".to_string(), "hi".to_string()];
        let g = grant(Some(argv.clone()));
        let c = client("host");
        let a = vec!["A".to_string()];
        assert!(g.covers(&c, "demo", &a, &argv, "/w", now));
        // another argv (a shell around it), another cwd, env, client, variable
        assert!(!g.covers(
            &c,
            "demo",
            &a,
            &["sh".into(), "-c".into(), "env".into()],
            "/w",
            now
        ));
        assert!(!g.covers(
            &c,
            "demo",
            &a,
            &["echo".into(), "hi".into(), "x".into()],
            "/w",
            now
        ));
        assert!(!g.covers(&c, "demo", &a, &argv, "/w/sub", now));
        assert!(!g.covers(&c, "prod", &a, &argv, "/w", now));
        assert!(!g.covers(&client("other"), "demo", &a, &argv, "/w", now));
        assert!(!g.covers(&c, "demo", &["C".into()], &argv, "/w", now));
        let mut used = g.clone();
        used.uses_left = Some(0);
        assert!(!used.covers(&c, "demo", &a, &argv, "/w", now));
        let mut revoked = g.clone();
        revoked.revoked = true;
        assert!(!revoked.covers(&c, "demo", &a, &argv, "/w", now));
        let later = now
            .saturating_add(jiff::SignedDuration::from_secs(61))
            .unwrap();
        assert!(!g.covers(&c, "demo", &a, &argv, "/w", later));
        assert!(grant(None).covers(&c, "demo", &a, &["anything".into()], "/w", now));
    }

    #[test]
    fn factor_guard_locks_after_five_failures_and_doubles() {
        let mut f = FactorGuard::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(f.fail(t0).is_none());
            assert!(f.check(t0).is_ok());
        }
        assert_eq!(f.fail(t0), Some(FACTOR_LOCKOUT));
        assert!(f.check(t0).is_err());
        assert!(
            f.check(t0 + FACTOR_LOCKOUT + Duration::from_secs(1))
                .is_ok()
        );
        for _ in 0..4 {
            f.fail(t0);
        }
        assert_eq!(f.fail(t0), Some(FACTOR_LOCKOUT * 2));
    }
}
