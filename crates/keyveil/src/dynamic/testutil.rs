//! Test helpers of the engines' unit tests: specs with a fresh prefix, and PostgreSQL queries
//! through the engine's own client. The servers themselves (readiness, `psql`, `redis-cli`, a
//! throwaway `bao server -dev`) come from `keyveil-testkit`, shared with `tests/it/dynamic.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use keyveil_vault::{DynamicSource, SecretValue};

pub(crate) use keyveil_testkit::{BaoDev, pg_admin_url, pg_ready, redis_ready};

use super::{DynamicSpec, new_prefix};

/// A spec with a fresh prefix (so parallel tests never touch each other's users).
pub(crate) fn spec(engine: &str, admin: &str, template: &str, output: &str) -> DynamicSpec {
    let mut s = spec_with(engine, admin, &[]);
    s.template = template.to_owned();
    s.output = super::OutputForm::parse(output).unwrap();
    s
}

/// A spec with options (and a fresh prefix).
pub(crate) fn spec_with(engine: &str, admin: &str, options: &[(&str, &str)]) -> DynamicSpec {
    let mut o: std::collections::BTreeMap<String, String> = options
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    o.insert("prefix".into(), new_prefix().unwrap());
    let src = DynamicSource {
        engine: engine.to_owned(),
        admin: SecretValue::new(admin.to_owned()),
        template: String::new(),
        output: "password".into(),
        options: o,
    };
    let mut s = DynamicSpec {
        engine: super::EngineKind::parse(&src.engine).unwrap(),
        admin: src.admin.clone(),
        template: String::new(),
        output: super::OutputForm::Password,
        prefix: src.options.get("prefix").cloned().unwrap_or_default(),
        options: src.options,
    };
    if s.engine == super::EngineKind::OpenbaoKv || s.engine == super::EngineKind::OpenbaoDatabase {
        s.prefix.clear();
    }
    s
}

async fn pg_client() -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3",
        tokio_postgres::NoTls,
    )
    .await
    .ok()?;
    tokio::spawn(conn);
    Some(c)
}

/// Runs SQL as `postgres` in database `test`.
pub(crate) async fn pg_exec(sql: &str) {
    pg_client().await.unwrap().batch_execute(sql).await.unwrap();
}

/// Whether a role exists.
pub(crate) async fn pg_role_exists(name: &str) -> bool {
    pg_client()
        .await
        .unwrap()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}
