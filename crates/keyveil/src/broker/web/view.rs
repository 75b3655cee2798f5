//! What the approval page shows: view models built from the reply to `op::Requests` (the same
//! cards `keyveil requests --json` prints).
//!
//! Two layers, each with one job:
//! 1. the project's one escaper ([`keyveil_proto::display`]) turns characters a human cannot see
//!    (controls, ANSI escapes, bidi overrides, zero-width and other format characters, Unicode
//!    tags, odd spaces, long space runs) into visible escapes, and identifiers (argv, paths,
//!    names) into printable ASCII, so the text on screen is the text that will run;
//! 2. askama's HTML auto-escaping (templates ending in `.html`) turns `<`, `>`, `&`, `"`, `'`
//!    into entities, so nothing a requester wrote can become markup.

use askama::Template;
use keyveil_proto::op;
use serde_json::Value;

/// An identifier (argv element, path, name): printable ASCII only, via the project's one
/// escaper ([`keyveil_proto::display::visible`]).
fn ident(s: &str) -> String {
    keyveil_proto::display::visible(s)
}

/// Prose (the reason, risk details, broker messages): letters of any script stay; controls,
/// bidi, zero-width, tags and odd spaces are escaped ([`keyveil_proto::display::visible_text`]).
pub(super) fn prose(s: &str) -> String {
    keyveil_proto::display::visible_text(s)
}

/// One argv element, quoted: the quotes on screen are the element's bounds.
fn quoted(s: &str) -> String {
    keyveil_proto::display::quoted(s)
}

/// One request card. Every string is already made visible; askama HTML-escapes it.
pub(super) struct CardView {
    /// Request id (a number the broker made).
    pub id: u64,
    /// `factor_proof::card_digest` of the request as shown: the approval form posts it back and
    /// applies only to this card.
    pub digest: String,
    /// `claimed kind:name version (pid N)`.
    pub client: String,
    /// The process that really connected (`crate::card::connection`).
    pub connection: String,
    /// Environment name.
    pub environment: String,
    /// Variable names.
    pub variables: Vec<String>,
    /// The command, one quoted element each, or `None` for "any command".
    pub argv: Option<Vec<String>>,
    /// Working directory.
    pub cwd: String,
    /// The requester's claim.
    pub reason: Option<String>,
    /// When asked.
    pub created_at: String,
    /// When the request lapses unanswered.
    pub expires_at: String,
    /// The lifetime the requester asked for, in words.
    pub ttl: Option<String>,
    /// Risk flags: (flag, what it means).
    pub risk: Vec<(String, String)>,
    /// Where the reason claims what the broker's facts contradict, in plain words.
    pub contradictions: Vec<String>,
    /// Facts the broker knows (pinned executable, fingerprinted inputs, pass-through names)
    /// and fields this page does not know yet, as (label, text).
    pub facts: Vec<(String, String)>,
}

/// Keys of the request JSON shown in their own place (or deliberately not shown).
const KNOWN: &[&str] = &[
    "id",
    "client",
    "peer",
    "environment",
    "variables",
    "argv",
    "cwd",
    "reason",
    "created_at",
    "expires_at",
    "ttl_seconds",
    "risk",
    "state",
    "executable",
    "inputs",
    "pass_env",
    "chosen_values",
    "stdin",
    "new_variables",
    "contradictions",
    "mount",
];

/// What each risk flag means (shared with the terminal card).
use crate::card::FLAG_WORDS;

fn risk_item(name: &str) -> (String, String) {
    let words = FLAG_WORDS
        .iter()
        .find(|(f, _)| *f == name)
        .map(|(_, w)| (*w).to_owned())
        .unwrap_or_default();
    (ident(name), words)
}

/// A broker timestamp in the local time zone, to the second (`2026-11-29 17:20:58 CET`).
pub(super) fn when(s: &str) -> String {
    match s.parse::<jiff::Timestamp>() {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => ident(s),
    }
}

/// Labels of request fields added after this page was written, when known.
const LABELS: &[(&str, &str)] = &[("asks", "Times asked")];

fn label(key: &str) -> String {
    if let Some((_, l)) = LABELS.iter().find(|(k, _)| *k == key) {
        return (*l).to_owned();
    }
    let words = ident(&key.replace('_', " "));
    let mut c = words.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => words,
    }
}

fn short_hash(sha256: &str) -> String {
    format!(" (sha256 {}…)", ident(sha256.get(..16).unwrap_or(sha256)))
}

fn duration_words(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

fn names(v: &[String]) -> Vec<String> {
    v.iter().map(|x| ident(x)).collect()
}

fn facts(r: &op::RequestCard) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(m) = &r.mount {
        out.push((
            "Reads a mount".to_owned(),
            prose(&crate::card::mount_headline(r, m)),
        ));
        out.push((
            "What a mount cannot give".to_owned(),
            prose(&crate::card::MOUNT_WARNING.join(" ")),
        ));
    }
    if let Some(exe) = &r.executable {
        out.push((
            "Executable".to_owned(),
            format!("{}{}", ident(&exe.path), short_hash(&exe.sha256)),
        ));
    }
    for input in &r.inputs {
        let mut line = format!("{}{}", ident(&input.path), short_hash(&input.sha256));
        if let Some(d) = &input.detail {
            line.push_str(&format!(" runs: {}", ident(d)));
        }
        out.push((format!("Input ({})", ident(&input.role)), line));
    }
    let pass = names(&r.pass_env);
    if !pass.is_empty() && r.mount.is_none() {
        out.push(("Passes through".to_owned(), pass.join(" ")));
    }
    for n in &r.new_variables {
        out.push(("New variable".to_owned(), crate::card::new_variable(n)));
    }
    for c in &r.chosen_values {
        out.push((
            if c.origin == "reader-env" {
                "In the reader's environment (bound)".to_owned()
            } else {
                "Value the requester could have chosen (bound)".to_owned()
            },
            crate::card::chosen_value(c),
        ));
    }
    if let Some(s) = &r.stdin {
        out.push((crate::card::stdin_heading(s), crate::card::stdin_text(s)));
    }
    // A field of the card this page does not render yet is still shown, generically.
    if let Ok(Value::Object(o)) = serde_json::to_value(r) {
        for (k, v) in &o {
            if KNOWN.contains(&k.as_str()) || v.is_null() {
                continue;
            }
            let shown = match v {
                Value::String(s) => prose(s),
                other => prose(&other.to_string()),
            };
            out.push((label(k), shown));
        }
    }
    out
}

/// Real names a session may see (`reveal.rs`): environment → alias → real name.
pub(super) type NameMap =
    std::collections::HashMap<String, std::collections::HashMap<String, String>>;

/// `name` with its real name where `names` has one for `env`.
fn real(names: &NameMap, env: &str, name: &str) -> String {
    names
        .get(env)
        .and_then(|m| m.get(name))
        .cloned()
        .unwrap_or_else(|| name.to_owned())
}

/// The card with the real names of its variables where `names` has them (the fields that
/// name variables; never the requester's own text: argv, reason, cwd stay as written).
fn with_real_names(r: &op::RequestCard, names: &NameMap) -> op::RequestCard {
    let mut r = r.clone();
    let env = r.environment.clone();
    for v in &mut r.variables {
        *v = real(names, &env, v);
    }
    for n in &mut r.new_variables {
        n.variable = real(names, &env, &n.variable);
    }
    for c in &mut r.chosen_values {
        if let Some(v) = &mut c.variable {
            *v = real(names, &env, v);
        }
    }
    for b in &mut r.bound {
        b.variable = real(names, &env, &b.variable);
    }
    r
}

/// Builds the view of one approval card, with the real names in `names`. The digest the
/// approve form posts is always the card's as the broker sent it (with aliases): what the
/// broker compares.
pub(super) fn card_named(r: &op::RequestCard, names: &NameMap) -> CardView {
    let digest = crate::factor_proof::card_digest(&serde_json::to_value(r).unwrap_or_default());
    let shown = with_real_names(r, names);
    CardView {
        digest,
        ..card_view(&shown)
    }
}

fn card_view(r: &op::RequestCard) -> CardView {
    let c = &r.client;
    let client = format!(
        "claimed {}:{} {} (pid {})",
        ident(&c.kind),
        ident(&c.name),
        ident(&c.version),
        c.pid
    );
    let argv = r
        .argv
        .as_ref()
        .map(|a| a.iter().map(|x| quoted(x)).collect());
    let new_vars: Vec<String> = r.new_variables.iter().map(|n| ident(&n.variable)).collect();
    let risk = r
        .risk
        .iter()
        .map(|f| risk_item(f))
        .map(|(f, w)| {
            if f == "new-variable" && !new_vars.is_empty() {
                (f, format!("{w}: {}", new_vars.join(", ")))
            } else {
                (f, w)
            }
        })
        .collect();
    CardView {
        id: r.id,
        digest: crate::factor_proof::card_digest(&serde_json::to_value(r).unwrap_or_default()),
        client,
        connection: crate::card::connection(&r.peer),
        environment: ident(&r.environment),
        variables: names(&r.variables),
        argv,
        cwd: ident(&r.cwd),
        reason: r.reason.as_deref().map(prose),
        created_at: when(&r.created_at.to_string()),
        expires_at: when(&r.expires_at.to_string()),
        ttl: r
            .ttl_seconds
            .map(|s| format!("a grant for {}", duration_words(s))),
        risk,
        contradictions: r.contradictions.iter().map(|c| prose(c)).collect(),
        facts: facts(r),
    }
}

/// Cards from the reply to `op::Requests`, with the real names in `names`.
pub(super) fn cards(data: &op::PendingRequests, names: &NameMap) -> Vec<CardView> {
    data.requests.iter().map(|r| card_named(r, names)).collect()
}

/// A message shown once at the top of the page after a POST.
#[derive(Clone, Debug)]
pub(super) struct Flash {
    /// Success (green) or failure (red).
    pub ok: bool,
    /// What happened.
    pub text: String,
    /// What to do next.
    pub hint: Option<String>,
}

/// A live grant on the page, with its revoke button. Every requester-supplied part is made
/// visible first (then HTML-escaped by the template).
#[derive(Clone, Debug)]
pub(super) struct GrantView {
    /// Grant id (made by the broker).
    pub id: String,
    /// The command, as words (`ANY COMMAND` when none was named; `…` after a prefix grant).
    pub command: String,
    /// Working directory.
    pub cwd: String,
    /// Environment.
    pub environment: String,
    /// Variables, comma-separated.
    pub variables: String,
    /// Local end time.
    pub expires_at: String,
    /// Uses left, in words.
    pub uses: String,
}

/// The grants still usable, for the page (`/`).
pub(super) fn grants(
    data: &op::GrantList,
    now: jiff::Timestamp,
    names: &NameMap,
) -> Vec<GrantView> {
    data.grants
        .iter()
        .filter(|g| g.expires_at > now && g.uses_left != Some(0))
        .map(|g| GrantView {
            id: ident(&g.id),
            command: match &g.argv {
                None => "ANY COMMAND".to_owned(),
                Some(argv) => {
                    let words = crate::card::argv_words(argv.iter().map(String::as_str));
                    if g.prefix {
                        format!("{words} …")
                    } else {
                        words
                    }
                }
            },
            cwd: format!(
                "{}{}",
                ident(&g.cwd),
                if g.subdirs { " (and below)" } else { "" }
            ),
            environment: ident(&g.environment),
            variables: g
                .variables
                .iter()
                .map(|v| ident(&real(names, &g.environment, v)))
                .collect::<Vec<_>>()
                .join(", "),
            expires_at: when(&g.expires_at.to_string()),
            uses: match g.uses_left {
                None => "any number of uses".to_owned(),
                Some(1) => "1 use left".to_owned(),
                Some(n) => format!("{n} uses left"),
            },
        })
        .collect()
}

/// The whole page.
#[derive(Template)]
#[template(path = "web/page.html")]
pub(super) struct Page {
    /// The pending requests.
    pub cards: Vec<CardView>,
    /// The live grants, each with a revoke button.
    pub grants: Vec<GrantView>,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    /// The result of the last POST, once.
    pub flash: Option<Flash>,
    /// This session was opened by the factor: hidden names are shown as they are.
    pub names_shown: bool,
    /// Some environment hides its names and this session shows aliases: offer the reveal form.
    pub offer_reveal: bool,
}

/// Only the list (what the page's script fetches on each change).
#[derive(Template)]
#[template(path = "web/list.html")]
pub(super) struct List {
    /// The pending requests.
    pub cards: Vec<CardView>,
    /// The session's CSRF token.
    pub csrf: String,
}

/// The value-entry form of one declared variable (`/set`). It never carries a value: the
/// password field starts empty and nothing typed is ever rendered back.
#[derive(Template)]
#[template(path = "web/set.html")]
pub(super) struct SetForm {
    /// Environment (made visible).
    pub environment: String,
    /// Variable name (made visible).
    pub name: String,
    /// The variable's description, as the agent declared it (prose).
    pub description: String,
    /// The value-entry session's CSRF token.
    pub csrf: String,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// Builds the form, making every requester-written string visible.
pub(super) fn set_form(
    environment: &str,
    name: &str,
    description: &str,
    csrf: String,
    error: Option<String>,
) -> SetForm {
    SetForm {
        environment: ident(environment),
        name: ident(name),
        description: prose(description),
        csrf,
        error,
    }
}

/// An error page (no script, no form).
#[derive(Template)]
#[template(path = "web/notice.html")]
pub(super) struct Notice {
    /// Headline.
    pub title: String,
    /// What to do.
    pub text: String,
    /// A success (green) rather than a refusal (red).
    pub ok: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn page_escapes_markup_and_shows_hidden_characters() {
        let data = json!({"requests": [{
            "id": 3,
            "client": {"kind": "mcp", "name": "<b>evil</b>", "version": "1\u{202e}", "pid": 9},
            "environment": "demo", "variables": ["API_TOKEN"], "cwd": "/w\"><x>",
            "argv": ["sh", "-c", "<script>alert(1)</script>", "\"><img src=x onerror=alert(1)>", "a\u{202e}b", "\u{1b}[31mred"],
            "reason": "<i>trust me</i>", "created_at": "2026-12-06T10:00:00Z",
            "expires_at": "2026-12-06T10:15:00Z",
            "risk": ["prints_env", "<curl>"],
            "executable": {"path": "/bin/sh<", "dev": 1, "ino": 2, "size": 3, "mtime_ns": 4,
                "ctime_ns": 5, "sha256": "00112233445566778899"},
            "inputs": [{"role": "package.json", "path": "/w/package.json", "sha256": "ab", "detail": "<x>\u{202e}"}],
            "asks": 2
        }]});
        let html = Page {
            grants: Vec::new(),
            cards: cards(&serde_json::from_value(data).unwrap(), &NameMap::new()),
            csrf: "c".into(),
            flash: None,
            names_shown: false,
            offer_reveal: false,
        }
        .render()
        .unwrap();
        for bad in [
            "<script>alert",
            "<img",
            "<b>evil",
            "<i>trust",
            "<x>",
            "<curl>",
            "\u{202e}",
            "\u{1b}",
        ] {
            assert!(!html.contains(bad), "raw {bad:?} in page");
        }
        assert!(html.contains("\\u{202e}"));
        assert!(html.contains("Executable"));
        assert!(html.contains("sha256 0011223344556677…"));
        // A card field the page has no place for (`asks`) is still shown, generically.
        assert!(html.contains("Times asked"));
        assert!(html.contains("\\u{1b}[31mred"));
        assert!(html.contains("The requester says (unverified)"));
        assert!(html.contains("prints_env"));
        assert!(html.contains("name=\"factor\""));
    }

    #[test]
    fn page_shows_chosen_values_new_variables_and_contradictions() {
        let data = json!({"requests": [{
            "id": 4, "client": {"kind": "mcp", "name": "a", "version": "1", "pid": 9},
            "environment": "demo", "variables": ["OPENAI_BASE_URL"], "cwd": "/w",
            "argv": ["python3", "check.py"], "reason": "you approved this before",
            "created_at": "2026-12-06T10:00:00Z", "expires_at": "2026-12-06T10:15:00Z",
            "risk": ["new-variable", "agent-chosen-value", "reason-contradicts-facts"],
            "contradictions": ["this command was never approved before"],
            "new_variables": [{"variable": "OPENAI_BASE_URL", "created_at": "2026-12-06T10:00:00Z",
                "stored_at": "2026-12-06T10:00:00Z", "stored": "without the factor"}],
            "chosen_values": [{"origin": "stored-without-factor", "variable": "OPENAI_BASE_URL",
                "stored_at": "2026-12-06T10:00:00Z", "value": "http://127.0.0.1:9/<x>\u{1b}",
                "bytes": 22, "clipped": false, "digest": "ab"}]
        }]});
        let html = Page {
            grants: Vec::new(),
            cards: cards(&serde_json::from_value(data).unwrap(), &NameMap::new()),
            csrf: "c".into(),
            flash: None,
            names_shown: false,
            offer_reveal: false,
        }
        .render()
        .unwrap();
        assert!(!html.contains("<x>") && !html.contains('\u{1b}'));
        assert!(html.contains("this command was never approved before"));
        assert!(html.contains("But the broker's facts"));
        assert!(
            html.contains("OPENAI_BASE_URL = &#34;http://127.0.0.1:9/&#60;x&#62;\\u{1b}&#34;"),
            "{html}"
        );
        assert!(html.contains("New variable"));
        assert!(html.contains(": OPENAI_BASE_URL"));
    }
}
