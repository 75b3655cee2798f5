//! The short text that goes with each structured result, for clients that show only text.

use super::outputs::{
    AuditLogOutput, DescribeEnvironmentOutput, ListEnvironmentsOutput, ListGrantsOutput, RunOutput,
    RunStatus,
};
use serde_json::Value;

/// Short text for `list_environments`.
pub(crate) fn render_environments(o: &ListEnvironmentsOutput) -> String {
    if o.environments.is_empty() {
        return "No environments yet. Create one with create_environment (or ask the user to run `keyveil env create NAME`).".to_owned();
    }
    let mut s = String::new();
    for e in &o.environments {
        let vars = if e.variables.is_empty() {
            "no variables".to_owned()
        } else {
            e.variables.join(", ")
        };
        s.push_str(&format!("{}: {vars}", e.name));
        if !e.description.is_empty() {
            s.push_str(&format!(" ({})", e.description));
        }
        s.push('\n');
    }
    s.pop();
    s
}

/// Short text for `describe_environment`.
pub(crate) fn render_environment(o: &DescribeEnvironmentOutput) -> String {
    let mut s = format!("environment {}", o.name);
    if !o.description.is_empty() {
        s.push_str(&format!(": {}", o.description));
    }
    if o.variables.is_empty() {
        s.push_str("\n  (no variables)");
    }
    for v in &o.variables {
        let state = if v.set { "set" } else { "awaiting value" };
        s.push_str(&format!("\n  {} [{}, {state}]", v.name, v.source));
        if !v.description.is_empty() {
            s.push_str(&format!(" {}", v.description));
        }
    }
    s
}

/// Short text for a `run` result.
pub(crate) fn render_run(o: &RunOutput) -> String {
    if o.status == RunStatus::PendingApproval {
        return format!(
            "pending_approval: request #{}. {}",
            o.request_id.unwrap_or(0),
            o.hint.as_deref().unwrap_or("")
        );
    }
    let mut s = format!(
        "completed: exit code {} in {} ms, {} redaction{}",
        o.exit_code.unwrap_or(-1),
        o.duration_ms.unwrap_or(0),
        o.redactions.unwrap_or(0),
        if o.redactions == Some(1) { "" } else { "s" }
    );
    if o.timed_out == Some(true) {
        s.push_str(", killed at its timeout");
    }
    if o.revoked == Some(true) {
        s.push_str(", killed because its grant was revoked");
    }
    if o.truncated == Some(true) {
        s.push_str(", output cut at 64 KiB per stream");
    }
    for (label, text) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        if let Some(t) = text
            && !t.is_empty()
        {
            s.push_str(&format!("\n--- {label} ---\n{t}"));
            if !t.ends_with('\n') {
                s.push('\n');
            }
        }
    }
    if o.stdout.as_deref().unwrap_or("").is_empty() && o.stderr.as_deref().unwrap_or("").is_empty()
    {
        s.push_str("\n(no output)");
    }
    for l in &o.write_leaks {
        if l.form == "egress" {
            s.push_str(&format!(
                "\nwarning: the command sent the placeholder of {} to {}, where it is not bound ({}); tell the user",
                l.variable, l.path, l.action
            ));
        } else {
            s.push_str(&format!(
                "\nwarning: the command wrote the value of {} into {} ({}; {}); tell the user, do not read that file",
                l.variable, l.path, l.form, l.action
            ));
        }
    }
    s
}

/// Short text for `list_grants`.
pub(crate) fn render_grants(o: &ListGrantsOutput) -> String {
    if o.grants.is_empty() {
        return "No live grants for this client.".to_owned();
    }
    let mut s = String::new();
    for g in &o.grants {
        let cmd = match &g.argv {
            Some(a) => Value::from(a.clone()).to_string(),
            None => "any command".to_owned(),
        };
        let uses = match g.uses_left {
            Some(1) => "1 use left".to_owned(),
            Some(n) => format!("{n} uses left"),
            None => "unlimited uses".to_owned(),
        };
        s.push_str(&format!(
            "{} env {} [{}] {cmd} in {}, until {}, {uses}\n",
            g.id,
            g.environment,
            g.variables.join(", "),
            g.cwd,
            g.expires_at
        ));
    }
    s.pop();
    s
}

/// Short text for `audit_log`.
pub(crate) fn render_audit(o: &AuditLogOutput) -> String {
    if o.entries.is_empty() {
        return "The audit log is empty.".to_owned();
    }
    let mut s = String::new();
    for e in &o.entries {
        let seq = e.get("seq").map(Value::to_string).unwrap_or_default();
        let ts = e.get("ts").and_then(Value::as_str).unwrap_or("");
        let event = e.get("event").and_then(Value::as_str).unwrap_or("?");
        let mut rest = e.clone();
        for k in ["seq", "ts", "event", "prev", "mac"] {
            rest.remove(k);
        }
        s.push_str(&format!(
            "#{seq} {ts} {event} {}\n",
            keyveil_proto::display::clip(&Value::Object(rest).to_string(), 300)
        ));
    }
    s.pop();
    s
}
