//! PostgreSQL engine: one login role per grant.
//!
//! Mint, in one transaction on the admin connection:
//! `CREATE ROLE "<name>" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
//! PASSWORD '<SCRAM-SHA-256 verifier>' VALID UNTIL '<grant expiry>'`, then the human's template
//! with `{{role}}` (and `{{database}}`) replaced by quoted identifiers. The password is hashed
//! client-side (RFC 7677 SCRAM-SHA-256 verifier, as `libpq`'s `PQencryptPasswordConn` does), so
//! the plaintext never reaches the server or its statement log.
//!
//! Revoke, in one transaction: `ALTER ROLE ... NOLOGIN`, `pg_terminate_backend` of its sessions,
//! `DROP OWNED BY`, `DROP ROLE`; then its sessions once more (any that logged in meanwhile). Reap: the same for every role whose name starts with the spec's prefix.
//! Identifiers are always quoted ([`quote_ident`]); values travel as bind parameters or as
//! quoted literals that we generated ourselves.

use std::time::Duration;

use jiff::Timestamp;
use tokio_postgres::{Client, NoTls};

use super::target::Target;
use super::{
    CredentialHandle, DynamicError, DynamicSpec, EngineKind, Minted, PASSWORD_LEN, PREFIX_ROOT,
    Shaped, random_alnum, scrub, shape, timed, user_name,
};

/// URL schemes accepted for the admin URL.
pub(crate) const SCHEMES: &[&str] = &["postgresql", "postgres"];
/// Transaction-level advisory lock taken by every mint and revoke (`pg_advisory_xact_lock`), so
/// concurrent grants' `GRANT`s on the same objects never collide (`b"kv"` + `0x7665696c`).
const LOCK_KEY: i64 = 0x6b76_7665_696c;
/// Placeholders a template may use.
const PLACEHOLDERS: &[&str] = &["{{role}}", "{{database}}"];

/// `"ident"` with inner quotes doubled (PostgreSQL's `quote_ident`, always quoting).
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'literal'` with inner quotes doubled; refuses backslashes and NUL (never in what we quote).
fn quote_literal(s: &str) -> Result<String, DynamicError> {
    if s.contains(['\\', '\0']) {
        return Err(DynamicError::Config(
            "internal: a literal with a backslash".into(),
        ));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

/// Checks a template's placeholders: only `{{role}}` and `{{database}}`.
pub(crate) fn check_template(template: &str) -> Result<(), DynamicError> {
    let mut rest = template.to_owned();
    for p in PLACEHOLDERS {
        rest = rest.replace(p, "");
    }
    if rest.contains("{{") {
        return Err(DynamicError::Config(
            "the template has an unknown {{placeholder}}: use {{role}} (the minted role) and {{database}}".into(),
        ));
    }
    Ok(())
}

/// An open admin connection.
struct Admin {
    client: Client,
    target: Target,
    shown: String,
    secrets: Vec<String>,
}

impl Admin {
    async fn open(spec: &DynamicSpec) -> Result<Admin, DynamicError> {
        let target = Target::parse(spec.admin.expose(), SCHEMES, 5432)?;
        let shown = target.shown();
        let secrets = spec.secrets();
        let user = target.user.clone().unwrap_or_else(|| "postgres".to_owned());
        let db = if target.path.is_empty() {
            user.clone()
        } else {
            target.path.clone()
        };
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&target.host)
            .port(target.port)
            .user(&user)
            .dbname(&db)
            .application_name("keyveil")
            .connect_timeout(Duration::from_secs(5));
        if let Some(p) = &target.password {
            cfg.password(p.expose());
        }
        let failed = |reason: String| DynamicError::Connect {
            engine: "postgres",
            target: shown.clone(),
            reason,
        };
        // On loopback, nothing is sent (the admin password may be asked in clear) until the
        // kernel says who holds the port: an agent may listen there while PostgreSQL is down.
        let client = if target.is_loopback() {
            let connect = async {
                let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                super::owner::check_stream(&tcp, spec.same_user_loopback).map_err(|why| {
                    failed(format!(
                        "{why}; the admin password {}",
                        super::owner::NOT_SENT
                    ))
                })?;
                cfg.connect_raw(tcp, NoTls)
                    .await
                    .map_err(|e| failed(reason(&e, &secrets)))
            };
            let (client, conn) = timed(EngineKind::Postgres, &shown, connect).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        } else {
            let connect = async {
                cfg.connect(NoTls)
                    .await
                    .map_err(|e| failed(reason(&e, &secrets)))
            };
            let (client, conn) = timed(EngineKind::Postgres, &shown, connect).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        };
        Ok(Admin {
            client,
            target,
            shown,
            secrets,
        })
    }

    fn refused(&self, action: &'static str, e: &tokio_postgres::Error) -> DynamicError {
        DynamicError::Refused {
            engine: "postgres",
            target: self.shown.clone(),
            action,
            reason: reason(e, &self.secrets),
        }
    }

    fn database(&self) -> String {
        if self.target.path.is_empty() {
            self.target
                .user
                .clone()
                .unwrap_or_else(|| "postgres".to_owned())
        } else {
            self.target.path.clone()
        }
    }

    /// Terminates the role's sessions and drops it; `Ok(false)` if it did not exist.
    async fn drop_role(&self, name: &str) -> Result<bool, DynamicError> {
        if !name.starts_with(PREFIX_ROOT) {
            return Err(DynamicError::Config(
                "refusing to drop a role keyveil did not create".into(),
            ));
        }
        let oid = self
            .client
            .query_opt("SELECT oid FROM pg_roles WHERE rolname = $1", &[&name])
            .await
            .map_err(|e| self.refused("look up the role", &e))?;
        let Some(oid) = oid.map(|r| r.get::<_, u32>(0)) else {
            return Ok(false);
        };
        // One transaction (one commit to wait for): no new logins, end the sessions, drop.
        let id = quote_ident(name);
        let sql = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock({LOCK_KEY});\nALTER ROLE {id} NOLOGIN;\nSELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usesysid = {oid};\nDROP OWNED BY {id};\nDROP ROLE {id};\nCOMMIT;"
        );
        let mut attempt = 0;
        loop {
            match self.client.batch_execute(&sql).await {
                Ok(()) => break,
                Err(e) => {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    attempt += 1;
                    if attempt >= 4 || !is_concurrency_error(&e) {
                        return Err(self.refused("drop the role", &e));
                    }
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
            }
        }
        // A session that logged in while the transaction ran (before NOLOGIN was committed).
        self.client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usesysid = $1",
                &[&oid],
            )
            .await
            .map_err(|e| self.refused("end the role's sessions", &e))?;
        Ok(true)
    }
}

/// Whether an error is a concurrent catalog update worth retrying: two `GRANT`s on the same
/// object from different sessions ("tuple concurrently updated", XX000), serialization failure
/// (40001) or deadlock (40P01). keyveil's own mints and revokes are serialized by
/// [`LOCK_KEY`]; this covers other writers (OpenBao, a human, another tool).
pub(crate) fn is_concurrency_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        matches!(db.code().code(), "40001" | "40P01")
            || (db.code().code() == "XX000" && db.message().contains("concurrently"))
    })
}

/// A driver error as text: SQLSTATE and message for server errors; scrubbed.
fn reason(e: &tokio_postgres::Error, secrets: &[String]) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        }
    };
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    scrub(text, &refs)
}

/// Creates the role (see the module docs).
pub(crate) async fn mint(
    spec: &DynamicSpec,
    variable: &str,
    grant_id: &str,
    expires_at: Timestamp,
) -> Result<Minted, DynamicError> {
    check_template(&spec.template)?;
    let name = user_name(&spec.prefix, grant_id)?;
    let password = random_alnum(PASSWORD_LEN)?;
    let admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    let work = async {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let id = quote_ident(&name);
        let template = spec
            .template
            .replace("{{role}}", &id)
            .replace("{{database}}", &quote_ident(&admin.database()));
        let sql = format!(
            "BEGIN;\nSELECT pg_advisory_xact_lock({LOCK_KEY});\nCREATE ROLE {id} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD {} VALID UNTIL {};\n{template};\nCOMMIT;",
            quote_literal(&verifier)?,
            quote_literal(&expires_at.to_string())?,
        );
        let mut attempt = 0;
        loop {
            match admin.client.batch_execute(&sql).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let _ = admin.client.batch_execute("ROLLBACK").await;
                    attempt += 1;
                    if attempt >= 4 || !is_concurrency_error(&e) {
                        return Err(admin.refused("create the role and apply the template", &e));
                    }
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
            }
        }
    };
    timed(EngineKind::Postgres, &shown, work).await?;
    let connect = match spec.opt("connect_url") {
        Some(c) => Target::parse(c, SCHEMES, 5432)?,
        None => admin.target.clone(),
    };
    let db = if connect.path.is_empty() {
        admin.database()
    } else {
        connect.path.clone()
    };
    let Shaped {
        value,
        extra_env,
        plain_env,
    } = shape(
        spec.output,
        variable,
        "postgresql",
        &name,
        &password,
        (&connect.host, connect.port),
        &db,
    );
    Ok(Minted {
        value,
        extra_env,
        plain_env,
        handle: CredentialHandle {
            engine: EngineKind::Postgres,
            user: name,
            lease_id: String::new(),
            request_id: String::new(),
            target: shown,
        },
        expires_at,
    })
}

/// Drops the role (see the module docs); succeeds if it is already gone.
pub(crate) async fn revoke(spec: &DynamicSpec, name: &str) -> Result<(), DynamicError> {
    let admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    timed(EngineKind::Postgres, &shown, admin.drop_role(name)).await?;
    Ok(())
}

/// Drops every role of the spec's prefix not in `keep`; returns how many.
pub(crate) async fn reap(spec: &DynamicSpec, keep: &[String]) -> Result<u32, DynamicError> {
    super::check_prefix(&spec.prefix)?;
    let admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    let work = async {
        let rows = admin
            .client
            .query(
                "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
                &[&spec.prefix],
            )
            .await
            .map_err(|e| admin.refused("list roles", &e))?;
        let mut n = 0;
        for row in rows {
            let name: String = row.get(0);
            if !keep.contains(&name) && admin.drop_role(&name).await? {
                n += 1;
            }
        }
        Ok(n)
    };
    timed(EngineKind::Postgres, &shown, work).await
}

/// Connects and checks that the admin may create roles.
pub(crate) async fn check_admin(spec: &DynamicSpec) -> Result<(), DynamicError> {
    let admin = Admin::open(spec).await?;
    let row = admin
        .client
        .query_one(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| admin.refused("read the admin role", &e))?;
    if row.get::<_, bool>(0) {
        Ok(())
    } else {
        Err(DynamicError::Refused {
            engine: "postgres",
            target: admin.shown.clone(),
            action: "accept this admin",
            reason: "the admin role has neither CREATEROLE nor SUPERUSER".into(),
        })
    }
}

#[cfg(test)]
mod tests;
