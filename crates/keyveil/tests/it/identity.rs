//! Issue 13, item 5: identity comes from the socket, not from the claim.
//!
//! A raw frame can claim any client (`cli:keyveil`, pid 1). The broker reads the connecting
//! process from the socket (`SO_PEERCRED`) and `/proc`: the card and listing show it next to
//! the claim, a disagreeing claim is flagged `claimed-identity`, and the cap on open requests
//! and the `burst` flag count the real process, whatever names it gives.

use serde_json::{Value, json};

use crate::harness::*;
use crate::oracle::raw;

fn ask(h: &Home, client: Value, word: &str) -> Value {
    raw(
        h,
        &json!({"op": "request_access", "client": client, "environment": "demo",
                "variables": null, "argv": ["echo", word], "pass_env": [], "cwd": "/tmp",
                "ttl_seconds": null, "reason": "routine"}),
    )
}

fn claim(kind: &str, name: &str, pid: u32) -> Value {
    json!({"kind": kind, "name": name, "version": "0.1.0", "pid": pid})
}

fn flags(r: &Value) -> Vec<String> {
    r["risk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_claimed_identity_is_shown_next_to_the_real_peer_and_flagged() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", &crate::oracle::random_alnum(32));
    let me = std::process::id();
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();

    // An honest CLI: no flag, the connection is keyveil's own executable.
    let o = h.run(&[
        "run", "--env", "demo", "--wait", "0", "--", "echo", "honest",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let list = h.json(&["requests", "--json"]);
    let honest = list.as_array().unwrap().last().unwrap().clone();
    assert!(
        !flags(&honest).contains(&"claimed-identity".to_owned()),
        "{honest}"
    );
    assert_eq!(honest["peer"]["keyveil_mode"], "cli", "{honest}");
    assert_eq!(honest["peer"]["process"]["pid"], honest["client"]["pid"]);
    h.ok(&["deny", &honest["id"].to_string()]);

    // A raw frame from this test process claiming to be the CLI with pid 1.
    let r = ask(&h, claim("cli", "keyveil", 1), "forged");
    assert_eq!(r["kind"], "ok", "{r}");
    let id = r["data"]["request_id"].as_u64().unwrap();
    let list = h.json(&["requests", "--json"]);
    let forged = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap()
        .clone();
    assert_eq!(forged["client"]["pid"], 1);
    assert_eq!(forged["peer"]["process"]["pid"], me, "{forged}");
    assert_eq!(forged["peer"]["process"]["exe"], exe, "{forged}");
    assert_eq!(forged["peer"]["keyveil_mode"], Value::Null, "{forged}");
    assert!(
        !forged["peer"]["parents"].as_array().unwrap().is_empty(),
        "{forged}"
    );
    assert!(
        flags(&forged).contains(&"claimed-identity".to_owned()),
        "{forged}"
    );
    // The human's card says both.
    let card = h.ok(&["requests"]);
    assert!(card.contains("claimed cli:keyveil 0.1.0 (pid 1)"), "{card}");
    assert!(
        card.contains(&format!("connection:  pid {me} (exe {exe})")),
        "{card}"
    );
    // So does the audit.
    let audit = h.ok(&["audit", "--json", "--limit", "100"]);
    let entry = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "request" && e["request_id"] == id)
        .unwrap();
    assert_eq!(entry["peer"]["process"]["pid"], me, "{entry}");
    assert!(
        entry["claimed_identity"]
            .as_str()
            .is_some_and(|w| w.contains("pid 1")),
        "{entry}"
    );
    // Claiming our real pid but kind `mcp` from a non-keyveil executable is flagged too.
    let r = ask(&h, claim("mcp", "codex", me), "mcp-claim");
    let id2 = r["data"]["request_id"].as_u64().unwrap();
    let list = h.json(&["requests", "--json"]);
    let r2 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id2)
        .unwrap();
    assert!(flags(r2).contains(&"claimed-identity".to_owned()), "{r2}");
}

#[test]
fn caps_and_bursts_count_the_real_peer_not_the_claimed_names() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", &crate::oracle::random_alnum(32));
    let me = std::process::id();
    // Three open requests under three different claimed names fill this process's share.
    for i in 0..3 {
        let r = ask(&h, claim("mcp", &format!("name-{i}"), me), &format!("a{i}"));
        assert_eq!(r["kind"], "ok", "{r}");
    }
    // A fourth, under yet another name (and the CLI's), is refused: same real peer.
    for c in [claim("mcp", "name-3", me), claim("cli", "keyveil", me)] {
        let r = ask(&h, c, "a-fourth");
        assert_eq!(r["kind"], "error", "{r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap()
                .contains("no more are queued"),
            "{r}"
        );
    }
    let list = h.json(&["requests", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    // Deny them; asks keep coming under fresh names: the fifth in a minute is a burst.
    for r in list.as_array().unwrap() {
        h.ok(&["deny", &r["id"].to_string()]);
    }
    let r = ask(&h, claim("mcp", "fresh-4", me), "b4");
    assert_eq!(r["kind"], "ok", "{r}");
    let r = ask(&h, claim("mcp", "fresh-5", me), "b5");
    let id = r["data"]["request_id"].as_u64().unwrap();
    let list = h.json(&["requests", "--json"]);
    let last = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .unwrap();
    assert!(flags(last).contains(&"burst".to_owned()), "{last}");
}
