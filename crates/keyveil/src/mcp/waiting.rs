//! While the human approves: what a pending reply tells the model and the human, the approval
//! page link offered by URL-mode elicitation, and MCP Tasks for `run` and `start`.
//!
//! - **Pending reply.** `run`, `start` and `request_access` answer a request that waits with
//!   [`WaitingOutput`]: the one command that approves (`keyveil approve N`), which tool to call
//!   next with which arguments, how long that call may wait, and how often to poll.
//! - **URL elicitation.** A client that declared `elicitation: {url: {}}` is sent, once per
//!   request, an `elicitation/create` in URL mode whose URL is a one-time link to keyveil's
//!   approval page (`Request::WebUrl`). The link is not a capability (`docs/approval-page.md`):
//!   the agent can mint one itself with `keyveil approve --web --print`; approving on the page
//!   still needs the human's factor. The message is fixed text plus the request number: no
//!   agent-chosen string, no value, no factor. Clients without URL mode get the text hint
//!   only. In the 2026-07-28 era a server sends no requests of its own: there a pending `run`
//!   or `start` answers with an `InputRequiredResult` carrying the link (multi round-trip; the
//!   first call does not wait, the client's retry does), or, inside a task, `input_required`.
//! - **Tasks** (`io.modelcontextprotocol/tasks`, SEP-2663). A `run` or `start` from a client
//!   that declared the extension becomes a task: `tools/call` returns a task id at once, the
//!   task keeps waiting for the approval (up to the request's lifetime, 10 minutes) without any
//!   tool-call timeout, reports `input_required` with the approval link when the client does
//!   URL elicitation, and ends with the same result a plain call would have given. Clients
//!   without the extension keep the polling flow.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::RoleServer;
use rmcp::model::{
    CallToolResult, ElicitRequest, ElicitRequestParams, InputRequest, ProtocolVersion,
};
use rmcp::service::RequestContext;
use rmcp::task_manager::{TaskContext, TaskExit, TaskManager, TaskOptions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{KeyveilMcp, MAX_WAIT_SECONDS, RunArgs, StartArgs, parse};

/// How often a model should poll `access_status`, in seconds, when it does not re-call the
/// blocking tool.
pub(crate) const POLL_SECONDS: u64 = 10;
/// How long a task waits for the approval in all, in seconds: a pending request's lifetime.
pub(crate) const TASK_WAIT_SECONDS: u64 = crate::broker::state::REQUEST_TTL_SECONDS as u64;
/// How long an approval-link elicitation may stay open, in seconds.
const LINK_WAIT_SECONDS: u64 = TASK_WAIT_SECONDS;
/// Most tasks of one session running at once (each holds a broker connection while it waits).
const MAX_RUNNING_TASKS: usize = 32;
/// Pause between two rounds of a task's wait, should a round return early.
const TASK_ROUND_PAUSE: Duration = Duration::from_secs(1);
/// How long a finished task's result is kept for `tasks/get`, in milliseconds.
const TASK_TTL_MS: u64 = 30 * 60 * 1000;

/// What a pending reply says about waiting: for the model, what to call next; for the human,
/// the one command that approves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct WaitingOutput {
    /// The command the user runs in their own terminal to approve: `keyveil approve N`.
    pub approve_command: String,
    /// The tool to call next: the same tool again (`run`/`start`, same arguments) or
    /// `access_status` (after `request_access`).
    pub next_tool: String,
    /// The arguments of that call: `{"request_id": N}` for `access_status`; absent when they
    /// are the same arguments as this call's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_arguments: Option<NextArguments>,
    /// `wait_seconds` to pass on that call: it returns as soon as the user approves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u64>,
    /// Seconds between `access_status` polls, if you poll instead.
    pub poll_seconds: u64,
    /// Whether the user's MCP client was sent a link to keyveil's approval page (URL
    /// elicitation).
    pub approval_link_sent: bool,
    /// Whether the request waits for keyveil's locked vault: then only `approve_command` in the
    /// user's terminal can approve it (the approval page cannot), and no page link is offered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub vault_locked: bool,
}

/// The arguments of the next call when they differ from this call's (`access_status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub(crate) struct NextArguments {
    /// The request to ask about.
    pub request_id: u64,
}

/// The waiting instructions of a pending `tool` call (`run`, `start` or `request_access`) for
/// request `id`; `link_sent`: the client was offered the approval page link.
pub(crate) fn waiting(tool: &str, id: u64, link_sent: bool) -> WaitingOutput {
    let again = tool == "run" || tool == "start";
    WaitingOutput {
        approve_command: format!("keyveil approve {id}"),
        next_tool: if again { tool } else { "access_status" }.to_owned(),
        next_arguments: (!again).then_some(NextArguments { request_id: id }),
        wait_seconds: again.then_some(MAX_WAIT_SECONDS),
        poll_seconds: POLL_SECONDS,
        approval_link_sent: link_sent,
        vault_locked: false,
    }
}

/// The text of a pending `run` or `start` that waits for the locked vault: only
/// `keyveil approve ID` at the human's terminal can approve it (one passphrase entry unlocks the
/// vault and approves); the approval page cannot act while the vault is locked, so it is not
/// offered.
pub(crate) fn locked_text(tool: &str, id: u64) -> String {
    format!(
        "Request #{id} waits for the user's approval, and keyveil's vault is locked. Ask the user to run `keyveil approve {id}` in their own terminal: one passphrase entry unlocks the vault and approves (the approval page cannot approve while the vault is locked). Never ask for the passphrase in the chat. Then call {tool} again with exactly the same arguments and \"wait_seconds\": {MAX_WAIT_SECONDS}. If the user denies, do not ask again in a loop."
    )
}

/// The text of a pending reply, for the model (which passes the human's part on).
pub(crate) fn pending_text(tool: &str, id: u64, link_sent: bool) -> String {
    let w = waiting(tool, id, link_sent);
    let human = if link_sent {
        format!(
            "The user was shown a link to keyveil's approval page by their MCP client; they can approve there, or with `{}` in their own terminal.",
            w.approve_command
        )
    } else {
        format!(
            "Ask the user to run `{}` in their own terminal (or `keyveil approve --web` for keyveil's local approval page).",
            w.approve_command
        )
    };
    let next = if tool == "request_access" {
        format!(
            "Then call access_status with {{\"request_id\": {id}}} every {POLL_SECONDS} s until it says approved, and call run with the command."
        )
    } else {
        format!(
            "To keep waiting, call {tool} again with exactly the same arguments and \"wait_seconds\": {MAX_WAIT_SECONDS}: it returns as soon as the user approves (pending_approval again after {MAX_WAIT_SECONDS} s; the request stays open {} minutes). Or poll access_status with {{\"request_id\": {id}}} every {POLL_SECONDS} s.",
            TASK_WAIT_SECONDS / 60
        )
    };
    format!(
        "Request #{id} waits for the user's approval. {human} Approving needs their vault passphrase or TOTP code: never ask for it in the chat. {next} If the user denies, do not ask again in a loop."
    )
}

/// The fixed text of the approval-link elicitation: no agent-chosen string, no value.
pub(crate) fn link_message(id: u64) -> String {
    format!(
        "keyveil request #{id} waits for your approval. This opens keyveil's approval page on your own computer (127.0.0.1), where you check the command and approve it with your vault passphrase or TOTP code; or run `keyveil approve {id}` in a terminal. The page never asks for anything else."
    )
}

/// Whether `url` has the shape of keyveil's approval-page login link
/// (`http://127.0.0.1:PORT/login?token=HEX`) and nothing else: no user, no fragment, no other
/// parameter. An elicitation carries nothing but that.
pub(crate) fn is_approval_link(url: &url::Url) -> bool {
    url.scheme() == "http"
        && url.host_str() == Some("127.0.0.1")
        && url.port().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/login"
        && url.fragment().is_none()
        && {
            let pairs: Vec<_> = url.query_pairs().collect();
            matches!(pairs.as_slice(), [(k, v)] if k == "token" && v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
        }
}

/// The server's waiting state: request ids whose link was offered, and its tasks.
#[derive(Debug, Clone, Default)]
pub(crate) struct Waiting {
    offered: Arc<Mutex<HashSet<u64>>>,
    tasks: Arc<TaskManagerHandle>,
}

/// [`TaskManager`] with a `Debug` the server's derive needs.
#[derive(Default)]
struct TaskManagerHandle(TaskManager);

impl std::fmt::Debug for TaskManagerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TaskManager")
    }
}

impl Waiting {
    /// Marks `id` as offered; `false` if it already was.
    fn first_offer(&self, id: u64) -> bool {
        self.offered
            .lock()
            .map(|mut s| s.insert(id))
            .unwrap_or(false)
    }

    /// Whether the link for `id` was offered.
    pub(crate) fn link_sent(&self, id: u64) -> bool {
        self.offered
            .lock()
            .map(|s| s.contains(&id))
            .unwrap_or(false)
    }

    /// The task manager (`tasks/get`, `tasks/update`, `tasks/cancel`).
    pub(crate) fn tasks(&self) -> &TaskManager {
        &self.tasks.0
    }
}

/// Whether the client of this request declared URL-mode elicitation.
fn url_mode(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .and_then(|c| c.elicitation)
        .is_some_and(|e| e.url.is_some())
}

/// Whether this request's protocol revision lets the server send requests of its own.
fn server_requests_allowed(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.protocol_version()
        .is_none_or(|v| v < ProtocolVersion::V_2026_07_28)
}

/// Whether the client of this request declared the tasks extension.
pub(crate) fn tasks_declared(ctx: &RequestContext<RoleServer>) -> bool {
    ctx.client_capabilities()
        .is_some_and(|c| c.supports_tasks())
}

impl KeyveilMcp {
    /// A fresh one-time approval-page link from the broker, if it has the expected shape.
    async fn approval_link(&self) -> Option<url::Url> {
        let d = self.call_op(keyveil_proto::op::WebUrl).await.ok()?;
        let url = url::Url::parse(&d.url).ok()?;
        if is_approval_link(&url) {
            Some(url)
        } else {
            tracing::warn!("the broker's approval link has an unexpected shape; not offered");
            None
        }
    }

    /// Called when request `id` is first seen pending in a call: offers the approval page link
    /// by URL elicitation, once per request, to a client that declared URL mode on a protocol
    /// revision that allows server requests. In the background: the call goes on waiting, and
    /// the human's answer to the elicitation changes nothing (approving needs the factor).
    pub(super) async fn on_pending(&self, id: u64, ctx: &RequestContext<RoleServer>) {
        if let Some(task) = ctx.extensions.get::<TaskContext>().cloned() {
            self.task_pending(id, ctx, task).await;
            return;
        }
        if !url_mode(ctx) || !server_requests_allowed(ctx) || self.waiting.link_sent(id) {
            return;
        }
        let Some(url) = self.approval_link().await else {
            return;
        };
        if !self.waiting.first_offer(id) {
            return;
        }
        let peer = ctx.peer.clone();
        tokio::spawn(async move {
            let answer = peer
                .elicit_url_with_timeout(
                    link_message(id),
                    url,
                    format!("keyveil-approve-{id}"),
                    Some(Duration::from_secs(LINK_WAIT_SECONDS)),
                )
                .await;
            tracing::debug!(request_id = id, ?answer, "approval link elicitation ended");
        });
    }

    /// Inside a task: the status message says what the task waits for, and a client that does
    /// URL elicitation gets the approval link as task input (`input_required`), once.
    async fn task_pending(&self, id: u64, ctx: &RequestContext<RoleServer>, task: TaskContext) {
        task.set_status_message(format!(
            "waiting for the user to approve request #{id}: `keyveil approve {id}` in their terminal"
        ));
        if !url_mode(ctx) || self.waiting.link_sent(id) {
            return;
        }
        let Some(url) = self.approval_link().await else {
            return;
        };
        if !self.waiting.first_offer(id) {
            return;
        }
        let request = ElicitRequest::new(ElicitRequestParams::UrlElicitationParams {
            meta: None,
            message: link_message(id),
            url: url.to_string(),
            elicitation_id: format!("keyveil-approve-{id}"),
        });
        // The answer changes nothing (approving needs the factor): not awaited.
        tokio::spawn(async move {
            let answer = task
                .request_input(format!("approve-{id}"), InputRequest::Elicitation(request))
                .await;
            tracing::debug!(
                request_id = id,
                ok = answer.is_ok(),
                "approval link answered"
            );
        });
    }

    /// `tools/call` of `run` or `start` as a task, for a client that declared the tasks
    /// extension; `None` for every other call (handled as usual). Invalid arguments are
    /// answered at once, not as a task.
    pub(super) fn call_as_task(
        &self,
        name: &str,
        args: &Value,
        ctx: &RequestContext<RoleServer>,
    ) -> Option<Result<rmcp::model::Task, CallToolResult>> {
        // A call that asked not to wait (`wait_seconds: 0`) gets its answer at once, as a plain
        // result: a task exists to wait, and a client that polls by itself (the MCP Inspector
        // declares the extension by default) expects the pending result.
        let no_wait = args.get("wait_seconds").and_then(Value::as_u64) == Some(0);
        if !(name == "run" || name == "start") || !tasks_declared(ctx) || no_wait {
            return None;
        }
        let server = self.clone();
        let mut tctx = ctx.clone();
        // The task outlives the tools/call request: its own cancellation, and no progress
        // notifications tied to a request that has been answered.
        tctx.ct = tokio_util::sync::CancellationToken::new();
        tctx.meta.remove("progressToken");
        let call = match name {
            "run" => parse::<RunArgs>(name, args.clone()).map(TaskCall::Run),
            _ => parse::<StartArgs>(name, args.clone()).map(TaskCall::Start),
        };
        let call = match call {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        if self.waiting.tasks().running_task_count() >= MAX_RUNNING_TASKS {
            return Some(Err(super::tool_error(format!(
                "{MAX_RUNNING_TASKS} keyveil tasks of this session are still running; wait for one to end (tasks/get) or cancel one (tasks/cancel).",
            ))));
        }
        let options = TaskOptions::new()
            .with_ttl_ms(TASK_TTL_MS)
            .with_poll_interval_ms(2_000)
            .with_status_message(format!("{name}: asking keyveil's broker"));
        let task = self.waiting.tasks().spawn(options, move |task| {
            let mut tctx = tctx;
            tctx.extensions.insert(task.clone());
            Box::pin(async move {
                let ct = tctx.ct.clone();
                tokio::select! {
                    r = server.task_body(call, &tctx) => r,
                    _ = task.cancelled() => {
                        ct.cancel();
                        Err(TaskExit::Cancelled)
                    }
                }
            })
        });
        Some(Ok(task))
    }

    /// The task: the call again and again (each waiting up to [`MAX_WAIT_SECONDS`]) while its
    /// request is pending, for at most [`TASK_WAIT_SECONDS`] (the approval link is offered as
    /// task input by [`KeyveilMcp::on_pending`]).
    async fn task_body(
        &self,
        call: TaskCall,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, TaskExit> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(TASK_WAIT_SECONDS);
        loop {
            let result = match call.clone() {
                TaskCall::Run(mut a) => {
                    a.wait_seconds = Some(MAX_WAIT_SECONDS);
                    self.run(a, ctx).await
                }
                TaskCall::Start(mut a) => {
                    a.wait_seconds = Some(MAX_WAIT_SECONDS);
                    self.start(a, ctx).await
                }
            };
            if pending_request(&result).is_none() {
                return Ok(result);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(result);
            }
            tokio::time::sleep(TASK_ROUND_PAUSE).await;
        }
    }
}

impl KeyveilMcp {
    /// Whether a `tools/call` of `name` answers a pending approval with the approval link as
    /// an `InputRequiredResult` (multi round-trip, 2026-07-28): the client declared URL
    /// elicitation on 2026-07-28 or later, the tool is `run` or `start`, and this is not the
    /// retry of such a result (`retry`: it carries `inputResponses` or `requestState`). Such a
    /// call is made with `wait_seconds` 0, so the link reaches the human at once; the retry
    /// waits as the model asked.
    pub(super) fn link_round_trip(
        &self,
        name: &str,
        retry: bool,
        ctx: &RequestContext<RoleServer>,
    ) -> bool {
        (name == "run" || name == "start")
            && !retry
            && url_mode(ctx)
            && !server_requests_allowed(ctx)
    }

    /// The `InputRequiredResult` for a pending `result` (of a call for which
    /// [`Self::link_round_trip`] held): the approval link as `inputRequests["approve-N"]`, once
    /// per request; `None` when the result is not pending, the link was offered already, or
    /// none could be made (then the plain pending result goes out).
    pub(super) async fn link_input_required(
        &self,
        result: &CallToolResult,
    ) -> Option<rmcp::model::InputRequiredResult> {
        let id = pending_request(result)?;
        if self.waiting.link_sent(id) || waits_for_locked_vault(result) {
            return None;
        }
        let url = self.approval_link().await?;
        if !self.waiting.first_offer(id) {
            return None;
        }
        let request = ElicitRequest::new(ElicitRequestParams::UrlElicitationParams {
            meta: None,
            message: link_message(id),
            url: url.to_string(),
            elicitation_id: format!("keyveil-approve-{id}"),
        });
        let mut requests = rmcp::model::InputRequests::new();
        requests.insert(format!("approve-{id}"), InputRequest::Elicitation(request));
        Some(rmcp::model::InputRequiredResult::new(
            Some(requests),
            Some(format!("approve-{id}")),
        ))
    }
}

/// Whether a pending `run`/`start` result waits for the locked vault (its `waiting.vault_locked`).
fn waits_for_locked_vault(result: &CallToolResult) -> bool {
    result
        .structured_content
        .as_ref()
        .and_then(|s| s.get("waiting"))
        .and_then(|w| w.get("vault_locked"))
        == Some(&json!(true))
}

/// The request a `run`/`start` result is pending on, if it is `pending_approval`.
pub(crate) fn pending_request(result: &CallToolResult) -> Option<u64> {
    result
        .structured_content
        .as_ref()
        .filter(|s| s.get("status") == Some(&json!("pending_approval")))
        .and_then(|s| s.get("request_id"))
        .and_then(Value::as_u64)
}

/// The call a task runs.
#[derive(Debug, Clone)]
enum TaskCall {
    Run(RunArgs),
    Start(StartArgs),
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_locked_vault_is_named_and_the_page_is_not_offered() {
        let t = locked_text("run", 7);
        assert!(t.contains("keyveil approve 7"), "{t}");
        assert!(t.contains("vault is locked"), "{t}");
        assert!(!t.contains("approve --web"), "{t}");
        assert!(t.contains("call run again"), "{t}");
    }

    #[test]
    fn pending_text_names_the_next_call_and_the_approve_command() {
        let t = pending_text("run", 12, false);
        assert!(t.contains("`keyveil approve 12`"), "{t}");
        assert!(
            t.contains("call run again with exactly the same arguments"),
            "{t}"
        );
        assert!(t.contains("\"wait_seconds\": 50"), "{t}");
        assert!(t.contains("access_status with {\"request_id\": 12}"), "{t}");
        assert!(t.contains("never ask for it in the chat"), "{t}");
        let w = waiting("request_access", 3, true);
        assert_eq!(w.next_tool, "access_status");
        assert_eq!(w.next_arguments, Some(NextArguments { request_id: 3 }));
        assert_eq!(w.wait_seconds, None);
        assert!(pending_text("start", 4, true).contains("approval page"));
    }

    #[test]
    fn only_the_login_link_shape_counts_as_an_approval_link() {
        let token = "ab".repeat(32);
        let ok = url::Url::parse(&format!("http://127.0.0.1:4242/login?token={token}")).unwrap();
        assert!(is_approval_link(&ok));
        for bad in [
            format!("https://127.0.0.1:4242/login?token={token}"),
            format!("http://evil.example:4242/login?token={token}"),
            format!("http://127.0.0.1/login?token={token}"),
            format!("http://u:p@127.0.0.1:4242/login?token={token}"),
            format!("http://127.0.0.1:4242/approve?token={token}"),
            format!("http://127.0.0.1:4242/login?token={token}&factor=x"),
            format!("http://127.0.0.1:4242/login?token={token}#x"),
            "http://127.0.0.1:4242/login?token=zz".to_owned(),
        ] {
            assert!(!is_approval_link(&url::Url::parse(&bad).unwrap()), "{bad}");
        }
    }

    #[test]
    fn the_link_message_holds_no_agent_text() {
        let m = link_message(9);
        assert!(m.contains("#9") && m.contains("keyveil approve 9"));
        assert!(m.is_ascii());
    }
}
