//! Red team round 3 (issue 19), at the sweep's own level: what an agent that writes a
//! repository's object store or config, or a host's transcript folder, can make the sweep do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::time::Duration;

use super::tests::{git, git_hits, plan, redactor, value, write};
use super::*;

/// The agent planted a loose object long ago, then rewrites it in place with a guess: its
/// fan-out folder (`objects/ab`) keeps its change time, and git reads the new bytes without
/// checking the hash. The store must still count as changed lately, so a match is `recent`
/// (counted once in the mark, not as a `git-history` copy that says which guess matched).
#[test]
fn a_loose_object_rewritten_in_place_makes_its_store_recent() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    let v = value("l");
    git(p, &["init", "-q", "-b", "main"]);
    let wrong = format!("{}\n", value("l"));
    write(&p.join("a.txt"), wrong.as_bytes());
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "one"]);
    let oid = git(p, &["rev-parse", "HEAD:a.txt"]);
    // Wide enough for a debug-build sweep on a loaded machine to judge the store within it.
    let window = Duration::from_secs(8);
    std::thread::sleep(Duration::from_millis(8300));
    let dir = p.join(".git");
    assert!(!git::store_recent(&dir, window), "nothing changed yet");
    // The guess, the same length, written into the old file (chmod touches that file only).
    let obj = dir.join(format!("objects/{}/{}", &oid[..2], &oid[2..]));
    let fan = std::fs::metadata(obj.parent().unwrap())
        .unwrap()
        .ctime_nsec();
    std::fs::set_permissions(&obj, std::fs::Permissions::from_mode(0o644)).unwrap();
    let body = format!("blob {}\0{v}\n", v.len() + 1);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut z, body.as_bytes()).unwrap();
    std::fs::write(&obj, z.finish().unwrap()).unwrap();
    assert_eq!(
        std::fs::metadata(obj.parent().unwrap())
            .unwrap()
            .ctime_nsec(),
        fan,
        "the fan-out folder's change time moved (the attack needs it not to)"
    );
    assert!(git::store_recent(&dir, window), "the rewrite was not seen");
    let mut pl = plan(p, None);
    pl.recent = window;
    let r = sweep(&pl, &redactor(&[("L", &v)]));
    assert!(
        !git_hits(&r, "L").is_empty(),
        "the rewritten object was not read"
    );
    assert!(
        r.findings
            .iter()
            .filter(|f| matches!(f.location, Location::Git { .. }))
            .all(|f| f.recent),
        "{:?}",
        r.findings
    );
}

/// A partial clone whose promisor remotes the repository's config explicitly allows
/// (`protocol.ext.allow=always` with an `ext::` URL, `protocol.file.allow=always` with a
/// planted `uploadpack`): objects are read in process, the configuration never is, and no
/// missing object is ever fetched: nothing runs, and the value is still found.
#[test]
fn a_promisor_remote_the_repository_allows_explicitly_runs_nothing() {
    let top = tempfile::tempdir().unwrap();
    let p = top.path().join("r");
    let v = value("x");
    git(top.path(), &["init", "-q", "-b", "main", "r"]);
    write(&p.join("a.txt"), format!("k={v}\n").as_bytes());
    write(&p.join("d/b.txt"), b"x\n");
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "one"]);
    let sub = git(&p, &["rev-parse", "HEAD:d"]);
    std::fs::remove_file(p.join(format!(".git/objects/{}/{}", &sub[..2], &sub[2..]))).unwrap();
    let marker = top.path().join("RAN");
    let evil = top.path().join("evil.sh");
    write(
        &evil,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()).as_bytes(),
    );
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = evil.to_str().unwrap();
    let ext = format!("ext::{e}");
    let file = format!("file://{}", top.path().display());
    for (k, val) in [
        ("core.repositoryformatversion", "1"),
        ("extensions.partialClone", "origin"),
        ("remote.origin.url", ext.as_str()),
        ("remote.origin.promisor", "true"),
        ("remote.other.url", file.as_str()),
        ("remote.other.promisor", "true"),
        ("remote.other.uploadpack", e),
        ("protocol.ext.allow", "always"),
        ("protocol.file.allow", "always"),
        ("core.alternateRefsCommand", e),
        ("core.askPass", e),
        ("credential.helper", e),
    ] {
        git(&p, &["config", k, val]);
    }
    let r = sweep(&plan(&p, None), &redactor(&[("X", &v)]));
    assert!(
        !marker.exists(),
        "git ran a transport the repository allowed"
    );
    assert!(!git_hits(&r, "X").is_empty(), "{:?}", r.findings);
}

/// A transcript hard-linked to a file elsewhere (the human's notes): the scrub replaces the
/// transcript's name with a new file and never writes through the link, so the other file
/// keeps its bytes.
#[test]
fn a_scrub_of_a_hard_linked_transcript_leaves_the_other_name_whole() {
    let home = tempfile::tempdir().unwrap();
    let v = value("h");
    let notes = home.path().join("work/notes.md");
    let body = format!("keep this line\n{v}\n");
    write(&notes, body.as_bytes());
    let t = home.path().join(".claude/projects/-w/t.jsonl");
    std::fs::create_dir_all(t.parent().unwrap()).unwrap();
    std::fs::hard_link(&notes, &t).unwrap();
    let done = scrub::scrub(std::slice::from_ref(&t), &redactor(&[("H", &v)]));
    assert_eq!(done.files.len(), 1, "{:?}", done.notes);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), body);
    assert!(!std::fs::read_to_string(&t).unwrap().contains(&v));
}

/// Runs `f` on a thread and waits at most `limit` for its answer; then opens every named pipe
/// in `fifos` for writing (without blocking) so a thread stuck opening one is let go.
fn within<T: Send + 'static>(
    limit: Duration,
    fifos: &[std::path::PathBuf],
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let got = rx.recv_timeout(limit).ok();
    for p in fifos {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(p);
    }
    got
}

/// After git ran (the check before it passed), the agent swaps the repository's `commondir`
/// and its alternates file for named pipes: judging whether the store changed lately must not
/// open them and wait for a writer (the sweep would never end, holding a broker thread), and a
/// store it cannot judge counts as changed.
#[test]
fn a_named_pipe_swapped_in_after_git_ran_never_blocks_the_sweep() {
    for swapped in ["commondir", "objects/info/alternates"] {
        let repo = tempfile::tempdir().unwrap();
        let p = repo.path();
        git(p, &["init", "-q", "-b", "main"]);
        let dir = p.join(".git");
        let fifo = dir.join(swapped);
        std::fs::create_dir_all(fifo.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&fifo);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let d = dir.clone();
        let got = within(Duration::from_secs(3), &[fifo], move || {
            git::store_recent(&d, Duration::from_secs(3600))
        });
        assert_eq!(got, Some(true), "{swapped}: blocked, or judged old");
    }
}
