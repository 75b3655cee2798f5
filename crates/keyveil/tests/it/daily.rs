//! Daily use, worded for people: local and relative times instead of RFC 3339 (machine formats
//! stay under `--json`), a used-up grant not listed as live, request ids that never repeat
//! across broker restarts.

use std::time::{Duration, Instant};

use crate::harness::*;

const TOKEN: &str = "tok_daily-Zq81mN4pV7";

/// Whether `s` holds an RFC 3339 time (`…6T13:16…`).
fn rfc3339(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == b'T' && w[2].is_ascii_digit())
}

fn pending(h: &Home, word: &str) -> u64 {
    let o = h.run(&["run", "--env", "demo", "--wait", "0", "--", "echo", word]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    h.wait_request()
}

#[test]
fn request_ids_never_repeat_across_broker_restarts() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let first = pending(&h, "one");
    h.ok(&["daemon", "stop"]);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let second = pending(&h, "two");
    assert!(
        second > first,
        "request #{second} after #{first} and a restart"
    );
    // A file the agent rewrites to an absurd number does not make ids repeat.
    h.ok(&["daemon", "stop"]);
    std::fs::write(h.path().join("run/next-request-id"), "99999999999999999999").unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let third = pending(&h, "three");
    assert!(third > second, "request #{third} after #{second}");
}

#[test]
fn times_are_local_and_relative_and_json_keeps_rfc3339() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let id = pending(&h, "hi");
    let o = h.run_stdin(
        &[
            "approve",
            &id.to_string(),
            "--passphrase-stdin",
            "--ttl",
            "30m",
            "--uses",
            "1",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    // "approved request #N: grant g-… until 14:46 (in 29 min) (1 use left)"
    assert!(
        out.contains("(in 29 min)") || out.contains("(in 30 min)"),
        "{out}"
    );
    assert!(out.contains("(1 use left)"), "{out}");
    assert!(!rfc3339(&out), "{out}");
    let card = text(&o.stderr);
    assert!(
        card.contains("expires:") && card.contains(" min)"),
        "{card}"
    );
    let grants = h.ok(&["grants"]);
    assert!(
        grants.contains("1 use left") && grants.contains("min)"),
        "{grants}"
    );
    // --json keeps the machine format.
    let j = h.json(&["grants", "--json"]);
    let exp = j[0]["expires_at"].as_str().unwrap();
    assert!(exp.ends_with('Z') && exp.contains('T'), "{exp}");
    // The audit's text view shows local time with seconds, not RFC 3339.
    let audit = h.ok(&["audit", "--limit", "3"]);
    assert!(!rfc3339(&audit), "{audit}");
}

#[test]
fn a_used_up_grant_with_a_run_still_going_is_not_listed_as_live() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let child = h.spawn_run(&["run", "--env", "demo", "--", "sleep", "20"]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let t0 = Instant::now();
    let listed = loop {
        let g = h.ok(&["grants"]);
        if g.contains("used up") {
            break g;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{g}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        listed.contains("used up: covers no new run; a run started under it is still going"),
        "{listed}"
    );
    assert!(!listed.contains("use left"), "{listed}");
    let out = h.ok(&["revoke", "--all"]);
    assert!(
        out.contains("revoked 1 grant that had already ended on its own"),
        "{out}"
    );
    assert!(out.contains("stopped 1 run"), "{out}");
    let _ = wait_output(child, Duration::from_secs(30));
    assert_eq!(h.ok(&["grants"]).trim(), "no live grants");
}

#[test]
fn the_terminal_card_explains_each_flag_and_a_pipe_gets_no_colour() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let o = h.run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "0",
        "--",
        "sh",
        "-c",
        "curl -s https://example.com",
    ]);
    assert_eq!(o.status.code(), Some(5));
    let id = h.wait_request();
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let card = text(&o.stderr);
    assert!(
        card.contains(
            "    shell-c: a shell script given with -c: approving approves the whole script"
        ),
        "{card}"
    );
    assert!(
        card.contains("    network: a network tool or URL"),
        "{card}"
    );
    assert!(!card.contains('\u{1b}'), "colour on a pipe: {card}");
    let listed = h.ok(&["requests"]);
    assert!(!listed.contains('\u{1b}'));
}
