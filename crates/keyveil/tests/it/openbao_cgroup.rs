//! Issue 20: two-person approval delegated to OpenBao's control groups (OpenBao 2.7), against
//! a real `bao server -dev`. The laptop's login (userpass `alice`) reads a KV path whose policy
//! puts it under a control group; a member of the identity group `approvers` (`bob`) authorizes
//! in OpenBao. keyveil's run waits, after the human's own approval, until OpenBao releases the
//! value; the laptop's login cannot authorize its own request; an approval window that ends
//! gives a clear error; a control group without `ttl` (which OpenBao 2.7 never releases) is an
//! error with a hint, not an empty value (`docs/dynamic-credentials.md`, "Control groups").
#![allow(clippy::print_stderr)]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use keyveil_testkit::{BaoDev, find_bao, rand_tag};

use crate::harness::*;

/// The team's OpenBao set up for a control group on `secret/data/team/app`.
struct Team {
    /// The laptop's userpass password (what keyveil stores).
    alice_password: String,
    /// The second approver's token.
    bob_token: String,
    /// The value at the path.
    api_key: String,
}

/// Runs `bao` against `bao` with `token`.
fn bao_as(bao: &BaoDev, token: &str, args: &[&str]) -> Output {
    Command::new(find_bao().unwrap())
        .args(args)
        .env("BAO_ADDR", &bao.address)
        .env("BAO_TOKEN", token)
        .output()
        .unwrap()
}

/// Logs `user` in with `password`: (token, entity id).
fn login(bao: &BaoDev, user: &str, password: &str) -> (String, String) {
    let out = bao.cli_stdin(
        &[
            "write",
            "-format=json",
            &format!("auth/userpass/login/{user}"),
            "password=-",
        ],
        password,
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    (
        v["auth"]["client_token"].as_str().unwrap().to_owned(),
        v["auth"]["entity_id"].as_str().unwrap().to_owned(),
    )
}

/// A KV secret under a control group (one approval from group `approvers`; `ttl` if given),
/// a requester `alice` and an approver `bob` in group `approvers`; with `alice_approves`,
/// alice too is in the group and may call `sys/control-group/authorize`.
fn controlled(bao: &BaoDev, ttl: Option<&str>, alice_approves: bool) -> Team {
    let api_key = format!("cgroup-api-key-{}", rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={api_key}"),
    ]);
    let mut team = controlled_at(bao, "secret/data/team/app", ttl, alice_approves, "");
    team.api_key = api_key;
    team
}

/// [`controlled`] for any `path` (`extra` added to alice's policy); `api_key` left empty.
fn controlled_at(
    bao: &BaoDev,
    path: &str,
    ttl: Option<&str>,
    alice_approves: bool,
    extra: &str,
) -> Team {
    let api_key = String::new();
    let ttl_line = ttl.map(|t| format!("ttl = \"{t}\"")).unwrap_or_default();
    bao.cli_stdin(
        &["policy", "write", "requester", "-"],
        &format!(
            "{extra}\npath \"{path}\" {{\n  capabilities = [\"read\"]\n  control_group = {{\n    {ttl_line}\n    factor \"approvers\" {{\n      controlled_capabilities = [\"read\"]\n      identity {{\n        group_names = [\"approvers\"]\n        approvals = 1\n      }}\n    }}\n  }}\n}}\n"
        ),
    );
    bao.cli_stdin(
        &["policy", "write", "approver", "-"],
        "path \"sys/control-group/authorize\" { capabilities = [\"create\", \"update\"] }\npath \"sys/control-group/request\" { capabilities = [\"create\", \"update\"] }\n",
    );
    bao.cli(&["auth", "enable", "userpass"]);
    let alice_password = format!("pw-{}{}", rand_tag(), rand_tag());
    let bob_password = format!("pw-{}{}", rand_tag(), rand_tag());
    let alice_policies = if alice_approves {
        "requester,approver"
    } else {
        "requester"
    };
    for (user, pw, policy) in [
        ("alice", &alice_password, alice_policies),
        ("bob", &bob_password, "approver"),
    ] {
        bao.cli_stdin(
            &[
                "write",
                &format!("auth/userpass/users/{user}"),
                "password=-",
                &format!("token_policies={policy}"),
                "token_ttl=30m",
            ],
            pw,
        );
    }
    let (bob_token, bob_entity) = login(bao, "bob", &bob_password);
    let mut members = bob_entity;
    if alice_approves {
        let (_, alice_entity) = login(bao, "alice", &alice_password);
        members = format!("{members},{alice_entity}");
    }
    bao.cli(&[
        "write",
        "identity/group",
        "name=approvers",
        &format!("member_entity_ids={members}"),
    ]);
    Team {
        alice_password,
        bob_token,
        api_key,
    }
}

/// Links `demo`'s `API_KEY` to the path with alice's login, with the factor, without reading
/// it (a read would be held for the control group).
fn link(h: &Home, bao: &BaoDev, team: &Team) {
    h.allow_insecure_loopback("demo");
    let add = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "API_KEY",
            "--engine",
            "openbao-kv",
            "--address",
            &bao.address,
            "--kv-path",
            "team/app",
            "--auth",
            "userpass",
            "--username",
            "alice",
            "--admin-stdin",
            "--passphrase-stdin",
            "--no-check",
        ],
        &format!("{PASS}\n{}\n", team.alice_password),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
}

/// How many PostgreSQL roles OpenBao's userpass logins hold for `ro` leases (the server is
/// shared: compared with a count taken first).
fn alice_roles() -> usize {
    let o = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-XAtqc",
            "select count(*) from pg_roles where rolname like 'v-userpass-ro-%'",
        ])
        .output()
        .unwrap();
    text(&o.stdout).trim().parse().unwrap()
}

fn sha_script() -> &'static str {
    "printf 'sha=%s\\n' \"$(printf %s \"$API_KEY\" | sha256sum | cut -d' ' -f1)\""
}

/// Starts a run of the script, approves it in keyveil (the human's approval) and returns it.
fn approved_run(h: &Home) -> std::process::Child {
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "API_KEY",
        "--wait",
        "60",
        "--",
        "sh",
        "-c",
        sha_script(),
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    child
}

/// The accessor of the latest `control_group_pending` entry of keyveil's audit log.
fn pending_accessor(h: &Home, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        if let Some(a) = h
            .audit_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.to_string().contains("control_group_pending"))
            .filter_map(|v| {
                [
                    &v["fields"]["accessor"],
                    &v["accessor"],
                    &v["data"]["accessor"],
                ]
                .iter()
                .find_map(|x| x.as_str().map(str::to_owned))
            })
            .next_back()
        {
            return a;
        }
        assert!(t0.elapsed() < limit, "no control_group_pending entry");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_controlled_read_waits_for_a_second_approver_whom_the_laptop_cannot_play() {
    let audit_dir = tempfile::tempdir().unwrap();
    let bao_audit = audit_dir.path().join("bao-audit.log");
    let Some(bao) = BaoDev::start_with_raw_audit(&bao_audit) else {
        return;
    };
    let team = controlled(&bao, Some("10m"), false);
    let h = Home::new();
    // `env link` reads the path for its field names: the read is held for the control group,
    // and a link does not wait for it: it fails with the accessor and what to do.
    h.allow_insecure_loopback("demo");
    let linked = h.run_stdin(
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
            "alice",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{}\n", team.alice_password),
    );
    let e = text(&linked.stderr);
    assert!(!linked.status.success(), "{e}");
    assert!(
        e.contains("second approver") && e.contains("accessor") && e.contains("hint:"),
        "{e}"
    );
    link(&h, &bao, &team);

    let mut child = approved_run(&h);
    let accessor = pending_accessor(&h, Duration::from_secs(30));
    // The link's request is the one waited on (the approver was told that accessor).
    assert!(
        e.contains(&accessor),
        "{accessor} not in the link's error: {e}"
    );
    // `keyveil grants` says what the spawn waits on, with the accessor to authorize.
    let listed = h.json(&["grants", "--json"]).to_string();
    assert!(
        listed.contains("openbao_waits") && listed.contains(&accessor),
        "{listed}"
    );
    let shown = h.ok(&["grants"]);
    assert!(
        shown.contains("waits for a second approver in OpenBao") && shown.contains(&accessor),
        "{shown}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run did not wait for OpenBao's second approver"
    );

    // The laptop's own login (what keyveil holds, and so all an agent of this user can reach)
    // may not authorize: its policy has no capability on sys/control-group/authorize.
    let (alice_token, _) = login(&bao, "alice", &team.alice_password);
    let own = bao_as(
        &bao,
        &alice_token,
        &[
            "write",
            "sys/control-group/authorize",
            &format!("accessor={accessor}"),
        ],
    );
    assert!(!own.status.success());
    assert!(
        text(&own.stderr).contains("permission denied"),
        "{}",
        text(&own.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "released without approval"
    );

    // The second approver authorizes in OpenBao: keyveil proceeds.
    let ok = bao_as(
        &bao,
        &team.bob_token,
        &[
            "write",
            "-format=json",
            "sys/control-group/authorize",
            &format!("accessor={accessor}"),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let approved: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(approved["data"]["approved"], true, "{approved}");
    let o = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&o.stdout).contains(&format!("sha={}", sha256_hex(&team.api_key))),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    // The wrapping tokens OpenBao answered (read from its raw audit device, a test-only
    // setting) are nowhere under KEYVEIL_HOME, in no output, no process environment or argv.
    let wrap_tokens: Vec<String> = std::fs::read_to_string(&bao_audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["type"] == "response")
        .filter_map(|v| {
            v["response"]["wrap_info"]["token"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        !wrap_tokens.is_empty(),
        "no wrapping token in OpenBao's audit log"
    );
    let plain = h.all_plain_files();
    for t in &wrap_tokens {
        assert!(
            !contains(&plain, t),
            "a file under KEYVEIL_HOME holds a wrapping token"
        );
        for out in [&linked, &o] {
            assert!(!contains(&out.stdout, t) && !contains(&out.stderr, t));
        }
        assert!(
            holders_of(t).is_empty(),
            "an environment holds a wrapping token"
        );
    }
    assert!(
        !h.json(&["grants", "--json"])
            .to_string()
            .contains(&accessor),
        "still listed as waiting once released"
    );
    // On the record: the accessor and OpenBao's request id of the released read; no value.
    let audit = h.audit_text();
    let released = audit
        .lines()
        .find(|l| l.contains("control_group_released"))
        .unwrap_or_else(|| panic!("no control_group_released entry:\n{audit}"));
    assert!(released.contains(&accessor), "{released}");
    let v: Value = serde_json::from_str(released).unwrap();
    assert!(
        v.to_string().contains("\"request_id\":\"")
            && !v.to_string().contains("\"request_id\":\"\""),
        "{released}"
    );
    assert!(!audit.contains(&team.api_key));
    // The released wrapping token is revoked: approved, it would run the read again at every
    // unwrap until its TTL; its accessor names nothing now.
    let gone = bao_as(
        &bao,
        &team.bob_token,
        &[
            "write",
            "sys/control-group/request",
            &format!("accessor={accessor}"),
        ],
    );
    assert!(!gone.status.success(), "{}", text(&gone.stdout));
}

/// Even a laptop login that is itself in the approver group, with the capability to authorize,
/// cannot approve its own request: OpenBao refuses ("token owner cannot be approver"), and the
/// run keeps waiting.
#[test]
fn openbao_refuses_a_login_that_authorizes_its_own_request() {
    let Some(bao) = BaoDev::start() else { return };
    let team = controlled(&bao, Some("10m"), true);
    let h = Home::new();
    link(&h, &bao, &team);
    let mut child = approved_run(&h);
    let accessor = pending_accessor(&h, Duration::from_secs(30));
    let (alice_token, _) = login(&bao, "alice", &team.alice_password);
    let own = bao_as(
        &bao,
        &alice_token,
        &[
            "write",
            "sys/control-group/authorize",
            &format!("accessor={accessor}"),
        ],
    );
    assert!(!own.status.success());
    assert!(
        text(&own.stderr).contains("token owner cannot be approver"),
        "{}",
        text(&own.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "released without approval"
    );
    let ok = bao_as(
        &bao,
        &team.bob_token,
        &[
            "write",
            "sys/control-group/authorize",
            &format!("accessor={accessor}"),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let o = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&o.stdout).contains(&format!("sha={}", sha256_hex(&team.api_key))),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_control_group_approval_window_that_ends_fails_the_run_with_a_hint() {
    let Some(bao) = BaoDev::start() else { return };
    let team = controlled(&bao, Some("3s"), false);
    let h = Home::new();
    link(&h, &bao, &team);
    let child = approved_run(&h);
    let o = wait_output(child, Duration::from_secs(60));
    let e = text(&o.stderr);
    assert!(!o.status.success());
    assert!(!text(&o.stdout).contains("sha="), "{}", text(&o.stdout));
    assert!(
        e.contains("wrapping token expired") && e.contains("hint:") && e.contains("run again"),
        "{e}"
    );
    let accessor = pending_accessor(&h, Duration::from_secs(5));
    assert!(e.contains(&accessor), "{e}");
}

#[test]
fn a_control_group_without_ttl_is_an_error_not_an_empty_value() {
    let Some(bao) = BaoDev::start() else { return };
    let team = controlled(&bao, None, false);
    let h = Home::new();
    link(&h, &bao, &team);
    let child = approved_run(&h);
    let o = wait_output(child, Duration::from_secs(60));
    let e = text(&o.stderr);
    assert!(!o.status.success());
    assert!(!text(&o.stdout).contains("sha="), "{}", text(&o.stdout));
    assert!(
        e.contains("neither data nor a wrapping token") && e.contains("hint:") && e.contains("ttl"),
        "{e}"
    );
}

/// A database lease (`openbao-database`) under a control group: the mint waits for the second
/// approver like a KV read, and the lease it gets is on the record with the accessor.
#[test]
fn a_controlled_database_lease_waits_for_the_second_approver() {
    let Some(bao) = BaoDev::start() else { return };
    if !bao.database_ready() {
        return;
    }
    let team = controlled_at(
        &bao,
        "database/creds/ro",
        Some("10m"),
        false,
        "path \"sys/leases/renew\" { capabilities = [\"update\"] }\npath \"sys/leases/revoke\" { capabilities = [\"update\"] }",
    );
    let before = alice_roles();
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let add = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "DB",
            "--engine",
            "openbao-database",
            "--address",
            &bao.address,
            "--role",
            "ro",
            "--connect-url",
            "postgresql://127.0.0.1:5432/test",
            "--auth",
            "userpass",
            "--username",
            "alice",
            "--admin-stdin",
            "--passphrase-stdin",
            "--no-check",
        ],
        &format!("{PASS}\n{}\n", team.alice_password),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let mut child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "DB",
        "--wait",
        "60",
        "--",
        "sh",
        "-c",
        "psql \"$DB\" -XAtqc 'select 7*6'",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let accessor = pending_accessor(&h, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "minted without approval"
    );
    // No database user before the approval (OpenBao 2.7.2 does list a lease under
    // database/creds/ro/ at the held read, a 64-hex-digit id with no user behind it).
    assert_eq!(alice_roles(), before, "a database user before the approval");
    let ok = bao_as(
        &bao,
        &team.bob_token,
        &[
            "write",
            "sys/control-group/authorize",
            &format!("accessor={accessor}"),
        ],
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let o = wait_output(child, Duration::from_secs(60));
    assert_eq!(
        alice_roles(),
        before + 1,
        "one database user, after the approval"
    );
    assert!(
        text(&o.stdout).contains("42"),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let audit = h.audit_text();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("control_group_released") && l.contains(&accessor)),
        "{audit}"
    );
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"dynamic_mint\"") && l.contains("database/creds/ro/")),
        "{audit}"
    );
}

/// A grant revoked in keyveil while its spawn waits for OpenBao's second approver ends the
/// wait at the next poll: the run fails and gets no value, even if OpenBao approves later.
#[test]
fn a_grant_revoked_while_waiting_ends_the_wait() {
    let Some(bao) = BaoDev::start() else { return };
    let team = controlled(&bao, Some("10m"), false);
    let h = Home::new();
    link(&h, &bao, &team);
    let child = approved_run(&h);
    let accessor = pending_accessor(&h, Duration::from_secs(30));
    let t0 = Instant::now();
    assert!(h.run(&["revoke", "--all"]).status.success());
    let o = wait_output(child, Duration::from_secs(30));
    let e = text(&o.stderr);
    assert!(!o.status.success());
    assert!(!text(&o.stdout).contains("sha="), "{}", text(&o.stdout));
    assert!(
        e.contains("grant ended") && e.contains(&accessor) && e.contains("hint:"),
        "{e}"
    );
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}
