//! The shared redaction corpus (`tests/cases/redaction-cases.jsonl`), run through `keyveil run`
//! on the real broker: every case's program runs under a grant with the case's secrets stored in
//! the vault (not in the requester's environment), and its output must hold no
//! `must_not_contain` string and every `must_contain` string.

use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const CASES: &str = include_str!("../../../../tests/cases/redaction-cases.jsonl");

#[test]
fn every_redaction_case_is_redacted_through_the_broker() {
    let h = Home::new();
    let cases: Vec<Value> = CASES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let id = c["id"].as_str().unwrap();
        let stretch = c["kind"] == "adversarial-transform";
        let env = format!("case{i}");
        h.ok(&["env", "create", &env]);
        for (k, v) in c["secrets"].as_object().unwrap() {
            // --from-stdin strips one trailing newline: add one so values ending in \n survive.
            let o = h.run_stdin(
                &["set", &env, k, "--from-stdin"],
                &format!("{}\n", v.as_str().unwrap()),
            );
            assert!(o.status.success(), "{id}: set failed: {}", text(&o.stderr));
        }
        let program = c["program"].as_str().unwrap();
        let args = [
            "run", "--env", &env, "--wait", "30", "--", "sh", "-c", program,
        ];
        let child = h.spawn_run(&args);
        let rid = h.wait_request();
        let a = h.approve(rid, &[]);
        assert!(
            a.status.success(),
            "{id}: approve failed: {}",
            text(&a.stderr)
        );
        let o = wait_output(child, Duration::from_secs(30));
        let mut all = o.stdout.clone();
        all.extend_from_slice(&o.stderr);
        let leaked: Vec<&str> = c["must_not_contain"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| contains(&all, s))
            .collect();
        let lost: Vec<&str> = c["must_contain"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter(|s| !contains(&all, s))
                    .collect()
            })
            .unwrap_or_default();
        let clean = leaked.is_empty() && lost.is_empty();
        if !clean && !stretch {
            // Report by case id and count, never the leaked string itself.
            failures.push(format!(
                "{id}: {} leaked, {} over-masked",
                leaked.len(),
                lost.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "redaction failures through the broker: {failures:#?}"
    );
}
