//! Hidden names and the human (issue 17, item 7): with `hide-names on`, the human's own
//! `keyveil approve` shows the real names after the factor and grants only on a yes; nothing the
//! agent can send (raw socket, CLI without the factor, a wrong factor, a made-up ticket) ever
//! returns one. The approval page's side is in `web.rs`
//! (`hidden_names_on_the_page_need_a_session_opened_by_the_factor`).

use crate::custody::{keep, raw, relay};
use crate::harness::*;
use serde_json::json;

/// A fake value (never a real credential).
const VALUE: &str = "kv_fake_Jm4rT8wQ1zX6cV3bN9aS";
/// The name being protected.
const REAL: &str = "PAYROLL_BANK_TOKEN";

/// `demo` with `REAL` stored and names hidden; returns the alias of `REAL`.
fn hidden_home() -> (Home, String) {
    let h = Home::new();
    h.set("demo", REAL, VALUE);
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "hide-names",
            "on",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let alias = h.json(&["env", "show", "demo", "--json"])["variables"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(alias.starts_with("HIDDEN_"), "{alias}");
    (h, alias)
}

fn pending_ids(h: &Home) -> Vec<u64> {
    h.json(&["requests", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect()
}

#[test]
fn approve_shows_the_real_names_after_the_factor_and_grants_only_on_yes() {
    let (h, alias) = hidden_home();
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", &alias, "--wait", "60", "--", "true",
    ]);
    let id = h.wait_request();
    let ids = id.to_string();
    let audit_before = h.audit_text().len();
    // The card before the factor names the alias only.
    let requests = h.ok(&["requests", "--json"]);
    assert!(requests.contains(&alias) && !requests.contains(REAL));

    // The factor, then "no": the names were shown, nothing was granted, the request waits.
    let o = h.run_stdin(
        &["approve", &ids, "--passphrase-stdin"],
        &format!("{PASS}\nn\n"),
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{alias} = {REAL}")),
        "the human was not shown the real name: {err}"
    );
    assert!(
        text(&o.stdout).contains("not approved"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(pending_ids(&h), vec![id]);
    assert_eq!(
        h.json(&["grants", "--json"]).as_array().map(Vec::len),
        Some(0)
    );

    // The factor, then "y": granted, and the run goes ahead.
    let o = h.run_stdin(
        &["approve", &ids, "--passphrase-stdin"],
        &format!("{PASS}\ny\n"),
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("{alias} = {REAL}")), "{err}");
    assert!(text(&o.stdout).contains(&format!("approved request #{id}")));
    let o = wait_output(child, std::time::Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The audit names the reveal, never the name (entries from before the policy change keep
    // the names they were written with).
    let audit = h.audit_text();
    let since = &audit[audit_before..];
    assert!(since.contains("\"approve_reveal\""), "{since}");
    assert!(!since.contains(REAL) && !audit.contains(VALUE), "{since}");
}

#[test]
fn a_wrong_factor_reveals_nothing_and_grants_nothing() {
    let (h, alias) = hidden_home();
    let mut child = h.spawn_run(&[
        "run", "--env", "demo", "--only", &alias, "--wait", "60", "--", "true",
    ]);
    let id = h.wait_request();
    let o = h.run_stdin(
        &["approve", &id.to_string(), "--passphrase-stdin"],
        "a guessed passphrase\ny\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains(REAL) && !text(&o.stdout).contains(REAL));
    assert_eq!(pending_ids(&h), vec![id]);
    // A TOTP code where none is enrolled: refused the same way, nothing shown.
    let o = h.run_stdin(&["approve", &id.to_string(), "--totp-stdin"], "123456\ny\n");
    assert_ne!(o.status.code(), Some(0));
    assert!(!text(&o.stderr).contains(REAL) && !text(&o.stdout).contains(REAL));
    assert_eq!(
        h.json(&["grants", "--json"]).as_array().map(Vec::len),
        Some(0)
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The agent on the raw socket: the reveal without a factor (or with a plain confirmation under
/// a `confirm` policy), with a forged proof, and the second step with made-up tickets. No reply
/// names the variable; nothing is granted.
#[test]
fn the_agent_on_the_socket_gets_no_real_name_and_no_grant() {
    let (h, alias) = hidden_home();
    // Under `confirm`, the agent may approve with a plain confirmation: that must still not
    // reveal the names.
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
    assert!(o.status.success(), "{}", text(&o.stderr));
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", &alias, "--wait", "60", "--", "true",
    ]);
    let id = h.wait_request();
    let card = h.json(&["requests", "--json"])[0].clone();
    let mut replies = Vec::new();
    replies.push(raw(
        &h,
        &json!({"op": "approve_reveal", "request_id": id, "card": "00",
                "ttl_seconds": null, "uses": null, "any_command": false}),
    ));
    replies.push(raw(
        &h,
        &json!({"op": "approve_reveal", "request_id": id, "card": "00", "confirm": true,
                "ttl_seconds": null, "uses": null, "any_command": false}),
    ));
    let ch = raw(
        &h,
        &json!({"op": "factor_challenge", "client_nonce": "cd".repeat(32)}),
    );
    let cid = ch["data"]["id"].as_str().unwrap().to_owned();
    replies.push(raw(
        &h,
        &json!({"op": "approve_reveal", "request_id": id, "card": "00",
                "factor": {"challenge": cid, "key": 0, "proof": "ab".repeat(32)},
                "ttl_seconds": null, "uses": null, "any_command": false}),
    ));
    for ticket in ["00".repeat(32), "ff".repeat(32), String::new()] {
        replies.push(raw(
            &h,
            &json!({"op": "approve_confirm", "request_id": id, "ticket": ticket}),
        ));
    }
    for r in &replies {
        assert_eq!(r["kind"], "error", "{r}");
        assert!(!r.to_string().contains(REAL), "{r}");
    }
    assert_eq!(
        h.json(&["grants", "--json"]).as_array().map(Vec::len),
        Some(0)
    );
    // The plain confirmation approves (the policy allows it) and names the alias only.
    let o = h.run(&["approve", &id.to_string(), "--confirm"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains(REAL) && !text(&o.stdout).contains(REAL));
    assert!(card.to_string().contains(&alias), "{card}");
    let o = wait_output(child, std::time::Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// The human's reveal goes through a relay the agent put at the socket: the relay never reads the
/// real name (it travels sealed for the CLI that proved the factor). It sees the ticket only in
/// the yes that spends it, which can complete nothing but the approval the human just gave.
#[test]
fn the_reveal_is_sealed_from_a_relay_at_the_socket() {
    let (h, alias) = hidden_home();
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", &alias, "--wait", "60", "--", "true",
    ]);
    let id = h.wait_request();
    let agent = relay(&h, keep, keep);
    let o = h.run_stdin(
        &["approve", &id.to_string(), "--passphrase-stdin"],
        &format!("{PASS}\ny\n"),
    );
    let seen = agent.seen();
    agent.restore(&h);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(REAL), "the human saw no name");
    assert!(
        contains(&seen, "approve_reveal"),
        "the relay saw no reveal at all"
    );
    assert!(!contains(&seen, REAL), "the relay read the real name");
    let o = wait_output(child, std::time::Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
}
