//! Red team of the in-process git reader: repositories crafted to make it block, loop, read
//! elsewhere or allocate without end. Each sweep runs on a thread given a time limit; a named
//! pipe is opened for writing afterwards so a thread stuck on it is let go.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::tests::{git, git_hits, plan, redactor, value, write};
use super::{SweepReport, git, sweep};

/// A repository with one commit holding `v` (a loose object) and, before it, one packed
/// commit holding `w`.
fn repo_with(top: &Path, v: &str, w: &str) -> PathBuf {
    let p = top.join("r");
    std::fs::create_dir_all(&p).unwrap();
    git(&p, &["init", "-q", "-b", "main"]);
    write(&p.join("packed.txt"), format!("{w}\n").as_bytes());
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "packed"]);
    git(&p, &["gc", "-q", "--prune=now"]);
    write(&p.join("loose.txt"), format!("{v}\n").as_bytes());
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "loose"]);
    p
}

fn mkfifo(p: &Path) {
    let _ = std::fs::remove_file(p);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// Sweeps `repo` (`--no-home`) for `vals` on a thread; `None` if it took longer than 60 s.
fn sweep_within(repo: &Path, vals: &[(&str, &str)], fifos: &[PathBuf]) -> Option<SweepReport> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pl = plan(repo, None);
    let red = redactor(vals);
    std::thread::spawn(move || {
        let _ = tx.send(sweep(&pl, &red));
    });
    let got = rx.recv_timeout(Duration::from_secs(60)).ok();
    for p in fifos {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(p);
    }
    got
}

fn pack_files(repo: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join(".git/objects/pack"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect()
}

/// A pack, its index or a loose object swapped for a named pipe: the repository is refused
/// with a note before the reader opens anything, and the sweep ends.
#[test]
fn a_named_pipe_for_a_pack_an_index_or_a_loose_object_is_refused() {
    let (v, w) = (value("l"), value("p"));
    for what in ["pack", "idx", "loose"] {
        let top = tempfile::tempdir().unwrap();
        let p = repo_with(top.path(), &v, &w);
        let target = match what {
            "loose" => {
                let blob = git(&p, &["rev-parse", "HEAD:loose.txt"]);
                p.join(format!(".git/objects/{}/{}", &blob[..2], &blob[2..]))
            }
            ext => pack_files(&p, ext).remove(0),
        };
        mkfifo(&target);
        let r = sweep_within(&p, &[("V", &v), ("W", &w)], &[target])
            .unwrap_or_else(|| panic!("{what}: the sweep blocked"));
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("not read") && n.contains("not a regular file")),
            "{what}: {:?}",
            r.notes
        );
        assert!(r.truncated, "{what}");
        assert!(git_hits(&r, "V").is_empty() && git_hits(&r, "W").is_empty());
    }
}

/// Alternates that point back at the repository itself, or at a second store that points
/// back: the sweep ends, and says the store was not read whole if it was not.
#[test]
fn an_alternates_loop_neither_hangs_nor_passes_silently() {
    let (v, w) = (value("l"), value("p"));
    let top = tempfile::tempdir().unwrap();
    let p = repo_with(top.path(), &v, &w);
    let other = top.path().join("other/objects");
    std::fs::create_dir_all(other.join("info")).unwrap();
    let mine = p.join(".git/objects");
    for (here, there) in [(mine.clone(), mine.clone()), (mine.clone(), other.clone())] {
        write(
            &here.join("info/alternates"),
            format!("{}\n", there.display()).as_bytes(),
        );
        write(
            &other.join("info/alternates"),
            format!("{}\n", mine.display()).as_bytes(),
        );
        let r = sweep_within(&p, &[("V", &v), ("W", &w)], &[]).expect("the sweep blocked");
        let read_whole = !git_hits(&r, "V").is_empty() && !git_hits(&r, "W").is_empty();
        assert!(
            read_whole || (r.truncated && r.notes.iter().any(|n| n.contains("objects"))),
            "{:?} {:?}",
            r.findings,
            r.notes
        );
    }
}

/// A pack cut in half: the objects it still holds whole and the loose ones are matched, the
/// rest are counted with a note, and nothing panics.
#[test]
fn a_truncated_pack_hides_nothing_else() {
    let (v, w) = (value("l"), value("p"));
    let top = tempfile::tempdir().unwrap();
    let p = repo_with(top.path(), &v, &w);
    for pack in pack_files(&p, "pack") {
        let len = std::fs::metadata(&pack).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.set_len(len / 2).unwrap();
    }
    let r = sweep_within(&p, &[("V", &v), ("W", &w)], &[]).expect("the sweep blocked");
    assert!(
        !git_hits(&r, "V").is_empty(),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
    assert!(r.truncated, "{:?}", r.notes);
}

/// A loose object whose header claims 4 GiB (and one that really inflates to 64 MiB from a
/// few kilobytes): neither is decoded (memory stays bounded), each is counted with a note,
/// and the value in an ordinary object is still found.
#[test]
fn an_object_claiming_a_huge_size_is_never_decoded() {
    let (v, w) = (value("l"), value("p"));
    let top = tempfile::tempdir().unwrap();
    let p = repo_with(top.path(), &v, &w);
    let zlib = |data: &[u8]| {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(data).unwrap();
        z.finish().unwrap()
    };
    // A header only: "blob 4294967296\0" and a few bytes.
    let liar = zlib(b"blob 4294967296\0not four gigabytes");
    write(&p.join(".git/objects/00").join("1".repeat(38)), &liar);
    // A real 64 MiB blob of zeros, compressed.
    let mut bomb = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(format!("blob {}\0", 64 << 20).as_bytes())
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        bomb.write_all(&zeros).unwrap();
    }
    write(
        &p.join(".git/objects/01").join("2".repeat(38)),
        &bomb.finish().unwrap(),
    );
    let r = sweep_within(&p, &[("V", &v), ("W", &w)], &[]).expect("the sweep blocked");
    assert!(
        !git_hits(&r, "V").is_empty(),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
    assert!(
        !git_hits(&r, "W").is_empty(),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
    let note = r
        .notes
        .iter()
        .find(|n| n.contains("objects not matched"))
        .unwrap_or_else(|| panic!("{:?}", r.notes));
    assert!(note.contains("4294967296 bytes"), "{note}");
    assert!(note.contains(&(64u64 << 20).to_string()), "{note}");
    assert!(r.truncated);
}

/// A pack and a loose object swapped for named pipes after the check (the check is skipped
/// here to stand for that moment): the sweep of the repository neither blocks nor passes its
/// deadline (whether the reader skips them or blocks on one, it is not waited for), and finds
/// nothing in bytes it could not read.
#[test]
fn a_named_pipe_swapped_in_after_the_check_does_not_block_the_sweep() {
    let (v, w) = (value("l"), value("p"));
    let top = tempfile::tempdir().unwrap();
    let p = repo_with(top.path(), &v, &w);
    let blob = git(&p, &["rev-parse", "HEAD:loose.txt"]);
    let mut fifos: Vec<PathBuf> = pack_files(&p, "pack");
    fifos.push(p.join(format!(".git/objects/{}/{}", &blob[..2], &blob[2..])));
    for f in &fifos {
        mkfifo(f);
    }
    let red = redactor(&[("V", &v), ("W", &w)]);
    let mut report = SweepReport::default();
    let t0 = std::time::Instant::now();
    let found = git::sweep_repo_checked(
        &p,
        &red,
        t0 + Duration::from_secs(3),
        Duration::from_secs(60),
        &mut report,
        None,
        false,
    );
    let took = t0.elapsed();
    for f in &fifos {
        use std::os::unix::fs::OpenOptionsExt as _;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(f);
    }
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(found.is_empty(), "{found:?}");
}

/// `git mktree` of `lines` (`MODE TYPE OID\tNAME`) in `repo`: the tree's id.
fn mktree(repo: &Path, lines: &str) -> String {
    let mut c = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["mktree"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A blob that holds a value below 64 levels of trees, each of 32 entries named with 1,000
/// bytes that all point to the next level: the blob is found and placed, with a path cut at
/// [`super::git_place::MAX_PATH`] bytes. The walk used to copy every path in full at every level (here
/// about 64 MiB of strings, and gigabytes with 256 levels of 4 KiB names), and only when the
/// blob below held a value: the broker's memory answered the planted guess, or it died.
#[test]
fn a_value_below_deep_trees_of_long_names_is_placed_in_bounded_memory() {
    let v = value("d");
    let top = tempfile::tempdir().unwrap();
    let p = top.path().join("r");
    std::fs::create_dir_all(&p).unwrap();
    git(&p, &["init", "-q", "-b", "main"]);
    write(&p.join("guess.txt"), format!("{v}\n").as_bytes());
    let blob = git(&p, &["hash-object", "-w", "guess.txt"]);
    std::fs::remove_file(p.join("guess.txt")).unwrap();
    let mut tree = mktree(&p, &format!("100644 blob {blob}\tguess.txt\n"));
    for level in 0..64 {
        let lines: String = (0..32)
            .map(|i| {
                let name = format!("{level:02}{i:02}{}", "n".repeat(996));
                format!("040000 tree {tree}\t{name}\n")
            })
            .collect();
        tree = mktree(&p, &lines);
    }
    let commit = git(&p, &["commit-tree", &tree, "-m", "deep"]);
    git(&p, &["update-ref", "refs/heads/main", &commit]);
    let r = sweep_within(&p, &[("V", &v)], &[]).expect("the sweep blocked");
    let hits = git_hits(&r, "V");
    let placed = hits
        .iter()
        .find_map(|l| match l {
            super::Location::Git {
                object_type,
                path: Some(path),
                commits,
                ..
            } if object_type == "blob" => Some((path, commits)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{:?} {:?}", r.findings, r.notes));
    assert!(placed.0.starts_with("6300"), "{}", &placed.0[..16]);
    assert!(
        placed.0.len() <= super::git_place::MAX_PATH + 3,
        "{}",
        placed.0.len()
    );
    assert!(placed.0.ends_with("..."));
    assert_eq!(placed.1, &vec![commit]);
}

/// Garbage planted in the object store (an index and pack of noise, an empty pair, a
/// multi-pack index of noise, a folder or a corrupt file named as a loose object, a file of
/// an odd name in a fan-out folder) stops nothing: the loose and the packed value are found.
#[test]
fn garbage_planted_in_the_object_store_hides_nothing() {
    let (v, w) = (value("l"), value("p"));
    for what in [
        "idx",
        "midx",
        "loosedir",
        "loosefile",
        "looseodd",
        "emptyidx",
    ] {
        let top = tempfile::tempdir().unwrap();
        let p = repo_with(top.path(), &v, &w);
        let pack = p.join(".git/objects/pack");
        match what {
            "idx" => {
                write(
                    &pack.join(format!("pack-{}.idx", "0".repeat(40))),
                    &[0xffu8; 4096],
                );
                write(
                    &pack.join(format!("pack-{}.pack", "0".repeat(40))),
                    b"PACK garbage",
                );
            }
            "emptyidx" => {
                write(&pack.join(format!("pack-{}.idx", "0".repeat(40))), b"");
                write(&pack.join(format!("pack-{}.pack", "0".repeat(40))), b"");
            }
            "midx" => write(&pack.join("multi-pack-index"), &[0x4du8; 4096]),
            "loosedir" => {
                std::fs::create_dir_all(p.join(".git/objects/00").join("0".repeat(38))).unwrap();
            }
            "loosefile" => write(&p.join(".git/objects/00").join("0".repeat(38)), b"garbage"),
            _ => write(&p.join(".git/objects/00").join("zz"), b"garbage"),
        }
        let r = sweep_within(&p, &[("V", &v), ("W", &w)], &[]).expect("blocked");
        assert!(!git_hits(&r, "V").is_empty(), "{what}: {:?}", r.notes);
        assert!(!git_hits(&r, "W").is_empty(), "{what}: {:?}", r.notes);
    }
}

/// A repository 30 folders below the path swept, deeper than the search for repositories goes:
/// the report says folders were left unsearched and is incomplete (it used to say nothing, so
/// a value committed there and packed as a delta passed unseen and unmentioned).
#[test]
fn a_repository_too_deep_to_search_is_named_in_a_note() {
    let (v, w) = (value("l"), value("p"));
    let top = tempfile::tempdir().unwrap();
    let mut deep = top.path().to_path_buf();
    for _ in 0..30 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    repo_with(&deep, &v, &w);
    let r = sweep_within(top.path(), &[("V", &v), ("W", &w)], &[]).expect("the sweep blocked");
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("not searched for git repositories")),
        "{:?}",
        r.notes
    );
    assert!(r.truncated);
}

/// A blob that holds a value at 64 paths in one tree and at 64 others in a second, and a
/// commit of the first tree with 600 parents of the second: listing the commits that add or
/// remove it compared 600 × 64 × 64 places, and only for a hit (a miss compares nothing), so
/// a planted history of many such commits made a hit hours longer than a miss, in an elapsed
/// time the audit shows. The work is bounded: the blob is still found and placed, and a note
/// says some commits are not listed.
#[test]
fn listing_the_commits_of_a_found_object_is_bounded_work() {
    let v = value("l");
    let top = tempfile::tempdir().unwrap();
    let p = top.path().join("r");
    std::fs::create_dir_all(&p).unwrap();
    git(&p, &["init", "-q", "-b", "main"]);
    write(&p.join("guess.txt"), format!("{v}\n").as_bytes());
    let blob = git(&p, &["hash-object", "-w", "guess.txt"]);
    std::fs::remove_file(p.join("guess.txt")).unwrap();
    let tree = |prefix: &str| {
        let lines: String = (0..64)
            .map(|i| format!("100644 blob {blob}\t{prefix}{i:02}\n"))
            .collect();
        mktree(&p, &lines)
    };
    let (a, b) = (tree("a"), tree("b"));
    let parents: Vec<String> = (0..600)
        .map(|i| git(&p, &["commit-tree", &b, "-m", &format!("side {i}")]))
        .collect();
    let mut args = vec!["commit-tree".to_string(), a, "-m".into(), "many".into()];
    for q in &parents {
        args.push("-p".into());
        args.push(q.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tip = git(&p, &args);
    git(&p, &["update-ref", "refs/heads/main", &tip]);
    let r = sweep_within(&p, &[("V", &v)], &[]).expect("the sweep blocked");
    assert!(
        git_hits(&r, "V").iter().any(|l| matches!(
            l,
            super::Location::Git { object_type, path: Some(_), .. } if object_type == "blob"
        )),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
    assert!(
        r.notes.iter().any(|n| n.contains("too intricate")),
        "{:?}",
        r.notes
    );
}

/// A submodule whose working tree was removed (`git submodule deinit`, then the folder
/// deleted) keeps its objects in the parent's `.git/modules/NAME`, which the search for
/// repositories never entered (it skips `.git`): a value committed there was read only as raw
/// file bytes (not at all once packed as a delta). It is read as a repository, once.
#[test]
fn a_submodule_left_only_under_dot_git_modules_is_read() {
    let v = value("s");
    let top = tempfile::tempdir().unwrap();
    let sub = top.path().join("sub-src");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, &["init", "-q", "-b", "main"]);
    write(&sub.join("k.txt"), format!("{v}\n").as_bytes());
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "k"]);
    let p = top.path().join("r");
    std::fs::create_dir_all(&p).unwrap();
    git(&p, &["init", "-q", "-b", "main"]);
    git(
        &p,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            sub.to_str().unwrap(),
            "m",
        ],
    );
    git(&p, &["commit", "-q", "-m", "sub"]);
    assert!(p.join(".git/modules/m/objects").is_dir());
    std::fs::remove_dir_all(&sub).unwrap();
    // With its working tree there, the submodule is read once, under its working tree.
    let r = sweep_within(&p, &[("V", &v)], &[]).expect("the sweep blocked");
    let repos: Vec<&str> = git_hits(&r, "V")
        .iter()
        .filter_map(|l| match l {
            super::Location::Git { repo, .. } => Some(repo.as_str()),
            _ => None,
        })
        .collect();
    assert!(!repos.is_empty(), "{:?}", r.findings);
    assert!(repos.iter().all(|r| r.ends_with("/m")), "{repos:?}");
    git(&p, &["submodule", "deinit", "-q", "-f", "m"]);
    let _ = std::fs::remove_dir_all(p.join("m"));
    let r = sweep_within(&p, &[("V", &v)], &[]).expect("the sweep blocked");
    assert!(
        git_hits(&r, "V").iter().any(|l| matches!(
            l,
            super::Location::Git { repo, .. } if repo.ends_with(".git/modules/m")
        )),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
}

/// A SHA-256 repository (its loose objects' names and its packs' indexes mean nothing to a
/// SHA-1 reader) holding a value: the report says it was not read and is incomplete. It used
/// to say nothing: its objects were passed over in silence.
#[test]
fn a_sha256_repository_is_named_as_not_read() {
    let v = value("h");
    let top = tempfile::tempdir().unwrap();
    let p = top.path().join("r");
    std::fs::create_dir_all(&p).unwrap();
    git(&p, &["init", "-q", "-b", "main", "--object-format=sha256"]);
    write(&p.join("k.txt"), format!("{v}\n").as_bytes());
    git(&p, &["add", "."]);
    git(&p, &["commit", "-q", "-m", "k"]);
    std::fs::remove_file(p.join("k.txt")).unwrap();
    git(&p, &["commit", "-q", "-a", "-m", "gone"]);
    let r = sweep_within(&p, &[("V", &v)], &[]).expect("the sweep blocked");
    assert!(
        r.notes.iter().any(|n| n.contains("SHA-256")),
        "{:?} {:?}",
        r.findings,
        r.notes
    );
    assert!(r.truncated);
}
