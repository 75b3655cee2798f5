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
