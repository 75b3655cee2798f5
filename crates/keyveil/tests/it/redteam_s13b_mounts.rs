//! Red team s13b of issue 22 (`.env` mounts): a prompt-injected agent (same uid, shell,
//! `/proc`, the socket, the CLI) against three fixes of s13: a `--ttl` grant serves a later
//! reader only without a risk flag its card did not show (`Grant::covers`), the listing of a
//! path outlives an unmount (`Registry::keep_gone`/`carry_gone`), and `pin::files::writable_by`.
//! A held attack is a passing test; one that works is kept `#[ignore = "LEAK: ..."]` with what
//! it got (counts only, never a value).
#![allow(clippy::print_stderr)] // the figures of each attempt (counts only, never a value)

use std::time::{Duration, Instant};

use crate::harness::Home;
use crate::harness::{PASS, text};
use crate::mount::{
    Project, approve_card, finished, mount, nul_pairs, pending, store, values, wait_card, want,
};

/// The reader both the human and the agent start: a shell that sources `.env` and prints each
/// variable as `NAME\0VALUE\0` (builtins only: no dumper).
const SCRIPT: &str = ". ./.env; for n in LINES PLAIN QUOTE SHELLY SPACED UNI WIN; do eval \"v=\\$$n\"; printf '%s\\0%s\\0' \"$n\" \"$v\"; done";

/// The agent's launcher: forks, the parent exits at once; the child waits until it is
/// reparented (its parent, and so the agent host above it, gone from its chain), sends its
/// output to `argv[1]` and execs `sh -c "$S"` with its host's environment (not what a
/// `python3` shim added): the argv, executable, directory and environment of the human's reader.
const ORPHAN: &str = r#"
import os, sys, time
me = os.getpid()
raw = open(f"/proc/{os.getppid()}/environ", "rb").read().split(b"\0")
env = dict(kv.split(b"=", 1) for kv in raw if b"=" in kv)  # the host's, not a shim's
if os.fork() == 0:
    t0 = time.time()
    while os.getppid() == me and time.time() - t0 < 10:
        time.sleep(0.01)
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 1)
    os.dup2(os.open("/dev/null", os.O_WRONLY), 2)
    os.execvpe("sh", ["sh", "-c", env[b"S"].decode()], env)
"#;

/// A copy of `sh` named as an agent host (`claude`): a process under it is `agent-reader`.
fn agent_host(p: &Project) -> std::path::PathBuf {
    let host = p.tmp.path().join("claude");
    std::fs::copy("/bin/sh", &host).unwrap();
    host
}

/// How many of `vals` are in `got`, right.
fn right(vals: &[(&str, String)], got: &[(String, String)]) -> usize {
    vals.iter()
        .filter(|(n, v)| got.iter().any(|(k, w)| k == n && w == v))
        .count()
}

/// The s13 fix flags `agent-reader` from the reader's parents *when the broker looks*. The
/// agent's reader need not have the agent host among its parents then: the agent starts it
/// through a launcher that exits at once, and the reader execs the human's argv only once it
/// has been reparented (to init or a subreaper). Its flags are then those the human's card
/// showed, and the human's `--ttl` grant serves it with no card. Held when the agent's read
/// gets a card (flagged `agent-reader`) or nothing.
#[test]
#[ignore = "LEAK: a reader reparented to init before it opens `.env` has no agent-reader flag; the human's --ttl grant served the agent's orphan 7 of 7 values with no card (2 mount_read audited, 0 cards)"]
fn a_reader_reparented_away_from_the_agent_host_is_served_by_the_humans_ttl_grant() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let human = p.reader(&["sh", "-c", SCRIPT], &[]);
    let card = wait_card(&h);
    assert!(
        !card.to_string().contains("agent-reader"),
        "the human's reader is not the agent's"
    );
    approve_card(&h, &card, &["--ttl", "10m"]);
    assert_eq!(nul_pairs(&finished(human).stdout), want(&vals));
    let host = agent_host(&p);
    let out = p.tmp.path().join("agent.out");
    let launcher = p.reader(
        &[host.to_str().unwrap(), "-c", "python3 -c \"$W\" \"$O\"; :"],
        &[("S", SCRIPT), ("W", ORPHAN), ("O", out.to_str().unwrap())],
    );
    let _ = crate::harness::wait_output(launcher, Duration::from_secs(10));
    let t0 = Instant::now();
    let mut card2 = None;
    let mut got = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Some(c) = pending(&h).pop() {
            card2 = Some(c);
            break;
        }
        got = nul_pairs(&std::fs::read(&out).unwrap_or_default());
        if got.len() == vals.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(c) = card2 {
        eprintln!("the agent's orphan got a card, risk {}", c["risk"]);
        assert!(
            c.to_string().contains("agent-reader"),
            "a card without agent-reader"
        );
        assert!(h.run(&["deny", &c["id"].to_string()]).status.success());
        return;
    }
    let read = right(&vals, &got);
    eprintln!(
        "no card; the orphan read {read} of {} values; audit mount_read lines: {}",
        vals.len(),
        h.audit_text().matches("mount_read").count()
    );
    assert_eq!(
        read,
        0,
        "the agent's reader read {read} of {} values with no card",
        vals.len()
    );
}

/// Makes a refusal on the mount at `p`: an `O_RDWR` opener posing as a reader.
fn refusal(h: &Home, p: &Project) {
    let rdwr = p.reader(
        &[
            "python3",
            "-c",
            "import os, time\nfd = os.open('.env', os.O_RDWR)\ntime.sleep(1.5)\n",
        ],
        &[],
    );
    let _ = crate::harness::wait_output(rdwr, Duration::from_secs(10));
    let t0 = Instant::now();
    while !h.audit_text().contains("mount_refused") {
        assert!(t0.elapsed() < Duration::from_secs(10), "no refusal");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What `keyveil mounts --json` says the first mount was refused.
fn refused(h: &Home) -> u64 {
    let v = h.json(&["mounts", "--json"]);
    v.as_array()
        .and_then(|a| a.first())
        .map_or(0, |m| m["refused"].as_u64().unwrap_or(0))
}

/// `carry_gone` takes what an unmounted path kept out of the broker's memory *before* the new
/// mount is recorded; a mount that then fails to be recorded drops it. The agent (same uid,
/// owner of `KEYVEIL_HOME`) makes `mounts.json.tmp` a directory, so `Registry::save` cannot
/// write: `unmount` still succeeds (a failed save is only a warning), the `mount` that carries
/// the refusal fails, and after the directory is gone again a `mount` at the same path starts
/// at nothing. No factor at any step. Held when the listing still shows the refusal.
#[test]
fn a_failed_mount_after_an_unmount_drops_what_the_path_kept() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    refusal(&h, &p);
    let before = refused(&h);
    assert!(before > 0, "the refusal is listed");
    let env = p.env_file();
    let path = env.to_str().unwrap();
    let tmp = h.path().join("mounts.json.tmp");
    std::fs::create_dir(&tmp).unwrap();
    let u = h.run(&["unmount", path]);
    let m1 = h.run(&["mount", "demo", path]);
    std::fs::remove_dir(&tmp).unwrap();
    let m2 = h.run(&["mount", "demo", path]);
    let after = refused(&h);
    eprintln!(
        "refused before {before}, after {after}; unmount ok {}, blocked mount ok {}, mount ok {}",
        u.status.success(),
        m1.status.success(),
        m2.status.success()
    );
    assert!(
        after >= before || !m2.status.success(),
        "the listing forgot the refusal: {}",
        text(&m1.stderr)
    );
}

/// The broker keeps what an unmounted path said, and every count of the listing, in memory
/// only. The agent stops the broker (`keyveil daemon stop`: no factor); the human, finding the
/// vault locked, unlocks it, and the listing of the same mount, still at its path, shows no
/// refusal. Held when the listing still shows the refusal after the restart.
#[test]
#[ignore = "LEAK (stated in docs/mounts.md: the listing starts afresh when the broker restarts): the agent's `daemon stop` (no factor) and the human's unlock wipe the refusal from `keyveil mounts` (refused 1 -> 0, the mount still listed; the audit log keeps mount_refused)"]
fn the_agent_wipes_a_refusal_from_the_listing_by_stopping_the_broker() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    refusal(&h, &p);
    let before = refused(&h);
    assert!(before > 0, "the refusal is listed");
    let stop = h.run(&["daemon", "stop"]);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "unlock: {}", text(&o.stderr));
    let after = refused(&h);
    eprintln!(
        "refused before {before}, after {after}; agent's daemon stop ok {}",
        stop.status.success()
    );
    assert!(
        after >= before,
        "the listing forgot the refusal after a restart"
    );
}

/// Another spelling of the path: the agent unmounts through a symlinked parent and mounts
/// through another. The key is the canonical parent and the name both times, so what the path
/// kept is carried on. Held when the listing still shows the refusal.
#[test]
fn a_symlinked_spelling_of_the_path_does_not_wipe_the_refusal() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    refusal(&h, &p);
    let before = refused(&h);
    let a = p.tmp.path().join("a");
    let b = p.tmp.path().join("b");
    std::os::unix::fs::symlink(p.path(), &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    let u = h.run(&["unmount", a.join(".env").to_str().unwrap()]);
    let m = h.run(&["mount", "demo", b.join(".env").to_str().unwrap()]);
    let list = h.json(&["mounts", "--json"]);
    let after = refused(&h);
    eprintln!(
        "refused before {before}, after {after}; unmount ok {}, mount ok {}, mounts {}",
        u.status.success(),
        m.status.success(),
        list.as_array().map_or(0, Vec::len)
    );
    assert!(u.status.success() && m.status.success());
    assert!(after >= before, "the listing forgot the refusal");
}

/// The human approves its own `sh -c SCRIPT` with `--ttl 10m`; the agent then starts the same
/// reader `depth` shells below an agent host (`claude -c 'sh NEST depth; :'`, each level a
/// shell that starts the next and waits, the last one `exec`s `sh -c SCRIPT`). Returns the
/// risk flags of the card the agent's read got (`None`: no card) and how many values it read.
fn nested_read(depth: u32) -> (Option<String>, usize) {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let human = p.reader(&["sh", "-c", SCRIPT], &[]);
    let card = wait_card(&h);
    assert!(!card.to_string().contains("agent-reader"));
    approve_card(&h, &card, &["--ttl", "10m"]);
    assert_eq!(nul_pairs(&finished(human).stdout), want(&vals));
    let host = agent_host(&p);
    let nest = p.tmp.path().join("nest");
    std::fs::write(
        &nest,
        "if [ \"$1\" -gt 0 ]; then /bin/sh \"$0\" $(($1 - 1)); :; else exec sh -c \"$S\"; fi\n",
    )
    .unwrap();
    let d = depth.to_string();
    let agents = p.reader(
        &[host.to_str().unwrap(), "-c", "/bin/sh \"$N\" \"$D\"; :"],
        &[("S", SCRIPT), ("N", nest.to_str().unwrap()), ("D", &d)],
    );
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(8) {
        if let Some(c) = pending(&h).pop() {
            assert!(h.run(&["deny", &c["id"].to_string()]).status.success());
            let got = nul_pairs(&finished(agents).stdout);
            return (Some(c["risk"].to_string()), right(&vals, &got));
        }
        if !crate::harness::alive(agents.id() as i32) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = nul_pairs(&finished(agents).stdout);
    (None, right(&vals, &got))
}

/// Control: 2 shells below the agent host (within the 4 parent levels the broker reads), the
/// agent's read gets a card flagged `agent-reader` and reads nothing.
#[test]
fn a_reader_nested_within_the_chain_is_the_agents() {
    let (card, read) = nested_read(2);
    eprintln!("depth 2: card risk {card:?}, read {read}");
    assert!(card.is_some_and(|r| r.contains("agent-reader")));
    assert_eq!(read, 0);
}

/// The same reader 5 shells below the agent host: the host is still its ancestor, only farther
/// up than the broker looks (`peer::CHAIN`, 4 levels). Held when the read gets a card flagged
/// `agent-reader`.
#[test]
#[ignore = "LEAK: 5 shells between the agent host and the reader (the broker reads 4 parent levels): no agent-reader, the human's --ttl grant served the agent's reader 7 of 7 values with no card"]
fn a_reader_nested_deeper_than_the_broker_looks_is_still_the_agents() {
    let (card, read) = nested_read(5);
    eprintln!("depth 5: card risk {card:?}, read {read}");
    assert!(
        card.is_some_and(|r| r.contains("agent-reader")),
        "no card; read {read}"
    );
    assert_eq!(read, 0);
}

/// The uid the non-root broker, its CLI and the readers run as (no passwd entry needed).
const USER: u32 = 47_113;
/// A group the user is in only as a supplementary group (unless `primary`).
const GROUP: u32 = 47_114;

/// `cmd` run as [`USER`] (`setpriv`), primary group [`GROUP`] when `primary` (else [`USER`]'s
/// own) and [`GROUP`] supplementary either way; its environment and directory kept (not its
/// standard streams: the caller sets them).
fn as_user(cmd: std::process::Command, primary: bool) -> std::process::Command {
    let gid = if primary { GROUP } else { USER };
    let mut c = std::process::Command::new("setpriv");
    let ours = crate::harness::bin();
    c.args([
        format!("--reuid={USER}"),
        format!("--regid={gid}"),
        format!("--groups={GROUP}"),
    ])
    .arg(cmd.get_program())
    .args(cmd.get_args().map(|a| {
        // The build directory may be under root's home (0700): the user runs a copy.
        if std::path::Path::new(a) == ours {
            user_bin().as_os_str()
        } else {
            a
        }
    }))
    .env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            c.env(k, v);
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        c.current_dir(d);
    }
    c
}

/// A copy of the keyveil binary the user may run (the build directory may be under root's own
/// home, which the user cannot enter), made once per test process.
fn user_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::path::PathBuf::from(format!("/tmp/keyveil-user-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let to = dir.join("keyveil");
        let tmp = dir.join(".keyveil.tmp");
        std::fs::copy(crate::harness::bin(), &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &to).unwrap();
        to
    })
}

/// Runs `keyveil ARGS` as the user, with `input` on standard input.
fn user_run(h: &Home, primary: bool, args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut c = as_user(h.cmd(args), primary);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    crate::harness::wait_output(child, Duration::from_secs(60))
}

/// The risk flags of the card a reader of an executable in a directory the user can write only
/// through `GROUP` gets, from a broker run as the user (primary group `GROUP` when `primary`).
fn group_dir_card(primary: bool) -> String {
    dir_card(primary, false)
}

/// As [`group_dir_card`], or (`acl`) for a `root:root 0755` directory with a POSIX ACL entry
/// `user:USER:rwx` (an administrator's `setfacl -m u:USER:rwx DIR`, written here as the
/// `system.posix_acl_access` attribute).
fn dir_card(primary: bool, acl: bool) -> String {
    use std::os::unix::fs::{PermissionsExt as _, chown};
    let h = Home::empty();
    chown(h.path(), Some(USER), Some(USER)).unwrap();
    std::fs::write(h.path().join("no-open-count"), "").unwrap();
    chown(h.path().join("no-open-count"), Some(USER), Some(USER)).unwrap();
    let ok = |o: std::process::Output| {
        assert!(o.status.success(), "{}", text(&o.stderr));
        o
    };
    ok(user_run(
        &h,
        primary,
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        &format!("{PASS}\n"),
    ));
    ok(user_run(&h, primary, &["env", "create", "demo"], ""));
    let vals = values();
    for (k, v) in &vals {
        ok(user_run(
            &h,
            primary,
            &["set", "demo", k, "--from-stdin", "--passphrase-stdin"],
            &format!("{PASS}\n{v}"),
        ));
    }
    let p = Project::new();
    chown(p.path(), Some(USER), Some(USER)).unwrap();
    chown(p.tmp.path(), Some(USER), Some(USER)).unwrap();
    // A directory outside the project, HOME and the temporary directories: root's, writable by
    // GROUP (setgid, as `/usr/local` is `root:staff 2775` on Debian).
    let dir = std::path::PathBuf::from(format!("/opt/kv-s13b-{}-{primary}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    if acl {
        let o = std::process::Command::new("python3")
            .args(["-c", SET_ACL, dir.to_str().unwrap(), &USER.to_string()])
            .output()
            .unwrap();
        assert!(o.status.success(), "setting the ACL: {}", text(&o.stderr));
    } else {
        chown(&dir, Some(0), Some(GROUP)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775)).unwrap();
    }
    // Root's executable (an interpreter, as `/usr/local/bin` holds some), which the agent
    // renames to the name its card is to show: the file stays root's.
    let tool = dir.join("tool");
    std::fs::copy("/bin/sh", dir.join("rootsh")).unwrap();
    let mut mv = std::process::Command::new("mv");
    mv.arg(dir.join("rootsh")).arg(&tool);
    let o = as_user(mv, primary).output().unwrap();
    assert!(
        o.status.success(),
        "the user cannot rename it: {}",
        text(&o.stderr)
    );
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(&tool).unwrap().uid(), 0, "root's file");
    let f = p.env_file();
    ok(user_run(
        &h,
        primary,
        &["mount", "demo", f.to_str().unwrap()],
        "",
    ));
    let mut r = std::process::Command::new(crate::harness::setsid());
    r.arg("-w")
        .args([tool.to_str().unwrap(), "-c", SCRIPT])
        .current_dir(p.path())
        .env("TMPDIR", p.tmp.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let reader = as_user(r, primary)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let risk = loop {
        let o = ok(user_run(&h, primary, &["requests", "--json"], ""));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if let Some(c) = v.as_array().and_then(|a| a.last()) {
            let _ = user_run(&h, primary, &["deny", &c["id"].to_string()], "");
            break c["risk"].to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no card");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = crate::harness::wait_output(reader, Duration::from_secs(20));
    let _ = user_run(&h, primary, &["daemon", "stop"], "");
    let _ = std::fs::remove_dir_all(&dir);
    risk
}

/// `setfacl -m u:UID:rwx DIR` without `setfacl`: the ACL as its extended attribute (version 2;
/// user_obj rwx, user UID rwx, group_obj r-x, mask rwx, other r-x).
const SET_ACL: &str = r#"
import os, struct, sys
e = lambda tag, perm, id: struct.pack("<HHI", tag, perm, id)
none = 0xffffffff
b = struct.pack("<I", 2) + e(1, 7, none) + e(2, 7, int(sys.argv[2])) + e(4, 5, none) + e(0x10, 7, none) + e(0x20, 5, none)
os.setxattr(sys.argv[1], "system.posix_acl_access", b)
"#;

/// Control: the directory is writable by the user's *primary* group: `writable_by` sees it.
#[test]
fn an_executable_in_a_directory_of_the_users_primary_group_is_flagged() {
    let risk = group_dir_card(true);
    eprintln!("primary group: risk {risk}");
    assert!(risk.contains("workspace-executable"), "{risk}");
}

/// `writable_by` compares a directory's group with the broker's *primary* group only. A user in
/// `staff` (Debian's `/usr/local` is `root:staff 2775`) or any group a directory is writable by
/// as a supplementary group renames root's interpreter there to the name its card is to show
/// (the file stays root's: nothing of the user's on the way by owner or primary group); the
/// card does not say `workspace-executable`. Held when it does.
#[test]
fn an_executable_in_a_directory_of_a_supplementary_group_is_flagged() {
    let risk = group_dir_card(false);
    eprintln!("supplementary group: risk {risk}");
    assert!(risk.contains("workspace-executable"), "{risk}");
}

/// What `keyveil mounts --json` says last of the first mount.
fn last(h: &Home) -> String {
    let v = h.json(&["mounts", "--json"]);
    v.as_array()
        .and_then(|a| a.first())
        .map_or_else(String::new, |m| m["last"].to_string())
}

/// The listing keeps one event per path (`last`); a stop ("STOPPED, possible theft") is kept
/// nowhere else in it but the refusal count. The agent overwrites it with an event of its
/// choosing: here the human's denial of a card is the event to hide (a stop is made the same
/// way, `Registry::note`), and the agent's `O_RDWR` opener a mundane refusal after it. Held when
/// the listing still tells the first event.
#[test]
#[ignore = "LEAK: the listing's one `last` event is overwritten by the agent's next refusal (an O_RDWR opener): the human's denial (as a stop would be) no longer shown, only the refused count (1 -> 2) remains"]
fn the_agents_next_refusal_overwrites_the_event_the_listing_showed() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let r = p.reader(&["sh", "-c", SCRIPT], &[]);
    let c = wait_card(&h);
    assert!(h.run(&["deny", &c["id"].to_string()]).status.success());
    let _ = crate::harness::wait_output(r, Duration::from_secs(20));
    let t0 = Instant::now();
    while refused(&h) == 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (n0, l0) = (refused(&h), last(&h));
    refusal(&h, &p);
    let t0 = Instant::now();
    while refused(&h) == n0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (n1, l1) = (refused(&h), last(&h));
    eprintln!("refused {n0} -> {n1}; last before: {l0}; after: {l1}");
    assert!(n0 > 0, "the denial is listed");
    let head = |l: &str| l.split(':').nth(2).unwrap_or("").trim().to_owned();
    assert!(
        l1.contains(&head(&l0)),
        "the first event is no longer listed"
    );
}

/// The reparenting without a helper program: the agent's shell backgrounds the reader from a
/// subshell (`(sh -c "$S" >OUT &)`, the everyday way to detach a command), the subshell exits
/// at once, and the reader's parent is init by the time it opens `.env`. Held when the read
/// gets a card flagged `agent-reader`, or reads nothing.
#[test]
#[ignore = "LEAK: `(sh -c SCRIPT >OUT &)` under the agent host: the reader, reparented to init before the broker looks, is served by the human's --ttl grant with no card (7 of 7 values, 3 of 3 runs)"]
fn a_reader_detached_by_a_subshell_is_served_by_the_humans_ttl_grant() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let human = p.reader(&["sh", "-c", SCRIPT], &[]);
    let card = wait_card(&h);
    approve_card(&h, &card, &["--ttl", "10m"]);
    assert_eq!(nul_pairs(&finished(human).stdout), want(&vals));
    let host = agent_host(&p);
    let out = p.tmp.path().join("detached.out");
    let agents = p.reader(
        &[
            host.to_str().unwrap(),
            "-c",
            "(sh -c \"$S\" >\"$O\" 2>/dev/null </dev/null &); :",
        ],
        &[("S", SCRIPT), ("O", out.to_str().unwrap())],
    );
    let _ = crate::harness::wait_output(agents, Duration::from_secs(10));
    let t0 = Instant::now();
    let mut got = Vec::new();
    while t0.elapsed() < Duration::from_secs(8) {
        if let Some(c) = pending(&h).pop() {
            eprintln!("the detached reader got a card, risk {}", c["risk"]);
            assert!(c.to_string().contains("agent-reader"));
            assert!(h.run(&["deny", &c["id"].to_string()]).status.success());
            return;
        }
        got = nul_pairs(&std::fs::read(&out).unwrap_or_default());
        if got.len() == vals.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let read = right(&vals, &got);
    eprintln!("no card; the detached reader read {read} of {}", vals.len());
    assert_eq!(read, 0, "read {read} values with no card");
}

/// `writable_by` reads the mode bits only. A directory an ACL lets the user write (an
/// administrator's `setfacl -m u:USER:rwx`, shown by `ls` as `drwxrwxr-x+ root root`) is one
/// where the user renames root's interpreter to the name its card is to show. Held when the card says
/// `workspace-executable`.
#[test]
fn an_executable_in_a_directory_an_acl_lets_the_user_write_is_flagged() {
    let risk = dir_card(false, true);
    eprintln!("ACL: risk {risk}");
    assert!(risk.contains("workspace-executable"), "{risk}");
}
