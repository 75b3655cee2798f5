//! The access and grant tools: `request_access`, `access_status`, `list_grants`, `revoke_grant`,
//! and `audit_log`.

use super::tools::*;
use super::{KeyveilMcp, approve_hint, structured, tool_error, waiting};
use keyveil_proto::AccessRequest;
use keyveil_proto::op;
use rmcp::RoleServer;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;

impl KeyveilMcp {
    pub(super) async fn request_access(
        &self,
        a: RequestAccessArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        if let Some(c) = &a.command
            && (c.is_empty() || c.first().is_some_and(|x| x.trim().is_empty()))
        {
            return tool_error(
                "The command is empty: give argv as a list, or leave `command` out to ask for any command.",
            );
        }
        let pass_env = a.pass_env.unwrap_or_default();
        let pass_values = self
            .env
            .iter()
            .filter(|(k, _)| pass_env.contains(k))
            .cloned()
            .collect();
        let req = AccessRequest {
            pass_env,
            pass_values,
            client: self.client(ctx),
            environment: a.environment,
            variables: a.variables,
            argv: a.command,
            cwd: self.resolve_cwd(a.cwd.as_deref()),
            ttl_seconds: a.ttl_seconds,
            reason: Some(a.reason),
        };
        match self.call_op(req).await.map(RequestAccessOutput::from) {
            Ok(mut o) => {
                let id = o.request_id;
                self.on_pending(id, ctx).await;
                let sent = self.waiting.link_sent(id);
                let text = waiting::pending_text("request_access", id, sent);
                o.hint = Some(text.clone());
                o.waiting = Some(waiting::waiting("request_access", id, sent));
                structured(&o, text)
            }
            Err(e) => e,
        }
    }

    pub(super) async fn access_status(&self, a: AccessStatusArgs) -> CallToolResult {
        let id = a.request_id;
        let req = op::AccessStatus { request_id: id };
        match self.call_op(req).await.map(AccessStatusOutput::from) {
            Ok(mut o) => {
                let text = match o.status.as_str() {
                    "pending" => {
                        o.hint = Some(approve_hint(id));
                        format!("Request #{id} is pending. {}", approve_hint(id))
                    }
                    "approved" => {
                        o.hint = None;
                        format!(
                            "Request #{id} is approved: grant {} until {}. Call run with the same arguments.",
                            o.grant_id.as_deref().unwrap_or("?"),
                            o.expires_at.as_deref().unwrap_or("?")
                        )
                    }
                    "denied" => {
                        let why = o
                            .reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default();
                        o.hint = Some(
                            "Do not ask again in a loop; ask the user what they want instead."
                                .to_owned(),
                        );
                        format!(
                            "The user denied request #{id}{why}. Do not ask again in a loop; ask the user what they want instead."
                        )
                    }
                    "expired" => format!(
                        "Request #{id} expired unanswered; call run again to make a new request."
                    ),
                    other => format!(
                        "Request #{id}: {other} (its grant is used up, expired or revoked)."
                    ),
                };
                structured(&o, text)
            }
            Err(e) => e,
        }
    }

    pub(super) async fn list_grants(&self, ctx: &RequestContext<RoleServer>) -> CallToolResult {
        let req = op::Grants {
            client: Some(self.client(ctx).scope_key()),
        };
        match self.call_op(req).await.map(ListGrantsOutput::from) {
            Ok(o) => structured(&o, render_grants(&o)),
            Err(e) => e,
        }
    }

    pub(super) async fn revoke_grant(
        &self,
        a: RevokeGrantArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> CallToolResult {
        let req = op::Revoke {
            grant_id: Some(a.grant_id.clone()),
            all: false,
            client: Some(self.client(ctx).scope_key()),
        };
        match self.call_op(req).await {
            Ok(d) => {
                let o = RevokeGrantOutput {
                    revoked: true,
                    grant_id: a.grant_id,
                };
                let runs = d.stopped.runs_stopped;
                let unconfirmed = d.stopped.runs_unconfirmed;
                let mut text = format!("Grant {} is revoked.", o.grant_id);
                if runs > 0 {
                    let killed = d.stopped.processes_killed;
                    text.push_str(&format!(
                        " {runs} live {} under it {} stopped ({killed} {} killed).",
                        if runs == 1 { "run" } else { "runs" },
                        if runs == 1 { "was" } else { "were" },
                        if killed == 1 { "process" } else { "processes" },
                    ));
                }
                if unconfirmed > 0 {
                    text.push_str(&format!(
                        " For {unconfirmed} of them the broker could not confirm that every process is gone."
                    ));
                }
                structured(&o, text)
            }
            Err(e) => e,
        }
    }

    pub(super) async fn audit_log(&self, a: AuditLogArgs) -> CallToolResult {
        let limit = a.limit.unwrap_or(20).clamp(1, 500);
        match self
            .call_op(op::Audit { limit: Some(limit) })
            .await
            .map(AuditLogOutput::from)
        {
            Ok(o) => structured(&o, render_audit(&o)),
            Err(e) => e,
        }
    }
}
