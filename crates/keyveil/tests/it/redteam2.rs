//! Second red-team pass on issue 13 (items 1, 4, 5 and the factor path), attacking the fixes
//! with the source in hand, as a prompt-injected agent of the same uid would. Each test performs
//! the attack and asserts the secure outcome: it fails while the hole is open.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;

use crate::harness::*;
use crate::oracle::{client, raw};

/// The `run_start` audit entries so far, read from the file (bound read-only into
/// `keyveil agent`'s sandbox, so the agent reads it there too).
fn run_starts(h: &Home) -> Vec<Value> {
    h.audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "run_start")
        .collect()
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// Item 1, the pinning of a request's inputs as a confused deputy. A request's "inputs" (the
/// script operand of `sh`/`python`/..., `make -f FILE`, ...) are read and hashed **by the
/// broker**, and the SHA-256 is shown to the requester (the `request` audit entry, `requests`,
/// the card). The agent names `/proc/<pid>/environ` of a granted child (the pid is in the
/// `run_start` entry of the audit log) as the script operand: the broker, which can read its own
/// children, hashes their environment — built from scratch by keyveil, so predictable apart from
/// the values — and hands the hash to the agent, who brute-forces a low-entropy value offline.
/// No grant for the agent, no approval; the request is then denied by the agent itself. Under
/// `keyveil agent` the agent cannot see the child at all (its own PID namespace): the broker
/// reads across the namespace for it.
#[test]
fn a_requested_input_pin_never_hashes_another_processs_proc_files_for_the_requester() {
    const PIN: &str = "4821";
    let h = Home::new();
    h.set("demo", "API_TOKEN", PIN);
    // The human runs something long under the value (a dev server, a deploy).
    let run = h.spawn_run(&["run", "--env", "demo", "--wait", "30", "--", "sleep", "20"]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());

    // The agent: the child's pid from the audit log.
    let t0 = Instant::now();
    let pid = loop {
        if let Some(p) = run_starts(&h).last().and_then(|e| e["pid"].as_u64()) {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no run_start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The environment is written at exec: give the child a moment.
    std::thread::sleep(Duration::from_millis(300));
    let target = format!("/proc/{pid}/environ");
    let r = raw(
        &h,
        &json!({"op": "request_access", "client": client("agent"), "environment": "demo",
                "variables": null, "argv": ["sh", target], "pass_env": [], "cwd": "/tmp",
                "ttl_seconds": null, "reason": "lint"}),
    );
    // Since red-team 3 (finding 4) a script operand under /proc is refused before any card:
    // nothing was read, so nothing can be hashed.
    if r["kind"] != "ok" {
        let m = r.to_string();
        assert!(m.contains("cannot pin") && m.contains("/proc"), "{r}");
        h.ok(&["revoke", "--all"]);
        let _ = wait_output(run, Duration::from_secs(20));
        return;
    }
    let rid = r["data"]["request_id"].as_u64().unwrap();
    let listing = raw(&h, &json!({"op": "requests"}));
    let audit = h.audit_text();
    let _ = raw(
        &h,
        &json!({"op": "deny", "request_id": rid, "reason": null}),
    );

    // What the broker hashed (the test reads it as root, for the comparison only).
    let environ = std::fs::read(&target).unwrap_or_default();
    let hash = hex(&sha2::Sha256::digest(&environ));
    let seen = format!("{listing}\n{audit}");
    let leaked = !environ.is_empty() && seen.contains(&hash);
    if leaked {
        // The offline search the agent does (the rest of the block is keyveil's fixed
        // construction: policy PATH, HOME, TMPDIR named by the run id in the audit, locale).
        let needle = format!("API_TOKEN={PIN}\0");
        let at = environ
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap();
        let found = (0..10_000).map(|n| format!("{n:04}")).find(|c| {
            let mut e = environ.clone();
            e.splice(at + 10..at + 14, c.bytes());
            hex(&sha2::Sha256::digest(&e)) == hash
        });
        assert_eq!(found.as_deref(), Some(PIN));
    }
    h.ok(&["revoke", "--all"]);
    let _ = wait_output(run, Duration::from_secs(20));
    assert!(
        !leaked,
        "the requester reads the SHA-256 of a granted child's environment ({target}) from its own request's input pins, and recovered the value {PIN} offline in 10,000 hashes"
    );
}

/// Item 4: entries cut off the end of the log while the broker is dead. The sealed checkpoint
/// is moved every 10 s (and at lock, stop, verify); a same-uid agent can SIGKILL the broker
/// (it sees each seal as the vault file's mtime change), so whatever was appended since the last
/// seal — here a run under a live grant — can be cut off at a line boundary. The next unlock
/// continues the chain from the cut, and `audit verify` says OK: a run happened unaudited.
#[test]
fn a_run_cut_off_the_log_after_killing_the_broker_is_detected_by_verify() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_kill_Zr8pQ2wLm4");
    // The human approves `true` for an hour.
    let o = {
        let child = h.spawn_run(&["run", "--env", "demo", "--wait", "30", "--", "true"]);
        let id = h.wait_request();
        assert!(h.approve(id, &["--ttl", "1h"]).status.success());
        wait_output(child, Duration::from_secs(20))
    };
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A seal (verify seals), then the agent's own run under the grant, then SIGKILL.
    h.ok(&["audit", "verify"]);
    let sealed_len = std::fs::metadata(h.path().join("audit.jsonl"))
        .unwrap()
        .len();
    let o = h.run(&["run", "--env", "demo", "--", "true"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pid: i32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = run_starts(&h).len();
    assert!(before >= 2, "the agent's run was recorded at first");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let t0 = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(20));
    }
    // Cut the log back to what was sealed (whole lines: the entries since the seal).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(h.path().join("audit.jsonl"))
        .unwrap();
    f.set_len(sealed_len).unwrap();
    drop(f);
    assert_eq!(
        run_starts(&h).len(),
        before - 1,
        "the agent's run_start is gone"
    );
    // The human unlocks again (the broker "crashed") and checks the log.
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "unlock: {}", text(&o.stderr));
    let v = h.run(&["audit", "verify"]);
    let report = format!("{}{}", text(&v.stdout), text(&v.stderr));
    h.ok(&["daemon", "stop"]);
    assert!(
        !v.status.success(),
        "audit verify passes over a run whose entries were cut off after a SIGKILL:\n{report}"
    );
}

/// A file name that says nothing by itself (no digits for the matcher to see).
fn letters(n: u32) -> String {
    let l = |k: u32| char::from(b'a' + u8::try_from(k % 26).unwrap());
    format!("{}{}{}", l(n / 676), l(n / 26), l(n))
}

/// Item 1, the write-side scan of files the agent controls, with **no grant of the agent's own**.
/// The agent plants candidate files (mtime in the future, so they count as "changed during" any
/// later run) in the project directory where the human runs approved commands. The human runs
/// one (`keyveil run ... -- true` in their terminal): the post-run scan finds the candidate that
/// holds the value and the `run_end` audit entry names its path. The agent reads the audit log
/// (as a file, or `audit_log` over MCP, or read-only inside `keyveil agent`) and has the value.
/// The `redactions` count of `run_end` is the same kind of channel for a human run that prints
/// files the agent wrote.
#[test]
fn the_scan_of_a_humans_run_never_tells_the_agent_which_planted_candidate_is_a_value() {
    const PIN: &str = "0739";
    let h = Home::new();
    h.set("demo", "API_TOKEN", PIN);
    let project = tempfile::Builder::new()
        .prefix("kvproj")
        .tempdir_in("/tmp")
        .unwrap();
    // The agent: 1,000 candidates, each a file holding one guess, dated in the future.
    let cand = project.path().join(".cache-lint");
    std::fs::create_dir(&cand).unwrap();
    for n in 0..1000 {
        std::fs::write(cand.join(letters(n)), format!("{n:04}\n")).unwrap();
    }
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg("touch -d '+1 hour' \"$0\"/*")
        .arg(&cand)
        .status()
        .unwrap();
    assert!(st.success());
    // Later, the human runs an approved command in the project.
    let mut c = h.cmd(&["run", "--env", "demo", "--wait", "30", "--", "true"]);
    c.current_dir(project.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let o = wait_output(child, Duration::from_secs(60));
    assert!(o.status.code().is_some(), "{}", text(&o.stderr));
    // The agent reads the audit log.
    let audit = h.audit_text();
    let found: Vec<String> = (0..1000)
        .filter(|n| audit.contains(&format!(".cache-lint/{}\"", letters(*n))))
        .map(|n| format!("{n:04}"))
        .collect();
    assert!(
        found.is_empty(),
        "the audit log of the human's run names the planted candidate holding the value: {found:?} (value {PIN})"
    );
}
