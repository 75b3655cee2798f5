//! Revocation reaches every descendant of a run (issue 15, item 1; G4). The granted command is
//! hostile: it moves itself or its children into the broker's process group, starts a new
//! session and double-forks, ignores SIGTERM, or forks 50 children. After `revoke --all`,
//! `lock`, its own timeout or `stop`, no process with the value in its environment remains
//! (every `/proc/*/environ` readable to us is scanned for the value).

use std::process::Child;
use std::time::{Duration, Instant};

use crate::harness::*;

/// Moves the calling process into the process group of the nearest ancestor in another group
/// (the broker's, or whatever keyveil puts between them), then sleeps; prints `moved`.
const INTO_BROKER_GROUP: &str = r#"import os, time
me = os.getpgid(0); p = os.getppid(); moved = False
while p > 1 and not moved:
    g = os.getpgid(p)
    if g != me:
        try:
            os.setpgid(0, g); moved = True
        except OSError:
            pass
    p = int(open('/proc/%d/stat' % p).read().rsplit(')', 1)[1].split()[1])
assert moved
print('moved', flush=True)
time.sleep(60)
"#;

/// Waits until at least `n` processes hold `value` (the run is set up).
fn wait_holders(value: &str, n: usize) {
    let t0 = Instant::now();
    loop {
        let h = holders_of(value);
        if h.len() >= n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "only {} processes hold the value: {h:?}",
            h.len()
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// Waits until `n` Python processes holding `value` have left the process group their run
/// started in (the attack really happened before the test revokes).
fn wait_moved(h: &Home, value: &str, n: usize) {
    let t0 = Instant::now();
    let pgid = loop {
        let st = h.json(&["status", "--json"]);
        if let Some(p) = st["runs"][0]["pgid"].as_i64() {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no live run: {st}");
        std::thread::sleep(Duration::from_millis(20));
    };
    loop {
        let moved: Vec<_> = holders_of(value)
            .into_iter()
            .filter(|(pid, cmd)| {
                let group = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')
                            .and_then(|(_, r)| r.split_whitespace().nth(2)?.parse::<i64>().ok())
                    });
                cmd.contains("python3") && group.is_some_and(|g| g != pgid)
            })
            .collect();
        if moved.len() >= n {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "only {moved:?} left the run's process group {pgid}: {:?}",
            holders_of(value)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that within `limit` no process holds `value` any more.
fn assert_none_left(value: &str, limit: Duration, after: &str) {
    let t0 = Instant::now();
    loop {
        let h = holders_of(value);
        if h.is_empty() {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "after {after}, {} processes still hold the value: {h:?}",
            h.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fresh home holding `value`, and `keyveil run` of `sh -c script INTO_BROKER_GROUP`
/// (the Python program is the script's `$0`) started and approved.
fn live_run(value: &str, script: &str, extra: &[&str]) -> (Home, Child) {
    let h = Home::new();
    h.set("demo", "API_TOKEN", value);
    let mut args = vec!["run", "--env", "demo", "--wait", "30"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "sh", "-c", script, INTO_BROKER_GROUP]);
    let child = h.spawn_run(&args);
    let id = h.wait_request();
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
    (h, child)
}

/// The leader itself leaves its group: `exec`s the Python program given as `$0`.
const LEADER_MOVES: &str = "exec python3 -c \"$0\"";
/// A child leaves the group, and then the leader too.
const BOTH_MOVE: &str = "python3 -c \"$0\" & exec python3 -c \"$0\"";

#[test]
fn revoke_all_kills_a_run_that_moved_into_the_brokers_process_group() {
    let value = "tok_revoke_pgid_4Tq9ZkW2";
    // The leader itself leaves its group (the group signal reaches nobody), and a child does
    // the same from below a shell that stays.
    let script = BOTH_MOVE;
    let h = Home::new();
    h.set("demo", "API_TOKEN", value);
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        script,
        INTO_BROKER_GROUP,
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    wait_moved(&h, value, 2);
    let out = h.ok(&["revoke", "--all"]);
    assert_none_left(value, Duration::from_secs(5), "revoke --all");
    assert!(out.contains("revoked 1 grant"), "{out}");
    assert!(
        out.contains("processes killed") || out.contains("process killed"),
        "{out}"
    );
    let o = wait_output(child, Duration::from_secs(15));
    assert!(text(&o.stdout).contains("moved"), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("revoked"), "{}", text(&o.stderr));
}

#[test]
fn lock_kills_a_run_that_moved_into_the_brokers_process_group() {
    let value = "tok_lock_pgid_8Hn2XcV5";
    let (h, child) = live_run(value, LEADER_MOVES, &[]);
    wait_moved(&h, value, 1);
    let out = h.ok(&["lock"]);
    // `lock` answers once the run is gone, and says so.
    assert!(holders_of(value).is_empty(), "{:?}", holders_of(value));
    assert!(
        out.contains("locked; stopped 1 run (") && out.contains("killed)"),
        "{out}"
    );
    let _ = wait_output(child, Duration::from_secs(15));
}

#[test]
fn timeout_kills_a_run_that_moved_into_the_brokers_process_group() {
    let value = "tok_timeout_pgid_2Wd7PqL3";
    let script = BOTH_MOVE;
    let h = Home::new();
    h.set("demo", "API_TOKEN", value);
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--timeout",
        "3",
        "--",
        "sh",
        "-c",
        script,
        INTO_BROKER_GROUP,
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    wait_moved(&h, value, 2);
    let o = wait_output(child, Duration::from_secs(20));
    assert!(text(&o.stderr).contains("timed out"), "{}", text(&o.stderr));
    assert_none_left(value, Duration::from_secs(3), "the timeout");
}

#[test]
fn setsid_double_forks_and_sigterm_ignorers_die_on_revoke() {
    let value = "tok_revoke_tree_6Jm3RbN8";
    // A daemon's double fork into a new session, a process that ignores SIGTERM (and so does
    // the shell that waits), and 50 children, all holding the value.
    let script = "trap '' TERM; \
        (setsid sh -c 'sleep 61 & sleep 62' &) ; \
        sh -c \"trap '' TERM; sleep 63\" & \
        i=0; while [ $i -lt 50 ]; do sleep 64 & i=$((i+1)); done; \
        wait";
    let (h, child) = live_run(value, script, &[]);
    wait_holders(value, 54);
    let t0 = Instant::now();
    let out = h.ok(&["revoke", "--all"]);
    assert_none_left(value, Duration::from_secs(5), "revoke --all");
    assert!(t0.elapsed() < Duration::from_secs(8));
    assert!(out.contains("processes killed"), "{out}");
    let _ = wait_output(child, Duration::from_secs(15));
}

#[test]
fn stop_kills_a_background_run_that_left_its_group() {
    let value = "tok_stop_pgid_3Kc8VmQ1";
    let h = Home::new();
    h.set("demo", "API_TOKEN", value);
    let script = format!("(setsid sleep 65 &); {BOTH_MOVE}");
    let child = h.spawn_run(&[
        "start",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        &script,
        INTO_BROKER_GROUP,
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let o = wait_output(child, Duration::from_secs(20));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run_id = text(&o.stdout)
        .split_whitespace()
        .find(|w| w.starts_with("run-") || w.starts_with("r-"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no run id in {}", text(&o.stdout)));
    wait_holders(value, 3);
    wait_moved(&h, value, 2);
    h.ok(&["stop", &run_id]);
    assert_none_left(value, Duration::from_secs(5), "stop");
}

#[test]
fn the_daemon_stopping_kills_a_run_that_left_its_group() {
    let value = "tok_daemon_pgid_5Rx1TyU7";
    let (h, child) = live_run(value, LEADER_MOVES, &[]);
    wait_moved(&h, value, 1);
    h.ok(&["daemon", "stop"]);
    assert_none_left(value, Duration::from_secs(5), "daemon stop");
    let _ = wait_output(child, Duration::from_secs(15));
}

#[test]
fn killing_the_runs_reaper_does_not_free_its_processes() {
    kill_the_reaper("tok_reaper_kill_9Pz4LsE6", false);
}

/// The same with the supervisor `SIGSTOP`ped first (a process of the agent's uid, which then
/// acts on no signal): the broker kills what was re-parented to it itself.
#[test]
fn a_stopped_supervisor_and_a_killed_reaper_do_not_keep_a_run_alive() {
    kill_the_reaper("tok_reaper_stopsup_3Lq8WzR1", true);
}

fn kill_the_reaper(value: &str, stop_supervisor: bool) {
    // The agent (same uid) kills the process that holds the run's tree: the tree goes to the
    // supervisor, which the broker asks to kill it.
    let (h, child) = live_run(
        value,
        "(setsid sleep 66 &); python3 -c \"$0\" & sleep 67; wait",
        &[],
    );
    wait_holders(value, 3);
    wait_moved(&h, value, 1);
    let audit = h.audit_text();
    let reaper: i32 = audit
        .lines()
        .find(|l| l.contains("\"run_start\""))
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["pid"].as_i64().or_else(|| v["data"]["pid"].as_i64()))
        .map(|p| p as i32)
        .unwrap_or_else(|| panic!("no run_start pid in {audit}"));
    assert!(alive(reaper));
    let supervisor = stop_supervisor.then(|| {
        let broker: i32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{broker}/stat")).unwrap();
        let sup: i32 = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let cmd = std::fs::read(format!("/proc/{sup}/cmdline")).unwrap();
        assert!(
            contains(&cmd, "daemon"),
            "the broker's parent is not its supervisor"
        );
        let p = rustix::process::Pid::from_raw(sup).unwrap();
        rustix::process::kill_process(p, rustix::process::Signal::STOP).unwrap();
        p
    });
    let p = rustix::process::Pid::from_raw(reaper).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::KILL).unwrap();
    let left = {
        let t0 = Instant::now();
        loop {
            let l = holders_of(value);
            if l.is_empty() || t0.elapsed() > Duration::from_secs(5) {
                break l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    if let Some(sup) = supervisor {
        rustix::process::kill_process(sup, rustix::process::Signal::CONT).unwrap();
    }
    assert!(
        left.is_empty(),
        "after kill -9 of the run's reaper, still holding the value: {left:?}"
    );
    let o = wait_output(child, Duration::from_secs(15));
    assert_ne!(o.status.code(), Some(0));
}

/// A process whose main thread ends with `pthread_exit` while another thread runs: `/proc`
/// shows its leader as a zombie (`Z`), its `/proc/PID/environ` reads empty, yet the process
/// runs on with the value, and the child its other thread starts hangs below the "zombie".
/// Prints `hidden` once both exist.
pub(crate) const ZOMBIE_LEADER: &str = r#"import ctypes, os, subprocess, threading, time
def keep():
    subprocess.Popen(['sleep', '303'])
    print('hidden', flush=True)
    time.sleep(300)
threading.Thread(target=keep).start()
time.sleep(0.5)
ctypes.CDLL(None).pthread_exit(None)
"#;

#[test]
fn revoke_all_kills_a_process_that_hides_behind_a_zombie_leader() {
    let value = "tok_revoke_zombie_8Wq2LmZs";
    let h = Home::new();
    h.set("demo", "API_TOKEN", value);
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "python3 -c \"$0\" & wait",
        ZOMBIE_LEADER,
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    // sh, the python process (through its live thread) and its sleep.
    wait_holders(value, 3);
    let t0 = Instant::now();
    // The attack happened: a holder whose leader is a zombie (its cmdline and environ read
    // empty through the leader) still holds the value through its live thread.
    let zombie = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        })
    };
    while !holders_of(value).iter().any(|(pid, _)| zombie(pid)) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the leader did not exit: {:?}",
            holders_of(value)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = h.run(&["revoke", "--all"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert_none_left(value, Duration::from_secs(10), "revoke --all");
    drop(wait_output(child, Duration::from_secs(20)));
}

/// At the end of a run (its leader exited, no revocation), what it leaves behind is killed,
/// including a process hiding behind a zombie leader: the reaper's shortcut (no `/proc` pass
/// when `waitpid` says it has no child left) must not take such a child for gone.
#[test]
fn the_end_of_a_run_kills_what_hides_behind_a_zombie_leader() {
    let seed = format!("{:?}{}", Instant::now(), std::process::id());
    let value = format!("kvzl_{}", &sha256_hex(&seed)[..24]);
    let h = Home::new();
    h.set("demo", "API_TOKEN", &value);
    // sh starts the python process, waits until its main thread has ended (its leader is a
    // zombie, its other thread and that thread's sleep run on), then exits: the run's leader.
    let script = "python3 -c \"$0\" > \"$TMPDIR/h\" & \
                  while ! grep -q hidden \"$TMPDIR/h\"; do sleep 0.05; done; sleep 0.7; \
                  echo leader-done";
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--",
            "sh",
            "-c",
            script,
            ZOMBIE_LEADER,
        ],
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("leader-done"),
        "{}",
        text(&o.stdout)
    );
    assert_none_left(&value, Duration::from_secs(5), "the run's end");
}
