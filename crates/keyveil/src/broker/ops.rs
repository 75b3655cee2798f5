//! The broker's operations, one function per request kind.

use std::sync::Arc;

use serde_json::Value;

use super::factor_ops::{self, Proof};
use super::state::{OpError, OpResult};
use super::{Broker, access};
use crate::factor_proof;
use keyveil_proto::op::{self, Operation};
use keyveil_proto::{Bootstrap, ErrorCode, Reply, Request};

mod audit;
mod envs;
mod grants;
mod lifecycle;
mod project;
mod vars;
use audit::{audit, audit_verify};
use envs::{env_create, env_list, env_reveal};
use grants::{grants, revoke};
pub(crate) use lifecycle::stop_everything;
use lifecycle::{init, lock, status, unlock};
pub(crate) use lifecycle::{lock as lock_vault, open_with as open_vault};
use vars::var_declare;

fn usage(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Usage, msg)
}

fn check_name(kind: &str, name: &str) -> OpResult<()> {
    if keyveil_vault::is_valid_name(name) {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid {kind} name {:?}: names follow environment-variable rules [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)",
            keyveil_proto::display::clip(name, 80)
        )))
    }
}

fn check_env_name(name: &str) -> OpResult<()> {
    // Environment names: the same rules, plus '-' for names like `my-app`.
    let ok = keyveil_vault::is_valid_new_environment_name(name);
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid environment name {:?}: use letters, digits, '_' and '-', starting with a letter (at most 64)",
            keyveil_proto::display::clip(name, 80)
        )))
    }
}

/// What a broker started by the CLI does before it serves anyone: create or unlock the vault
/// with the passphrase its parent wrote on its stdin (see [`Bootstrap`]).
///
/// Errors: those of `init` and `unlock` (a vault already exists, wrong passphrase, I/O).
pub(crate) async fn bootstrap(
    broker: &Arc<Broker>,
    b: Bootstrap,
) -> Result<op::Bootstrapped, OpError> {
    match b {
        Bootstrap::Init {
            passphrase,
            kdf_memory_kib,
            path,
            home,
        } => init(broker, passphrase, kdf_memory_kib, path, home).await,
        Bootstrap::Unlock { passphrase } => unlock(broker, passphrase).await,
        Bootstrap::Ci(c) => super::ci::start(broker, *c).await,
    }
}

/// [`dispatch`] of one operation with its reply typed, for the broker's own callers (the web
/// page's handlers); `Err` is the error reply to show.
pub(crate) async fn call<O: Operation>(broker: &Arc<Broker>, o: O) -> Result<O::Reply, Reply> {
    match dispatch(broker, o.into()).await {
        Reply::Ok { data } => serde_json::from_value(data).map_err(|e| {
            Reply::error(
                ErrorCode::Failed,
                format!("the broker's reply does not decode as its type: {e}"),
                None,
            )
        }),
        other => Err(other),
    }
}

/// [`dispatch_from`] for requests the broker makes itself (the web page): no socket peer.
pub(crate) async fn dispatch(broker: &Arc<Broker>, req: Request) -> Reply {
    dispatch_from(broker, req, None).await
}

/// Handles every request but `run`, `start`, a sweep watch or a streamed sweep, and the
/// approval page's links (`WebUrl`, `SetUrl`: `web::answer`), which `broker/mod.rs` routes on
/// their own paths.
///
/// `peer` is the process at the other end of the client's socket (`peer.rs`): what caps,
/// flags and the approval card rest on instead of the request's claimed client.
pub(crate) async fn dispatch_from(
    broker: &Arc<Broker>,
    req: Request,
    peer: Option<&super::peer::Peer>,
) -> Reply {
    if let Some(refused) = super::ci::gate(broker, &req) {
        return refused.reply();
    }
    // The one reply that may carry real hidden names: it is given only for the factor.
    let reveal = matches!(req, Request::EnvReveal(op::EnvReveal { .. }));
    // What a factor proof in this request binds: the request itself, byte for byte.
    if let Request::VarSet(op::VarSet {
        value: Some(_),
        factor: Some(_),
        ..
    }) = &req
    {
        return usage(
            "with a factor, a value travels sealed (`sealed_value`), never in plain text",
        )
        .reply();
    }
    let digest = req
        .factor()
        .map(|_| factor_proof::request_digest(&serde_json::to_value(&req).unwrap_or(Value::Null)));
    let answer = answer_request(broker, req, peer, digest).await;
    reply_of(broker, answer, !reveal)
}

/// The reply frame of an operation's answer: where a policy hides names, with aliases in
/// place of real names (see `state/names.rs`) unless `hide_names` is false (the one reply that may
/// carry real names, given only for the factor).
pub(crate) fn reply_of(broker: &Broker, answer: OpResult<Value>, hide_names: bool) -> Reply {
    match answer {
        Ok(mut v) => {
            if hide_names {
                broker.lock().names().hide_names_in(&mut v);
            }
            Reply::ok(v)
        }
        Err(e) => e.reply(),
    }
}

/// One request's operation, its reply as the JSON the reply frame carries. `digest` is what a
/// factor proof in the request binds ([`factor_proof::request_digest`] of the request).
async fn answer_request(
    broker: &Arc<Broker>,
    req: Request,
    peer: Option<&super::peer::Peer>,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<Value> {
    match req {
        Request::Status => answer(op::Status, Ok(status(broker))),
        Request::FactorChallenge(o) => {
            typed(&o).answer(factor_ops::challenge(broker, &o.client_nonce, &o.totp))
        }
        Request::Lock => answer(op::Lock, Ok(lock(broker).await)),
        Request::Shutdown => {
            broker.shutdown.cancel();
            answer(op::Shutdown, Ok(op::Stopping { stopping: true }))
        }
        Request::EnvList => answer(op::EnvList, env_list(broker)),
        Request::EnvShow(o) => {
            let t = typed(&o);
            t.answer(envs::env_show_versions(broker, &o.name, o.versions).await)
        }
        Request::EnvCreate(o) => {
            let t = typed(&o);
            t.answer(env_create(broker, &o.name, o.description))
        }
        Request::EnvRemove(o) => typed(&o).answer(envs::remove_request(broker, o, digest).await),
        Request::EnvReveal(o) => {
            let (t, op::EnvReveal { name, factor }) = (typed(&o), o);
            t.answer(env_reveal(broker, &name, Proof::from_request(factor, digest, false)).await)
        }
        Request::VarSet(o) => typed(&o).answer(vars::set_request(broker, o, digest).await),
        Request::VarGenerate(o) => {
            typed(&o).answer(vars::generate_request(broker, o, digest).await)
        }
        Request::VarUnset(o) => typed(&o).answer(vars::unset_request(broker, o, digest).await),
        Request::VarDeclare(o) => typed(&o).answer(var_declare_request(broker, o)),
        Request::RequestAccess(a) => {
            let t = typed(&a);
            let peer = peer
                .cloned()
                .unwrap_or_else(|| super::peer::Peer::of_pid(None));
            t.answer(access::request_access(broker, a, peer).await)
        }
        Request::AccessStatus(o) => typed(&o).answer(access::access_status(broker, o.request_id)),
        Request::Requests => answer(op::Requests, Ok(access::requests(broker))),
        Request::Approve(o) => typed(&o).answer(approve_request(broker, o, digest).await),
        Request::ApproveReveal(o) => {
            typed(&o).answer(approve_reveal_request(broker, o, digest).await)
        }
        Request::ApproveConfirm(o) => {
            let t = typed(&o);
            t.answer(super::held_approvals::confirm(
                broker,
                o.request_id,
                &o.ticket,
            ))
        }
        Request::FactorEnroll(o) => {
            let (t, op::FactorEnroll { factor }) = (typed(&o), o);
            t.answer(factor_ops::enroll(broker, Proof::from_request(factor, digest, false)).await)
        }
        Request::FactorConfirm(o) => typed(&o).answer(factor_ops::confirm(broker, &o.code)),
        Request::PolicyShow(o) => {
            typed(&o).answer(super::policy_ops::policy_show(broker, &o.environment))
        }
        Request::PolicySet(o) => typed(&o).answer(policy_set_request(broker, o, digest).await),
        Request::Deny(o) => {
            let (t, op::Deny { request_id, reason }) = (typed(&o), o);
            t.answer(access::deny(broker, request_id, reason))
        }
        Request::Grants(o) => typed(&o).answer(Ok(grants(broker, o.client.as_deref()))),
        Request::Revoke(o) => {
            let t = typed(&o);
            t.answer(revoke(broker, o.grant_id, o.all, o.client.as_deref()).await)
        }
        Request::Audit(o) => typed(&o).answer(audit(broker, o.limit)),
        Request::AuditVerify => answer(op::AuditVerify, audit_verify(broker)),
        Request::DynamicAdd(r) => {
            let t = typed(&r);
            t.answer(super::dynamic_ops::add(broker, r, digest).await)
        }
        Request::Sweep(r) => {
            let t = typed(&r);
            t.answer(super::sweep_ops::sweep(broker, r, digest).await)
        }
        Request::Run(_) => Err(usage("run is handled on its own path")),
        Request::Start(_) => Err(usage("start is handled on its own path")),
        Request::SweepWatch(_) => Err(usage("a sweep watch is handled on its own path")),
        Request::WebUrl | Request::SetUrl(_) => Err(usage(
            "the approval page's links are handled on their own path",
        )),
        Request::Logs(o) => typed(&o).answer(super::background::logs(
            broker,
            &o.run_id,
            o.from,
            o.max_bytes,
            o.client.as_deref(),
        )),
        Request::Stop(o) => {
            typed(&o).answer(super::background::stop(broker, &o.run_id, o.client.as_deref()).await)
        }
        Request::Mount(o) => typed(&o).answer(super::mounts::mount(broker, o)),
        Request::Unmount(o) => typed(&o).answer(super::mounts::unmount(broker, o)),
        Request::Mounts(o) => typed(&o).answer(Ok(super::mounts::list(broker))),
        Request::ProjectApprove(o) => typed(&o).answer(project::approve(broker, o, digest).await),
        Request::ProjectStatus => answer(op::ProjectStatus, project::status(broker)),
        Request::CiScan(o) => typed(&o).answer(super::ci::scan(broker, o).await),
        Request::CiFinish(o) => typed(&o).answer(super::ci::finish(broker, o).await),
    }
}

/// `var declare` as a request: the declaration's fields passed on to [`var_declare`].
fn var_declare_request(broker: &Arc<Broker>, o: op::VarDeclare) -> OpResult<op::Declared> {
    let op::VarDeclare {
        environment,
        name,
        description,
        generate,
        length,
    } = o;
    var_declare(broker, &environment, &name, description, generate, length)
}

/// `approve --reveal` as a request: its factor proof and its options, passed on to
/// [`super::held_approvals::reveal`].
async fn approve_reveal_request(
    broker: &Arc<Broker>,
    o: op::ApproveReveal,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<op::ApprovalHeld> {
    let op::ApproveReveal {
        request_id,
        card,
        factor,
        ttl_seconds,
        uses,
        any_command,
        prefix,
        subdirs,
    } = o;
    let options = access::ApproveOptions {
        ttl_seconds,
        uses,
        any_command,
        prefix,
        subdirs,
    };
    let proof = Proof::from_request(factor, digest, false);
    super::held_approvals::reveal(broker, request_id, &card, proof, options).await
}

/// `approve` as a request: its factor proof (or confirmation) and its options.
async fn approve_request(
    broker: &Arc<Broker>,
    o: op::Approve,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<op::Approved> {
    let op::Approve {
        request_id,
        card,
        factor,
        confirm,
        ttl_seconds,
        uses,
        any_command,
        prefix,
        subdirs,
    } = o;
    let options = access::ApproveOptions {
        ttl_seconds,
        uses,
        any_command,
        prefix,
        subdirs,
    };
    let proof = Proof::from_request(factor, digest, confirm);
    access::approve(broker, request_id, Some(&card), proof, options).await
}

/// `policy_set` as a request: its factor proof and its change.
async fn policy_set_request(
    broker: &Arc<Broker>,
    o: op::PolicySet,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<op::PolicyChanged> {
    let op::PolicySet {
        environment,
        factor,
        change,
    } = o;
    let proof = Proof::from_request(factor, digest, false);
    super::policy_ops::policy_set(broker, &environment, proof, change).await
}

/// The reply type of an operation, taken from the operation before its fields are moved out:
/// the dispatcher answers each operation with its own [`Operation::Reply`] (the compiler
/// checks it; `keyveil_proto::op`).
pub(crate) struct Typed<O>(std::marker::PhantomData<O>);

/// [`Typed`] of `o`.
pub(crate) fn typed<O: Operation>(_: &O) -> Typed<O> {
    Typed(std::marker::PhantomData)
}

impl<O: Operation> Typed<O> {
    /// The operation's reply as the JSON the reply frame carries.
    pub(crate) fn answer(self, r: OpResult<O::Reply>) -> OpResult<Value> {
        r.and_then(|reply| {
            serde_json::to_value(reply).map_err(|e| {
                OpError::new(ErrorCode::Failed, format!("cannot encode the reply: {e}"))
            })
        })
    }
}

/// [`Typed::answer`] for an operation without fields.
pub(crate) fn answer<O: Operation>(o: O, r: OpResult<O::Reply>) -> OpResult<Value> {
    typed(&o).answer(r)
}
