//! Tests of the approval card and audit lines: what an agent supplied is escaped, argv shown
//! whole.
#![allow(clippy::unwrap_used)]
use super::*;
use serde_json::json;

#[test]
fn an_edited_audit_line_never_sends_control_sequences() {
    let e: keyveil_proto::op::AuditEntry = serde_json::from_value(json!({
        "seq": 3,
        "ts": "2026-12-06T10:00:00Z\u{1b}]0;owned\u{7}",
        "event": "run_start\u{1b}[2J",
        "k\u{1b}[31m": "v\u{202e}",
    }))
    .unwrap();
    let line = audit_line(&e);
    assert!(
        !line.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{line:?}"
    );
    assert!(line.contains("run_start"), "{line}");
}

#[test]
fn card_shows_argv_per_line_and_escapes_controls() {
    let r = json!({
        "id": 7, "client": {"kind":"mcp","name":"evil\u{1b}[2J","version":"1","pid":42},
        "environment": "demo", "variables": ["API_TOKEN"], "cwd": "/w",
        "argv": ["sh", "-c", "echo ok\u{1b}[1A\u{1b}[2K"], "reason": "tests\u{7}",
        "expires_at": "2026-01-01T00:00:00Z"
    });
    let card = render(&serde_json::from_value(r).unwrap());
    assert!(!card.contains('\u{1b}'), "{card}");
    assert!(!card.contains('\u{7}'));
    assert!(
        card.contains("[2] \"echo ok\\u{1b}[1A\\u{1b}[2K\""),
        "{card}"
    );
    assert!(card.contains("requester says (unverified)"));
}

#[test]
fn each_flag_has_its_meaning_and_colour_is_only_ours() {
    let r = json!({
        "id": 9, "environment": "demo", "variables": ["A"], "cwd": "/w",
        "argv": ["sh", "-c", "curl x\u{1b}[31m"], "reason": "r\u{1b}]8;;evil\u{7}",
        "risk": ["shell-c", "network", "made-up\u{1b}[2J"],
        "expires_at": "2026-01-01T00:00:00Z"
    });
    let r: op::RequestCard = serde_json::from_value(r).unwrap();
    let plain = render(&r);
    assert!(
        plain.contains(
            "    shell-c: a shell script given with -c: approving approves the whole script\n"
        ),
        "{plain}"
    );
    assert!(
        plain.contains("    network: a network tool or URL\n"),
        "{plain}"
    );
    assert!(!plain.contains('\u{1b}'), "{plain}");
    let coloured = render_styled(&r, Style { colour: true });
    assert!(
        coloured.contains("\u{1b}[1;31mRISK:\u{1b}[0m"),
        "{coloured}"
    );
    // Every escape in the coloured card is one of ours: removing them leaves the plain card.
    let mut stripped = coloured.clone();
    for code in ["\u{1b}[1;31m", "\u{1b}[33m", "\u{1b}[1m", "\u{1b}[0m"] {
        stripped = stripped.replace(code, "");
    }
    assert_eq!(stripped, plain);
}

#[test]
fn no_color_and_dumb_terminals_get_no_colour() {
    // Only the rule: the environment is the process's, so it is not changed here.
    assert_eq!(Style::for_terminal(false), Style::PLAIN);
}

#[test]
fn card_shows_chosen_values_new_variables_and_contradictions() {
    let long = format!("https://evil.example/{}", "a".repeat(300));
    let r = json!({
        "id": 8, "environment": "demo", "variables": ["OPENAI_API_KEY", "OPENAI_BASE_URL"],
        "cwd": "/w", "argv": ["python3", "check.py"], "pass_env": ["API_HOST"],
        "risk": ["agent-chosen-value", "new-variable", "reason-contradicts-facts"],
        "reason": "you approved this before",
        "contradictions": ["this command was never approved before"],
        "new_variables": [{"variable": "OPENAI_BASE_URL", "created_at": "2026-12-06T10:00:00Z",
            "stored_at": "2026-12-06T10:00:00Z", "stored": "without the factor"}],
        "chosen_values": [
            {"origin": "pass-env", "name": "API_HOST", "value": "http://127.0.0.1:9\u{1b}[2K",
             "bytes": 20, "clipped": false, "digest": "ab"},
            {"origin": "stored-without-factor", "variable": "OPENAI_BASE_URL",
             "stored_at": "2026-12-06T10:00:00Z", "value": &long[..200], "bytes": long.len(),
             "clipped": true, "digest": "0123456789abcdef0123"}
        ],
        "expires_at": "2026-01-01T00:00:00Z"
    });
    let card = render(&serde_json::from_value(r).unwrap());
    assert!(!card.contains('\u{1b}'), "{card}");
    assert!(card.contains("new-variable (OPENAI_BASE_URL)"), "{card}");
    assert!(
        card.contains(&format!(
            "NEW VARIABLE: OPENAI_BASE_URL stored {} without the factor",
            crate::when::human_time("2026-12-06T10:00:00Z")
        )),
        "{card}"
    );
    assert!(
        card.contains("API_HOST = \"http://127.0.0.1:9\\u{1b}[2K\"  (passed through"),
        "{card}"
    );
    assert!(
        card.contains("clipped: 321 bytes in all, digest 0123456789abcdef"),
        "{card}"
    );
    assert!(
        card.contains("THE REASON IS CONTRADICTED: this command was never approved before"),
        "{card}"
    );
    assert!(
        card.contains("but the broker's facts: this command was never approved before"),
        "{card}"
    );
}

/// A card of `sh -c` under a pyenv- and rustup-style `PATH`: 20 inputs of one Python
/// install, 10 of one Rust toolchain, one project script, one home config with a quoted
/// setting, one toolchain directory inside the project.
fn crowded_card() -> op::RequestCard {
    let mut inputs = Vec::new();
    for n in 0..20 {
        inputs.push(
            json!({"role": if n % 4 == 0 { "path-dir" } else { "toolchain-dir" },
            "path": format!("/home/u/.pyenv/versions/3.11.7/lib/python3.11/d{n}"),
            "sha256": "ab".repeat(32)}),
        );
    }
    for n in 0..10 {
        inputs.push(json!({"role": "rust-toolchain",
            "path": format!("/home/u/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu/lib/l{n}"),
            "sha256": "ab".repeat(32)}));
    }
    inputs.push(json!({"role": "script", "path": "/w/check.sh", "sha256": "cd".repeat(32)}));
    inputs.push(json!({"role": "script-shell", "path": "/home/u/.npmrc",
        "sha256": "ef".repeat(32), "detail": "script-shell=/tmp/evil"}));
    inputs.push(json!({"role": "path-dir", "path": "/w/node_modules/.bin",
        "sha256": "01".repeat(32)}));
    serde_json::from_value(json!({
        "id": 4, "environment": "demo", "variables": ["API_TOKEN"], "cwd": "/w",
        "argv": ["sh", "-c", "./check.sh"], "risk": ["shell-c"], "inputs": inputs,
        "expires_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

/// The digest on a folded line: the same files with the same content give the same one.
fn folded_digest(card: &str, root: &str) -> String {
    card.lines()
        .find(|l| l.contains(&format!(" under {root} (")))
        .and_then(|l| l.rsplit_once("digest "))
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default()
}

#[test]
fn a_crowded_card_folds_toolchain_inputs_by_install_but_never_project_files_or_quoted_settings() {
    let r = crowded_card();
    let card = render(&r);
    assert!(card.contains("/w/check.sh (script)"), "{card}");
    assert!(card.contains("script-shell=/tmp/evil"), "{card}");
    assert!(card.contains("/w/node_modules/.bin (path-dir)"), "{card}");
    assert!(
        card.contains("and 30 toolchain inputs pinned too"),
        "{card}"
    );
    assert!(
        card.contains(
            "    20 under /home/u/.pyenv/versions/3.11.7 (toolchain-dir 15, path-dir 5), digest "
        ),
        "{card}"
    );
    assert!(
        card.contains(
            "    10 under /home/u/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu (rust-toolchain 10), digest "
        ),
        "{card}"
    );
    assert!(!card.contains("/lib/python3.11/d"), "{card}");
    assert!(card.lines().count() < 20, "{card}");
    // One changed file in the install changes its line's digest (the other stays).
    let py = "/home/u/.pyenv/versions/3.11.7";
    let rust = "/home/u/.rustup/toolchains/1.95.0-x86_64-unknown-linux-gnu";
    let mut changed = r.clone();
    changed.inputs[7].sha256 = "ac".repeat(32);
    let card2 = render(&changed);
    assert_eq!(folded_digest(&card2, py).len(), 16, "{card2}");
    assert_ne!(folded_digest(&card, py), folded_digest(&card2, py));
    assert_eq!(folded_digest(&card, rust), folded_digest(&card2, rust));
    let full = render_details(&r, Style::PLAIN);
    assert_eq!(full.matches("/lib/python3.11/d").count(), 20, "{full}");
    assert!(!full.contains("toolchain inputs pinned too"), "{full}");
}

#[test]
fn many_install_roots_are_listed_up_to_a_bound_and_the_rest_counted() {
    let mut r = crowded_card();
    for n in 0..6 {
        r.inputs.push(op::InputPinInfo {
            role: "path-dir".into(),
            path: format!("/opt/tool{n}/bin"),
            sha256: "ab".repeat(32),
            detail: None,
        });
    }
    // A directory merely named `opt` in a home is not `/opt`.
    assert_eq!(install_root("/home/u/opt/x/bin"), "/home/u/opt/x");
    assert_eq!(install_root("/usr/lib/python3/dist-packages"), "/usr");
    let card = render(&r);
    assert_eq!(card.matches(" under ").count(), ROOTS_LISTED, "{card}");
    assert!(card.contains("    4 more in 4 other directories"), "{card}");
}

#[test]
fn a_short_card_lists_every_input() {
    let mut r = crowded_card();
    r.inputs.truncate(INPUTS_BEFORE_FOLDING);
    let card = render(&r);
    assert_eq!(
        card.matches("  input:").count(),
        INPUTS_BEFORE_FOLDING,
        "{card}"
    );
}

#[test]
fn the_recap_above_the_prompt_names_command_place_variables_and_risk_escaped() {
    let mut r = crowded_card();
    r.argv = Some(vec!["sh".into(), "-c".into(), "echo \u{1b}[2J".into()]);
    let line = recap(&r, Style::PLAIN);
    assert!(
        line.starts_with("approving request #4: \"sh\" \"-c\" "),
        "{line}"
    );
    assert!(line.contains("in /w  with API_TOKEN of demo"), "{line}");
    assert!(line.contains("RISK: shell-c"), "{line}");
    assert!(!line.contains('\u{1b}'), "{line}");
    assert_eq!(line.lines().count(), 1);
}

#[test]
fn a_binding_that_swaps_into_bodies_or_urls_says_so_on_the_card() {
    let card_for = |url: bool, body: bool| {
        let r = json!({
            "id": 8, "client": {"kind":"mcp","name":"a","version":"1","pid":42},
            "environment": "demo", "variables": ["API_TOKEN"], "cwd": "/w",
            "argv": ["python3", "call.py"], "expires_at": "2026-01-01T00:00:00Z",
            "bound": [{"variable": "API_TOKEN", "hosts": ["api.example.com"], "url": url, "body": body}]
        });
        render(&serde_json::from_value(r).unwrap())
    };
    let plain = card_for(false, false);
    assert!(
        plain.contains("API_TOKEN → placeholder; real value only to api.example.com\n"),
        "{plain}"
    );
    assert!(card_for(false, true).contains("api.example.com (also in bodies)"));
    assert!(card_for(true, false).contains("api.example.com (also in the URL)"));
    assert!(card_for(true, true).contains("(also in the URL and bodies)"));
}
