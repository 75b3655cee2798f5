//! The vault's journal through the broker (issue 21, performance item 2): a `set` appends one
//! sealed record instead of rewriting the vault, a `kill -9` loses nothing acknowledged, unlock
//! folds the journal into the vault, and an agent editing or cutting the journal gets a clear
//! refusal, never a silently different vault.

use std::time::{Duration, Instant};

use crate::harness::*;

const VALUE: &str = "journal-test-value-NOT-A-SECRET-41";

fn vault(h: &Home) -> std::path::PathBuf {
    h.path().join("vault.kv")
}

fn journal(h: &Home) -> std::path::PathBuf {
    h.path().join("vault.kv.journal")
}

fn kill9_broker(h: &Home) {
    let pid: i32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
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

fn names(h: &Home) -> Vec<String> {
    h.json(&["env", "show", "demo", "--json"])["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Offset of each journal record (after the 42-byte header).
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = 42;
    let mut out = Vec::new();
    while at + 4 <= bytes.len() {
        out.push(at);
        at += 4 + 24 + u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    }
    out
}

#[test]
fn a_set_appends_to_the_journal_survives_kill_9_and_unlock_folds_it() {
    let h = Home::new();
    h.set_unverified("demo", "FIRST", VALUE);
    let before = std::fs::read(vault(&h)).unwrap();
    h.set_unverified("demo", "SECOND", VALUE);
    h.set_unverified("demo", "THIRD", VALUE);
    assert_eq!(
        std::fs::read(vault(&h)).unwrap(),
        before,
        "a set rewrote the whole vault"
    );
    let j = std::fs::read(journal(&h)).unwrap();
    assert!(record_starts(&j).len() >= 2, "the sets were not journaled");
    assert!(!contains(&j, VALUE), "a value is in clear in the journal");

    kill9_broker(&h);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let n = names(&h);
    for want in ["FIRST", "SECOND", "THIRD"] {
        assert!(
            n.iter().any(|x| x == want),
            "{want} lost after kill -9: {n:?}"
        );
    }
    // Unlock folded the journal into the vault file.
    assert_ne!(std::fs::read(vault(&h)).unwrap(), before);
    assert_eq!(std::fs::metadata(journal(&h)).unwrap().len(), 0);
    // And a run injects the journaled value.
    let o = h.run_approved(
        &[
            "run", "--env", "demo", "--only", "THIRD", "--", "printenv", "THIRD",
        ],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("[REDACTED:THIRD]"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn an_edited_journal_refuses_unlock_and_says_what_to_do() {
    let h = Home::new();
    for n in ["A1", "A2", "A3"] {
        h.set_unverified("demo", n, VALUE);
    }
    kill9_broker(&h);
    let mut j = std::fs::read(journal(&h)).unwrap();
    let starts = record_starts(&j);
    assert!(starts.len() >= 3);
    // The agent flips a byte of the first record's ciphertext.
    j[starts[0] + 40] ^= 0x20;
    std::fs::write(journal(&h), &j).unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    let err = text(&o.stderr);
    assert!(!o.status.success(), "an edited journal was accepted");
    assert!(err.contains("journal"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!err.contains(VALUE), "{err}");
}

#[test]
fn a_journal_cut_while_the_broker_runs_stops_the_next_set() {
    let h = Home::new();
    h.set_unverified("demo", "B1", VALUE);
    h.set_unverified("demo", "B2", VALUE);
    // The agent cuts the journal back to its header (a rollback of the last changes).
    let j = std::fs::read(journal(&h)).unwrap();
    std::fs::write(journal(&h), &j[..42]).unwrap();
    let o = h.run_stdin(&["set", "demo", "B3", "--from-stdin"], VALUE);
    let err = text(&o.stderr);
    assert!(!o.status.success(), "a set went on over a cut journal");
    assert!(err.contains("hint:"), "{err}");
    assert!(err.contains("lock"), "{err}");
}
