//! Issue 20, first slice: keyveil against a real OpenBao with team logins. An AppRole login's
//! token lives in the broker's memory only (nowhere under KEYVEIL_HOME, in no output, in no
//! argv) and is revoked at `lock`; the agent cannot change an environment's OpenBao address or
//! login without the human's factor (raw socket and CLI). TLS, namespaces and JWT logins are
//! tested against `bao server` in `crates/keyveil/src/dynamic/bao_conn/tests.rs`.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use keyveil_testkit::{BaoDev, rand_tag};

use crate::harness::*;

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An AppRole `app` that may read `secret/data/team/app`; returns (role id, secret id).
fn approle(bao: &BaoDev) -> (String, String) {
    bao.cli_stdin(
        &["policy", "write", "team-app", "-"],
        "path \"secret/data/team/app\" { capabilities = [\"read\"] }\n",
    );
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli(&[
        "write",
        "auth/approle/role/app",
        "token_policies=team-app",
        "token_ttl=10m",
    ]);
    let role_id = bao
        .cli(&["read", "-field=role_id", "auth/approle/role/app/role-id"])
        .trim()
        .to_owned();
    let secret_id = bao
        .cli(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/app/secret-id",
        ])
        .trim()
        .to_owned();
    (role_id, secret_id)
}

/// The tokens OpenBao handed out at AppRole logins, read from an audit device that logs raw
/// values (a test-only setting): the test must know the token to look for it.
fn login_tokens(audit_log: &std::path::Path) -> Vec<String> {
    tokens_of(audit_log, "auth/approle/login")
}

/// The tokens OpenBao answered to logins at paths starting with `prefix`.
fn tokens_of(audit_log: &std::path::Path, prefix: &str) -> Vec<String> {
    std::fs::read_to_string(audit_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["type"] == "response"
                && v["request"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(prefix))
        })
        .filter_map(|v| v["auth"]["client_token"].as_str().map(str::to_owned))
        .collect()
}

fn sha_script() -> &'static str {
    "printf 'sha=%s\\n' \"$(printf %s \"$API_KEY\" | sha256sum | cut -d' ' -f1)\""
}

#[test]
fn approle_token_lives_in_broker_memory_only_and_is_revoked_at_lock() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_log = audit_dir.path().join("bao-audit.log");
    let Some(bao) = BaoDev::start_with_raw_audit(&audit_log) else {
        return;
    };
    let (role_id, secret_id) = approle(&bao);
    let api_key = format!("team-api-key-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={api_key}"),
    ]);

    let h = Home::new();
    h.allow_insecure_loopback("demo");
    // `env link`: the environment's names come from OpenBao. The human links with the factor
    // (the passphrase first, the secret id after it): without it the values would be quoted
    // on every card and bound to each approval (an agent could have linked the server).
    let add = h.run_stdin(
        &[
            "env",
            "link",
            "demo",
            "--openbao",
            &bao.address,
            "--kv-path",
            "team/app",
            "--auth",
            "approle",
            "--role-id",
            &role_id,
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{secret_id}\n"),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let show = h.json(&["env", "show", "demo", "--json"]);
    assert_eq!(show["variables"][0]["name"], "API_KEY", "{show}");
    // The KV v2 version (the role may not read metadata: read from the secret's own answer).
    assert_eq!(show["variables"][0]["kv_version"], 1, "{show}");
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "API_KEY",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        sha_script(),
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let o = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&o.stdout).contains(&format!("sha={}", sha256_hex(&api_key))),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // A value changed in OpenBao is what the next run gets (same grant, same login).
    let new_key = format!("team-rotated-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={new_key}"),
    ]);
    let o2 = h.run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "API_KEY",
        "--wait",
        "5",
        "--",
        "sh",
        "-c",
        sha_script(),
    ]);
    assert!(text(&o2.stdout).contains(&format!("sha={}", sha256_hex(&new_key))));
    let show = h.json(&["env", "show", "demo", "--json"]);
    assert_eq!(show["variables"][0]["kv_version"], 2, "{show}");
    let shown = h.ok(&["env", "show", "demo"]);
    assert!(
        shown.contains("KV v2") && !shown.contains(&new_key),
        "{shown}"
    );

    // Each run's KV read is in keyveil's audit with OpenBao's request id, which OpenBao's own
    // audit device logs for that read (the join a security team makes), and the version read;
    // never a value or a token.
    let fetches: Vec<Value> = h
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "kv_fetch")
        .collect();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert_eq!(fetches[0]["version"], 1);
    assert_eq!(fetches[1]["version"], 2);
    let bao_audit = std::fs::read_to_string(&audit_log).unwrap();
    for f in &fetches {
        let rid = f["request_id"].as_str().unwrap();
        assert!(rid.len() >= 32, "{f}");
        assert!(
            bao_audit
                .lines()
                .any(|l| l.contains(rid) && l.contains("secret/data/team/app")),
            "OpenBao's audit has no read with request id {rid}"
        );
    }
    let audit = h.audit_text();
    assert!(!audit.contains(&api_key) && !audit.contains(&new_key));
    let tokens = login_tokens(&audit_log);
    assert_eq!(tokens.len(), 1, "one login serves the add and both runs");
    let token = tokens[0].clone();
    let accessor: Value =
        serde_json::from_str(&bao.cli(&["token", "lookup", "-format=json", &token])).unwrap();
    let accessor = accessor["data"]["accessor"].as_str().unwrap().to_owned();

    // The token and the secret id: in no file under the home (the sealed vault included: the
    // token is not stored at all), no output, no process's argv or environment.
    let mut all = h.all_plain_files();
    all.extend(std::fs::read(h.path().join("vault.kv")).unwrap_or_default());
    for s in [token.as_str(), secret_id.as_str()] {
        assert!(
            !contains(&all, s),
            "a file under KEYVEIL_HOME holds a login secret"
        );
        for out in [&add, &o, &o2] {
            assert!(!contains(&out.stdout, s) && !contains(&out.stderr, s));
        }
        assert!(holders_of(s).is_empty());
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            assert!(!contains(&cmd, s), "a command line holds a login secret");
        }
    }

    // Lock: the token is revoked at OpenBao (a lookup fails).
    assert!(bao.accessor_alive(&accessor));
    let lock = h.run(&["lock"]);
    assert!(lock.status.success(), "{}", text(&lock.stderr));
    wait_until(
        "the login token to be revoked",
        Duration::from_secs(10),
        || !bao.accessor_alive(&accessor),
    );
    assert!(bao.try_cli(&["token", "lookup", &token]).is_none());
}

/// The agent (no factor) cannot point an environment's OpenBao variables at another server or
/// another login: over the raw socket and through the CLI, `dynamic add` over an existing
/// variable is refused, and the stored address is unchanged.
#[test]
fn the_agent_cannot_change_the_openbao_address_or_login_without_the_factor() {
    let Some(bao) = BaoDev::start() else { return };
    let (role_id, secret_id) = approle(&bao);
    bao.cli(&["kv", "put", "secret/team/app", "API_KEY=first-value-123456"]);
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let add = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "--engine",
            "openbao-kv",
            "--address",
            &bao.address,
            "--kv-path",
            "team/app",
            "--auth",
            "approle",
            "--role-id",
            &role_id,
            "--admin-stdin",
        ],
        &format!("{secret_id}\n"),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let before = h.json(&["env", "show", "demo", "--json"]);

    // The agent's own server (any loopback port) and its own token.
    let theirs = "http://127.0.0.1:9";
    let r = crate::oracle::raw(
        &h,
        &json!({"op": "dynamic_add", "environment": "demo", "name": "API_KEY",
                "engine": "openbao-kv", "admin": "agent-chosen-token-zz",
                "options": {"address": theirs, "path": "team/app"},
                "check": false, "factor": null}),
    );
    assert_eq!(r["kind"], "error", "{r}");
    assert!(r.to_string().contains("factor"), "{r}");
    let cli = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "API_KEY",
            "--engine",
            "openbao-kv",
            "--address",
            theirs,
            "--kv-path",
            "team/app",
            "--no-check",
            "--admin-stdin",
        ],
        "agent-chosen-token-zz\n",
    );
    assert!(!cli.status.success());
    assert!(
        text(&cli.stderr).contains("factor") || text(&cli.stderr).contains("passphrase"),
        "{}",
        text(&cli.stderr)
    );
    // The login too: another role id with the same address.
    let r = crate::oracle::raw(
        &h,
        &json!({"op": "dynamic_add", "environment": "demo", "name": "API_KEY",
                "engine": "openbao-kv", "admin": "agent-secret-id-zz",
                "options": {"address": bao.address, "path": "team/app", "auth": "approle",
                            "role_id": "agent-role"},
                "check": false, "factor": null}),
    );
    assert_eq!(r["kind"], "error", "{r}");
    assert!(r.to_string().contains("factor"), "{r}");
    assert_eq!(h.json(&["env", "show", "demo", "--json"]), before);
    let audit = h.audit_text();
    assert!(!audit.contains("127.0.0.1:9") && !audit.contains("agent-role"));
}

/// A compact `EdDSA` JWS of `claims` with `key`.
pub(crate) fn sign_jwt(key: &rcgen::KeyPair, claims: &Value) -> String {
    use base64::Engine;
    use rcgen::SigningKey;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let input = format!(
        "{}.{}",
        b64.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64.encode(sig))
}

/// CI: the job's JWT is named on the command line (`--admin-env`), never given in argv; the
/// broker logs in with it, the run gets the value, and the JWT is in no plain file or output.
#[test]
fn a_ci_job_logs_in_with_its_jwt_from_an_environment_variable() {
    let Some(bao) = BaoDev::start() else { return };
    bao.cli_stdin(
        &["policy", "write", "team-app", "-"],
        "path \"secret/data/team/app\" { capabilities = [\"read\"] }\n",
    );
    let api_key = format!("ci-api-key-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={api_key}"),
    ]);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    bao.cli(&["auth", "enable", "jwt"]);
    bao.cli(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys={}", key.public_key_pem()),
        "jwt_supported_algs=EdDSA",
    ]);
    bao.cli(&[
        "write",
        "auth/jwt/role/ci",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=keyveil",
        "token_policies=team-app",
        "token_ttl=10m",
    ]);
    let now = jiff::Timestamp::now().as_second();
    let jwt = sign_jwt(
        &key,
        &json!({"sub": "repo:team/app:ref:main", "aud": "keyveil", "iat": now, "exp": now + 600}),
    );
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let args = [
        "dynamic",
        "add",
        "demo",
        "--engine",
        "openbao-kv",
        "--address",
        &bao.address,
        "--kv-path",
        "team/app",
        "--auth",
        "jwt",
        "--auth-role",
        "ci",
        "--admin-env",
        "CI_JOB_JWT",
    ];
    let missing = h.run(&args);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("CI_JOB_JWT"),
        "{}",
        text(&missing.stderr)
    );
    let mut c = h.cmd(&args);
    c.env("CI_JOB_JWT", &jwt);
    let add = wait_output(
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(60),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "API_KEY",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        sha_script(),
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let o = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&o.stdout).contains(&format!("sha={}", sha256_hex(&api_key))),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert!(!contains(&h.all_plain_files(), &jwt));
    for out in [&missing, &add, &o] {
        assert!(!contains(&out.stdout, &jwt) && !contains(&out.stderr, &jwt));
    }
}

/// Userpass: the password comes from stdin (never argv), the broker logs in with it, and
/// neither the password nor the login's token is in any file under the home, any output, any
/// process's argv or environment; the token is revoked at `lock`. A user name the server does
/// not know is refused at `link` with a hint, and nothing is stored.
#[test]
fn userpass_password_and_token_live_in_broker_memory_only() {
    let audit_dir = tempfile::tempdir().unwrap();
    let audit_log = audit_dir.path().join("bao-audit.log");
    let Some(bao) = BaoDev::start_with_raw_audit(&audit_log) else {
        return;
    };
    bao.cli_stdin(
        &["policy", "write", "team-app", "-"],
        "path \"secret/data/team/app\" { capabilities = [\"read\"] }\n",
    );
    bao.cli(&["auth", "enable", "userpass"]);
    let password = format!("pw-{}{}", rand_tag(), rand_tag());
    bao.cli_stdin(
        &[
            "write",
            "auth/userpass/users/dev1",
            "password=-",
            "token_policies=team-app",
            "token_ttl=10m",
        ],
        &password,
    );
    let api_key = format!("userpass-api-key-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={api_key}"),
    ]);
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let link = |user: &str, pw: &str| {
        h.run_stdin(
            &[
                "env",
                "link",
                "demo",
                "--openbao",
                &bao.address,
                "--kv-path",
                "team/app",
                "--auth",
                "userpass",
                "--username",
                user,
                "--admin-stdin",
            ],
            &format!("{pw}\n"),
        )
    };
    let wrong = link("dev1", "not-the-password-zz");
    assert!(!wrong.status.success());
    let e = text(&wrong.stderr);
    assert!(
        e.contains("auth/userpass/login/dev1") && e.contains("hint:"),
        "{e}"
    );
    assert!(!e.contains("not-the-password-zz"), "{e}");
    assert_eq!(
        h.json(&["env", "show", "demo", "--json"])["variables"],
        json!([])
    );
    let add = link("dev1", &password);
    assert!(add.status.success(), "{}", text(&add.stderr));
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "API_KEY",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        sha_script(),
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let o = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&o.stdout).contains(&format!("sha={}", sha256_hex(&api_key))),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let tokens = tokens_of(&audit_log, "auth/userpass/login/");
    assert_eq!(tokens.len(), 1, "one login serves the link and the run");
    let token = tokens[0].clone();
    let accessor: Value =
        serde_json::from_str(&bao.cli(&["token", "lookup", "-format=json", &token])).unwrap();
    let accessor = accessor["data"]["accessor"].as_str().unwrap().to_owned();
    let plain = h.all_plain_files();
    // The password is sealed in the vault (it is the stored login secret); the token is not
    // stored at all.
    let vault = std::fs::read(h.path().join("vault.kv")).unwrap_or_default();
    assert!(!contains(&vault, &token) && !contains(&vault, &password));
    for s in [token.as_str(), password.as_str()] {
        assert!(
            !contains(&plain, s),
            "a file under KEYVEIL_HOME holds a login secret"
        );
        for out in [&wrong, &add, &o] {
            assert!(!contains(&out.stdout, s) && !contains(&out.stderr, s));
        }
        assert!(
            holders_of(s).is_empty(),
            "a process's environment holds a login secret"
        );
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            assert!(!contains(&cmd, s), "a command line holds a login secret");
        }
    }
    assert!(bao.accessor_alive(&accessor));
    assert!(h.run(&["lock"]).status.success());
    wait_until(
        "the userpass token to be revoked",
        Duration::from_secs(10),
        || !bao.accessor_alive(&accessor),
    );
}

/// On a real OpenBao: an environment linked without the factor (an agent may have done it,
/// with a token of its own) has its value quoted on the card and bound to the approval; a value
/// written to OpenBao afterwards (by whoever holds a token that may write there) ends the
/// standing grant at the next run instead of reaching the approved command.
#[test]
fn a_kv_value_rotated_under_a_link_made_without_the_factor_ends_the_grant() {
    let Some(bao) = BaoDev::start() else { return };
    let first = format!("https://api.example.test/{}", rand_tag());
    let swapped = format!("http://127.0.0.1:9/{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_BASE_URL={first}"),
    ]);
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let add = h.run_stdin(
        &[
            "env",
            "link",
            "demo",
            "--openbao",
            &bao.address,
            "--kv-path",
            "team/app",
            "--admin-stdin",
        ],
        &format!("{}\n", bao.token),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let script =
        "printf 'sha=%s\\n' \"$(printf %s \"$API_BASE_URL\" | sha256sum | cut -d' ' -f1)\"";
    let argv = [
        "run", "--env", "demo", "--wait", "0", "--", "sh", "-c", script,
    ];
    let asked = h.run(&argv);
    assert_eq!(asked.status.code(), Some(5), "{}", text(&asked.stderr));
    let list = h.json(&["requests", "--json"]);
    let r = list.as_array().and_then(|a| a.last()).unwrap().clone();
    let quoted = r["chosen_values"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["variable"] == "API_BASE_URL"))
        .cloned()
        .unwrap_or_else(|| panic!("not quoted: {r}"));
    assert_eq!(quoted["value"], first.as_str(), "{r}");
    assert_eq!(quoted["origin"], "kv-without-factor", "{r}");
    // The card's read is on the record like a spawn's (never the value).
    assert!(
        h.audit_text()
            .lines()
            .any(|l| l.contains("\"kv_fetch\"") && l.contains("\"card\"")),
        "the card's KV read is not audited"
    );
    assert!(!h.audit_text().contains(&first));
    let id = r["id"].as_u64().unwrap();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let mut granted = argv;
    granted[4] = "5";
    let o1 = h.run(&granted);
    assert!(
        text(&o1.stdout).contains(&format!("sha={}", sha256_hex(&first))),
        "{}",
        text(&o1.stderr)
    );
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_BASE_URL={swapped}"),
    ]);
    let o2 = h.run(&granted);
    assert!(!o2.status.success());
    assert!(!text(&o2.stdout).contains(&sha256_hex(&swapped)));
    let err = text(&o2.stderr);
    assert!(
        err.contains("changed since approval") && err.contains("linked without the factor"),
        "{err}"
    );
    // The grant is over: the same command asks again, quoting the new value.
    let again = h.run(&argv);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again.stderr));
    let list = h.json(&["requests", "--json"]);
    assert!(list.to_string().contains(&swapped), "{list}");
}
