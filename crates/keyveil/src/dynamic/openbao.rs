//! OpenBao (and HashiCorp Vault) provider, behind the `openbao` cargo feature: the KV v2 secrets
//! engine (values read at each spawn, held only for it) and the database secrets engine (one
//! lease per grant, revoked with the grant).
//!
//! HTTP API used (OpenBao API docs, identical in Vault): `GET /v1/<mount>/data/<path>` (KV v2
//! read), `GET /v1/<mount>/creds/<role>` (database credentials, a lease),
//! `PUT /v1/sys/leases/renew` (`increment` = seconds left in the grant, so a lease left behind
//! by a crashed broker still ends with its grant), `PUT /v1/sys/leases/revoke`,
//! `GET /v1/<mount>/roles/<role>` (check). The token travels in `X-Vault-Token`, marked
//! sensitive.
//!
//! The connection (HTTP/1.1 over `hyper`, `https` through `rustls` to any host, plain HTTP to
//! loopback only, namespaces) and the logins (token, AppRole, JWT) are in [`super::bao_conn`];
//! errors name the node, the path and the namespace, and say what to do
//! (`docs/dynamic-credentials.md`).

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use hyper::Method;
use jiff::{SignedDuration, Timestamp};
use keyveil_vault::SecretValue;
use serde_json::{Value, json};

use super::bao_cgroup;
use super::bao_conn::{AuthKind, Conn, bao_error, check_path, ns_note};
pub(crate) use super::bao_conn::{errors_of, request_id_of};
use super::target::Target;
use super::{
    CgWait, CredentialHandle, DynamicError, DynamicSpec, EngineKind, Logins, Minted, Shaped, scrub,
    shape,
};

/// A node, the spec (for its login) and the broker's logins.
struct Bao<'a> {
    conn: Conn,
    spec: &'a DynamicSpec,
    logins: &'a Logins,
    address: String,
    engine: EngineKind,
}

impl<'a> Bao<'a> {
    fn new(spec: &'a DynamicSpec, logins: &'a Logins) -> Result<Bao<'a>, DynamicError> {
        let conn = Conn::new(spec)?;
        Ok(Bao {
            address: conn.address.clone(),
            conn,
            spec,
            logins,
            engine: spec.engine,
        })
    }

    fn fail(&self, action: &'static str, reason: impl Into<String>) -> DynamicError {
        DynamicError::Refused {
            engine: self.engine.name(),
            target: self.address.clone(),
            action,
            reason: scrub(reason, &[self.spec.admin.expose()]),
        }
    }

    /// One request with the variable's token; returns the status and the JSON body (`Null`
    /// when empty). A token from a login that the node refuses (403: revoked or expired
    /// there) is dropped and the request made once more with a fresh login.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        _action: &'static str,
    ) -> Result<(u16, Value), DynamicError> {
        let mut retried = false;
        loop {
            let (token, from_login) = self.logins.token(self.spec).await?;
            let secrets = [token.expose(), self.spec.admin.expose()];
            let (status, v) = self
                .conn
                .request(method.clone(), path, body.as_ref(), Some(&token), &secrets)
                .await?;
            if status == 403 && from_login && !retried {
                self.logins.forget(self.spec);
                retried = true;
                continue;
            }
            return Ok((status, v));
        }
    }

    /// One request with the variable's token, and no second login on a 403: for a request the
    /// token may well be refused (a capability the policy need not grant) without being
    /// revoked.
    async fn call_once(&self, method: Method, path: &str) -> Result<(u16, Value), DynamicError> {
        let (token, _) = self.logins.token(self.spec).await?;
        let secrets = [token.expose(), self.spec.admin.expose()];
        self.conn
            .request(method, path, None, Some(&token), &secrets)
            .await
    }

    /// Like [`Bao::call`] but a non-2xx status is an error naming the node, the path and the
    /// namespace, with OpenBao's `errors` and what to do.
    async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        action: &'static str,
    ) -> Result<Value, DynamicError> {
        let (status, v) = self.call(method, path, body, action).await?;
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let ns = self.conn.namespace();
        let hint = match status {
            403 => format!(
                "the {} keyveil uses here is not allowed this: ask your OpenBao operator for a policy with the right capability on {path}{}, or check the token has not expired",
                if AuthKind::of(self.spec).ok() == Some(AuthKind::Token) { "token" } else { "login's token" },
                ns_note(ns)
            ),
            404 => format!(
                "nothing at {path}{}: check the mount, the path and the namespace",
                ns_note(ns)
            ),
            503 => "the node is sealed or not ready: unseal it, or give the address of another node".into(),
            307 | 429 | 472 | 473 => "the node is a standby that cannot serve this now (keyveil follows no redirect): list every node of the cluster, comma-separated, in --address (replacing the variable asks for your factor), or give a load balancer in front of it".into(),
            500 | 502 | 504 if self.conn.node_count() > 1 => "no node of the cluster could serve it within 20 s: check that the cluster has a leader (`bao operator raft list-peers`)".into(),
            _ => "see OpenBao's error above; the node's audit log has the request".into(),
        };
        Err(bao_error(
            self.engine,
            &self.address,
            format!("refused to {action} ({path}{})", ns_note(ns)),
            scrub(errors_of(status, &v), &[self.spec.admin.expose()]),
            hint,
        ))
    }
}

impl Bao<'_> {
    /// A `GET` of `path` through [`Bao::ok`], where a control group may hold the request
    /// ([`bao_cgroup`]): a wrapping token answered instead of the data is waited on (within
    /// `wait`) until a second approver releases it in OpenBao; a request already held for
    /// this login and path is waited on instead of filing another; OpenBao's empty answer to
    /// a controlled path it did not wrap is an error saying so, never "no value".
    async fn read(
        &self,
        path: &str,
        action: &'static str,
        wait: &CgWait<'_>,
    ) -> Result<Value, DynamicError> {
        let admin = [self.spec.admin.expose()];
        if bao_cgroup::is_held(self.spec, path) {
            return bao_cgroup::released(&self.conn, self.spec, path, None, wait, &admin).await;
        }
        let v = self.ok(Method::GET, path, None, action).await?;
        if bao_cgroup::is_wrapped(&v) {
            return bao_cgroup::released(&self.conn, self.spec, path, Some(&v), wait, &admin).await;
        }
        if bao_cgroup::empty_answer(&v) {
            return Err(bao_cgroup::empty_answer_error(&self.conn, self.spec, path));
        }
        Ok(v)
    }
}

/// Whether a lease id looks like OpenBao's (`database/creds/ro/AbC123`, with a `.nsid`
/// suffix in a namespace): 1 to 256 letters, digits and `/._-`. Anything else is refused.
pub(crate) fn lease_id_ok(id: &str) -> bool {
    (1..=256).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
}

/// Whether a database user name from the server is printable ASCII without spaces, 1 to 128
/// bytes (OpenBao's `v-<display>-<role>-<random>-<time>`, or a role's username template).
fn user_ok(u: &str) -> bool {
    (1..=128).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_graphic())
}

/// A KV v2 read: the fields, OpenBao's request id and the secret's version (for the audit
/// log; no secret).
pub(crate) struct KvRead {
    /// Every field, as a string (non-string JSON values in their JSON text).
    pub(crate) fields: BTreeMap<String, SecretValue>,
    /// OpenBao's request id ([`request_id_of`]), or empty.
    pub(crate) request_id: String,
    /// `data.metadata.version`, or 0 when absent.
    pub(crate) version: u64,
}

/// Reads the KV v2 secret at the spec's `mount` (default `secret`) and `path`: every field, as
/// a string (non-string JSON values in their JSON text).
pub(crate) async fn read_kv(
    spec: &DynamicSpec,
    logins: &Logins,
) -> Result<BTreeMap<String, SecretValue>, DynamicError> {
    read_kv_full(spec, logins).await.map(|r| r.fields)
}

/// [`read_kv`] with the request id and version of the read.
pub(crate) async fn read_kv_full(
    spec: &DynamicSpec,
    logins: &Logins,
) -> Result<KvRead, DynamicError> {
    read_kv_waiting(spec, logins, &CgWait::NONE).await
}

/// [`read_kv_full`], waiting within `wait` for a second approver where a control group holds
/// the read (the request id is then the one of the released read).
pub(crate) async fn read_kv_waiting(
    spec: &DynamicSpec,
    logins: &Logins,
    wait: &CgWait<'_>,
) -> Result<KvRead, DynamicError> {
    let mount = spec.opt("mount").unwrap_or("secret");
    let path = spec.opt("path").unwrap_or("");
    check_path("mount", mount)?;
    check_path("KV path", path)?;
    let bao = Bao::new(spec, logins)?;
    let v = bao
        .read(&format!("{mount}/data/{path}"), "read the KV secret", wait)
        .await?;
    let Some(data) = v["data"]["data"].as_object() else {
        return Err(bao.fail("read the KV secret", "the answer has no data.data object"));
    };
    let fields = data
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), SecretValue::new(s))
        })
        .collect();
    Ok(KvRead {
        fields,
        request_id: request_id_of(&v),
        version: v["data"]["metadata"]["version"].as_u64().unwrap_or(0),
    })
}

/// The current version of the KV v2 secret at the spec's `mount` and `path`: from its metadata
/// (`GET <mount>/metadata/<path>`, `data.current_version`) or, when the token may not read
/// metadata (403: a policy that grants `data/` only), from a read of the secret
/// (`data.metadata.version`; the values read are dropped at once).
pub(crate) async fn kv_version(spec: &DynamicSpec, logins: &Logins) -> Result<u64, DynamicError> {
    let mount = spec.opt("mount").unwrap_or("secret");
    let path = spec.opt("path").unwrap_or("");
    check_path("mount", mount)?;
    check_path("KV path", path)?;
    let bao = Bao::new(spec, logins)?;
    let meta = format!("{mount}/metadata/{path}");
    let (status, v) = bao.call_once(Method::GET, &meta).await?;
    if (200..300).contains(&status)
        && let Some(n) = v["data"]["current_version"].as_u64()
    {
        return Ok(n);
    }
    let v = bao
        .read(
            &format!("{mount}/data/{path}"),
            "read the KV secret",
            &CgWait::NONE,
        )
        .await?;
    v["data"]["metadata"]["version"].as_u64().ok_or_else(|| {
        bao.fail(
            "read the KV secret",
            "the answer has no data.metadata.version",
        )
    })
}

/// Draws a database credential (a lease) and shortens it to the grant's expiry.
pub(crate) async fn mint(
    spec: &DynamicSpec,
    logins: &Logins,
    variable: &str,
    expires_at: Timestamp,
    wait: &CgWait<'_>,
) -> Result<Minted, DynamicError> {
    let mount = spec.opt("mount").unwrap_or("database");
    let role = spec.opt("role").unwrap_or("");
    check_path("mount", mount)?;
    check_path("role", role)?;
    let bao = Bao::new(spec, logins)?;
    // PostgreSQL answers a role created while another is being created (two grants minting at
    // once) with "tuple concurrently updated": a transient conflict, tried again (3 tries).
    let mut tries = 0;
    let v = loop {
        tries += 1;
        match bao
            .read(
                &format!("{mount}/creds/{role}"),
                "issue database credentials",
                wait,
            )
            .await
        {
            Err(DynamicError::Bao { reason, .. })
                if tries < 3 && reason.contains("concurrently updated") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            other => break other?,
        }
    };
    let lease_id = v["lease_id"].as_str().unwrap_or("").to_owned();
    let request_id = request_id_of(&v);
    let user = v["data"]["username"].as_str().unwrap_or("").to_owned();
    // Both go into the audit log, `keyveil grants` and the reaper's revoke call: a server
    // (one the agent runs, behind a variable it added) must not write free text there.
    if !lease_id_ok(&lease_id) || !user_ok(&user) {
        return Err(bao.fail(
            "issue database credentials",
            "the answer's lease_id or data.username is not of OpenBao's form (a lease id is letters, digits and /._- up to 256 characters; a user name printable ASCII up to 128): is this an OpenBao server?",
        ));
    }
    let Some(password) = v["data"]["password"].as_str() else {
        return Err(bao.fail(
            "issue database credentials",
            "the answer has no data.password",
        ));
    };
    let password = SecretValue::new(password.to_owned());
    let mut lease_end = Timestamp::now()
        .checked_add(SignedDuration::from_secs(
            v["lease_duration"].as_i64().unwrap_or(0),
        ))
        .unwrap_or(expires_at);
    // Shorten the lease to the grant: a crashed broker's leftovers end with their grant.
    let left = expires_at.duration_since(Timestamp::now()).as_secs().max(1);
    match bao
        .ok(
            Method::PUT,
            "sys/leases/renew",
            Some(json!({"lease_id": lease_id, "increment": left})),
            "shorten the lease",
        )
        .await
    {
        Ok(r) => {
            if let Some(d) = r["lease_duration"].as_i64() {
                lease_end = Timestamp::now()
                    .checked_add(SignedDuration::from_secs(d))
                    .unwrap_or(lease_end);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot shorten an OpenBao lease to its grant; it ends at its own TTL")
        }
    }
    let Shaped {
        value,
        extra_env,
        plain_env,
    } = match spec.opt("connect_url") {
        Some(c) => {
            let t = Target::parse(c, &["postgresql", "postgres", "redis"], 5432)?;
            let scheme = if t.scheme == "redis" {
                "redis"
            } else {
                "postgresql"
            };
            shape(
                spec.output,
                variable,
                scheme,
                &user,
                password.expose(),
                (&t.host, t.port),
                &t.path,
            )
        }
        None => Shaped {
            value: password.clone(),
            extra_env: Vec::new(),
            plain_env: vec![(format!("{variable}_USER"), user.clone())],
        },
    };
    Ok(Minted {
        value,
        extra_env,
        plain_env,
        handle: CredentialHandle {
            engine: EngineKind::OpenbaoDatabase,
            user,
            lease_id,
            request_id,
            target: spec.shown_target(),
        },
        expires_at: lease_end.min(expires_at),
    })
}

/// Revokes a lease (OpenBao then drops the database user); succeeds if it is already gone.
pub(crate) async fn revoke(
    spec: &DynamicSpec,
    logins: &Logins,
    lease_id: &str,
) -> Result<(), DynamicError> {
    if lease_id.is_empty() {
        return Ok(());
    }
    let bao = Bao::new(spec, logins)?;
    // A database's revocation statements can meet a concurrent change of its catalog
    // (PostgreSQL: "tuple concurrently updated" when roles are created or dropped at the same
    // time): the lease stays and the same call succeeds a moment later, so it is tried again
    // (at most 4 times, 250 ms apart) before the failure is reported.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (status, v) = bao
            .call(
                Method::PUT,
                "sys/leases/revoke",
                Some(json!({ "lease_id": lease_id })),
                "revoke the lease",
            )
            .await?;
        let why = errors_of(status, &v);
        let gone = status == 400 && why.contains("invalid lease");
        if (200..300).contains(&status) || gone {
            return Ok(());
        }
        if attempt < 4 && why.contains("concurrently updated") {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            continue;
        }
        return Err(bao.fail("revoke the lease", why));
    }
}

/// Checks that the token can read the database role.
pub(crate) async fn check_role(spec: &DynamicSpec, logins: &Logins) -> Result<(), DynamicError> {
    let mount = spec.opt("mount").unwrap_or("database");
    let role = spec.opt("role").unwrap_or("");
    check_path("mount", mount)?;
    check_path("role", role)?;
    Bao::new(spec, logins)?
        .ok(
            Method::GET,
            &format!("{mount}/roles/{role}"),
            None,
            "read the database role",
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::dynamic::testutil::{BaoDev, pg_role_exists, spec_with};

    #[test]
    fn paths_and_addresses_are_checked() {
        assert!(check_path("p", "app/web").is_ok());
        for bad in ["", "../sys", "a//b", "a b", "a/?x"] {
            assert!(check_path("p", bad).is_err(), "{bad}");
        }
        let mut s = spec_with(
            "openbao-kv",
            "tok",
            &[("address", "http://10.0.0.1:8200"), ("path", "a")],
        );
        assert!(Conn::new(&s).is_err(), "a non-loopback address is refused");
        s.options
            .insert("address".into(), "http://127.0.0.1:8200".into());
        assert!(Conn::new(&s).is_ok());
    }

    /// KV read, and a database lease that OpenBao turns into a real PostgreSQL role, revoked.
    #[tokio::test]
    async fn kv_and_database_leases() {
        let Some(bao) = BaoDev::start() else {
            return;
        };
        bao.cli(&["kv", "put", "secret/app", "API_KEY=kv-value-123456", "N=7"]);
        let kv = spec_with(
            "openbao-kv",
            &bao.token,
            &[("address", &bao.address), ("path", "app")],
        );
        let got = read_kv(&kv, &Logins::default()).await.unwrap();
        assert_eq!(
            got.get("API_KEY").map(|v| v.expose()),
            Some("kv-value-123456")
        );
        assert_eq!(got.get("N").map(|v| v.expose()), Some("7"));
        let wrong = spec_with(
            "openbao-kv",
            "not-the-token-zz",
            &[("address", &bao.address), ("path", "app")],
        );
        let e = read_kv(&wrong, &Logins::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("403") && !e.contains("not-the-token-zz"), "{e}");

        if !bao.database_ready() {
            return;
        }
        let db = spec_with(
            "openbao-database",
            &bao.token,
            &[
                ("address", &bao.address),
                ("role", "ro"),
                ("connect_url", "postgresql://127.0.0.1:5432/test"),
            ],
        );
        check_role(&db, &Logins::default()).await.unwrap();
        let exp = Timestamp::now()
            .checked_add(SignedDuration::from_secs(120))
            .unwrap();
        let m = mint(&db, &Logins::default(), "DB", exp, &CgWait::NONE)
            .await
            .unwrap();
        assert!(!m.handle.lease_id.is_empty());
        assert!(m.expires_at <= exp);
        assert!(pg_role_exists(&m.handle.user).await);
        assert_eq!(bao.leases("ro").len(), 1);
        // OpenBao runs the revocation statements in PostgreSQL, where another test's
        // concurrent DDL can fail a catalog lookup ("cache lookup failed for relation",
        // XX000): such a transient is tried again; any other error fails the test.
        let mut tries = 0;
        loop {
            match revoke(&db, &Logins::default(), &m.handle.lease_id).await {
                Ok(()) => break,
                Err(e) if tries < 5 && e.to_string().contains("cache lookup failed") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("revoke: {e}"),
            }
        }
        assert!(bao.leases("ro").is_empty());
        assert!(!pg_role_exists(&m.handle.user).await);
        revoke(&db, &Logins::default(), &m.handle.lease_id)
            .await
            .unwrap();
    }
}
