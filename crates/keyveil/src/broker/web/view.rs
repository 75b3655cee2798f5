//! What the approval page shows: view models built from the JSON of `Request::Requests` (the
//! same JSON `keyveil requests --json` prints).
//!
//! Two layers, each with one job:
//! 1. the project's one escaper ([`crate::display`]) turns characters a human cannot see
//!    (controls, ANSI escapes, bidi overrides, zero-width and other format characters, Unicode
//!    tags, odd spaces, long space runs) into visible escapes, and identifiers (argv, paths,
//!    names) into printable ASCII, so the text on screen is the text that will run;
//! 2. askama's HTML auto-escaping (templates ending in `.html`) turns `<`, `>`, `&`, `"`, `'`
//!    into entities, so nothing a requester wrote can become markup.

use askama::Template;
use serde_json::Value;

/// An identifier (argv element, path, name): printable ASCII only, via the project's one
/// escaper ([`crate::display::visible`]).
fn ident(s: &str) -> String {
    crate::display::visible(s)
}

/// Prose (the reason, risk details, broker messages): letters of any script stay; controls,
/// bidi, zero-width, tags and odd spaces are escaped ([`crate::display::visible_text`]).
pub fn prose(s: &str) -> String {
    crate::display::visible_text(s)
}

/// One argv element, quoted: the quotes on screen are the element's bounds.
fn quoted(s: &str) -> String {
    crate::display::quoted(s)
}

/// One request card. Every string is already made visible; askama HTML-escapes it.
pub struct CardView {
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
    "new_variables",
    "contradictions",
];

/// What each risk flag means (shared with the terminal card).
use crate::card::FLAG_WORDS;

fn text(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => ident(s),
        Some(Value::Null) | None => String::new(),
        Some(other) => ident(&other.to_string()),
    }
}

fn risk_item(v: &Value) -> (String, String) {
    let (name, detail) = match v {
        Value::String(s) => (s.as_str(), None),
        Value::Object(o) => (
            ["flag", "code", "kind", "name"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str))
                .unwrap_or("flag"),
            ["message", "detail", "why", "text"]
                .iter()
                .find_map(|k| o.get(*k).and_then(Value::as_str)),
        ),
        _ => ("flag", None),
    };
    let words = detail
        .map(prose)
        .or_else(|| {
            FLAG_WORDS
                .iter()
                .find(|(f, _)| *f == name)
                .map(|(_, w)| (*w).to_owned())
        })
        .unwrap_or_default();
    (ident(name), words)
}

/// A broker timestamp in the local time zone, to the second (`2026-11-29 17:20:58 CET`).
pub fn when(s: &str) -> String {
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

fn short_hash(v: &Value) -> String {
    v.get("sha256")
        .and_then(Value::as_str)
        .map(|h| format!(" (sha256 {}…)", ident(h.get(..16).unwrap_or(h))))
        .unwrap_or_default()
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

fn names(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| ident(&x.to_string()), ident))
                .collect()
        })
        .unwrap_or_default()
}

fn facts(r: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(exe) = r.get("executable").filter(|v| !v.is_null()) {
        let path = exe.get("path").and_then(Value::as_str).unwrap_or("");
        out.push((
            "Executable".to_owned(),
            format!("{}{}", ident(path), short_hash(exe)),
        ));
    }
    for input in r
        .get("inputs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = input.get("role").and_then(Value::as_str).unwrap_or("input");
        let path = input.get("path").and_then(Value::as_str).unwrap_or("");
        let mut line = format!("{}{}", ident(path), short_hash(input));
        if let Some(d) = input.get("detail").and_then(Value::as_str) {
            line.push_str(&format!(" runs: {}", ident(d)));
        }
        out.push((format!("Input ({})", ident(role)), line));
    }
    let pass = names(r.get("pass_env"));
    if !pass.is_empty() {
        out.push(("Passes through".to_owned(), pass.join(" ")));
    }
    for n in r
        .get("new_variables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push(("New variable".to_owned(), crate::card::new_variable(n)));
    }
    for c in r
        .get("chosen_values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push((
            "Value the requester could have chosen (bound)".to_owned(),
            crate::card::chosen_value(c),
        ));
    }
    if let Some(o) = r.as_object() {
        for (k, v) in o {
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

/// Builds a card from one element of `{"requests": [...]}`.
pub fn card(r: &Value) -> Option<CardView> {
    let id = r.get("id")?.as_u64()?;
    let client = r.get("client").cloned().unwrap_or(Value::Null);
    let pid = client
        .get("pid")
        .and_then(Value::as_u64)
        .map(|p| format!(" (pid {p})"))
        .unwrap_or_default();
    let connection = crate::card::connection(r.get("peer").unwrap_or(&Value::Null));
    let client = format!(
        "claimed {}:{} {}{pid}",
        text(&client, "kind"),
        text(&client, "name"),
        text(&client, "version")
    );
    let argv = r.get("argv").and_then(Value::as_array).map(|a| {
        a.iter()
            .map(|x| quoted(&x.as_str().map_or_else(|| x.to_string(), str::to_owned)))
            .collect()
    });
    let new_vars: Vec<String> = r
        .get("new_variables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|n| text(n, "variable"))
        .collect();
    let risk = r
        .get("risk")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(risk_item)
                .map(|(f, w)| {
                    if f == "new-variable" && !new_vars.is_empty() {
                        (f, format!("{w}: {}", new_vars.join(", ")))
                    } else {
                        (f, w)
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let contradictions = r
        .get("contradictions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| prose(c.as_str().unwrap_or("")))
        .collect();
    Some(CardView {
        id,
        digest: crate::factor_proof::card_digest(r),
        client,
        connection,
        environment: text(r, "environment"),
        variables: names(r.get("variables")),
        argv,
        cwd: text(r, "cwd"),
        reason: r.get("reason").and_then(Value::as_str).map(prose),
        created_at: when(r.get("created_at").and_then(Value::as_str).unwrap_or("")),
        expires_at: when(r.get("expires_at").and_then(Value::as_str).unwrap_or("")),
        ttl: r
            .get("ttl_seconds")
            .and_then(Value::as_u64)
            .map(|s| format!("a grant for {}", duration_words(s))),
        risk,
        contradictions,
        facts: facts(r),
    })
}

/// Cards from the `Request::Requests` reply data.
pub fn cards(data: &Value) -> Vec<CardView> {
    data.get("requests")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(card).collect())
        .unwrap_or_default()
}

/// A message shown once at the top of the page after a POST.
#[derive(Clone, Debug)]
pub struct Flash {
    /// Success (green) or failure (red).
    pub ok: bool,
    /// What happened.
    pub text: String,
    /// What to do next.
    pub hint: Option<String>,
}

/// The whole page.
#[derive(Template)]
#[template(path = "web/page.html")]
pub struct Page {
    /// The pending requests.
    pub cards: Vec<CardView>,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    /// The result of the last POST, once.
    pub flash: Option<Flash>,
}

/// Only the list (what the page's script fetches on each change).
#[derive(Template)]
#[template(path = "web/list.html")]
pub struct List {
    /// The pending requests.
    pub cards: Vec<CardView>,
    /// The session's CSRF token.
    pub csrf: String,
}

/// The value-entry form of one declared variable (`/set`). It never carries a value: the
/// password field starts empty and nothing typed is ever rendered back.
#[derive(Template)]
#[template(path = "web/set.html")]
pub struct SetForm {
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
pub fn set_form(
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
pub struct Notice {
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
            "reason": "<i>trust me</i>", "created_at": "t", "expires_at": "u",
            "risk": ["prints_env", {"flag": "net", "message": "<curl>"}],
            "executable": {"path": "/bin/sh<", "sha256": "00112233445566778899"},
            "inputs": [{"role": "package.json", "path": "/w/package.json", "sha256": "ab", "detail": "<x>\u{202e}"}],
            "later_field": "<new>"
        }]});
        let html = Page {
            cards: cards(&data),
            csrf: "c".into(),
            flash: None,
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
        assert!(html.contains("Later field"));
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
            "created_at": "t", "expires_at": "u",
            "risk": ["new-variable", "agent-chosen-value", "reason-contradicts-facts"],
            "contradictions": ["this command was never approved before"],
            "new_variables": [{"variable": "OPENAI_BASE_URL", "created_at": "t",
                "stored_at": "2026-12-06T10:00:00Z", "stored": "without the factor"}],
            "chosen_values": [{"origin": "stored-without-factor", "variable": "OPENAI_BASE_URL",
                "stored_at": "2026-12-06T10:00:00Z", "value": "http://127.0.0.1:9/<x>\u{1b}",
                "bytes": 22, "clipped": false, "sha256": "ab"}]
        }]});
        let html = Page {
            cards: cards(&data),
            csrf: "c".into(),
            flash: None,
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
