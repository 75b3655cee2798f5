//! Factors and policy: TOTP enrolment and approval (replay refused), policy changes need the
//! factor, auto-approve and deny rules, the `confirm` opt-in.

use crate::harness::*;

const TOKEN: &str = "tok_Pq7rS2tU9vW4xY1zA6bC";

fn pending_run(h: &Home, cmd: &[&str]) -> u64 {
    let mut args = vec!["run", "--env", "demo", "--wait", "0", "--"];
    args.extend_from_slice(cmd);
    assert_eq!(h.run(&args).status.code(), Some(5));
    h.wait_request()
}

#[test]
fn totp_approves_where_policy_allows_and_refuses_replays() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let secret = enroll(&h);
    assert!(
        !h.audit_text().contains(&secret),
        "the seed reached the audit log"
    );
    let id = pending_run(&h, &["echo", "one"]);
    // The default policy wants the passphrase: a TOTP code is not enough.
    let o = h.run_stdin(
        &["approve", &id.to_string(), "--totp-stdin"],
        &format!("{}\n", totp_code(&secret, 1)),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("requires the passphrase"),
        "{}",
        text(&o.stderr)
    );
    // Allow TOTP (a policy change: needs the factor).
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "factor",
            "totp",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A wrong code is refused and audited (the broker judges it: the CLI cannot tell).
    let o = h.run_stdin(&["approve", &id.to_string(), "--totp-stdin"], "000000\n");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(h.audit_text().contains("\"factor_failed\""));
    let code = totp_code(&secret, 1);
    let o = h.run_stdin(
        &["approve", &id.to_string(), "--totp-stdin"],
        &format!("{code}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The same code again is a replay: its step is never offered again.
    let id2 = pending_run(&h, &["echo", "two"]);
    let o = h.run_stdin(
        &["approve", &id2.to_string(), "--totp-stdin"],
        &format!("{code}\n"),
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stderr).contains("already used"),
        "{}",
        text(&o.stderr)
    );
    // A code on the command line is refused before anything is sent: /proc/PID/cmdline is
    // readable by every process of the user.
    let fresh = totp_code(&secret, 1);
    let o = h.run(&["approve", &id2.to_string(), "--totp", &fresh]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("/proc/PID/cmdline"));
    assert_eq!(
        h.json(&["requests", "--json"])[0]["id"],
        id2,
        "the request must still be pending"
    );
}

#[test]
fn policy_cannot_be_loosened_without_the_factor() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    for change in [vec!["factor", "confirm"], vec!["max-ttl", "30d"]] {
        let mut args = vec!["policy", "set", "demo"];
        args.extend_from_slice(&change);
        args.push("--passphrase-stdin");
        let o = h.run_stdin(&args, "guessed passphrase\n");
        assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    }
    let o = h.run_stdin(
        &["policy", "set", "demo", "factor", "confirm", "--totp-stdin"],
        "123456\n",
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let shown = h.json(&["policy", "show", "demo", "--json"]);
    assert_eq!(shown["policy"]["factor"], "passphrase");
    // `--confirm` cannot approve under the default policy.
    let id = pending_run(&h, &["echo", "x"]);
    let o = h.run(&["approve", &id.to_string(), "--confirm"]);
    assert_eq!(o.status.code(), Some(3));
    // The human opts in, warned; then a plain confirmation approves.
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "factor",
            "confirm",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success());
    assert!(text(&o.stderr).contains("warning"), "{}", text(&o.stderr));
    let o = h.run(&["approve", &id.to_string(), "--confirm"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn auto_approve_and_deny_rules() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir(work.path().join("sub")).unwrap();
    let wd = work.path().to_string_lossy().into_owned();
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "auto-approve",
            "--cwd",
            &wd,
            "--ttl",
            "1h",
            "--passphrase-stdin",
            "--",
            "sh",
            "-c",
            "echo auto $API_TOKEN",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let sub = work.path().join("sub").to_string_lossy().into_owned();
    for dir in [&wd, &sub] {
        let o = h.run(&[
            "run",
            "--env",
            "demo",
            "--cwd",
            dir,
            "--wait",
            "5",
            "--",
            "sh",
            "-c",
            "echo auto $API_TOKEN",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "auto [REDACTED:API_TOKEN]\n");
    }
    assert!(h.audit_text().contains("\"auto_approve\""));
    // Elsewhere, or another command: a human is asked.
    let o = h.run(&[
        "run",
        "--env",
        "demo",
        "--cwd",
        "/tmp",
        "--wait",
        "0",
        "--",
        "sh",
        "-c",
        "echo auto $API_TOKEN",
    ]);
    assert_eq!(o.status.code(), Some(5));
    let o = h.run(&[
        "run",
        "--env",
        "demo",
        "--cwd",
        &wd,
        "--wait",
        "0",
        "--",
        "sh",
        "-c",
        "echo other",
    ]);
    assert_eq!(o.status.code(), Some(5));
    // Deny rule: refused at once, without a request.
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "deny",
            "--passphrase-stdin",
            "--",
            "printenv",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = h.run(&["run", "--env", "demo", "--wait", "5", "--", "printenv"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        text(&o.stderr).contains("deny rule #0"),
        "{}",
        text(&o.stderr)
    );
    let shown = h.ok(&["policy", "show", "demo"]);
    assert!(
        shown.contains("auto-approve #0") && shown.contains("deny #0"),
        "{shown}"
    );
}

/// The value a granted run sees, as a SHA-256 prefix (never the value itself).
fn value_sha(h: &Home) -> String {
    let script = "printf %s \"$API_TOKEN\" | sha256sum | cut -c1-16";
    let o = h.run_approved(
        &[
            "run", "--env", "demo", "--wait", "30", "--", "sh", "-c", script,
        ],
        std::time::Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout).trim().to_owned()
}

#[test]
fn replacing_or_removing_a_stored_value_needs_the_factor() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let before = value_sha(&h);
    assert_eq!(before, &sha256_hex(TOKEN)[..16]);
    let theirs = "kv_fake_agent_chosen_Lm4nB7vC1xZ9";
    // What an agent with a shell could try: each is refused, says why, and changes nothing.
    let attempts: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["set", "demo", "API_TOKEN", "--from-stdin"],
            theirs.to_owned(),
        ),
        (vec!["generate", "demo", "API_TOKEN"], String::new()),
        (vec!["unset", "demo", "API_TOKEN"], String::new()),
        (vec!["env", "rm", "demo"], String::new()),
        // A wrong passphrase is a failed factor attempt (audited).
        (
            vec![
                "set",
                "demo",
                "API_TOKEN",
                "--from-stdin",
                "--passphrase-stdin",
            ],
            format!("guessed passphrase\n{theirs}"),
        ),
        (
            vec!["unset", "demo", "API_TOKEN", "--totp-stdin"],
            "123456\n".to_owned(),
        ),
    ];
    for (args, input) in &attempts {
        let o = h.run_stdin(args, input);
        let err = text(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{args:?} succeeded");
        if args.contains(&"--passphrase-stdin") {
            // A wrong passphrase: refused by the CLI itself, nothing sent (exit 3).
            assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
            assert!(err.contains("nothing was sent"), "{args:?}: {err}");
        } else if args.contains(&"--totp-stdin") {
            // No authenticator is enrolled: refused, nothing changed.
            assert!(err.contains("no TOTP authenticator"), "{args:?}: {err}");
        } else {
            // No factor: the broker says what is needed, and with no terminal to ask at, the
            // CLI says how to give it.
            assert!(err.contains("needs your factor"), "{args:?}: {err}");
            assert!(
                err.contains("cannot ask for your passphrase: no terminal"),
                "{args:?}: {err}"
            );
            assert!(
                err.contains("hint: add `--passphrase-stdin` or `--totp-stdin`"),
                "{args:?}: {err}"
            );
        }
        assert!(!err.contains(TOKEN) && !err.contains(theirs), "{err}");
    }
    assert_eq!(value_sha(&h), before, "the stored value changed");
    // A new variable needs nothing (it discloses nothing and replaces nothing).
    h.set("demo", "NEW_ONE", "kv_fake_new_value_Tr5eW2qA8sD3");
    // The human, with the passphrase: replaced, then removed.
    let o = h.run_stdin(
        &[
            "set",
            "demo",
            "API_TOKEN",
            "--from-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{theirs}"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("updated"));
    assert_eq!(value_sha(&h), &sha256_hex(theirs)[..16]);
    let o = h.run_stdin(
        &["unset", "demo", "NEW_ONE", "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Nothing of either value reached the audit log.
    let audit = h.audit_text();
    assert!(!audit.contains(TOKEN) && !audit.contains(theirs));
}
