//! Rendering requests and audit entries for a human.
//!
//! Everything an agent supplied (argv, reason, client name, cwd) is escaped with
//! [`keyveil_proto::display::clip`]-style control escaping; argv is shown one element per line, quoted
//! and never truncated, so what the human reads is what will run.
use keyveil_proto::op;
use serde_json::Value;

/// Escapes one requester-supplied identifier for a terminal (see [`keyveil_proto::display::visible`]).
pub(crate) fn esc(s: &str) -> String {
    keyveil_proto::display::visible(s)
}

/// An argv on one line, each word quoted where needed (`display::quoted`).
pub(crate) fn argv_words<'a>(argv: impl IntoIterator<Item = &'a str>) -> String {
    argv.into_iter()
        .map(keyveil_proto::display::quoted)
        .collect::<Vec<_>>()
        .join(" ")
}

fn names(v: &[String]) -> String {
    v.iter().map(|x| esc(x)).collect::<Vec<_>>().join(", ")
}

/// The first 16 hex digits of a digest.
fn short(sha256: &str) -> &str {
    sha256.get(..16).unwrap_or("")
}

/// The process that really connected, as the broker read it from the socket and `/proc`
/// (`broker/peer.rs`): `pid N (exe PATH); parents: M COMM (PATH) <- ...`. Every string is
/// escaped (a process names itself).
pub(crate) fn connection(peer: &op::PeerInfo) -> String {
    let exe = |p: &op::ProcInfo| {
        p.exe
            .as_deref()
            .map(esc)
            .unwrap_or_else(|| "unreadable".to_owned())
    };
    let proc_text = |p: &op::ProcInfo| {
        let keyveil = if p.keyveil { ", keyveil" } else { "" };
        format!("{} {} ({}{keyveil})", p.pid, esc(&p.comm), exe(p))
    };
    let Some(p) = &peer.process else {
        return "unknown (the kernel gave no pid)".to_owned();
    };
    let mut out = format!("pid {} (exe {})", p.pid, exe(p));
    if let Some(m) = &peer.keyveil_mode {
        out.push_str(&format!(", keyveil {}", esc(m)));
    }
    let parents: Vec<String> = peer.parents.iter().map(proc_text).collect();
    if !parents.is_empty() {
        out.push_str(&format!("; parents: {}", parents.join(" <- ")));
    }
    out
}

/// The approval card of one request.
///
/// Facts the broker established come first; the requester's reason comes last, labelled as an
/// unverified claim. argv is one element per line, quoted, never truncated, with its element
/// count and total length so padding cannot hide a tail.
pub(crate) fn render(r: &op::RequestCard) -> String {
    let mut out = String::new();
    let client = &r.client;
    out.push_str(&format!(
        "request #{}  claimed {}:{} {} (pid {})\n",
        r.id,
        esc(&client.kind),
        esc(&client.name),
        esc(&client.version),
        client.pid
    ));
    // What the broker knows, not what the requester says.
    out.push_str(&format!("  connection:  {}\n", connection(&r.peer)));
    if r.asks > 1 {
        out.push_str(&format!(
            "  asked {} times (identical asks are merged into this one request)\n",
            r.asks
        ));
    }
    let flags = risk_flags(r);
    if !flags.is_empty() {
        out.push_str(&format!("  RISK:        {flags}\n"));
    }
    for c in &r.contradictions {
        out.push_str(&format!(
            "  THE REASON IS CONTRADICTED: {}\n",
            keyveil_proto::display::visible_text(c)
        ));
    }
    for n in &r.new_variables {
        out.push_str(&format!("  NEW VARIABLE: {}\n", new_variable(n)));
    }
    out.push_str(&format!("  environment: {}\n", esc(&r.environment)));
    out.push_str(&format!("  variables:   {}\n", names(&r.variables)));
    let pass = names(&r.pass_env);
    if !pass.is_empty() {
        out.push_str(&format!("  passes through from the requester: {pass}\n"));
    }
    if !r.chosen_values.is_empty() {
        out.push_str(
            "  values the requester could have chosen (bound: another value ends the grant):\n",
        );
        for c in &r.chosen_values {
            out.push_str(&format!("    {}\n", chosen_value(c)));
        }
    }
    out.push_str(&format!("  directory:   {}\n", esc(&r.cwd)));
    match &r.argv {
        None => out.push_str("  command:     ANY COMMAND (no command given)\n"),
        Some(a) => {
            let total: usize = a.iter().map(String::len).sum();
            out.push_str(&format!(
                "  command ({} arguments, {total} bytes), one per line:\n",
                a.len()
            ));
            for (i, x) in a.iter().enumerate() {
                out.push_str(&format!(
                    "    [{i}] {}\n",
                    keyveil_proto::display::quoted(x)
                ));
            }
        }
    }
    if let Some(e) = &r.executable {
        out.push_str(&format!(
            "  executable:  {}  sha256 {}\n",
            esc(&e.path),
            short(&e.sha256)
        ));
    }
    for i in &r.inputs {
        out.push_str(&format!(
            "  input:       {} ({}) sha256 {}\n",
            esc(&i.path),
            esc(&i.role),
            short(&i.sha256)
        ));
        if let Some(d) = &i.detail {
            out.push_str(&format!("               {}\n", esc(d)));
        }
    }
    if let Some(reason) = &r.reason {
        out.push_str(&format!(
            "  requester says (unverified): {}\n",
            keyveil_proto::display::visible_text(reason)
        ));
        for c in &r.contradictions {
            out.push_str(&format!(
                "    but the broker's facts: {}\n",
                keyveil_proto::display::visible_text(c)
            ));
        }
    }
    out.push_str(&format!("  expires:     {}", r.expires_at));
    out
}

/// The risk flags of a request, `new-variable` followed by the variables it names.
pub(crate) fn risk_flags(r: &op::RequestCard) -> String {
    let new: Vec<String> = r.new_variables.iter().map(|n| esc(&n.variable)).collect();
    r.risk
        .iter()
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
pub(crate) fn new_variable(n: &op::NewVariableInfo) -> String {
    let when = n.stored_at.unwrap_or(n.created_at);
    match n.stored.as_str() {
        "without the factor" => format!(
            "{} stored {when} without the factor (anyone with your uid, the agent too, could have stored it)",
            esc(&n.variable)
        ),
        _ => format!(
            "{} created {when}, by whom is not recorded (stored before keyveil kept that)",
            esc(&n.variable)
        ),
    }
}

/// One entry of a request's `chosen_values`: `NAME = "value"` (escaped, with a marker when only
/// part of it is shown) and where it comes from.
pub(crate) fn chosen_value(c: &op::ChosenValueInfo) -> String {
    let name = c.name.as_deref().or(c.variable.as_deref()).unwrap_or("");
    let value = match &c.value {
        None => "not set".to_owned(),
        Some(v) => {
            let mut shown = keyveil_proto::display::quoted(v);
            if c.clipped {
                shown.push_str(&format!(
                    " … (clipped: {} bytes in all, sha256 {})",
                    c.bytes,
                    short(c.sha256.as_deref().unwrap_or(""))
                ));
            }
            shown
        }
    };
    let origin = match c.origin.as_str() {
        "pass-env" => "passed through from the requester's environment".to_owned(),
        _ => format!(
            "stored {} without the factor",
            c.stored_at.map(|t| t.to_string()).unwrap_or_default()
        ),
    };
    format!("{} = {value}  ({origin})", esc(name))
}

/// One audit entry as a line.
pub(crate) fn audit_line(e: &keyveil_proto::op::AuditEntry) -> String {
    let mut rest = Vec::new();
    for (k, v) in &e.fields {
        if matches!(k.as_str(), "prev" | "mac") || v.is_null() {
            continue;
        }
        let shown = match v {
            Value::String(x) => keyveil_proto::display::visible_text(x),
            other => keyveil_proto::display::visible_text(&other.to_string()),
        };
        rest.push(format!("{k}={shown}"));
    }
    format!(
        "{:>5} {} {:<16} {}",
        e.seq.map_or_else(|| "null".to_owned(), |n| n.to_string()),
        e.ts.as_deref().unwrap_or(""),
        e.event.as_deref().unwrap_or(""),
        rest.join(" ")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
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
        let card = render(&serde_json::from_value(r).unwrap());
        assert!(!card.contains('\u{1b}'), "{card}");
        assert!(card.contains("new-variable (OPENAI_BASE_URL)"), "{card}");
        assert!(
            card.contains(
                "NEW VARIABLE: OPENAI_BASE_URL stored 2026-12-06T10:00:00Z without the factor"
            ),
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
