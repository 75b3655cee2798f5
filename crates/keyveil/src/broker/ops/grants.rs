//! Grant operations: listing grants and revoking them (with their runs).

use super::lifecycle::RunEnds;
use super::usage;
use crate::broker::Broker;
use crate::broker::access;
use crate::broker::state::{OpError, OpResult, RunsStopped};
use jiff::Timestamp;
use keyveil_proto::ErrorCode;
use keyveil_proto::op;

pub(super) fn grants(broker: &Broker, client: Option<&str>) -> op::GrantList {
    let mut inner = broker.lock();
    let now = Timestamp::now();
    // A grant's client name, argv, cwd and pinned paths are its request's, shown as its card
    // showed them.
    // Only where the request's strings may hold a value (`AccessReq::masked`).
    // Elsewhere only the values keyveil made at random (`card_redact.rs`).
    let all = inner.card_matcher(true);
    let made = inner.card_matcher(false);
    let shown = |masked: bool, s: &str| match if masked { &all } else { &made } {
        Some(r) => crate::broker::card_redact::redact_str(r, s),
        None => s.to_owned(),
    };
    let grants = inner
        .grants()
        .iter()
        .filter(|g| {
            // Listed while usable, or while a run started under it is still live (a used-up
            // once-grant can still be revoked to kill its run).
            let running = inner.runs().grant_has_runs(g.id());
            (g.live(now) || (running && !g.revoked())) && client.is_none_or(|c| g.client() == c)
        })
        .map(|g| (g, |s: &str| shown(g.masked(), s)))
        .map(|(g, shown)| op::GrantInfo {
            id: g.id().to_owned(),
            request_id: g.request_id(),
            // The requester's own name for itself, as its card showed it.
            client: shown(g.client()),
            environment: g.environment().to_owned(),
            variables: g.variables().to_owned(),
            argv: g
                .argv()
                .as_ref()
                .map(|a| a.iter().map(|w| shown(w)).collect()),
            prefix: g.prefix(),
            cwd: shown(g.cwd()),
            subdirs: g.subdirs(),
            pass_env: g.pass_env().to_owned(),
            // Pinned paths come from the argv too (a program under a directory a granted
            // child named after a value).
            executable: g.executable().as_ref().map(|p| {
                let mut i = access::file_pin_info(p);
                i.path = shown(&i.path);
                i
            }),
            inputs: g
                .inputs()
                .iter()
                .map(|p| {
                    let mut i = access::input_pin_info(p);
                    i.path = shown(&i.path);
                    i.detail = i.detail.as_deref().map(&shown);
                    i
                })
                .collect(),
            created_at: g.created_at(),
            expires_at: g.expires_at(),
            uses_left: g.uses_left(),
            runs: g.runs(),
            mount_scope: g.mount_scope(),
            revoked: g.revoked(),
            dynamic: inner.dynamic().describe(g.id()),
            openbao_waits: inner.dynamic().cg_waits(g.id()),
        })
        .collect();
    op::GrantList { grants }
}

pub(super) async fn revoke(
    broker: &Broker,
    grant_id: Option<String>,
    all: bool,
    client: Option<&str>,
) -> OpResult<op::Revoked> {
    let (n, ended, ids, runs) = revoke_now(broker, grant_id, all, client)?;
    broker.notify();
    // Answer once the runs are gone, saying so: the CLI and MCP report what was stopped.
    let stopped = RunsStopped::wait(runs).await;
    Ok(op::Revoked {
        revoked: true,
        count: n,
        already_ended: ended,
        grant_ids: ids,
        stopped: stopped.reply(),
    })
}

/// The revocation itself, under the lock: `(revoked, already ended, ids, their runs' ends)`.
pub(super) fn revoke_now(
    broker: &Broker,
    grant_id: Option<String>,
    all: bool,
    client: Option<&str>,
) -> OpResult<(u32, u32, Vec<String>, RunEnds)> {
    let mut inner = broker.lock();
    let ids: Vec<String> = match (grant_id, all) {
        (Some(id), _) => {
            let g = inner.grants().get(&id).ok_or_else(|| {
                OpError::new(ErrorCode::NotFound, format!("no grant {id}"))
                    .hint("list grants with `keyveil grants`")
            })?;
            if client.is_some_and(|c| g.client() != c) {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("no grant {id} for this client"),
                ));
            }
            vec![id]
        }
        (None, true) => inner
            .grants()
            .iter()
            .filter(|g| !g.revoked() && client.is_none_or(|c| g.client() == c))
            .map(|g| g.id().to_owned())
            .collect(),
        (None, false) => return Err(usage("name a grant id, or use --all")),
    };
    let now = Timestamp::now();
    let (mut n, mut ended) = (0, 0);
    for id in &ids {
        // A grant with no use left or past its expiry covers no new run; revoking it still
        // stops whatever runs under it.
        let had_ended = inner
            .grants()
            .get(id)
            .is_some_and(|g| !g.revoked() && (g.uses_left() == Some(0) || g.expires_at() <= now));
        if inner.revoke(id, "revoked by request") {
            n += 1;
            if had_ended {
                ended += 1;
            }
        }
    }
    let runs = inner.runs().ended_of(&ids);
    Ok((n, ended, ids, runs))
}
