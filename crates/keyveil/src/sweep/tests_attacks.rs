//! Red team (issue 19), rounds 1 and 2: what an agent that can write the swept places can make
//! the sweep do (run git's configured programs, learn a value from a path, time a match, write
//! through a swapped folder, hang on a named pipe).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::Duration;

use super::tests::{assert_clean, file_paths, git, git_hits, plan, redactor, value, write};
use super::*;

/// A repository whose own config names programs (a signature checker for `log.showSignature`,
/// an ssh command for a partial clone's lazy fetch): the sweep runs none of them (it runs no
/// git and reads no configuration), and the value in it is still found.
#[test]
fn git_in_a_planted_repository_runs_nothing_its_config_names() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    let v = value("g");
    git(p, &["init", "-q", "-b", "main"]);
    write(&p.join("a.txt"), format!("k={v}\n").as_bytes());
    write(&p.join("d/b.txt"), b"x\n");
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "one"]);
    // A signed commit on top (any signature: git hands it to gpg.program to check).
    let tree = git(p, &["rev-parse", "HEAD^{tree}"]);
    let parent = git(p, &["rev-parse", "HEAD"]);
    let body = format!(
        "tree {tree}\nparent {parent}\nauthor t <t@x> 1700000000 +0000\ncommitter t <t@x> 1700000000 +0000\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n AAAA\n -----END PGP SIGNATURE-----\n\nsigned\n"
    );
    write(&p.join("c.txt"), body.as_bytes());
    let c = git(p, &["hash-object", "-t", "commit", "-w", "c.txt"]);
    std::fs::remove_file(p.join("c.txt")).unwrap();
    git(p, &["update-ref", "refs/heads/main", &c]);
    // A partial clone missing one tree, with an ssh promisor remote.
    let sub = git(p, &["rev-parse", "HEAD:d"]);
    std::fs::remove_file(p.join(format!(".git/objects/{}/{}", &sub[..2], &sub[2..]))).unwrap();
    let marker = p.join("RAN");
    let evil = p.join("evil.sh");
    write(
        &evil,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()).as_bytes(),
    );
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = evil.to_str().unwrap();
    for (k, val) in [
        ("log.showSignature", "true"),
        ("gpg.program", e),
        ("core.repositoryformatversion", "1"),
        ("extensions.partialClone", "origin"),
        ("remote.origin.url", "ssh://example.invalid/x"),
        ("remote.origin.promisor", "true"),
        ("core.sshCommand", e),
        ("core.pager", e),
        ("diff.external", e),
    ] {
        git(p, &["config", k, val]);
    }
    let r = sweep(&plan(p, None), &redactor(&[("G", &v)]));
    assert!(!marker.exists(), "git ran a program the repository named");
    assert!(!git_hits(&r, "G").is_empty(), "{:?}", r.findings);
}

/// A value that is itself a git path or a repository's folder name is never shown.
#[test]
fn a_value_in_a_git_path_or_repository_name_is_never_shown() {
    let top = tempfile::tempdir().unwrap();
    let v = value("n");
    let p = top.path().join(format!("clone-{v}"));
    std::fs::create_dir_all(&p).unwrap();
    git(&p, &["init", "-q", "-b", "main"]);
    write(&p.join(format!("{v}.txt")), format!("{v}\n").as_bytes());
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "one"]);
    std::fs::remove_file(p.join(format!("{v}.txt"))).unwrap();
    git(&p, &["commit", "-qam", "gone"]);
    let r = sweep(&plan(top.path(), None), &redactor(&[("N", &v)]));
    assert!(!git_hits(&r, "N").is_empty(), "{:?}", r.findings);
    assert_clean(&r, &[&v]);
    let shown = serde_json::to_string(&r).unwrap();
    assert!(shown.contains("[REDACTED:N]"), "{shown}");
}

/// Line numbers come from the read that matched: a file that holds a value is not opened again
/// (an agent watching its planted candidates with inotify would see which one was).
#[test]
fn a_file_that_holds_a_value_is_opened_no_more_often_than_one_that_does_not() {
    use rustix::fs::inotify;
    let dir = tempfile::tempdir().unwrap();
    let v = value("o");
    write(&dir.path().join("hit.txt"), format!("x\n{v}\n").as_bytes());
    write(&dir.path().join("miss.txt"), b"x\nnot it at all, sorry\n");
    let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC).unwrap();
    inotify::add_watch(&fd, dir.path(), inotify::WatchFlags::OPEN).unwrap();
    let r = sweep(&plan(dir.path(), None), &redactor(&[("O", &v)]));
    assert_eq!(file_paths(&r, "O")[0].1, &[2], "{:?}", r.findings);
    let mut opens: std::collections::BTreeMap<String, u32> = Default::default();
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
    let mut rd = inotify::Reader::new(&fd, &mut buf);
    while let Ok(e) = rd.next() {
        if let Some(n) = e.file_name() {
            *opens.entry(n.to_string_lossy().into_owned()).or_default() += 1;
        }
    }
    assert!(opens.contains_key("hit.txt"), "{opens:?}");
    assert_eq!(opens.get("hit.txt"), opens.get("miss.txt"), "{opens:?}");
}

/// The agent swaps a transcript's folder for a symlink to another folder holding a file of the
/// same name between the sweep and the scrub: the scrub writes nothing there.
#[test]
fn a_scrub_never_writes_through_a_folder_swapped_for_a_symlink() {
    let home = tempfile::tempdir().unwrap();
    let v = value("s");
    let real = home.path().join(".claude/projects/-w");
    write(
        &real.join("t.jsonl"),
        format!("{{\"m\":\"{v}\"}}\n").as_bytes(),
    );
    let elsewhere = home.path().join("elsewhere");
    write(&elsewhere.join("t.jsonl"), format!("keep {v}\n").as_bytes());
    let red = redactor(&[("S", &v)]);
    let targets = vec![real.join("t.jsonl")];
    std::fs::rename(&real, home.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &real).unwrap();
    let done = scrub::scrub(&targets, &red);
    assert!(done.files.is_empty(), "{:?}", done.files);
    assert!(done.notes[0].contains("symbolic link"), "{:?}", done.notes);
    let other = std::fs::read_to_string(elsewhere.join("t.jsonl")).unwrap();
    assert!(other.contains(&v), "the file behind the link was rewritten");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
    // The folder put back: rewritten in place, atomically, nothing left beside it.
    std::fs::remove_file(&real).unwrap();
    std::fs::rename(home.path().join("moved"), &real).unwrap();
    let done = scrub::scrub(&targets, &red);
    assert_eq!(done.files.len(), 1, "{:?}", done.notes);
    let after = std::fs::read_to_string(real.join("t.jsonl")).unwrap();
    assert!(
        !after.contains(&v) && after.contains("[REDACTED:S]"),
        "{after}"
    );
    assert_eq!(std::fs::read_dir(&real).unwrap().count(), 1);
}

/// A host's binary store next to its transcripts (a SQLite write-ahead log, a LevelDB log:
/// checksummed) that holds a value is never rewritten: the host would lose it.
#[test]
fn a_scrub_leaves_binary_stores_whole() {
    let home = tempfile::tempdir().unwrap();
    let v = value("b");
    let wal = home.path().join(".codex/state_5.sqlite-wal");
    let mut data = vec![0x37, 0x7f, 0x06, 0x82, 0, 0, 0, 0];
    data.extend_from_slice(format!("INSERT {v}").as_bytes());
    data.extend_from_slice(&[0, 0, 1, 2]);
    write(&wal, &data);
    let done = scrub::scrub(std::slice::from_ref(&wal), &redactor(&[("B", &v)]));
    assert!(done.files.is_empty(), "{:?}", done.files);
    assert!(
        done.notes[0].contains("not a text file"),
        "{:?}",
        done.notes
    );
    assert_eq!(std::fs::read(&wal).unwrap(), data);
}

/// A corrupt object planted in a repository (sorting first) does not hide the objects after it.
#[test]
fn a_corrupt_object_does_not_hide_what_was_found_before_it() {
    let repo = tempfile::tempdir().unwrap();
    let p = repo.path();
    let v = value("c");
    git(p, &["init", "-q", "-b", "main"]);
    write(&p.join("a.txt"), format!("{v}\n").as_bytes());
    git(p, &["add", "."]);
    git(p, &["commit", "-q", "-m", "one"]);
    for (d, name) in [("00", "0"), ("ff", "f")] {
        let dir = p.join(".git/objects").join(d);
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir.join(name.repeat(38)), b"x\x9c garbage, not zlib");
    }
    let r = sweep(&plan(p, None), &redactor(&[("C", &v)]));
    assert!(
        !git_hits(&r, "C").is_empty(),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
}

/// A named pipe planted where a reader might open it (an alternates file, a config, a ref) is
/// refused before anything is read, with a note and no finding; one the check cannot see (a
/// config `include.path` naming a pipe elsewhere) is never opened: no configuration is read.
#[test]
fn a_named_pipe_where_git_reads_neither_hangs_the_sweep_nor_passes_its_deadline() {
    let top = tempfile::tempdir().unwrap();
    let v = value("f");
    let mk = |name: &str| {
        let p = top.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        git(&p, &["init", "-q", "-b", "main"]);
        write(&p.join("a.txt"), format!("k={v}\n").as_bytes());
        git(&p, &["add", "."]);
        git(&p, &["commit", "-q", "-m", "one"]);
        p
    };
    let fifo = |p: &Path| {
        let _ = std::fs::remove_file(p);
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
    };
    let red = redactor(&[("F", &v)]);
    for planted in [
        "objects/info/alternates",
        "config",
        "refs/heads/side",
        "packed-refs",
    ] {
        let p = mk(&format!("r-{}", planted.replace('/', "-")));
        fifo(&p.join(".git").join(planted));
        let t0 = std::time::Instant::now();
        let mut pl = plan(&p, None);
        pl.max_duration = Duration::from_secs(30);
        let r = sweep(&pl, &red);
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{planted}: {:?}",
            t0.elapsed()
        );
        assert!(git_hits(&r, "F").is_empty(), "{planted}: {:?}", r.findings);
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("not read") && n.contains("not a regular file")),
            "{planted}: {:?}",
            r.notes
        );
        assert!(r.truncated);
    }
    // Out of the check's sight: the config includes a pipe outside the repository. The
    // configuration is never read: the repository is read whole, at once.
    let p = mk("wrap/r-include");
    let pipe = top.path().join("elsewhere.fifo");
    fifo(&pipe);
    git(&p, &["config", "include.path", pipe.to_str().unwrap()]);
    for root in [top.path().join("wrap"), p.clone()] {
        let mut pl = plan(&root, None);
        pl.max_duration = Duration::from_secs(30);
        let t0 = std::time::Instant::now();
        let r = sweep(&pl, &red);
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
        assert!(
            !git_hits(&r, "F").is_empty(),
            "{:?} {:?}",
            r.findings,
            r.notes
        );
    }
}

/// Copies in git objects of a store that changed lately, and in files (or folders) named after
/// the value, are `recent` (they count once in what the agent can read); a copy in an old file
/// whose name holds nothing is not.
#[test]
fn copies_in_fresh_git_objects_and_in_names_are_recent() {
    let top = tempfile::tempdir().unwrap();
    let v = value("r");
    let repo = top.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for i in 0..3 {
        write(
            &repo.join(format!("g{i}.txt")),
            format!("{i}:{v}\n").as_bytes(),
        );
    }
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "guesses"]);
    for i in 0..3 {
        std::fs::remove_file(repo.join(format!("g{i}.txt"))).unwrap();
    }
    git(&repo, &["commit", "-qam", "gone"]);
    let red = redactor(&[("R", &v)]);
    let mut pl = plan(&repo, None);
    pl.recent = Duration::from_secs(3600);
    let r = sweep(&pl, &red);
    let g: Vec<&Finding> = r
        .findings
        .iter()
        .filter(|f| matches!(f.location, Location::Git { .. }))
        .collect();
    assert!(g.len() >= 3, "{:?}", r.findings);
    assert!(g.iter().all(|f| f.recent), "{g:?}");
    // Older than the window: files changed over a second ago, with a one-second window.
    let d = top.path().join("files");
    write(&d.join("old.txt"), format!("{v}\n").as_bytes());
    write(&d.join(format!("{v}.txt")), b"nothing\n");
    write(&d.join(v.as_str()).join("inside.txt"), b"nothing\n");
    std::thread::sleep(Duration::from_millis(2100));
    let mut pl = plan(&d, None);
    pl.recent = Duration::from_secs(1);
    let r = sweep(&pl, &red);
    let by_path = |needle: &str| -> Vec<bool> {
        r.findings
            .iter()
            .filter(|f| matches!(&f.location, Location::File { path, .. } if path.contains(needle)))
            .map(|f| f.recent)
            .collect()
    };
    assert_eq!(by_path("old.txt"), vec![false], "{:?}", r.findings);
    let named = by_path("[REDACTED:R]");
    assert!(
        !named.is_empty() && named.iter().all(|r| *r),
        "{:?}",
        r.findings
    );
    // And the same repository, now older than a one-second window: not recent.
    let mut pl = plan(&repo, None);
    pl.recent = Duration::from_secs(1);
    let r = sweep(&pl, &red);
    assert!(
        r.findings
            .iter()
            .any(|f| matches!(f.location, Location::Git { .. }) && !f.recent),
        "{:?}",
        r.findings
    );
}

/// Line numbers come from the one matching pass: values on lines 1 and 3, one on the last
/// line (without a newline), after one split over two lines.
#[test]
fn line_numbers_come_from_the_matching_pass() {
    let v = value("l");
    let w = value("m");
    let red = redactor(&[("L", &v), ("M", &w)]);
    let (a, b) = w.split_at(w.len() / 2);
    let data = format!("{v}\nnothing\nx {v} y\n{a}\n{b}\nend {w}");
    let spans = red.find_leak_spans(data.as_bytes());
    let lines = crate::scan::lines_of(data.as_bytes(), &spans);
    assert_eq!(lines["L"], vec![1, 3]);
    assert_eq!(lines["M"].last(), Some(&6), "{lines:?}");
    assert!(!lines["M"].contains(&2) && !lines["M"].contains(&3));
    let none = crate::scan::lines_of(b"a\nb\n", &Vec::new());
    assert!(none.is_empty());
}

/// Measures (not a test of speed: run it with `--ignored --nocapture`) the cost of a sweep of
/// one long planted file that holds the value against one that does not, and of the old way of
/// finding line numbers (one match per line) on the hit. Figures: `docs/benchmarks.md`.
#[test]
#[ignore = "a measurement, run by hand: see docs/benchmarks.md (Sweep)"]
#[allow(clippy::print_stderr)]
fn measure_a_hit_against_a_miss_in_a_long_file() {
    let v = value("t");
    let red = redactor(&[("T", &v)]);
    let dir = tempfile::tempdir().unwrap();
    let line = "lorem ipsum dolor sit amet consectetur\n";
    let body = line.repeat((8 << 20) / line.len());
    // The miss holds a wrong guess of the same shape (the same decoding work).
    write(
        &dir.path().join("miss/f.txt"),
        format!("{body}{}\n", value("t")).as_bytes(),
    );
    write(
        &dir.path().join("hit/f.txt"),
        format!("{body}{v}\n").as_bytes(),
    );
    let once = |d: &str| {
        let t0 = std::time::Instant::now();
        let r = sweep(&plan(&dir.path().join(d), None), &red);
        assert_eq!(r.findings.is_empty(), d == "miss");
        t0.elapsed().as_millis()
    };
    // Interleaved, so the machine's load weighs on both alike.
    let (mut m, mut h) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        m.push(once("miss"));
        h.push(once("hit"));
    }
    m.sort_unstable();
    h.sort_unstable();
    let (miss, hit) = (m[3], h[3]);
    // The old way on 1/64 of the file (it is slow), scaled up.
    let data = std::fs::read(dir.path().join("hit/f.txt")).unwrap();
    let part = &data[data.len() - data.len() / 64..];
    let t0 = std::time::Instant::now();
    let old = part
        .split(|&b| b == b'\n')
        .filter(|l| !red.find_leaks(l).is_empty())
        .count();
    let old_ms = t0.elapsed().as_millis() * 64;
    eprintln!(
        "8 MiB file, 220k lines: sweep miss {miss} ms, hit {hit} ms (median of 7, interleaved; all: {m:?} {h:?}); the old per-line pass on the hit added about {old_ms} ms ({old} line)"
    );
}
