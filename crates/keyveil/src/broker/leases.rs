//! The broker's side of dynamic credentials (the engines and their registry are in
//! `crate::dynamic`): minting at a grant's first spawn, destroying at its end, the tick's
//! sweep, reaping after a crash, waiting for revocations and closing logins at lock and stop.
//!
//! Hook points in the broker (each one call):
//!
//! | where | call | why |
//! |---|---|---|
//! | `runner/launch.rs`, after a grant is chosen, before the values are copied | [`values_for_grant`] | mint (or reuse) the grant's credentials, fetch provider values |
//! | `state/inner.rs`, `Inner::revoke` | `Inner::end_grant_credentials` | destroy at the source within milliseconds of a revoke |
//! | `mod.rs`, `tick` (every 250 ms) | [`sweep`] | grants that expired or spent their uses; revocation results into the audit log |
//! | `ops/lifecycle.rs`, `unlock` | [`on_unlock`] | reap what a crashed broker left behind |
//! | `ops/grants.rs`, `grants` | [`crate::dynamic::Registry::describe`] | `keyveil grants` shows handles and expiry (never a secret) |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use keyveil_vault::SecretValue;
use serde_json::{Value, json};

use super::Broker;
use super::state::{Inner, OpError, OpResult};
use crate::dynamic::{CgWait, DynamicError, DynamicSpec, EngineKind, Held, Logins, push_outbox};
use keyveil_proto::ErrorCode;

/// A used-up grant keeps its credentials this long after their last hand-out, so a run being
/// started is never cut off before it is registered (milliseconds).
const USED_UP_GRACE_MS: u128 = 2000;

fn op_err(variable: &str, e: &DynamicError) -> OpError {
    let hint = match e {
        DynamicError::Config(_) => {
            "ask the user to fix it with `keyveil dynamic add` (it replaces the variable)"
        }
        _ => {
            "the engine's server or admin credential may be wrong; `keyveil dynamic add` checks them again when the user replaces the variable"
        }
    };
    OpError::new(
        ErrorCode::Failed,
        format!("cannot get a credential for {variable}: {e}"),
    )
    .hint(e.hint().unwrap_or(hint))
}

/// What [`values_for_grant`] hands to a spawn.
#[derive(Debug, Default)]
pub(crate) struct DynamicValues {
    /// Secret values (the variables, `PGPASSWORD`): injected and redacted from output.
    pub values: Vec<(String, SecretValue)>,
    /// Plain extras (`<VAR>_USER`, `PGUSER`, `PGHOST`, ...): injected, not redacted.
    pub env: Vec<(String, String)>,
}

/// The values of the dynamic variables among `vars` for a spawn under `grant_id`: credentials
/// minted at the grant's first spawn and reused by its later ones (until the grant ends),
/// provider values fetched now. Static variables are not returned (`Inner::values` gives them).
/// Extra variables of an output form (`<VAR>_USER`, `PG*`) come with them.
///
/// Errors: the grant ended while minting (`Denied`), an engine failed (`Failed`, scrubbed).
/// Every mint and failure is audited (names and handles only).
pub(crate) async fn values_for_grant(
    broker: &Arc<Broker>,
    grant_id: &str,
    environment: &str,
    vars: &[String],
) -> OpResult<DynamicValues> {
    let Some(w) = wanted(broker, grant_id, environment, vars)? else {
        return Ok(DynamicValues::default());
    };
    let _shared = w.gate.read().await;
    let mut out = DynamicValues::default();
    let mut fresh: Vec<Held> = Vec::new();
    let mut kv_cache: BTreeMap<String, BTreeMap<String, SecretValue>> = BTreeMap::new();
    let mut kv_reads: Vec<Value> = Vec::new();
    let mut failure: Option<OpError> = None;
    let until = cg_deadline(w.expires_at);
    for (name, src) in w.sources {
        let spec = match DynamicSpec::from_source(&src, w.same_user) {
            Ok(s) => s,
            Err(e) => {
                failure = Some(op_err(&name, &e));
                break;
            }
        };
        let note = |event: &'static str, fields: Value| {
            cg_note(broker, grant_id, environment, &name, event, fields);
        };
        let wanted = || {
            broker
                .lock()
                .grants()
                .get(grant_id)
                .is_some_and(|g| !g.revoked())
        };
        let wait = CgWait {
            until: Some(until),
            notice: Some(&note),
            wanted: Some(&wanted),
        };
        if spec.engine == EngineKind::OpenbaoKv {
            match fetch_kv(&spec, &w.logins, &name, &mut kv_cache, &mut kv_reads, &wait).await {
                Ok(v) => out.values.push((name, v)),
                Err(e) => {
                    audit_failure(broker, grant_id, environment, &name, &spec, &e);
                    failure = Some(op_err(&name, &e));
                    break;
                }
            }
            continue;
        }
        let at = MintAt {
            broker,
            grant_id,
            environment,
            expires_at: w.expires_at,
            logins: &w.logins,
        };
        match minted_or_reused(&at, &name, &spec, &mut fresh, &wait).await {
            Ok(minted) => {
                out.values.push((name, minted.value.clone()));
                out.values.extend(minted.extra_env.iter().cloned());
                out.env.extend(minted.plain_env.iter().cloned());
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    broker.lock().dynamic_mut().cg_wait_end(grant_id);
    audit_kv_reads(broker, grant_id, environment, kv_reads);
    register_fresh(broker, grant_id, fresh)?;
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// How long a spawn waits for a second approver where an OpenBao control group holds a read:
/// as long as a request waits for the human's approval (10 minutes), and never past the
/// grant's expiry.
fn cg_deadline(expires_at: Timestamp) -> Instant {
    let left = expires_at.duration_since(Timestamp::now()).as_secs().max(0) as u64;
    let secs = left.min(crate::broker::state::REQUEST_TTL_SECONDS as u64);
    Instant::now() + std::time::Duration::from_secs(secs)
}

/// Records a control-group event of a spawn's OpenBao read (`control_group_pending`,
/// `control_group_released`: the accessor, the path, OpenBao's request id; never the
/// wrapping token) with the grant, environment and variable; a pending one is also listed
/// under the grant for `keyveil grants` until the spawn stops waiting.
fn cg_note(
    broker: &Broker,
    grant_id: &str,
    environment: &str,
    variable: &str,
    event: &'static str,
    mut fields: Value,
) {
    if let Value::Object(m) = &mut fields {
        m.insert("grant_id".into(), json!(grant_id));
        m.insert("environment".into(), json!(environment));
        m.insert("variable".into(), json!(variable));
    }
    let mut inner = broker.lock();
    if event == "control_group_pending" {
        let field = |k: &str| {
            fields
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let accessor = field("accessor");
        tracing::warn!(
            variable,
            accessor,
            "OpenBao holds the read for a control group: waiting for a second approver"
        );
        inner.dynamic_mut().cg_wait_start(
            grant_id,
            keyveil_proto::op::ControlGroupWait {
                variable: variable.to_owned(),
                path: field("path"),
                accessor,
                since: Timestamp::now(),
            },
        );
    }
    inner.audit(event, fields);
}

/// What [`values_for_grant`] read under the broker's lock: the dynamic variables asked for
/// with their sources, the grant's expiry, the engines' gate and logins, and whether a
/// plain-HTTP loopback server of the user's own may be sent credentials (`insecure-loopback`).
struct Wanted {
    sources: Vec<(String, keyveil_vault::DynamicSource)>,
    expires_at: Timestamp,
    gate: Arc<tokio::sync::RwLock<()>>,
    logins: Arc<Logins>,
    same_user: bool,
}

/// The dynamic variables among `vars` and what minting them needs; `None` when there are
/// none (or the environment is gone). Errors: the vault is locked.
fn wanted(
    broker: &Broker,
    grant_id: &str,
    environment: &str,
    vars: &[String],
) -> OpResult<Option<Wanted>> {
    let inner = broker.lock();
    let vault = inner.vault()?;
    let Some(env) = vault.data().environments.get(environment) else {
        return Ok(None);
    };
    let sources: Vec<(String, keyveil_vault::DynamicSource)> = vars
        .iter()
        .filter_map(|n| {
            env.variables
                .get(n)
                .and_then(|v| v.dynamic.clone())
                .map(|d| (n.clone(), d))
        })
        .collect();
    if sources.is_empty() {
        return Ok(None);
    }
    let expires_at = inner
        .grants()
        .get(grant_id)
        .map(|g| g.expires_at())
        .unwrap_or_else(Timestamp::now);
    Ok(Some(Wanted {
        sources,
        expires_at,
        gate: inner.dynamic().gate(),
        logins: inner.dynamic().logins(),
        same_user: env.policy.insecure_loopback,
    }))
}

/// Where a credential is minted for: the grant, its environment and expiry, the logins.
struct MintAt<'a> {
    broker: &'a Arc<Broker>,
    grant_id: &'a str,
    environment: &'a str,
    expires_at: Timestamp,
    logins: &'a Logins,
}

/// The grant's credential for `name`: the one it already holds, or one minted now (audited
/// as `dynamic_mint`, and pushed onto `fresh` to be registered). Errors: the audit log cannot
/// record the mint (nothing is minted), the engine failed (audited, scrubbed).
async fn minted_or_reused(
    at: &MintAt<'_>,
    name: &str,
    spec: &DynamicSpec,
    fresh: &mut Vec<Held>,
    wait: &CgWait<'_>,
) -> OpResult<crate::dynamic::Minted> {
    if let Some(m) = at.broker.lock().dynamic_mut().reuse(at.grant_id, name) {
        return Ok(m);
    }
    // A credential minted at its source must be on the record.
    at.broker.lock().audit_log_mut().ready("dynamic_mint")?;
    let t0 = Instant::now();
    match crate::dynamic::mint(spec, at.logins, name, at.grant_id, at.expires_at, wait).await {
        Ok(m) => {
            at.broker.lock().audit(
                "dynamic_mint",
                json!({
                    "grant_id": at.grant_id,
                    "environment": at.environment,
                    "variable": name,
                    "engine": spec.engine.name(),
                    "handle": m.handle,
                    "expires_at": m.expires_at,
                    "ms": t0.elapsed().as_millis() as u64,
                }),
            );
            fresh.push(Held::new(name.to_owned(), spec.clone(), m.clone()));
            Ok(m)
        }
        Err(e) => {
            audit_failure(at.broker, at.grant_id, at.environment, name, spec, &e);
            Err(op_err(name, &e))
        }
    }
}

/// Each KV read on the record, with OpenBao's request id (joins its audit device) and the
/// version read: never a value.
fn audit_kv_reads(broker: &Broker, grant_id: &str, environment: &str, kv_reads: Vec<Value>) {
    if kv_reads.is_empty() {
        return;
    }
    let mut inner = broker.lock();
    for mut r in kv_reads {
        if let Value::Object(m) = &mut r {
            m.insert("grant_id".into(), json!(grant_id));
            m.insert("environment".into(), json!(environment));
        }
        inner.audit("kv_fetch", r);
    }
}

/// Registers what was minted for `grant_id`; if the grant ended meanwhile, destroys it at
/// once. Errors: the grant ended (`Denied`).
fn register_fresh(broker: &Broker, grant_id: &str, fresh: Vec<Held>) -> OpResult<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut inner = broker.lock();
    let now = Timestamp::now();
    let live = inner
        .grants()
        .get(grant_id)
        .is_some_and(|g| !g.revoked() && g.expires_at() > now);
    if live {
        inner.dynamic_mut().register(grant_id, fresh);
        return Ok(());
    }
    inner.dynamic().revoke_in_background(grant_id, fresh);
    Err(OpError::new(
        ErrorCode::Denied,
        format!("grant {grant_id} ended while its credentials were being made"),
    ))
}

/// The values of the variables among `vars` read from an OpenBao KV secret whose source was
/// linked without the factor (`access::agent_linked`): the agent may run that server, so they
/// are the agent's to choose, and are fetched now, before the card, to be quoted on it and
/// bound by digest into the grant (each spawn fetches again and compares). Empty when there
/// are none (no request is made) or the vault is locked (the request is refused later).
///
/// Errors: the server cannot be read (`Failed`, names hidden where the policy hides them):
/// no card can be shown for values nobody could read.
pub(crate) async fn linked_chosen(
    broker: &Broker,
    environment: &str,
    vars: &[String],
) -> OpResult<Vec<crate::broker::state::ChosenValue>> {
    let (wanted, gate, logins, same_user) = {
        let inner = broker.lock();
        let Ok(vault) = inner.vault() else {
            return Ok(Vec::new());
        };
        let Some(env) = vault.data().environments.get(environment) else {
            return Ok(Vec::new());
        };
        let wanted: Vec<(String, Timestamp, keyveil_vault::DynamicSource)> = vars
            .iter()
            .filter_map(|n| {
                let v = env.variables.get(n)?;
                let at = crate::broker::access::agent_linked(v)?;
                Some((n.clone(), at, v.dynamic.clone()?))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        (
            wanted,
            inner.dynamic().gate(),
            inner.dynamic().logins(),
            env.policy.insecure_loopback,
        )
    };
    let _shared = gate.read().await;
    let mut cache: BTreeMap<String, BTreeMap<String, SecretValue>> = BTreeMap::new();
    let mut reads: Vec<Value> = Vec::new();
    let mut out = Vec::with_capacity(wanted.len());
    let mut failure = None;
    for (name, at, src) in wanted {
        let got = match DynamicSpec::from_source(&src, same_user) {
            Ok(spec) => {
                let none = CgWait::NONE;
                fetch_kv(&spec, &logins, &name, &mut cache, &mut reads, &none).await
            }
            Err(e) => Err(e),
        };
        match got {
            Ok(v) => out.push(crate::broker::state::ChosenValue {
                origin: "kv-without-factor",
                variable: Some(name),
                stored_at: Some(at),
                ..crate::broker::state::ChosenValue::of(Some(v.expose()))
            }),
            Err(e) => {
                failure = Some(op_err(&name, &e));
                break;
            }
        }
    }
    let mut inner = broker.lock();
    // Each read on the record, as a spawn's are (never a value).
    for mut r in reads {
        if let Value::Object(m) = &mut r {
            m.insert("environment".into(), json!(environment));
            m.insert("for".into(), json!("card"));
        }
        inner.audit("kv_fetch", r);
    }
    match failure {
        Some(e) => Err(inner.names().hide_names_in_error(environment, vars, e)),
        None => Ok(out),
    }
}

#[cfg_attr(not(feature = "openbao"), allow(unused_variables))]
async fn fetch_kv(
    spec: &DynamicSpec,
    logins: &Logins,
    variable: &str,
    cache: &mut BTreeMap<String, BTreeMap<String, SecretValue>>,
    reads: &mut Vec<Value>,
    wait: &CgWait<'_>,
) -> Result<SecretValue, DynamicError> {
    let key = spec.opt("key").unwrap_or(variable).to_owned();
    let cache_key = spec.shown_target();
    if !cache.contains_key(&cache_key) {
        #[cfg(feature = "openbao")]
        {
            let r = crate::dynamic::openbao::read_kv_waiting(spec, logins, wait).await?;
            reads.push(json!({
                "target": cache_key,
                "namespace": spec.opt("namespace"),
                "version": r.version,
                "request_id": r.request_id,
            }));
            cache.insert(cache_key.clone(), r.fields);
        }
        #[cfg(not(feature = "openbao"))]
        {
            let _ = (reads, wait);
        }
        #[cfg(not(feature = "openbao"))]
        {
            return Err(DynamicError::Unsupported("openbao-kv"));
        }
    }
    cache
        .get(&cache_key)
        .and_then(|m| m.get(&key))
        .cloned()
        .ok_or_else(|| DynamicError::Refused {
            engine: "openbao-kv",
            target: cache_key.clone(),
            action: "provide the value",
            reason: format!(
                "the secret has no field {:?}",
                keyveil_proto::display::clip(&key, 64)
            ),
        })
}

fn audit_failure(
    broker: &Broker,
    grant_id: &str,
    environment: &str,
    variable: &str,
    spec: &DynamicSpec,
    e: &DynamicError,
) {
    tracing::warn!(variable, engine = spec.engine.name(), error = %e, "dynamic credential failed");
    broker.lock().audit(
        "dynamic_mint_failed",
        json!({
            "grant_id": grant_id,
            "environment": environment,
            "variable": variable,
            "engine": spec.engine.name(),
            "target": spec.shown_target(),
            "error": e.to_string(),
        }),
    );
}

/// Ends the credentials of grants that are revoked, expired, forgotten, or used up with no run
/// left; writes background results into the audit log. Called from the broker's tick.
pub(crate) fn sweep(inner: &mut Inner) {
    let done = inner.dynamic().drain_outbox();
    for (event, fields) in done {
        inner.audit(event, fields);
    }
    #[cfg(feature = "openbao")]
    if inner.vault().is_ok() {
        inner.dynamic().logins().renew_due();
    }
    if inner.dynamic().is_empty() {
        return;
    }
    let now = Timestamp::now();
    let ended: Vec<String> = inner
        .dynamic()
        .holders()
        .filter(|(id, last_use)| match inner.grants().get(id) {
            None => true,
            Some(g) => {
                g.revoked()
                    || g.expires_at() <= now
                    || (g.uses_left() == Some(0)
                        && !inner.runs().grant_has_runs(id)
                        && last_use.elapsed().as_millis() > USED_UP_GRACE_MS)
            }
        })
        .map(|(id, _)| id.to_owned())
        .collect();
    for id in ended {
        inner.end_grant_credentials(&id);
    }
}

/// After an unlock: reap, in the background, the users of every dynamic variable's prefix that
/// this broker does not hold (a crashed broker's leftovers). Results are audited by [`sweep`].
pub(crate) fn on_unlock(broker: &Arc<Broker>) {
    #[cfg(feature = "openbao")]
    {
        let leases = {
            let inner = broker.lock();
            inner.dynamic().logins().reopen();
            inner.dynamic().held_leases()
        };
        super::lease_reap::on_unlock(broker, leases);
    }
    let (specs, keep, outbox, gate) = {
        let inner = broker.lock();
        let Ok(vault) = inner.vault() else { return };
        let mut seen = std::collections::BTreeSet::new();
        let specs: Vec<(String, DynamicSpec)> = vault
            .data()
            .environments
            .iter()
            .flat_map(|(en, e)| {
                e.variables.iter().filter_map(move |(vn, v)| {
                    v.dynamic
                        .as_ref()
                        .map(|d| (format!("{en}/{vn}"), d, e.policy.insecure_loopback))
                })
            })
            .filter_map(|(label, d, same_user)| {
                DynamicSpec::from_source(d, same_user)
                    .ok()
                    .map(|s| (label, s))
            })
            .filter(|(_, s)| s.engine.mints())
            .filter(|(_, s)| seen.insert((s.engine.name(), s.shown_target(), s.prefix.clone())))
            .collect();
        (
            specs,
            inner.dynamic().held_users(),
            inner.dynamic().outbox(),
            inner.dynamic().gate(),
        )
    };
    if specs.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let _exclusive = gate.write().await;
        for (label, spec) in specs {
            let r = crate::dynamic::reap(&spec, &keep).await;
            let entry = match r {
                Ok(0) => continue,
                Ok(n) => (
                    "dynamic_reaped",
                    json!({"variable": label, "engine": spec.engine.name(), "target": spec.shown_target(), "count": n}),
                ),
                Err(e) => {
                    tracing::warn!(variable = label, error = %e, "cannot reap leftover dynamic credentials");
                    (
                        "dynamic_reap_failed",
                        json!({"variable": label, "engine": spec.engine.name(), "target": spec.shown_target(), "error": e.to_string()}),
                    )
                }
            };
            push_outbox(&outbox, entry.0, entry.1);
        }
    });
}

/// Waits (at most `limit`) for background revocations to finish: called when the broker stops,
/// so `daemon stop` leaves nothing behind at the sources.
pub(crate) async fn settle(broker: &Broker, limit: std::time::Duration) {
    let inflight = broker.lock().dynamic().inflight();
    let t0 = Instant::now();
    while inflight.load(std::sync::atomic::Ordering::SeqCst) > 0 && t0.elapsed() < limit {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Their results into the audit log while it is still open.
    sweep(&mut broker.lock());
}

/// At lock and at broker stop: waits (at most `limit`) for the revocations in flight (they may
/// need a login's token), then revokes every OpenBao token the broker got by logging in and
/// refuses new logins until the next unlock. Returns how many tokens were revoked and how many
/// could not be (those end at their TTL); the accessors go to the log, never the tokens.
pub(crate) async fn close_logins(broker: &Broker, limit: std::time::Duration) -> (usize, usize) {
    let (inflight, logins) = {
        let inner = broker.lock();
        (inner.dynamic().inflight(), inner.dynamic().logins())
    };
    let t0 = Instant::now();
    while inflight.load(std::sync::atomic::Ordering::SeqCst) > 0 && t0.elapsed() < limit {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    #[cfg(feature = "openbao")]
    {
        let (revoked, failed) = logins.close().await;
        if !revoked.is_empty() || failed > 0 {
            tracing::info!(?revoked, failed, "OpenBao login tokens revoked");
        }
        (revoked.len(), failed)
    }
    #[cfg(not(feature = "openbao"))]
    {
        let _ = logins;
        (0, 0)
    }
}
