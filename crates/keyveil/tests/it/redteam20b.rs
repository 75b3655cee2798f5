//! Red team, issue 20 (second pass): the OpenBao cluster failover, userpass login, lease
//! reaping from the audit log, `kv_fetch` entries and `env show` versions, attacked as the
//! agent (same uid, a shell, every file it can write, the broker socket).
#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use keyveil_testkit::{BaoDev, rand_tag};

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

fn lease_alive(bao: &BaoDev, id: &str) -> bool {
    bao.try_cli(&["lease", "lookup", id]).is_some()
}

/// The agent's swapper: puts `good` (a log that verifies) and `forged` (one that does not,
/// holding a mint entry the broker never wrote) at `path` in turn, as fast as it can, until
/// `stop`. Hard links, so each round is two `link` and two `rename` calls.
fn swap_loop(path: PathBuf, good: PathBuf, forged: PathBuf, stop: Arc<AtomicBool>) {
    let dir = path.parent().unwrap().to_owned();
    let ta = dir.join(".swap-a");
    let tb = dir.join(".swap-b");
    while !stop.load(Ordering::Relaxed) {
        let _ = std::fs::remove_file(&ta);
        if std::fs::hard_link(&good, &ta).is_ok() {
            let _ = std::fs::rename(&ta, &path);
        }
        let _ = std::fs::remove_file(&tb);
        if std::fs::hard_link(&forged, &tb).is_ok() {
            let _ = std::fs::rename(&tb, &path);
        }
    }
}

/// Puts back at `path` the log the broker went on writing (the good one, or the forged one
/// without its first line if the broker's writer opened that one).
fn restore(path: &Path, good: &Path, forged: &Path, forged_len: usize) {
    let g = std::fs::read(good).unwrap();
    let f = std::fs::read(forged).unwrap();
    let cut = f.iter().position(|&b| b == b'\n').unwrap() + 1;
    let from_forged = &f[cut..];
    let pick = if f.len() > forged_len && from_forged.len() > g.len() {
        from_forged.to_vec()
    } else {
        g
    };
    std::fs::write(path, pick).unwrap();
}

/// Attack 3, the verify-then-read race: the lease reaper verified `audit.jsonl` and then read
/// it again by path. The agent swaps, many times a millisecond, the real log (which verifies
/// against the sealed checkpoint) with a copy whose first line is a forged `dynamic_mint`
/// naming a teammate's lease (seq 1, so within the verified count). Verified once, read the
/// other time: the broker revoked the teammate's lease. Now the entries used are the very
/// bytes verified (`keyveil_vault::audit::verify_and_read`), so the forged copy either fails
/// verification or is never read.
#[test]
fn a_log_swapped_between_verify_and_read_never_makes_the_reaper_revoke_a_teammates_lease() {
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
    // A teammate's lease on the same role.
    let theirs: Value =
        serde_json::from_str(&bao.cli(&["read", "-format=json", "database/creds/ro"])).unwrap();
    let theirs = theirs["lease_id"].as_str().unwrap().to_owned();

    let audit = h.path().join("audit.jsonl");
    let good = h.path().join("agent-good.jsonl");
    let forged = h.path().join("agent-forged.jsonl");
    let mut revoked_at = None;
    for round in 0..12 {
        kill9(broker_pid(&h));
        let real = std::fs::read(&audit).unwrap();
        let line = json!({
            "seq": 1, "ts": jiff::Timestamp::now(),
            "event": "dynamic_mint", "grant_id": 99, "environment": "demo", "variable": "BAO_DB",
            "engine": "openbao-database",
            "handle": {"engine": "openbao-database", "user": "x", "lease_id": theirs, "target": ""},
            "expires_at": "2099-01-01T00:00:00Z", "prev": "00".repeat(32), "mac": "00".repeat(32),
        });
        let mut f = format!("{line}\n").into_bytes();
        f.extend_from_slice(&real);
        std::fs::write(&good, &real).unwrap();
        std::fs::write(&forged, &f).unwrap();
        let forged_len = f.len();
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (a, g, fo, s) = (audit.clone(), good.clone(), forged.clone(), stop.clone());
            std::thread::spawn(move || swap_loop(a, g, fo, s))
        };
        let _ = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        restore(&audit, &good, &forged, forged_len);
        if !lease_alive(&bao, &theirs) {
            revoked_at = Some(round);
            break;
        }
    }
    assert!(
        revoked_at.is_none(),
        "a log swapped between verification and reading made the broker revoke a teammate's lease (round {revoked_at:?})"
    );
}

fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    (rcgen::Issuer::new(p, key), cert.pem())
}

/// A TLS `bao server -dev` whose certificate (for 127.0.0.1) a fresh CA signed; the CA's PEM.
fn tls_bao(name: &str) -> Option<(BaoDev, String)> {
    let (issuer, ca_pem) = ca(name);
    let (_, client_ca_pem) = ca(&format!("{name} clients"));
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let cert = p.signed_by(&key, &issuer).unwrap();
    let tls = keyveil_testkit::BaoTls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        client_ca_pem,
    };
    BaoDev::start_tls(&tls).map(|b| (b, ca_pem))
}

/// Attack 1, the "node that served last" index: it was kept per address list only, shared by
/// every variable listing the same nodes. The human's variable lists a TLS cluster on
/// loopback (node 2 down); the agent squats node 2's port with its own TLS server and adds,
/// without the factor, a variable of its own listing the same nodes with its own CA: node 1
/// fails the agent's CA, node 2 (the agent's) serves, and the broker then sent the human's
/// requests to the agent's listener first (a TLS handshake it can stall for 10 s each time,
/// a try order the human never chose). Now the index is per login (nodes, CA, namespace,
/// method, secret): the agent's variable moves only its own.
#[test]
fn another_variables_failover_does_not_reorder_the_humans_nodes() {
    let Some((human_bao, human_ca)) = tls_bao("team CA") else {
        return;
    };
    let Some((agent_bao, agent_ca)) = tls_bao("agent CA") else {
        return;
    };
    human_bao.cli(&["kv", "put", "secret/team/app", "API_KEY=human-kv-value-1"]);
    agent_bao.cli(&["kv", "put", "secret/team/app", "API_KEY=agent-kv-value-1"]);
    let list = format!("{},{}", human_bao.tls_address, agent_bao.tls_address);
    let dir = tempfile::tempdir().unwrap();
    let (hca, aca) = (
        dir.path().join("team-ca.pem"),
        dir.path().join("agent-ca.pem"),
    );
    std::fs::write(&hca, &human_ca).unwrap();
    std::fs::write(&aca, &agent_ca).unwrap();

    let h = Home::new();
    h.allow_insecure_loopback("demo");
    h.ok(&["env", "create", "mine", "--description", "the agent's"]);
    let link = |env: &str, ca: &Path, token: &str| {
        let o = h.run_stdin(
            &[
                "env",
                "link",
                env,
                "--openbao",
                &list,
                "--ca-file",
                ca.to_str().unwrap(),
                "--kv-path",
                "team/app",
                "--admin-stdin",
            ],
            &format!("{token}\n"),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    };
    link("demo", &hca, &human_bao.token);
    // The agent: a new environment (no factor), the same nodes, its own CA.
    link("mine", &aca, &agent_bao.token);
    let shown = h.json(&["env", "show", "mine", "--json"]);
    assert_eq!(shown["variables"][0]["kv_version"], 1, "{shown}");

    // Node 2's port now holds the agent's listener, counting the connections it gets.
    let port: u16 = agent_bao
        .tls_address
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    drop(agent_bao);
    let t0 = Instant::now();
    let listener = loop {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => break l,
            Err(e) => {
                assert!(t0.elapsed() < Duration::from_secs(10), "rebind: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    listener.set_nonblocking(true).unwrap();

    let shown = h.json(&["env", "show", "demo", "--json"]);
    let mut got = 0;
    while listener.accept().is_ok() {
        got += 1;
    }
    assert_eq!(
        got, 0,
        "the human's request went first to the node the agent's own variable made the broker prefer"
    );
    assert_eq!(shown["variables"][0]["kv_version"], 1, "{shown}");
}

/// A one-thread HTTP/1 server standing in for an OpenBao the agent runs: answers a database
/// creds read with `lease_id`, every other request with `{}`; returns its address.
fn hostile_bao(lease_id: String) -> String {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            let answer = if first.contains("/creds/") {
                json!({
                    "request_id": "00000000-0000-0000-0000-000000000000",
                    "lease_id": lease_id, "lease_duration": 600, "renewable": true,
                    "data": {"username": "v-agent-ro", "password": format!("pw-{}", rand_tag())},
                })
            } else {
                json!({})
            }
            .to_string();
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    addr
}

/// Attack 4: a server's lease id goes into the audit log (`dynamic_mint`), `keyveil grants`
/// and later the reaper's revoke call. G18 says the ids in the audit are format-checked (no
/// free text from the server), but only request ids were: an OpenBao the agent runs (behind
/// a variable it added without the factor, approved once by the human) wrote a terminal
/// escape and 20 KB of text into the human's audit log as a "lease id". Now a lease id is
/// kept only when it looks like one (a path: letters, digits, `/._-`, 256 characters at
/// most), else the mint fails.
#[test]
fn a_hostile_servers_lease_id_never_reaches_the_audit_log() {
    let marker = format!("agent-text-{}", rand_tag());
    let lease = format!(
        "database/creds/ro/\u{1b}]0;{marker}\u{7}\n{}",
        "A".repeat(20_000)
    );
    let addr = hostile_bao(lease);
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let add = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "AGENT_DB",
            "--engine",
            "openbao-database",
            "--address",
            &addr,
            "--role",
            "ro",
            // Output `url` (with `password` the add needs the factor: redteam_s12_kv.rs).
            "--connect-url",
            "postgresql://127.0.0.1:5432/test",
            "--no-check",
            "--admin-stdin",
        ],
        "agent-token-000000\n",
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", "AGENT_DB", "--wait", "30", "--", "true",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let _ = wait_output(child, Duration::from_secs(60));
    let grants = h.run(&["grants"]);
    let audit = h.audit_text();
    assert!(
        !audit.contains(&marker) && !text(&grants.stdout).contains(&marker),
        "the server's free text reached keyveil's audit log or grants listing"
    );
}
