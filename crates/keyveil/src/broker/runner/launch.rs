//! Step 3 of the run path: the values, the child's environment, its private TMPDIR and
//! egress proxy, the spawn, the run recorded.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::broker::access::{self};
use crate::broker::spawn::{self, SpawnSpec};
use crate::broker::state::{Inner, LiveRun, OpError, new_id};
use keyveil_proto::{ErrorCode, Reply, RunRequest};

use super::admit::Admitted;
use super::child_env::{child_env, never_passed};
use super::wait::InputStamps;

/// A run spawned by step 3 ([`launch`]): what relaying or adopting it needs.
pub(crate) struct Launched {
    /// Run id.
    pub(crate) run_id: String,
    /// The grant it runs under.
    pub(crate) grant_id: String,
    /// The spawned tree.
    pub(crate) started: spawn::Started,
    /// Kill it after this long.
    pub(crate) timeout: Duration,
    /// Redacts its output.
    pub(crate) redactor: crate::redact::Redactor,
    /// Matches its values in the write-side scan: whole values only ([`scan_redactor`]).
    pub(crate) scan_redactor: crate::redact::Redactor,
    /// Cancelled when its grant ends.
    pub(crate) cancel: CancellationToken,
    /// When it was spawned (the write-side scan looks at what changed since).
    pub(crate) started_at: std::time::SystemTime,
    /// Its private TMPDIR.
    pub(crate) tmp_dir: Option<crate::broker::private_tmp::RunTmp>,
    /// Its place in the watch of its working directory, when there is one (taken before the
    /// spawn; the write-side scan then examines what the run's events name).
    pub(crate) watch: Result<crate::scan::watch::Ticket, &'static str>,
    /// argv as the requester gave it, whole values masked (`card_redact.rs`) when the
    /// requester may hold values ([`access::strings_masked`]).
    pub(crate) shown_argv: Vec<String>,
    /// What the grant's inputs were when the run was checked: checked once more when it ends
    /// (`relay::end_if_inputs_changed`).
    pub(crate) stamps: InputStamps,
}

/// Step 3: the values (stored and minted), the environment built from scratch, a private
/// TMPDIR, the spawn of the verified executable under the run's reaper, and the run recorded
/// (live runs, audit).
pub(super) async fn launch(
    broker: &Arc<Broker>,
    req: &mut RunRequest,
    a: &Admitted,
    grant_id: String,
    exe: std::fs::File,
    stamps: InputStamps,
) -> Result<Launched, Reply> {
    let dynamic = dynamic_values(broker, req, a, &grant_id).await?;
    let Prepared {
        mut values,
        cancel,
        redactor,
        scan_redactor,
        shown_argv,
        masked,
        mut env,
        bound,
        extra_roots,
    } = prepare(broker, req, a, &grant_id, dynamic).map_err(OpError::reply)?;
    req.env.clear();
    let run_id = new_id("r-");
    let timeout = Duration::from_secs(
        req.timeout_seconds
            .unwrap_or(spawn::DEFAULT_TIMEOUT_SECONDS)
            .clamp(1, 86_400),
    );
    let tmp_dir = private_tmp(broker, &run_id, &mut env).map_err(OpError::reply)?;
    let egress = start_egress(
        broker,
        &run_id,
        &tmp_dir,
        Binding {
            bound,
            extra_roots,
            cancel: &cancel,
        },
        &mut values,
        &mut env,
    )
    .await?;
    let spec = SpawnSpec {
        argv: std::mem::take(&mut req.argv),
        cwd: a.cwd.clone(),
        env,
        values,
        stdin: req.stdin.take(),
        exe,
        sealed: stamps.2.clone(),
    };
    let watch = crate::broker::tree_watches::ticket(broker, &a.cwd, &grant_id).await;
    let started_at = std::time::SystemTime::now();
    let started = spawn_child(
        broker,
        spec,
        (&run_id, &grant_id),
        (&shown_argv, masked),
        &tmp_dir,
    )
    .map_err(OpError::reply)?;
    if let Some(e) = &egress {
        e.set_root(started.pid);
    }
    record_start(
        broker,
        a,
        (&run_id, &grant_id),
        (&shown_argv, masked),
        &started,
        egress,
    );
    Ok(Launched {
        run_id,
        grant_id,
        started,
        timeout,
        redactor,
        scan_redactor,
        cancel,
        started_at,
        tmp_dir: Some(tmp_dir),
        watch,
        shown_argv,
        stamps,
    })
}

/// What the child gets and how its output is shown, prepared under the grant before anything
/// is spawned (see [`prepare`]).
struct Prepared {
    /// The values injected (stored and minted), opened, by real name.
    values: Vec<(String, keyveil_vault::SecretValue)>,
    /// The grant's revocation token.
    cancel: CancellationToken,
    /// The run's redactor.
    redactor: crate::redact::Redactor,
    /// The write-side scan's matcher ([`scan_redactor`]).
    scan_redactor: crate::redact::Redactor,
    /// argv with every whole value masked when `masked`.
    shown_argv: Vec<String>,
    /// The requester may hold values: its strings are matched against values where shown
    /// ([`access::strings_masked`]).
    masked: bool,
    /// The child's environment, without the values.
    env: Vec<(String, String)>,
    /// The host-bound variables among the values.
    bound: crate::broker::egress::Bound,
    /// The environment's extra upstream roots for the egress proxy.
    extra_roots: Option<String>,
}

/// Just-in-time credentials: minted at the grant's first spawn (reused after), provider
/// values fetched now. Defence in depth, as for stored values: no code-loading name from a
/// source (a KV field, a minted credential's companion variables).
async fn dynamic_values(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    grant_id: &str,
) -> Result<crate::broker::leases::DynamicValues, Reply> {
    let mut dynamic =
        match crate::broker::leases::values_for_grant(broker, grant_id, &req.environment, &a.vars)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                let e = broker
                    .lock()
                    .names()
                    .hide_names_in_error(&req.environment, &a.vars, e);
                return Err(e.reply());
            }
        };
    dynamic.values.retain(|(k, _)| !never_passed(k));
    dynamic.env.retain(|(k, _)| !never_passed(k));
    Ok(dynamic)
}

/// Under the grant, with an environment built from scratch: the audit entries' room checked,
/// the stored values taken sealed and opened after the lock is released, the values the
/// agent could have chosen checked on these very copies (another one ends the grant), the
/// redactor, argv as shown, the child's environment, the host-bound variables.
fn prepare(
    broker: &Arc<Broker>,
    req: &RunRequest,
    a: &Admitted,
    grant_id: &str,
    dynamic: crate::broker::leases::DynamicValues,
) -> Result<Prepared, OpError> {
    let Admitted {
        cwd,
        pass_env,
        vars,
        ..
    } = a;
    let mut inner = broker.lock();
    // The run's start and end entries must fit: refused before anything is spawned. (The
    // start entry holds the argv, shown with markers: allow twice its JSON length.)
    let entry_len = serde_json::to_string(&req.argv).map_or(0, |j| j.len()) * 2 + cwd.len() + 2048;
    inner.audit_log_mut().ready_for("run_start", entry_len)?;
    // Only the variables this run injects, still sealed: they are opened, and the
    // redactor built, after the lock is released (with thousands of values, or a large
    // one, that is the slow part of a run, and nothing else may wait for it).
    let sealed = match inner.sealed_values(&req.environment, vars) {
        // Defence in depth for vaults written before such names were refused.
        Ok(v) => v
            .into_iter()
            .filter(|(k, _)| !never_passed(k))
            .collect::<Vec<_>>(),
        Err(e) => {
            return Err(inner.names().hide_names_in_error(&req.environment, vars, e));
        }
    };
    // Markers and write-side leaks name variables as clients see them (aliases where
    // the policy hides names).
    let mut shown: Vec<String> = sealed
        .iter()
        .map(|(k, _)| inner.names().shown_name(&req.environment, k))
        .collect();
    shown.extend(
        dynamic
            .values
            .iter()
            .map(|(k, _)| inner.names().shown_name(&req.environment, k)),
    );
    let cancel = inner
        .grants()
        .get(grant_id)
        .map(|g| g.cancel().clone())
        .unwrap_or_default();
    // Only when the requester may hold values (`AccessReq::masked`): an agent's own argv is
    // shown as given, since masking a planted guess would confirm it; a requester the broker
    // cannot place is refused.
    let masked = a.masked;
    let shown_argv = shown_argv(&mut inner, &req.argv, masked);
    let mut env = child_env(&inner, &req.environment, &req.env, pass_env);
    env.extend(dynamic.env);
    // Values the agent could have chosen are bound by digest: checked below on these very
    // copies, so a `set` racing the run cannot slip an unapproved value in, nor a KV server
    // linked without the factor hand this run another value than the card quoted.
    let names: Vec<String> = sealed
        .iter()
        .map(|(k, _)| k)
        .chain(dynamic.values.iter().map(|(k, _)| k))
        .cloned()
        .collect();
    let expected = access::chosen_expected(&inner, grant_id, &names);
    drop(inner);
    let mut values = Vec::with_capacity(sealed.len() + dynamic.values.len());
    for (k, v) in sealed {
        match v.open() {
            Ok(v) => values.push((k, v)),
            Err(e) => return Err(crate::broker::state::sealed_value_error(e)),
        }
    }
    values.extend(dynamic.values);
    if let Err(why) = access::check_chosen_values(&expected, &values) {
        let mut inner = broker.lock();
        inner.revoke(grant_id, "value changed since approval");
        inner.audit("value_changed", json!({"grant_id": grant_id, "why": why}));
        drop(inner);
        broker.notify();
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("{why}; grant {grant_id} was ended"),
        )
        .hint("a new approval is needed: call run again to ask the user"));
    }
    let crate::broker::redactor_cache::Kept {
        run: redactor,
        scan: scan_redactor,
    } = run_redactors(broker, grant_id, shown, &values);
    // Host-bound variables (`docs/egress.md`): the child gets a placeholder, the run's
    // egress proxy the value.
    let (bound, extra_roots) = bound_values(&broker.lock(), &req.environment, &values);
    Ok(Prepared {
        values,
        cancel,
        redactor,
        scan_redactor,
        shown_argv,
        masked,
        env,
        bound,
        extra_roots,
    })
}

/// argv as `status`, `logs` and the audit show it. argv is the requester's, never matched
/// against values for the grant (see `access::find_or_create_request`); shown, when `masked`,
/// with every whole value masked as its card showed it: a granted child may have put one
/// there, and the agent reads those listings without a factor (`card_redact.rs`,
/// `redteam_s9.rs`); otherwise with the values keyveil made at random masked.
fn shown_argv(inner: &mut Inner, argv: &[String], masked: bool) -> Vec<String> {
    let redactor = inner.card_matcher(masked);
    match redactor {
        Some(r) => argv
            .iter()
            .map(|w| crate::broker::card_redact::redact_str(&r, w))
            .collect(),
        None => argv.to_vec(),
    }
}

/// A private TMPDIR, scanned and deleted when the run ends (see `private_tmp.rs`), set in
/// `env`. Fails closed: without it, temporary files would land where nothing scans them.
fn private_tmp(
    broker: &Broker,
    run_id: &str,
    env: &mut Vec<(String, String)>,
) -> Result<crate::broker::private_tmp::RunTmp, OpError> {
    match crate::broker::private_tmp::create(&broker.paths, run_id) {
        Ok(d) => {
            crate::broker::private_tmp::point_env_at(env, &d.dir);
            Ok(d)
        }
        Err(e) => Err(OpError::new(
            ErrorCode::Failed,
            format!("cannot create the run's private TMPDIR: {e}; nothing was started"),
        )
        .hint(format!(
            "check that {} is a directory you own (mode 0700); remove whatever is there otherwise",
            broker.paths.home.join("tmp").display()
        ))),
    }
}

/// The host-bound variables of a run and what its egress proxy needs besides.
struct Binding<'a> {
    /// The bound variables (see [`bound_values`]).
    bound: crate::broker::egress::Bound,
    /// The environment's extra upstream roots.
    extra_roots: Option<String>,
    /// The grant's revocation token (it closes the proxy).
    cancel: &'a CancellationToken,
}

/// The egress proxy of a run with bound variables: started before the child (its address
/// and CA bundle are in the child's environment), closed at the run's end or its grant's.
/// The child's copies of the bound values become placeholders. `None`: nothing is bound.
/// A proxy that cannot start removes the TMPDIR and fails the run.
async fn start_egress(
    broker: &Arc<Broker>,
    run_id: &str,
    tmp_dir: &crate::broker::private_tmp::RunTmp,
    b: Binding<'_>,
    values: &mut [(String, keyveil_vault::SecretValue)],
    env: &mut Vec<(String, String)>,
) -> Result<Option<Arc<crate::broker::egress::RunEgress>>, Reply> {
    if b.bound.is_empty() {
        return Ok(None);
    }
    match crate::broker::egress::start(
        broker,
        run_id,
        b.bound,
        b.extra_roots.as_deref(),
        b.cancel,
        &tmp_dir.dir,
    )
    .await
    {
        Ok((proxy, placeholders, proxy_env)) => {
            for (name, p) in placeholders {
                if let Some(slot) = values.iter_mut().find(|(k, _)| *k == name) {
                    slot.1 = keyveil_vault::SecretValue::new(p);
                }
            }
            crate::broker::egress::set_env(env, proxy_env);
            Ok(Some(Arc::new(proxy)))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp_dir.dir);
            Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot start the run's egress proxy: {e}; nothing was started"),
            )
            .hint("a variable of this run is bound to hosts (`keyveil policy show ENV`); check the egress-roots policy, or unbind it")
            .reply())
        }
    }
}

/// The spawn of the verified executable under the run's reaper. A spawn that fails removes
/// the TMPDIR and is audited (`run_failed`).
fn spawn_child(
    broker: &Broker,
    mut spec: SpawnSpec,
    (run_id, grant_id): (&str, &str),
    (shown_argv, masked): (&[String], bool),
    tmp_dir: &crate::broker::private_tmp::RunTmp,
) -> Result<spawn::Started, OpError> {
    spawn::start(&mut spec).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp_dir.dir);
        let msg = format!(
            "cannot start \"{}\": {e}",
            shown_argv
                .first()
                .map(|a| keyveil_proto::display::visible(a))
                .unwrap_or_default()
        );
        broker.lock().audit_as(
            "run_failed",
            json!({"run_id": run_id, "grant_id": grant_id, "argv": shown_argv, "error": e.to_string()}),
            masked,
        );
        OpError::new(ErrorCode::Failed, msg)
            .hint("check that the command exists and is executable")
    })
}

/// The run recorded: among the live runs (with its egress proxy) and in the audit
/// (`run_start`).
fn record_start(
    broker: &Broker,
    a: &Admitted,
    (run_id, grant_id): (&str, &str),
    (shown_argv, masked): (&[String], bool),
    started: &spawn::Started,
    egress: Option<Arc<crate::broker::egress::RunEgress>>,
) {
    let mut inner = broker.lock();
    inner.runs_mut().insert(LiveRun::new(
        run_id.to_owned(),
        grant_id.to_owned(),
        started.pid,
        shown_argv.to_vec(),
        started.watch_end(),
        egress,
    ));
    inner.audit_as(
        "run_start",
        json!({
            "run_id": run_id,
            "grant_id": grant_id,
            "client": a.ask.client.scope_key(),
            "peer_pid": a.ask.peer.pid(),
            "environment": a.ask.environment,
            "variables": a.vars,
            "argv": shown_argv,
            "cwd": a.cwd,
            "pid": started.pid,
        }),
        masked,
    );
}

/// The write-side scan's matcher of a run's `values` (named `shown`): every known form of each
/// whole value, line or structured leaf that no agent can guess ([`crate::broker::card_redact::guessable`]),
/// and no fragment. The scan reads places the agent writes too (the cwd, `$HOME`, the run's
/// TMPDIR) and names the files it finds: naming which planted file holds a 12-byte fragment
/// after a known part, or a guessable value among planted candidates, would answer the agent's
/// guesses one run at a time (`tests/it/redteam_s9.rs`). Fragments and guessable values a run
/// writes are left to `keyveil sweep`, whose findings reach only the human
/// (`docs/write-side.md`).
pub(crate) fn scan_redactor(
    shown: &[String],
    values: &[(String, keyveil_vault::SecretValue)],
) -> crate::redact::Redactor {
    let keep = |atom: &[u8]| !crate::broker::card_redact::guessable(atom);
    crate::redact::Redactor::whole_values(
        shown
            .iter()
            .zip(values.iter().map(|(_, v)| v.expose().as_bytes())),
        &keep,
    )
}

/// The redactors of a run under `grant_id` that injects `values`, named `shown` (its output's
/// and its write-side scan's): the grant's kept ones when they were built from exactly these
/// names and values, else new ones, built outside the broker's lock and kept for the grant's
/// next runs (`redactor_cache.rs`). Not kept when the grant ended or the vault locked while
/// they were built.
fn run_redactors(
    broker: &Broker,
    grant_id: &str,
    shown: Vec<String>,
    values: &[(String, keyveil_vault::SecretValue)],
) -> crate::broker::redactor_cache::Kept {
    let key = crate::broker::redactor_cache::key(
        shown
            .iter()
            .zip(values)
            .map(|(n, (_, v))| (n.as_str(), v.expose().as_bytes())),
    );
    crate::broker::ci::note_values(broker, values);
    let now = std::time::Instant::now();
    if let Some(kept) = broker.lock().run_redactors_mut().get(grant_id, &key, now) {
        return kept;
    }
    let scan = scan_redactor(&shown, values);
    let run = crate::redact::Redactor::new(
        shown
            .into_iter()
            .zip(values.iter().map(|(_, v)| v.expose().as_bytes())),
    );
    let mut inner = broker.lock();
    let live = inner.is_unlocked() && inner.grants().get(grant_id).is_some_and(|g| !g.revoked());
    let kept = crate::broker::redactor_cache::Kept { run, scan };
    if live {
        inner
            .run_redactors_mut()
            .put(grant_id, key, kept.clone(), std::time::Instant::now());
    }
    kept
}

/// The run's bound variables among `values` (real name, shown name, value, destinations), and
/// the environment's extra upstream roots.
fn bound_values(
    inner: &Inner,
    env: &str,
    values: &[(String, keyveil_vault::SecretValue)],
) -> (crate::broker::egress::Bound, Option<String>) {
    let Some(policy) = inner
        .vault()
        .ok()
        .and_then(|v| v.data().environments.get(env).map(|e| e.policy.clone()))
    else {
        return (Vec::new(), None);
    };
    let bound = values
        .iter()
        .filter_map(|(k, v)| {
            let hosts = policy.bindings.get(k)?;
            let dests = hosts
                .iter()
                .filter_map(|h| crate::broker::egress::Dest::parse(h).ok())
                .collect();
            Some(crate::broker::egress::BoundVar {
                name: k.clone(),
                shown: inner.names().shown_name(env, k),
                value: v.clone(),
                dests,
                bound_in: policy.bound_in_of(k),
            })
        })
        .collect();
    (bound, policy.egress_roots)
}
