//! Issue 17, item 5: an agent's request while the vault is locked waits as a number, and one
//! passphrase entry at the human's `keyveil approve` unlocks and approves it. Nothing is looser:
//! the passphrase is still required (a wrong one, a TOTP code or `--confirm` unlock nothing and
//! grant nothing), and what is granted is the full card shown after the unlock.

use std::time::{Duration, Instant};

use crate::harness::*;

/// A value made at test time (never a real secret).
fn token() -> String {
    format!("kvlocked-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

const CMD: &[&str] = &[
    "run",
    "--env",
    "demo",
    "--wait",
    "30",
    "--",
    "sh",
    "-c",
    "printf 'len=%s\\n' ${#API_TOKEN}; echo \"raw=$API_TOKEN\"",
];

/// The ids of the asks that wait for the locked vault (`status --json`), within 20 s.
fn wait_locked_ask(h: &Home) -> u64 {
    let t0 = Instant::now();
    loop {
        let s = h.json(&["status", "--json"]);
        if let Some(id) = s["locked_asks"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a["id"].as_u64())
        {
            assert_eq!(s["locked"], true, "{s}");
            return id;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no ask appeared: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent: calls `run` until it gets through (the unlock restarts the broker, and the agent
/// is told to call again), at most 8 times.
fn agent(h: &Home) -> std::process::Output {
    let mut last = None;
    for _ in 0..8 {
        let o = h.run(CMD);
        if o.status.success() {
            return o;
        }
        last = Some(o);
        std::thread::sleep(Duration::from_secs(2));
    }
    let o = last.unwrap();
    panic!(
        "the agent never got through: {}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

#[test]
fn a_request_while_locked_is_approved_with_one_passphrase_entry() {
    let h = Home::new();
    let value = token();
    h.set("demo", "API_TOKEN", &value);
    h.ok(&["lock"]);
    std::thread::scope(|s| {
        let run = s.spawn(|| agent(&h));
        let id = wait_locked_ask(&h);
        // The first call waits as a pending request, with the command to give the human.
        let status = h.ok(&["status"]);
        assert!(status.contains("vault: locked"), "{status}");
        assert!(status.contains("keyveil approve"), "{status}");
        // One passphrase entry, then a yes to the full card.
        let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\ny\n"));
        let err = text(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains(&format!("request #{id} (asked while the vault is locked)")),
            "{err}"
        );
        assert!(err.contains("unlocked; waiting for the agent"), "{err}");
        assert!(
            text(&o.stdout).contains("approved request #"),
            "{}",
            text(&o.stdout)
        );
        let out = run.join().unwrap();
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&format!("len={}", value.len())), "{stdout}");
        assert!(stdout.contains("raw=[REDACTED:API_TOKEN]"), "{stdout}");
        for enc in encodings(&value) {
            assert!(!contains(&out.stdout, &enc) && !contains(&out.stderr, &enc));
            assert!(!contains(&o.stdout, &enc) && !contains(&o.stderr, &enc));
        }
    });
    assert_eq!(h.json(&["status", "--json"])["locked"], false);
    // The approval is audited like any other: the request, then its approval with the factor.
    let audit = h.audit_text();
    assert!(audit.contains("\"request\""), "{audit}");
    assert!(audit.contains("\"approve\""), "{audit}");
}

#[test]
fn a_locked_ask_grants_nothing_without_the_passphrase() {
    let h = Home::new();
    let value = token();
    h.set("demo", "API_TOKEN", &value);
    h.ok(&["lock"]);
    let marker = h.path().join("ran");
    let m = marker.display().to_string();
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "5",
        "--",
        "touch",
        m.as_str(),
    ]);
    let id = wait_locked_ask(&h);
    let ids = id.to_string();
    // A wrong passphrase: refused by the CLI itself, nothing unlocked.
    let o = h.run_stdin(
        &["approve", &ids, "--passphrase-stdin"],
        "not the passphrase\ny\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    // A TOTP code or a plain confirmation cannot unlock.
    let o = h.run_stdin(&["approve", &ids, "--totp-stdin"], "123456\n");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("only the passphrase unlocks"));
    let o = h.run(&["approve", &ids, "--confirm"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    // At the terminal the passphrase prompt needs /dev/tty: a test (like an agent without the
    // human's terminal) has none, so nothing can be typed in.
    let o = h.run(&["approve", &ids]);
    assert!(!o.status.success());
    let s = h.json(&["status", "--json"]);
    assert_eq!(s["locked"], true, "{s}");
    assert_eq!(s["live_grants"], 0, "{s}");
    assert!(!marker.exists(), "the command ran");
    // The agent's own call ends as a pending request, never a run.
    let out = wait_output(child, Duration::from_secs(40));
    assert!(!marker.exists(), "the command ran");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("keyveil approve {id}")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_no_at_the_full_card_approves_nothing() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", &token());
    h.ok(&["lock"]);
    std::thread::scope(|s| {
        let run = s.spawn(|| {
            // Called once more after the unlock, with a short wait: it stays pending.
            let _ = h.run(CMD);
            std::thread::sleep(Duration::from_secs(1));
            h.run(&[
                "run",
                "--env",
                "demo",
                "--wait",
                "8",
                "--",
                "sh",
                "-c",
                "printf 'len=%s\\n' ${#API_TOKEN}; echo \"raw=$API_TOKEN\"",
            ])
        });
        wait_locked_ask(&h);
        let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\nn\n"));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains("not approved"),
            "{}",
            text(&o.stdout)
        );
        let out = run.join().unwrap();
        assert!(!out.status.success());
        assert!(!text(&out.stdout).contains("len="), "{}", text(&out.stdout));
    });
    let s = h.json(&["status", "--json"]);
    assert_eq!(s["locked"], false, "{s}");
    assert_eq!(s["live_grants"], 0, "{s}");
}

/// `keyveil run` itself asks again after the unlock restarts the broker: one call of our own
/// CLI, one passphrase entry at `approve`, and the command runs (found by a new-user trial: the
/// run exited with "the broker stopped" and the approve waited 60 s for a second call).
#[test]
fn keyveil_run_asks_again_by_itself_after_the_unlock() {
    let h = Home::new();
    let value = token();
    h.set("demo", "API_TOKEN", &value);
    h.ok(&["lock"]);
    std::thread::scope(|s| {
        let run = s.spawn(|| h.run(CMD));
        let id = wait_locked_ask(&h);
        let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\ny\n"));
        let err = text(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains(&format!("request #{id} (asked while the vault is locked)")),
            "{err}"
        );
        let out = run.join().unwrap();
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
        assert!(stdout.contains("raw=[REDACTED:API_TOKEN]"), "{stdout}");
        assert!(
            text(&out.stderr).contains("asking again"),
            "{}",
            text(&out.stderr)
        );
        for enc in encodings(&value) {
            assert!(!contains(&out.stdout, &enc) && !contains(&out.stderr, &enc));
        }
    });
}

/// A locked ask with standard input (MCP `run` with `stdin`): the locked card gives its length,
/// never an unkeyed digest; after the unlock (a new broker, with a new digest key) `approve`
/// still finds the agent's call again by the input's presence and length, shows it on the full
/// card, and approves it.
#[test]
fn a_locked_ask_with_standard_input_is_found_again_and_approved_after_the_unlock() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", &token());
    h.ok(&["lock"]);
    let input = "hello-from-the-locked-ask\n";
    std::thread::scope(|s| {
        let agent = s.spawn(|| {
            let mut m = crate::redteam20::McpLine::start(&h);
            for _ in 0..12 {
                let r = m.call(
                    "run",
                    &serde_json::json!({"environment": "demo", "wait_seconds": 20,
                                        "command": ["cat"], "stdin": input}),
                );
                if r.to_string().contains("hello-from-the-locked-ask") {
                    return r;
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            panic!("the agent never got through");
        });
        let _ = wait_locked_ask(&h);
        let st = h.json(&["status", "--json"]);
        let ask = &st["locked_asks"][0];
        assert_eq!(ask["stdin_bytes"], input.len(), "{st}");
        assert_ne!(
            ask["stdin_digest"].as_str().unwrap_or_default(),
            sha256_hex(input),
            "{st}"
        );
        let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\ny\n"));
        let err = text(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains(&format!("({} bytes)", input.len())), "{err}");
        assert!(err.contains("hello-from-the-locked-ask"), "{err}");
        let r = agent.join().unwrap();
        assert!(r.to_string().contains("hello-from-the-locked-ask"), "{r}");
    });
}
