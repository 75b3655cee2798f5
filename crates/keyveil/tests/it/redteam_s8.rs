//! Red team of session 8's changes (the KDF gate, the MCP locked-vault reply, hidden names'
//! egress order, the clipped-stdin refusal, the never-journaled checkpoint, the locked
//! approve). A held attack is a passing test; a working one is `#[ignore = "LEAK: ..."]`.

use std::os::unix::fs::PermissionsExt;

use crate::harness::*;
use crate::pathdirs::setup;
use crate::redteam4::raw_run;

/// A harmless first screen of data, the program past what the card shows (2,000 characters).
fn long_stdin() -> String {
    let long = format!(
        "{}\nprintf %s \"$TOKEN\" > stolen-s8\n",
        "# just some data lines\n".repeat(100)
    );
    assert!(long.chars().count() > 2000);
    long
}

/// A program the agent writes under a data filter's name (`./cat`), or a link named like one
/// to a shell (`./wc` -> `sh`), is not a data filter: standard input longer than the card shows
/// is refused, and a shorter one is shown as PROGRAM TEXT with `stdin-program`. Before, the
/// base name of argv[0] was enough: the card called the input data, showed its first 2,000
/// characters, and the program past them ran with the value.
#[test]
fn s8_a_data_filters_name_on_an_agent_program_is_not_a_data_filter() {
    let (a, _tok, app) = setup(&[], "");
    let h = &a.h;
    let cat = app.join("cat");
    std::fs::write(&cat, "#!/bin/sh\nexec /bin/sh\n").unwrap();
    std::fs::set_permissions(&cat, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("/bin/sh", app.join("wc")).unwrap();
    for argv in [&["./cat"][..], &["./wc"], &["./wc", "-l"]] {
        let r = raw_run(&a, &app, argv, Some(&long_stdin()), 0);
        assert_eq!(r["kind"], "error", "{argv:?}: {r}");
        assert!(r.to_string().contains("card shows at most 2000"), "{r}");
        let r = raw_run(&a, &app, argv, Some("echo hi\n"), 0);
        if argv[0] == "./wc" {
            // A link to a shell is also refused by pinning (a shell reading its program from
            // standard input), whatever its name: held before this round too.
            assert_eq!(r["kind"], "error", "{argv:?}: {r}");
            continue;
        }
        assert_eq!(r["kind"], "pending", "{argv:?}: {r}");
        let card = h.ok(&["requests"]);
        assert!(
            card.contains("PROGRAM TEXT") && card.contains("stdin-program"),
            "{argv:?}: {card}"
        );
        let id = h.wait_request();
        h.ok(&["deny", &id.to_string()]);
    }
    assert!(!app.join("stolen-s8").exists());
    // The real filter, named by its own name, is still data.
    let r = raw_run(&a, &app, &["cat"], Some(&long_stdin()), 0);
    assert_eq!(r["kind"], "pending", "{r}");
    assert!(!h.ok(&["requests"]).contains("PROGRAM TEXT"));
}

/// Hidden names: the card of a request for bound variables lists them (`bound`, with their
/// hosts) in alias order. Before, the list followed the request's real names (sorted by real
/// name), so its order told the agent how the real names sort, the leak fixed for the
/// policy's `bindings` last session.
#[test]
fn s8_bound_variables_on_a_card_are_in_alias_order() {
    let h = Home::new();
    let names = [
        "AAA_KEY", "BBB_KEY", "CCC_KEY", "DDD_KEY", "EEE_KEY", "FFF_KEY",
    ];
    for n in names {
        h.set("demo", n, "kv_fake_order_Vb8nM2xC5zL7kJ1h");
        let o = h.run_stdin(
            &[
                "policy",
                "set",
                "demo",
                "bind",
                n,
                "api.example.test",
                "--passphrase-stdin",
            ],
            &format!("{PASS}\n"),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
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
    let cwd = tempfile::tempdir().unwrap();
    let r = crate::oracle::raw(
        &h,
        &serde_json::json!({"op": "run", "client": crate::oracle::client("agent"),
            "environment": "demo", "variables": null, "argv": ["true"],
            "cwd": cwd.path().display().to_string(), "env": [], "pass_env": [],
            "stdin": null, "timeout_seconds": 20, "reason": "check", "ttl_seconds": null,
            "wait_seconds": 0, "output": {"mode": "collect", "cap_bytes": 65536}}),
    );
    assert_eq!(r["kind"], "pending", "{r}");
    let listed = h.json(&["requests", "--json"]);
    let card = listed["requests"]
        .get(0)
        .or_else(|| listed.get(0))
        .unwrap_or_else(|| panic!("no card in {listed}"))
        .clone();
    for n in names {
        assert!(!card.to_string().contains(n), "{n} in {card}");
    }
    let bound: Vec<&str> = card["bound"]
        .as_array()
        .unwrap_or_else(|| panic!("no bound list in {card}"))
        .iter()
        .map(|b| b["variable"].as_str().unwrap())
        .collect();
    assert_eq!(bound.len(), names.len(), "{card}");
    let mut sorted = bound.clone();
    sorted.sort_unstable();
    assert_eq!(
        bound, sorted,
        "bound variables listed in alias order: {card}"
    );
}

/// The locked approve: the human's `keyveil approve ID` shows the ask made while the vault was
/// locked (variables `API_TOKEN`), takes the passphrase (and, scripted, the answer) once, then
/// approves the first request after the unlock with the same client, environment, argv and
/// cwd. The agent sends that request for more variables (and its own standard input and
/// pass-through names) before the one the human saw: it must not be the one approved.
#[test]
fn s8_the_locked_approve_grants_only_what_the_locked_card_showed() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "kv_fake_locked_Jq4wE8rT2yU6iO0p");
    h.set("demo", "OTHER_TOKEN", "kv_fake_other_Zx9cV3bN7mA1sD5f");
    h.ok(&["lock"]);
    let cwd = tempfile::tempdir().unwrap();
    let req = |vars: serde_json::Value, stdin: Option<&str>, pass: &[&str], wait: u64| {
        serde_json::json!({"op": "run", "client": crate::oracle::client("agent"),
            "environment": "demo", "variables": vars, "argv": ["cat"],
            "cwd": cwd.path().display().to_string(), "env": [["MY_SETTING", "x"]],
            "pass_env": pass, "stdin": stdin, "timeout_seconds": 20, "reason": "check",
            "ttl_seconds": null, "wait_seconds": wait,
            "output": {"mode": "collect", "cap_bytes": 65536}})
    };
    let r = crate::oracle::raw(&h, &req(serde_json::json!(["API_TOKEN"]), None, &[], 0));
    assert_eq!(r["kind"], "pending", "{r}");
    assert_eq!(r["vault_locked"], true, "{r}");
    let id = r["request_id"].as_u64().unwrap();
    std::thread::scope(|s| {
        let agent = s.spawn(|| {
            let t0 = std::time::Instant::now();
            loop {
                let o = h.run(&["status", "--json"]);
                if o.status.success()
                    && serde_json::from_slice::<serde_json::Value>(&o.stdout)
                        .is_ok_and(|v| v["locked"] == false)
                {
                    break;
                }
                assert!(t0.elapsed().as_secs() < 120, "never unlocked");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // The substitutes first, then the call the human saw (a client may have three
            // requests pending: two substitutes and the real one).
            for (vars, stdin, pass) in [
                (serde_json::json!(null), None, &[][..]),
                (
                    serde_json::json!(["API_TOKEN"]),
                    Some("agent bytes\n"),
                    &["MY_SETTING"][..],
                ),
            ] {
                let r = crate::oracle::raw(&h, &req(vars, stdin, pass, 0));
                assert_eq!(r["kind"], "pending", "{r}");
            }
            crate::oracle::raw(&h, &req(serde_json::json!(["API_TOKEN"]), None, &[], 30))
        });
        let o = h.run_stdin(
            &["approve", &id.to_string(), "--passphrase-stdin"],
            &format!("{PASS}\ny\n"),
        );
        let r = agent.join().unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert_eq!(
            r["kind"], "exit",
            "the call the human saw was not approved: {r}"
        );
    });
    let grants = h.json(&["grants", "--json"]);
    let g = grants.to_string();
    assert!(!g.contains("OTHER_TOKEN"), "{g}");
    assert!(!g.contains("MY_SETTING"), "{g}");
    let pending = h.ok(&["requests"]);
    assert!(pending.contains("OTHER_TOKEN"), "{pending}");
}
