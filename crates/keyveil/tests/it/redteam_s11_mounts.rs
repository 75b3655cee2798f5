//! Red team s11 of issue 22 (`.env` mounts), after the subordinate uid look and the upper bound
//! of every stopped read: a prompt-injected agent with the human's uid, a shell, `/proc`, the
//! socket and every MCP tool, trying to copy a mount's values unreported or to make a report
//! understate what it took. A held attack is a passing test; one that still works is kept
//! `#[ignore = "LEAK: ..."]`. The thieves are those of `redteam22b.rs` and `redteam_s10.rs`.
#![allow(clippy::print_stderr)] // the figures of each attempt (counts only, never a value)

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Home, text, wait_output};
use crate::mount::{Project, approve_card, finished, mount, pending, store, values, wait_card};
use crate::redteam_s9c::{longest_run, wait_ready};
use crate::redteam_s10::{self, copy_with};
use crate::redteam22b::{self, theft};

/// An honest program that loads `.env` and prints only how many bytes it read.
const HONEST: &str = "import sys\nsys.stdout.write(str(len(open('.env').read())))\n";

/// `/etc/subuid` with the range written in octal (`root:0200000:65536`): `newuidmap` reads its
/// numbers with `strtoul` base 0 (shadow's `getulong`, now `str2ul`), so the range it maps is
/// uids 65536 to 131071; the look read `0200000` as the decimal 200000 and counted 200000 to
/// 265535 instead. The agent's tee thief under uid 65536 (here `setresuid` as root, as in
/// `redteam_s10.rs`) was then a process the look ignored: was a LEAK (replayed with the range
/// where the old reading put it, `root:200000:65536`: 6 pieces, 26 bytes, unreported in 1
/// of 2 runs). Held since: the numbers are read as `newuidmap` reads them (decimal, `0`
/// octal, `0x` hexadecimal; anything else refuses the read).
#[test]
fn a_tee_thief_under_a_subordinate_uid_written_in_octal_is_reported() {
    let c = copy_with("subuid 65536", |h| {
        std::fs::write(h.path().join("subuid"), "root:0200000:65536\n").unwrap();
    });
    redteam_s10::assert_held(&c);
}

/// The same range in hexadecimal (`root:0x10000:0x10000`), which `newuidmap` also takes.
#[test]
fn a_tee_thief_under_a_subordinate_uid_written_in_hexadecimal_is_reported() {
    let c = copy_with("subuid 65536", |h| {
        std::fs::write(h.path().join("subuid"), "root:0x10000:0x10000\n").unwrap();
    });
    redteam_s10::assert_held(&c);
}

/// What a ring-held read-write thief must come to: no value whole; the read reported (its
/// write end out of sight keeps the reader from end-of-file: `after_text`, at least); and
/// when it read anything, a stop that states at least what it read (`bytes_exposed_at_most`),
/// not only "possible tampering".
fn assert_rdwr_held(t: &redteam22b::Theft) {
    assert_eq!(t.leaked, 0, "the thief read values; {}", t.audit);
    // Its opening, counted since the FIFO was made, refuses the read before the first piece
    // (nothing written); or, where it got past that, a stop or the check after the text.
    let refused = t.bytes == 0 && t.audit.contains("times by other processes than the broker");
    assert!(
        refused || t.audit.contains("\"mount_read_suspect\""),
        "a write end held out of sight went unreported; {}",
        t.audit
    );
    if t.bytes > 0 {
        let bound = t
            .audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "mount_read_suspect")
            .filter_map(|e| e["bytes_exposed_at_most"].as_u64())
            .max();
        assert!(
            bound.is_some_and(|b| b >= t.bytes as u64),
            "the thief read {} bytes; the broker stated at most {bound:?}; {}",
            t.bytes,
            t.mounts
        );
        assert!(t.mounts.contains("possible theft"), "{}", t.mounts);
    }
}

/// A ring-held thief with a *read-write* end: it opens `/proc/READER/fd/N` with `O_RDWR`
/// while the card waits (before the swap, so before the FIFO's watch), registers it in an
/// io_uring ring and closes it (no holder in `/proc/*/fd`), then reads each piece through
/// the ring and writes it straight back through the ring (`IORING_OP_READ` then
/// `IORING_OP_WRITE` on the fixed file: no opening, no mode change, no io-wq worker: a read
/// and a write on a pipe complete inline, in the thief's own task), so that the reader reads
/// every byte and its count adds up. The docs said of a ring opened for writing that its
/// extra write is seen "as long as the kernel reports io_uring writes to inotify (not
/// replayed)". Held (replayed here): the kernel reports the ring's write (`IN_MODIFY`) and
/// its read (`IN_ACCESS`, which parts it from the broker's own write: checked on this
/// kernel, 6.18), so a piece put back stops the read as a possible theft with its bound;
/// and the write end it keeps is found after the text (`after_text`, possible tampering).
/// Run without the count of openings (which refuses this thief before the first piece:
/// `a_ring_held_read_write_thief_is_refused_by_the_count_of_openings`), as on a kernel
/// without fanotify. Was a flaky LEAK: once 8 bytes read against a stated bound of 4 (the
/// ring's events come when its read and write *complete*, after the reader was woken, so a
/// piece could pass before they were seen and the next be written); the bound is now every
/// piece written once a foreign write is seen.
#[test]
fn a_ring_held_read_write_thief_that_puts_each_piece_back_is_reported() {
    let t = theft("uring+rdwr", HONEST);
    eprintln!(
        "uring+rdwr: {} bytes read by the thief, {} values whole; reported {}",
        t.bytes,
        t.leaked,
        t.audit.contains("\"mount_read_suspect\"")
    );
    assert_rdwr_held(&t);
}

/// The same thief with the count of the FIFO's openings (fanotify, from `mkfifo` on): its
/// opening of `/proc/READER/fd/N` while the card waits is the second, and the read is
/// refused before the first piece: nothing written, nothing read.
#[test]
fn a_ring_held_read_write_thief_is_refused_by_the_count_of_openings() {
    let t = redteam22b::theft_with("uring+rdwr", HONEST, false, true);
    eprintln!(
        "uring+rdwr counted: {} bytes read by the thief; honest read {}",
        t.bytes, t.honest
    );
    assert_eq!(t.bytes, 0, "the thief read {} bytes; {}", t.bytes, t.mounts);
    assert!(
        t.audit.contains("times by other processes than the broker"),
        "{}",
        t.audit
    );
}

/// As above with the agent's busy loops (two per CPU, normal priority) so that the woken
/// reader waits for a CPU while the thief's ring reads and puts back each piece.
#[test]
fn a_ring_held_read_write_thief_with_spinners_is_reported() {
    let t = theft("uring+rdwr+spin", HONEST);
    eprintln!(
        "uring+rdwr+spin: {} bytes read by the thief, {} values whole; reported {}",
        t.bytes,
        t.leaked,
        t.audit.contains("\"mount_read_suspect\"")
    );
    assert_rdwr_held(&t);
}

/// The agent's side: a copier whose descriptor of the served FIFO is in no process's table
/// while the broker looks, and comes back without an opening. While the card waits it opens
/// `/proc/READER/fd/N` (what every ring-held thief does: `PTRACE_MODE_READ`, which Yama does
/// not restrict, unlike the `pidfd_getfd` and `/proc/READER/mem` of the LIMITs), *parks* it:
/// sends it to itself over a `socketpair` (`SCM_RIGHTS`) and closes it, so that it lives only
/// in the socket's receive queue (no `/proc/*/fd` entry, no io_uring); then touches its ready
/// file. At each write into the FIFO (its modification time through
/// `stat(/proc/READER/fd/N)`: no descriptor) it takes the descriptor back (`recvmsg`: no
/// opening, nothing for inotify), copies the pipe with non-blocking `tee(2)` (which consumes
/// nothing: the reader reads every byte) for at most `argv[3]` ms, parks it again and closes
/// it. Prints what it copied on stdout (only searched), `copies N` and `held_ms M` (the
/// longest time the descriptor was in its table) on stderr.
const PARKED_THIEF: &str = r#"
import os, sys, time, ctypes, socket
path, ready, window = sys.argv[1], sys.argv[2], float(sys.argv[3]) / 1000
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
src = f"/proc/{pid}/fd/{fdn}"
a, b = socket.socketpair()
fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
socket.send_fds(a, [b"x"], [fd]); os.close(fd)  # parked: in no process's table
time.sleep(0.3)
open(ready, "w").close()
r, w = os.pipe()
data = []; held = 0.0
m0 = os.stat(src).st_mtime_ns; last = time.time()
while time.time() - last < 2:
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
                data.append(got)
            break
    socket.send_fds(a, [b"x"], [fd]); os.close(fd)  # parked again
    held = max(held, time.time() - t1)
sys.stderr.write(f"copies {len(data)}\nheld_ms {held * 1000:.2f}\n")
sys.stdout.buffer.write(b"".join(data))
"#;

/// The reader's card, or `None` once the broker refused the read without one (at most 20 s).
fn card_or_refusal(h: &Home) -> Option<serde_json::Value> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(r) = pending(h).pop() {
            return Some(r);
        }
        if h.audit_text().contains("\"mount_refused\"") {
            return None;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no request appeared: {}",
            h.ok(&["mounts"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the parked-descriptor thief came to: (bytes copied, longest run of one value, pieces,
/// whether the broker reported anything, what the human is told).
fn parked(window_ms: u32, counted: bool) -> (usize, usize, usize, bool, String) {
    let h = Home::new();
    if !counted {
        h.without_open_count();
    }
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let thief = Command::new("python3")
        .args([
            "-c",
            PARKED_THIEF,
            p.env_file().to_str().unwrap(),
            p.tmp.path().join("parked-ready").to_str().unwrap(),
            &window_ms.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = p.reader(&["python3", "-c", HONEST], &[]);
    // The thief's opening may come before the card (then the read is refused at once, no
    // card) or while it waits (refused before the first piece).
    let card = card_or_refusal(&h);
    if let Some(card) = &card {
        wait_ready(&p, "parked-ready");
        approve_card(&h, card, &[]);
    }
    let honest = finished(reader);
    let stolen = wait_output(thief, Duration::from_secs(60));
    // Refused before the card, the reader may be gone before the thief found it.
    assert!(
        stolen.status.success() || card.is_none(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    let audit = h.audit_text();
    for e in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("mount_")))
    {
        eprintln!("audit: {} {}", e["event"], e["why"]);
    }
    let reported =
        audit.contains("\"mount_read_suspect\"") || !audit.contains("\"opened_during_write\":[]");
    let longest = vals
        .iter()
        .map(|(_, v)| longest_run(&stolen.stdout, v.as_bytes()))
        .max()
        .unwrap_or(0);
    let copies = text(&stolen.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("copies "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    eprintln!(
        "parked {window_ms} ms: {copies} pieces, {} bytes copied, longest run of a value {longest}, reported {reported}, honest read {}; {}",
        stolen.stdout.len(),
        text(&honest.stdout),
        text(&stolen.stderr).lines().last().unwrap_or("").trim()
    );
    (
        stolen.stdout.len(),
        longest,
        copies,
        reported,
        h.ok(&["mounts"]),
    )
}

/// A descriptor parked in a socket's receive queue (`SCM_RIGHTS`) is in no `/proc/PID/fd`
/// while the holders scan runs (before the card, before the text, after it), comes back
/// with `recvmsg` (no opening for the FIFO's watch), and copies with plain `tee(2)` (no
/// io_uring worker): the `pidfd_getfd` copier of `redteam_s9c.rs` without its ptrace access
/// (it needs only what opening `/proc/READER/fd/N` needs, which Yama does not restrict, so
/// keeping the reader out of the agent's process tree does not stop it). Measured: 4 of 4
/// runs copied unreported (`mount_read`, `opened_during_write: []`): 2 to 24 pieces, 7 to 99
/// bytes, up to 20 consecutive bytes of one value (was a LEAK). Held since by the count of the
/// FIFO's openings (fanotify, from `mkfifo` on, whose events of two processes never merge):
/// the thief's opening is the second, so the read is refused before the first piece (4 runs:
/// 0 bytes copied, `mount_not_written`).
#[test]
fn a_thief_with_a_descriptor_parked_in_a_socket_copies_pieces_unreported() {
    let (bytes, longest, copies, reported, mounts) = parked(2, true);
    assert!(
        bytes == 0 || reported,
        "the thief copied {bytes} bytes in {copies} pieces unreported (longest run of one value: {longest}); mounts: {mounts}"
    );
}

/// The same thief where the kernel refuses the count of openings (no fanotify with file ids):
/// what is left is the check after the text (a read end left once the reader closed the
/// FIFO is a possible theft of the whole text), which this thief meets only when its parked
/// read end outlives the reader's; it drops it as soon as the reader is gone, a race it
/// often wins. Measured: 2 of 4 runs reported, the others copied 37 to 179 bytes unreported.
#[test]
#[ignore = "LIMIT (docs/mounts.md, What a mount cannot give: a copier without io_uring): without fanotify a FIFO's read ends are told apart from none only by 'at least one', so a parked read end dropped before the reader closes the FIFO copies pieces unreported"]
fn a_thief_with_a_parked_descriptor_without_the_count_of_openings_is_reported() {
    let (bytes, longest, copies, reported, mounts) = parked(2, false);
    assert!(
        bytes == 0 || reported,
        "the thief copied {bytes} bytes in {copies} pieces unreported (longest run of one value: {longest}); mounts: {mounts}"
    );
}

/// The mount path, as the agent may shape it with every MCP tool and a shell: a `.env` that is
/// a symlink to a file of the user's is not replaced or followed (the file keeps its bytes,
/// the link stays); a second mount of the same FIFO under another spelling (`sub/../.env`,
/// `./.env`, through a symlinked directory) is refused, so one FIFO never has two servers
/// (two cards, two grants) for one reader. Held.
#[test]
fn mount_path_spellings_and_symlinks_do_not_make_a_second_mount() {
    let h = Home::new();
    store(&h, &values());
    let p = Project::new();
    let env = p.env_file();
    let dir = env.parent().unwrap().to_path_buf();
    let target = p.tmp.path().join("kept");
    std::fs::write(&target, "kept\n").unwrap();
    std::os::unix::fs::symlink(&target, &env).unwrap();
    let o = h.run(&["mount", "demo", env.to_str().unwrap()]);
    assert!(!o.status.success(), "a mount over a symlink was made");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "kept\n");
    assert!(
        std::fs::symlink_metadata(&env)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    std::fs::remove_file(&env).unwrap();
    mount(&h, &p);
    std::fs::create_dir(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(&dir, p.tmp.path().join("alias")).unwrap();
    let name = env.file_name().unwrap().to_str().unwrap();
    for other in [
        dir.join("sub").join("..").join(name),
        dir.join(".").join(name),
        p.tmp.path().join("alias").join(name),
    ] {
        let o = h.run(&["mount", "demo", other.to_str().unwrap()]);
        assert!(
            !o.status.success(),
            "a second mount of the same FIFO was made at {}",
            other.display()
        );
    }
    let listed = h.ok(&["mounts"]);
    assert_eq!(listed.matches("environment demo").count(), 1, "{listed}");
}

/// The agent's side of a stand-in reader: a child of it opens `.env` (non-blocking, while no
/// card is asked yet), sends the agent that descriptor (`SCM_RIGHTS`: the same open file,
/// parked in the socket's queue from the start, one opening in all) and execs an ordinary
/// program, `sha256sum`, keeping it as fd 9 (the program never reads it) with its standard
/// input a pipe the agent feeds: the one holder the broker sees, and the card shows, is
/// `sha256sum`, asleep in a pipe read (its stdin). At
/// each write into the FIFO it takes its descriptor back, reads the piece out, parks it
/// again and writes as many bytes into `sha256sum`'s stdin, so the holder's byte count grows
/// by the piece. Prints what it read on stdout (only searched).
const STAND_IN: &str = r#"
import os, sys, time, socket
path, ready = sys.argv[1:3]
r_in, w_in = os.pipe()
a, b = socket.socketpair()
# The holder opens `.env` itself and sends the agent its descriptor (the same open file)
# before it execs: the agent's copy stays parked in the socket's queue from the start.
pid = os.fork()
if pid == 0:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    socket.send_fds(a, [b"x"], [fd])
    os.dup2(fd, 9); os.dup2(r_in, 0)  # the holder never reads `.env` (fd 9), asleep on its stdin
    os.close(fd)
    devnull = os.open(os.devnull, os.O_WRONLY); os.dup2(devnull, 1)
    os.chdir(os.path.dirname(path))
    os.execvp("sha256sum", ["sha256sum"])
os.close(r_in)
open(ready, "w").close()
src = f"/proc/{pid}/fd/9"
while not os.path.exists(src):
    time.sleep(0.001)
data = b""; m0 = os.stat(src).st_mtime_ns; t0 = time.time(); last = None
# Until 3 s after the last write (at most 15 s for the first: the broker gives up after 5).
while time.time() - (last or t0) < (3 if last else 15):
    try:
        m = os.stat(src).st_mtime_ns
    except OSError:
        break
    if m == m0:
        continue
    m0 = m; last = time.time()
    _, fds, _, _ = socket.recv_fds(b, 1, 1)
    got = b""
    try:
        while True:
            c = os.read(fds[0], 1 << 16)
            if not c:
                break
            got += c
    except BlockingIOError:
        pass
    socket.send_fds(a, [b"x"], [fds[0]]); os.close(fds[0])
    data += got
    if got:
        os.write(w_in, b"x" * len(got))
os.close(w_in); os.waitpid(pid, 0)
sys.stdout.buffer.write(data)
"#;

/// A card for a program that never reads `.env`: the agent holds the FIFO through an ordinary
/// program it started with the descriptor inherited, keeps its own copy parked in a socket,
/// reads every piece itself and makes the shown holder's byte count grow by feeding its
/// standard input. The human approves "`sha256sum` wants to read `.env`"; the text goes to
/// the agent, and the audit says `mount_read` served to `sha256sum` (was a LEAK: 2 of 2 runs,
/// the whole text). Held since: before each piece a thread of the reader must be blocked
/// reading the FIFO through its own descriptor (`/proc/PID/task/*/syscall`); `sha256sum`
/// waits on its standard input, so nothing is written (`mount_reclaimed` after 5 s).
#[test]
fn a_stand_in_reader_on_the_card_while_the_agent_reads_the_text() {
    let (got, whole, reported) = stand_in();
    assert!(
        got == 0 || reported,
        "the agent read {got} bytes ({whole} values whole) under a card for sha256sum, unreported"
    );
}

/// Runs the stand-in agent (`STAND_IN`) against an approved card: (bytes the agent read,
/// values whole among them, whether the broker reported a possible theft).
fn stand_in() -> (usize, usize, bool) {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let agent = Command::new("python3")
        .args([
            "-c",
            STAND_IN,
            p.env_file().to_str().unwrap(),
            p.tmp.path().join("stand-in-ready").to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&p, "stand-in-ready");
    let card = wait_card(&h);
    assert!(card.to_string().contains("sha256sum"), "{card}");
    approve_card(&h, &card, &[]);
    let got = wait_output(agent, Duration::from_secs(60));
    assert!(got.status.success(), "agent failed: {}", text(&got.stderr));
    let audit = h.audit_text();
    let whole = vals
        .iter()
        .filter(|(_, v)| crate::harness::contains(&got.stdout, v))
        .count();
    for e in audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"].as_str().is_some_and(|n| n.starts_with("mount_")))
    {
        eprintln!("audit: {} {}", e["event"], e["why"]);
    }
    let reported = audit.contains("\"mount_read_suspect\"");
    eprintln!(
        "stand-in: the agent read {} bytes, {whole} of {} values whole; reported {reported}",
        got.stdout.len(),
        vals.len()
    );
    (got.stdout.len(), whole, reported)
}
