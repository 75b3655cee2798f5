//! Red team of `keyveil sweep` (issue 19), third round, as the agent (same uid, a shell, every
//! file it can write, the audit log): the scrub as an oracle, and `git` found on the broker's
//! `PATH`. The attacks at the sweep's own level (a loose object rewritten in place, promisor
//! remotes a repository allows, a hard-linked transcript) are in `src/sweep/tests_round3.rs`.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::process::{Command, Stdio};

use crate::harness::*;
use crate::redteam19::{audit, git, rand_value, sweep};
use crate::redteam19_round2::FrameSpy;

/// Plants three guesses, one right, each in its own Claude Code transcript, and returns their
/// paths.
fn plant_transcripts(h: &Home, v: &str) -> Vec<std::path::PathBuf> {
    let dir = h.path().join(".claude/projects/-w-probe");
    std::fs::create_dir_all(&dir).unwrap();
    let guesses = [rand_value("sk_live_"), v.to_owned(), rand_value("sk_live_")];
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

/// One `sweep --contain --scrub-transcripts` the human authorises, over transcripts the agent
/// planted (guess k in its own file): the scrub used to rewrite the file that matched and only
/// it (a new inode, a second open an inotify watch sees, new text), so the agent learned which
/// guess was right, not the one bit `--contain` gives. Held: a scrub never rewrites copies of
/// a current value (a note tells the human to rotate first); after the rotation the value it
/// rewrites is a former one, and which planted guess held it tells nothing of the new value
/// (`a_scrub_after_rotation_tells_nothing_of_the_new_value`).
#[test]
fn a_scrub_does_not_tell_the_agent_which_planted_transcript_matched() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let files = plant_transcripts(&h, &v);
    let ino = |p: &std::path::PathBuf| std::fs::metadata(p).unwrap().ino();
    let before: Vec<u64> = files.iter().map(ino).collect();
    let o = scrub_sweep(&h);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let changed: Vec<bool> = files
        .iter()
        .zip(&before)
        .map(|(p, b)| ino(p) != *b)
        .collect();
    assert!(
        changed.iter().all(|c| *c == changed[0]),
        "the agent sees which planted transcript was rewritten: {changed:?}"
    );
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        out["scrub_notes"].to_string().contains("rotate it"),
        "{out}"
    );
}

/// After the human rotates a value a sweep marked, the agent plants guesses of the *new* value
/// beside a copy of the former one: the scrub rewrites the former value's copy only; no
/// planted guess of the current value, right or wrong, is touched.
#[test]
fn a_scrub_after_rotation_tells_nothing_of_the_new_value() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let dir = h.path().join(".claude/projects/-w-old");
    std::fs::create_dir_all(&dir).unwrap();
    let old_copy = dir.join("old.jsonl");
    std::fs::write(&old_copy, format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    let new = crate::redteam19::contain_then_rotate(&h, "demo", "API_KEY");
    let files = plant_transcripts(&h, &new);
    let ino = |p: &std::path::PathBuf| std::fs::metadata(p).unwrap().ino();
    let before: Vec<(u64, String)> = files
        .iter()
        .map(|p| (ino(p), std::fs::read_to_string(p).unwrap()))
        .collect();
    let o = scrub_sweep(&h);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    for (p, b) in files.iter().zip(&before) {
        assert_eq!(
            (ino(p), std::fs::read_to_string(p).unwrap()),
            b.clone(),
            "a planted guess of the current value was rewritten"
        );
    }
    let after = std::fs::read_to_string(&old_copy).unwrap();
    assert!(!after.contains(&v), "the former value's copy stayed");
    assert!(after.contains("[REDACTED:demo/API_KEY]"), "{after}");
}

/// The audit's `sweep_scrub` entry (readable by the agent) says that a scrub ran, not how many
/// files it rewrote or left: guess k planted in k transcripts would be answered by the count.
#[test]
fn the_audit_of_a_scrub_counts_nothing() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    plant_transcripts(&h, &v);
    crate::redteam19::contain_then_rotate(&h, "demo", "API_KEY");
    let o = scrub_sweep(&h);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["scrubbed"].as_array().unwrap().len(), 1, "{out}");
    let e = audit(&h)
        .into_iter()
        .find(|e| e["event"] == "sweep_scrub")
        .expect("a sweep_scrub entry");
    let s = e.to_string();
    assert!(
        !s.contains("\"files\"") && !s.contains("\"left\""),
        "the audit counts the files a scrub rewrote: {s}"
    );
}

/// The human's `PATH` holds `~/.local/bin` (as most do) when the broker starts: the agent
/// writes a `git` there. The sweep used to run it under the broker (the first git on its
/// `PATH`); it now runs no git at all (objects are read in process).
#[test]
fn a_sweep_never_runs_a_git_the_agent_put_on_the_brokers_path() {
    let h = Home::new();
    let v = rand_value("ghp_");
    h.set("demo", "TOKEN", &v);
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let bin = h.path().join(".local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The broker started by the human, with that PATH.
    h.ok(&["daemon", "stop"]);
    let mut c = h.cmd(&["unlock", "--passphrase-stdin"]);
    c.env("PATH", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let o = wait_output(child, CLI_LIMIT);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The agent, later: a git of its own, which runs the real one so nothing looks wrong.
    let marker = h.path().join("RAN-UNDER-BROKER");
    let w = bin.join("git");
    std::fs::write(
        &w,
        format!(
            "#!/bin/sh\ntouch '{}'\nexec '{real}' \"$@\"\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = h.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.txt"), "nothing here\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let o = sweep(&h, &["--no-home", "--json", repo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        out["report"]["git_objects"].as_u64().unwrap() >= 3,
        "the repository was read: {out}"
    );
    assert!(
        !marker.exists(),
        "the broker ran a git the agent wrote in a folder on its PATH"
    );
}

/// The agent plants the same guess in 200 files and relays the socket: a hit made 200
/// findings, whose sealed report outgrew the smallest padding bucket, so the reply's length
/// said whether the guess matched (no need to know the report's length to the byte). Findings
/// in recently changed files are now listed up to a fixed size, the rest counted in a note.
#[test]
fn one_guess_in_many_files_does_not_grow_the_sealed_reply() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    let plant = |g: &str| {
        for i in 0..200 {
            let d = proj.join(format!("d{i:03}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("guess.txt"), format!("{g}\n")).unwrap();
        }
    };
    plant(&rand_value("sk_"));
    let spy = FrameSpy::start(&h);
    let o = sweep(&h, &["--no-home", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let miss = spy.lengths();
    plant(&v);
    let o = sweep(&h, &["--no-home", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let all = spy.lengths();
    let hit = &all[miss.len()..];
    assert_eq!(miss, hit, "the reply's length tells a hit from a miss");
    // The human's report says how many are not listed.
    let o = sweep(&h, &["--no-home", "--json", proj.to_str().unwrap()]);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = out["report"]["findings"].as_array().unwrap().len();
    assert!((1..200).contains(&listed), "{listed}");
    assert!(
        out["report"]["notes"]
            .to_string()
            .contains(&format!("{} more copies", 200 - listed)),
        "{out}"
    );
}

/// The agent stores its guess of the human's `API_KEY` as the first value of a variable of its
/// own (no factor needed) and plants it in a transcript. A sweep marks both; the human rotates
/// the agent's variable only. Its former value is still `API_KEY`'s current value: the scrub
/// must not rewrite that transcript (it would confirm the guess).
#[test]
fn a_former_value_that_is_another_variables_current_value_is_never_scrubbed() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    h.set_unverified("demo", "DECOY", &v);
    let dir = h.path().join(".claude/projects/-w-decoy");
    std::fs::create_dir_all(&dir).unwrap();
    let t = dir.join("t.jsonl");
    let body = format!("{{\"content\":\"{v}\"}}\n");
    std::fs::write(&t, &body).unwrap();
    let ino = std::fs::metadata(&t).unwrap().ino();
    crate::redteam19::contain_then_rotate(&h, "demo", "DECOY");
    let o = scrub_sweep(&h);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(std::fs::read_to_string(&t).unwrap(), body, "rewritten");
    assert_eq!(std::fs::metadata(&t).unwrap().ino(), ino, "rewritten");
}
