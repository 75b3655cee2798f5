//! Redis engine: one ACL user per grant (Redis ≥ 6).
//!
//! Mint: `ACL SETUSER <name> reset on ><password> <template rules...>`, where the template is
//! the human's ACL rules, e.g. `~app:* +get +set` (key pattern, allowed commands). `reset`
//! first, so the user starts with no rights; rules that touch passwords (`>`, `<`, `#`, `!`,
//! `nopass`, `resetpass`) are refused in templates. Redis has no expiry for ACL users: the
//! broker deletes the user when the grant ends, and the reaper deletes leftovers at unlock.
//!
//! Revoke: `ACL SETUSER <name> off`, `CLIENT KILL USER <name>`, `ACL DELUSER <name>`.

use jiff::Timestamp;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};

use super::target::Target;
use super::{
    CredentialHandle, DynamicError, DynamicSpec, EngineKind, Minted, PASSWORD_LEN, PREFIX_ROOT,
    Shaped, random_alnum, scrub, shape, timed, user_name,
};

/// URL schemes accepted for the admin URL (plain TCP only: `rediss` needs TLS, not built in).
pub(crate) const SCHEMES: &[&str] = &["redis"];

/// Splits and checks a template's ACL rules.
pub(crate) fn rules(template: &str) -> Result<Vec<String>, DynamicError> {
    let rules: Vec<String> = template.split_whitespace().map(str::to_owned).collect();
    if rules.is_empty() {
        return Err(DynamicError::Config(
            "a Redis template is needed: ACL rules such as \"~app:* +get +set\"".into(),
        ));
    }
    for r in &rules {
        let lower = r.to_ascii_lowercase();
        if r.starts_with(['>', '<', '#', '!'])
            || matches!(
                lower.as_str(),
                "nopass" | "resetpass" | "reset" | "off" | "on"
            )
        {
            return Err(DynamicError::Config(format!(
                "the Redis template may not contain {:?}: keyveil sets the user's password and state itself",
                keyveil_proto::display::clip(r, 20)
            )));
        }
    }
    Ok(rules)
}

struct Admin {
    con: MultiplexedConnection,
    target: Target,
    shown: String,
    secrets: Vec<String>,
}

impl Admin {
    async fn open(spec: &DynamicSpec) -> Result<Admin, DynamicError> {
        let target = Target::parse(spec.admin.expose(), SCHEMES, 6379)?;
        let shown = target.shown();
        let secrets = spec.secrets();
        let db: i64 = if target.path.is_empty() {
            0
        } else {
            target.path.parse().map_err(|_| {
                DynamicError::Config("the Redis admin URL's path must be a database number".into())
            })?
        };
        let mut settings = RedisConnectionInfo::default().set_db(db);
        if let Some(u) = &target.user {
            settings = settings.set_username(u);
        }
        if let Some(p) = &target.password {
            settings = settings.set_password(p.expose());
        }
        let fail = |e: redis::RedisError| DynamicError::Connect {
            engine: "redis",
            target: shown.clone(),
            reason: reason(&e, &secrets),
        };
        // On loopback, nothing is sent (`AUTH` carries the password in clear) until the kernel
        // says who holds the port: an agent may listen there while Redis is down.
        let con = if target.is_loopback() {
            let refused = |reason: String| DynamicError::Connect {
                engine: "redis",
                target: shown.clone(),
                reason,
            };
            timed(EngineKind::Redis, &shown, async {
                let tcp = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
                    .await
                    .map_err(|e| refused(e.to_string()))?;
                super::owner::check_stream(&tcp, spec.same_user_loopback).map_err(|why| {
                    refused(format!(
                        "{why}; the admin password {}",
                        super::owner::NOT_SENT
                    ))
                })?;
                let (con, driver) = MultiplexedConnection::new_with_config(
                    &settings,
                    tcp,
                    redis::AsyncConnectionConfig::default(),
                )
                .await
                .map_err(fail)?;
                tokio::spawn(driver);
                Ok(con)
            })
            .await?
        } else {
            let info = ConnectionAddr::Tcp(target.host.clone(), target.port)
                .into_connection_info()
                .map_err(fail)?
                .set_redis_settings(settings);
            let client = redis::Client::open(info).map_err(fail)?;
            timed(EngineKind::Redis, &shown, async {
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(fail)
            })
            .await?
        };
        Ok(Admin {
            con,
            target,
            shown,
            secrets,
        })
    }

    fn refused(&self, action: &'static str, e: &redis::RedisError) -> DynamicError {
        DynamicError::Refused {
            engine: "redis",
            target: self.shown.clone(),
            action,
            reason: reason(e, &self.secrets),
        }
    }

    async fn delete_user(&mut self, name: &str) -> Result<bool, DynamicError> {
        if !name.starts_with(PREFIX_ROOT) {
            return Err(DynamicError::Config(
                "refusing to delete a user keyveil did not create".into(),
            ));
        }
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut self.con)
            .await
            .map_err(|e| self.refused("list ACL users", &e))?;
        if !users.iter().any(|u| u == name) {
            return Ok(false);
        }
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg("off")
            .query_async::<()>(&mut self.con)
            .await
            .map_err(|e| self.refused("disable the user", &e))?;
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("USER")
            .arg(name)
            .query_async::<redis::Value>(&mut self.con)
            .await
            .map_err(|e| self.refused("end the user's connections", &e))?;
        redis::cmd("ACL")
            .arg("DELUSER")
            .arg(name)
            .query_async::<i64>(&mut self.con)
            .await
            .map_err(|e| self.refused("delete the user", &e))?;
        Ok(true)
    }
}

fn reason(e: &redis::RedisError, secrets: &[String]) -> String {
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    scrub(e.to_string(), &refs)
}

/// Creates the ACL user (see the module docs).
pub(crate) async fn mint(
    spec: &DynamicSpec,
    variable: &str,
    grant_id: &str,
    expires_at: Timestamp,
) -> Result<Minted, DynamicError> {
    let rules = rules(&spec.template)?;
    let name = user_name(&spec.prefix, grant_id)?;
    let password = random_alnum(PASSWORD_LEN)?;
    let mut admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(&name)
        .arg("reset")
        .arg("on")
        .arg(format!(">{password}"));
    for r in &rules {
        cmd.arg(r);
    }
    let r: Result<(), redis::RedisError> = timed(EngineKind::Redis, &shown, async {
        Ok(cmd.query_async::<()>(&mut admin.con).await)
    })
    .await?;
    if let Err(e) = r {
        // A half-applied rule list leaves no user behind.
        let _ = admin.delete_user(&name).await;
        let refs: Vec<&str> = vec![password.as_str()];
        let mut e = admin.refused("create the ACL user", &e);
        if let DynamicError::Refused { reason, .. } = &mut e {
            *reason = scrub(reason.clone(), &refs);
        }
        return Err(e);
    }
    let connect = match spec.opt("connect_url") {
        Some(c) => Target::parse(c, SCHEMES, 6379)?,
        None => admin.target.clone(),
    };
    let Shaped {
        value,
        extra_env,
        plain_env,
    } = shape(
        spec.output,
        variable,
        "redis",
        &name,
        &password,
        (&connect.host, connect.port),
        &connect.path,
    );
    Ok(Minted {
        value,
        extra_env,
        plain_env,
        handle: CredentialHandle {
            engine: EngineKind::Redis,
            user: name,
            lease_id: String::new(),
            request_id: String::new(),
            target: shown,
        },
        expires_at,
    })
}

/// Deletes the ACL user and its connections; succeeds if it is already gone.
pub(crate) async fn revoke(spec: &DynamicSpec, name: &str) -> Result<(), DynamicError> {
    let mut admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    timed(EngineKind::Redis, &shown, admin.delete_user(name)).await?;
    Ok(())
}

/// Deletes every ACL user of the spec's prefix not in `keep`; returns how many.
pub(crate) async fn reap(spec: &DynamicSpec, keep: &[String]) -> Result<u32, DynamicError> {
    super::check_prefix(&spec.prefix)?;
    let mut admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    timed(EngineKind::Redis, &shown, async {
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut admin.con)
            .await
            .map_err(|e| admin.refused("list ACL users", &e))?;
        let mut n = 0;
        for u in users {
            if u.starts_with(&spec.prefix) && !keep.contains(&u) && admin.delete_user(&u).await? {
                n += 1;
            }
        }
        Ok(n)
    })
    .await
}

/// Connects and checks that the admin may manage ACL users (`ACL WHOAMI`, `ACL USERS`).
pub(crate) async fn check_admin(spec: &DynamicSpec) -> Result<(), DynamicError> {
    let mut admin = Admin::open(spec).await?;
    let shown = admin.shown.clone();
    timed(EngineKind::Redis, &shown, async {
        redis::cmd("ACL")
            .arg("USERS")
            .query_async::<Vec<String>>(&mut admin.con)
            .await
            .map_err(|e| admin.refused("list ACL users", &e))?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::dynamic::testutil::{redis_ready, spec};

    async fn user_connection(url: &str) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await
    }

    async fn users() -> Vec<String> {
        let mut c = user_connection("redis://127.0.0.1:6379").await.unwrap();
        redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut c)
            .await
            .unwrap()
    }

    #[test]
    fn templates_cannot_touch_passwords() {
        assert!(rules("~app:* +get +set").is_ok());
        for bad in ["", "nopass", "~a >pw", "resetpass", "#abc", "on"] {
            assert!(rules(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn mint_use_revoke_reap() {
        if !redis_ready() {
            return;
        }
        let s = spec(
            "redis",
            "redis://127.0.0.1:6379",
            "~app:* +get +set +ping",
            "url",
        );
        let exp = Timestamp::now();
        let m = mint(&s, "REDIS_URL", "g-0123456789ab", exp).await.unwrap();
        let name = m.handle.user.clone();
        assert!(users().await.contains(&name));
        let mut c = user_connection(m.value.expose()).await.unwrap();
        let key = format!("app:{}", random_alnum(8).unwrap());
        redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .query_async::<()>(&mut c)
            .await
            .unwrap();
        let v: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(v, "1");
        // Outside the key pattern, and a command not granted: refused.
        assert!(
            redis::cmd("SET")
                .arg("other:x")
                .arg("1")
                .query_async::<()>(&mut c)
                .await
                .is_err()
        );
        assert!(
            redis::cmd("DEL")
                .arg(&key)
                .query_async::<i64>(&mut c)
                .await
                .is_err()
        );

        revoke(&s, &name).await.unwrap();
        assert!(!users().await.contains(&name));
        assert!(
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(&mut c)
                .await
                .is_err()
        );
        assert!(user_connection(m.value.expose()).await.is_err());
        revoke(&s, &name).await.unwrap();

        let a = mint(&s, "REDIS_URL", "g-aaaaaaaaaaaa", exp).await.unwrap();
        let b = mint(&s, "REDIS_URL", "g-bbbbbbbbbbbb", exp).await.unwrap();
        assert_eq!(
            reap(&s, std::slice::from_ref(&b.handle.user))
                .await
                .unwrap(),
            1
        );
        let now = users().await;
        assert!(!now.contains(&a.handle.user) && now.contains(&b.handle.user));
        assert_eq!(reap(&s, &[]).await.unwrap(), 1);
        assert!(!users().await.iter().any(|u| u.starts_with(&s.prefix)));
        let mut admin = user_connection("redis://127.0.0.1:6379").await.unwrap();
        let _: i64 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut admin)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn connection_errors_never_hold_the_password() {
        if !redis_ready() {
            return;
        }
        let pw = "Wr0ngRedisPassw0rd-zz";
        for url in [
            format!("redis://nosuchuser:{pw}@127.0.0.1:6379"),
            format!("redis://:{pw}@127.0.0.1:1"),
        ] {
            let s = spec("redis", &url, "~a:* +get", "url");
            let e = mint(&s, "V", "g-000000000001", Timestamp::now())
                .await
                .unwrap_err();
            let msg = e.to_string();
            assert!(!msg.contains(pw), "{msg}");
            assert!(msg.contains("127.0.0.1:"), "{msg}");
        }
    }
}
