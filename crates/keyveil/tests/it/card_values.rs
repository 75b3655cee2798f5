//! A request card never shows a stored value. What a card shows of a process (a run's argv,
//! a mount reader's argv, code-loading environment and cwd) can come from a granted child that
//! holds values (`sh -c 'tool --password "$DB_PASSWORD"'` where `tool` reads a mounted `.env`, or
//! runs `keyveil run` itself), and the agent reads cards (`keyveil requests`, the raw socket)
//! without any factor. Here the test plays that child: it knows the values and puts them where
//! a card would show them; no listing, card or audit entry may carry them in any encoding.

use std::time::Duration;

use crate::harness::{Home, contains, encodings, text};
use crate::mount::{Project, finished, mount, store, values};

/// Every place an agent reads cards from without a factor, and the audit log on disk.
fn agent_views(h: &Home) -> Vec<(String, Vec<u8>)> {
    vec![
        ("requests".into(), h.run(&["requests"]).stdout),
        (
            "requests --json".into(),
            h.run(&["requests", "--json"]).stdout,
        ),
        (
            "requests --details".into(),
            h.run(&["requests", "--details"]).stdout,
        ),
        (
            "audit.jsonl".into(),
            std::fs::read(h.path().join("audit.jsonl")).unwrap_or_default(),
        ),
    ]
}

fn assert_no_value(views: &[(String, Vec<u8>)], vals: &[(&str, String)]) {
    for (where_, b) in views {
        for (k, v) in vals {
            for enc in encodings(v) {
                assert!(
                    !contains(b, &enc),
                    "{where_} shows the value of {k}: {}",
                    text(b).chars().take(600).collect::<String>()
                );
            }
        }
    }
}

#[test]
fn a_mount_readers_argv_and_environment_holding_values_are_redacted_on_its_card() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    let p = Project::new();
    mount(&h, &p);
    // A granted child starts a reader whose argv and code-loading environment carry values.
    let (r, id) = h.granted_ask(&format!(
        r#"cd '{}' && PYTHONWARNINGS="$PLAIN" NODE_OPTIONS="$SPACED" sh -c 'cat .env > /dev/null' sh "$PLAIN" "$SPACED""#,
        p.path().display()
    ));
    let views = agent_views(&h);
    assert_no_value(&views, &vals);
    // The human still learns that the argv carries a value, by name.
    let shown = text(&views[1].1);
    assert!(shown.contains("[REDACTED:PLAIN]"), "{shown}");
    h.run(&["deny", &id.to_string()]);
    let o = finished(r);
    assert!(o.stdout.is_empty());
    assert_no_value(&agent_views(&h), &vals);
}

#[test]
fn a_run_request_whose_argv_holds_a_value_shows_it_redacted() {
    let h = Home::new();
    let vals = values();
    store(&h, &vals);
    // `keyveil run` started by a granted child with a value on its command line.
    let (mut c, id) = h.granted_ask(r#"KV run --env demo --wait 30 -- echo "$PLAIN""#);
    let views = agent_views(&h);
    h.run(&["deny", &id.to_string()]);
    let _ = c.kill();
    let _ = c.wait();
    assert_no_value(&views, &vals);
    let shown = text(&views[1].1);
    assert!(shown.contains("[REDACTED:PLAIN]"), "{shown}");
    std::thread::sleep(Duration::from_millis(100));
    assert_no_value(&agent_views(&h), &vals);
}
