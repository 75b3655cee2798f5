//! Unit tests of the mounts module.
#![allow(clippy::unwrap_used, clippy::panic)]
use super::*;

/// Opens `path` for writing as the broker does, until a reader holds it (at most 10 s).
fn writer_when_read(path: &Path, dev: u64, ino: u64) -> OwnedFd {
    let t0 = std::time::Instant::now();
    loop {
        if let Ok(Some(fd)) = open_if_read(path.to_str().unwrap(), dev, ino) {
            return fd;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no reader came");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn holder_of(child: &std::process::Child, dev: u64, ino: u64) -> Holder {
    let pid = child.id();
    let t0 = std::time::Instant::now();
    loop {
        if let Some(h) = holders(dev, ino).into_iter().find(|h| h.pid == pid) {
            return h;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the child never held it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn holders_are_found_with_how_they_opened_the_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.env");
    let (dev, ino) = make_fifo(&p).unwrap();
    // A reader (`exec 3<`) blocks until a writer opens; one `O_RDWR` (`3<>`) does not.
    let mut reader = std::process::Command::new("sh")
        .args([
            "-c",
            "exec 3< \"$0\"; read -r _ <&3 || true",
            p.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    let fd = writer_when_read(&p, dev, ino);
    let h = holder_of(&reader, dev, ino);
    assert!(h.read_only);
    assert_eq!(Some(h.start), start_time(reader.id()));
    drop(fd);
    reader.wait().unwrap();
    let mut rdwr = std::process::Command::new("sh")
        .args(["-c", "exec 3<> \"$0\"; read -r _ <&3", p.to_str().unwrap()])
        .spawn()
        .unwrap();
    let h = holder_of(&rdwr, dev, ino);
    assert!(!h.read_only, "an O_RDWR opener is not a reader");
    rdwr.kill().unwrap();
    rdwr.wait().unwrap();
}

#[test]
fn a_file_put_in_place_of_the_fifo_is_never_opened() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.env");
    let (dev, ino) = make_fifo(&p).unwrap();
    let s = p.to_str().unwrap();
    assert!(
        matches!(open_if_read(s, dev, ino), Ok(None)),
        "no reader yet"
    );
    std::fs::remove_file(&p).unwrap();
    assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Missing)));
    std::fs::write(&p, "A=1\n").unwrap();
    assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Replaced)));
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/dev/null", &p).unwrap();
    assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Replaced)));
    // Another FIFO renamed to the path is not ours either. (One made after ours was
    // deleted may reuse its inode number: it is still only a FIFO, whose readers are
    // identified and approved like any.)
    let other = dir.path().join("other");
    make_fifo(&other).unwrap();
    std::fs::rename(&other, &p).unwrap();
    assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Replaced)));
}

#[test]
fn a_cmdline_overwritten_in_place_is_told_from_an_honest_one() {
    let (argv, rewritten) = parse_cmdline(b"node\0-e\0code\0");
    assert_eq!(argv, ["node", "-e", "code"]);
    assert!(!rewritten);
    // An honest empty last argument is one empty word, not padding.
    let (argv, rewritten) = parse_cmdline(b"sh\0-c\0\0");
    assert_eq!(argv, ["sh", "-c"]);
    assert!(!rewritten);
    // `process.title = 'vite'`: the title, then the rest of the area zeroed.
    let (argv, rewritten) = parse_cmdline(b"vite\0\0\0\0\0\0");
    assert_eq!(argv, ["vite"]);
    assert!(rewritten);
    // `setproctitle` that overwrote the final NUL.
    assert!(parse_cmdline(b"vite: dev server").1);
}

#[test]
fn the_code_loading_environment_is_the_run_paths_list() {
    let env = b"LANG=C\0BASH_ENV=/tmp/x\0LD_PRELOAD=/tmp/l.so\0NODE_OPTIONS=-r x\0API_TOKEN=t\0PATH=/bin\0BASH_ENV=/second\0";
    let got = code_loading_env(env);
    let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["BASH_ENV", "LD_PRELOAD", "NODE_OPTIONS", "PATH"]);
    assert_eq!(got[0].1, "/tmp/x", "the first occurrence wins");
    for (k, _) in &got {
        assert!(super::super::runner::never_passed(k));
    }
}

#[test]
fn no_fifo_support_is_told_with_a_hint() {
    use rustix::io::Errno;
    for e in [Errno::PERM, Errno::OPNOTSUPP, Errno::INVAL, Errno::NOSYS] {
        assert!(no_fifos(e));
    }
    assert!(!no_fifos(Errno::EXIST));
    assert!(!no_fifos(Errno::ACCESS));
}

#[test]
fn cpu_lists_are_counted() {
    assert_eq!(cpu_count("0-3\n"), 4);
    assert_eq!(cpu_count("0,2-3,7"), 4);
    assert_eq!(cpu_count("5"), 1);
    assert_eq!(cpu_count(""), 0);
}

#[test]
fn a_reader_kept_off_the_cpu_is_starved() {
    let run = |argv: &[&str]| {
        let mut c = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let why = starved(c.id());
        let _ = c.kill();
        let _ = c.wait();
        why
    };
    // Only meaningful when the test itself runs at normal priority on all its CPUs.
    if starved(std::process::id()).is_some() {
        return;
    }
    assert_eq!(run(&["sleep", "5"]), None);
    let why = run(&["nice", "-n", "5", "sleep", "5"]).unwrap();
    assert!(why.contains("nice 5"), "{why}");
    if std::path::Path::new("/usr/bin/chrt").exists() {
        let why = run(&["chrt", "--idle", "0", "sleep", "5"]).unwrap();
        assert!(why.contains("SCHED_IDLE"), "{why}");
    }
    let cpus = cpus_allowed("/proc/self/status").unwrap_or(0);
    if cpus > 1 && std::path::Path::new("/usr/bin/taskset").exists() {
        let why = run(&["taskset", "-c", "0", "sleep", "5"]).unwrap();
        assert!(why.contains("CPU(s)"), "{why}");
    }
}

/// The pieces are the text, in order; each holds either a whole `NAME=` or at most
/// [`VALUE_PIECE`] bytes of one value (with its line end).
#[test]
fn pieces_hold_a_name_or_a_few_bytes_of_one_value() {
    let entries = [
        ("PLAIN", "fixture-value-not-a-secret-1"),
        ("LINES", "line1 fixture\nline2"),
        ("E", ""),
    ];
    let text = keyveil_dotenv::write(entries).unwrap();
    let lines: Vec<Line> = entries
        .iter()
        .map(|(k, v)| Line {
            shown: (*k).to_owned(),
            name_len: k.len() + 1,
            len: keyveil_dotenv::write([(*k, *v)]).unwrap().len(),
        })
        .collect();
    let ps = pieces(text.len(), &lines);
    let mut at = 0;
    for p in &ps {
        assert_eq!(p.range.start, at);
        at = p.range.end;
        let bytes = &text.as_bytes()[p.range.clone()];
        match p.value_of {
            None => assert!(bytes.ends_with(b"="), "{:?}", p.range),
            Some(i) => {
                assert!(i < lines.len());
                assert!(!bytes.is_empty() && bytes.len() <= VALUE_PIECE);
            }
        }
    }
    assert_eq!(at, text.len());
    assert_eq!(ps.iter().filter(|p| p.value_of.is_none()).count(), 3);
    // Lines that do not add up: small pieces throughout, none taken for a name.
    let odd = pieces(text.len() + 1, &lines);
    assert!(
        odd.iter()
            .all(|p| p.value_of == Some(usize::MAX) && p.range.len() <= VALUE_PIECE)
    );
}

#[test]
fn io_uring_threads_are_told_by_their_stat_flags_whatever_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let stat = dir.path().join("stat");
    // A worker renamed to look like its process (any thread may rename its siblings), with
    // `)` and spaces in the name: the flags (field 9) still say PF_IO_WORKER (0x10).
    std::fs::write(
        &stat,
        "4242 (python3) x (y) S 1 4241 4241 0 -1 4210768 0 0 0 0 0 0 0 0 20 0 1 0 5\n",
    )
    .unwrap();
    let f = uring::task_flags(&stat.to_string_lossy()).unwrap();
    assert_eq!(f, 0x404050);
    assert_ne!(f & 0x10, 0);
    std::fs::write(
        &stat,
        "4243 (iou-wrk-4241) S 1 4241 4241 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5\n",
    )
    .unwrap();
    assert_eq!(
        uring::task_flags(&stat.to_string_lossy()).unwrap() & 0x10,
        0
    );
    let status = dir.path().join("status");
    std::fs::write(
        &status,
        "Name:\tpython3\nTgid:\t4241\nPid:\t4243\nUid:\t1000\t1000\t1000\t1000\n",
    )
    .unwrap();
    assert_eq!(
        uring::uids_tgid(&status.to_string_lossy()),
        (vec![1000; 4], Some(4241))
    );
}

/// A process that makes an io_uring ring and leaves a blocking `IORING_OP_TEE` in it (on a
/// pipe of its own, never written): one io-wq worker thread, until killed. Says `ready`.
const RING: &str = r#"
import os, ctypes, struct, mmap, sys, time
libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 8, params)
assert ring >= 0, ctypes.get_errno()
sq_entries = struct.unpack_from("I", params.raw, 0)[0]
sq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 40)
sqr = mmap.mmap(ring, sq_off[6] + sq_entries * 4, offset=0)
sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
r, w = os.pipe(); r2, w2 = os.pipe()
sqe = bytearray(64)
struct.pack_into("BBHiQQIIQ", sqe, 0, 33, 0, 0, w2, 0, 0, 1 << 16, 0, 0)
struct.pack_into("i", sqe, 44, r)
sqes[0:64] = bytes(sqe)
struct.pack_into("I", sqr, sq_off[6], 0)
struct.pack_into("I", sqr, sq_off[1], 1)
libc.syscall(426, ring, 1, 0, 0, None, 0)
print("ready", flush=True)
time.sleep(60)
"#;

#[test]
fn a_process_with_an_io_uring_worker_is_found_by_a_scan_and_by_a_look() {
    use std::io::BufRead;
    let me = Holder {
        pid: std::process::id(),
        start: start_time(std::process::id()).unwrap(),
        read_only: true,
    };
    // A watch made before the ring exists: its look finds the worker among the new pids.
    let (mut watch, _) = uring::UringWatch::new(&me);
    let mut child = std::process::Command::new("python3")
        .args(["-c", RING])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = child.id();
    let looked = watch.look();
    let scanned = uring::UringWatch::new(&me).0.scan();
    // The ring's own process as the reader: not counted.
    let as_reader = uring::UringWatch::new(&Holder {
        pid,
        start: start_time(pid).unwrap(),
        read_only: true,
    })
    .0
    .scan();
    child.kill().unwrap();
    child.wait().unwrap();
    // (Another process may have got a worker meanwhile: the look names one of them.)
    assert!(looked.is_some());
    assert!(scanned.iter().any(|p| p.pid == pid), "{scanned:?}");
    assert!(as_reader.iter().all(|p| p.pid != pid), "{as_reader:?}");
}

#[test]
fn subordinate_uid_ranges_are_read_by_name_or_number_and_fail_closed() {
    let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\n";
    let sub = "# comment\n\nalice:100000:65536\nbob:165536:65536\n1000:300000:10\ncarol:400000:5\n";
    // Alice's by name and by number; carol is not in /etc/passwd (another name service):
    // counted; bob's are not.
    assert_eq!(
        crate::subuid::parse(sub, passwd, &[1000]).unwrap(),
        vec![(100_000, 165_536), (300_000, 300_010), (400_000, 400_005)]
    );
    assert!(crate::subuid::in_ranges(&[(100_000, 165_536)], 165_535));
    assert!(!crate::subuid::in_ranges(&[(100_000, 165_536)], 165_536));
    for bad in [
        "alice:100000\n",
        "alice:1e5:10\n",
        "alice:100000:-1\n",
        ":100000:10\n",
        "alice:100000:10:x\n",
        "alice:99999999999999999999999:1\n",
    ] {
        let e = crate::subuid::parse(bad, passwd, &[1000]).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }
}

/// `newuidmap` reads the numbers of `/etc/subuid` with `strtoul` base 0: `0200000` is octal
/// (65536) and `0x30000` hexadecimal; read as decimal, the uids it maps would be left out.
#[test]
fn subordinate_uid_numbers_are_read_as_newuidmap_reads_them() {
    let passwd = "alice:x:1000:1000::/home/alice:/bin/sh\n";
    let sub = "alice:0200000:0200000\nalice:0x30000:0X10\nalice:0:1\nalice:7:010\n";
    assert_eq!(
        crate::subuid::parse(sub, passwd, &[1000]).unwrap(),
        vec![(65_536, 131_072), (196_608, 196_624), (0, 1), (7, 15)]
    );
    for bad in [
        "alice:0200008:1\n",
        "alice:0x:1\n",
        "alice:0xg:1\n",
        "alice: 100000:1\n",
        "alice:+100000:1\n",
    ] {
        let e = crate::subuid::parse(bad, passwd, &[1000]).unwrap_err();
        assert!(e.contains("line 1"), "{bad:?}: {e}");
    }
}

#[test]
fn subordinate_uid_ranges_are_read_again_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("subuid");
    let mut s = crate::subuid::Subuids::at(f.clone(), &[4242]);
    assert_eq!(s.ranges(), Ok(&[][..]), "no file: no ranges");
    std::fs::write(&f, "4242:500000:10\n").unwrap();
    s.refresh();
    assert_eq!(s.ranges(), Ok(&[(500_000, 500_010)][..]));
    std::fs::write(&f, "4242:500000\n").unwrap();
    s.refresh();
    let e = s.ranges().unwrap_err();
    assert!(
        e.contains(crate::subuid::SUBUID_MARK) && e.contains("line 1"),
        "{e}"
    );
    assert!(uring::uring_hint(e).is_some_and(|h| h.starts_with("hint: ")));
}

#[test]
fn a_stop_names_every_piece_it_cannot_clear() {
    let lines = [
        Line {
            shown: "ALPHA".to_owned(),
            name_len: 6,
            len: 16,
        },
        Line {
            shown: "BETA".to_owned(),
            name_len: 5,
            len: 10,
        },
    ];
    let mut e = Exposed::default();
    for p in [
        Piece {
            range: 6..10,
            value_of: Some(0),
        },
        Piece {
            range: 16..21,
            value_of: None,
        },
        Piece {
            range: 21..25,
            value_of: Some(1),
        },
        Piece {
            range: 6..10,
            value_of: Some(0),
        },
    ] {
        e.add(&p);
    }
    assert_eq!((e.bytes, e.pieces, e.names), (13, 3, 1), "each piece once");
    let which: Vec<String> = e.values.iter().map(|i| lines[*i].shown.clone()).collect();
    let note = write::exposure_note(&e, &which, false);
    assert!(
        note.starts_with("up to 13 bytes of the text (in 3 pieces"),
        "{note}"
    );
    assert!(note.ends_with("rotate ALPHA, BETA"), "{note}");
    assert_eq!(
        write::exposure_note(&Exposed::default(), &[], false),
        "nothing was written"
    );
}

/// Spawns `sh` holding `path` read-write (`exec 3<>`: a read end that opens without waiting
/// for a writer) until killed.
fn holding(path: &Path) -> std::process::Child {
    std::process::Command::new("sh")
        .args([
            "-c",
            "exec 3<> \"$0\"; exec sleep 30",
            path.to_str().unwrap(),
        ])
        .spawn()
        .unwrap()
}

/// The openings watch (fanotify) of a FIFO the broker made: the broker's own openings are not
/// counted, one other process's opening is the reader's, a second process's is a doubt even
/// once it closed its descriptor (a read end parked out of sight was opened all the same), and
/// the count starts again only once no read end is left.
#[test]
fn every_opening_of_a_fifo_by_another_process_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.env");
    let (dev, ino) = make_fifo(&p).unwrap();
    if opens_of(dev, ino).is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "fanotify with file ids is not available here"
        );
        return;
    }
    let doubt = || openings_doubt(dev, ino).unwrap_or_default();
    assert!(doubt().contains("0 times"), "{}", doubt());
    let own = rustix::fs::open(
        &p,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    assert!(
        doubt().contains("0 times"),
        "the broker's own opening counted"
    );
    drop(own);
    let mut reader = holding(&p);
    holder_of(&reader, dev, ino);
    assert_eq!(openings_doubt(dev, ino), None);
    let mut thief = holding(&p);
    holder_of(&thief, dev, ino);
    thief.kill().unwrap();
    thief.wait().unwrap();
    assert!(doubt().contains("2 times"), "{}", doubt());
    // While a read end is left the count goes on; with none, it starts again.
    before_poll(dev, ino);
    assert!(!matches!(
        open_if_read(p.to_str().unwrap(), dev, ino),
        Ok(None)
    ));
    reader.kill().unwrap();
    reader.wait().unwrap();
    before_poll(dev, ino);
    assert!(matches!(
        open_if_read(p.to_str().unwrap(), dev, ino),
        Ok(None)
    ));
    opens_of(dev, ino).unwrap().reset();
    assert!(doubt().contains("0 times"), "{}", doubt());
}

/// A FIFO opened before its openings were watched (a broker restart) is not trusted until
/// no read end is seen.
#[test]
fn a_fifo_opened_before_its_watch_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("y.env");
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        &p,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .unwrap();
    let m = std::fs::metadata(&p).unwrap();
    let (dev, ino) = (m.dev(), m.ino());
    assert!(openings_doubt(dev, ino).is_some(), "a FIFO never watched");
    let mut early = holding(&p);
    holder_of(&early, dev, ino);
    watch_opens(&p, dev, ino);
    if opens_of(dev, ino).is_none() {
        early.kill().unwrap();
        early.wait().unwrap();
        assert!(
            std::env::var_os("CI").is_none(),
            "fanotify is not available here"
        );
        return;
    }
    assert!(
        openings_doubt(dev, ino).is_some_and(|w| w.contains("before the broker watched")),
        "an opening before the watch went uncounted"
    );
    early.kill().unwrap();
    early.wait().unwrap();
}

/// Which descriptor a holder waits on (`/proc/PID/task/*/syscall`): a stand-in holding the
/// FIFO but asleep reading another pipe (its standard input) is not waiting on it; `cat`
/// reading the FIFO as its standard input is.
#[test]
fn a_holder_asleep_on_another_pipe_is_not_waiting_on_the_fifo() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.env");
    let (dev, ino) = make_fifo(&p).unwrap();
    let wait_for = |child: &std::process::Child, want: bool| {
        let t0 = std::time::Instant::now();
        loop {
            let got = waits_on_fifo(child.id(), dev, ino);
            if got == Some(want) || (got.is_none() && std::env::var_os("CI").is_none()) {
                return got;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "waits_on_fifo said {got:?}, not {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut stand_in = std::process::Command::new("sh")
        .args([
            "-c",
            "exec 3<> \"$0\"; exec cat >/dev/null",
            p.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    holder_of(&stand_in, dev, ino);
    std::thread::sleep(Duration::from_millis(200));
    assert_ne!(wait_for(&stand_in, false), Some(true));
    stand_in.kill().unwrap();
    stand_in.wait().unwrap();
    let mut reader = std::process::Command::new("sh")
        .args([
            "-c",
            "exec 0<> \"$0\"; exec cat >/dev/null",
            p.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    holder_of(&reader, dev, ino);
    assert_ne!(wait_for(&reader, true), Some(false));
    reader.kill().unwrap();
    reader.wait().unwrap();
}

/// A link of a made-up chain.
fn link(pid: u32, ppid: u32, session: u32, exe: &str) -> peer::Link {
    peer::Link {
        pid,
        start: u64::from(pid) * 10,
        ppid,
        session,
        comm: String::new(),
        exe: Some(exe.to_owned()),
        keyveil: false,
    }
}

#[test]
fn the_anchor_is_the_session_leader_among_the_parents_else_the_parent_never_init() {
    let chain = |links: Vec<peer::Link>| peer::Lineage {
        links,
        complete: true,
    };
    // node <- sh <- npm <- bash (session leader) <- sshd <- init
    let typed = chain(vec![
        link(50, 40, 20, "/usr/bin/node"),
        link(40, 30, 20, "/bin/sh"),
        link(30, 20, 20, "/usr/bin/npm"),
        link(20, 10, 20, "/bin/bash"),
        link(10, 1, 10, "/usr/sbin/sshd"),
        link(1, 0, 1, "/sbin/init"),
    ]);
    let a = reader::anchor_of(&typed).unwrap();
    assert_eq!((a.pid, a.start, a.name.as_str()), (20, 200, "bash"));
    assert_eq!(a.shown(), "bash (pid 20)");
    // Its own session (setsid): the parent.
    let own = chain(vec![
        link(50, 40, 50, "/bin/sh"),
        link(40, 1, 40, "/usr/bin/tool"),
        link(1, 0, 1, "/sbin/init"),
    ]);
    assert_eq!(reader::anchor_of(&own).map(|a| a.pid), Some(40));
    // Reparented to init, or to a subreaper: none.
    let orphan = chain(vec![
        link(50, 1, 20, "/bin/sh"),
        link(1, 0, 1, "/sbin/init"),
    ]);
    assert!(reader::anchor_of(&orphan).is_none());
    let reaped = chain(vec![
        link(50, 7, 20, "/bin/sh"),
        link(7, 1, 7, "/usr/lib/systemd/systemd"),
        link(1, 0, 1, "/sbin/init"),
    ]);
    assert!(reader::anchor_of(&reaped).is_none());
    // A session leader above a subreaper is not taken: the parent is.
    let above = chain(vec![
        link(50, 40, 20, "/bin/sh"),
        link(40, 7, 40, "/usr/bin/tool"),
        link(7, 20, 7, "/usr/bin/tini"),
        link(20, 1, 20, "/bin/bash"),
        link(1, 0, 1, "/sbin/init"),
    ]);
    assert_eq!(reader::anchor_of(&above).map(|a| a.pid), Some(40));
    // A chain not read to its end: none.
    let cut = peer::Lineage {
        complete: false,
        ..typed
    };
    assert!(reader::anchor_of(&cut).is_none());
}

#[test]
fn the_listing_keeps_eight_events_and_no_mundane_one_pushes_out_an_alarm() {
    let mut recent = Vec::new();
    let now = Timestamp::now().to_string();
    push_event(&mut recent, &now, "request #1 denied");
    push_event(&mut recent, &now, "STOPPED, possible theft: x");
    for i in 0..20 {
        push_event(&mut recent, &now, &format!("refusal {i}"));
    }
    assert_eq!(recent.len(), RECENT);
    assert!(
        recent
            .iter()
            .any(|e| e.words.ends_with("request #1 denied"))
    );
    assert!(recent.iter().any(|e| e.words.contains("STOPPED")));
    assert!(recent.last().unwrap().words.ends_with("refusal 19"));
    assert!(!recent.iter().any(|e| e.words.ends_with("refusal 13")));
    // Alarms push out alarms only when nothing else is left.
    for i in 0..10 {
        push_event(&mut recent, &now, &format!("request #{i} denied"));
    }
    assert!(recent.iter().all(|e| e.alarm));
    assert_eq!(recent.len(), RECENT);
}
