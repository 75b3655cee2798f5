//! The run tools: `run` (ask, wait for approval, run, redacted output), and `start`, `logs`,
//! `stop` for background runs.

use super::tools;
use super::tools::*;
use super::{
    DEFAULT_RUN_TIMEOUT_SECONDS, DEFAULT_WAIT_SECONDS, KeyveilMcp, MAX_RUN_TIMEOUT_SECONDS,
    MAX_STDIN_BYTES, MAX_WAIT_SECONDS, OUTPUT_CAP_BYTES, RUN_SLACK, broker_error,
    broker_unreachable, structured, tool_error, waiting,
};
use crate::client::{Connection, Event};
use anyhow::Result;
use keyveil_proto::op;
use keyveil_proto::{OutputMode, Reply, Request, RunRequest, RunResult};
use rmcp::RoleServer;
use rmcp::model::{CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use serde_json::Value;
use std::time::Duration;

/// How a run exchange ended.
pub(super) enum RunEnd {
    /// A `start` was spawned.
    Ok(Value),
    Done(RunResult),
    /// The request waits for approval; `true` when it waits for the locked vault.
    Pending(u64, bool),
    Failed(CallToolResult),
}

pub(super) fn completed(r: RunResult) -> RunOutput {
    RunOutput {
        status: RunStatus::Completed,
        exit_code: Some(r.exit_code),
        signal: r.signal,
        stdout: Some(r.stdout),
        stderr: Some(r.stderr),
        redactions: Some(r.redactions),
        truncated: Some(r.truncated),
        timed_out: Some(r.timed_out),
        revoked: Some(r.revoked),
        run_id: Some(r.run_id),
        grant_id: Some(r.grant_id),
        duration_ms: Some(r.duration_ms),
        request_id: None,
        hint: None,
        waiting: None,
        write_leaks: r
            .write_leaks
            .into_iter()
            .map(|l| tools::WriteLeakOutput {
                variable: l.variable,
                path: l.path,
                form: l.form,
                action: l.action,
            })
            .collect(),
    }
}

impl KeyveilMcp {
    pub(super) async fn run(&self, a: RunArgs, ctx: &RequestContext<RoleServer>) -> CallToolResult {
        if a.command.is_empty() || a.command.first().is_some_and(|c| c.trim().is_empty()) {
            return tool_error(
                "The command is empty: give argv as a list, e.g. [\"npm\", \"test\"] or [\"sh\", \"-c\", \"echo $NAME\"].",
            );
        }
        if a.environment.trim().is_empty() {
            return tool_error(
                "`environment` is empty: name one of the environments list_environments shows.",
            );
        }
        if a.stdin.as_ref().is_some_and(|s| s.len() > MAX_STDIN_BYTES) {
            return tool_error(format!(
                "stdin is over {} KiB; write large input to a file in the working directory and pass its path instead.",
                MAX_STDIN_BYTES / 1024
            ));
        }
        let timeout = a.timeout_seconds.unwrap_or(DEFAULT_RUN_TIMEOUT_SECONDS);
        if !(1..=MAX_RUN_TIMEOUT_SECONDS).contains(&timeout) {
            return tool_error(format!(
                "timeout_seconds must be between 1 and {MAX_RUN_TIMEOUT_SECONDS}, got {timeout}."
            ));
        }
        let wait = a
            .wait_seconds
            .unwrap_or(DEFAULT_WAIT_SECONDS)
            .min(MAX_WAIT_SECONDS);
        let req = Request::Run(RunRequest {
            pass_env: a.pass_env.unwrap_or_default(),
            client: self.client(ctx),
            environment: a.environment,
            variables: a.variables,
            argv: a.command,
            cwd: self.resolve_cwd(a.cwd.as_deref()),
            env: self.env.clone(),
            stdin: a.stdin,
            timeout_seconds: Some(timeout),
            reason: a.reason,
            ttl_seconds: None,
            wait_seconds: wait,
            output: OutputMode::Collect {
                cap_bytes: OUTPUT_CAP_BYTES,
            },
        });
        let deadline = Duration::from_secs(wait + timeout) + RUN_SLACK;
        let exchange = self.run_exchange(&req, ctx);
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, exchange) => r,
            // The client cancelled the call: dropping the exchange closes the broker
            // connection, and the broker ends the wait or kills the run.
            _ = ctx.ct.cancelled() => {
                return tool_error("The call was cancelled; if a command was running, keyveil stopped it.");
            }
        };
        match outcome {
            Ok(Ok(RunEnd::Done(r))) => {
                let o = completed(r);
                let text = render_run(&o);
                structured(&o, text)
            }
            Ok(Ok(RunEnd::Pending(id, locked))) => {
                let sent = self.waiting.link_sent(id);
                let o = RunOutput {
                    status: RunStatus::PendingApproval,
                    request_id: Some(id),
                    hint: Some(if locked {
                        waiting::locked_text("run", id)
                    } else {
                        waiting::pending_text("run", id, sent)
                    }),
                    waiting: Some(waiting::WaitingOutput {
                        vault_locked: locked,
                        ..waiting::waiting("run", id, sent)
                    }),
                    ..RunOutput::default()
                };
                let text = render_run(&o);
                structured(&o, text)
            }
            Ok(Ok(RunEnd::Failed(e))) => e,
            Ok(Ok(RunEnd::Ok(_))) => tool_error(
                "keyveil's broker answered a run with an unexpected reply (version mismatch?).\nhint: ask the user to run `keyveil daemon stop`; the next call starts a fresh broker",
            ),
            Ok(Err(e)) => broker_unreachable(&e),
            Err(_) => tool_error(format!(
                "keyveil did not answer within {} s; the command may still be running.\nhint: check `keyveil status` and `keyveil grants` in a terminal",
                deadline.as_secs()
            )),
        }
    }

    /// Sends a run request and reads replies until the final one.
    pub(super) async fn run_exchange(
        &self,
        req: &Request,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<RunEnd> {
        let mut conn = Connection::open(&self.paths).await?;
        conn.send(req).await?;
        let progress = ctx.meta.get_progress_token();
        let mut step = 0.0;
        let mut offered = false;
        loop {
            let Some(ev) = conn.next().await? else {
                anyhow::bail!("the broker closed the connection before the run ended");
            };
            let reply = match ev {
                Event::Reply(r) => r,
                // Collect mode returns output in the final reply; stray frames are dropped.
                Event::Stdout(_) | Event::Stderr(_) => continue,
            };
            // No approval-page link for a request that waits for the locked vault: the page
            // cannot approve it (only `keyveil approve ID` at the terminal unlocks and approves).
            if let Reply::Pending {
                request_id,
                vault_locked: false,
                ..
            } = &reply
                && !offered
            {
                offered = true;
                self.on_pending(*request_id, ctx).await;
            }
            match reply {
                Reply::Pending {
                    request_id,
                    is_final: true,
                    vault_locked,
                    ..
                } => return Ok(RunEnd::Pending(request_id, vault_locked)),
                Reply::Pending { request_id, .. } => {
                    if let Some(token) = progress.clone() {
                        step += 1.0;
                        let mut p = ProgressNotificationParam::new(token, step);
                        p.message = Some(format!(
                            "waiting for the user to approve request #{request_id} (`keyveil approve {request_id}`)"
                        ));
                        let _ = ctx.peer.notify_progress(p).await;
                    }
                }
                Reply::Started { run_id, .. } => {
                    tracing::debug!(%run_id, "run started");
                    if let Some(token) = progress.clone() {
                        step += 1.0;
                        let mut p = ProgressNotificationParam::new(token, step);
                        p.message = Some(format!("approved; running ({run_id})"));
                        let _ = ctx.peer.notify_progress(p).await;
                    }
                }
                Reply::Exit(r) => return Ok(RunEnd::Done(r)),
                Reply::Error {
                    code,
                    message,
                    hint,
                } => {
                    return Ok(RunEnd::Failed(broker_error(
                        code,
                        &message,
                        hint.as_deref(),
                    )));
                }
                Reply::Ok { data } => return Ok(RunEnd::Ok(data)),
                // Only a sweep watch sends these, and never to a run.
                Reply::Sweep(_) | Reply::SweepProgress(_) => continue,
            }
        }
    }

    pub(super) async fn start(
        &self,
        a: StartArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        if a.command.is_empty() || a.command.first().is_some_and(|c| c.trim().is_empty()) {
            return tool_error(
                "The command is empty: give argv as a list, e.g. [\"npm\", \"run\", \"dev\"].",
            );
        }
        if let Some(t) = a.timeout_seconds
            && !(1..=86_400).contains(&t)
        {
            return tool_error(format!(
                "timeout_seconds must be between 1 and 86400, got {t}."
            ));
        }
        let wait = a
            .wait_seconds
            .unwrap_or(DEFAULT_WAIT_SECONDS)
            .min(MAX_WAIT_SECONDS);
        let req = Request::Start(RunRequest {
            pass_env: a.pass_env.unwrap_or_default(),
            client: self.client(ctx),
            environment: a.environment,
            variables: a.variables,
            argv: a.command,
            cwd: self.resolve_cwd(a.cwd.as_deref()),
            env: self.env.clone(),
            stdin: None,
            timeout_seconds: a.timeout_seconds,
            reason: a.reason,
            ttl_seconds: None,
            wait_seconds: wait,
            output: OutputMode::Collect { cap_bytes: 0 },
        });
        let deadline = Duration::from_secs(wait) + RUN_SLACK;
        let outcome = tokio::select! {
            r = tokio::time::timeout(deadline, self.run_exchange(&req, ctx)) => r,
            _ = ctx.ct.cancelled() => {
                return tool_error("The call was cancelled before the command started.");
            }
        };
        match outcome {
            Ok(Ok(RunEnd::Ok(d))) => {
                let Ok(started) = serde_json::from_value::<op::Started>(d) else {
                    return tool_error(
                        "keyveil's broker answered start in a shape this server does not know.\nhint: ask the user to run `keyveil daemon stop` so that the next call starts a broker of the same version",
                    );
                };
                let o = StartOutput {
                    status: StartStatus::Started,
                    run_id: Some(started.run_id),
                    grant_id: Some(started.grant_id),
                    pid: Some(started.pid),
                    request_id: None,
                    waiting: None,
                    hint: Some(
                        "Read its output with logs (from 0, then the returned next); end it with stop.".to_owned(),
                    ),
                };
                let text = format!(
                    "started {} (pid {}). Read its output with logs; end it with stop.",
                    o.run_id.as_deref().unwrap_or("?"),
                    o.pid.unwrap_or(0)
                );
                structured(&o, text)
            }
            Ok(Ok(RunEnd::Pending(id, locked))) => {
                let sent = self.waiting.link_sent(id);
                let hint = format!(
                    "{} A background command lives as long as its grant: the user may approve with `keyveil approve {id} --ttl 8h`.",
                    if locked {
                        waiting::locked_text("start", id)
                    } else {
                        waiting::pending_text("start", id, sent)
                    }
                );
                let o = StartOutput {
                    status: StartStatus::PendingApproval,
                    request_id: Some(id),
                    hint: Some(hint.clone()),
                    waiting: Some(waiting::WaitingOutput {
                        vault_locked: locked,
                        ..waiting::waiting("start", id, sent)
                    }),
                    ..StartOutput::default()
                };
                structured(&o, format!("pending_approval: request #{id}. {hint}"))
            }
            Ok(Ok(RunEnd::Done(_))) => tool_error(
                "keyveil's broker answered start with a run result (version mismatch?).\nhint: ask the user to run `keyveil daemon stop`",
            ),
            Ok(Ok(RunEnd::Failed(e))) => e,
            Ok(Err(e)) => broker_unreachable(&e),
            Err(_) => tool_error(format!(
                "keyveil did not answer within {} s.\nhint: check `keyveil status` in a terminal",
                deadline.as_secs()
            )),
        }
    }

    pub(super) async fn logs(
        &self,
        a: LogsArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let req = op::Logs {
            run_id: a.run_id,
            from: a.from.unwrap_or(0),
            max_bytes: a.max_bytes,
            client: Some(self.client(ctx).scope_key()),
        };
        match self.call_op(req).await.map(LogsOutput::from) {
            Ok(o) => {
                let mut text = format!(
                    "{} {}, output {}..{}{}",
                    o.run_id,
                    if o.running {
                        "running".to_owned()
                    } else {
                        format!("ended with exit code {}", o.exit_code.unwrap_or(-1))
                    },
                    o.from,
                    o.next,
                    if o.dropped > 0 {
                        format!(" ({} bytes before it were dropped)", o.dropped)
                    } else {
                        String::new()
                    }
                );
                if o.output.is_empty() {
                    text.push_str("\n(no new output)");
                } else {
                    text.push('\n');
                    text.push_str(&o.output);
                }
                structured(&o, text)
            }
            Err(e) => e,
        }
    }

    pub(super) async fn stop(
        &self,
        a: StopArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let req = op::Stop {
            run_id: a.run_id,
            client: Some(self.client(ctx).scope_key()),
        };
        match self.call_op(req).await.map(StopOutput::from) {
            Ok(o) => {
                let text = match (o.stopped, o.exit_code) {
                    (true, Some(c)) => format!("stopped {} (exit code {c})", o.run_id),
                    (true, None) => format!("stopping {} (SIGKILL follows)", o.run_id),
                    (false, c) => format!(
                        "{} had already ended (exit code {})",
                        o.run_id,
                        c.unwrap_or(-1)
                    ),
                };
                structured(&o, text)
            }
            Err(e) => e,
        }
    }

    // -- broker plumbing -----------------------------------------------------------------------
}
