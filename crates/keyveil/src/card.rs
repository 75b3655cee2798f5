//! Rendering requests and audit entries for a human.
//!
//! Everything an agent supplied (argv, reason, client name, cwd) is escaped with
//! [`crate::display::clip`]-style control escaping; argv is shown one element per line, quoted
//! and never truncated, so what the human reads is what will run.
// Indexing here is on `serde_json::Value` (a missing key or index yields `Null`, never a
// panic), which clippy cannot tell from slice indexing.
#![allow(clippy::indexing_slicing)]

use serde_json::Value;

/// Escapes one requester-supplied identifier for a terminal (see [`crate::display::visible`]).
pub fn esc(s: &str) -> String {
    crate::display::visible(s)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// argv on one line, each element quoted (`"echo" "hi"`), for lists.
pub fn argv_inline(argv: &Value) -> String {
    argv.as_array()
        .map(|a| {
            a.iter()
                .map(|x| crate::display::quoted(x.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "ANY COMMAND".to_owned())
}

fn names(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .map(esc)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The process that really connected, as the broker read it from the socket and `/proc`
/// (`broker/peer.rs`): `pid N (exe PATH); parents: M COMM (PATH) <- ...`. Every string is
/// escaped (a process names itself).
pub fn connection(peer: &Value) -> String {
    let proc_text = |p: &Value| {
        let exe = p["exe"]
            .as_str()
            .map(esc)
            .unwrap_or_else(|| "unreadable".to_owned());
        let keyveil = if p["keyveil"] == true {
            ", keyveil"
        } else {
            ""
        };
        format!("{} {} ({exe}{keyveil})", p["pid"], esc(s(p, "comm")))
    };
    let Some(p) = peer.get("process").filter(|p| p.is_object()) else {
        return "unknown (the kernel gave no pid)".to_owned();
    };
    let mut out = format!(
        "pid {} (exe {})",
        p["pid"],
        p["exe"]
            .as_str()
            .map(esc)
            .unwrap_or_else(|| "unreadable".to_owned())
    );
    if let Some(m) = peer["keyveil_mode"].as_str() {
        out.push_str(&format!(", keyveil {}", esc(m)));
    }
    let parents: Vec<String> = peer["parents"]
        .as_array()
        .map(|a| a.iter().map(proc_text).collect())
        .unwrap_or_default();
    if !parents.is_empty() {
        out.push_str(&format!("; parents: {}", parents.join(" <- ")));
    }
    out
}

/// How a card is drawn: plain, or with colour (ANSI SGR) on a terminal that wants it. Colour
/// is only ever our own sequences around text that is already escaped: a requester's string
/// can never bring one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// No colour (pipes, files, tests).
    pub const PLAIN: Style = Style { colour: false };

    /// Colour when the stream is a terminal, `NO_COLOR` is unset or empty (no-color.org) and
    /// `TERM` is not `dumb`.
    pub fn for_terminal(is_terminal: bool) -> Style {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        Style {
            colour: is_terminal && !no_color && !dumb,
        }
    }

    fn paint(self, code: &str, s: &str) -> String {
        if self.colour {
            format!("\u{1b}[{code}m{s}\u{1b}[0m")
        } else {
            s.to_owned()
        }
    }

    /// Bold red: what should stop the human.
    fn alarm(self, s: &str) -> String {
        self.paint("1;31", s)
    }

    /// Yellow: what deserves a second look.
    fn caution(self, s: &str) -> String {
        self.paint("33", s)
    }

    /// Bold.
    fn strong(self, s: &str) -> String {
        self.paint("1", s)
    }
}

/// The approval card of one request (a JSON object as `keyveil requests --json` prints it),
/// without colour.
///
/// Facts the broker established come first; the requester's reason comes last, labelled as an
/// unverified claim. argv is one element per line, quoted, never truncated, with its element
/// count and total length so padding cannot hide a tail. Each risk flag is followed by its
/// one-line meaning.
// Callers on a terminal use `render_styled`; this plain form is what tests and pipes read.
#[allow(dead_code)]
pub fn render(r: &Value) -> String {
    render_styled(r, Style::PLAIN)
}

/// [`render`], drawn with `st`.
pub fn render_styled(r: &Value, st: Style) -> String {
    let mut out = String::new();
    let client = r.get("client").cloned().unwrap_or(Value::Null);
    out.push_str(&st.strong(&format!("request #{}", r["id"])));
    out.push_str(&format!(
        "  claimed {}:{} {} (pid {})\n",
        esc(s(&client, "kind")),
        esc(s(&client, "name")),
        esc(s(&client, "version")),
        client["pid"]
    ));
    // What the broker knows, not what the requester says.
    out.push_str(&format!(
        "  connection:  {}\n",
        connection(r.get("peer").unwrap_or(&Value::Null))
    ));
    if let Some(n) = r["asks"].as_u64().filter(|n| *n > 1) {
        out.push_str(&format!(
            "  asked {n} times (identical asks are merged into this one request)\n"
        ));
    }
    let flags = risk_flags(r);
    if !flags.is_empty() {
        out.push_str(&format!("  {}        {flags}\n", st.alarm("RISK:")));
        for f in r["risk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if let Some(m) = flag_meaning(f) {
                out.push_str(&format!("    {}: {m}\n", st.caution(&esc(f))));
            }
        }
    }
    for c in r["contradictions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {}\n",
            st.alarm("THE REASON IS CONTRADICTED:"),
            crate::display::visible_text(c.as_str().unwrap_or(""))
        ));
    }
    for n in r["new_variables"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {} {}\n",
            st.caution("NEW VARIABLE:"),
            new_variable(n)
        ));
    }
    out.push_str(&format!("  environment: {}\n", esc(s(r, "environment"))));
    out.push_str(&format!("  variables:   {}\n", names(&r["variables"])));
    let pass = names(&r["pass_env"]);
    if !pass.is_empty() {
        out.push_str(&format!("  passes through from the requester: {pass}\n"));
    }
    let chosen = r["chosen_values"].as_array().cloned().unwrap_or_default();
    if !chosen.is_empty() {
        out.push_str(&format!(
            "  {}\n",
            st.caution(
                "values the requester could have chosen (bound: another value ends the grant):"
            )
        ));
        for c in &chosen {
            out.push_str(&format!("    {}\n", chosen_value(c)));
        }
    }
    out.push_str(&format!("  directory:   {}\n", esc(s(r, "cwd"))));
    match r["argv"].as_array() {
        None => out.push_str("  command:     ANY COMMAND (no command given)\n"),
        Some(a) => {
            let total: usize = a
                .iter()
                .map(|x| x.as_str().map(str::len).unwrap_or(0))
                .sum();
            out.push_str(&format!(
                "  command ({} arguments, {total} bytes), one per line:\n",
                a.len()
            ));
            for (i, x) in a.iter().enumerate() {
                out.push_str(&format!(
                    "    [{i}] {}\n",
                    crate::display::quoted(x.as_str().unwrap_or(""))
                ));
            }
        }
    }
    if let Some(e) = r.get("executable").filter(|e| !e.is_null()) {
        out.push_str(&format!(
            "  executable:  {}  sha256 {}\n",
            esc(s(e, "path")),
            s(e, "sha256").get(..16).unwrap_or("")
        ));
    }
    for i in r["inputs"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  input:       {} ({}) sha256 {}\n",
            esc(s(&i, "path")),
            esc(s(&i, "role")),
            s(&i, "sha256").get(..16).unwrap_or("")
        ));
        if let Some(d) = i["detail"].as_str() {
            out.push_str(&format!("               {}\n", esc(d)));
        }
    }
    if let Some(reason) = r["reason"].as_str() {
        out.push_str(&format!(
            "  requester says (unverified): {}\n",
            crate::display::visible_text(reason)
        ));
        for c in r["contradictions"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    but the broker's facts: {}\n",
                crate::display::visible_text(c.as_str().unwrap_or(""))
            ));
        }
    }
    out.push_str(&format!(
        "  expires:     {}",
        crate::when::human_time(s(r, "expires_at"))
    ));
    out
}

/// What each risk flag of `risk.rs` means, in one line: the terminal card and the approval page
/// show it next to the flag; an unknown flag shows as named.
pub const FLAG_WORDS: &[(&str, &str)] = &[
    (
        "control-characters",
        "control characters in what the requester sent",
    ),
    (
        "bidi-control",
        "bidirectional controls that can reorder text on screen",
    ),
    (
        "invisible-characters",
        "zero-width or other invisible characters",
    ),
    (
        "confusable",
        "letters of another script that look like ASCII",
    ),
    (
        "non-ascii",
        "non-ASCII characters in the command or directory",
    ),
    ("padding", "long runs of spaces, or a very long command"),
    (
        "shell-c",
        "a shell script given with -c: approving approves the whole script",
    ),
    (
        "inline-code",
        "an interpreter given code on the command line",
    ),
    ("network", "a network tool or URL"),
    ("variable-reference", "the command names a granted variable"),
    (
        "env-dump",
        "the command prints or copies the whole environment",
    ),
    (
        "workspace-executable",
        "the program lives where the requester can write",
    ),
    ("first-time", "this command was never approved before"),
    ("denied-before", "the same command was denied recently"),
    (
        "burst",
        "many requests from this client (the process that connected) or from all clients in the last minute",
    ),
    (
        "claimed-identity",
        "the requester claims to be another client or process than the one that connected",
    ),
    (
        "new-variable",
        "a variable stored in the last day without the factor (adding one needs none: check it is yours)",
    ),
    (
        "env-to-file",
        "the command writes the whole environment to a file",
    ),
    (
        "code-option",
        "an option that makes a known tool run a command or load code",
    ),
    (
        "all-variables",
        "the request asks for every variable of the environment",
    ),
    (
        "rephrased-denied",
        "the command does what a request denied in the last hour did, phrased another way",
    ),
    (
        "changed-since-rule",
        "an auto-approve rule names this command, but what it runs changed since the rule was made (so it was not approved automatically)",
    ),
    (
        "reason-contradicts-facts",
        "the requester's reason claims what the broker's facts contradict (see below)",
    ),
    (
        "agent-chosen-value",
        "a value the requester could have chosen is injected: it is shown below and bound",
    ),
    (
        "compromised-value",
        "a value `keyveil sweep` found outside keyveil and not rotated since: rotate it (`keyveil env show` says when and where)",
    ),
];

/// The one-line meaning of a risk flag (`net:HOST` included), if known.
pub fn flag_meaning(flag: &str) -> Option<String> {
    if let Some(host) = flag.strip_prefix("net:") {
        return Some(format!(
            "the command reaches the network host {}",
            esc(host)
        ));
    }
    FLAG_WORDS
        .iter()
        .find(|(f, _)| *f == flag)
        .map(|(_, w)| (*w).to_owned())
}

/// The risk flags of a request, `new-variable` followed by the variables it names.
pub fn risk_flags(r: &Value) -> String {
    let new: Vec<String> = r["new_variables"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| esc(s(n, "variable")))
        .collect();
    r["risk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|f| {
            if f == "new-variable" && !new.is_empty() {
                format!("new-variable ({})", new.join(", "))
            } else {
                esc(f)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One entry of a request's `new_variables`: its name, and who stored it when.
pub fn new_variable(n: &Value) -> String {
    let when = crate::when::human_time(
        n["stored_at"]
            .as_str()
            .or_else(|| n["created_at"].as_str())
            .unwrap_or(""),
    );
    match s(n, "stored") {
        "without the factor" => format!(
            "{} stored {when} without the factor (anyone with your uid, the agent too, could have stored it)",
            esc(s(n, "variable"))
        ),
        _ => format!(
            "{} created {when}, by whom is not recorded (stored before keyveil kept that)",
            esc(s(n, "variable"))
        ),
    }
}

/// One entry of a request's `chosen_values`: `NAME = "value"` (escaped, with a marker when only
/// part of it is shown) and where it comes from.
pub fn chosen_value(c: &Value) -> String {
    let name = c["name"]
        .as_str()
        .or_else(|| c["variable"].as_str())
        .unwrap_or("");
    let value = match c["value"].as_str() {
        None => "not set".to_owned(),
        Some(v) => {
            let mut shown = crate::display::quoted(v);
            if c["clipped"] == true {
                shown.push_str(&format!(
                    " … (clipped: {} bytes in all, sha256 {})",
                    c["bytes"],
                    s(c, "sha256").get(..16).unwrap_or("")
                ));
            }
            shown
        }
    };
    let origin = match s(c, "origin") {
        "pass-env" => "passed through from the requester's environment".to_owned(),
        _ => format!(
            "stored {} without the factor",
            crate::when::human_time(c["stored_at"].as_str().unwrap_or(""))
        ),
    };
    format!("{} = {value}  ({origin})", esc(name))
}

/// One audit entry as a line.
pub fn audit_line(e: &Value) -> String {
    let mut rest = Vec::new();
    if let Some(o) = e.as_object() {
        for (k, v) in o {
            if matches!(k.as_str(), "seq" | "ts" | "event" | "prev" | "mac") || v.is_null() {
                continue;
            }
            let shown = match v {
                Value::String(x) => crate::display::visible_text(x),
                other => crate::display::visible_text(&other.to_string()),
            };
            rest.push(format!("{k}={shown}"));
        }
    }
    format!(
        "{:>5} {} {:<16} {}",
        e["seq"],
        crate::when::local_stamp(s(e, "ts")),
        s(e, "event"),
        rest.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn card_shows_argv_per_line_and_escapes_controls() {
        let r = json!({
            "id": 7, "client": {"kind":"mcp","name":"evil\u{1b}[2J","version":"1","pid":42},
            "environment": "demo", "variables": ["API_TOKEN"], "cwd": "/w",
            "argv": ["sh", "-c", "echo ok\u{1b}[1A\u{1b}[2K"], "reason": "tests\u{7}",
            "expires_at": "2026-01-01T00:00:00Z"
        });
        let card = render(&r);
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
                 "bytes": 20, "clipped": false, "sha256": "ab"},
                {"origin": "stored-without-factor", "variable": "OPENAI_BASE_URL",
                 "stored_at": "2026-12-06T10:00:00Z", "value": &long[..200], "bytes": long.len(),
                 "clipped": true, "sha256": "0123456789abcdef0123"}
            ],
            "expires_at": "2026-01-01T00:00:00Z"
        });
        let card = render(&r);
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
            card.contains("clipped: 321 bytes in all, sha256 0123456789abcdef"),
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
}
