//! The tools' structured results (`outputSchema`): one `*Output` type per tool, built from the
//! broker's typed replies.

use keyveil_proto::op;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    pub waiting: Option<crate::mcp::waiting::WaitingOutput>,
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
    pub waiting: Option<crate::mcp::waiting::WaitingOutput>,
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
    pub waiting: Option<crate::mcp::waiting::WaitingOutput>,
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
