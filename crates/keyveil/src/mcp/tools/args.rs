//! The tools' arguments as the model sends them (`inputSchema`), and the checks their
//! deserialisers make (an argv is a list of strings, ids are numbers).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

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
pub(super) fn argv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
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

pub(super) fn opt_argv<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    argv(d).map(Some)
}

/// A request id given as a number, or as a string such as "7" or "#7".
pub(super) fn request_id<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
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

pub(super) fn suggest_argv(s: &str) -> String {
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
