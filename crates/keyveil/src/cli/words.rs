//! How the CLI words what the broker answers for people: grants as lines (live, used up with a
//! run still going, expired), `revoke`'s report, use counts. Times go through `when.rs`;
//! `--json` output never comes here.
#![allow(clippy::indexing_slicing)]

use serde_json::Value;

use crate::when::human_time;

/// `n` with its noun, singular or plural.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A grant's remaining uses in words: `1 use left`, `unlimited uses`.
pub(crate) fn uses_left(v: &Value) -> String {
    match v.as_u64() {
        None => "unlimited uses".to_owned(),
        Some(n) => format!("{} left", count(n, "use", "uses")),
    }
}

/// Whether a listed grant still covers a new run; when not, why (`used up`, `expired`). The
/// broker lists such a grant while a run started under it is still going, so it can be revoked
/// to stop that run.
pub(crate) fn ended(g: &Value, now: jiff::Timestamp) -> Option<&'static str> {
    if g["uses_left"].as_u64() == Some(0) {
        return Some("used up");
    }
    let expired = g["expires_at"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_some_and(|t| t <= now);
    expired.then_some("expired")
}

/// One grant of `keyveil grants` as a line.
pub(crate) fn grant_line(g: &Value, vars: &str, command: &str) -> String {
    let id = crate::display::visible(g["id"].as_str().unwrap_or(""));
    let head = format!(
        "{id}  env={}  vars={vars}  command={command}  client={}",
        crate::display::visible(g["environment"].as_str().unwrap_or("")),
        crate::display::visible(g["client"].as_str().unwrap_or("")),
    );
    match ended(g, jiff::Timestamp::now()) {
        Some(why) => format!(
            "{head}\n    {why}: covers no new run; a run started under it is still going (`keyveil revoke {id}` stops it)"
        ),
        None => format!(
            "{head}\n    expires {}, {}",
            human_time(g["expires_at"].as_str().unwrap_or("")),
            uses_left(&g["uses_left"])
        ),
    }
}

/// `keyveil revoke`'s report, from the broker's reply: what was revoked, which of those had
/// already ended on their own, and nothing that contradicts itself. `named`: the grant id given
/// on the command line (`None` with `--all`).
pub(crate) fn revoke_message(d: &Value, named: Option<&str>) -> String {
    let n = d["count"].as_u64().unwrap_or(0);
    let ended = d["already_ended"].as_u64().unwrap_or(0).min(n);
    let live = n - ended;
    match (named, n) {
        (Some(id), 0) => format!(
            "grant {} was already revoked; nothing changed",
            crate::display::visible(id)
        ),
        (None, 0) => "there was no grant to revoke".to_owned(),
        (Some(id), _) if ended == 1 => format!(
            "revoked grant {} (it had already ended on its own: used up or expired)",
            crate::display::visible(id)
        ),
        (Some(id), _) => format!("revoked grant {}", crate::display::visible(id)),
        (None, _) if ended == 0 => format!("revoked {}", count(n, "grant", "grants")),
        (None, _) if live == 0 => format!(
            "revoked {} that had already ended on {} own (used up or expired)",
            count(n, "grant", "grants"),
            if n == 1 { "its" } else { "their" }
        ),
        (None, _) => format!(
            "revoked {}: {} live, {} that had already ended (used up or expired)",
            count(n, "grant", "grants"),
            live,
            ended
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn revoke_never_contradicts_itself() {
        let m = |c: u64, e: u64, named: Option<&str>| {
            revoke_message(&json!({"count": c, "already_ended": e}), named)
        };
        assert_eq!(m(1, 0, Some("g-1")), "revoked grant g-1");
        assert_eq!(
            m(1, 1, Some("g-1")),
            "revoked grant g-1 (it had already ended on its own: used up or expired)"
        );
        assert_eq!(
            m(0, 0, Some("g-1")),
            "grant g-1 was already revoked; nothing changed"
        );
        assert_eq!(m(0, 0, None), "there was no grant to revoke");
        assert_eq!(m(1, 0, None), "revoked 1 grant");
        assert_eq!(m(3, 0, None), "revoked 3 grants");
        assert_eq!(
            m(2, 2, None),
            "revoked 2 grants that had already ended on their own (used up or expired)"
        );
        assert_eq!(
            m(3, 1, None),
            "revoked 3 grants: 2 live, 1 that had already ended (used up or expired)"
        );
    }

    #[test]
    fn uses_and_counts() {
        assert_eq!(uses_left(&json!(1)), "1 use left");
        assert_eq!(uses_left(&json!(3)), "3 uses left");
        assert_eq!(uses_left(&Value::Null), "unlimited uses");
        assert_eq!(count(0, "run", "runs"), "0 runs");
    }

    #[test]
    fn a_used_up_grant_is_not_shown_as_live() {
        let g = json!({"id": "g-1", "environment": "demo", "client": "cli",
            "expires_at": "2999-01-01T00:00:00Z", "uses_left": 0});
        let line = grant_line(&g, "A", "\"echo\"");
        assert!(line.contains("used up: covers no new run"), "{line}");
        assert!(!line.contains("expires"), "{line}");
        let g = json!({"id": "g-2", "environment": "demo", "client": "cli",
            "expires_at": "2999-01-01T00:00:00Z", "uses_left": 2});
        let line = grant_line(&g, "A", "\"echo\"");
        assert!(line.contains("2 uses left"), "{line}");
        assert!(line.contains("expires 2999-01-01"), "{line}");
    }
}
