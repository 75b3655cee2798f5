//! The MCP tools (`docs/mcp.md`): their arguments, their structured results, their
//! definitions (description, annotations, input and output schemas) and the short text that
//! goes with each result.
//!
//! Results are typed: every structured result is built from one of the `*Output` types below,
//! whose JSON Schema (the serialize contract) is the tool's `outputSchema`, so a result always
//! matches the schema a client validates it against.

use keyveil_proto::op;
use std::borrow::Cow;
use std::sync::Arc;

use rmcp::handler::server::tool::{schema_for_input, schema_for_output};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

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

/// Arguments of tools that take none (an unknown member is an error naming it).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoArgs {}

/// Arguments of `describe_environment`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DescribeEnvironmentArgs {
    /// Environment name, e.g. "dev".
    pub environment: String,
}

/// Arguments of `create_environment`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateEnvironmentArgs {
    /// New environment name: letters, digits, '_' and '-', starting with a letter.
    pub name: String,
    /// What the environment is for.
    #[serde(default)]
    pub description: Option<String>,
}

/// Where a declared variable's value comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum DeclareSource {
    /// The user sets the value in their own terminal (`keyveil set ENV NAME`).
    #[default]
    Human,
    /// keyveil generates a random value now.
    Generate,
}

/// Arguments of `declare_variable`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeclareVariableArgs {
    /// Environment name.
    pub environment: String,
    /// Variable name, following environment-variable rules: `[A-Za-z_][A-Za-z0-9_]*`.
    pub name: String,
    /// What the variable is for (shown to the user).
    #[serde(default)]
    pub description: Option<String>,
    /// "human" (default): the user sets the value with `keyveil set`; "generate": keyveil
    /// creates a random value now.
    #[serde(default)]
    pub source: Option<DeclareSource>,
    /// Length of a generated value in characters (8 to 4096, default 32).
    #[serde(default)]
    #[schemars(range(min = 8, max = 4096))]
    pub length: Option<usize>,
}

/// Arguments of `run`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunArgs {
    /// Environment whose variables are injected.
    pub environment: String,
    /// The command as an argv list, e.g. ["npm", "test"]; for shell syntax use
    /// ["sh", "-c", "curl -H \"Authorization: Bearer $API_TOKEN\" ..."].
    #[serde(deserialize_with = "argv")]
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Working directory (absolute, or relative to the server's directory; default: the
    /// server's directory).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Only these variables (default: all of the environment).
    #[serde(default)]
    pub variables: Option<Vec<String>>,
    /// Names of variables of this server's own environment to pass to the command (e.g.
    /// ["CI"]); the user sees them at approval. The command otherwise gets a clean environment
    /// plus the secrets.
    #[serde(default)]
    pub pass_env: Option<Vec<String>>,
    /// Text written to the command's standard input (at most 1 MiB).
    #[serde(default)]
    pub stdin: Option<String>,
    /// Kill the command after this many seconds (1 to 3600, default 120).
    #[serde(default)]
    #[schemars(range(min = 1, max = 3600))]
    pub timeout_seconds: Option<u64>,
    /// Why you need this (shown to the user when they approve).
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds to wait for the user's approval before returning "pending_approval"
    /// (0 to 50, default 20).
    #[serde(default)]
    #[schemars(range(min = 0, max = 50))]
    pub wait_seconds: Option<u64>,
}

/// Arguments of `request_access`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestAccessArgs {
    /// Environment name.
    pub environment: String,
    /// Only these variables (default: all of the environment).
    #[serde(default)]
    pub variables: Option<Vec<String>>,
    /// Bind the grant to this exact argv (default: ask for any command, which the user sees).
    #[serde(default, deserialize_with = "opt_argv")]
    pub command: Option<Vec<String>>,
    /// Working directory runs will use (default: the server's directory).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Names of variables of this server's environment the runs will pass through.
    #[serde(default)]
    pub pass_env: Option<Vec<String>>,
    /// Requested lifetime of the grant in seconds.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    /// Why you need access (shown to the user).
    pub reason: String,
}

/// Arguments of `access_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessStatusArgs {
    /// The request id returned by `run` or `request_access`.
    #[serde(deserialize_with = "request_id")]
    #[schemars(with = "u64")]
    pub request_id: u64,
}

/// Arguments of `revoke_grant`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeGrantArgs {
    /// Grant id (`g-...`), from `list_grants` or a completed run.
    pub grant_id: String,
}

/// Arguments of `audit_log`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditLogArgs {
    /// Number of most recent entries (1 to 500, default 20).
    #[serde(default)]
    #[schemars(range(min = 1, max = 500))]
    pub limit: Option<usize>,
}

/// Arguments of `start`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartArgs {
    /// Environment whose variables are injected.
    pub environment: String,
    /// The command as an argv list, e.g. ["npm", "run", "dev"].
    #[serde(deserialize_with = "argv")]
    #[schemars(length(min = 1))]
    pub command: Vec<String>,
    /// Working directory (absolute, or relative to the server's directory).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Only these variables (default: all of the environment).
    #[serde(default)]
    pub variables: Option<Vec<String>>,
    /// Names of variables of this server's own environment to pass to the command.
    #[serde(default)]
    pub pass_env: Option<Vec<String>>,
    /// Kill the command after this many seconds (default: a day; its grant usually ends it
    /// sooner).
    #[serde(default)]
    #[schemars(range(min = 1, max = 86400))]
    pub timeout_seconds: Option<u64>,
    /// Why you need this (shown to the user when they approve).
    #[serde(default)]
    pub reason: Option<String>,
    /// Seconds to wait for the user's approval before returning "pending_approval"
    /// (0 to 50, default 20).
    #[serde(default)]
    #[schemars(range(min = 0, max = 50))]
    pub wait_seconds: Option<u64>,
}

/// Arguments of `logs`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsArgs {
    /// Run id returned by `start`.
    pub run_id: String,
    /// Byte offset to read from: 0 the first time, then the `next` of the previous call.
    #[serde(default)]
    pub from: Option<u64>,
    /// Most bytes to return (1 to 65536, default 65536).
    #[serde(default)]
    #[schemars(range(min = 1, max = 65536))]
    pub max_bytes: Option<usize>,
}

/// Arguments of `stop`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StopArgs {
    /// Run id returned by `start`.
    pub run_id: String,
}

/// An argv list; a plain string gets an error that says how to write it instead (the server
/// never splits a command line itself: what the user approves is exactly what runs).
fn argv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Err(serde::de::Error::custom(format!(
            "`command` must be a list of strings (argv), not one string: write {} (or [\"sh\", \"-c\", {}] for shell syntax)",
            suggest_argv(&s),
            Value::String(keyveil_proto::display::clip(&s, 200))
        ))),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                other => Err(serde::de::Error::custom(format!(
                    "`command[{i}]` must be a string, got {}",
                    json_type(&other)
                ))),
            })
            .collect(),
        other => Err(serde::de::Error::custom(format!(
            "`command` must be a list of strings (argv), got {}",
            json_type(&other)
        ))),
    }
}

fn opt_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    argv(d).map(Some)
}

/// A request id given as a number, or as a string such as "7" or "#7".
fn request_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    let parsed = match &v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().trim_start_matches('#').parse().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| {
        serde::de::Error::custom(format!(
            "`request_id` must be a request number such as 7, got {}",
            keyveil_proto::display::clip(&v.to_string(), 40)
        ))
    })
}

fn suggest_argv(s: &str) -> String {
    let words: Vec<Value> = s
        .split_whitespace()
        .take(8)
        .map(|w| Value::String(keyveil_proto::display::clip(w, 40)))
        .collect();
    Value::Array(words).to_string()
}

/// The JSON type of a value, for error messages.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// One environment in `list_environments`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct EnvironmentSummary {
    /// Environment name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Names of its variables (never values).
    #[serde(default)]
    pub variables: Vec<String>,
}

/// Result of `list_environments`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct ListEnvironmentsOutput {
    /// Every environment.
    pub environments: Vec<EnvironmentSummary>,
}

/// One variable in `describe_environment`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct VariableInfo {
    /// Variable name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Where its value comes from: human, generated, dynamic or provider.
    pub source: String,
    /// Whether a value is set (`false`: the user still has to `keyveil set` it).
    pub set: bool,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When its value last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<String>,
    /// Set when `keyveil sweep --contain` found its value outside keyveil and it was not
    /// replaced since: when, the kinds of place, and what the human should do (never where).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compromised: Option<String>,
}

/// Result of `describe_environment`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct DescribeEnvironmentOutput {
    /// Environment name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
    /// Its variables (never values).
    pub variables: Vec<VariableInfo>,
    /// Its policy (factor, maximum grant lifetime, ...).
    #[serde(default)]
    pub policy: Map<String, Value>,
}

/// Result of `create_environment`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct CreateEnvironmentOutput {
    /// The environment created.
    pub name: String,
}

/// State of a declared variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DeclareStatus {
    /// It has a value.
    Set,
    /// It waits for the user to set it.
    AwaitingValue,
}

/// Result of `declare_variable`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct DeclareVariableOutput {
    /// "set" or "awaiting_value".
    pub status: DeclareStatus,
    /// What to tell the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// How a `run` call ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RunStatus {
    /// The command ran; see exit_code, stdout and stderr.
    #[default]
    Completed,
    /// No grant yet: the user has to approve request_id.
    PendingApproval,
}

/// Result of `run`: `completed` (exit code and redacted output) or `pending_approval`
/// (request id and what to ask the user).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub(crate) struct RunOutput {
    /// "completed" or "pending_approval".
    pub status: RunStatus,
    /// Exit code of the command (128 + signal if it was killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal that ended the command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Standard output, every secret value replaced by `[REDACTED:NAME]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// Standard error, redacted the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// Number of values redacted from the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redactions: Option<u64>,
    /// Whether the output went over 64 KiB per stream and was cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// Whether the command hit its timeout and was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed_out: Option<bool>,
    /// Whether the grant was revoked during the run and the command killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
    /// Run id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Grant the run used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Wall time of the command in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The request the user must approve (pending_approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    /// What to do next (pending_approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// How to keep waiting, and the command that approves (pending_approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<super::waiting::WaitingOutput>,
    /// Files the command wrote a secret value into (found by the post-run scan), by variable
    /// and path, never the value. Tell the user; do not read those files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub write_leaks: Vec<WriteLeakOutput>,
}

/// A file a run wrote a value into.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub(crate) struct WriteLeakOutput {
    /// The variable whose value was written (its alias where names are hidden).
    pub variable: String,
    /// The file (`archive!member` inside archives).
    pub path: String,
    /// The form it was found in (`raw`, `base64`, `utf-16le`, `gzip`, ...).
    pub form: String,
    /// What keyveil did: `reported`, `quarantined ...`, `failed`, `removed`.
    pub action: String,
}

/// Result of `request_access`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct RequestAccessOutput {
    /// The request the user must approve.
    pub request_id: u64,
    /// "pending".
    pub status: String,
    /// What to ask the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// How to keep waiting, and the command that approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<super::waiting::WaitingOutput>,
}

/// Result of `access_status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct AccessStatusOutput {
    /// pending, approved, ended (approved, but the grant is used up, expired or revoked),
    /// denied or expired.
    pub status: String,
    /// The grant an approval created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// When that grant expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The user's reason for a denial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// One grant in `list_grants`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct GrantView {
    /// Grant id.
    pub id: String,
    /// The request it came from.
    pub request_id: u64,
    /// Environment.
    pub environment: String,
    /// Variables it serves.
    pub variables: Vec<String>,
    /// The exact argv it covers; absent when it covers any command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Working directory runs must use.
    pub cwd: String,
    /// When it was approved.
    pub created_at: String,
    /// When it expires.
    pub expires_at: String,
    /// Uses left; absent when unlimited until expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    /// Runs started under it so far.
    #[serde(default)]
    pub runs: u32,
}

/// Result of `list_grants`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct ListGrantsOutput {
    /// Live grants of this client.
    pub grants: Vec<GrantView>,
}

/// Result of `revoke_grant`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct RevokeGrantOutput {
    /// Always true on success.
    pub revoked: bool,
    /// The grant revoked.
    pub grant_id: String,
}

/// Result of `audit_log`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct AuditLogOutput {
    /// Entries, oldest first: seq, ts, event and event fields (never a value).
    pub entries: Vec<Map<String, Value>>,
}

/// How a `start` call ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StartStatus {
    /// The command runs in the background; read it with logs, end it with stop.
    #[default]
    Started,
    /// No grant yet: the user has to approve request_id.
    PendingApproval,
}

/// Result of `start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub(crate) struct StartOutput {
    /// "started" or "pending_approval".
    pub status: StartStatus,
    /// Run id, for logs and stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Grant the run uses (the run ends when the grant does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Process id (also its process group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// The request the user must approve (pending_approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<u64>,
    /// What to do next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// How to keep waiting, and the command that approves (pending_approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<super::waiting::WaitingOutput>,
}

/// Result of `logs`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct LogsOutput {
    /// Run id.
    pub run_id: String,
    /// Redacted stdout and stderr, combined, from `from` to `next`.
    pub output: String,
    /// Offset this output starts at.
    pub from: u64,
    /// Offset to pass as `from` next time.
    pub next: u64,
    /// Bytes between the requested offset and the oldest byte kept (the buffer keeps the last
    /// 1 MiB); they are lost.
    pub dropped: u64,
    /// Whether the command still runs.
    pub running: bool,
    /// Exit code once it ended (128 + signal if killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Whether it was ended by stop.
    #[serde(default)]
    pub stopped: bool,
    /// Whether its grant ended (revoked or expired) and it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<bool>,
}

/// Result of `stop`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub(crate) struct StopOutput {
    /// Run id.
    pub run_id: String,
    /// Whether this call stopped it (false: it had already ended).
    pub stopped: bool,
    /// Whether it still runs (it gets SIGKILL 2 s after SIGTERM).
    pub running: bool,
    /// Its exit code, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

// ---------------------------------------------------------------------------------------------
// From the broker's typed replies (`keyveil_proto::op`) to the tools' results

impl From<op::Environments> for ListEnvironmentsOutput {
    fn from(r: op::Environments) -> Self {
        ListEnvironmentsOutput {
            environments: r
                .environments
                .into_iter()
                .map(|e| EnvironmentSummary {
                    name: e.name,
                    description: e.description,
                    variables: e.variables,
                })
                .collect(),
        }
    }
}

impl From<op::EnvDetail> for DescribeEnvironmentOutput {
    fn from(r: op::EnvDetail) -> Self {
        DescribeEnvironmentOutput {
            name: r.name,
            description: r.description,
            variables: r
                .variables
                .into_iter()
                .map(|v| VariableInfo {
                    name: v.name,
                    description: v.description,
                    source: v.source,
                    set: v.set,
                    created_at: Some(v.created_at.to_string()),
                    rotated_at: v.rotated_at.map(|t| t.to_string()),
                    compromised: v.compromised.map(|c| {
                        format!(
                            "found outside keyveil at {} ({}); {}",
                            c.found_at,
                            c.kinds.join(", "),
                            c.hint
                        )
                    }),
                })
                .collect(),
            policy: r.policy,
        }
    }
}

impl From<op::Declared> for DeclareVariableOutput {
    fn from(r: op::Declared) -> Self {
        DeclareVariableOutput {
            status: match r.status {
                op::VarStatus::AwaitingValue => DeclareStatus::AwaitingValue,
                op::VarStatus::Set | op::VarStatus::Unset => DeclareStatus::Set,
            },
            hint: r.hint,
        }
    }
}

impl From<op::AccessRequested> for RequestAccessOutput {
    fn from(r: op::AccessRequested) -> Self {
        RequestAccessOutput {
            request_id: r.request_id,
            status: r.status,
            hint: Some(r.hint),
            waiting: None,
        }
    }
}

impl From<op::AccessState> for AccessStatusOutput {
    fn from(r: op::AccessState) -> Self {
        let (status, grant_id, expires_at, reason, hint) = match r {
            op::AccessState::Pending { hint } => ("pending", None, None, None, Some(hint)),
            op::AccessState::Approved {
                grant_id,
                expires_at,
            } => ("approved", Some(grant_id), expires_at, None, None),
            op::AccessState::Ended {
                grant_id,
                expires_at,
            } => ("ended", Some(grant_id), expires_at, None, None),
            op::AccessState::Denied { reason } => ("denied", None, None, reason, None),
            op::AccessState::Expired => ("expired", None, None, None, None),
        };
        AccessStatusOutput {
            status: status.to_owned(),
            grant_id,
            expires_at: expires_at.map(|t| t.to_string()),
            reason,
            hint,
        }
    }
}

impl From<op::AuditEntries> for AuditLogOutput {
    fn from(r: op::AuditEntries) -> Self {
        AuditLogOutput {
            entries: r
                .entries
                .iter()
                .filter_map(|e| match serde_json::to_value(e) {
                    Ok(Value::Object(map)) => Some(map),
                    _ => None,
                })
                .collect(),
        }
    }
}

impl From<op::RunLogs> for LogsOutput {
    fn from(r: op::RunLogs) -> Self {
        LogsOutput {
            run_id: r.run_id,
            output: r.output,
            from: r.from,
            next: r.next,
            dropped: r.dropped,
            running: r.running,
            exit_code: r.ended.as_ref().map(|e| e.exit_code),
            stopped: r.stopped,
            revoked: r.ended.as_ref().map(|e| e.revoked),
        }
    }
}

impl From<op::RunStopped> for StopOutput {
    fn from(r: op::RunStopped) -> Self {
        StopOutput {
            run_id: r.run_id,
            stopped: r.stopped,
            running: r.running,
            exit_code: r.ended.map(|e| e.exit_code),
        }
    }
}

impl From<op::GrantList> for ListGrantsOutput {
    fn from(r: op::GrantList) -> Self {
        ListGrantsOutput {
            grants: r
                .grants
                .into_iter()
                .map(|g| GrantView {
                    id: g.id,
                    request_id: g.request_id,
                    environment: g.environment,
                    variables: g.variables,
                    argv: g.argv,
                    cwd: g.cwd,
                    created_at: g.created_at.to_string(),
                    expires_at: g.expires_at.to_string(),
                    uses_left: g.uses_left,
                    runs: g.runs,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Definitions

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
        s.push_str(&format!(
            "\nwarning: the command wrote the value of {} into {} ({}; {}); tell the user, do not read that file",
            l.variable, l.path, l.form, l.action
        ));
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
