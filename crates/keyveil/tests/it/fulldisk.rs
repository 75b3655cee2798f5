//! The audit log never fails open (issue 13, item 4): with `KEYVEIL_HOME` on a full disk the
//! agent's runs, requests, approvals and changes are refused before anything happens;
//! revocation still works; what could not be written becomes an `audit.gap` entry at the next
//! possible write, and `keyveil audit verify` reports it. The home is a small tmpfs (root
//! only; the tests skip, saying so, where mounting is not permitted).

#![allow(clippy::print_stderr)] // says why a test skips

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Home, PASS, contains, encodings, sha256_hex, text, wait_output};

/// A tmpfs mounted over a directory for a test; lazily unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn over(dir: &Path, size: &str) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIPPED: cannot mount a tmpfs ({}); run the tests as root to check the full-disk behaviour",
                text(&out.stderr).trim()
            );
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    /// Fills the file system with a file `filler` until a write fails (as the agent would,
    /// with `dd` or `fallocate`).
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.0.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&filler)
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(b"x").is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// An initialised home on a fresh tmpfs of `size`, with environment `demo` holding a random
/// `API_TOKEN`; `None` when mounting is not permitted.
fn home_on_tmpfs(size: &str) -> Option<(Home, Tmpfs, String)> {
    let h = Home::empty();
    let fs = Tmpfs::over(h.path(), size)?;
    let o = h.run_stdin(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "init failed: {}", text(&o.stderr));
    h.ok(&["env", "create", "demo", "--description", "test env"]);
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    let value = format!("kvfull_{}", &sha256_hex(&seed)[..32]);
    h.set("demo", "API_TOKEN", &value);
    Some((h, fs, value))
}

fn entries(h: &Home) -> Vec<Value> {
    h.audit_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_refused(what: &str, o: &std::process::Output, value: &str) {
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{what} succeeded on a full disk");
    assert!(
        err.contains("the audit log cannot be written") && err.contains("No space left on device"),
        "{what}: {err}"
    );
    assert!(
        err.contains("hint:") && err.contains("free space"),
        "{what}: {err}"
    );
    for enc in encodings(value) {
        assert!(!contains(&o.stdout, &enc) && !contains(&o.stderr, &enc));
    }
}

#[test]
fn on_a_full_disk_nothing_runs_or_is_granted_or_changed_unrecorded_and_the_gap_is_recorded() {
    let Some((h, fs, value)) = home_on_tmpfs("4m") else {
        return;
    };
    // Markers live outside the full file system: touching them would succeed if the command ran.
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran");
    let script = format!("touch {}; echo \"v=$API_TOKEN\"", marker.display());
    let run = |wait: &str| {
        h.run(&[
            "run", "--env", "demo", "--wait", wait, "--", "sh", "-c", &script,
        ])
    };
    // A standing grant, and a second request left pending.
    assert_eq!(run("1").status.code(), Some(5));
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    assert_eq!(run("5").status.code(), Some(0));
    std::fs::remove_file(&marker).unwrap();
    let pending = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    assert_eq!(pending.status.code(), Some(5));
    let pending_id = h.wait_request();
    let before = entries(&h).len();

    let filler = fs.fill();
    // The run under the live grant, a new request, the approval, a new value: all refused,
    // before anything happened.
    let refused_run = run("5");
    assert_refused("run under a live grant", &refused_run, &value);
    assert!(text(&refused_run.stderr).contains("nothing was run"));
    assert!(
        !marker.exists(),
        "the command ran while the audit log could not be written"
    );
    let other = format!("touch {}", marker.display());
    let refused_request = h.run(&[
        "run", "--env", "demo", "--wait", "1", "--", "sh", "-c", &other,
    ]);
    assert_refused("a new request", &refused_request, &value);
    let approve = h.approve(pending_id, &[]);
    assert_refused("approving", &approve, &value);
    let set = h.run_stdin(
        &["set", "demo", "OTHER", "--from-stdin"],
        "another-value-123\n",
    );
    assert_refused("set", &set, &value);
    assert!(!marker.exists());
    let listed = h.json(&["requests", "--json"]);
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "a refused request was queued anyway: {listed}"
    );
    assert!(
        h.json(&["grants", "--json"])
            .to_string()
            .matches("\"g-")
            .count()
            <= 1,
        "no new grant"
    );
    // Nothing reached the log for the refusals (they do not eat into the reserve).
    assert_eq!(entries(&h).len(), before);

    // Revocation still happens on a full disk, and is recorded from the reserve, after the gap.
    let r = h.run(&["revoke", "--all"]);
    assert!(r.status.success(), "revoke refused: {}", text(&r.stderr));
    let after = entries(&h);
    let new: Vec<&Value> = after.iter().skip(before).collect();
    assert!(new.len() >= 2, "{new:?}");
    assert_eq!(
        new[0]["event"], "audit.gap",
        "the gap is the next entry: {new:?}"
    );
    assert_eq!(new[0]["lost"], 0);
    let refused = new[0]["refused"].as_u64().unwrap();
    assert!(refused >= 4, "{:?}", new[0]);
    // (a run without a grant is refused at the same gate as one with a grant: `run_start`)
    assert!(
        new[0]["events"]["run_start"].as_u64().unwrap_or(0) >= 2,
        "{:?}",
        new[0]
    );
    for ev in ["run_start", "approve", "var_set"] {
        assert!(
            new[0]["events"][ev].as_u64().unwrap_or(0) >= 1,
            "{ev} missing in {:?}",
            new[0]
        );
    }
    assert!(
        new[0]["error"]
            .as_str()
            .unwrap()
            .contains("No space left on device")
    );
    assert!(new.iter().any(|e| e["event"] == "revoke"), "{new:?}");
    let revoked = run("2");
    assert_ne!(revoked.status.code(), Some(0));
    assert!(!marker.exists());

    // Space again: everything works, and verify shows the gap (refusals only: exit 0).
    std::fs::remove_file(&filler).unwrap();
    let v = h.run(&["audit", "verify"]);
    let out = text(&v.stdout);
    assert_eq!(v.status.code(), Some(0), "{out}{}", text(&v.stderr));
    assert!(
        out.contains("audit log OK") && out.contains("WARNING: gap"),
        "{out}"
    );
    assert!(out.contains(&format!("{refused} refused")), "{out}");
    assert!(
        h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"])
            .status
            .code()
            == Some(5)
    );
    for e in &after {
        for enc in encodings(&value) {
            assert!(
                !e.to_string().contains(&enc),
                "the audit log holds the value"
            );
        }
    }
}

/// Runs in the status listing.
fn live_runs(h: &Home) -> usize {
    h.json(&["status", "--json"])["runs"]
        .as_array()
        .map_or(0, Vec::len)
}

fn wait_runs(h: &Home, n: usize) {
    let t0 = Instant::now();
    while live_runs(h) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the runs did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn when_even_the_reserve_is_gone_live_runs_are_stopped_and_verify_reports_lost_entries() {
    let Some((h, fs, value)) = home_on_tmpfs("4m") else {
        return;
    };
    // One standing prefix grant covers `sleep N` (the long run), another grant the short
    // runs' `sh -c WAIT GATE`: a run that waits until the file GATE exists. The short runs end
    // only once the disk is full (their gate opens after the fill, whatever the load), so
    // each of their ends has to be written then.
    let first = h.run(&["run", "--env", "demo", "--wait", "1", "--", "sleep"]);
    assert_eq!(first.status.code(), Some(5));
    let id = h.wait_request();
    let a = h.approve(id, &["--ttl", "5m", "--prefix"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let outside = tempfile::tempdir().unwrap();
    let gate = outside.path().join("gate");
    let wait = "while [ ! -e \"$0\" ]; do sleep 0.05; done";
    let gated = [
        "run",
        "--env",
        "demo",
        "--wait",
        "5",
        "--",
        "sh",
        "-c",
        wait,
        gate.to_str().unwrap(),
    ];
    let first = h.run(&[&gated[..4], &["1"], &gated[5..]].concat());
    assert_eq!(first.status.code(), Some(5), "{}", text(&first.stderr));
    let id = h.wait_request();
    let a = h.approve(id, &["--ttl", "5m"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let mut long = h.spawn_run(&["run", "--env", "demo", "--wait", "5", "--", "sleep", "600"]);
    wait_runs(&h, 1);
    let short: Vec<_> = (0..16).map(|_| h.spawn_run(&gated)).collect();
    wait_runs(&h, 17);

    // The agent frees the log's reserve (a hole punched past its end) and fills the disk.
    let log = h.path().join("audit.jsonl");
    let size = std::fs::metadata(&log).unwrap().len();
    let punch = std::process::Command::new("fallocate")
        .args([
            "--punch-hole",
            "--offset",
            &size.to_string(),
            "--length",
            "1048576",
        ])
        .arg(&log)
        .status()
        .unwrap();
    assert!(punch.success());
    let filler = fs.fill();
    std::fs::write(&gate, b"").unwrap();
    let t0 = Instant::now();
    // The short runs end; once their ends no longer fit, the long run, whose end could not
    // be recorded either, is stopped.
    let mut short: Vec<Option<std::process::Child>> = short.into_iter().map(Some).collect();
    while short.iter().any(Option::is_some) {
        for c in &mut short {
            if c.as_mut()
                .is_some_and(|ch| ch.try_wait().unwrap().is_some())
            {
                *c = None;
            }
        }
        if t0.elapsed() > Duration::from_secs(30) {
            // Say which runs hang and what they said, and what the broker still lists.
            let listed = h.json(&["status", "--json"])["runs"].to_string();
            let said: Vec<String> = short
                .iter_mut()
                .enumerate()
                .filter_map(|(i, c)| c.take().map(|c| (i, c)))
                .map(|(i, mut c)| {
                    let _ = c.kill();
                    let o = c.wait_with_output().unwrap();
                    format!("short run {i}: {:?} {}", o.status, text(&o.stderr))
                })
                .collect();
            let _ = long.kill();
            panic!(
                "short runs did not end within 30 s of their gate opening: {said:?}; runs listed: {listed}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = loop {
        if let Some(s) = long.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = long.kill();
            panic!("the long run was not stopped within 30 s of the short runs' ends");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = wait_output(long, Duration::from_secs(5));
    assert_ne!(status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(live_runs(&h), 0);

    // Space again: the gap is written (by the broker's tick, within a second or two) and verify
    // says the log is incomplete.
    std::fs::remove_file(&filler).unwrap();
    let t1 = Instant::now();
    while !h.audit_text().contains("audit.gap") {
        assert!(
            t1.elapsed() < Duration::from_secs(10),
            "no gap entry was written"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gap: Value = entries(&h)
        .into_iter()
        .find(|e| e["event"] == "audit.gap")
        .unwrap();
    assert!(gap["lost"].as_u64().unwrap() >= 2, "{gap}");
    for ev in ["run_end", "revoke"] {
        assert!(gap["events"][ev].as_u64().unwrap_or(0) >= 1, "{ev}: {gap}");
    }
    let v = h.run(&["audit", "verify"]);
    let vout = text(&v.stdout);
    assert_eq!(v.status.code(), Some(3), "{vout}{}", text(&v.stderr));
    assert!(
        vout.contains("INCOMPLETE") && vout.contains("lost"),
        "{vout}"
    );
    for enc in encodings(&value) {
        assert!(!h.audit_text().contains(&enc));
        assert!(!contains(&v.stdout, &enc));
    }
}

/// The agent stops the broker while a gap is pending (the disk still full), hoping the count
/// dies with it: a stopping broker writes the gap into the reserve.
#[test]
fn stopping_the_broker_on_a_full_disk_still_records_the_gap() {
    let Some((h, fs, value)) = home_on_tmpfs("4m") else {
        return;
    };
    let _filler = fs.fill();
    let refused = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    assert_refused("a run", &refused, &value);
    assert!(!h.audit_text().contains("audit.gap"));
    let stop = h.run(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let t0 = Instant::now();
    while !h.audit_text().contains("audit.gap") {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the stopping broker did not record the gap"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gap = entries(&h)
        .into_iter()
        .find(|e| e["event"] == "audit.gap")
        .unwrap();
    assert_eq!(gap["refused"], 1, "{gap}");
    assert_eq!(gap["events"]["run_start"], 1, "{gap}");
}

/// Issue 21, item 6: with the home (and so `broker.log`) on a full disk, the broker's log lines
/// cannot be written. That used to panic the task that logged (`failed printing to stderr`):
/// `lock` stopped half-way and left the vault unlocked, `audit verify` and approvals ended with
/// "the broker closed the connection", and no broker could start (it could not write
/// `broker.pid`). Now every command answers, `lock` wipes the values and says whether it was
/// recorded, and a broker starts and unlocks on the full disk.
#[test]
fn on_a_full_disk_every_command_answers_lock_locks_and_the_broker_restarts() {
    let Some((h, fs, value)) = home_on_tmpfs("4m") else {
        return;
    };
    let first = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    assert_eq!(first.status.code(), Some(5));
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let filler = fs.fill();
    // The last page of `broker.log` still has room for a few lines: the agent fills it too.
    {
        use std::io::Write as _;
        let mut log = std::fs::OpenOptions::new()
            .append(true)
            .open(h.path().join("broker.log"))
            .unwrap();
        while log.write_all(b"x").is_ok() {}
    }
    let closed = |what: &str, o: &std::process::Output| {
        let err = text(&o.stderr);
        assert!(
            !err.contains("closed the connection") && !err.contains("lost the connection"),
            "{what}: the broker dropped the connection: {err}"
        );
    };
    // A refused run and an audit check get their answers.
    let r = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    closed("run", &r);
    assert_refused("run", &r, &value);
    let v = h.run(&["audit", "verify"]);
    closed("audit verify", &v);
    assert!(
        matches!(v.status.code(), Some(0 | 1 | 3)),
        "{}",
        text(&v.stderr)
    );
    // Lock: the values leave memory, and the command says so.
    let l = h.run(&["lock"]);
    closed("lock", &l);
    assert!(l.status.success(), "{}", text(&l.stderr));
    assert!(text(&l.stdout).contains("locked"), "{}", text(&l.stdout));
    let s = h.json(&["status", "--json"]);
    assert_eq!(s["locked"], true, "the vault stayed unlocked: {s}");
    assert!(
        s["log_lines_lost"].as_u64().unwrap_or(0) > 0,
        "the lost log lines are not counted: {s}"
    );
    // A new broker starts on the full disk and the human can unlock.
    let stop = h.run(&["daemon", "stop"]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let u = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    closed("unlock", &u);
    assert!(
        u.status.success(),
        "unlock on a full disk: {}",
        text(&u.stderr)
    );
    assert_eq!(h.json(&["status", "--json"])["locked"], false);
    // What needs recording is still refused.
    let r = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    assert_refused("run after restart", &r, &value);
    std::fs::remove_file(&filler).unwrap();
    for enc in encodings(&value) {
        assert!(!contains(&l.stdout, &enc) && !contains(&l.stderr, &enc));
    }
}
