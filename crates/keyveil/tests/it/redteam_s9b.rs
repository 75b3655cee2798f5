//! Red team, session 9 (second pass): `keyveil sweep --contain --scrub-transcripts` after the
//! change that scrubs only *former* values (kept in a compromise mark once the variable is
//! rotated) and minted credentials.
//!
//! The attacker is the coding agent: same uid, the CLI, the socket, every file under `$HOME`,
//! but not the human's factor. Values are made at runtime and never printed.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use crate::harness::*;
use crate::redteam19::{rand_value, sweep};

fn scrub_sweep(h: &Home) -> std::process::Output {
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    sweep(
        h,
        &[
            "--contain",
            "--scrub-transcripts",
            "--json",
            empty.to_str().unwrap(),
        ],
    )
}

/// Each guess in its own Claude Code transcript; their paths.
fn plant(h: &Home, guesses: &[String]) -> Vec<PathBuf> {
    let dir = h.path().join(".claude/projects/-w-s9b");
    std::fs::create_dir_all(&dir).unwrap();
    guesses
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let p = dir.join(format!("g{i}.jsonl"));
            std::fs::write(&p, format!("{{\"content\":\"{g}\"}}\n")).unwrap();
            p
        })
        .collect()
}

/// The agent stores three guesses of the human's `API_KEY` as first values of three variables
/// of its own (no factor needed: nothing stored is replaced), one guess per variable, and
/// plants each in its own transcript. The human's `sweep --contain` marks the three variables
/// (and `API_KEY`: the one bit `--contain` gives, "some guess is right"); the human rotates
/// what the sealed report and `env show` tell them to rotate in the agent's variables. A scrub
/// then rewrote every planted transcript except the one whose guess is `API_KEY`'s current
/// value (a former value some current secret has was left out of the scrub), so the agent
/// read *which* guess was right from the inodes: the oracle the scrub was changed to close,
/// through the very check meant to close it. Held now: a former value stored without the
/// factor (the agent could have chosen it) is never scrubbed, whatever it equals.
#[test]
fn a_scrub_does_not_tell_which_of_the_agents_rotated_first_values_was_right() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let guesses = [rand_value("sk_live_"), v.clone(), rand_value("sk_live_")];
    for (i, g) in guesses.iter().enumerate() {
        h.set_unverified("demo", &format!("PROBE_{i}"), g);
    }
    let files = plant(&h, &guesses);
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = sweep(&h, &["--contain", "--json", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    std::thread::sleep(std::time::Duration::from_millis(20));
    for i in 0..guesses.len() {
        h.set("demo", &format!("PROBE_{i}"), &rand_value("rotated_"));
    }
    let ino = |p: &PathBuf| std::fs::metadata(p).unwrap().ino();
    let before: Vec<(u64, String)> = files
        .iter()
        .map(|p| (ino(p), std::fs::read_to_string(p).unwrap()))
        .collect();
    let o = scrub_sweep(&h);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let changed: Vec<bool> = files
        .iter()
        .zip(&before)
        .map(|(p, b)| (ino(p), std::fs::read_to_string(p).unwrap()) != *b)
        .collect();
    assert!(
        changed.iter().all(|c| *c == changed[0]),
        "the agent sees which planted guess was the current value: {changed:?}"
    );
}

/// The other side of the fix above: a first value stored without the factor (as the human's
/// own `keyveil set` of a new variable does), found, marked and rotated, is still scrubbed by a
/// sweep that contains nothing, and the transcript that held it is rewritten to the marker.
#[test]
fn a_former_first_value_is_scrubbed_when_the_sweep_contains_nothing() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set_unverified("demo", "API_KEY", &v);
    let files = plant(&h, std::slice::from_ref(&v));
    crate::redteam19::contain_then_rotate(&h, "demo", "API_KEY");
    let o = scrub_sweep(&h);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        out["report"]["findings"].as_array().is_some_and(
            |a| !a.is_empty() && a.iter().all(|f| f["credential"] == "former-unverified")
        ),
        "{out}"
    );
    let after = std::fs::read_to_string(&files[0]).unwrap();
    assert!(!after.contains(&v), "the former value's copy stayed");
    assert!(after.contains("[REDACTED:demo/API_KEY]"), "{after}");
}

/// The human removes a variable a sweep marked (`keyveil unset`, with the factor: the value
/// leaves keyveil, not necessarily its provider; it may live on in a `.env` or another tool).
/// The compromise mark, keyed by name, stays, with the value it kept. The agent declares a
/// variable of the same name over the socket and gives it a first value (no factor: nothing is
/// stored): the new variable's `rotated_at` came after the old mark, so the removed value
/// counted as a rotated, former one, and the next scrub rewrote the planted transcript that held
/// it, confirming the agent's guess of a value it never saw. Held now: a mark older than the
/// variable it is filed under is not that variable's.
#[test]
fn a_variable_the_agent_recreates_does_not_make_a_removed_value_former() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let dir = h.path().join(".claude/projects/-w-human");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("h.jsonl"), format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = sweep(&h, &["--contain", "--json", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let o = h.run_stdin(
        &["unset", "demo", "API_KEY", "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The agent: a declaration over the raw socket, then a first value from its shell.
    let r = crate::custody::raw(
        &h,
        &serde_json::json!({"op": "var_declare", "environment": "demo", "name": "API_KEY",
                             "description": null, "generate": false, "length": null}),
    );
    assert_eq!(r["kind"], "ok", "{r}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    h.set_unverified("demo", "API_KEY", &rand_value("agent_"));
    let files = plant(
        &h,
        &[rand_value("sk_live_"), v.clone(), rand_value("sk_live_")],
    );
    let ino = |p: &PathBuf| std::fs::metadata(p).unwrap().ino();
    let before: Vec<(u64, String)> = files
        .iter()
        .map(|p| (ino(p), std::fs::read_to_string(p).unwrap()))
        .collect();
    let o = scrub_sweep(&h);
    // 0: nothing found (the removed value is no longer swept for), 1: something found.
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{}",
        text(&o.stderr)
    );
    let changed: Vec<bool> = files
        .iter()
        .zip(&before)
        .map(|(p, b)| (ino(p), std::fs::read_to_string(p).unwrap()) != *b)
        .collect();
    assert!(
        changed.iter().all(|c| *c == changed[0]),
        "the agent sees which planted guess was the removed value: {changed:?}"
    );
}

/// The human moves a database to a new host: `DB_URL` is rotated to a URL with the same user
/// and password and another host. The former URL is not equal to the current one, so the scrub
/// rewrote what the redactor matches of it, its password included (a URL's password is one of
/// a value's variants): the agent planted guesses of the password, one per transcript, and the
/// one the scrub rewrote was the current password. Held now: a former value that shares a
/// variant with a current secret is never scrubbed.
#[test]
fn a_former_value_sharing_a_part_with_a_current_one_is_never_scrubbed() {
    let h = Home::new();
    let pw = rand_value("pw_");
    let old = format!("postgres://app:{pw}@db-old.example:5432/app");
    h.set("demo", "DB_URL", &old);
    let dir = h.path().join(".claude/projects/-w-human");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("h.jsonl"), format!("{{\"content\":\"{old}\"}}\n")).unwrap();
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = sweep(&h, &["--contain", "--json", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    std::thread::sleep(std::time::Duration::from_millis(20));
    h.set(
        "demo",
        "DB_URL",
        &format!("postgres://app:{pw}@db-new.example:5432/app"),
    );
    let files = plant(&h, &[rand_value("pw_"), pw.clone(), rand_value("pw_")]);
    let ino = |p: &PathBuf| std::fs::metadata(p).unwrap().ino();
    let before: Vec<(u64, String)> = files
        .iter()
        .map(|p| (ino(p), std::fs::read_to_string(p).unwrap()))
        .collect();
    let o = scrub_sweep(&h);
    assert!(
        matches!(o.status.code(), Some(0 | 1)),
        "{}",
        text(&o.stderr)
    );
    let changed: Vec<bool> = files
        .iter()
        .zip(&before)
        .map(|(p, b)| (ino(p), std::fs::read_to_string(p).unwrap()) != *b)
        .collect();
    assert!(
        changed.iter().all(|c| *c == changed[0]),
        "the agent sees which planted guess was the current password: {changed:?}"
    );
}

/// A watch with `--contain` knows former values too. It never contains one, but it counted the
/// variable in what the `sweep_watch_end` audit entry (readable by the agent) gives as
/// `contained`: the agent planting a guess of a former value during the watch read from that
/// count whether the guess was right. Held now: a former value is reported only, and counts
/// nowhere the agent reads.
#[test]
fn a_watch_does_not_count_a_former_value_it_found() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let dir = h.path().join(".claude/projects/-w-human");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("h.jsonl"), format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    crate::redteam19::contain_then_rotate(&h, "demo", "API_KEY");
    std::fs::remove_file(dir.join("h.jsonl")).unwrap();
    let (mut child, rx) = crate::redteam19::start_watch(&h);
    let planted = h.path().join(".claude/projects/-w-s9b");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::write(
        planted.join("g.jsonl"),
        format!("{{\"content\":\"{v}\"}}\n"),
    )
    .unwrap();
    let b = loop {
        let b = crate::redteam19::next_batch(&rx);
        if b["report"]["findings"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            break b;
        }
    };
    assert_eq!(b["report"]["findings"][0]["credential"], "former", "{b}");
    assert_eq!(b["contained"], serde_json::json!([]), "{b}");
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let end = loop {
        if let Some(e) = crate::redteam19::audit(&h)
            .into_iter()
            .find(|e| e["event"] == "sweep_watch_end")
        {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sweep_watch_end entry"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let fields = if end["fields"].is_object() {
        &end["fields"]
    } else {
        &end
    };
    assert_eq!(fields["contained"], 0, "{end}");
}

/// Removing a marked variable (`unset`) or its environment (`env remove`) removes its
/// compromise mark, and with it the value the mark kept: a removed value is not kept in the
/// vault (read here as the human could, with the passphrase).
#[test]
fn removing_a_marked_variable_or_environment_drops_the_value_its_mark_kept() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    let w = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    h.ok(&["env", "create", "other"]);
    h.set("other", "TOKEN", &w);
    let dir = h.path().join(".claude/projects/-w-both");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("b.jsonl"),
        format!("{{\"content\":\"{v} {w}\"}}\n"),
    )
    .unwrap();
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = sweep(&h, &["--contain", "--json", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let marks = || {
        let vault = keyveil_vault::Vault::open(&h.path().join("vault.kv"), PASS.as_bytes())
            .expect("the vault opens with the passphrase");
        vault.data().compromised.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(marks(), ["demo/API_KEY", "other/TOKEN"]);
    let o = h.run_stdin(
        &["unset", "demo", "API_KEY", "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(marks(), ["other/TOKEN"]);
    let o = h.run_stdin(
        &["env", "rm", "other", "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(marks().is_empty());
}
