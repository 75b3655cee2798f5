//! A run's redactor kept between the runs of a standing grant (issue 21, performance item 2):
//! reused only for exactly the names and values it was built from, so a run after `set`
//! redacts the new value; dropped when the grant ends and when the vault locks.

use std::time::Duration;

use crate::harness::*;

const FIRST: &str = "kept-redactor-first-NOT-A-SECRET-4Rq";
const SECOND: &str = "kept-redactor-second-NOT-A-SECRET-9Zw";
const OTHER: &str = "kept-redactor-other-NOT-A-SECRET-2Lp";

const RUN: [&str; 8] = [
    "run",
    "--env",
    "demo",
    "--wait",
    "1",
    "--",
    "printenv",
    "API_TOKEN",
];

fn kept(h: &Home) -> u64 {
    h.json(&["status", "--json"])["kept_redactors"]
        .as_u64()
        .unwrap()
}

/// Asks for `printenv API_TOKEN`, approves it for five minutes, and returns the first run's
/// output.
fn standing_grant(h: &Home) -> std::process::Output {
    let mut args = RUN;
    args[4] = "30";
    let child = h.spawn_run(&args);
    let id = h.wait_request();
    let a = h.approve(id, &["--ttl", "5m"]);
    assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
    wait_output(child, Duration::from_secs(30))
}

/// The run printed the variable and the agent saw only its marker.
fn assert_redacted(o: &std::process::Output) {
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert_eq!(out.trim(), "[REDACTED:API_TOKEN]", "{out}");
    for v in [FIRST, SECOND, OTHER] {
        assert!(!contains(&o.stdout, v) && !contains(&o.stderr, v));
    }
}

#[test]
fn a_kept_redactor_follows_a_changed_value_and_leaves_with_its_grant_and_the_lock() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", FIRST);
    h.set("demo", "OTHER", OTHER);
    assert_eq!(kept(&h), 0, "no run, nothing kept");
    assert_redacted(&standing_grant(&h));
    assert_eq!(kept(&h), 1, "the standing grant keeps its run's redactor");
    assert_redacted(&h.run(&RUN));
    assert_eq!(kept(&h), 1, "the same values: the same redactor");

    // The human stores a new value: the next run injects it, and a redactor built from the old
    // value would let it through in plain text.
    h.set("demo", "API_TOKEN", SECOND);
    assert_redacted(&h.run(&RUN));
    assert_eq!(
        kept(&h),
        1,
        "rebuilt for the new value, the old one replaced"
    );
    // A run that writes the new value into a file: the write-side scan (the same redactor)
    // reports it.
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().to_str().unwrap();
    let sh = "printf %s \"$API_TOKEN\" > out.txt";
    let run_sh = [
        "run", "--env", "demo", "--cwd", cwd, "--wait", "30", "--", "sh", "-c", sh,
    ];
    let child = h.spawn_run(&run_sh);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        SECOND
    );
    let err = text(&o.stderr);
    assert!(
        err.contains("wrote the value of API_TOKEN into") && err.contains("out.txt"),
        "the new value written to a file was not reported: {err}"
    );
    assert_eq!(kept(&h), 2, "one per grant");
    // The grant's next run reuses its kept matchers, the write-side scan's included: the
    // value written again is reported again.
    let o = h.run(&run_sh);
    let err = text(&o.stderr);
    assert!(
        err.contains("wrote the value of API_TOKEN into") && err.contains("out.txt"),
        "a run under the kept matchers did not report the value written: {err}"
    );
    assert_eq!(kept(&h), 2, "reused, not rebuilt");

    // Locking drops every kept redactor with the values.
    h.ok(&["lock"]);
    assert_eq!(kept(&h), 0, "a locked broker keeps no redactor");
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "unlock failed: {}", text(&o.stderr));
    assert_eq!(kept(&h), 0);
    assert_redacted(&standing_grant(&h));
    assert_eq!(kept(&h), 1);

    // Revoking the grant drops its redactor.
    h.ok(&["revoke", "--all"]);
    assert_eq!(kept(&h), 0, "a revoked grant keeps no redactor");
}
