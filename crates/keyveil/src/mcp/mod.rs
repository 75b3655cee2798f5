//! `keyveil mcp`: the stdio MCP server for agent hosts (Codex, Claude Code, Gemini CLI, ...).
//!
//! The server is a thin client of the broker: every tool call becomes one broker request on a
//! fresh connection ([`crate::client::Connection`]), and the only things that come back are
//! names, ids, states and already-redacted output. No secret value ever reaches this process,
//! so none can cross the MCP channel.
//!
//! Both protocol eras are served by rmcp's handshake layer: the 2025 `initialize` handshake
//! (2024-11-05, 2025-03-26, 2025-06-18 and 2025-11-25 are echoed back) and 2026-07-28, where a
//! client opens with `server/discover` (or a first request) and sends its identity in each
//! request's `_meta`. [`RequestContext::client_info`] reads the client's name in either era;
//! it becomes the grant scope `mcp:<name>`.
//!
//! Tool errors the user or the model can act on (unknown environment, empty command, locked
//! vault, bad arguments) are tool results with `isError: true` and a message saying what to do,
//! never JSON-RPC errors. Nothing blocks longer than `wait_seconds` (plus the command's own
//! time once a grant covers it), and every broker exchange has a deadline.
//!
//! Logs go to stderr only (stdout is the protocol).

mod grants;
mod stdio;
pub(crate) mod tools;
pub(crate) mod waiting;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::paths::Paths;
use keyveil_proto::op::Operation;
use keyveil_proto::{ClientInfo, ErrorCode, Reply, Request};
use tools::*;

mod environments;
mod runs;

/// Default seconds a `run` waits for the user's approval before answering `pending_approval`.
pub(crate) const DEFAULT_WAIT_SECONDS: u64 = 20;
/// Longest approval wait a call may ask for (agent hosts time tool calls out; Codex at 60 s).
pub(crate) const MAX_WAIT_SECONDS: u64 = 50;
/// Default timeout of a command started through MCP, in seconds.
pub(crate) const DEFAULT_RUN_TIMEOUT_SECONDS: u64 = 120;
/// Longest timeout a `run` may ask for, in seconds.
pub(crate) const MAX_RUN_TIMEOUT_SECONDS: u64 = 3600;
/// Cap on each collected output stream of a run, in bytes.
pub(crate) const OUTPUT_CAP_BYTES: usize = 64 * 1024;
/// Largest `stdin` a `run` may pass, in bytes.
pub(crate) const MAX_STDIN_BYTES: usize = 1024 * 1024;
/// Longest string a tool argument may hold (other than `run`'s `stdin`), in bytes.
pub(crate) const MAX_ARG_BYTES: usize = 64 * 1024;
/// Deadline of a broker exchange that runs nothing (includes starting the broker).
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Extra time on top of wait + run timeout before a `run` call gives up on the broker.
const RUN_SLACK: Duration = Duration::from_secs(30);
/// How long `declare_variable` waits for the human on the local value page (URL elicitation).
const ELICIT_WAIT_SECONDS: u64 = 45;
/// Longest client name kept for the grant scope.
const MAX_CLIENT_NAME: usize = 128;

/// Runs the MCP server on stdio until the client closes stdin.
pub(crate) fn main() -> Result<i32> {
    crate::logging::init_cli();
    let paths = Paths::resolve()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(paths))
}

async fn serve(paths: Paths) -> Result<i32> {
    let server = KeyveilMcp::new(paths)?;
    tracing::info!(home = %server.paths.home.display(), "keyveil mcp starting");
    let (stdin, stdout) = rmcp::transport::stdio_pipes();
    let transport = stdio::GuardedStdio::new(stdin, stdout);
    let running = server
        .serve(transport)
        .await
        .context("the MCP session did not start")?;
    let reason = running.waiting().await;
    tracing::info!(?reason, "keyveil mcp stopped");
    Ok(0)
}

/// The MCP server: where the broker is, and what this process passes to the commands it asks
/// to run.
#[derive(Debug, Clone)]
pub(crate) struct KeyveilMcp {
    paths: Paths,
    /// The server's working directory: the default `cwd` of runs and requests.
    cwd: PathBuf,
    /// The server's own (non-secret) environment, less `KEYVEIL_*`, passed to runs.
    env: Vec<(String, String)>,
    tools: Vec<Tool>,
    /// Approval links offered, and tasks (`waiting.rs`).
    waiting: waiting::Waiting,
}

impl KeyveilMcp {
    /// A server for the broker of `paths`.
    pub(crate) fn new(paths: Paths) -> Result<KeyveilMcp> {
        let cwd = std::env::current_dir().context("cannot read the current directory")?;
        Ok(KeyveilMcp {
            paths,
            cwd,
            env: passthrough_env(),
            tools: definitions(),
            waiting: waiting::Waiting::default(),
        })
    }

    fn client(&self, ctx: &RequestContext<RoleServer>) -> ClientInfo {
        let (name, version) = match ctx.client_info() {
            Some(i) => (i.name, i.version),
            None => ("unknown".to_owned(), String::new()),
        };
        let name = if name.trim().is_empty() {
            "unknown".to_owned()
        } else {
            name.chars().take(MAX_CLIENT_NAME).collect()
        };
        ClientInfo {
            kind: "mcp".to_owned(),
            name,
            version: version.chars().take(64).collect(),
            pid: std::process::id(),
        }
    }

    /// An absolute working directory: `cwd` against the server's directory, default that.
    fn resolve_cwd(&self, cwd: Option<&str>) -> String {
        let p = match cwd.filter(|c| !c.trim().is_empty()) {
            Some(c) => self.cwd.join(c),
            None => self.cwd.clone(),
        };
        p.to_string_lossy().into_owned()
    }

    async fn dispatch(
        &self,
        name: &str,
        args: Value,
        ctx: RequestContext<RoleServer>,
    ) -> Option<CallToolResult> {
        Some(match name {
            "list_environments" => match parse::<NoArgs>(name, args) {
                Ok(_) => self.list_environments().await,
                Err(e) => e,
            },
            "describe_environment" => match parse::<DescribeEnvironmentArgs>(name, args) {
                Ok(a) => self.describe_environment(a).await,
                Err(e) => e,
            },
            "create_environment" => match parse::<CreateEnvironmentArgs>(name, args) {
                Ok(a) => self.create_environment(a).await,
                Err(e) => e,
            },
            "declare_variable" => match parse::<DeclareVariableArgs>(name, args) {
                Ok(a) => self.declare_variable(a, &ctx).await,
                Err(e) => e,
            },
            "run" => match parse::<RunArgs>(name, args) {
                Ok(a) => self.run(a, &ctx).await,
                Err(e) => e,
            },
            "request_access" => match parse::<RequestAccessArgs>(name, args) {
                Ok(a) => self.request_access(a, &ctx).await,
                Err(e) => e,
            },
            "access_status" => match parse::<AccessStatusArgs>(name, args) {
                Ok(a) => self.access_status(a).await,
                Err(e) => e,
            },
            "list_grants" => match parse::<NoArgs>(name, args) {
                Ok(_) => self.list_grants(&ctx).await,
                Err(e) => e,
            },
            "revoke_grant" => match parse::<RevokeGrantArgs>(name, args) {
                Ok(a) => self.revoke_grant(a, &ctx).await,
                Err(e) => e,
            },
            "audit_log" => match parse::<AuditLogArgs>(name, args) {
                Ok(a) => self.audit_log(a).await,
                Err(e) => e,
            },
            "start" => match parse::<StartArgs>(name, args) {
                Ok(a) => self.start(a, &ctx).await,
                Err(e) => e,
            },
            "logs" => match parse::<LogsArgs>(name, args) {
                Ok(a) => self.logs(a, &ctx).await,
                Err(e) => e,
            },
            "stop" => match parse::<StopArgs>(name, args) {
                Ok(a) => self.stop(a, &ctx).await,
                Err(e) => e,
            },
            _ => return None,
        })
    }

    // -- tools ---------------------------------------------------------------------------------

    /// One operation that runs nothing; its typed reply, or a tool error.
    async fn call_op<O: Operation>(&self, o: O) -> Result<O::Reply, CallToolResult> {
        self.call_ok::<O::Reply>(&o.into()).await
    }

    /// One request that runs nothing; its `Ok` data parsed as `T`, or a tool error.
    async fn call_ok<T: DeserializeOwned>(&self, req: &Request) -> Result<T, CallToolResult> {
        let reply = match tokio::time::timeout(CALL_DEADLINE, crate::client::call(&self.paths, req))
            .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(broker_unreachable(&e)),
            Err(_) => {
                return Err(tool_error(format!(
                    "keyveil's broker did not answer within {} s.\nhint: ask the user to check `keyveil status`",
                    CALL_DEADLINE.as_secs()
                )));
            }
        };
        match reply {
            Reply::Ok { data } => serde_json::from_value(data).map_err(|e| {
                tool_error(format!(
                    "keyveil's broker answered `{}` in a shape this server does not know ({e}).\nhint: ask the user to run `keyveil daemon stop` so that the next call starts a broker of the same version",
                    req.op()
                ))
            }),
            Reply::Error {
                code,
                message,
                hint,
            } => Err(broker_error(code, &message, hint.as_deref())),
            _ => Err(tool_error(format!(
                "keyveil's broker answered `{}` with an unexpected reply.",
                req.op()
            ))),
        }
    }
}

impl ServerHandler for KeyveilMcp {
    fn get_info(&self) -> ServerConfig {
        let mut server = Implementation::new("keyveil", env!("CARGO_PKG_VERSION"));
        server.title = Some("keyveil secret broker".to_owned());
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tasks()
                .build(),
        )
        .with_server_info(server)
        .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    /// rmcp hands over, as a "custom" request, both unknown methods and known ones whose
    /// `params` do not parse (`tools/call` with `arguments` that are not an object, a `name` that
    /// is not a string). Its default answer is a bare "method not found" carrying only the method
    /// name; this says which of the two it is.
    async fn on_custom_request(
        &self,
        request: rmcp::model::CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CustomResult, ErrorData> {
        let method = keyveil_proto::display::clip(&request.method, 80);
        let known = [
            "initialize",
            "ping",
            "server/discover",
            "tools/list",
            "tools/call",
        ];
        Err(if known.contains(&request.method.as_str()) {
            ErrorData::invalid_params(
                format!(
                    "the params of {method} do not have the shape MCP defines; for tools/call: {{\"name\": \"<tool>\", \"arguments\": {{...}}}} with `arguments` an object (or absent)"
                ),
                None,
            )
        } else {
            ErrorData::new(
                rmcp::model::ErrorCode::METHOD_NOT_FOUND,
                format!(
                    "unknown method {method:?}; this server offers tools (tools/list, tools/call)"
                ),
                None,
            )
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        let retry = request.input_responses.is_some() || request.request_state.is_some();
        let mut args = Value::Object(request.arguments.unwrap_or_default());
        tracing::debug!(tool = %name, "tool call");
        match self.call_as_task(&name, &args, &context) {
            Some(Ok(task)) => {
                return Ok(CallToolResponse::Task(rmcp::model::CreateTaskResult::new(
                    task,
                )));
            }
            Some(Err(e)) => return Ok(CallToolResponse::Complete(e)),
            None => {}
        }
        let round_trip = self.link_round_trip(&name, retry, &context);
        let asked = args.clone();
        if round_trip && let Some(a) = args.as_object_mut() {
            a.insert("wait_seconds".to_owned(), Value::from(0));
        }
        match self.dispatch(&name, args, context.clone()).await {
            Some(r) if round_trip => Ok(match self.link_input_required(&r).await {
                Some(ask) => CallToolResponse::InputRequired(ask),
                // The link went out before: the call waits as the model asked after all.
                None if waiting::pending_request(&r).is_some() => CallToolResponse::Complete(
                    self.dispatch(&name, asked, context).await.unwrap_or(r),
                ),
                None => CallToolResponse::Complete(r),
            }),
            Some(r) => Ok(CallToolResponse::Complete(r)),
            None => Err(ErrorData::invalid_params(
                format!(
                    "unknown tool {:?}; the tools are: {}",
                    keyveil_proto::display::clip(&name, 80),
                    TOOL_NAMES.join(", ")
                ),
                None,
            )),
        }
    }

    async fn get_task(
        &self,
        request: rmcp::model::GetTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetTaskResult, ErrorData> {
        self.waiting
            .tasks()
            .get_task(&request.task_id)
            .map(rmcp::model::GetTaskResult::new)
    }

    async fn update_task(
        &self,
        request: rmcp::model::UpdateTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.waiting
            .tasks()
            .update_task(&request.task_id, request.input_responses)
    }

    async fn cancel_task(
        &self,
        request: rmcp::model::CancelTaskParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.waiting.tasks().cancel_task(&request.task_id)
    }
}

// ---------------------------------------------------------------------------------------------
// Results and errors

/// A successful result: `structuredContent` plus a short text rendering.
fn structured<T: Serialize>(value: &T, text: String) -> CallToolResult {
    match serde_json::to_value(value) {
        Ok(v) => {
            let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
            r.structured_content = Some(v);
            r
        }
        Err(e) => tool_error(format!("cannot encode the result: {e}")),
    }
}

/// A tool error (`isError: true`) with a message for the model.
fn tool_error(text: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(text.into())])
}

/// A broker error as a tool error that says what happened and what to do.
fn broker_error(code: ErrorCode, message: &str, hint: Option<&str>) -> CallToolResult {
    let default_hint = match code {
        ErrorCode::Locked => {
            Some("ask the user to run `keyveil unlock` in their terminal, then call again")
        }
        ErrorCode::Denied => Some("do not retry in a loop; ask the user what they want instead"),
        ErrorCode::Timeout => Some("call run again to make a new request"),
        _ => None,
    };
    let mut text = match code {
        ErrorCode::Denied => format!("denied: {message}"),
        _ => message.to_owned(),
    };
    if let Some(h) = hint.or(default_hint) {
        text.push_str("\nhint: ");
        text.push_str(h);
    }
    tool_error(text)
}

/// The broker could not be reached (or started).
fn broker_unreachable(e: &anyhow::Error) -> CallToolResult {
    tool_error(format!(
        "cannot reach keyveil's broker: {e:#}\nhint: ask the user to run `keyveil status` (or `keyveil daemon --foreground` to see why it does not start)"
    ))
}

/// Parses tool arguments; a schema-invalid call becomes a tool error naming the argument at
/// fault (`run.cwd: invalid type: ...`) and the problem. Unknown members are refused (a
/// misspelt `variables` would otherwise silently ask for every variable), and so is any string
/// longer than [`MAX_ARG_BYTES`] (`stdin`: [`MAX_STDIN_BYTES`]), before anything reaches the
/// broker or an error message could echo it.
fn parse<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, CallToolResult> {
    if let Some(e) = oversized_string(&args, &mut String::new()) {
        return Err(tool_error(format!(
            "invalid arguments for {tool}: {e}. Write long text to a file in the working directory and pass its path instead."
        )));
    }
    serde_path_to_error::deserialize(args).map_err(|e| {
        let at = e.path().to_string();
        let what = keyveil_proto::display::clip(&e.into_inner().to_string(), 300);
        let at = if at.is_empty() || at == "." {
            String::new()
        } else {
            format!("`{at}`: ")
        };
        tool_error(format!(
            "invalid arguments for {tool}: {at}{what}. See the tool's input schema."
        ))
    })
}

/// The first string in `v` over its limit, as "`path` is N bytes; the most is M". `path`
/// accumulates the location (`command[2]`, `pass_env[0]`).
fn oversized_string(v: &Value, path: &mut String) -> Option<String> {
    match v {
        Value::String(s) => {
            let max = if path == "stdin" {
                MAX_STDIN_BYTES
            } else {
                MAX_ARG_BYTES
            };
            (s.len() > max).then(|| format!("`{path}` is {} bytes; the most is {max}", s.len()))
        }
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let r = oversized_string(item, path);
            path.truncate(len);
            r
        }),
        Value::Object(members) => members.iter().find_map(|(k, item)| {
            let len = path.len();
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&keyveil_proto::display::clip(k, 80));
            let r = oversized_string(item, path);
            path.truncate(len);
            r
        }),
        _ => None,
    }
}

fn approve_hint(id: u64) -> String {
    format!(
        "Ask the user to run `keyveil approve {id}` in their own terminal (it asks for their vault passphrase; never ask for it in the chat)."
    )
}

/// The server's environment as passed to runs: UTF-8 entries only, without `KEYVEIL_*`.
fn passthrough_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .filter(|(k, _)| !k.starts_with("KEYVEIL_"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use std::path::Path;

    fn text(r: &CallToolResult) -> String {
        r.content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect()
    }

    #[test]
    fn bad_arguments_are_tool_errors_that_name_the_problem() {
        let e = parse::<RunArgs>("run", serde_json::json!({"environment": "demo"})).unwrap_err();
        assert_eq!(e.is_error, Some(true));
        assert!(text(&e).contains("missing field `command`"), "{}", text(&e));
        let e = parse::<RunArgs>(
            "run",
            serde_json::json!({"environment": 3, "command": ["x"]}),
        )
        .unwrap_err();
        assert!(text(&e).contains("invalid type"), "{}", text(&e));
        assert!(text(&e).contains("`environment`"), "{}", text(&e));
        // A misspelt optional argument is refused, not ignored.
        let e = parse::<RunArgs>(
            "run",
            serde_json::json!({"environment": "demo", "command": ["x"], "variabels": ["A"]}),
        )
        .unwrap_err();
        assert!(
            text(&e).contains("unknown field `variabels`"),
            "{}",
            text(&e)
        );
        // An oversized string is named with its place, and not echoed.
        let big = "Q".repeat(MAX_ARG_BYTES + 1);
        let e = parse::<RunArgs>(
            "run",
            serde_json::json!({"environment": "demo", "command": ["x", big]}),
        )
        .unwrap_err();
        assert!(
            text(&e).contains("`command[1]` is 65537 bytes"),
            "{}",
            text(&e)
        );
        assert!(text(&e).len() < 1024);
        // stdin has its own, larger limit.
        let stdin = "Q".repeat(MAX_ARG_BYTES + 1);
        assert!(
            parse::<RunArgs>(
                "run",
                serde_json::json!({"environment": "demo", "command": ["x"], "stdin": stdin}),
            )
            .is_ok()
        );
    }

    #[test]
    fn broker_errors_carry_their_hint() {
        let r = broker_error(ErrorCode::Locked, "the vault is locked", None);
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains("keyveil unlock"));
        let r = broker_error(
            ErrorCode::NotFound,
            "no environment 'x'",
            Some("known: demo"),
        );
        assert!(text(&r).contains("hint: known: demo"));
    }

    #[test]
    fn the_environment_passed_on_has_no_keyveil_variables() {
        assert!(
            passthrough_env()
                .iter()
                .all(|(k, _)| !k.starts_with("KEYVEIL_"))
        );
    }

    #[test]
    fn cwd_is_resolved_against_the_server_directory() {
        let s = KeyveilMcp::new(Paths::at(PathBuf::from("/tmp/k"))).unwrap();
        assert!(Path::new(&s.resolve_cwd(None)).is_absolute());
        assert!(Path::new(&s.resolve_cwd(Some("sub"))).is_absolute());
        assert_eq!(s.resolve_cwd(Some("/abs")), "/abs");
    }
}
