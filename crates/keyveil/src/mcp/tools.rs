//! The MCP tools (`docs/mcp.md`): their arguments, their structured results, their
//! definitions (description, annotations, input and output schemas) and the short text that
//! goes with each result.
//!
//! Results are typed: every structured result is built from one of the `*Output` types below,
//! whose JSON Schema (the serialize contract) is the tool's `outputSchema`, so a result always
//! matches the schema a client validates it against.

use std::borrow::Cow;
use std::sync::Arc;

use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde_json::Value;

mod args;
mod outputs;
mod render;
pub(crate) use args::{
    AccessStatusArgs, AuditLogArgs, CreateEnvironmentArgs, DeclareSource, DeclareVariableArgs,
    DescribeEnvironmentArgs, LogsArgs, NoArgs, RequestAccessArgs, RevokeGrantArgs, RunArgs,
    StartArgs, StopArgs,
};
pub(crate) use outputs::{
    AccessStatusOutput, AuditLogOutput, CreateEnvironmentOutput, DeclareStatus,
    DeclareVariableOutput, DescribeEnvironmentOutput, ListEnvironmentsOutput, ListGrantsOutput,
    LogsOutput, RequestAccessOutput, RevokeGrantOutput, RunOutput, RunStatus, StartOutput,
    StartStatus, StopOutput, WriteLeakOutput,
};
pub(crate) use render::{
    render_audit, render_environment, render_environments, render_grants, render_run,
};

/// The server instructions: the habits the model should keep. Short on purpose.
pub(crate) const INSTRUCTIONS: &str = "keyveil gives you access to secrets without custody: you see environment and variable names, never values.
- Never ask the user to paste a secret into the chat. If a variable is missing, call declare_variable: source \"generate\" makes a random value, source \"human\" lets the user set it in their own terminal with `keyveil set ENV NAME`.
- To use secrets, call run with the command as an argv list. keyveil injects the values into that process only and returns its output with each value replaced by [REDACTED:NAME].
- If run returns status \"pending_approval\", ask the user to run `keyveil approve ID` in their terminal, then call run again with exactly the same arguments (with wait_seconds 50 it returns as soon as they approve). A different command needs a new approval.
- For dev servers and watchers use start (returns a run_id), then logs and stop.
- Do not try to reveal, transform or send values anywhere; every request and run is audited.";

/// Every tool name, in the order `tools/list` shows them.
pub(crate) const TOOL_NAMES: [&str; 13] = [
    "list_environments",
    "describe_environment",
    "create_environment",
    "declare_variable",
    "run",
    "request_access",
    "access_status",
    "list_grants",
    "revoke_grant",
    "audit_log",
    "start",
    "logs",
    "stop",
];

// ---------------------------------------------------------------------------------------------
// Arguments

/// `(read_only, destructive, idempotent, open_world)`.
type Hints = (bool, bool, bool, bool);

fn tool<I: JsonSchema + 'static, O: JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    description: &'static str,
    (read_only, destructive, idempotent, open_world): Hints,
) -> Tool {
    let input: Arc<JsonObject> = schema_for_input::<I>().unwrap_or_else(|e| {
        // Cannot happen for the structs above (all are objects); keep the server up anyway.
        tracing::error!(tool = name, error = %e, "bad input schema");
        rmcp::handler::server::common::schema_for_empty_input()
    });
    let input = Arc::new(single_types(input.as_ref().clone()));
    let output = Arc::new(single_types(schema_for_output::<O>().as_ref().clone()));
    Tool::new(Cow::Borrowed(name), Cow::Borrowed(description), input)
        .with_title(title)
        .with_raw_output_schema(output)
        .with_annotations(
            ToolAnnotations::with_title(title)
                .read_only(read_only)
                .destructive(destructive)
                .idempotent(idempotent)
                .open_world(open_world),
        )
}

/// Rewrites `"type": [T, "null"]` to `"type": T` everywhere, and drops non-standard integer
/// formats: optional fields are simply left
/// out (or ignored when null), and single types are what clients that map tool schemas onto
/// an OpenAPI subset (Gemini function declarations) accept; the MCP Inspector's `--strict`
/// portability check flags the array form.
fn single_types(mut schema: JsonObject) -> JsonObject {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Array(types)) = o.get("type") {
                    let non_null: Vec<&Value> = types
                        .iter()
                        .filter(|t| t.as_str() != Some("null"))
                        .collect();
                    if non_null.len() == 1 && types.len() == 2 {
                        let single = non_null.first().map(|t| (*t).clone());
                        if let Some(t) = single {
                            o.insert("type".to_owned(), t);
                        }
                    }
                }
                // `anyOf: [X, {"type": "null"}]` (an optional enum or struct) becomes X.
                for key in ["anyOf", "oneOf"] {
                    let branch = match o.get(key) {
                        Some(Value::Array(b)) if b.len() == 2 => {
                            let is_null =
                                |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
                            match (b.first(), b.get(1)) {
                                (Some(x), Some(n)) | (Some(n), Some(x))
                                    if is_null(n) && !is_null(x) =>
                                {
                                    Some(x.clone())
                                }
                                _ => None,
                            }
                        }
                        _ => None,
                    };
                    if let Some(Value::Object(x)) = branch {
                        o.remove(key);
                        for (k, v) in x {
                            o.entry(k).or_insert(v);
                        }
                    }
                }
                // schemars' integer formats (`uint64`, `int32`, ...) are not JSON Schema
                // formats; validators warn about them (the bounds stay as minimum/maximum).
                if o.get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| f.starts_with("uint") || f.starts_with("int"))
                {
                    o.remove("format");
                }
                for child in o.values_mut() {
                    walk(child);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    for v in schema.values_mut() {
        walk(v);
    }
    schema
}

/// The tools, with descriptions, annotations and schemas.
pub(crate) fn definitions() -> Vec<Tool> {
    vec![
        tool::<NoArgs, ListEnvironmentsOutput>(
            "list_environments",
            "List environments",
            "List keyveil environments and the names of their variables (never values).",
            (true, false, true, false),
        ),
        tool::<DescribeEnvironmentArgs, DescribeEnvironmentOutput>(
            "describe_environment",
            "Describe an environment",
            "Show one environment: each variable's name, description, source and whether a value is set (never the value), and its policy.",
            (true, false, true, false),
        ),
        tool::<CreateEnvironmentArgs, CreateEnvironmentOutput>(
            "create_environment",
            "Create an environment",
            "Create an empty environment (a named set of variables). Values are added with declare_variable and set by the user.",
            (false, false, false, false),
        ),
        tool::<DeclareVariableArgs, DeclareVariableOutput>(
            "declare_variable",
            "Declare a variable",
            "Declare a variable the project needs. source \"generate\": keyveil creates a random value now. source \"human\": the user sets it themselves, in their terminal (`keyveil set ENV NAME`) or on keyveil's local page (hosts with URL elicitation open it); never ask them to paste a value into the chat. Never overwrites an existing value.",
            (false, false, true, false),
        ),
        tool::<RunArgs, RunOutput>(
            "run",
            "Run a command with secrets",
            "Run a command with an environment's values injected as environment variables. Returns the exit code and stdout/stderr with each value replaced by [REDACTED:NAME]; you never see values. Give argv as a list; for shell syntax use [\"sh\", \"-c\", \"... $NAME ...\"]. A command without a grant returns status \"pending_approval\" and a request_id: ask the user to run `keyveil approve ID` in their terminal, then call run again with exactly the same arguments.",
            (false, true, false, true),
        ),
        tool::<RequestAccessArgs, RequestAccessOutput>(
            "request_access",
            "Request access ahead of time",
            "Ask the user in advance for access to an environment, optionally bound to one command. Returns a request_id for `keyveil approve ID`. Usually not needed: run asks by itself.",
            (false, false, true, false),
        ),
        tool::<AccessStatusArgs, AccessStatusOutput>(
            "access_status",
            "Access request status",
            "State of an access request: pending, approved (with grant_id and expires_at), ended, denied or expired.",
            (true, false, true, false),
        ),
        tool::<NoArgs, ListGrantsOutput>(
            "list_grants",
            "List grants",
            "Live grants of this client: environment, variables, command, working directory, expiry and uses left.",
            (true, false, true, false),
        ),
        tool::<RevokeGrantArgs, RevokeGrantOutput>(
            "revoke_grant",
            "Revoke a grant",
            "Revoke one of this client's grants at once; commands running under it are killed.",
            (false, true, true, false),
        ),
        tool::<AuditLogArgs, AuditLogOutput>(
            "audit_log",
            "Read the audit log",
            "Recent audit log entries: requests, approvals, runs and revocations (never values).",
            (true, false, true, false),
        ),
        tool::<StartArgs, StartOutput>(
            "start",
            "Start a long-running command with secrets",
            "Start a dev server, watcher or other long-running command with an environment's values injected, and return at once with a run_id. Approval works as for run (\"pending_approval\": ask the user to run `keyveil approve ID`, then call start again). It runs until stop, its timeout, or its grant ends. Read its output with logs.",
            (false, true, false, true),
        ),
        tool::<LogsArgs, LogsOutput>(
            "logs",
            "Read a background run's output",
            "Redacted output (stdout and stderr combined) of a run started with start, from a byte offset: pass 0 first, then the returned next. Says whether it still runs, and its exit code once ended.",
            (true, false, true, false),
        ),
        tool::<StopArgs, StopOutput>(
            "stop",
            "Stop a background run",
            "Stop a run started with start: SIGTERM to its process group, SIGKILL after 2 s.",
            (false, true, true, false),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Text renderings

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn every_tool_has_annotations_and_schemas() {
        let tools = definitions();
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, TOOL_NAMES);
        for t in &tools {
            let a = t.annotations.as_ref().expect("annotations");
            assert!(a.read_only_hint.is_some(), "{}", t.name);
            assert!(a.destructive_hint.is_some(), "{}", t.name);
            assert!(a.idempotent_hint.is_some(), "{}", t.name);
            assert!(a.open_world_hint.is_some(), "{}", t.name);
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            let out = t.output_schema.as_ref().expect("output schema");
            assert_eq!(out.get("type"), Some(&json!("object")), "{}", t.name);
            assert!(t.description.as_ref().is_some_and(|d| d.len() < 600));
            let all = format!("{:?} {:?}", t.input_schema, t.output_schema);
            assert!(
                !all.contains("\"null\""),
                "{}: nullable type arrays",
                t.name
            );
            assert!(!all.contains("uint"), "{}: integer formats", t.name);
        }
        let run = tools.iter().find(|t| t.name == "run").unwrap();
        let req = run.input_schema.get("required").unwrap();
        assert!(req.as_array().unwrap().contains(&json!("command")));
    }

    #[test]
    fn a_command_string_gets_a_helpful_error() {
        let e = serde_json::from_value::<RunArgs>(json!({"environment": "d", "command": "ls -la"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("list of strings"), "{e}");
        assert!(e.contains(r#"["ls","-la"]"#), "{e}");
        let e = serde_json::from_value::<RunArgs>(json!({"environment": "d", "command": ["a", 1]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("command[1]"), "{e}");
    }

    #[test]
    fn request_ids_accept_numbers_and_strings() {
        for v in [json!(7), json!("7"), json!("#7")] {
            let a: AccessStatusArgs = serde_json::from_value(json!({ "request_id": v })).unwrap();
            assert_eq!(a.request_id, 7);
        }
        assert!(serde_json::from_value::<AccessStatusArgs>(json!({"request_id": "x"})).is_err());
    }

    #[test]
    fn run_text_shows_output_and_flags() {
        let o = RunOutput {
            status: RunStatus::Completed,
            exit_code: Some(0),
            stdout: Some("token: [REDACTED:API_TOKEN]\n".into()),
            stderr: Some(String::new()),
            redactions: Some(1),
            truncated: Some(true),
            duration_ms: Some(3),
            ..RunOutput::default()
        };
        let t = render_run(&o);
        assert!(t.contains("exit code 0"), "{t}");
        assert!(t.contains("[REDACTED:API_TOKEN]"), "{t}");
        assert!(t.contains("64 KiB"), "{t}");
        assert!(!t.contains("stderr"), "{t}");
    }
}
