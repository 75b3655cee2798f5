//! The broker's operations, one function per request kind.

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use keyveil_vault::{Environment, KdfParams, Source, Variable, Vault};
use serde_json::{Value, json};

use super::Broker;
use super::access;
use super::factor_ops::{self, Proof};
use super::guard::{Need, guard_stored, recheck};
use super::state::{Inner, OpError, OpResult, RequestState, RunsStopped, unknown_env};
use crate::factor_proof;
use keyveil_proto::op::{self, Operation};
use keyveil_proto::{Bootstrap, Charset, ErrorCode, Passphrase, Reply, Request};

/// Longest value `generate` makes (characters).
const MAX_GENERATED: usize = 4096;
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
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
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

/// Handles every request but `run`.
///
/// `peer` is the process at the other end of the client's socket (`peer.rs`): what caps,
/// flags and the approval card rest on instead of the request's claimed client.
pub(crate) async fn dispatch_from(
    broker: &Arc<Broker>,
    req: Request,
    peer: Option<&super::peer::Peer>,
) -> Reply {
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
    let r = match req {
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
        Request::EnvShow(o) => typed(&o).answer(env_show(broker, &o.name)),
        Request::EnvCreate(o) => {
            let t = typed(&o);
            t.answer(env_create(broker, &o.name, o.description))
        }
        Request::EnvRemove(o) => {
            let (t, op::EnvRemove { name, factor }) = (typed(&o), o);
            let stored = broker.lock().stored_names(&name, None);
            t.answer(
                guard_stored(broker, &name, Need::stored(stored), factor, digest)
                    .await
                    .and_then(|ok| env_remove(broker, &name, ok.is_some())),
            )
        }
        Request::EnvReveal(o) => {
            let (t, op::EnvReveal { name, factor }) = (typed(&o), o);
            t.answer(env_reveal(broker, &name, Proof::from_request(factor, digest, false)).await)
        }
        Request::VarSet(o) => {
            let (
                t,
                op::VarSet {
                    environment,
                    name,
                    value,
                    sealed_value,
                    factor,
                },
            ) = (typed(&o), o);
            // The associated data of a sealed value is the name as the CLI gave it.
            let aad = format!("{environment}/{name}");
            let (name, need) = target_of_change(broker, &environment, &name);
            let given = name.clone();
            let probe = value.is_none() && sealed_value.is_none() && factor.is_none();
            t.answer(
                match guard_stored(broker, &environment, need, factor, digest).await {
                    Err(e) => Err(e),
                    // A value-free probe: nothing to store, and no factor needed.
                    Ok(_) if probe => Ok(op::VarSetReply::Probe {
                        probe: true,
                        needs_factor: false,
                    }),
                    Ok(verified) => {
                        match value_of_set(value, sealed_value, verified.as_ref(), aad.as_bytes()) {
                            Ok(value) => {
                                var_set(broker, &environment, &given, value, verified.is_some())
                                    .map(op::VarSetReply::Stored)
                            }
                            Err(e) => Err(e),
                        }
                    }
                },
            )
        }
        Request::VarGenerate(o) => {
            let (
                t,
                op::VarGenerate {
                    environment,
                    name,
                    length,
                    charset,
                    factor,
                },
            ) = (typed(&o), o);
            let (name, need) = target_of_change(broker, &environment, &name);
            t.answer(
                guard_stored(broker, &environment, need, factor, digest)
                    .await
                    .and_then(|ok| {
                        var_generate(
                            broker,
                            &environment,
                            &name,
                            length,
                            charset,
                            None,
                            ok.is_some(),
                        )
                    }),
            )
        }
        Request::VarUnset(o) => {
            let (
                t,
                op::VarUnset {
                    environment,
                    name,
                    factor,
                },
            ) = (typed(&o), o);
            let (name, need) = target_of_change(broker, &environment, &name);
            t.answer(
                guard_stored(broker, &environment, need, factor, digest)
                    .await
                    .and_then(|ok| var_unset(broker, &environment, &name, ok.is_some())),
            )
        }
        Request::VarDeclare(o) => {
            let (
                t,
                op::VarDeclare {
                    environment,
                    name,
                    description,
                    generate,
                    length,
                },
            ) = (typed(&o), o);
            t.answer(var_declare(
                broker,
                &environment,
                &name,
                description,
                generate,
                length,
            ))
        }
        Request::RequestAccess(a) => {
            let t = typed(&a);
            let peer = peer
                .cloned()
                .unwrap_or_else(|| super::peer::Peer::of_pid(None));
            t.answer(access::request_access(broker, a, peer).await)
        }
        Request::AccessStatus(o) => typed(&o).answer(access::access_status(broker, o.request_id)),
        Request::Requests => answer(op::Requests, Ok(access::requests(broker))),
        Request::Approve(o) => {
            let (
                t,
                op::Approve {
                    request_id,
                    card,
                    factor,
                    confirm,
                    ttl_seconds,
                    uses,
                    any_command,
                    prefix,
                    subdirs,
                },
            ) = (typed(&o), o);
            t.answer(
                access::approve(
                    broker,
                    request_id,
                    Some(&card),
                    Proof::from_request(factor, digest, confirm),
                    access::ApproveOptions {
                        ttl_seconds,
                        uses,
                        any_command,
                        prefix,
                        subdirs,
                    },
                )
                .await,
            )
        }
        Request::FactorEnroll(o) => {
            let (t, op::FactorEnroll { factor }) = (typed(&o), o);
            t.answer(factor_ops::enroll(broker, Proof::from_request(factor, digest, false)).await)
        }
        Request::FactorConfirm(o) => typed(&o).answer(factor_ops::confirm(broker, &o.code)),
        Request::PolicyShow(o) => typed(&o).answer(factor_ops::policy_show(broker, &o.environment)),
        Request::PolicySet(o) => {
            let (
                t,
                op::PolicySet {
                    environment,
                    factor,
                    change,
                },
            ) = (typed(&o), o);
            t.answer(
                factor_ops::policy_set(
                    broker,
                    &environment,
                    Proof::from_request(factor, digest, false),
                    change,
                )
                .await,
            )
        }
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
        Request::WebUrl => answer(op::WebUrl, super::web::url(broker).await),
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
        Request::SetUrl(o) => {
            typed(&o).answer(super::web::set_url(broker, &o.environment, &o.name).await)
        }
        Request::Mount(o) => typed(&o).answer(super::mounts::mount(broker, o)),
        Request::Unmount(o) => typed(&o).answer(super::mounts::unmount(broker, o)),
        Request::Mounts(o) => typed(&o).answer(Ok(super::mounts::list(broker))),
    };
    match r {
        Ok(mut v) => {
            if !reveal {
                // Where a policy hides names, every reply carries aliases (see `names.rs`).
                broker.lock().hide_names_in(&mut v);
            }
            Reply::ok(v)
        }
        Err(e) => e.reply(),
    }
}

/// The reply type of an operation, taken from the operation before its fields are moved out:
/// the dispatcher answers each operation with its own [`Operation::Reply`] (the compiler
/// checks it; `keyveil_proto::op`).
struct Typed<O>(std::marker::PhantomData<O>);

/// [`Typed`] of `o`.
fn typed<O: Operation>(_: &O) -> Typed<O> {
    Typed(std::marker::PhantomData)
}

impl<O: Operation> Typed<O> {
    /// The operation's reply as the JSON the reply frame carries.
    fn answer(self, r: OpResult<O::Reply>) -> OpResult<Value> {
        r.and_then(|reply| {
            serde_json::to_value(reply).map_err(|e| {
                OpError::new(ErrorCode::Failed, format!("cannot encode the reply: {e}"))
            })
        })
    }
}

/// [`Typed::answer`] for an operation without fields.
fn answer<O: Operation>(o: O, r: OpResult<O::Reply>) -> OpResult<Value> {
    typed(&o).answer(r)
}

/// The real name a human's `set`/`generate`/`unset` names (an alias is understood), and why the
/// change needs the factor. Where names are hidden, a name that is not an alias always needs it,
/// whether or not a variable of that name exists, so a guess confirms nothing.
fn target_of_change(broker: &Broker, env: &str, given: &str) -> (String, Need) {
    let inner = broker.lock();
    if inner.hides_names(env) && inner.real_name(env, given).is_none() {
        return (given.to_owned(), Need::HiddenName);
    }
    let name = inner.human_name(env, given);
    let stored = inner.stored_names(env, Some(&name));
    (name, Need::stored(stored))
}

/// The value of a `set`: plain (a first value, no factor) or sealed under the factor key.
fn value_of_set(
    plain: Option<Passphrase>,
    sealed: Option<String>,
    verified: Option<&factor_ops::Verified>,
    aad: &[u8],
) -> OpResult<Passphrase> {
    match (plain, sealed, verified.and_then(|v| v.transit.as_ref())) {
        (Some(p), None, None) => Ok(p),
        (None, Some(s), Some((key, nonce))) => {
            let bytes = factor_proof::open_in_transit(key, nonce, aad, &s)
                .map_err(|e| usage(format!("the sealed value cannot be opened: {e}")))?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| usage("the value is not UTF-8"))?
                .to_owned();
            Ok(Passphrase::new(text))
        }
        (None, Some(_), None) => Err(usage(
            "a sealed value needs a factor proof from the keyveil CLI",
        )),
        (Some(_), _, Some(_)) => Err(usage(
            "with a factor, a value travels sealed (`sealed_value`), never in plain text",
        )),
        _ => Err(usage(
            "give the value (`value`) or, with a factor, `sealed_value`",
        )),
    }
}

fn status(broker: &Broker) -> op::BrokerStatus {
    let inner = broker.lock();
    op::BrokerStatus {
        running: true,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        home: broker.paths.home.clone(),
        socket: broker.paths.socket(),
        vault_exists: broker.paths.vault().exists(),
        locked: inner.vault.is_none(),
        locked_asks: if inner.vault.is_none() {
            inner.locked_asks.values().map(|(a, _)| a.clone()).collect()
        } else {
            Vec::new()
        },
        pending_requests: inner
            .requests
            .values()
            .filter(|r| r.state == RequestState::Pending)
            .count(),
        live_grants: inner
            .grants
            .values()
            .filter(|g| g.live(Timestamp::now()))
            .count(),
        log_lines_lost: crate::logging::lost_lines(),
        live_runs: inner.runs.len(),
        runs: inner
            .runs
            .values()
            .map(|r| op::LiveRun {
                id: r.id.clone(),
                grant_id: r.grant_id.clone(),
                pgid: r.pgid,
                argv: r.argv.clone(),
                started_at: r.started_at,
            })
            .collect(),
    }
}

async fn init(
    broker: &Arc<Broker>,
    pass: Passphrase,
    kdf_kib: Option<u32>,
    policy_path: Option<String>,
    home: Option<String>,
) -> OpResult<op::Bootstrapped> {
    if pass.expose().len() < 8 {
        return Err(usage("the passphrase is too short (at least 8 characters)"));
    }
    let path = broker.paths.vault();
    if broker.lock().vault.is_some() {
        // Whatever is (or is not) at the vault's path now, this broker serves the human's vault:
        // a second vault made here would be keyed to whoever typed this passphrase.
        return Err(OpError::new(
            ErrorCode::Failed,
            "the broker is unlocked, serving the vault it opened: `init` is refused while it runs unlocked; nothing was created",
        )
        .hint(format!(
            "if {} was moved or deleted, move it back; to start a new vault, the user runs `keyveil lock` first",
            path.display()
        )));
    }
    if path.exists() {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("a vault already exists at {}", path.display()),
        )
        .hint("unlock it with `keyveil unlock`, or choose another KEYVEIL_HOME"));
    }
    let mut params = KdfParams::DEFAULT;
    if let Some(m) = kdf_kib {
        params.m_cost_kib = m.max(KdfParams::MINIMUM.m_cost_kib);
        params.t_cost = params.t_cost.min(KdfParams::MINIMUM.t_cost.max(2));
    }
    // Record the human's PATH (absolute entries only) and HOME: granted children get these,
    // never the requester's. They are in the vault's first and only write.
    let mut data = keyveil_vault::VaultData::default();
    data.settings.path = policy_path
        .map(|p| {
            let mut seen = Vec::new();
            for d in p.split(':').filter(|d| d.starts_with('/')) {
                if !seen.contains(&d) {
                    seen.push(d);
                }
            }
            seen.join(":")
        })
        .filter(|p| !p.is_empty());
    data.settings.home = home.filter(|h| h.starts_with('/'));
    let create_path = path.clone();
    let vault = tokio::task::spawn_blocking(move || {
        Vault::create_with(&create_path, pass.expose().as_bytes(), params, data)
    })
    .await
    .map_err(|e| OpError::new(ErrorCode::Failed, format!("vault creation failed: {e}")))?
    .map_err(vault_err)?;
    let written = std::fs::read(&path).ok();
    // The audit log must open and record the creation; otherwise the new file goes again.
    let undo = |broker: &Broker, e: OpError| {
        let mut inner = broker.lock();
        inner.vault = None;
        inner.close_audit();
        if std::fs::read(&path).ok() == written {
            let _ = std::fs::remove_file(&path);
        }
        e
    };
    if let Err(e) = open_with(broker, vault) {
        return Err(undo(broker, e));
    }
    let recorded = broker.lock().must_audit("init", json!({}));
    if let Err(e) = recorded {
        return Err(undo(broker, e));
    }
    Ok(op::Bootstrapped::Created {
        created: broker.paths.vault(),
    })
}

/// Opens the audit log for `vault` and puts both in the broker. Returns warnings for the
/// human (a log that was moved aside, and what the sealed checkpoint says is missing).
fn open_with(broker: &Broker, vault: Vault) -> OpResult<Vec<String>> {
    use keyveil_vault::audit::{AuditError, AuditWriter, quarantine};
    let key = vault.audit_key();
    let path = broker.paths.audit();
    let cant = |e: AuditError| {
        OpError::new(ErrorCode::Failed, format!("cannot open the audit log: {e}"))
            .hint("check the permissions of KEYVEIL_HOME; `keyveil status` shows where it is")
    };
    // A log whose last line fails its MAC was edited by someone without the key. Refusing to
    // unlock would let any same-user process lock the human out, so the bad log is moved
    // aside as evidence, a new one is started, and the first entry of the new log says so.
    // What the moved log still proves is measured against the seal first: moving a cut log
    // aside must not hide the cut (issue 21: the quarantine used to reset the seal silently).
    let (writer, quarantined) = match AuditWriter::open(&path, &key) {
        Ok(w) => (w, None),
        Err(AuditError::BadLine { .. }) => {
            let moved = quarantine(&path).map_err(cant)?;
            let salvage =
                keyveil_vault::audit::salvage(&moved, &key, vault.data().audit_checkpoint.as_ref())
                    .ok();
            (
                AuditWriter::open(&path, &key).map_err(cant)?,
                Some((moved, salvage)),
            )
        }
        Err(e) => return Err(cant(e)),
    };
    let mut warnings = Vec::new();
    // Does the log still hold the entry the vault sealed last time?
    let seal_broken = match (&quarantined, vault.data().audit_checkpoint.as_ref()) {
        (None, Some(cp)) => keyveil_vault::audit::verify_checkpoint(&path, &key, cp)
            .err()
            .map(|e| e.to_string()),
        _ => None,
    };
    let mut inner = broker.lock();
    let mut writer = writer;
    if let Some(gap) = inner.audit_gap.take() {
        // Entries the previous writer could not write: recorded first in this log.
        writer.carry_gap(gap);
    }
    inner.vault = Some(vault);
    inner.audit = Some(writer);
    if let Some(why) = &seal_broken {
        tracing::warn!(%why, "the audit log does not match the vault's sealed checkpoint");
        inner.audit("audit_seal_mismatch", json!({ "why": why }));
    }
    inner.audit_seal_broken = seal_broken;
    inner.audit_path_changed = None;
    inner.open_audit_session();
    if let Some((moved, salvage)) = quarantined {
        // The seal belonged to the log that was moved aside: what it knew is recorded in the
        // new log's first entries (MAC'd), where `audit verify` finds and reports it.
        if let Some(v) = inner.vault.as_mut() {
            v.data_mut().audit_checkpoint = None;
        }
        tracing::warn!(moved = %moved.display(), "audit log failed verification and was quarantined");
        let (verified, first_bad, sealed_seq, missing) = match &salvage {
            Some(s) => (
                Some(s.verified),
                s.first_bad.as_ref().map(|b| b.0),
                s.sealed_seq,
                s.missing(),
            ),
            None => (None, None, None, 0),
        };
        inner.audit(
            "audit_quarantined",
            json!({
                "moved_to": moved,
                "verified_lines": verified,
                "first_bad_line": first_bad,
                "sealed_seq": sealed_seq,
                "missing": missing,
            }),
        );
        warnings.push(quarantine_warning(
            &moved, verified, first_bad, sealed_seq, missing,
        ));
    }
    Ok(warnings)
}

/// The human's warning about a log moved aside at unlock (also printed by `audit verify`).
pub(crate) fn quarantine_warning(
    moved: &std::path::Path,
    verified: Option<u64>,
    first_bad: Option<u64>,
    sealed_seq: Option<u64>,
    missing: u64,
) -> String {
    let shown = keyveil_proto::display::visible(&moved.display().to_string());
    let mut w = format!(
        "the audit log failed verification and was moved aside to {shown}; a new log was started"
    );
    if let Some(v) = verified {
        w.push_str(&format!("; the moved log verifies through line {v}"));
    }
    if let Some(b) = first_bad {
        w.push_str(&format!(
            " and line {b} fails its MAC or chain (edited or forged)"
        ));
    }
    match sealed_seq {
        Some(s) if missing > 0 => w.push_str(&format!(
            "; the vault's sealed checkpoint vouched for {s} entries, so {missing} entries (lines {}-{s}) are MISSING: they were cut off or overwritten",
            s - missing + 1
        )),
        Some(s) => w.push_str(&format!(
            "; the sealed checkpoint (line {s}) is among the lines that verify"
        )),
        None => w.push_str("; no sealed checkpoint existed to compare with"),
    }
    w
}

fn vault_err(e: keyveil_vault::VaultError) -> OpError {
    use keyveil_vault::VaultError as E;
    match e {
        E::WrongPassphrase => OpError::new(ErrorCode::Denied, "wrong passphrase"),
        E::NotFound { .. } => OpError::new(ErrorCode::NotFound, "no vault exists yet")
            .hint("create one with `keyveil init`"),
        e @ E::Corrupt { .. } => OpError::new(ErrorCode::Failed, e.to_string()).hint(
            "nothing was changed; restore the vault file from a backup, or, if the message names the journal, move the journal file next to the vault aside and unlock again",
        ),
        other => OpError::new(ErrorCode::Failed, other.to_string()),
    }
}

async fn unlock(broker: &Arc<Broker>, pass: Passphrase) -> OpResult<op::Bootstrapped> {
    if broker.lock().vault.is_some() {
        return Ok(op::Bootstrapped::Unlocked {
            unlocked: true,
            already: Some(true),
            warnings: Vec::new(),
        });
    }
    // No lockout here: the passphrase is never refused unjudged (each guess costs an Argon2id
    // derivation, as an offline attack on the vault file does).
    let path = broker.paths.vault();
    let opened = tokio::task::spawn_blocking(move || {
        let mut v = Vault::open(&path, pass.expose().as_bytes())?;
        // Fold the changes journaled by the last session into the vault file (a full save, off
        // the broker's lock). Not fatal: the journal keeps them until the next compaction.
        if let Err(e) = v.compact() {
            tracing::warn!(error = %e, "cannot fold the vault's journal into the vault file");
        }
        Ok::<Vault, keyveil_vault::VaultError>(v)
    })
    .await
    .map_err(|e| OpError::new(ErrorCode::Failed, format!("unlock failed: {e}")))?;
    match opened {
        Ok(v) => {
            let warnings = open_with(broker, v)?;
            let mut inner = broker.lock();
            inner.factor.succeed();
            inner.audit("unlock", json!({}));
            drop(inner);
            // Reap dynamic credentials that a crashed broker left behind.
            crate::dynamic::on_unlock(broker);
            Ok(op::Bootstrapped::Unlocked {
                unlocked: true,
                already: None,
                warnings,
            })
        }
        Err(keyveil_vault::VaultError::WrongPassphrase) => {
            let lockout = broker.lock().factor.fail(Instant::now());
            tracing::warn!(?lockout, "wrong passphrase at unlock");
            Err(OpError::new(ErrorCode::Denied, "wrong passphrase")
                .hint("try again; the right passphrase is always accepted"))
        }
        Err(e) => Err(vault_err(e)),
    }
}

async fn lock(broker: &Broker) -> op::Locked {
    // The runs end before the vault leaves memory (their ends are still audited); the reply
    // says what was stopped.
    let stopped = RunsStopped::wait(stop_everything(broker, "vault locked")).await;
    let mut inner = broker.lock();
    // A grant approved while we waited ends in the same step as the vault leaves memory.
    let _late = stop_all(&mut inner, "vault locked");
    let recorded = inner.audit_recorded("lock", json!({}));
    inner.seal_audit_final();
    // The values leave memory whatever the disk said above (the sealed checkpoint and the
    // audit entry are best effort here; what could not be written is kept as the gap).
    inner.vault = None;
    inner.close_audit();
    inner.challenges.clear();
    inner.pending_totp = None;
    drop(inner);
    broker.notify();
    if !recorded {
        tracing::error!(
            "the vault was locked, but the lock could not be recorded in the audit log"
        );
    }
    op::Locked {
        locked: true,
        stopped: stopped.reply(),
        recorded,
    }
}

/// Revokes every grant (killing its runs) and denies every pending request; returns watches on
/// the end of the runs that were live (see [`RunsStopped::wait`]).
pub(crate) fn stop_everything(broker: &Broker, why: &str) -> RunEnds {
    let ended = stop_all(&mut broker.lock(), why);
    broker.notify();
    ended
}

/// [`stop_everything`] under a lock already held (the caller notifies).
fn stop_all(inner: &mut Inner, why: &str) -> RunEnds {
    let ids: Vec<String> = inner.grants.keys().cloned().collect();
    let ended = inner.runs_ended(&ids);
    for id in ids {
        inner.revoke(&id, why);
    }
    for r in inner.requests.values_mut() {
        if r.state == RequestState::Pending {
            r.state = RequestState::Denied {
                reason: Some(why.to_owned()),
            };
            r.decided = Some(Instant::now());
        }
    }
    ended
}

fn env_list(broker: &Broker) -> OpResult<op::Environments> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let environments = v
        .data()
        .environments
        .iter()
        .map(|(name, e)| op::EnvSummary {
            name: name.clone(),
            description: e.description.clone(),
            variables: sorted_shown(&inner, name, e),
        })
        .collect();
    Ok(op::Environments { environments })
}

/// The aliases of an environment's variables with the real names behind them, for a caller
/// who presents the factor (passphrase or TOTP; `confirm` is not enough). Audited.
async fn env_reveal(broker: &Arc<Broker>, env: &str, proof: Proof) -> OpResult<op::EnvRevealed> {
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        if !v.data().environments.contains_key(env) {
            return Err(unknown_env(env, v));
        }
    }
    let required = factor_ops::rule_change_factor(broker, env);
    let verified =
        factor_ops::verify_factor(broker, proof, required, json!({"env_reveal": env})).await?;
    let mut inner = broker.lock();
    inner.audit_ready("env_reveal")?;
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(env)
        .ok_or_else(|| unknown_env(env, v))?;
    let hidden = e.policy.hide_names;
    let names: Vec<op::RevealedName> = e
        .variables
        .iter()
        .map(|(n, var)| op::RevealedName {
            alias: v.name_alias(env, n),
            real_name: n.clone(),
            description: var.description.clone(),
        })
        .collect();
    // The audit entry names the environment only (the names are what is being protected).
    inner.audit(
        "env_reveal",
        json!({"environment": env, "count": names.len()}),
    );
    // The names travel sealed for the CLI that proved the factor: a relay at the socket reads
    // nothing (the approval page, which has no transit key, gets them in the page over its own
    // loopback connection).
    match verified.transit {
        Some((key, nonce)) => {
            let plain = serde_json::to_vec(&names).unwrap_or_default();
            let sealed = factor_proof::seal_in_transit(&key, &nonce, b"env_reveal", &plain)
                .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
            Ok(op::EnvRevealed {
                environment: env.to_owned(),
                hide_names: hidden,
                sealed_names: Some(sealed),
                names: None,
            })
        }
        None => Ok(op::EnvRevealed {
            environment: env.to_owned(),
            hide_names: hidden,
            sealed_names: None,
            names: Some(names),
        }),
    }
}

/// An environment's variable names as clients see them, sorted as shown: where names are
/// hidden, the order of the real names would betray them.
fn sorted_shown(inner: &Inner, env: &str, e: &Environment) -> Vec<String> {
    let mut shown: Vec<String> = e
        .variables
        .keys()
        .map(|n| inner.shown_name(env, n))
        .collect();
    shown.sort();
    shown
}

fn env_show(broker: &Broker, name: &str) -> OpResult<op::EnvDetail> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(name)
        .ok_or_else(|| unknown_env(name, v))?;
    // A description can say what a hidden name would ("Stripe live key").
    let hidden = e.policy.hide_names;
    let mut variables: Vec<op::VariableInfo> = e
        .variables
        .iter()
        .map(|(n, var)| op::VariableInfo {
            name: inner.shown_name(name, n),
            description: if hidden {
                String::new()
            } else {
                var.description.clone()
            },
            source: source_name(var.source),
            set: var.value.is_some() || var.dynamic.is_some(),
            created_at: var.created_at,
            rotated_at: var.rotated_at,
            compromised: super::sweep_ops::mark(&inner, name, n),
        })
        .collect();
    // Sorted as shown (where names are hidden, the real names' order would betray them).
    variables.sort_by(|a, b| a.name.cmp(&b.name));
    let policy = match serde_json::to_value(&e.policy) {
        Ok(Value::Object(map)) => map,
        _ => {
            return Err(OpError::new(
                ErrorCode::Failed,
                "cannot encode the environment's policy",
            ));
        }
    };
    Ok(op::EnvDetail {
        name: name.to_owned(),
        description: e.description.clone(),
        variables,
        policy,
    })
}

fn env_create(broker: &Broker, name: &str, description: String) -> OpResult<op::EnvCreated> {
    check_env_name(name)?;
    let mut inner = broker.lock();
    inner.audit_ready("env_create")?;
    let v = inner.vault_mut()?;
    if v.data().environments.contains_key(name) {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("environment '{name}' already exists"),
        ));
    }
    v.data_mut().environments.insert(
        name.to_owned(),
        Environment {
            description,
            variables: Default::default(),
            policy: Default::default(),
            created_at: Timestamp::now(),
        },
    );
    save(v)?;
    inner.audit("env_create", json!({"environment": name}));
    Ok(op::EnvCreated {
        name: name.to_owned(),
    })
}

fn env_remove(broker: &Broker, name: &str, verified: bool) -> OpResult<op::EnvRemoved> {
    let mut inner = broker.lock();
    recheck(&inner, name, None, verified)?;
    inner.audit_ready("env_remove")?;
    let v = inner.vault_mut()?;
    if v.data_mut().environments.remove(name).is_none() {
        return Err(unknown_env(name, v));
    }
    save(v)?;
    // Grants on a removed environment die with it.
    let ids: Vec<String> = inner
        .grants
        .values()
        .filter(|g| g.environment == name)
        .map(|g| g.id.clone())
        .collect();
    for id in ids {
        inner.revoke(&id, "environment removed");
    }
    inner.audit("env_remove", json!({"environment": name}));
    Ok(op::EnvRemoved {
        removed: name.to_owned(),
    })
}

fn save(v: &mut Vault) -> OpResult<()> {
    v.save().map_err(save_err)
}

/// Persists one variable's change through the vault's journal (one small sealed append and its
/// sync, not a rewrite of the whole vault; see `Vault::save_variable`).
fn save_variable(v: &mut Vault, env: &str, name: &str) -> OpResult<()> {
    v.save_variable(env, name).map_err(save_err)
}

fn save_err(e: keyveil_vault::VaultError) -> OpError {
    {
        let hint = match e {
            keyveil_vault::VaultError::ChangedOnDisk { .. } => {
                "the vault file was replaced behind the broker's back; nothing was written. Run `keyveil lock` then `keyveil unlock` to reload it"
            }
            _ => "nothing was changed on disk; check free space and permissions of KEYVEIL_HOME",
        };
        OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")).hint(hint)
    }
}

/// Stores (or declares) variable `name` of `env` and records `audit(existed)`'s entry; returns
/// whether the variable existed. The change goes to the vault's journal; its `fdatasync`
/// overlaps the audit entry's own sync, and the change is acknowledged (and kept in memory)
/// only once both are done.
#[allow(clippy::too_many_arguments)]
fn store(
    inner: &mut Inner,
    env: &str,
    name: &str,
    value: Option<String>,
    source: Source,
    description: Option<String>,
    verified: bool,
    audit: impl FnOnce(bool) -> (&'static str, serde_json::Value),
) -> OpResult<bool> {
    check_name("variable", name)?;
    if let Some((message, hint)) = value
        .as_deref()
        .and_then(|v| keyveil_proto::env_string_too_long(name, v.len()))
    {
        return Err(OpError::new(ErrorCode::Usage, message).hint(hint));
    }
    if access::is_injection_var(name) {
        // A vault variable is injected into granted children: one named BASH_ENV, LD_PRELOAD,
        // PATH, NODE_OPTIONS, ... would let whoever sets it (no factor is needed to set a value)
        // make an approved command run other code.
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("refused: a variable named {name} would make granted commands load or run other code"),
        )
        .hint("choose another name; keyveil never injects code-loading variables into a granted process"));
    }
    let v = inner.vault_mut()?;
    let e = match v.data_mut().environments.get_mut(env) {
        Some(e) => e,
        None => return Err(unknown_env(env, v)),
    };
    let now = Timestamp::now();
    let existed = e.variables.contains_key(name);
    // Kept to undo the change in memory if the save fails: what the broker serves must be what
    // the vault file holds.
    let previous = e.variables.get(name).cloned();
    let sealed = value
        .map(|val| keyveil_vault::SealedValue::seal(keyveil_vault::SecretValue::new(val)))
        .transpose()
        .map_err(vault_err)?;
    match e.variables.get_mut(name) {
        Some(var) => {
            if let Some(val) = sealed {
                var.value = Some(val);
                var.rotated_at = Some(now);
                var.source = source;
                var.dynamic = None;
                var.stored = Some(keyveil_vault::StoreRecord {
                    at: now,
                    factor: verified,
                });
            }
            if let Some(d) = description {
                var.description = d;
            }
        }
        None => {
            e.variables.insert(
                name.to_owned(),
                Variable {
                    value: sealed,
                    description: description.unwrap_or_default(),
                    source,
                    created_at: now,
                    rotated_at: None,
                    dynamic: None,
                    stored: Some(keyveil_vault::StoreRecord {
                        at: now,
                        factor: verified,
                    }),
                },
            );
        }
    }
    let pending = match v.save_variable_unsynced(env, name).map_err(save_err) {
        Ok(p) => p,
        Err(err) => {
            put_back(v, env, name, previous);
            return Err(err);
        }
    };
    let (event, fields) = audit(existed);
    let Some(pending) = pending else {
        // A full save (already durable).
        inner.audit(event, fields);
        return Ok(existed);
    };
    let synced = std::thread::scope(|s| {
        let sync = s.spawn(|| pending.sync().map_err(|e| e.to_string()));
        inner.audit(event, fields);
        sync.join()
            .unwrap_or_else(|_| Err("the journal's sync thread panicked".to_owned()))
    });
    if let Err(why) = synced {
        if let Ok(v) = inner.vault_mut() {
            v.undo_append(pending);
            put_back(v, env, name, previous);
        }
        inner.audit(
            "store_failed",
            json!({"environment": env, "variable": name, "event": event}),
        );
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("cannot save the vault: {why}; the change was undone"),
        )
        .hint("nothing was changed; check free space and the disk of KEYVEIL_HOME, then retry"));
    }
    Ok(existed)
}

/// Puts a variable back as it was before a change that could not be saved: what the broker
/// serves must be what the vault file holds.
fn put_back(v: &mut Vault, env: &str, name: &str, previous: Option<Variable>) {
    if let Some(e) = v.data_mut().environments.get_mut(env) {
        match previous {
            Some(p) => {
                e.variables.insert(name.to_owned(), p);
            }
            None => {
                e.variables.remove(name);
            }
        }
    }
}

fn var_set(
    broker: &Broker,
    env: &str,
    name: &str,
    value: Passphrase,
    verified: bool,
) -> OpResult<op::VarStored> {
    if value.expose().is_empty() {
        return Err(usage("the value is empty; nothing was stored"));
    }
    if value.expose().contains('\0') {
        return Err(usage(
            "the value contains a NUL byte, which an environment variable cannot hold; nothing was stored",
        ));
    }
    let short = value.expose().len() < 8;
    let mut inner = broker.lock();
    recheck(&inner, env, Some(name), verified)?;
    inner.audit_ready("var_set")?;
    let existed = store(
        &mut inner,
        env,
        name,
        Some(value.expose().to_owned()),
        Source::Human,
        None,
        verified,
        |existed| {
            (
                "var_set",
                json!({"environment": env, "variable": name, "replaced": existed}),
            )
        },
    )?;
    Ok(op::VarStored {
        environment: env.to_owned(),
        name: name.to_owned(),
        status: op::VarStatus::Set,
        replaced: existed,
        short_value: short,
    })
}

fn var_generate(
    broker: &Broker,
    env: &str,
    name: &str,
    length: usize,
    charset: Charset,
    description: Option<String>,
    verified: bool,
) -> OpResult<op::VarChanged> {
    if !(8..=MAX_GENERATED).contains(&length) {
        return Err(usage(format!(
            "length must be between 8 and {MAX_GENERATED} characters"
        )));
    }
    let value = generate(length, charset)?;
    let mut inner = broker.lock();
    recheck(&inner, env, Some(name), verified)?;
    inner.audit_ready("var_generate")?;
    store(
        &mut inner,
        env,
        name,
        Some(value),
        Source::Generated,
        description,
        verified,
        |existed| {
            (
                "var_generate",
                json!({"environment": env, "variable": name, "length": length, "replaced": existed}),
            )
        },
    )?;
    Ok(op::VarChanged {
        environment: env.to_owned(),
        name: name.to_owned(),
        status: op::VarStatus::Set,
    })
}

/// A uniformly random string over the charset (rejection sampling, no modulo bias).
pub(crate) fn generate(length: usize, charset: Charset) -> OpResult<String> {
    let alphabet: Vec<u8> = match charset {
        Charset::Alnum => (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .collect(),
        Charset::Hex => (b'0'..=b'9').chain(b'a'..=b'f').collect(),
        Charset::Base64url => (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .chain([b'-', b'_'])
            .collect(),
        Charset::Ascii => (b'!'..=b'~').collect(),
    };
    let n = alphabet.len();
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(length);
    let mut buf = [0u8; 64];
    while out.len() < length {
        getrandom::fill(&mut buf).map_err(|e| {
            OpError::new(
                ErrorCode::Failed,
                format!("the OS random source failed: {e}"),
            )
        })?;
        for &b in &buf {
            if usize::from(b) < limit
                && out.len() < length
                && let Some(&c) = alphabet.get(usize::from(b) % n)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

fn var_unset(broker: &Broker, env: &str, name: &str, verified: bool) -> OpResult<op::VarChanged> {
    let mut inner = broker.lock();
    recheck(&inner, env, Some(name), verified)?;
    inner.audit_ready("var_unset")?;
    // The name as clients see it, taken while the variable still exists (after the removal
    // the alias rewriting no longer knows it).
    let shown = inner.shown_name(env, name);
    let v = inner.vault_mut()?;
    let e = match v.data_mut().environments.get_mut(env) {
        Some(e) => e,
        None => return Err(unknown_env(env, v)),
    };
    if e.variables.remove(name).is_none() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("environment '{env}' has no variable '{name}'"),
        ));
    }
    save_variable(v, env, name)?;
    inner.audit("var_unset", json!({"environment": env, "variable": shown}));
    Ok(op::VarChanged {
        environment: env.to_owned(),
        name: shown,
        status: op::VarStatus::Unset,
    })
}

fn var_declare(
    broker: &Broker,
    env: &str,
    name: &str,
    description: Option<String>,
    generate_now: bool,
    length: Option<usize>,
) -> OpResult<op::Declared> {
    check_name("variable", name)?;
    // Where names are hidden, only an alias names a variable; any other name gets one answer,
    // whether or not it exists (a guess confirms nothing).
    let aliased = {
        let inner = broker.lock();
        if inner.hides_names(env) {
            match inner.real_name(env, name) {
                Some(real) => Some(real),
                None => {
                    return Err(OpError::new(
                        ErrorCode::Denied,
                        format!("names in '{env}' are hidden: variables are added there by the user, not declared by an agent"),
                    )
                    .hint(format!(
                        "ask the user to add it with `keyveil set {env} NAME` in their own terminal (it asks for their factor)"
                    )));
                }
            }
        } else {
            None
        }
    };
    let name = aliased.as_deref().unwrap_or(name);
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        let e = v
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, v))?;
        if let Some(var) = e.variables.get(name)
            && (var.value.is_some() || var.dynamic.is_some())
        {
            // Declaring never overwrites: an agent must not be able to replace a value.
            return Ok(op::Declared {
                status: op::VarStatus::Set,
                hint: Some(
                    "the variable already has a value; declaring again changes nothing".to_owned(),
                ),
            });
        }
    }
    if generate_now {
        var_generate(
            broker,
            env,
            name,
            length.unwrap_or(32),
            Charset::Alnum,
            description,
            false,
        )?;
        return Ok(op::Declared {
            status: op::VarStatus::Set,
            hint: None,
        });
    }
    let mut inner = broker.lock();
    // Never over a value stored since the check above.
    recheck(&inner, env, Some(name), false)?;
    inner.audit_ready("var_declare")?;
    store(
        &mut inner,
        env,
        name,
        None,
        Source::Human,
        description,
        false,
        |_| ("var_declare", json!({"environment": env, "variable": name})),
    )?;
    Ok(op::Declared {
        status: op::VarStatus::AwaitingValue,
        hint: Some(format!(
            "ask the user to run `keyveil set {env} {name}` in their own terminal; never ask them to paste the value into the chat"
        )),
    })
}

fn grants(broker: &Broker, client: Option<&str>) -> op::GrantList {
    let inner = broker.lock();
    let now = Timestamp::now();
    let grants = inner
        .grants
        .values()
        .filter(|g| {
            // Listed while usable, or while a run started under it is still live (a used-up
            // once-grant can still be revoked to kill its run).
            let running = inner.runs.values().any(|r| r.grant_id == g.id);
            (g.live(now) || (running && !g.revoked)) && client.is_none_or(|c| g.client == c)
        })
        .map(|g| op::GrantInfo {
            id: g.id.clone(),
            request_id: g.request_id,
            client: g.client.clone(),
            environment: g.environment.clone(),
            variables: g.variables.clone(),
            argv: g.argv.clone(),
            prefix: g.prefix,
            cwd: g.cwd.clone(),
            subdirs: g.subdirs,
            pass_env: g.pass_env.clone(),
            executable: g.executable.as_ref().map(access::file_pin_info),
            inputs: g.inputs.iter().map(access::input_pin_info).collect(),
            created_at: g.created_at,
            expires_at: g.expires_at,
            uses_left: g.uses_left,
            runs: g.runs,
            revoked: g.revoked,
            dynamic: inner.dynamic.describe(&g.id),
        })
        .collect();
    op::GrantList { grants }
}

async fn revoke(
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

/// Watches on the end of runs (see [`RunsStopped::wait`]).
type RunEnds = Vec<tokio::sync::watch::Receiver<Option<super::spawn::TreeEnd>>>;

/// The revocation itself, under the lock: `(revoked, already ended, ids, their runs' ends)`.
fn revoke_now(
    broker: &Broker,
    grant_id: Option<String>,
    all: bool,
    client: Option<&str>,
) -> OpResult<(u32, u32, Vec<String>, RunEnds)> {
    let mut inner = broker.lock();
    let ids: Vec<String> = match (grant_id, all) {
        (Some(id), _) => {
            let g = inner.grants.get(&id).ok_or_else(|| {
                OpError::new(ErrorCode::NotFound, format!("no grant {id}"))
                    .hint("list grants with `keyveil grants`")
            })?;
            if client.is_some_and(|c| g.client != c) {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("no grant {id} for this client"),
                ));
            }
            vec![id]
        }
        (None, true) => inner
            .grants
            .values()
            .filter(|g| !g.revoked && client.is_none_or(|c| g.client == c))
            .map(|g| g.id.clone())
            .collect(),
        (None, false) => return Err(usage("name a grant id, or use --all")),
    };
    let now = Timestamp::now();
    let (mut n, mut ended) = (0, 0);
    for id in &ids {
        // A grant with no use left or past its expiry covers no new run; revoking it still
        // stops whatever runs under it.
        let had_ended = inner
            .grants
            .get(id)
            .is_some_and(|g| !g.revoked && (g.uses_left == Some(0) || g.expires_at <= now));
        if inner.revoke(id, "revoked by request") {
            n += 1;
            if had_ended {
                ended += 1;
            }
        }
    }
    let runs = inner.runs_ended(&ids);
    Ok((n, ended, ids, runs))
}

fn audit(broker: &Broker, limit: Option<usize>) -> OpResult<op::AuditEntries> {
    broker.lock().vault()?;
    let entries =
        keyveil_vault::audit::read_entries(&broker.paths.audit(), Some(limit.unwrap_or(50)))
            .map_err(|e| {
                OpError::new(ErrorCode::Failed, format!("cannot read the audit log: {e}"))
            })?;
    // Each entry as the log holds it: `seq`, `ts`, `event`, then its own fields.
    let entries = serde_json::from_value(Value::Array(entries)).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("an audit entry has no seq, ts or event: {e}"),
        )
    })?;
    Ok(op::AuditEntries { entries })
}

fn audit_verify(broker: &Broker) -> OpResult<op::AuditVerified> {
    let (key, checkpoint) = {
        let mut inner = broker.lock();
        inner.vault()?;
        inner.check_audit_path().map_err(|e| {
            let hint = e.hint.unwrap_or_default();
            OpError::new(
                ErrorCode::Failed,
                format!("audit log verification failed: {}", e.message),
            )
            .hint(format!(
                "the entries written before the change are in the moved file, which ends with an `audit.path_changed` entry; {hint}"
            ))
        })?;
        let v = inner.vault()?;
        (v.audit_key(), v.data().audit_checkpoint.clone())
    };
    let path = broker.paths.audit();
    // First against the last seal (detects entries cut off the end), then move the seal forward.
    let r = keyveil_vault::audit::verify_report(&path, &key, checkpoint.as_ref());
    match r {
        Ok(report) => {
            let mut inner = broker.lock();
            inner.seal_audit();
            // Entries not written yet (the log is still full): they are not in the file.
            let pending = inner
                .audit
                .as_ref()
                .and_then(|w| w.gap())
                .or(inner.audit_gap.as_ref())
                .map(|g| op::PendingGap {
                    lost: g.lost,
                    refused: g.refused,
                    events: g.events.clone(),
                });
            let gaps = report
                .gaps
                .into_iter()
                .map(|g| op::GapSeen {
                    seq: g.seq,
                    ts: g.ts,
                    lost: g.lost,
                    refused: g.refused,
                    events: g.events,
                    first: g.first,
                    last: g.last,
                })
                .collect();
            // Sessions that ended uncleanly (recorded at the next unlock).
            let unclean_ends = keyveil_vault::audit::read_entries(&path, None)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.get("event").and_then(Value::as_str) == Some("audit_unclean_end"))
                .map(|e| op::UncleanEnd {
                    seq: e.get("seq").and_then(Value::as_u64),
                    sealed_seq: e.get("sealed_seq").and_then(Value::as_u64),
                })
                .collect();
            let quarantined = keyveil_vault::audit::read_entries(&path, None)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.get("event").and_then(Value::as_str) == Some("audit_quarantined"))
                .map(|e| op::Quarantined {
                    seq: e.get("seq").and_then(Value::as_u64),
                    moved_to: e
                        .get("moved_to")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    verified_lines: e.get("verified_lines").and_then(Value::as_u64),
                    first_bad_line: e.get("first_bad_line").and_then(Value::as_u64),
                    sealed_seq: e.get("sealed_seq").and_then(Value::as_u64),
                    missing: e.get("missing").and_then(Value::as_u64).unwrap_or(0),
                })
                .collect();
            Ok(op::AuditVerified {
                ok: true,
                quarantined,
                unclean_ends,
                entries: report.entries,
                sealed_seq: checkpoint.map(|c| c.seq),
                gaps,
                pending_gap: pending,
            })
        }
        Err(e) => Err(OpError::new(
            ErrorCode::Failed,
            format!("audit log verification failed: {e}"),
        )
        .hint(
            "the log was edited, truncated, reordered or replaced; keep a copy for investigation",
        )),
    }
}

/// The serde name of a variable's source (`human`, `generated`, `dynamic`, `provider`).
fn source_name(source: Source) -> String {
    match serde_json::to_value(source) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}
