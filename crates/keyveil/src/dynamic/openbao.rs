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
//! The client is a minimal HTTP/1.1 client over `hyper` (already in keyveil's tree for the web
//! approval page): plain HTTP to a **loopback** address only. A team reaches its HA cluster
//! through `bao proxy` on the developer's machine, which speaks TLS to the cluster; keyveil
//! refuses to send a token in clear over a network (`docs/dynamic-credentials.md`).

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::header::HeaderValue;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use keyveil_vault::SecretValue;
use serde_json::{Value, json};

use super::target::Target;
use super::{
    CredentialHandle, DynamicError, DynamicSpec, EngineKind, Minted, Shaped, scrub, shape, timed,
};

/// Checks a mount, role or path: `[A-Za-z0-9_.-]` segments separated by `/`, no `..`.
pub(crate) fn check_path(what: &str, p: &str) -> Result<(), DynamicError> {
    let ok = !p.is_empty()
        && p.len() <= 512
        && p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != ".."
                && seg != "."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(DynamicError::Config(format!(
            "the OpenBao {what} must be segments of letters, digits, '_', '-', '.' separated by '/'"
        )))
    }
}

/// A connection target plus token.
struct Bao<'a> {
    target: Target,
    address: String,
    token: &'a SecretValue,
    engine: EngineKind,
}

impl<'a> Bao<'a> {
    fn new(spec: &'a DynamicSpec) -> Result<Bao<'a>, DynamicError> {
        let address = spec.opt("address").unwrap_or("").to_owned();
        let target = Target::parse(&address, &["http"], 8200).map_err(|_| {
            DynamicError::Config("the OpenBao address must look like http://127.0.0.1:8200".into())
        })?;
        if !target.is_loopback() {
            return Err(DynamicError::Config(
                "keyveil talks to OpenBao over plain HTTP on loopback only: run `bao proxy` locally (TLS to the cluster) and give its address, e.g. http://127.0.0.1:8100".into(),
            ));
        }
        if target.user.is_some() || !target.path.is_empty() || target.query.is_some() {
            return Err(DynamicError::Config(
                "the OpenBao address is scheme://host:port only".into(),
            ));
        }
        Ok(Bao {
            target,
            address,
            token: &spec.admin,
            engine: spec.engine,
        })
    }

    fn fail(&self, action: &'static str, reason: impl Into<String>) -> DynamicError {
        DynamicError::Refused {
            engine: self.engine.name(),
            target: self.address.clone(),
            action,
            reason: scrub(reason, &[self.token.expose()]),
        }
    }

    /// One request; returns the status and the JSON body (`Null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        action: &'static str,
    ) -> Result<(u16, Value), DynamicError> {
        let work = async {
            let conn_err = |e: String| DynamicError::Connect {
                engine: self.engine.name(),
                target: self.address.clone(),
                reason: scrub(e, &[self.token.expose()]),
            };
            let stream =
                tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port))
                    .await
                    .map_err(|e| conn_err(e.to_string()))?;
            let _ = stream.set_nodelay(true);
            let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| conn_err(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut token = HeaderValue::from_str(self.token.expose()).map_err(|_| {
                DynamicError::Config("the OpenBao token has characters a header cannot hold".into())
            })?;
            token.set_sensitive(true);
            let payload = match &body {
                Some(v) => Bytes::from(v.to_string()),
                None => Bytes::new(),
            };
            let req = Request::builder()
                .method(method)
                .uri(format!("/v1/{path}"))
                .header("host", self.target.host_port())
                .header("x-vault-token", token)
                .header("content-type", "application/json")
                .body(Full::new(payload))
                .map_err(|e| self.fail(action, e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| conn_err(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| conn_err(e.to_string()))?
                .to_bytes();
            let v: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            };
            Ok((status, v))
        };
        timed(self.engine, &self.address, work).await
    }

    /// Like [`Bao::call`] but a non-2xx status is an error carrying OpenBao's `errors`.
    async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        action: &'static str,
    ) -> Result<Value, DynamicError> {
        let (status, v) = self.call(method, path, body, action).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(self.fail(action, errors_of(status, &v)))
        }
    }
}

fn errors_of(status: u16, v: &Value) -> String {
    let list: Vec<String> = v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str())
                .map(|e| keyveil_proto::display::clip(e, 200))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", list.join("; "))
    }
}

/// Reads the KV v2 secret at the spec's `mount` (default `secret`) and `path`: every field, as
/// a string (non-string JSON values in their JSON text).
pub(crate) async fn read_kv(
    spec: &DynamicSpec,
) -> Result<BTreeMap<String, SecretValue>, DynamicError> {
    let mount = spec.opt("mount").unwrap_or("secret");
    let path = spec.opt("path").unwrap_or("");
    check_path("mount", mount)?;
    check_path("KV path", path)?;
    let bao = Bao::new(spec)?;
    let v = bao
        .ok(
            Method::GET,
            &format!("{mount}/data/{path}"),
            None,
            "read the KV secret",
        )
        .await?;
    let Some(data) = v["data"]["data"].as_object() else {
        return Err(bao.fail("read the KV secret", "the answer has no data.data object"));
    };
    Ok(data
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), SecretValue::new(s))
        })
        .collect())
}

/// Draws a database credential (a lease) and shortens it to the grant's expiry.
pub(crate) async fn mint(
    spec: &DynamicSpec,
    variable: &str,
    expires_at: Timestamp,
) -> Result<Minted, DynamicError> {
    let mount = spec.opt("mount").unwrap_or("database");
    let role = spec.opt("role").unwrap_or("");
    check_path("mount", mount)?;
    check_path("role", role)?;
    let bao = Bao::new(spec)?;
    // PostgreSQL answers a role created while another is being created (two grants minting at
    // once) with "tuple concurrently updated": a transient conflict, tried again (3 tries).
    let mut tries = 0;
    let v = loop {
        tries += 1;
        match bao
            .ok(
                Method::GET,
                &format!("{mount}/creds/{role}"),
                None,
                "issue database credentials",
            )
            .await
        {
            Err(DynamicError::Refused { reason, .. })
                if tries < 3 && reason.contains("concurrently updated") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            other => break other?,
        }
    };
    let lease_id = v["lease_id"].as_str().unwrap_or("").to_owned();
    let user = v["data"]["username"].as_str().unwrap_or("").to_owned();
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
            target: spec.shown_target(),
        },
        expires_at: lease_end.min(expires_at),
    })
}

/// Revokes a lease (OpenBao then drops the database user); succeeds if it is already gone.
pub(crate) async fn revoke(spec: &DynamicSpec, lease_id: &str) -> Result<(), DynamicError> {
    if lease_id.is_empty() {
        return Ok(());
    }
    let bao = Bao::new(spec)?;
    let (status, v) = bao
        .call(
            Method::PUT,
            "sys/leases/revoke",
            Some(json!({ "lease_id": lease_id })),
            "revoke the lease",
        )
        .await?;
    let gone = status == 400 && errors_of(status, &v).contains("invalid lease");
    if (200..300).contains(&status) || gone {
        Ok(())
    } else {
        Err(bao.fail("revoke the lease", errors_of(status, &v)))
    }
}

/// Checks that the token can read the database role.
pub(crate) async fn check_role(spec: &DynamicSpec) -> Result<(), DynamicError> {
    let mount = spec.opt("mount").unwrap_or("database");
    let role = spec.opt("role").unwrap_or("");
    check_path("mount", mount)?;
    check_path("role", role)?;
    Bao::new(spec)?
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
        assert!(Bao::new(&s).is_err(), "a non-loopback address is refused");
        s.options
            .insert("address".into(), "http://127.0.0.1:8200".into());
        assert!(Bao::new(&s).is_ok());
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
        let got = read_kv(&kv).await.unwrap();
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
        let e = read_kv(&wrong).await.unwrap_err().to_string();
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
        check_role(&db).await.unwrap();
        let exp = Timestamp::now()
            .checked_add(SignedDuration::from_secs(120))
            .unwrap();
        let m = mint(&db, "DB", exp).await.unwrap();
        assert!(!m.handle.lease_id.is_empty());
        assert!(m.expires_at <= exp);
        assert!(pg_role_exists(&m.handle.user).await);
        assert_eq!(bao.leases("ro").len(), 1);
        revoke(&db, &m.handle.lease_id).await.unwrap();
        assert!(bao.leases("ro").is_empty());
        assert!(!pg_role_exists(&m.handle.user).await);
        revoke(&db, &m.handle.lease_id).await.unwrap();
    }
}
