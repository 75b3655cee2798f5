//! Tests of the PostgreSQL engine (the live ones use the local server: `testutil`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::dynamic::testutil::{pg_admin_url, pg_exec, pg_ready, pg_role_exists, spec};

#[test]
fn quoting() {
    assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
    assert!(quote_literal("a\\b").is_err());
    assert!(check_template("GRANT SELECT ON t TO {{role}}").is_ok());
    assert!(check_template("ALTER ROLE {{role}} PASSWORD '{{password}}'").is_err());
}

/// Mint → the role logs in and can do exactly what the template allows; revoke → login
/// fails and the role is gone; reap after a "crash" leaves no role of the prefix.
#[tokio::test]
async fn mint_use_revoke_reap() {
    if !pg_ready() {
        return;
    }
    let table = format!("kv_unit_{}", random_alnum(8).unwrap().to_lowercase());
    pg_exec(&format!(
        "CREATE TABLE {table} (x int); INSERT INTO {table} VALUES (1), (2)"
    ))
    .await;
    let s = spec(
        "postgres",
        &pg_admin_url("adminpw-NOT-USED-trust"),
        &format!("GRANT SELECT ON TABLE {table} TO {{{{role}}}}"),
        "pg-env",
    );
    let exp = Timestamp::now()
        .checked_add(jiff::SignedDuration::from_secs(300))
        .unwrap();
    let m = mint(&s, "DATABASE_URL", "g-0123456789ab", exp)
        .await
        .unwrap();
    let user = m.handle.user.clone();
    assert!(user.starts_with(&s.prefix));
    assert!(m.value.expose().starts_with("postgresql://"));
    assert_eq!((m.extra_env.len(), m.plain_env.len()), (1, 4));
    assert!(!format!("{:?}", m.handle).contains(m.value.expose()));

    // Log in as the minted role: SELECT allowed, INSERT refused.
    let cfg: tokio_postgres::Config = m.value.expose().parse().unwrap();
    let (c, conn) = cfg.connect(NoTls).await.unwrap();
    let live = tokio::spawn(conn);
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let e = c
        .batch_execute(&format!("INSERT INTO {table} VALUES (3)"))
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "42501");
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, user);

    // Revoke: the open session is terminated, the role is gone, login fails.
    revoke(&s, &user).await.unwrap();
    assert!(!pg_role_exists(&user).await);
    let _ = tokio::time::timeout(Duration::from_secs(5), live).await;
    assert!(c.query_one("SELECT 1", &[]).await.is_err());
    assert!(cfg.connect(NoTls).await.is_err());
    // Idempotent.
    revoke(&s, &user).await.unwrap();

    // A "crash": two roles minted, never revoked; reap keeps the held one only.
    let a = mint(&s, "DATABASE_URL", "g-aaaaaaaaaaaa", exp)
        .await
        .unwrap();
    let b = mint(&s, "DATABASE_URL", "g-bbbbbbbbbbbb", exp)
        .await
        .unwrap();
    let n = reap(&s, std::slice::from_ref(&b.handle.user))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(!pg_role_exists(&a.handle.user).await);
    assert!(pg_role_exists(&b.handle.user).await);
    assert_eq!(reap(&s, &[]).await.unwrap(), 1);
    assert!(!pg_role_exists(&b.handle.user).await);
    pg_exec(&format!("DROP TABLE {table}")).await;
}

/// A wrong admin URL: the error names host, port and user only, never the password.
#[tokio::test]
async fn connection_errors_never_hold_the_password() {
    let pw = "Wr0ngAdminPassw0rd-zz";
    for url in [
        format!("postgresql://nosuchuser_kv:{pw}@127.0.0.1:5432/test"),
        format!("postgresql://postgres:{pw}@127.0.0.1:1/test"),
        format!(
            "postgresql://postgres:{}@127.0.0.1:1/test",
            super::super::target::encode_userinfo(pw)
        ),
    ] {
        let s = spec("postgres", &url, "", "url");
        let e = mint(&s, "V", "g-000000000001", Timestamp::now())
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains(pw) && !msg.contains("Wr0ng"), "{msg}");
        assert!(msg.contains("127.0.0.1:"), "{msg}");
        assert!(!format!("{e:?}").contains(pw));
        let e = check_admin(&s).await.unwrap_err();
        assert!(!e.to_string().contains(pw));
    }
}
