//! Just-in-time credentials end to end, against the real servers on this machine: PostgreSQL
//! (127.0.0.1:5432, trust auth, database `test`), Redis (127.0.0.1:6379) and a `bao server -dev`
//! started here. Each test uses its own keyveil home, its own table or key space, and its own
//! random user-name prefix, so tests run in parallel without touching each other's users.
//!
//! Under CI (`CI` set) a missing PostgreSQL or Redis fails the test; a missing `bao` skips the
//! OpenBao test with a message (`.ci/run` installs it). Skips and timings go to stderr.
#![allow(clippy::print_stderr)]

use std::io::Write;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use keyveil_testkit::{BaoDev, pg_ready, psql_admin, rand_tag, redis_cli, redis_ready};

use crate::harness::*;

/// A fake admin password: trust authentication ignores it, but keyveil must never show it.
const ADMIN_PW: &str = "AdminPw-9f3kQz-never-shown";

fn roles_with_prefix(prefix: &str) -> Vec<String> {
    let o = psql_admin(&format!(
        "select rolname from pg_roles where starts_with(rolname, '{prefix}')"
    ));
    text(&o.stdout).lines().map(str::to_owned).collect()
}

/// `keyveil dynamic add ...` with the admin secret on stdin; returns the parsed summary line's
/// prefix (`users named <prefix>*`) if any.
fn dynamic_add(h: &Home, args: &[&str], admin: &str) -> Output {
    let mut a = vec!["dynamic", "add"];
    a.extend_from_slice(args);
    a.push("--admin-stdin");
    h.run_stdin(&a, &format!("{admin}\n"))
}

fn prefix_of(o: &Output) -> String {
    let out = text(&o.stdout);
    let i = out.find("users named ").expect("no prefix in the summary") + "users named ".len();
    out[i..].split('*').next().unwrap().to_owned()
}

/// Runs `sh -c SCRIPT` under the broker in the background; approve it with `extra`.
fn run_approved(h: &Home, only: &str, script: &str, extra: &[&str]) -> Output {
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", only, "--wait", "30", "--", "sh", "-c", script,
    ]);
    let id = h.wait_request();
    let a = h.approve(id, extra);
    assert!(a.status.success(), "{}", text(&a.stderr));
    wait_output(child, Duration::from_secs(60))
}

/// Re-runs a command covered by a live grant (no approval needed).
fn run_granted(h: &Home, only: &str, script: &str) -> Output {
    h.run(&[
        "run", "--env", "demo", "--only", only, "--wait", "5", "--", "sh", "-c", script,
    ])
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

fn assert_nowhere(h: &Home, outputs: &[&Output], secret: &str) {
    assert!(
        !contains(&h.all_plain_files(), secret),
        "a plain file in the keyveil home holds a secret"
    );
    for o in outputs {
        assert!(
            !contains(&o.stdout, secret) && !contains(&o.stderr, secret),
            "keyveil's output holds a secret"
        );
    }
}

#[test]
fn postgres_role_per_grant_does_what_the_template_allows_and_dies_with_the_grant() {
    if !pg_ready() {
        return;
    }
    let h = Home::new();
    let table = format!("kv_it_{}", rand_tag());
    assert!(
        psql_admin(&format!(
            "create table {table} (x int); insert into {table} values (1), (2)"
        ))
        .status
        .success()
    );
    let template = format!("GRANT SELECT ON TABLE {table} TO {{{{role}}}}");
    let add = dynamic_add(
        &h,
        &[
            "demo",
            "DATABASE_URL",
            "--engine",
            "postgres",
            "--template",
            &template,
            "--output",
            "url",
        ],
        &format!("postgresql://postgres:{ADMIN_PW}@127.0.0.1:5432/test"),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let prefix = prefix_of(&add);
    let show = h.json(&["env", "show", "demo", "--json"]);
    let var = show["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DATABASE_URL")
        .unwrap()
        .clone();
    assert_eq!(var["source"], "dynamic");
    assert_eq!(var["set"], true);

    // The granted child logs in with the minted role: SELECT works, INSERT is refused. It
    // leaves the URL in a file so the test knows the minted password.
    let leak = h.path().join("minted-url");
    let script = format!(
        "psql \"$DATABASE_URL\" -XAtc 'select count(*) from {table}'; \
         psql \"$DATABASE_URL\" -XAtc 'insert into {table} values (9)' 2>&1; \
         psql \"$DATABASE_URL\" -XAtc 'select current_user'; \
         echo \"url=$DATABASE_URL\"; printf %s \"$DATABASE_URL\" > {}",
        leak.display()
    );
    let o = run_approved(&h, "DATABASE_URL", &script, &["--ttl", "5m"]);
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", text(&o.stderr));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2"), "{out}");
    assert!(out.contains("permission denied"), "{out}");
    let role = lines
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_default()
        .to_owned();
    assert!(role.starts_with(&prefix), "{out}");
    assert!(out.contains("url=[REDACTED:DATABASE_URL]"), "{out}");
    let minted_url = std::fs::read_to_string(&leak).unwrap();
    std::fs::remove_file(&leak).unwrap();
    let minted_pw = minted_url
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(ui, _)| ui.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap();
    assert!(minted_pw.len() >= 32);
    assert_eq!(roles_with_prefix(&prefix), vec![role.clone()]);

    // `grants` shows the credential (handle, expiry), never a secret.
    let grants = h.ok(&["grants", "--json"]);
    let g: Value = serde_json::from_str(&grants).unwrap();
    let d = &g[0]["dynamic"][0];
    assert_eq!(d["handle"]["user"], role.as_str());
    assert_eq!(d["handle"]["engine"], "postgres");
    assert_eq!(d["handle"]["target"], "postgres@127.0.0.1:5432/test");
    assert!(d["expires_at"].is_string());
    let grants_text = h.ok(&["grants"]);
    assert!(grants_text.contains(&role), "{grants_text}");

    // A second run under the same grant reuses the same role.
    let again = run_granted(&h, "DATABASE_URL", &script);
    assert!(
        text(&again.stdout).contains(&role),
        "{}",
        text(&again.stderr)
    );
    std::fs::remove_file(&leak).unwrap();

    // Revoke: the role is gone within moments, and the minted URL no longer logs in.
    let gid = g[0]["id"].as_str().unwrap().to_owned();
    let rv = h.run(&["revoke", &gid]);
    assert!(rv.status.success());
    let took = wait_until("the role to be dropped", Duration::from_secs(5), || {
        roles_with_prefix(&prefix).is_empty()
    });
    eprintln!("revoke → role gone: {} ms", took.as_millis());
    let login = Command::new("psql")
        .args([minted_url.as_str(), "-XAtc", "select 1"])
        .output()
        .unwrap();
    assert!(!login.status.success(), "the revoked role still logs in");
    wait_until(
        "the revocation to be audited",
        Duration::from_secs(5),
        || h.audit_text().contains("\"dynamic_revoked\""),
    );
    let audit = h.audit_text();
    for ev in ["dynamic_add", "dynamic_mint", "dynamic_revoke"] {
        assert!(
            audit.contains(&format!("\"{ev}\"")),
            "no {ev} in the audit log"
        );
    }
    assert!(h.run(&["audit", "verify"]).status.success());
    for s in [ADMIN_PW, minted_pw.as_str()] {
        assert_nowhere(&h, &[&add, &o, &again, &rv], s);
    }
    assert!(!grants.contains(&minted_pw) && !grants_text.contains(&minted_pw));
    psql_admin(&format!("drop table {table}"));
}

#[test]
fn a_crashed_broker_leaves_no_role_after_restart() {
    if !pg_ready() {
        return;
    }
    let h = Home::new();
    let add = dynamic_add(
        &h,
        &["demo", "DB", "--engine", "postgres", "--output", "pg-env"],
        "postgresql://postgres@127.0.0.1:5432/test",
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let prefix = prefix_of(&add);
    let o = run_approved(
        &h,
        "DB",
        "psql -XAtc 'select current_user'; echo \"user=$PGUSER\"",
        &["--ttl", "5m"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // PG* variables work for psql with no argument at all.
    assert!(text(&o.stdout).lines().next().unwrap().starts_with(&prefix));
    assert_eq!(roles_with_prefix(&prefix).len(), 1);

    // kill -9 the broker: nothing revokes the role...
    let pid = std::fs::read_to_string(h.path().join("run/broker.pid")).unwrap();
    assert!(
        Command::new("kill")
            .args(["-9", pid.trim()])
            .status()
            .unwrap()
            .success()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(roles_with_prefix(&prefix).len(), 1);
    // ...until the next broker is unlocked: its reaper drops the leftover.
    let u = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(u.status.success(), "{}", text(&u.stderr));
    wait_until(
        "the reaper to drop the leftover role",
        Duration::from_secs(10),
        || roles_with_prefix(&prefix).is_empty(),
    );
    wait_until("the reap to be audited", Duration::from_secs(5), || {
        h.audit_text().contains("\"dynamic_reaped\"")
    });

    // A clean `daemon stop` destroys live grants' roles before the broker exits.
    let o = run_approved(&h, "DB", "psql -XAtc 'select 1'", &["--ttl", "5m"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(roles_with_prefix(&prefix).len(), 1);
    assert!(h.run(&["daemon", "stop"]).status.success());
    assert!(
        roles_with_prefix(&prefix).is_empty(),
        "daemon stop left a role behind"
    );
}

#[test]
fn a_wrong_admin_url_is_reported_by_host_port_and_user_only() {
    let h = Home::new();
    let pw = "Wr0ng-Admin-Secret-zzq";
    for (url, shown) in [
        (
            format!("postgresql://nosuchuser_kv:{pw}@127.0.0.1:5432/test"),
            "nosuchuser_kv@127.0.0.1:5432/test",
        ),
        (
            format!("postgresql://postgres:{pw}@127.0.0.1:1/test"),
            "postgres@127.0.0.1:1/test",
        ),
        (
            format!("redis://someone:{pw}@127.0.0.1:1"),
            "someone@127.0.0.1:1",
        ),
        (format!("mysql://root:{pw}@127.0.0.1/x"), "scheme"),
    ] {
        let engine = if url.starts_with("redis") {
            "redis"
        } else {
            "postgres"
        };
        let mut args = vec!["demo", "V", "--engine", engine];
        if engine == "redis" {
            args.extend(["--template", "~a:* +get"]);
        }
        let o = dynamic_add(&h, &args, &url);
        assert!(!o.status.success());
        let err = text(&o.stderr);
        assert!(err.contains(shown), "{err}");
        assert!(!err.contains(pw) && !text(&o.stdout).contains(pw), "{err}");
    }
    assert!(!contains(&h.all_plain_files(), pw));
    // Nothing was stored.
    let show = h.json(&["env", "show", "demo", "--json"]);
    assert!(show["variables"].as_array().unwrap().is_empty());
}

#[test]
fn redis_acl_user_per_grant() {
    if !redis_ready() {
        return;
    }
    let h = Home::new();
    // The test's Redis may run as the test's own user: its loopback port then needs the
    // environment's opt-in (redteam_s12_kv.rs); harmless where it runs as a service user.
    h.allow_insecure_loopback("demo");
    let ns = format!("kvit{}", rand_tag());
    let admin = format!("redis://default:{ADMIN_PW}@127.0.0.1:6379");
    // The default user has no password here: Redis ignores AUTH default <anything> when
    // `nopass` is set, so the fake password is accepted and must still never be shown.
    let add = dynamic_add(
        &h,
        &[
            "demo",
            "REDIS_URL",
            "--engine",
            "redis",
            "--template",
            &format!("~{ns}:* +get +set +acl|whoami"),
            "--output",
            "url",
        ],
        &admin,
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let prefix = prefix_of(&add);
    let script = format!(
        "redis-cli --no-auth-warning -u \"$REDIS_URL\" set {ns}:k v; \
         redis-cli --no-auth-warning -u \"$REDIS_URL\" get {ns}:k; \
         redis-cli --no-auth-warning -u \"$REDIS_URL\" set other:k v; \
         redis-cli --no-auth-warning -u \"$REDIS_URL\" del {ns}:k; \
         redis-cli --no-auth-warning -u \"$REDIS_URL\" acl whoami"
    );
    let o = run_approved(&h, "REDIS_URL", &script, &["--ttl", "5m"]);
    let out = text(&o.stdout);
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.first(), Some(&"OK"), "{out}\n{}", text(&o.stderr));
    assert_eq!(lines.get(1), Some(&"v"), "{out}");
    assert!(lines.get(2).is_some_and(|l| l.contains("NOPERM")), "{out}");
    assert!(lines.get(3).is_some_and(|l| l.contains("NOPERM")), "{out}");
    let user = lines.get(4).unwrap().to_string();
    assert!(user.starts_with(&prefix), "{out}");
    assert!(redis_cli(&["acl", "users"]).lines().any(|u| u == user));

    let g: Value = serde_json::from_str(&h.ok(&["grants", "--json"])).unwrap();
    assert_eq!(g[0]["dynamic"][0]["handle"]["user"], user.as_str());
    let rv = h.run(&["revoke", "--all"]);
    assert!(rv.status.success());
    let took = wait_until("the ACL user to be deleted", Duration::from_secs(5), || {
        !redis_cli(&["acl", "users"])
            .lines()
            .any(|u| u.starts_with(&prefix))
    });
    eprintln!("revoke → Redis user gone: {} ms", took.as_millis());
    assert_nowhere(&h, &[&add, &o, &rv], ADMIN_PW);
    redis_cli(&["del", &format!("{ns}:k")]);
}

// ---------------------------------------------------------------------------------------------
// OpenBao

#[test]
fn openbao_kv_environment_and_a_database_lease_per_grant() {
    let Some(bao) = BaoDev::start() else { return };
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let api_key = format!("kv-api-key-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={api_key}"),
        "REGION=eu-west",
    ]);
    // An environment backed by a KV v2 path: every field becomes a variable, fetched per run.
    // Linked with the factor (the passphrase first): the values are the human's, not quoted on
    // cards nor bound to an approval, so a rotation reaches the next run.
    let add = dynamic_add(
        &h,
        &[
            "demo",
            "--engine",
            "openbao-kv",
            "--address",
            &bao.address,
            "--kv-path",
            "team/app",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{}", bao.token),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let show = h.json(&["env", "show", "demo", "--json"]);
    let names: Vec<&str> = show["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_KEY", "REGION"]);
    let o = run_approved(
        &h,
        "API_KEY,REGION",
        "printf 'sha=%s\\n' \"$(printf %s \"$API_KEY\" | sha256sum | cut -d' ' -f1)\"; echo \"raw=$API_KEY region=$REGION\"",
        &["--ttl", "5m"],
    );
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("sha={}", sha256_hex(&api_key))),
        "{out}\n{}",
        text(&o.stderr)
    );
    assert!(out.contains("raw=[REDACTED:API_KEY]"), "{out}");
    // A value changed in OpenBao is seen by the next run: nothing is cached across runs.
    let new_key = format!("kv-rotated-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={new_key}"),
        "REGION=eu-west",
    ]);
    let o2 = run_granted(
        &h,
        "API_KEY,REGION",
        "printf 'sha=%s\\n' \"$(printf %s \"$API_KEY\" | sha256sum | cut -d' ' -f1)\"; echo \"raw=$API_KEY region=$REGION\"",
    );
    assert!(
        text(&o2.stdout).contains(&format!("sha={}", sha256_hex(&new_key))),
        "{}",
        text(&o2.stderr)
    );

    // The database secrets engine: one lease per grant, revoked with the grant.
    if !bao.database_ready() {
        return;
    }
    let add_db = dynamic_add(
        &h,
        &[
            "demo",
            "BAO_DB",
            "--engine",
            "openbao-database",
            "--address",
            &bao.address,
            "--role",
            "ro",
            "--connect-url",
            "postgresql://127.0.0.1:5432/test",
        ],
        &bao.token,
    );
    assert!(add_db.status.success(), "{}", text(&add_db.stderr));
    let script = "psql \"$BAO_DB\" -XAtc 'select current_user'";
    let o3 = run_approved(&h, "BAO_DB", script, &["--ttl", "5m"]);
    let user = text(&o3.stdout).trim().to_owned();
    assert!(
        o3.status.success() && !user.is_empty(),
        "{}",
        text(&o3.stderr)
    );
    assert_eq!(bao.leases("ro").len(), 1, "one lease for the grant");
    let again = run_granted(&h, "BAO_DB", script);
    assert_eq!(
        text(&again.stdout).trim(),
        user,
        "the grant reuses its lease"
    );
    assert_eq!(bao.leases("ro").len(), 1);
    let g: Value = serde_json::from_str(&h.ok(&["grants", "--json"])).unwrap();
    let held: Vec<&Value> = g
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["dynamic"].as_array().unwrap())
        .collect();
    let lease = held
        .iter()
        .find(|d| d["variable"] == "BAO_DB")
        .map(|d| d["handle"]["lease_id"].as_str().unwrap().to_owned())
        .unwrap();
    assert!(lease.starts_with("database/creds/ro/"));
    // The lease was shortened to the grant (≤ 5 minutes), so a crash cannot leave it for an hour.
    let ttl: Value =
        serde_json::from_str(&bao.cli(&["lease", "lookup", "-format=json", &lease])).unwrap();
    assert!(ttl["data"]["ttl"].as_i64().unwrap() <= 300, "{ttl}");

    let rv = h.run(&["revoke", "--all"]);
    assert!(rv.status.success());
    let took = wait_until("the lease to be revoked", Duration::from_secs(10), || {
        bao.leases("ro").is_empty()
    });
    eprintln!("revoke → OpenBao lease gone: {} ms", took.as_millis());
    let gone = psql_admin(&format!("select 1 from pg_roles where rolname = '{user}'"));
    assert!(
        text(&gone.stdout).trim().is_empty(),
        "OpenBao did not drop the role"
    );
    for o in [&add, &o, &o2, &add_db, &o3, &again, &rv] {
        assert!(!contains(&o.stdout, &bao.token) && !contains(&o.stderr, &bao.token));
    }
    let files = h.all_plain_files();
    for s in [bao.token.as_str(), api_key.as_str(), new_key.as_str()] {
        assert!(!contains(&files, s), "a plain file holds a secret");
    }
}

#[test]
fn openbao_refuses_plain_http_to_another_host() {
    let h = Home::new();
    let o = dynamic_add(
        &h,
        &[
            "demo",
            "--engine",
            "openbao-kv",
            "--address",
            "http://192.0.2.10:8200",
            "--kv-path",
            "app",
        ],
        "s.not-a-real-token-zz",
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("bao proxy"), "{err}");
    assert!(!err.contains("not-a-real-token"));
    let _ = std::io::stderr().flush();
}
