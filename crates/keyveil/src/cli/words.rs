//! How the CLI words what the broker answers for people: grants as lines (live, used up with a
//! run still going, expired), `revoke`'s report, use counts. Times go through `when.rs`;
//! `--json` output never comes here.

use keyveil_proto::display::visible;
use keyveil_proto::op;

use crate::when::human_time;

/// `n` with its noun, singular or plural.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A grant's remaining uses in words: `1 use left`, `unlimited uses`.
pub(crate) fn uses_left(n: Option<u32>) -> String {
    match n {
        None => "unlimited uses".to_owned(),
        Some(n) => format!("{} left", count(u64::from(n), "use", "uses")),
    }
}

/// Whether a listed grant still covers a new run; when not, why (`used up`, `expired`). The
/// broker lists such a grant while a run started under it is still going, so it can be revoked
/// to stop that run.
pub(crate) fn ended(g: &op::GrantInfo, now: jiff::Timestamp) -> Option<&'static str> {
    if g.uses_left == Some(0) {
        return Some("used up");
    }
    (g.expires_at <= now).then_some("expired")
}

/// One grant of `keyveil grants` as a line.
pub(crate) fn grant_line(g: &op::GrantInfo, vars: &str, command: &str) -> String {
    let id = visible(&g.id);
    let head = format!(
        "{id}  env={}  vars={vars}  command={command}  client={}",
        visible(&g.environment),
        visible(&g.client),
    );
    let head = match &g.mount_scope {
        Some(scope) => format!("{head}\n    mount read: serves {}", visible(scope)),
        None => head,
    };
    match ended(g, jiff::Timestamp::now()) {
        Some(why) => format!(
            "{head}\n    {why}: covers no new run; a run started under it is still going (`keyveil revoke {id}` stops it)"
        ),
        None => format!(
            "{head}\n    expires {}, {}",
            human_time(&g.expires_at.to_string()),
            uses_left(g.uses_left)
        ),
    }
}

/// `keyveil revoke`'s report, from the broker's reply: what was revoked, which of those had
/// already ended on their own, and nothing that contradicts itself. `named`: the grant id given
/// on the command line (`None` with `--all`).
pub(crate) fn revoke_message(d: &op::Revoked, named: Option<&str>) -> String {
    let n = u64::from(d.count);
    let ended = u64::from(d.already_ended).min(n);
    let live = n - ended;
    match (named, n) {
        (Some(id), 0) => format!("grant {} was already revoked; nothing changed", visible(id)),
        (None, 0) => "there was no grant to revoke".to_owned(),
        (Some(id), _) if ended == 1 => format!(
            "revoked grant {} (it had already ended on its own: used up or expired)",
            visible(id)
        ),
        (Some(id), _) => format!("revoked grant {}", visible(id)),
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

    fn revoked(count: u32, already_ended: u32) -> op::Revoked {
        op::Revoked {
            revoked: true,
            count,
            already_ended,
            grant_ids: Vec::new(),
            stopped: op::RunsStopped::default(),
        }
    }

    fn grant(id: &str, uses_left: Option<u32>) -> op::GrantInfo {
        op::GrantInfo {
            id: id.to_owned(),
            request_id: 1,
            client: "cli".to_owned(),
            environment: "demo".to_owned(),
            variables: vec!["A".to_owned()],
            argv: None,
            prefix: false,
            cwd: "/".to_owned(),
            subdirs: false,
            pass_env: Vec::new(),
            executable: None,
            inputs: Vec::new(),
            created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            expires_at: "2999-01-01T00:00:00Z".parse().unwrap(),
            uses_left,
            runs: 1,
            revoked: false,
            dynamic: Vec::new(),
            mount_scope: None,
            openbao_waits: Vec::new(),
        }
    }

    #[test]
    fn revoke_never_contradicts_itself() {
        let m = |c: u32, e: u32, named: Option<&str>| revoke_message(&revoked(c, e), named);
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
        assert_eq!(uses_left(Some(1)), "1 use left");
        assert_eq!(uses_left(Some(3)), "3 uses left");
        assert_eq!(uses_left(None), "unlimited uses");
        assert_eq!(count(0, "run", "runs"), "0 runs");
    }

    #[test]
    fn a_used_up_grant_is_not_shown_as_live() {
        let line = grant_line(&grant("g-1", Some(0)), "A", "\"echo\"");
        assert!(line.contains("used up: covers no new run"), "{line}");
        assert!(!line.contains("expires"), "{line}");
        let line = grant_line(&grant("g-2", Some(2)), "A", "\"echo\"");
        assert!(line.contains("2 uses left"), "{line}");
        assert!(line.contains("expires 2999-01-01"), "{line}");
    }
}
