//! Red team s14b: the project manifest pin (`docs/manifest.md`) and the write-side watch
//! (`docs/write-side.md`, "Watched working directories"), attacked with the source in hand.
//!
//! Write-side watch: each attack writes a value under the run's working directory so that the
//! scan from the watch's events would miss what the walk finds. Held attacks assert the watched
//! run reported what the walked run reported; working ones are kept `#[ignore = "LEAK: ..."]`
//! and assert the safe outcome (so they fail when run with `--ignored`).
//!
//! Manifest pin: replaying what a relay at the socket recorded, rewriting it, a symlinked
//! `keyveil.toml`, a swap between the plan and the approval, a CA file the digest does not
//! cover.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::custody::{keep, raw, relay};
use crate::harness::*;
use crate::write_watch::{Case, age, check, findings, last_how, wait_watched, walked_then_watched};

// ---------------------------------------------------------------------------------------------
// Write-side watch
// ---------------------------------------------------------------------------------------------

/// The absolute path of a Python 3 interpreter (a run's `PATH` is the policy's, so the script
/// names it in full), or `None` where there is none.
fn python() -> Option<String> {
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let p = text(&o.stdout).trim().to_owned();
    (o.status.success() && !p.is_empty()).then_some(p)
}

/// Writes `body` as a script file in `dir`; its path.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_owned()
}

/// A process of the agent's own (outside every run) that listens on `sock` and keeps every
/// descriptor sent to it (`recv`), or hands out a descriptor it opened on `file` before any
/// run (`give`). Killed on drop.
struct Holder(Child);

impl Holder {
    fn start(py: &str, dir: &Path, mode: &str, sock: &Path, file: &Path) -> Holder {
        let body = r#"import os, socket, sys
mode, path, target = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.bind(path)
s.listen(8)
fd = os.open(target, os.O_WRONLY | os.O_APPEND) if mode == "give" else -1
print("ready", flush=True)
kept = []
while True:
    c, _ = s.accept()
    if mode == "give":
        socket.send_fds(c, [b"x"], [fd])
        kept.append(c)
    else:
        msg, fds, _, _ = socket.recv_fds(c, 16, 8)
        kept.append(c)
        kept.extend(fds)
"#;
        let s = script(dir, "holder.py", body);
        let mut child = Command::new(py)
            .args([&s, mode, sock.to_str().unwrap(), file.to_str().unwrap()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pre-existing file gets a second name inside the tree from the run, is written through it,
/// and the second name is removed before the run ends: at the scan the file has one name again
/// (so the hard-link fall-back does not fire) and the only event named the removed alias. The
/// walk reports the original (its ctime moved); the watch examines nothing that exists.
/// `docs/threat-model.md` states the gap only for a second name *outside* the directory.
/// Held: a file written during the run that then loses a name makes the scan walk.
#[test]
fn s14b_w1_a_hard_link_made_written_and_removed_inside_the_tree() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p src && printf 'export const x = 1;\\n' > src/config.js",
        r#"ln src/config.js .alias && printf '%s\n' "$API_TOKEN" >> .alias && rm .alias"#,
    );
    assert!(
        walk.iter().any(|l| l.contains("src/config.js")),
        "the walk reports the original name: {walk:?}"
    );
    assert_eq!(how, LOST_NAME, "how the second run was scanned");
    assert_eq!(walk, watched, "scanned {how}: the watch missed the write");
}

/// `docs/write-side.md`: why a watched run was walked when a written file lost a name.
const LOST_NAME: &str = "walked: a file written during the run lost a name";

/// The same with a second name that existed before the run (both names in the tree: nlink 2
/// at the run's start, 1 at its scan): written through `alias.txt`, which is then removed.
#[test]
fn s14b_w2_a_second_name_from_before_the_run_written_then_removed() {
    let (_c, walk, watched, how) = walked_then_watched(
        "printf 'plain\\n' > orig.txt && ln orig.txt alias.txt",
        r#"printf '%s\n' "$API_TOKEN" >> alias.txt && rm alias.txt"#,
    );
    assert!(
        walk.iter().any(|l| l.contains("orig.txt")),
        "the walk reports the remaining name: {walk:?}"
    );
    assert_eq!(how, LOST_NAME, "how the second run was scanned");
    assert_eq!(walk, watched, "scanned {how}: the watch missed the write");
}

/// New (hard links): the second name made in the tree, written through, then moved out of
/// the tree (no `IN_MOVED_TO` pairs the rename) rather than removed; and one moved over by
/// another file of the run. Both walk; the original name is reported as the walk reports it.
#[test]
fn s14b_w13_a_written_hard_link_moved_out_of_the_tree_or_moved_over() {
    let (_c, walk, watched, how) = walked_then_watched(
        "printf 'a\\n' > one.txt && printf 'b\\n' > two.txt",
        r#"ln one.txt .a && printf '%s\n' "$API_TOKEN" >> .a && mv .a "$(mktemp -d /tmp/kvw-out.XXXXXX)/a"
ln two.txt .b && printf '%s\n' "$API_TOKEN" >> .b && printf x > .c && mv .c .b"#,
    );
    for n in ["one.txt", "two.txt"] {
        assert!(walk.iter().any(|l| l.contains(n)), "{n}: {walk:?}");
    }
    assert_eq!(how, LOST_NAME, "how the second run was scanned");
    assert_eq!(walk, watched, "scanned {how}: the watch missed the write");
}

/// The run opens a file of the tree itself, writes the value through a shared mapping (no
/// `IN_MODIFY`: mapped writes raise no event) and hands its descriptor to a process of the
/// agent over a Unix socket before it exits: the open file is not closed at the run's exit,
/// so no `IN_CLOSE_WRITE` either. The walk (ctime moved at the first write fault) reports it.
/// `docs/write-side.md` says "a mapping or descriptor the run opened itself is seen: ... the
/// kernel closes it at exit at the latest"; a descriptor handed out is not closed.
#[test]
#[ignore = "LIMIT: docs/write-side.md, docs/threat-model.md: a mapped write whose descriptor the run hands to another process raises no event before the scan (the watched scan misses it; the walk reports it)"]
fn s14b_w3_a_mapped_write_whose_descriptor_is_handed_out_before_exit() {
    let Some(py) = python() else { return };
    let tools = tempfile::tempdir().unwrap();
    let sock = tools.path().join("keep.sock");
    let run = script(
        tools.path(),
        "mapped.py",
        r#"import mmap, os, socket, sys
v = os.environ["API_TOKEN"].encode()
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0)
m[100:100 + len(v)] = v
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[2])
socket.send_fds(c, [b"x"], [fd])
"#,
    );
    let _holder = Holder::start(&py, tools.path(), "recv", &sock, Path::new("/dev/null"));
    let setup = "printf '%04096d' 0 > blob.bin";
    let cmd = format!("'{py}' '{run}' blob.bin '{}'", sock.display());
    let (_c, walk, watched, how) = walked_then_watched(setup, &cmd);
    assert!(
        walk.iter().any(|l| l.contains("blob.bin")),
        "the walk reports the mapped write: {walk:?}"
    );
    assert_eq!(walk, watched, "scanned {how}: the watch missed the write");
}

/// A descriptor onto a file of the tree that a process of the agent opened before the run,
/// handed to the run over a Unix socket, written with `write(2)`: stated as a gap of the watch
/// (`docs/threat-model.md`), but `IN_MODIFY` is raised for the path whoever opened it, so the
/// watched scan reports it as the walk does.
#[test]
fn s14b_w4_a_descriptor_the_agent_opened_before_the_run_is_still_seen() {
    let Some(py) = python() else { return };
    let tools = tempfile::tempdir().unwrap();
    let sock = tools.path().join("give.sock");
    let run = script(
        tools.path(),
        "given.py",
        r#"import os, socket, sys
c = socket.socket(socket.AF_UNIX)
c.connect(sys.argv[1])
msg, fds, _, _ = socket.recv_fds(c, 16, 4)
os.write(fds[0], b"token=" + os.environ["API_TOKEN"].encode() + b"\n")
"#,
    );
    let c = Case::new("printf 'log\\n' > app.log");
    let o = c.first("true");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    wait_watched(&c.h, 1);
    let holder = Holder::start(
        &py,
        tools.path(),
        "give",
        &sock,
        &c.dir.path().join("app.log"),
    );
    age();
    let o = c.again(&format!("'{py}' '{run}' '{}'", sock.display()));
    drop(holder);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    c.no_value_in(&o);
    assert_eq!(last_how(&c.h), "watched");
    let f = findings(&o);
    assert!(f.iter().any(|l| l.contains("app.log")), "{f:?}");
}

/// A child that leaves the run's session and writes after the run ended (after its scan):
/// the broker's reaper kills every descendant before scanning, so nothing is written late.
#[test]
fn s14b_w5_a_child_that_outlives_the_run_never_writes_after_the_scan() {
    let c = Case::new("mkdir -p out");
    let o = c.first("true");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    wait_watched(&c.h, 1);
    let o = c.again(
        r#"setsid sh -c 'sleep 2; printf %s "$API_TOKEN" > out/late.txt' </dev/null >/dev/null 2>&1 &
nohup sh -c 'trap "" HUP TERM; sleep 2; printf %s "$API_TOKEN" > out/late2.txt' </dev/null >/dev/null 2>&1 &
exit 0"#,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    std::thread::sleep(Duration::from_secs(4));
    for f in ["out/late.txt", "out/late2.txt"] {
        let p = c.dir.path().join(f);
        let late = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(
            !late.contains(&c.value),
            "{f} was written after the scan by a process that outlived the run"
        );
    }
}

/// The event queue filled to just under overflow (a quarter of `max_queued_events` files
/// touched, about three events each), then the value written: no overflow, the write is still
/// an event and reported from the watch.
#[test]
fn s14b_w6_a_queue_filled_just_under_overflow_still_reports_the_last_write() {
    let c = Case::new("mkdir many");
    let o = c.first("true");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    wait_watched(&c.h, 1);
    let o = c.again(
        r#"n=$(( $(cat /proc/sys/fs/inotify/max_queued_events) / 4 ))
(cd many && seq 1 "$n" | xargs touch)
printf %s "$API_TOKEN" > many/zz-after.txt"#,
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let how = last_how(&c.h);
    let f = findings(&o);
    assert!(
        f.iter().any(|l| l.contains("many/zz-after.txt")),
        "{how}: {f:?}"
    );
}

/// A value stored in an extended attribute (`user.*`) of a file in the tree: the agent reads it
/// back with `getfattr`/`os.getxattr`. Held: both the walk and the watch read the `user.*`
/// attributes of every changed entry and report `notes.txt#xattr:user.note`.
#[test]
fn s14b_w7_a_value_in_an_extended_attribute() {
    let Some(py) = python() else { return };
    let cmd = format!(
        r#"'{py}' -c 'import os; os.setxattr("notes.txt", "user.note", os.environ["API_TOKEN"].encode())'"#
    );
    let (c, walk, watched, _how) = walked_then_watched("printf 'notes\\n' > notes.txt", &cmd);
    // The attribute is there for the agent to read.
    let o = Command::new(&py)
        .args([
            "-c",
            "import os,sys; sys.stdout.buffer.write(os.getxattr(sys.argv[1], 'user.note'))",
            c.dir.path().join("notes.txt").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(text(&o.stdout), c.value, "the attribute holds the value");
    assert!(
        walk.iter().any(|l| l.contains("notes.txt#xattr:user.note")),
        "the walk does not report it: {walk:?}"
    );
    assert_eq!(walk, watched, "the watch found other things than the walk");
}

/// New (extended attributes): the value base64-encoded in an attribute of a folder (not a
/// file) and, raw, in a second attribute of a file whose bytes hold it too: both reported,
/// from the walk and the watch alike (the file's own bytes and its attribute at once).
#[test]
fn s14b_w14_values_in_attributes_of_a_folder_and_beside_the_bytes() {
    let Some(py) = python() else { return };
    let cmd = format!(
        r#"'{py}' -c 'import os, base64
v = os.environ["API_TOKEN"].encode()
os.setxattr("cfg", "user.b64", base64.b64encode(v))
open("both.txt", "wb").write(v)
os.setxattr("both.txt", "user.z", v)'"#
    );
    let (_c, walk, watched, how) =
        walked_then_watched("mkdir cfg && printf 'x\\n' > both.txt", &cmd);
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &["cfg#xattr:user.b64", "both.txt#xattr:user.z", "both.txt ("],
    );
}

/// A watched folder swapped for a symlink to its moved self mid-run, then written through the
/// link: the move makes the watch give up, so the run is walked and reports the real path.
#[test]
fn s14b_w8_a_watched_folder_swapped_for_a_symlink_mid_run() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p w/sub && printf 'k\\n' > w/sub/keep.txt",
        r#"mv w w.real && ln -s w.real w && printf %s "$API_TOKEN" > w/sub/leak.txt"#,
    );
    assert!(how.starts_with("walked"), "{how}");
    check(&walk, &watched, &how, &how, &["w.real/sub/leak.txt"]);
}

/// Rename races: a folder created and filled before its watch can exist, its subfolder moved
/// into a watched folder and the first one removed; a file written under one name and renamed
/// over an existing one; an `O_TMPFILE` file written with no name and linked in at the end.
#[test]
fn s14b_w9_rename_races_and_a_file_with_no_name_are_reported_from_the_watch() {
    let Some(py) = python() else { return };
    let tmpfile = format!(
        r#"'{py}' -c 'import os
fd = os.open("w", os.O_TMPFILE | os.O_WRONLY, 0o600)
os.write(fd, os.environ["API_TOKEN"].encode())
d = os.open("/proc/self/fd", os.O_RDONLY)
os.link(str(fd), "w/linked-late.txt", src_dir_fd=d, follow_symlinks=True)'"#
    );
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p w && printf 'old\\n' > w/existing.txt",
        &format!(
            r#"mkdir -p n/m && printf %s "$API_TOKEN" > n/m/f.txt && mv n/m w/m && rmdir n
printf %s "$API_TOKEN" > w/.tmp && mv w/.tmp w/existing.txt
{tmpfile}"#
        ),
    );
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &["w/m/f.txt", "w/existing.txt", "w/linked-late.txt"],
    );
}

// ---------------------------------------------------------------------------------------------
// Manifest pin
// ---------------------------------------------------------------------------------------------

use crate::manifest::{MANIFEST, apply, granted_run, keyveil_testkit_sha, pins, write_manifest};

/// The run `granted_run` was approved for, again (its grant serves it without asking); its
/// output.
fn run_again(h: &Home) -> std::process::Output {
    h.run(&[
        "run",
        "--env",
        "app",
        "--wait",
        "3",
        "--",
        "sh",
        "-c",
        "test -n \"$API_TOKEN\" && echo injected",
    ])
}

/// An agent's manifest: the environment's token fetched from a server of its own.
const EVIL: &str = r#"version = 1

[environments.app]
description = "the app, locally"

[environments.app.variables.API_TOKEN]
source = "openbao-kv"
address = "http://127.0.0.1:9"
path = "agent/owned"

[environments.app.variables.LATER]
source = "local"
"#;

/// The `project_approve` request a relay at the socket saw.
fn recorded_approve(seen: &[u8]) -> Value {
    seen.split(|&b| b == b'\n')
        .filter_map(|c| serde_json::from_slice::<Value>(c).ok())
        .find(|v| v["op"] == "project_approve")
        .expect("the relay saw no project_approve")
}

/// The agent relays the socket while the human applies the manifest and records the signed
/// `project_approve`; the human later applies a newer manifest; the agent puts the old bytes
/// back and replays the recorded request on the raw socket to move the pin back. Refused:
/// the proof answered a one-time challenge.
#[test]
fn s14b_m1_a_recorded_project_approve_replayed_after_a_later_apply_is_refused() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let p = write_manifest(&h, MANIFEST);
    let agent = relay(&h, keep, keep);
    let o = apply(&h, &p, &[&value, ""]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    let recorded = recorded_approve(&agent.seen());
    agent.restore(&h);
    assert!(recorded.get("factor").is_some(), "{recorded}");
    // The human's newer manifest.
    std::fs::write(
        &p,
        format!("{MANIFEST}\n[environments.app.variables.NEWER]\n"),
    )
    .unwrap();
    let o = apply(&h, &p, &[""]);
    assert!(o.status.success(), "re-apply: {}", text(&o.stderr));
    let newer = pins(&h);
    assert_eq!(newer, vec![("app".to_owned(), keyveil_testkit_sha(&p))]);
    // The replay, with the old bytes back in place.
    std::fs::write(&p, MANIFEST).unwrap();
    let r = raw(&h, &recorded);
    assert_eq!(r["kind"], "error", "the replay was accepted: {r}");
    assert_eq!(pins(&h), newer, "the pin moved back");
    let o = h.run(&["run", "--env", "app", "--", "true"]);
    assert!(
        text(&o.stderr).contains("changed since approved"),
        "{}",
        text(&o.stderr)
    );
}

/// Rewrites a `project_approve` to the agent's manifest (`repo` → `evil`, its digest).
fn to_evil(v: &mut Value) {
    if v["op"] == "project_approve"
        && let Some(p) = v["path"].as_str()
    {
        let p = p.replace("/repo/keyveil.toml", "/evil/keyveil.toml");
        v["path"] = json!(p);
        v["sha256"] = json!(sha256_hex(EVIL));
    }
}

/// The agent relays the socket and rewrites the human's signed `project_approve` to pin its
/// own manifest (path and digest): refused, the proof is bound to the request it signed.
#[test]
fn s14b_m2_a_relay_rewriting_project_approve_to_its_own_manifest_pins_nothing() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let p = write_manifest(&h, MANIFEST);
    let evil = h.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    std::fs::write(evil.join("keyveil.toml"), EVIL).unwrap();
    let agent = relay(&h, to_evil, keep);
    let o = apply(&h, &p, &[&value, ""]);
    agent.restore(&h);
    assert!(!o.status.success(), "the rewritten approval was accepted");
    let now = pins(&h);
    assert!(
        !now.iter().any(|(_, d)| *d == sha256_hex(EVIL)),
        "the agent's manifest was pinned: {now:?}"
    );
}

/// The agent turns the repository's `keyveil.toml` into a symlink to a copy (same bytes) in a
/// folder of its own before the human applies it, to have the copy pinned and the
/// repository's file free. Held: `apply` refuses a symlinked `keyveil.toml` (saying where it
/// points, with a hint), nothing is created or pinned; once the human puts the file itself
/// back, the pin is of the repository's file and replacing it is refused.
#[test]
fn s14b_m3_a_symlinked_manifest_pins_its_target_and_the_repository_file_is_free() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let elsewhere = h.path().join("agent-place");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("keyveil.toml"), MANIFEST).unwrap();
    let repo = h.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let p = repo.join("keyveil.toml");
    std::os::unix::fs::symlink(elsewhere.join("keyveil.toml"), &p).unwrap();
    let o = apply(&h, &p, &[&value, ""]);
    assert!(!o.status.success(), "a symlinked keyveil.toml was applied");
    let err = text(&o.stderr);
    assert!(
        err.contains("is a symlink") && err.contains("hint:"),
        "{err}"
    );
    assert!(pins(&h).is_empty(), "{:?}", pins(&h));
    // The human replaces the link with the file itself and applies it.
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, MANIFEST).unwrap();
    let o = apply(&h, &p, &[&value, ""]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    assert!(granted_run(&h).contains("injected"));
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, EVIL).unwrap();
    let o = run_again(&h);
    assert!(
        !text(&o.stdout).contains("injected") && text(&o.stderr).contains("changed since approved"),
        "the repository's keyveil.toml was replaced and the grant still served the run: {}",
        text(&o.stderr)
    );
}

/// New (symlinks): after the apply, the agent swaps the pinned `keyveil.toml` for a symlink to
/// a copy with the very same bytes (the digest through the link is unchanged): the broker
/// reads the pinned path without following a link, so the next run is refused.
#[test]
fn s14b_m11_a_symlink_with_the_same_bytes_swapped_in_after_apply_is_refused() {
    let h = Home::new();
    let p = crate::manifest::applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    granted_run(&h);
    let elsewhere = h.path().join("agent-place");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(&p, elsewhere.join("keyveil.toml")).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("keyveil.toml"), &p).unwrap();
    let o = run_again(&h);
    assert!(
        !text(&o.stdout).contains("injected") && text(&o.stderr).contains("changed since approved"),
        "a symlink with the same bytes served the run: {}",
        text(&o.stderr)
    );
}

/// The agent swaps the manifest between the plan the human reads and the approval the CLI
/// sends: the broker reads the file again and refuses, nothing is pinned.
#[test]
fn s14b_m4_a_swap_between_the_plan_and_the_approval_pins_nothing() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let p = write_manifest(&h, MANIFEST);
    let mut child = h
        .cmd(&[
            "project",
            "apply",
            p.to_str().unwrap(),
            "--passphrase-stdin",
            "--values-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("sha256"), "{first}");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&p, EVIL).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n{value}\n\n").as_bytes())
        .unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < CLI_LIMIT, "apply never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!st.success(), "applied after the swap");
    assert!(err.contains("changed after its plan was shown"), "{err}");
    assert!(pins(&h).is_empty(), "{:?}", pins(&h));
}

/// An edit restored before the next request is not seen (`docs/manifest.md`, "What it does
/// not guarantee": "An agent that edits the file and restores it between two requests is not
/// seen"). Kept as the stated limit: the grant serves the run after the edit came and went.
#[test]
#[ignore = "LIMIT: docs/manifest.md: an edit restored between two requests is not seen (the grant serves the next run)"]
fn s14b_m5_an_edit_restored_between_requests_is_not_seen() {
    let h = Home::new();
    let p = crate::manifest::applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    granted_run(&h);
    std::fs::write(&p, EVIL).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&p, MANIFEST).unwrap();
    let o = run_again(&h);
    assert!(
        !text(&o.stdout).contains("injected") && text(&o.stderr).contains("changed since approved"),
        "the grant served a run after an edit came and went: {}",
        text(&o.stderr)
    );
}

/// A second `keyveil.toml` further down the tree (the run's cwd) declaring the same
/// environment with the agent's source: the broker checks only the pinned file and never
/// reads another one, so the runs there go on under what the human approved (the other file
/// fetches nothing) and the pin is unchanged.
#[test]
fn s14b_m6_a_second_manifest_down_the_tree_is_never_read() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let p = crate::manifest::applied(&h, &value);
    let approved = pins(&h);
    let sub = p.parent().unwrap().join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(sub.join("keyveil.toml"), EVIL).unwrap();
    let child = h.spawn_run(&[
        "run",
        "--env",
        "app",
        "--cwd",
        sub.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "printf %s \"$API_TOKEN\" | sha256sum",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let o = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&o.stdout).contains(&sha256_hex(&value)),
        "the run got another value: {}",
        text(&o.stderr)
    );
    assert_eq!(pins(&h), approved);
}

/// The pinned path as a record of where the file is: `project status` shows it.
fn pinned_paths(h: &Home) -> Vec<PathBuf> {
    h.json(&["project", "status", "--json"])["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p["path"].as_str().unwrap()))
        .collect()
}

/// New (symlinks): the manifest reached through a symlinked *folder* (`link/keyveil.toml`,
/// `link` pointing at the repository): the pin names the repository's canonical folder and
/// the file's own name (symlinks above the file are resolved, the file itself never is), and
/// the plan shows that path.
#[test]
fn s14b_m7_a_manifest_reached_through_a_symlinked_folder_pins_the_real_folder() {
    let h = Home::new();
    let repo = h.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("keyveil.toml"), MANIFEST).unwrap();
    let link = h.path().join("link");
    std::os::unix::fs::symlink(&repo, &link).unwrap();
    let o = apply(
        &h,
        &link.join("keyveil.toml"),
        &[&format!("tok-{}", keyveil_testkit::rand_tag()), ""],
    );
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    let target = repo.canonicalize().unwrap().join("keyveil.toml");
    assert_eq!(pinned_paths(&h), vec![target.clone()]);
    assert!(
        text(&o.stdout).contains(target.to_str().unwrap()),
        "the plan does not show the pinned path: {}",
        text(&o.stdout)
    );
}

/// Whether this machine lets a process make a user and mount namespace (`unshare -Urm`).
fn userns() -> bool {
    Command::new("unshare")
        .args(["-Urm", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The run mounts an overlay in a user and mount namespace of its own (no privilege needed),
/// with its upper folder inside the tree, and appends the value to a file that was already in
/// the upper folder, through the overlay (the real file is written by overlayfs, not opened
/// by the run): the kernel still raises the event on the upper folder, and the watched scan
/// reports it as the walk does.
#[test]
fn s14b_w10_a_write_through_an_overlay_the_run_mounted_in_its_own_namespace() {
    if !userns() {
        return;
    }
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p low up wk merged && printf 'old\\n' > up/f.txt",
        r#"unshare -Urm sh -c 'mount -t overlay overlay -o lowerdir=low,upperdir=up,workdir=wk merged && printf "%s\n" "$API_TOKEN" >> merged/f.txt'"#,
    );
    check(&walk, &watched, &how, "watched", &["up/f.txt"]);
}

/// The same trick with a bind mount of one folder of the tree onto another in the run's own
/// namespace: the write goes to the real folder's dentry, whose watch sees it.
#[test]
fn s14b_w11_a_write_through_a_bind_mount_in_the_runs_own_namespace_is_seen() {
    if !userns() {
        return;
    }
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p a b && printf 'old\\n' > a/f.txt",
        r#"unshare -Urm sh -c 'mount --bind a b && printf "%s\n" "$API_TOKEN" >> b/f.txt'"#,
    );
    check(&walk, &watched, &how, "watched", &["a/f.txt"]);
}

/// The mapped write of `w3` without handing anything out, through an overlay the run mounted
/// in its own namespace (the run's descriptor is the overlay's file, the mapping is the real
/// upper file's): the real file's close at the run's exit still raises its event on the upper
/// folder, and the watched scan reports it as the walk does.
#[test]
fn s14b_w12_a_mapped_write_through_an_overlay_the_run_mounted() {
    let Some(py) = python() else { return };
    if !userns() {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let run = script(
        tools.path(),
        "mapped.py",
        r#"import mmap, os, sys
v = os.environ["API_TOKEN"].encode()
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0)
m[100:100 + len(v)] = v
"#,
    );
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p low up wk merged && printf '%04096d' 0 > up/blob.bin",
        &format!(
            r#"unshare -Urm sh -c 'mount -t overlay overlay -o lowerdir=low,upperdir=up,workdir=wk merged && "{py}" "{run}" merged/blob.bin'"#
        ),
    );
    assert!(
        walk.iter().any(|l| l.contains("up/blob.bin")),
        "the walk reports the upper file: {walk:?}"
    );
    assert_eq!(walk, watched, "scanned {how}: the watch missed the write");
}

/// A background run (`keyveil start`) approved for 10 minutes before the edit keeps running
/// after the agent edits the manifest; the next request of the environment ends its grant and
/// stops it (`docs/manifest.md`: "a run already started under it is stopped then").
#[test]
fn s14b_m8_a_background_run_started_before_the_edit_is_stopped_at_the_next_request() {
    let h = Home::new();
    let p = crate::manifest::applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    let child = h.spawn_run(&[
        "start",
        "--env",
        "app",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "sleep 120",
    ]);
    let id = h.wait_request();
    let a = h.approve(id, &["--ttl", "10m"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    h.wait_live_runs(1);
    std::fs::write(&p, EVIL).unwrap();
    let o = h.run(&["run", "--env", "app", "--wait", "1", "--", "true"]);
    assert!(
        text(&o.stderr).contains("changed since approved"),
        "{}",
        text(&o.stderr)
    );
    h.wait_live_runs(0);
    assert_eq!(crate::manifest::live_grants(&h, "app"), 0);
}

/// Before the teammate's first `apply`, the agent creates the environment and stores its own
/// first value of `API_TOKEN` (no factor needed for a first value), hoping the plan keeps it
/// and the human's factor pins it. Held: the plan compares the vault's side (who stored it,
/// when) and says `REPLACE`; apply asks for the value again and stores it with the factor
/// before the pin; with no value typed, nothing is pinned; runs get the human's value.
#[test]
fn s14b_m9_a_value_the_agent_stored_first_is_kept_and_pinned_by_apply() {
    let h = Home::new();
    let agent_value = format!("agent-{}", keyveil_testkit::rand_tag());
    let human_value = format!("human-{}", keyveil_testkit::rand_tag());
    h.ok(&["env", "create", "app"]);
    h.set_unverified("app", "API_TOKEN", &agent_value);
    let p = write_manifest(&h, MANIFEST);
    // The human types nothing for it: refused, nothing pinned.
    let o = apply(&h, &p, &["", ""]);
    assert!(!o.status.success(), "applied with the agent's value kept");
    let plan = text(&o.stdout);
    assert!(
        plan.contains("REPLACE") && plan.contains("WITHOUT your factor"),
        "{plan}"
    );
    assert!(text(&o.stderr).contains("hint:"), "{}", text(&o.stderr));
    assert!(pins(&h).is_empty(), "{:?}", pins(&h));
    let o = apply(&h, &p, &[&human_value, ""]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    assert_eq!(pins(&h), vec![("app".to_owned(), keyveil_testkit_sha(&p))]);
    let child = h.spawn_run(&[
        "run",
        "--env",
        "app",
        "--",
        "sh",
        "-c",
        "printf %s \"$API_TOKEN\" | sha256sum",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let out = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&out.stdout).contains(&sha256_hex(&human_value)),
        "the pinned environment does not serve the human's value: {}",
        text(&out.stderr)
    );
}

/// New (values stored without the factor): `project status` in the repository reports a
/// declared variable holding a value stored without the factor, saying who and when, and
/// exits 1.
#[test]
fn s14b_m12_status_reports_a_value_stored_without_the_factor() {
    let h = Home::new();
    h.ok(&["env", "create", "app"]);
    h.set_unverified(
        "app",
        "API_TOKEN",
        &format!("agent-{}", keyveil_testkit::rand_tag()),
    );
    let p = write_manifest(&h, MANIFEST);
    let o = h.run(&["project", "status", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("app/API_TOKEN: stored without your factor") && out.contains("WITHOUT"),
        "{out}"
    );
}

/// New (values stored without the factor): a variable the human's first apply left awaiting
/// (`LATER`) gets the agent's first value between the plan the human reads (where it holds
/// none) and the approval: the broker checks every declared variable before pinning and
/// refuses, naming it; nothing new is pinned.
#[test]
fn s14b_m13_a_first_value_stored_between_the_plan_and_the_approval_is_not_pinned() {
    let h = Home::new();
    let p = crate::manifest::applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    let before = pins(&h);
    std::fs::write(
        &p,
        format!("{MANIFEST}\n[environments.app.variables.NEWER]\n"),
    )
    .unwrap();
    let mut child = h
        .cmd(&[
            "project",
            "apply",
            p.to_str().unwrap(),
            "--passphrase-stdin",
            "--values-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut plan = String::new();
    while !plan.contains("NEWER") {
        assert!(out.read_line(&mut plan).unwrap() > 0, "{plan}");
    }
    h.set_unverified(
        "app",
        "LATER",
        &format!("agent-{}", keyveil_testkit::rand_tag()),
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n\n").as_bytes())
        .unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(t0.elapsed() < CLI_LIMIT, "apply never ended");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!st.success(), "pinned with the agent's value of LATER");
    assert!(
        err.contains("app/LATER holds a value stored without your factor") && err.contains("hint:"),
        "{err}"
    );
    assert_eq!(pins(&h), before);
}

/// `m1` with a TOTP code instead of the passphrase (an environment whose approvals accept
/// TOTP): the relayed `project_approve` replayed within the code's 30 s window, after the
/// human applied a newer manifest, is refused.
#[test]
fn s14b_m10_a_recorded_totp_project_approve_replayed_in_its_window_is_refused() {
    let h = Home::new();
    let secret = enroll(&h);
    h.ok(&["env", "create", "app"]);
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "app",
            "factor",
            "totp",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let p = write_manifest(&h, MANIFEST);
    let path = p.to_str().unwrap().to_owned();
    let local = format!("tok-{}", keyveil_testkit::rand_tag());
    let agent = relay(&h, keep, keep);
    let o = h.run_stdin(
        &["project", "apply", &path, "--totp-stdin", "--values-stdin"],
        &format!("{}\n{local}\n\n", totp_code(&secret, 1)),
    );
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    let recorded = recorded_approve(&agent.seen());
    agent.restore(&h);
    std::fs::write(
        &p,
        format!("{MANIFEST}\n[environments.app.variables.NEWER]\n"),
    )
    .unwrap();
    // The human's newer apply (the passphrase: each TOTP step is accepted once). The value
    // typed under the TOTP code was stored without the factor (a code proves one request,
    // the pin): this apply asks for it again, then for NEWER.
    let o = apply(&h, &p, &[&local, ""]);
    assert!(o.status.success(), "re-apply: {}", text(&o.stderr));
    let newer = pins(&h);
    std::fs::write(&p, MANIFEST).unwrap();
    let r = raw(&h, &recorded);
    assert_eq!(r["kind"], "error", "the replay was accepted: {r}");
    assert_eq!(pins(&h), newer, "the pin moved back");
}
