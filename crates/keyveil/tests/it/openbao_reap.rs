//! Issue 20: an OpenBao database lease minted for a grant is revoked after a broker crash
//! (`kill -9` mid-grant, then `unlock`), found through keyveil's own audit log (verified
//! before it is read); a teammate's lease is never touched, even when the agent appends a
//! forged `dynamic_mint` entry naming it.
#![allow(clippy::print_stderr)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use keyveil_testkit::BaoDev;

use crate::harness::*;

fn broker_pid(h: &Home) -> i32 {
    let s = std::fs::read_to_string(h.path().join("run/broker.pid")).unwrap();
    s.trim().parse().unwrap()
}

fn kill9(pid: i32) {
    let p = rustix::process::Pid::from_raw(pid).unwrap();
    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{pid} survived kill -9"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn unlock(h: &Home) {
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

fn lease_alive(bao: &BaoDev, id: &str) -> bool {
    bao.try_cli(&["lease", "lookup", id]).is_some()
}

#[test]
fn leases_of_a_crashed_broker_are_revoked_at_unlock_and_no_others() {
    let Some(bao) = BaoDev::start() else { return };
    if !bao.database_ready() {
        return;
    }
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let add = h.run_stdin(
        &[
            "dynamic",
            "add",
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
            "--admin-stdin",
        ],
        &format!("{}\n", bao.token),
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "BAO_DB",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "psql \"$BAO_DB\" -XAtc 'select 1'",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let o = wait_output(child, Duration::from_secs(60));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mint = h
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "dynamic_mint")
        .unwrap();
    let ours = mint["handle"]["lease_id"].as_str().unwrap().to_owned();
    // OpenBao's request id of the creds call rides along (a UUID), for joining the two audits.
    let rid = mint["handle"]["request_id"].as_str().unwrap();
    assert!(
        rid.len() == 36 && rid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'),
        "{mint}"
    );
    assert!(lease_alive(&bao, &ours));
    // A teammate's lease on the same role.
    let theirs: Value =
        serde_json::from_str(&bao.cli(&["read", "-format=json", "database/creds/ro"])).unwrap();
    let theirs = theirs["lease_id"].as_str().unwrap().to_owned();

    // The crash, mid-grant: nothing revoked our lease.
    kill9(broker_pid(&h));
    assert!(lease_alive(&bao, &ours));
    unlock(&h);
    let t0 = Instant::now();
    while lease_alive(&bao, &ours) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the crashed broker's lease lives on"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lease_alive(&bao, &theirs), "a teammate's lease was revoked");
    // The reap is on the record (once the broker's next sweep writes it).
    let t0 = Instant::now();
    while !h.audit_text().contains("dynamic_lease_reaped") {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", h.audit_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.audit_text().contains(&ours));

    // The agent appends a forged mint naming the teammate's lease, then crashes the broker.
    let audit = h.path().join("audit.jsonl");
    let last: Value = serde_json::from_str(h.audit_text().lines().last().unwrap()).unwrap();
    let forged = json!({
        "seq": last["seq"].as_u64().unwrap() + 1, "ts": jiff::Timestamp::now(),
        "event": "dynamic_mint", "grant_id": 99, "environment": "demo", "variable": "BAO_DB",
        "engine": "openbao-database",
        "handle": {"engine": "openbao-database", "user": "x", "lease_id": theirs, "target": ""},
        "expires_at": "2099-01-01T00:00:00Z", "mac": "00".repeat(32),
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&audit)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{forged}\n").as_bytes()).unwrap();
    drop(f);
    kill9(broker_pid(&h));
    let _ = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        lease_alive(&bao, &theirs),
        "a forged audit entry made the broker revoke a lease"
    );
}
