//! Mounts (issue 22): a `.env` that exists only for an approved reader. Real readers
//! (python-dotenv, Node's dotenv, `sh`), an agent's `cat` denied, readers that misbehave, and
//! the FIFO replaced or deleted under the broker. After every read no regular file under the
//! project, the home or the reader's TMPDIR holds a value.
#![allow(clippy::print_stderr)] // says why a test skips

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Home, contains, encodings, setsid, text, wait_output};

/// Longest a reader may take once its request was answered.
pub(crate) const READER_LIMIT: Duration = Duration::from_secs(30);

/// A fresh random tag (hex): every test value carries one, so any copy of it is findable.
fn tag() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Taken for writing by the tests whose agent makes io_uring worker threads (while one runs,
/// the broker serves no mount read: `docs/mounts.md`), for reading by every other project:
/// the two never run at once in this test binary.
static IO_URING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A project's turn (see [`IO_URING`]), held as long as the project.
#[allow(dead_code)] // held, never read
enum Turn {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

/// A project directory and a TMPDIR for its readers.
pub(crate) struct Project {
    dir: tempfile::TempDir,
    pub(crate) tmp: tempfile::TempDir,
    _turn: Turn,
}

impl Project {
    pub(crate) fn new() -> Project {
        Project::with(Turn::Shared(
            IO_URING.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
    /// A project whose test makes io_uring worker threads: no other project's test runs
    /// meanwhile.
    pub(crate) fn with_io_uring() -> Project {
        Project::with(Turn::Alone(
            IO_URING.write().unwrap_or_else(|e| e.into_inner()),
        ))
    }
    fn with(turn: Turn) -> Project {
        Project {
            dir: tempfile::Builder::new()
                .prefix("kvp")
                .tempdir_in("/tmp")
                .unwrap(),
            tmp: tempfile::Builder::new()
                .prefix("kvt")
                .tempdir_in("/tmp")
                .unwrap(),
            _turn: turn,
        }
    }
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
    pub(crate) fn env_file(&self) -> PathBuf {
        self.path().join(".env")
    }
    /// A reader: `argv` in the project, detached from any terminal, TMPDIR its own.
    pub(crate) fn reader(&self, argv: &[&str], extra_env: &[(&str, &str)]) -> Child {
        let mut c = Command::new(setsid());
        c.arg("-w")
            .args(argv)
            .current_dir(self.path())
            .env("TMPDIR", self.tmp.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra_env {
            c.env(k, v);
        }
        c.spawn().unwrap()
    }
}

/// Values in every form the writer knows (bare, single-quoted, double-quoted, multi-line), each
/// with a fresh tag.
pub(crate) fn values() -> Vec<(&'static str, String)> {
    let t = tag();
    vec![
        ("PLAIN", format!("plain-{t}")),
        ("SPACED", format!(" two words {t} ")),
        ("QUOTE", format!("it's {t}")),
        ("LINES", format!("line1 {t}\nline2")),
        ("SHELLY", format!("$HOME # not a comment `x` \"q\" {t}")),
        ("UNI", format!("p\u{e4}ss w\u{f6}rd {t}")),
        ("WIN", format!("C:\\dir\\new {t}")),
    ]
}

pub(crate) fn store(h: &Home, vals: &[(&str, String)]) {
    for (k, v) in vals {
        h.set("demo", k, v);
    }
}

pub(crate) fn mount(h: &Home, p: &Project) {
    let f = p.env_file();
    h.ok(&["mount", "demo", f.to_str().unwrap()]);
    assert!(
        std::fs::symlink_metadata(&f).unwrap().file_type().is_fifo(),
        "the mount is a FIFO"
    );
}

/// Regular files under `root` (FIFOs and other special files are never opened).
fn regular_files(root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(root) else {
        return;
    };
    for e in rd.flatten() {
        let path = e.path();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if m.is_dir() {
            regular_files(&path, out);
        } else if m.is_file() {
            out.push(path);
        }
    }
}

/// No regular file under the project, the keyveil home (the CLI's HOME too) or the readers'
/// TMPDIR holds any value, in any encoding the harness knows.
pub(crate) fn assert_no_copy_on_disk(h: &Home, p: &Project, vals: &[(&str, String)]) {
    let mut files = Vec::new();
    for root in [p.path(), h.path(), p.tmp.path()] {
        regular_files(root, &mut files);
    }
    for f in files {
        if f.file_name().is_some_and(|n| n == "vault.kv") {
            continue;
        }
        let b = std::fs::read(&f).unwrap_or_default();
        for (k, v) in vals {
            for enc in encodings(v) {
                assert!(
                    !contains(&b, &enc),
                    "{} holds the value of {k}",
                    f.display()
                );
            }
            let t = v.rsplit(' ').find(|w| w.len() >= 16).unwrap_or(v);
            assert!(
                !contains(&b, t.trim()),
                "{} holds the tag of {k}",
                f.display()
            );
        }
    }
}

/// The reader the human and the agent both start in the red-team tests of `--ttl` grants: a
/// shell that sources `.env` and prints each variable as `NAME\0VALUE\0` (builtins only: no
/// dumper).
pub(crate) const TTL_SCRIPT: &str = ". ./.env; for n in LINES PLAIN QUOTE SHELLY SPACED UNI WIN; do eval \"v=\\$$n\"; printf '%s\\0%s\\0' \"$n\" \"$v\"; done";

/// A copy of `sh` named as an agent host (`claude`): a process under it is `agent-reader`.
pub(crate) fn agent_host(p: &Project) -> PathBuf {
    let host = p.tmp.path().join("claude");
    if !host.exists() {
        std::fs::copy("/bin/sh", &host).unwrap();
    }
    host
}

/// The human's `--ttl 10m` grant of the mount of `p`: its own `sh -c TTL_SCRIPT` (no agent
/// host among its parents) gets a card without `agent-reader`, approved with `--ttl 10m`, and
/// reads every value of `vals`. Returns the card.
pub(crate) fn ttl_grant(h: &Home, p: &Project, vals: &[(&str, String)]) -> serde_json::Value {
    let human = p.reader(&["sh", "-c", TTL_SCRIPT], &[]);
    let card = wait_card(h);
    assert!(
        !card.to_string().contains("agent-reader"),
        "the human's reader is not the agent's: {card}"
    );
    approve_card(h, &card, &["--ttl", "10m"]);
    assert_eq!(nul_pairs(&finished(human).stdout), want(vals));
    card
}

/// A home with the values stored, a project with its mount, and the human's `--ttl` grant of
/// it ([`ttl_grant`]).
pub(crate) fn ttl_granted() -> (Home, Vec<(&'static str, String)>, Project) {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    ttl_grant(&h, &p, &vals);
    (h, vals, p)
}

pub(crate) fn pending(h: &Home) -> Vec<serde_json::Value> {
    h.json(&["requests", "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The request a reader made (waits for it), as `requests --json` shows it.
pub(crate) fn wait_card(h: &Home) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        if let Some(r) = pending(h).pop() {
            return r;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no request appeared; status: {}; mounts: {}; log: {}",
            h.ok(&["status"]),
            h.ok(&["mounts"]),
            std::fs::read_to_string(h.path().join("broker.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

pub(crate) fn approve_card(h: &Home, card: &serde_json::Value, extra: &[&str]) {
    let o = h.approve(card["id"].as_u64().unwrap(), extra);
    assert!(o.status.success(), "approve failed: {}", text(&o.stderr));
}

/// A reader answered: its output, its stderr shown on failure.
pub(crate) fn finished(c: Child) -> Output {
    let o = wait_output(c, READER_LIMIT);
    assert!(o.status.success(), "reader failed: {}", text(&o.stderr));
    o
}

/// Parses `NAME\0VALUE\0...` as the readers below print it.
pub(crate) fn nul_pairs(out: &[u8]) -> Vec<(String, String)> {
    let s = text(out);
    let parts: Vec<&str> = s.split('\0').collect();
    parts
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_owned(), c[1].to_owned()))
        .collect()
}

pub(crate) fn want(vals: &[(&str, String)]) -> Vec<(String, String)> {
    let mut w: Vec<(String, String)> = vals
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    w.sort();
    w
}

fn python_dotenv() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import dotenv.main as m; assert hasattr(m, '_is_file_or_fifo')",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn python_dotenv_reads_exactly_the_approved_values_and_nothing_lands_on_disk() {
    if !python_dotenv() {
        eprintln!(
            "SKIPPED: python3 with python-dotenv >= 1.1 (reads FIFOs) is not installed; `pip install python-dotenv`"
        );
        return;
    }
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let script = "import sys\nfrom dotenv import dotenv_values\nd = dotenv_values('.env')\nsys.stdout.write(''.join(k + '\\0' + v + '\\0' for k, v in sorted(d.items())))\n";
    let r = p.reader(&["python3", "-c", script], &[]);
    let card = wait_card(&h);
    assert_eq!(card["mount"]["path"], p.env_file().to_str().unwrap());
    assert!(
        card["argv"][0].as_str().unwrap().contains("python"),
        "{card}"
    );
    assert_eq!(card["client"]["kind"], "mount");
    let shown = h.ok(&["requests"]);
    assert!(shown.contains("wants to read"), "{shown}");
    assert!(shown.contains("NOT redacted"), "{shown}");
    // A copy of an opening handed down before exec is out of every look: the card says so.
    assert!(shown.contains("`.env` already open"), "{shown}");
    approve_card(&h, &card, &[]);
    let o = finished(r);
    let mut got = nul_pairs(&o.stdout);
    got.sort();
    assert_eq!(got, want(&vals));
    assert_no_copy_on_disk(&h, &p, &vals);
    // Still a FIFO (a fresh one) and still served.
    assert!(
        std::fs::symlink_metadata(p.env_file())
            .unwrap()
            .file_type()
            .is_fifo()
    );
    let m = h.json(&["mounts", "--json"]);
    assert_eq!(m[0]["reads"], 1, "{m}");
}

/// Node's `dotenv`, installed into a directory of the test target (skipped without npm or
/// network).
fn node_dotenv() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("node-dotenv");
    let module = dir.join("node_modules/dotenv/package.json");
    if module.is_file() {
        return Some(dir);
    }
    std::fs::create_dir_all(&dir).ok()?;
    let mut c = Command::new(setsid());
    c.args([
        "-w",
        "npm",
        "install",
        "--no-save",
        "--no-audit",
        "--no-fund",
        "dotenv@17",
    ])
    .current_dir(&dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let ok = c
        .spawn()
        .ok()
        .map(|ch| wait_output(ch, Duration::from_secs(180)))
        .is_some_and(|o| o.status.success());
    (ok && module.is_file()).then_some(dir)
}

#[test]
fn node_dotenv_reads_exactly_the_approved_values() {
    let Some(dir) = node_dotenv() else {
        eprintln!("SKIPPED: Node's dotenv could not be installed with npm (no npm or no registry)");
        return;
    };
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let script = "const r = require('dotenv').config({ path: '.env', quiet: true });\nif (r.error) { throw r.error }\nprocess.stdout.write(Object.keys(r.parsed).sort().map(k => k + '\\0' + r.parsed[k] + '\\0').join(''))\n";
    let np = dir.join("node_modules");
    let r = p.reader(
        &["node", "-e", script],
        &[("NODE_PATH", np.to_str().unwrap())],
    );
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let o = finished(r);
    let mut got = nul_pairs(&o.stdout);
    got.sort();
    assert_eq!(got, want(&vals));
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn sh_sources_it_and_a_grant_with_a_ttl_serves_the_same_reader_again() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let script = ". ./.env; for n in LINES PLAIN QUOTE SHELLY SPACED UNI WIN; do eval \"v=\\$$n\"; printf '%s\\0%s\\0' \"$n\" \"$v\"; done";
    let r = p.reader(&["sh", "-c", script], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &["--ttl", "10m"]);
    let o = finished(r);
    assert_eq!(nul_pairs(&o.stdout), want(&vals));
    // The same executable, argv and directory again: served by the grant, no new card.
    let again = finished(p.reader(&["sh", "-c", script], &[]));
    assert_eq!(nul_pairs(&again.stdout), want(&vals));
    assert!(pending(&h).is_empty(), "no request for a covered read");
    // Another command is another request.
    let other = p.reader(&["sh", "-c", ". ./.env; echo other"], &[]);
    let card2 = wait_card(&h);
    assert_ne!(card2["id"], card["id"]);
    let o = h.run(&["deny", &card2["id"].to_string()]);
    assert!(o.status.success());
    let o = finished(other);
    assert_eq!(text(&o.stdout), "other\n");
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn an_agents_cat_is_flagged_as_a_dump_and_a_denial_reads_nothing() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let r = p.reader(&["cat", ".env"], &[]);
    let card = wait_card(&h);
    let risk = card["risk"].to_string();
    assert!(risk.contains("dumps-file"), "{risk}");
    let shown = h.ok(&["requests"]);
    assert!(shown.contains("wants to read"), "{shown}");
    assert!(shown.contains("revoking"), "{shown}");
    let o = h.run(&["deny", &card["id"].to_string()]);
    assert!(o.status.success());
    let o = finished(r);
    assert!(
        o.stdout.is_empty(),
        "a denied read is empty, got {} bytes",
        o.stdout.len()
    );
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn an_opener_for_writing_or_a_second_reader_gets_nothing() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    // O_RDWR by the agent itself, posing as a reader: refused at once, no request at all.
    let rdwr = p.reader(
        &[
            "python3",
            "-c",
            "import os, time\nfd = os.open('.env', os.O_RDWR)\ntime.sleep(2)\n",
        ],
        &[],
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        assert!(pending(&h).is_empty(), "an O_RDWR opener made a request");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = wait_output(rdwr, READER_LIMIT);
    assert!(h.audit_text().contains("mount_refused"));
    // Two readers: the card shows the first; a second opens while it waits; the approval
    // writes nothing, and both read end-of-file.
    let first = p.reader(
        &["python3", "-c", "import sys\nf = open('.env')\nsys.stdin.close()\nimport time; time.sleep(1)\nsys.stdout.write(repr(f.read()))\n"],
        &[],
    );
    let card = wait_card(&h);
    let second = p.reader(&["cat", ".env"], &[]);
    // The second holds the FIFO once its open returned (the broker's writer is open).
    std::thread::sleep(Duration::from_millis(500));
    approve_card(&h, &card, &[]);
    let a = finished(first);
    let b = finished(second);
    assert_eq!(text(&a.stdout), "''");
    assert!(b.stdout.is_empty());
    assert!(h.audit_text().contains("mount_not_written"));
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn a_fifo_replaced_or_deleted_by_someone_else_is_never_written() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    // Replaced while a request waits: the approval writes nothing, the file stays as it is.
    let r = p.reader(&["cat", ".env"], &[]);
    let card = wait_card(&h);
    let decoy = p.path().join("decoy");
    std::fs::write(&decoy, "DECOY=1\n").unwrap();
    std::fs::rename(&decoy, p.env_file()).unwrap();
    approve_card(&h, &card, &[]);
    let o = finished(r);
    assert!(o.stdout.is_empty(), "nothing was written to the reader");
    assert_eq!(std::fs::read_to_string(p.env_file()).unwrap(), "DECOY=1\n");
    let t0 = Instant::now();
    loop {
        let m = h.json(&["mounts", "--json"]);
        if m[0]["state"] == "replaced" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "state: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reads of the replacement are plain reads of a regular file: never a request, never a value.
    let o = finished(p.reader(&["cat", ".env"], &[]));
    assert_eq!(text(&o.stdout), "DECOY=1\n");
    assert!(pending(&h).is_empty());
    // Deleted: `missing`; unmount leaves whatever is at the path alone.
    std::fs::remove_file(p.env_file()).unwrap();
    let t0 = Instant::now();
    while h.json(&["mounts", "--json"])[0]["state"] != "missing" {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(p.env_file(), "MINE=1\n").unwrap();
    h.ok(&["unmount", p.env_file().to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(p.env_file()).unwrap(), "MINE=1\n");
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn readers_that_never_read_or_leave_early_do_not_hurt_the_broker() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    // Leaves before the approval: the request is withdrawn (expired, not denied).
    let mut early = p.reader(&["cat", ".env"], &[]);
    let card = wait_card(&h);
    early.kill().unwrap();
    let _ = early.wait();
    let t0 = Instant::now();
    while !pending(&h).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the request stayed pending"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(h.audit_text().contains("mount_reader_left"));
    let o = h.approve(card["id"].as_u64().unwrap(), &[]);
    assert!(
        !o.status.success(),
        "a withdrawn request cannot be approved"
    );
    // Opens, never reads, exits: the broker writes into the pipe and goes on.
    let lazy = p.reader(
        &[
            "python3",
            "-c",
            "import time\nf = open('.env')\ntime.sleep(1.5)\n",
        ],
        &[],
    );
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let _ = finished(lazy);
    h.ok(&["status"]);
    // The mount still serves.
    let r = p.reader(&["sh", "-c", ". ./.env; printf %s \"$PLAIN\""], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let o = finished(r);
    assert_eq!(text(&o.stdout), vals[0].1);
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn mounts_come_back_when_the_broker_restarts_and_unlocks() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    h.ok(&["daemon", "stop"]);
    let o = h.run_stdin(
        &["unlock", "--passphrase-stdin"],
        &format!("{}\n", crate::harness::PASS),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let m = h.json(&["mounts", "--json"]);
    assert_eq!(m[0]["path"], p.env_file().to_str().unwrap(), "{m}");
    let listed = std::fs::read_to_string(h.path().join("mounts.json")).unwrap();
    for (_, v) in &vals {
        assert!(!listed.contains(v.as_str()));
    }
    let r = p.reader(&["sh", "-c", ". ./.env; printf %s \"$PLAIN\""], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    assert_eq!(text(&finished(r).stdout), vals[0].1);
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn import_mount_puts_a_mount_in_place_of_the_plaintext_file() {
    let h = Home::new();
    let p = Project::new();
    let t = tag();
    std::fs::write(
        p.env_file(),
        format!("API_TOKEN=tok-{t}\nexport NAME='a b {t}'\n"),
    )
    .unwrap();
    let f = p.env_file();
    let o = h.run_stdin(
        &[
            "import",
            "demo",
            f.to_str().unwrap(),
            "--mount",
            "--passphrase-stdin",
        ],
        &format!("{}\n", crate::harness::PASS),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::symlink_metadata(&f).unwrap().file_type().is_fifo());
    let r = p.reader(
        &[
            "sh",
            "-c",
            ". ./.env; printf '%s|%s' \"$API_TOKEN\" \"$NAME\"",
        ],
        &[],
    );
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    assert_eq!(text(&finished(r).stdout), format!("tok-{t}|a b {t}"));
}

#[test]
fn no_request_may_claim_to_be_a_mount() {
    let h = Home::new();
    h.set("demo", "A", &format!("v-{}", tag()));
    let p = Project::new();
    let req = serde_json::json!({
        "op": "request_access",
        "client": {"kind": "mount", "name": p.env_file(), "version": "", "pid": 1},
        "environment": "demo", "variables": null, "argv": ["true"],
        "cwd": p.path(), "ttl_seconds": null, "reason": null
    });
    let reply = crate::oracle::raw(&h, &req);
    assert!(reply.to_string().contains("client kind `mount`"), "{reply}");
}

#[test]
fn mount_errors_say_what_to_do() {
    let h = Home::new();
    let p = Project::new();
    std::fs::write(p.env_file(), "A=1\n").unwrap();
    let o = h.run(&["mount", "demo", p.env_file().to_str().unwrap()]);
    assert!(!o.status.success());
    let e = text(&o.stderr);
    assert!(e.contains("already exists") && e.contains("hint:"), "{e}");
    assert_eq!(std::fs::read_to_string(p.env_file()).unwrap(), "A=1\n");
    let o = h.run(&["mount", "nope", p.path().join("x.env").to_str().unwrap()]);
    assert!(!o.status.success());
    // /proc holds no FIFOs.
    let o = h.run(&["mount", "demo", "/proc/keyveil-test.env"]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("hint:"), "{}", text(&o.stderr));
}

#[test]
fn sweep_never_opens_a_mount_and_finds_no_leak_in_it() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let f = p.env_file();
    for root in [p.path().to_str().unwrap(), f.to_str().unwrap()] {
        let o = h.run_stdin(
            &["sweep", "--passphrase-stdin", root],
            &format!("{}\n", crate::harness::PASS),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let out = text(&o.stdout);
        assert!(!out.contains("PLAIN") && !out.contains("QUOTE"), "{out}");
        // A mount is not a file the sweep failed to read: it is known to hold nothing.
        assert!(!out.contains("incomplete"), "{out}");
    }
    // Opening it would have made the sweep a reader: no request, nothing refused.
    assert!(pending(&h).is_empty());
    let m = h.json(&["mounts", "--json"]);
    assert_eq!(m[0]["refused"], 0, "{m}");
    assert!(!h.audit_text().contains("mount_refused"));
}

#[test]
fn a_value_readers_would_read_differently_makes_the_read_empty_not_partial() {
    let h = Home::new();
    let t = tag();
    let vals = vec![
        ("GOOD", format!("good-{t}")),
        ("BAD", format!("it's \"both\" {t}")),
    ];
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let r = p.reader(&["sh", "-c", ". ./.env; printf %s \"$GOOD\""], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &[]);
    let o = finished(r);
    assert!(
        o.stdout.is_empty(),
        "nothing, not the values that could be written"
    );
    // The broker says which variable, never its value, and goes on serving.
    let m = h.json(&["mounts", "--json"]);
    let last = m[0]["last"].as_str().unwrap_or_default().to_owned();
    assert!(last.contains("BAD"), "{m}");
    assert!(!last.contains(&t) && !h.audit_text().contains(&t));
    h.ok(&["status"]);
    assert_no_copy_on_disk(&h, &p, &vals);
}

#[test]
fn the_write_side_scan_after_a_run_never_opens_a_mount() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    // The run changes the FIFO's times: the scan sees it among the changed entries.
    let cwd = p.path().to_str().unwrap().to_owned();
    let o = h.run_approved(
        &["run", "--env", "demo", "--cwd", &cwd, "--", "touch", ".env"],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        std::fs::symlink_metadata(p.env_file())
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // Opening it would have made the broker a reader: no request, nothing refused.
    std::thread::sleep(Duration::from_millis(300));
    assert!(pending(&h).is_empty());
    let m = h.json(&["mounts", "--json"]);
    assert_eq!(
        (m[0]["reads"].as_u64(), m[0]["refused"].as_u64()),
        (Some(0), Some(0)),
        "{m}"
    );
    assert_no_copy_on_disk(&h, &p, &vals);
}
