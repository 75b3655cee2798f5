//! Red team of issue 22 (`.env` FIFO mounts): a prompt-injected agent with the human's uid, a
//! shell and `/proc`, trying to read a mount's values while the human approves an honest
//! reader's card, or to be served by a grant the human made for another process.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Home, contains, text, wait_output};
use crate::mount::{
    Project, approve_card, finished, mount, nul_pairs, store, values, wait_card, want,
};

/// The agent's side: finds the honest reader holding the mount read-only, then, by `mode`:
/// - `proc`: stops it (`SIGSTOP`, same uid) before the approval, waits for the approval's swap
///   of the FIFO, opens the served FIFO through `/proc/READER/fd/N` and drains it;
/// - `link-nostop`: made a hard link to the FIFO before the read, opens the served FIFO by that
///   name after the swap;
/// - `slow`: the reader is slow to read; right after the swap the thief opens
///   `/proc/READER/fd/N` and keeps reading it (non-blocking) for 4 s, waiting for the write;
/// - `partial-stop`: waits until the reader has read part of the text (`argv[5]` appears),
///   stops it, waits, then drains the rest through `/proc/READER/fd/N`.
///
/// Touches `argv[4]` once it is in position (the test approves only then). Prints what it read
/// on stdout (the test only searches it, never shows it).
const THIEF: &str = r#"
import os, sys, time, signal
path, mode, link, ready, started = sys.argv[1:6]
st = os.stat(path); dev, ino = st.st_dev, st.st_ino
if mode == "link-nostop":
    os.link(path, link)
me = os.getpid(); pid = fdn = None; t0 = time.time()
while pid is None and time.time() - t0 < 20:
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == me:
            continue
        try:
            for f in os.listdir(f"/proc/{p}/fd"):
                try:
                    s = os.stat(f"/proc/{p}/fd/{f}")
                    if s.st_dev != dev or s.st_ino != ino:
                        continue
                    fl = [l for l in open(f"/proc/{p}/fdinfo/{f}") if l.startswith("flags:")][0]
                    if int(fl.split()[1], 8) & 3 == 0:
                        pid, fdn = int(p), f
                except OSError:
                    pass
        except OSError:
            pass
    time.sleep(0.01)
assert pid is not None, "no reader"
time.sleep(0.2)
if mode == "proc":
    os.kill(pid, signal.SIGSTOP)
open(ready, "w").close()
t0 = time.time()
while os.stat(path).st_ino == ino and time.time() - t0 < 30:
    time.sleep(0.005)
src = link if mode.startswith("link") else f"/proc/{pid}/fd/{fdn}"
data = b""
def drain(fd):
    global data
    while True:
        try:
            b = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        if not b:
            return
        data += b
if mode == "slow":
    fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    t0 = time.time()
    while time.time() - t0 < 4:
        drain(fd); time.sleep(0.001)
elif mode == "partial-stop":
    t0 = time.time()
    while not os.path.exists(started) and time.time() - t0 < 20:
        time.sleep(0.001)
    os.kill(pid, signal.SIGSTOP)
    time.sleep(0.5)
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
        drain(fd)
    finally:
        os.kill(pid, signal.SIGCONT)
else:
    time.sleep(0.5)
    fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
    drain(fd)
    if mode == "proc":
        os.kill(pid, signal.SIGCONT)
sys.stdout.buffer.write(data)
"#;

/// An honest program that loads `.env` and prints only how many bytes it read.
const HONEST: &str = "import sys\nsys.stdout.write(str(len(open('.env').read())))\n";

/// Runs the thief in `mode` against an honest reader (`reader`, python code run in the
/// project; `{started}` in it is replaced by a marker path), approves the reader's card once
/// the thief is in position, and checks that the thief read no value. Returns the honest
/// reader's output and the audit.
fn steal(mode: &str, reader: &str) -> (String, String) {
    let h = Home::new();
    // The layers behind the count of openings, which would refuse these thieves' openings
    // before the first piece (`redteam_s11_mounts.rs`).
    h.without_open_count();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let env_file = p.env_file();
    let link = p.tmp.path().join("hardlink");
    let ready = p.tmp.path().join("thief-ready");
    let started = p.tmp.path().join("reader-started");
    let thief = Command::new("python3")
        .args([
            "-c",
            THIEF,
            env_file.to_str().unwrap(),
            mode,
            link.to_str().unwrap(),
            ready.to_str().unwrap(),
            started.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the thief time to stat (and link) the FIFO before the honest reader opens it.
    std::thread::sleep(Duration::from_millis(500));
    let code = reader.replace("{started}", started.to_str().unwrap());
    let reader = p.reader(&["python3", "-c", &code], &[]);
    let card = wait_card(&h);
    // The card is the honest reader's: nothing on it names the thief.
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
    let leaked = vals
        .iter()
        .filter(|(_, v)| contains(&stolen.stdout, v.split(' ').next_back().unwrap_or(v)))
        .count();
    assert_eq!(
        leaked,
        0,
        "the thief read values ({} bytes); honest reader read {}",
        stolen.stdout.len(),
        text(&honest.stdout)
    );
    assert!(
        stolen.status.success(),
        "thief failed: {}",
        text(&stolen.stderr)
    );
    (text(&honest.stdout), h.audit_text())
}

/// The agent stops the approved reader before the approval and drains the pipe through
/// `/proc/READER/fd/N` after the write. Held: a stopped reader is never written to (the
/// thief reads nothing, the reader reads zero bytes). (This replay used to approve without
/// waiting for the stop, so the approval could land before it and the honest reader was
/// served, with nothing for the thief: a race of the test, not a leak.)
#[test]
fn a_stopped_reader_is_never_written_to() {
    let (honest, audit) = steal("proc", HONEST);
    assert_eq!(honest, "0", "{audit}");
    assert!(audit.contains("mount_not_written"), "{audit}");
    assert!(audit.contains("is stopped or traced"), "{audit}");
}

/// A hard link made to the FIFO before the read names the served FIFO after the swap. Held:
/// the broker writes only when the served FIFO has no name left (`st_nlink == 0`).
#[test]
fn a_fifo_with_a_hard_link_is_never_written_to() {
    let (honest, audit) = steal("link-nostop", HONEST);
    assert_eq!(honest, "0", "{audit}");
    assert!(audit.contains("mount_not_written"), "{audit}");
    assert!(audit.contains("has another name"), "{audit}");
}

/// A reader slow to read (it opens `.env`, then works for 2 s): the thief opens
/// `/proc/READER/fd/N` right after the swap and keeps reading, to get the text the broker
/// would leave in the pipe. Held: the broker writes only once the reader waits for input,
/// and then sees the thief holding the FIFO: nothing is written.
#[test]
fn a_slow_readers_pipe_is_not_left_for_a_thief() {
    let (honest, audit) = steal(
        "slow",
        "import sys, time\nf = open('.env')\ntime.sleep(2)\nsys.stdout.write(str(len(f.read())))\n",
    );
    assert_eq!(honest, "0", "{audit}");
    assert!(audit.contains("other than the approved reader"), "{audit}");
}

/// A reader that reads part of the text (one `read` of up to 10 bytes), then is stopped by the
/// agent, which drains the rest through `/proc/READER/fd/N` half a second later. Held: the
/// broker sees the stop with text unread, takes back the rest itself and ends the grant; the
/// thief reads nothing. (The reader keeps what it read, the first piece of the text: a
/// tampered read is cut, not completed; the audit's counts add up to it.)
#[test]
fn a_reader_stopped_after_reading_part_gets_the_rest_taken_back() {
    let (honest, audit) = steal(
        "partial-stop",
        "import sys, time\nf = open('.env', 'rb', buffering=0)\na = f.read(10)\nopen('{started}', 'w').close()\ntime.sleep(1)\nb = f.read()\nsys.stdout.write(str(len(a) + len(b)))\n",
    );
    let reclaimed: serde_json::Value = audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "mount_reclaimed")
        .unwrap_or_else(|| panic!("no mount_reclaimed entry: {audit}"));
    let written = reclaimed["bytes_written"].as_u64().unwrap();
    let back = reclaimed["bytes_taken_back"].as_u64().unwrap();
    let read: u64 = honest.parse().unwrap();
    assert!(read > 0 && read <= 10, "{audit}");
    assert_eq!(read, written - back, "{audit}");
    assert!(
        audit.contains("was stopped or traced with the text unread"),
        "{audit}"
    );
    assert!(audit.contains("a mount read was tampered with"), "{audit}");
}

/// A grant with a TTL, made for `bash -c '. ./.env; echo loaded'`: the agent starts the very
/// same argv from the same directory with `BASH_ENV` pointing at its own script, which dumps
/// every shell variable at exit. Held: the grant is bound to the reader's code-loading
/// environment (the run path's list, by digest): the hostile start is a new request with its
/// own card, and denied it reads nothing.
#[test]
fn a_ttl_grant_does_not_serve_the_same_argv_with_a_hostile_environment() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let argv = ["bash", "-c", ". ./.env; echo loaded"];
    let r = p.reader(&argv, &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &["--ttl", "10m"]);
    assert_eq!(text(&finished(r).stdout), "loaded\n");
    // The grant serves the same start again, without a card.
    assert_eq!(text(&finished(p.reader(&argv, &[])).stdout), "loaded\n");
    let evil = p.tmp.path().join("evil.sh");
    std::fs::write(&evil, "trap 'set >&2' EXIT\n").unwrap();
    let r = p.reader(&argv, &[("BASH_ENV", evil.to_str().unwrap())]);
    let card = wait_card(&h);
    assert!(
        card["risk"]
            .to_string()
            .contains("code-loading-environment"),
        "{}",
        card["risk"]
    );
    assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
    let o = finished(r);
    for (_, v) in &vals {
        assert!(
            !contains(&o.stderr, v),
            "the hostile environment saw a value"
        );
    }
}

/// Held: a process that writes into the FIFO while the approved reader waits (to add lines to
/// what it reads) makes the broker write nothing: the reader reads only the agent's bytes,
/// never a mix, and no value.
#[test]
fn lines_written_into_the_fifo_before_the_write_make_the_read_empty_of_values() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let reader = p.reader(
        &[
            "python3",
            "-c",
            "import sys, time\nf = open('.env', 'rb')\ntime.sleep(1.5)\nsys.stdout.buffer.write(f.read())\n",
        ],
        &[],
    );
    let card = wait_card(&h);
    // The agent writes through the reader's descriptor and closes at once (no holder left).
    let pid = card["client"]["pid"].as_u64().or(card["pid"].as_u64());
    let inject = format!(
        "import os\np = {pid:?}\nfor f in os.listdir(f'/proc/{{p}}/fd'):\n    try:\n        if os.stat(f'/proc/{{p}}/fd/{{f}}').st_ino == os.stat('.env').st_ino:\n            fd = os.open(f'/proc/{{p}}/fd/{{f}}', os.O_WRONLY | os.O_NONBLOCK); os.write(fd, b'EVIL=1\\n'); os.close(fd)\n    except OSError: pass\n",
        pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "0".into())
    );
    let inj = Command::new("python3")
        .args(["-c", &inject])
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(inj.status.success(), "{}", text(&inj.stderr));
    approve_card(&h, &card, &[]);
    let o = finished(reader);
    // The reader reads the agent's line (or nothing: the broker, looking for a writer left
    // after it refused the read, takes out what is in the pipe) and nothing of the broker's.
    assert!(
        ["EVIL=1\n", ""].contains(&text(&o.stdout).as_str()),
        "{}",
        text(&o.stdout).len()
    );
    assert_ne!(nul_pairs(&o.stdout), want(&vals));
    assert!(
        h.audit_text()
            .contains("something else was already written")
    );
    for (_, v) in &vals {
        assert!(
            !contains(&o.stdout, v),
            "a value was served into a poisoned pipe"
        );
    }
}

/// The card's argv is what the reader says of itself (`/proc/PID/cmdline`), which a process
/// may rewrite: a Node script sets `process.title` to `vite` before it opens `.env`. Held: the
/// rewrite (argv padded with NULs, a first word that is not the program that runs) is flagged
/// `argv-not-the-executable`, the headline names the executable that runs (`node`), and no
/// grant serves such a reader without a card.
#[test]
fn a_reader_that_rewrites_its_cmdline_is_flagged_and_named_by_its_executable() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let evil = "process.title = 'vite';\nconst fs = require('fs');\nconst t = fs.readFileSync('.env', 'utf8');\nprocess.stdout.write(t);\n// padding so that the title fits in argv: ..................................................";
    let r = p.reader(&["node", "-e", evil], &[]);
    let card = wait_card(&h);
    assert!(
        card["risk"].to_string().contains("argv-not-the-executable"),
        "{}",
        card["risk"]
    );
    let exe = card["executable"]["path"].as_str().unwrap_or("").to_owned();
    assert!(
        exe.rsplit('/').next().unwrap_or("").starts_with("node"),
        "{card}"
    );
    let shown = h.ok(&["requests"]);
    assert!(shown.contains(&format!("running {exe}")), "{shown}");
    assert!(shown.contains("argv-not-the-executable"), "{shown}");
    assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
    let o = wait_output(r, Duration::from_secs(30));
    for (_, v) in &vals {
        assert!(!contains(&o.stdout, v), "the hidden script got a value");
    }
}

/// The reader's environment on the card: `BASH_ENV` (like `LD_PRELOAD`, `NODE_OPTIONS`,
/// `PYTHONSTARTUP`) makes an honest-looking `bash -c '. ./.env; ...'` run the agent's code.
/// Held: the card flags `code-loading-environment` and shows the variable and its value.
#[test]
fn a_hostile_environment_is_on_the_card() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let evil = p.tmp.path().join("evil.sh");
    std::fs::write(&evil, "trap 'set >&2' EXIT\n").unwrap();
    let r = p.reader(
        &["bash", "-c", ". ./.env; echo loaded"],
        &[("BASH_ENV", evil.to_str().unwrap())],
    );
    let card = wait_card(&h);
    assert!(
        card["risk"]
            .to_string()
            .contains("code-loading-environment"),
        "{}",
        card["risk"]
    );
    let shown = h.ok(&["requests"]);
    assert!(
        shown.contains("BASH_ENV") && shown.contains("evil.sh"),
        "{shown}"
    );
    assert!(shown.contains("in the reader's own environment"), "{shown}");
    assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
    let o = finished(r);
    for (_, v) in &vals {
        assert!(!contains(&o.stderr, v), "BASH_ENV saw a value");
    }
}

/// Issue 21's stale temp-file cleanup at broker start, given names it matches that are not the
/// broker's leftovers: a symlink to a file of the human's, a directory, a hard link. Held: only
/// the hard link's name goes (a regular file in the home); what they point at stays.
#[test]
fn the_stale_temp_cleanup_follows_no_symlink_and_removes_no_directory() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "fake-token-for-cleanup-test");
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, b"the human's file").unwrap();
    let link = h.path().join(".vault.kv.1.2.tmp");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let dir = h.path().join(".vault.kv.3.4.tmp");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), b"x").unwrap();
    let hard = h.path().join(".vault.kv.5.6.tmp");
    std::fs::hard_link(&precious, &hard).unwrap();
    h.ok(&["daemon", "stop"]);
    let o = h.run_stdin(
        &["unlock", "--passphrase-stdin"],
        &format!("{}\n", crate::harness::PASS),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&precious).unwrap(), b"the human's file");
    assert!(
        std::fs::symlink_metadata(&link).is_ok(),
        "the symlink is not the broker's"
    );
    assert!(dir.join("inside").exists(), "a directory was emptied");
    // The cleanup ran: the hard link (a regular file of the matched name) is gone.
    assert!(!hard.exists(), "the cleanup did not run");
}

/// `dumps-file` is judged by name: `cat` under a symlink named `python3` is still flagged (the
/// executable resolves to `cat`), held.
#[test]
fn cat_behind_a_symlink_named_python3_is_still_flagged_as_a_dump() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let cat = which("cat");
    let fake = p.tmp.path().join("python3");
    std::os::unix::fs::symlink(&cat, &fake).unwrap();
    let r = p.reader(&[fake.to_str().unwrap(), ".env"], &[]);
    let card = wait_card(&h);
    assert!(
        card["risk"].to_string().contains("dumps-file"),
        "{}",
        card["risk"]
    );
    assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
    assert!(finished(r).stdout.is_empty());
}

/// A copy of `cat` named `python3` (a new inode, its own path). Held: `dumps-file` also goes
/// by the SHA-256 of the known dumpers installed on the system, and the copy (in a directory
/// the agent can write) is flagged `workspace-executable`.
#[test]
fn a_renamed_copy_of_cat_is_flagged_as_a_dump() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let fake = p.tmp.path().join("python3");
    std::fs::copy(which("cat"), &fake).unwrap();
    let r = p.reader(&[fake.to_str().unwrap(), ".env"], &[]);
    let card = wait_card(&h);
    let risk = card["risk"].to_string();
    assert!(risk.contains("dumps-file"), "{risk}");
    assert!(risk.contains("workspace-executable"), "{risk}");
    assert!(h.run(&["deny", &card["id"].to_string()]).status.success());
    assert!(finished(r).stdout.is_empty());
}

fn which(name: &str) -> std::path::PathBuf {
    for d in ["/usr/bin", "/bin"] {
        let p = std::path::Path::new(d).join(name);
        if p.exists() {
            return std::fs::canonicalize(p).unwrap();
        }
    }
    panic!("no {name}");
}
