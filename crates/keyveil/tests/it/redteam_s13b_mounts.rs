//! Red team s13b of issue 22 (`.env` mounts): a prompt-injected agent (same uid, shell,
//! `/proc`, the socket, the CLI) against three fixes of s13: a `--ttl` grant serves a later
//! reader only without a risk flag its card did not show (`Grant::covers`), the listing of a
//! path outlives an unmount (`Registry::keep_gone`/`carry_gone`), and `pin::files::writable_by`.
//! Then against what mended its leaks: the agent-host test walks the reader's whole parent
//! chain, a `--ttl` grant serves only readers started under the approved reader's *anchor*
//! (`mounts::reader::anchor_of`), a reader reparented to init or a subreaper is
//! `detached-reader`, and the listing keeps 8 recent events per path, rebuilt from the
//! verified audit log at unlock (`mounts::history`).
//! A held attack is a passing test; one that works is kept `#[ignore = "LEAK: ..."]` with what
//! it got (counts only, never a value).
#![allow(clippy::print_stderr)] // the figures of each attempt (counts only, never a value)

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::Home;
use crate::harness::{PASS, text};
use crate::mount::{
    Project, TTL_SCRIPT as SCRIPT, agent_host, finished, mount, nul_pairs, pending, store,
    ttl_granted, values, wait_card,
};

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

/// How many of `vals` are in `got`, right.
fn right(vals: &[(&str, String)], got: &[(String, String)]) -> usize {
    vals.iter()
        .filter(|(n, v)| got.iter().any(|(k, w)| k == n && w == v))
        .count()
}

/// What became of the agent's read under the human's `--ttl` grant.
#[derive(Debug)]
enum Outcome {
    /// A card (denied here), with its risk flags.
    Card(String),
    /// No card: how many values its reader wrote to its output file, right.
    Read(usize),
}

/// Waits (10 s at most) for the agent's read whose reader writes to `out`: a card (denied at
/// once) or every value in `out`.
fn outcome(h: &Home, vals: &[(&str, String)], out: &Path) -> Outcome {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Some(c) = pending(h).pop() {
            assert!(h.run(&["deny", &c["id"].to_string()]).status.success());
            return Outcome::Card(c["risk"].to_string());
        }
        got = nul_pairs(&std::fs::read(out).unwrap_or_default());
        if got.len() == vals.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Outcome::Read(right(vals, &got))
}

/// Held: the agent's reparented reader got a card the human sees, flagged `detached-reader`
/// (reparented before the broker looked) or `agent-reader` (still under the agent host then).
fn assert_held(how: &str, o: &Outcome) {
    eprintln!("{how}: {o:?}");
    match o {
        Outcome::Card(risk) => assert!(
            risk.contains("detached-reader") || risk.contains("agent-reader"),
            "{how}: a card without detached-reader or agent-reader: {risk}"
        ),
        Outcome::Read(n) => panic!("{how}: no card; the agent's reader read {n} values"),
    }
}

/// The agent's shell line `line` run under the agent host in the project (`$S`: the human's
/// script, `$O`: the output file, and `extra`), after the human's `--ttl` grant: what became
/// of its read.
fn agents_line(line: &str, extra: &[(&str, &str)]) -> Outcome {
    let (h, vals, p) = ttl_granted();
    let host = agent_host(&p);
    let out = p.tmp.path().join("agent.out");
    let mut env = vec![("S", SCRIPT), ("O", out.to_str().unwrap())];
    env.extend_from_slice(extra);
    let agents = p.reader(&[host.to_str().unwrap(), "-c", line], &env);
    let _ = crate::harness::wait_output(agents, Duration::from_secs(10));
    outcome(&h, &vals, &out)
}

/// The s13 fix flagged `agent-reader` from the reader's parents *when the broker looks*. The
/// agent's reader need not have the agent host among its parents then: the agent starts it
/// through a launcher that exits at once, and the reader execs the human's argv only once it
/// has been reparented (to init or a subreaper). Its flags were then those the human's card
/// showed, and the human's `--ttl` grant served it with no card (7 of 7 values). Held now: the
/// grant is bound to the approved reader's anchor, which the orphan's chain no longer holds,
/// and its parent is init: a card flagged `detached-reader`.
#[test]
fn a_reader_reparented_away_from_the_agent_host_is_served_by_the_humans_ttl_grant() {
    let o = agents_line("python3 -c \"$W\" \"$O\"; :", &[("W", ORPHAN)]);
    assert_held("launcher that exits (python fork)", &o);
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

/// The broker kept what an unmounted path said, and every count of the listing, in memory
/// only. The agent stops the broker (`keyveil daemon stop`: no factor); the human, finding the
/// vault locked, unlocks it, and the listing of the same mount, still at its path, showed no
/// refusal (1 -> 0). Held now (the listing is rebuilt from the verified audit log at unlock):
/// the listing still shows the refusal after the restart.
#[test]
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
    let (h, vals, p) = ttl_granted();
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
    // A deep nest takes a while to start.
    while t0.elapsed() < Duration::from_secs(8 + u64::from(depth) / 20) {
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
/// up than the card's chain (`peer::CHAIN`, 4 levels); the agent-host test read only those, and
/// the human's --ttl grant served it 7 of 7 values with no card. Held now (the test walks the
/// whole chain, `peer::lineage`): a card flagged `agent-reader`.
#[test]
fn a_reader_nested_deeper_than_the_broker_looks_is_still_the_agents() {
    let (card, read) = nested_read(5);
    eprintln!("depth 5: card risk {card:?}, read {read}");
    assert!(
        card.is_some_and(|r| r.contains("agent-reader")),
        "no card; read {read}"
    );
    assert_eq!(read, 0);
}

/// Deeper: 40 shells below the agent host (a depth no fixed look-up of a few levels reaches).
/// Held when the read gets a card flagged `agent-reader`.
#[test]
fn a_reader_forty_shells_below_the_agent_host_is_still_the_agents() {
    let (card, read) = nested_read(40);
    eprintln!("depth 40: card risk {card:?}, read {read}");
    assert!(
        card.is_some_and(|r| r.contains("agent-reader")),
        "no card; read {read}"
    );
    assert_eq!(read, 0);
}

/// Past the walk's safety cap (`peer::LINEAGE_CAP`, 256 links): 270 shells below the agent
/// host, so the host is beyond what the broker reads. A chain that cannot be read to its end is
/// flagged `agent-reader` (and has no anchor). Held when the read gets a card so flagged.
#[test]
fn a_reader_below_more_shells_than_the_walk_reads_is_still_flagged() {
    let (card, read) = nested_read(270);
    eprintln!("depth 270: card risk {card:?}, read {read}");
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
/// home, which the user cannot enter): one per build directory,
/// `/tmp/keyveil-user-bin-<hash of the binary's path>/keyveil`, shared by every test process
/// and replaced (a temporary copy renamed over it) when its stamp (the binary's size and
/// modification time) is not the binary's: a new build replaces the copy, never adds one.
fn user_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        use std::hash::{Hash as _, Hasher as _};
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let ours = crate::harness::bin();
        let meta = std::fs::metadata(&ours).unwrap();
        let mut hash = std::collections::hash_map::DefaultHasher::new();
        ours.hash(&mut hash);
        let dir = std::path::PathBuf::from(format!("/tmp/keyveil-user-bin-{:016x}", hash.finish()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let to = dir.join("keyveil");
        let stamp_file = dir.join("keyveil.stamp");
        let stamp = format!("{} {} {}", meta.len(), meta.mtime(), meta.mtime_nsec());
        let fresh = to.exists()
            && std::fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp)
            && std::fs::metadata(&to).is_ok_and(|m| m.len() == meta.len());
        if !fresh {
            let me = std::process::id();
            let tmp = dir.join(format!(".keyveil.{me}.tmp"));
            std::fs::copy(&ours, &tmp).unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&tmp, &to).unwrap();
            let tmp_stamp = dir.join(format!(".stamp.{me}.tmp"));
            std::fs::write(&tmp_stamp, &stamp).unwrap();
            std::fs::rename(&tmp_stamp, &stamp_file).unwrap();
        }
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
    // One per case: the three cases run at once in one process.
    let dir = std::path::PathBuf::from(format!(
        "/opt/kv-s13b-{}-{primary}-{acl}",
        std::process::id()
    ));
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

/// What `keyveil mounts --json` lists of the first mount's recent events, newest first.
fn recent(h: &Home) -> Vec<String> {
    let v = h.json(&["mounts", "--json"]);
    v.as_array()
        .and_then(|a| a.first())
        .and_then(|m| m["recent"].as_array())
        .map(|r| {
            r.iter()
                .map(|e| e.as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A reader the human's card for which is denied (`request #N denied` on the listing): the
/// refused count it left.
fn denied_read(h: &Home, p: &Project) -> u64 {
    let r = p.reader(&["sh", "-c", SCRIPT], &[]);
    let c = wait_card(h);
    assert!(h.run(&["deny", &c["id"].to_string()]).status.success());
    let _ = crate::harness::wait_output(r, Duration::from_secs(20));
    let t0 = Instant::now();
    while refused(h) == 0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    refused(h)
}

/// The listing kept one event per path (`last`); a stop ("STOPPED, possible theft") was kept
/// nowhere else in it but the refusal count. The agent overwrote it with an event of its
/// choosing: here the human's denial of a card is the event to hide (a stop is made the same
/// way, `Registry::note`), and the agent's `O_RDWR` opener a mundane refusal after it (refused
/// 1 -> 2, the denial no longer shown). Held now (8 recent events per path): the listing
/// still tells the first event.
#[test]
fn the_agents_next_refusal_overwrites_the_event_the_listing_showed() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let n0 = denied_read(&h, &p);
    let l0 = last(&h);
    refusal(&h, &p);
    let t0 = Instant::now();
    while refused(&h) == n0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (n1, r1) = (refused(&h), recent(&h));
    eprintln!("refused {n0} -> {n1}; last before: {l0}; recent after: {r1:?}");
    assert!(n0 > 0, "the denial is listed");
    let head = |l: &str| {
        l.split(':')
            .nth(2)
            .unwrap_or("")
            .trim_matches(|c: char| c == '"' || c.is_whitespace())
            .to_owned()
    };
    assert!(!head(&l0).is_empty(), "{l0}");
    assert!(
        r1.iter().any(|e| e.contains(&head(&l0))),
        "the first event is no longer listed"
    );
}

/// Another way to push the event out: more refusals than the listing keeps events (8). The
/// agent's `O_RDWR` openers, each a fresh refusal, after the human's denial. Held when the
/// denial is still listed (a mundane refusal never pushes out a denial or a stop).
#[test]
fn a_flood_of_refusals_does_not_push_the_denial_out_of_the_listing() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    denied_read(&h, &p);
    for _ in 0..10 {
        let n = refused(&h);
        refusal(&h, &p);
        let t0 = Instant::now();
        while refused(&h) == n && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let r = recent(&h);
    eprintln!("refused {}; recent: {} events", refused(&h), r.len());
    assert!(refused(&h) >= 11, "every refusal counted");
    assert!(r.len() <= 8, "a short list");
    assert!(
        r.iter().any(|e| e.contains(" denied")),
        "the denial was pushed out: {r:?}"
    );
}

/// Another way to wipe it across a restart: the agent stops the broker, unmounts the path
/// while the vault is locked (no factor), and mounts it again once the human has unlocked:
/// the broker's memory of the unmounted path (`Registry::gone`) went with the stop. Held when
/// the listing of the new mount still shows the refusal (rebuilt from the audit log).
#[test]
fn a_stop_and_an_unmount_while_locked_do_not_wipe_the_refusal() {
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
    let stop = h.run(&["daemon", "stop"]);
    let u = h.run(&["unmount", path]);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "unlock: {}", text(&o.stderr));
    let m = h.run(&["mount", "demo", path]);
    let after = refused(&h);
    eprintln!(
        "refused before {before}, after {after}; stop ok {}, unmount ok {}, mount ok {}; recent {:?}",
        stop.status.success(),
        u.status.success(),
        m.status.success(),
        recent(&h)
    );
    assert!(m.status.success(), "mount: {}", text(&m.stderr));
    assert!(after >= before, "the listing forgot the refusal");
}

/// The agent deletes the audit log (its own file) before the restart, so nothing is left to
/// rebuild the listing from. Held when the listing then says the audit log does not verify
/// (the cut shows) rather than showing a clean mount.
#[test]
fn deleting_the_audit_log_shows_on_the_listing() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    refusal(&h, &p);
    let stop = h.run(&["daemon", "stop"]);
    let audit = std::fs::read_dir(h.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("audit"))
        })
        .expect("an audit log");
    std::fs::remove_file(&audit).unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    let r = recent(&h);
    eprintln!(
        "stop ok {}, unlock ok {}; refused {}; recent {r:?}",
        stop.status.success(),
        o.status.success(),
        refused(&h)
    );
    assert!(
        r.iter().any(|e| e.contains("audit log does not verify")),
        "a clean listing after the audit log was deleted"
    );
}

/// The reparenting without a helper program: the agent's shell backgrounds the reader from a
/// subshell (`(sh -c "$S" >OUT &)`, the everyday way to detach a command), the subshell exits
/// at once, and the reader's parent is init by the time it opens `.env`: the human's --ttl
/// grant served it with no card (7 of 7 values, 3 of 3 runs). Held now: a card flagged
/// `detached-reader` (or `agent-reader` when the broker looked before the reparenting).
#[test]
fn a_reader_detached_by_a_subshell_is_served_by_the_humans_ttl_grant() {
    let o = agents_line("(sh -c \"$S\" >\"$O\" 2>/dev/null </dev/null &); :", &[]);
    assert_held("subshell", &o);
}

/// `setsid -f`: the reader in a session of its own, its `setsid` parent gone at once. Held
/// when the read gets a card flagged `detached-reader` (or `agent-reader`).
#[test]
fn a_reader_started_by_setsid_fork_gets_a_card() {
    let o = agents_line(
        "setsid -f sh -c \"$S\" >\"$O\" 2>/dev/null </dev/null; :",
        &[],
    );
    assert_held("setsid -f", &o);
}

/// `nohup ... &` and the agent's shell exits at once (`exit`, not a wait): the reader is
/// reparented once its shell is gone. Held when the read gets a card flagged
/// `detached-reader` or `agent-reader`.
#[test]
fn a_reader_left_by_nohup_and_an_exiting_shell_gets_a_card() {
    let o = agents_line(
        "nohup sh -c 'sleep 0.3; eval \"$S\"' >\"$O\" 2>/dev/null </dev/null & exit 0",
        &[],
    );
    assert_held("nohup & exit", &o);
}

/// A reader the broker sees with no anchor at all: the human's own read of the first card
/// (approved with `--ttl`) was itself reparented (`setsid -f`), so the grant binds to nothing
/// and says so; the same reader started again, by the human, gets a card again. Held when the
/// second read gets a card and `keyveil grants` says the grant serves no later reader.
#[test]
fn a_grant_without_an_anchor_serves_no_later_reader_without_a_card() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let out = p.tmp.path().join("human.out");
    let line = "setsid -f sh -c 'sleep 0.3; eval \"$S\"' >\"$O\" 2>/dev/null </dev/null";
    let start = || {
        let c = p.reader(
            &["sh", "-c", line],
            &[("S", SCRIPT), ("O", out.to_str().unwrap())],
        );
        let _ = crate::harness::wait_output(c, Duration::from_secs(10));
    };
    start();
    let card = wait_card(&h);
    eprintln!("first card: risk {}, mount {}", card["risk"], card["mount"]);
    assert!(card["risk"].to_string().contains("detached-reader"));
    assert!(card["mount"]["anchor"].is_null(), "no anchor: {card}");
    crate::mount::approve_card(&h, &card, &["--ttl", "10m"]);
    let grants = h.ok(&["grants"]);
    assert!(
        grants.contains("serves no later reader without a card"),
        "{grants}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = std::fs::remove_file(&out);
    start();
    match outcome(&h, &vals, &out) {
        Outcome::Card(risk) => eprintln!("second read: a card, risk {risk}"),
        Outcome::Read(n) => panic!("the anchorless grant served {n} values with no card"),
    }
}

/// Control: the grant still does its job. The human's own reader, started again the same way
/// (under the same anchor, the process that started the first), is served with no card; the
/// card and `keyveil grants` name that anchor.
#[test]
fn the_same_reader_under_the_same_anchor_is_served_by_the_ttl_grant() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    let card = crate::mount::ttl_grant(&h, &p, &vals);
    let anchor = card["mount"]["anchor"].as_str().unwrap_or("").to_owned();
    eprintln!("anchor on the card: {anchor}");
    assert!(
        anchor.contains(&format!("(pid {})", std::process::id())),
        "{card}"
    );
    let grants = h.ok(&["grants"]);
    assert!(
        grants.contains(&format!("readers started under {anchor}")),
        "{grants}"
    );
    let again = p.reader(&["sh", "-c", SCRIPT], &[]);
    let got = nul_pairs(&finished(again).stdout);
    assert_eq!(right(&vals, &got), vals.len(), "served again with no card");
    assert!(pending(&h).is_empty(), "no card");
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
