//! Latency of the engines, run by `scripts/bench-dynamic.sh` (ignored in normal test runs):
//! mint → first successful login ("usable"), and revoke → user gone at the source, for the
//! native PostgreSQL engine, OpenBao's database engine (same PostgreSQL) and Redis ACL users.
//! Iterations: `KEYVEIL_BENCH_N` (default 100; OpenBao uses half).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};

use super::testutil::{
    BaoDev, pg_admin_url, pg_ready, pg_role_exists, redis_ready, spec, spec_with,
};
use super::{DynamicSpec, mint, revoke};

fn stats(name: &str, what: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    println!(
        "| {name} | {what} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
        v.len(),
        ms(pick(0.5)),
        ms(pick(0.99)),
        mean,
        ms(v[v.len() - 1])
    );
}

async fn pg_login(url: &str) {
    let cfg: tokio_postgres::Config = url.parse().unwrap();
    let (c, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    let h = tokio::spawn(conn);
    c.query_one("SELECT 1", &[]).await.unwrap();
    drop(c);
    let _ = h.await;
}

async fn pg_round(s: &DynamicSpec, n: usize, name: &str) {
    let mut usable = Vec::new();
    let mut gone = Vec::new();
    for i in 0..n {
        let exp = Timestamp::now()
            .checked_add(SignedDuration::from_secs(600))
            .unwrap();
        let t0 = Instant::now();
        let m = mint(
            s,
            &Default::default(),
            "DATABASE_URL",
            &format!("g-{i:012x}"),
            exp,
            &super::CgWait::NONE,
        )
        .await
        .unwrap();
        pg_login(m.value.expose()).await;
        usable.push(t0.elapsed());
        let t1 = Instant::now();
        revoke(s, &Default::default(), &m.handle).await.unwrap();
        assert!(!pg_role_exists(&m.handle.user).await);
        gone.push(t1.elapsed());
    }
    stats(name, "mint → usable (login + SELECT 1)", usable);
    stats(name, "revoke → role gone", gone);
}

#[tokio::test]
#[ignore = "benchmark: scripts/bench-dynamic.sh"]
async fn bench_dynamic_engines() {
    let n: usize = std::env::var("KEYVEIL_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    assert!(pg_ready() && redis_ready());
    println!("| engine | measure | n | p50 ms | p99 ms | mean ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    let native = spec(
        "postgres",
        &pg_admin_url("unused"),
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{role}}",
        "url",
    );
    pg_round(&native, n, "postgres (native)").await;

    let bao = BaoDev::start().expect("bao is needed for the benchmark");
    assert!(bao.database_ready());
    let via = spec_with(
        "openbao-database",
        &bao.token,
        &[
            ("address", &bao.address),
            ("role", "ro"),
            ("connect_url", "postgresql://127.0.0.1:5432/test"),
        ],
    );
    let mut via = via;
    via.output = super::OutputForm::Url;
    pg_round(&via, n.div_ceil(2), "postgres via OpenBao").await;

    let r = spec(
        "redis",
        "redis://127.0.0.1:6379",
        "~bench:* +get +set +ping",
        "url",
    );
    let mut usable = Vec::new();
    let mut gone = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        let m = mint(
            &r,
            &Default::default(),
            "REDIS_URL",
            &format!("g-{i:012x}"),
            Timestamp::now(),
            &super::CgWait::NONE,
        )
        .await
        .unwrap();
        let mut c = redis::Client::open(m.value.expose())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
        usable.push(t0.elapsed());
        let t1 = Instant::now();
        revoke(&r, &Default::default(), &m.handle).await.unwrap();
        gone.push(t1.elapsed());
    }
    stats("redis ACL user", "mint → usable (AUTH + PING)", usable);
    stats("redis ACL user", "revoke → user gone", gone);
}
