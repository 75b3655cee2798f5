//! The logins that give the broker its OpenBao tokens (option `auth`: `token`, `approle`,
//! `jwt`, `userpass`; see [`super::bao_conn`]). A login's token lives in [`Logins`], in the
//! broker's memory only: renewed at half its TTL while the vault is unlocked, revoked
//! (`auth/token/revoke-self`) when the vault is locked or the broker stops. It is never
//! written to disk, an argument, a log or an error.

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::Method;
use keyveil_vault::SecretValue;
use serde_json::json;

use super::bao_conn::{AuthKind, Conn, bao_error, login_key, ns_note, valid_username};
use super::{DynamicError, DynamicSpec, scrub};

/// A cached token is used while it has at least this long left; else the broker logs in again.
const MIN_LEFT: Duration = Duration::from_secs(30);

/// A token the broker got by logging in.
#[derive(Debug, Clone)]
struct Session {
    token: SecretValue,
    accessor: String,
    /// Where to renew and revoke it (the spec that logged in).
    spec: DynamicSpec,
    /// When its TTL was last set, and the TTL (zero: no expiry).
    since: Instant,
    ttl: Duration,
    renewable: bool,
}

impl Session {
    /// How long the token has left (`None`: it does not expire).
    fn left(&self) -> Option<Duration> {
        (!self.ttl.is_zero()).then(|| self.ttl.saturating_sub(self.since.elapsed()))
    }
}

/// The tokens the broker holds from logins, in memory only. One per (node, namespace, login,
/// login secret).
#[derive(Debug, Default)]
pub(crate) struct Logins {
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    /// Serialises logins, so two grants starting at once share one token.
    gate: tokio::sync::Mutex<()>,
    /// Set at lock: no login until the next unlock.
    closed: AtomicBool,
    renewing: AtomicBool,
}

impl Logins {
    /// The sessions, by [`login_key`] (a poisoned lock is taken over).
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many tokens are held (for tests).
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.sessions().len()
    }

    /// The token for `spec`: the stored one (`auth=token`), a cached login's, or a fresh login.
    /// Returns the token and whether it came from a login (a refused request then logs in
    /// again once: the token may have been revoked at the server).
    ///
    /// Errors: the vault is locked (no login), the login was refused (with a hint).
    pub(crate) async fn token(
        &self,
        spec: &DynamicSpec,
    ) -> Result<(SecretValue, bool), DynamicError> {
        let auth = AuthKind::of(spec)?;
        if auth == AuthKind::Token {
            return Ok((spec.admin.clone(), false));
        }
        let key = login_key(spec);
        let fresh = |s: &Session| s.left().is_none_or(|l| l > MIN_LEFT);
        if let Some(s) = self.sessions().get(&key).filter(|s| fresh(s)) {
            return Ok((s.token.clone(), true));
        }
        let _one = self.gate.lock().await;
        if let Some(s) = self.sessions().get(&key).filter(|s| fresh(s)) {
            return Ok((s.token.clone(), true));
        }
        if self.closed.load(Ordering::SeqCst) {
            return Err(DynamicError::Config(
                "the vault is locked: keyveil logs in to OpenBao again after `keyveil unlock`"
                    .into(),
            ));
        }
        let s = login(spec, auth).await?;
        let token = s.token.clone();
        if let Some(old) = self.sessions().insert(key, s) {
            // An expiring token replaced by a fresh one: end it now.
            tokio::spawn(async move { revoke_session(&old).await });
        }
        Ok((token, true))
    }

    /// Forgets the cached token of `spec` (refused by the server: expired or revoked there).
    pub(crate) fn forget(&self, spec: &DynamicSpec) {
        self.sessions().remove(&login_key(spec));
    }

    /// Allows logins again (at unlock).
    pub(crate) fn reopen(&self) {
        self.closed.store(false, Ordering::SeqCst);
    }

    /// Refuses logins until [`Logins::reopen`] and revokes every token held; returns the
    /// accessors revoked and the number that could not be (they end at their TTL).
    pub(crate) async fn close(&self) -> (Vec<String>, usize) {
        self.closed.store(true, Ordering::SeqCst);
        let _one = self.gate.lock().await;
        let all: Vec<Session> = self.sessions().drain().map(|(_, s)| s).collect();
        let mut revoked = Vec::new();
        let mut failed = 0;
        for s in all {
            if revoke_session(&s).await {
                revoked.push(s.accessor.clone());
            } else {
                failed += 1;
            }
        }
        (revoked, failed)
    }

    /// Renews, in the background, every token past half its TTL (called from the broker's tick
    /// while the vault is unlocked). A token that cannot be renewed is dropped: the next use
    /// logs in again.
    pub(crate) fn renew_due(self: &Arc<Self>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let due: Vec<([u8; 32], Session)> = self
            .sessions()
            .iter()
            .filter(|(_, s)| s.renewable && s.left().is_some_and(|l| l * 2 < s.ttl))
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        if due.is_empty() || self.renewing.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.renewing.store(false, Ordering::SeqCst);
            return;
        };
        rt.spawn(async move {
            for (k, s) in due {
                let renewed = renew_session(&s).await;
                let mut map = me.sessions();
                match renewed {
                    Some((ttl, renewable)) => {
                        if let Some(e) = map.get_mut(&k).filter(|e| e.accessor == s.accessor) {
                            e.since = Instant::now();
                            e.ttl = ttl;
                            e.renewable = renewable && !ttl.is_zero();
                        }
                    }
                    None => {
                        if map.get(&k).is_some_and(|e| e.accessor == s.accessor) {
                            map.remove(&k);
                        }
                    }
                }
            }
            me.renewing.store(false, Ordering::SeqCst);
        });
    }
}

/// Logs in; the answer's `auth` block becomes a session.
async fn login(spec: &DynamicSpec, auth: AuthKind) -> Result<Session, DynamicError> {
    let conn = Conn::new(spec)?;
    let mount = spec.opt("auth_mount").unwrap_or(auth.default_mount());
    let path = match auth {
        AuthKind::Userpass => {
            let user = spec.opt("username").unwrap_or("");
            if !valid_username(user) {
                return Err(DynamicError::Config(
                    "the OpenBao user name is malformed".into(),
                ));
            }
            format!("auth/{mount}/login/{user}")
        }
        _ => format!("auth/{mount}/login"),
    };
    let body = match auth {
        AuthKind::AppRole => {
            json!({"role_id": spec.opt("role_id").unwrap_or(""), "secret_id": spec.admin.expose()})
        }
        AuthKind::Jwt => {
            json!({"role": spec.opt("auth_role").unwrap_or(""), "jwt": spec.admin.expose()})
        }
        AuthKind::Userpass => json!({"password": spec.admin.expose()}),
        AuthKind::Token => return Err(DynamicError::Config("a token needs no login".into())),
    };
    let secrets = [spec.admin.expose()];
    let (status, v) = conn
        .request(Method::POST, &path, Some(&body), None, &secrets)
        .await?;
    let token = v["auth"]["client_token"].as_str().unwrap_or("");
    if !(200..300).contains(&status) || token.is_empty() {
        let reason = scrub(super::openbao::errors_of(status, &v), &secrets);
        let hint = match (auth, status) {
            (_, 404) | (_, 405) => format!(
                "no {} auth method is mounted at auth/{mount}{}: check --auth-mount",
                match auth {
                    AuthKind::Jwt => "JWT",
                    AuthKind::Userpass => "userpass",
                    _ => "AppRole",
                },
                ns_note(conn.namespace())
            ),
            (AuthKind::AppRole, _) => "the role id or secret id is wrong, expired or used up: get a new secret id from your OpenBao operator and give it with `keyveil dynamic add ... --auth approle` (replacing the variable asks for your factor)".into(),
            (AuthKind::Userpass, _) => "the user name or password was refused: give the right password with `keyveil dynamic add ... --auth userpass --username NAME` (asked at the terminal; replacing the variable asks for your factor)".into(),
            _ => "the JWT was refused (expired, wrong audience or issuer, or not signed by a key the role trusts): give a fresh one with `keyveil dynamic add ... --auth jwt --admin-stdin` (or --admin-env VAR in CI)".into(),
        };
        return Err(bao_error(
            spec.engine,
            &conn.address,
            format!("refused the login at {path}{}", ns_note(conn.namespace())),
            reason,
            hint,
        ));
    }
    let ttl = Duration::from_secs(v["auth"]["lease_duration"].as_u64().unwrap_or(0));
    tracing::info!(
        accessor = v["auth"]["accessor"].as_str().unwrap_or(""),
        ttl_s = ttl.as_secs(),
        node = conn.address,
        "logged in to OpenBao"
    );
    Ok(Session {
        token: SecretValue::new(token.to_owned()),
        accessor: v["auth"]["accessor"].as_str().unwrap_or("").to_owned(),
        spec: spec.clone(),
        since: Instant::now(),
        renewable: v["auth"]["renewable"].as_bool().unwrap_or(false) && !ttl.is_zero(),
        ttl,
    })
}

/// Renews a login's token: its new TTL and whether it can be renewed again, or `None` when
/// the renewal failed.
async fn renew_session(s: &Session) -> Option<(Duration, bool)> {
    let conn = Conn::new(&s.spec).ok()?;
    let (status, v) = conn
        .request(
            Method::POST,
            "auth/token/renew-self",
            Some(&json!({})),
            Some(&s.token),
            &[s.token.expose(), s.spec.admin.expose()],
        )
        .await
        .ok()?;
    ((200..300).contains(&status)).then(|| {
        (
            Duration::from_secs(v["auth"]["lease_duration"].as_u64().unwrap_or(0)),
            v["auth"]["renewable"].as_bool().unwrap_or(false),
        )
    })
}

/// Revokes a login's token (and so every lease it created); `true` when it is gone.
async fn revoke_session(s: &Session) -> bool {
    let Ok(conn) = Conn::new(&s.spec) else {
        return false;
    };
    match conn
        .request(
            Method::POST,
            "auth/token/revoke-self",
            Some(&json!({})),
            Some(&s.token),
            &[s.token.expose(), s.spec.admin.expose()],
        )
        .await
    {
        // 403: already revoked or expired at the server.
        Ok((status, _)) if (200..300).contains(&status) || status == 403 => true,
        Ok((status, v)) => {
            tracing::warn!(accessor = s.accessor, status, error = %super::openbao::errors_of(status, &v), "cannot revoke an OpenBao token; it ends at its TTL");
            false
        }
        Err(e) => {
            tracing::warn!(accessor = s.accessor, error = %e, "cannot revoke an OpenBao token; it ends at its TTL");
            false
        }
    }
}

#[cfg(test)]
mod tests;
