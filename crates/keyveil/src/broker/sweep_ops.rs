//! The broker's side of `keyveil sweep` (see `docs/sweep.md`).
//!
//! Only the broker holds values, so only the broker sweeps: it checks the human's factor (the
//! strongest any environment's rule changes need, never less than a TOTP code), builds a
//! redactor from every stored value, every dynamic credential held by a live grant and every
//! dynamic variable's admin credential, runs [`crate::sweep::sweep_with`] on a blocking thread, and
//! seals the findings for the CLI that proved the factor. A sweep is an oracle ("does this file
//! hold a value?"), so it never answers without the factor, and nothing an agent can read
//! (the socket, the audit log, listings) ever says *where* a value was found.
//!
//! With `contain`, for each variable found: its live grants are revoked (their runs killed;
//! dynamic credentials destroyed at their source by `Inner::revoke`), it is marked compromised
//! in the vault ([`keyveil_vault::Compromise`]: when, kinds of place, how many copies), and an
//! `incident` is audited.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use keyveil_vault::{Compromise, FactorKind};
use serde_json::json;

use super::Broker;
use super::card_redact::guessable;
use super::factor_ops::{self, Proof};
use super::state::{Inner, OpError, OpResult, RunsStopped};
use super::sweep_scrub::{
    FORMER, FORMER_UNVERIFIED, Scrubbers, is_former, scrub_after, scrubbable,
};
use crate::factor_proof;
use crate::sweep::wire::{Contained, SweepOutcome};
use crate::sweep::{Finding, SweepPlan};
use keyveil_proto::ErrorCode;
use keyveil_proto::op;

/// The kind of place the compromise mark and the `incident` give every copy found in a file
/// changed within [`op::Sweep::recent_seconds`] (counted once, whatever their number).
pub(crate) const RECENT_KIND: &str = "recent";
/// Default of [`op::Sweep::recent_seconds`].
const RECENT_SECONDS: u64 = 86_400;
/// Default and largest [`op::Sweep::max_seconds`].
const MAX_SECONDS: (u64, u64) = (600, 3600);

/// What a redactor name stands for: `(environment, real name, shown name, credential,
/// guessable)` (see [`guessable`]).
pub(super) type Key = (String, String, String, &'static str, bool);
/// Redactor names and the bytes of what they stand for.
type Secrets = Vec<(String, zeroize::Zeroizing<Vec<u8>>)>;

fn usage(m: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Usage, m)
}

/// Checks the request's paths and makes the plan.
pub(super) fn plan_of(req: &op::Sweep) -> OpResult<SweepPlan> {
    if req.roots.len() > op::MAX_SWEEP_ROOTS {
        return Err(usage(format!(
            "at most {} paths per sweep",
            op::MAX_SWEEP_ROOTS
        )));
    }
    let abs = |p: &str| -> OpResult<PathBuf> {
        let pb = PathBuf::from(p);
        if pb.is_absolute() {
            Ok(pb)
        } else {
            Err(usage("sweep paths must be absolute")
                .hint("the CLI makes them absolute; use `keyveil sweep PATH`"))
        }
    };
    Ok(SweepPlan {
        roots: req.roots.iter().map(|r| abs(r)).collect::<OpResult<_>>()?,
        home: req.home.as_deref().map(abs).transpose()?,
        recent: Duration::from_secs(req.recent_seconds.unwrap_or(RECENT_SECONDS)),
        max_duration: Duration::from_secs(
            req.max_seconds
                .unwrap_or(MAX_SECONDS.0)
                .clamp(1, MAX_SECONDS.1),
        ),
    })
}

/// The factor a sweep needs: the strongest that a rule change of any environment needs.
fn required_factor(broker: &Broker) -> OpResult<FactorKind> {
    let envs: Vec<String> = broker
        .lock()
        .vault()?
        .data()
        .environments
        .keys()
        .cloned()
        .collect();
    Ok(envs.iter().fold(FactorKind::Totp, |k, e| {
        factor_ops::stronger(k, factor_ops::rule_change_factor(broker, e))
    }))
}

/// Adds `bytes` (unless empty) to `out` under its redactor name, `ENV/SHOWN` for a stored value
/// and `ENV/SHOWN#WHAT` for the others, and what the name stands for to `keys`.
fn push(
    inner: &Inner,
    (out, keys): (&mut Secrets, &mut BTreeMap<String, Key>),
    (env, real, what): (&str, &str, &'static str),
    bytes: &[u8],
) {
    if bytes.is_empty() {
        return;
    }
    let shown = inner.names().shown_name(env, real);
    let key = match what {
        "value" => format!("{env}/{shown}"),
        _ => format!("{env}/{shown}#{what}"),
    };
    let k = (
        env.to_owned(),
        real.to_owned(),
        shown,
        what,
        guessable(bytes),
    );
    keys.insert(key.clone(), k);
    out.push((key, zeroize::Zeroizing::new(bytes.to_vec())));
}

/// Every secret the broker holds, named `ENV/SHOWN` (`ENV/SHOWN#minted`, `ENV/SHOWN#admin`,
/// `ENV/SHOWN#former`) for the redactor, with what each name stands for.
fn secrets(inner: &Inner) -> OpResult<(Secrets, BTreeMap<String, Key>)> {
    let v = inner.vault()?;
    let mut out: Secrets = Vec::new();
    let mut keys = BTreeMap::new();
    for (env, e) in &v.data().environments {
        for (name, var) in &e.variables {
            if let Some(val) = var.value.as_ref().and_then(|s| s.open().ok()) {
                let what = (env.as_str(), name.as_str(), "value");
                push(inner, (&mut out, &mut keys), what, val.expose().as_bytes());
            }
            if let Some(d) = &var.dynamic {
                let what = (env.as_str(), name.as_str(), "admin");
                push(
                    inner,
                    (&mut out, &mut keys),
                    what,
                    d.admin.expose().as_bytes(),
                );
            }
        }
    }
    for (grant, var, val) in inner.dynamic().held_values() {
        if let Some(g) = inner.grants().get(&grant) {
            let what = (g.environment(), var.as_str(), "minted");
            push(inner, (&mut out, &mut keys), what, val.expose().as_bytes());
        }
    }
    // The value a sweep found of a variable rotated since (a spent mark), unless a secret held
    // now has those very bytes (an agent's first value of another variable may copy a guess): a
    // scrub rewrites former values, and must never rewrite a current one. Nor a part of one: a
    // former value stored with the factor that shares a variant with a current secret, either
    // way (a database URL rotated to a new host with the same password: the password is a
    // variant of both), is left out too. Not for a former value stored without the factor: the
    // agent may have chosen it to hold a guess, and leaving it out would answer the guess; a
    // scrub rewrites those only when the sweep contained nothing ([`scrub_after`]), and a copy
    // of a guess that shares a current secret's variant is a copy of that secret, contained.
    let mut current: Option<crate::redact::Redactor> = None;
    let mut shares_a_part = |old: &[u8]| -> bool {
        let current = current.get_or_insert_with(|| {
            crate::redact::Redactor::new(out.iter().map(|(k, v)| (k.clone(), v.as_slice())))
        });
        if !current.find_leaks(old).is_empty() {
            return true;
        }
        let this = crate::redact::Redactor::new([("former", old)]);
        out.iter().any(|(_, b)| !this.find_leaks(b).is_empty())
    };
    let mut formers = Vec::new();
    for (env, e) in &v.data().environments {
        for (name, var) in &e.variables {
            let Some(m) = mark_of(v.data(), env, name, var)
                .filter(|m| var.rotated_at.is_some_and(|r| r > m.found_at))
            else {
                continue;
            };
            let former = m.value.as_ref().and_then(|s| s.open().ok());
            if let Some(old) = former
                && !out
                    .iter()
                    .any(|(_, b)| b.as_slice() == old.expose().as_bytes())
                && !(m.value_by_factor && shares_a_part(old.expose().as_bytes()))
            {
                let what = if m.value_by_factor {
                    FORMER
                } else {
                    FORMER_UNVERIFIED
                };
                formers.push((env.as_str(), name.as_str(), what, old));
            }
        }
    }
    for (env, name, what, old) in formers {
        let what = (env, name, what);
        push(inner, (&mut out, &mut keys), what, old.expose().as_bytes());
    }
    Ok((out, keys))
}

/// Checks the human's factor for a sweep: the transit key and nonce the findings are sealed
/// with.
pub(super) async fn authorize(
    broker: &Arc<Broker>,
    req: &op::Sweep,
    plan: &SweepPlan,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<(factor_proof::FactorKey, [u8; factor_proof::LEN])> {
    let required = required_factor(broker)?;
    let verified = factor_ops::verify_factor(
        broker,
        Proof::from_request(req.factor.clone(), digest, false),
        required,
        json!({"sweep": {"paths": plan.roots.len(), "contain": req.contain}}),
    )
    .await?;
    verified.transit.ok_or_else(|| {
        OpError::new(
            ErrorCode::Denied,
            "a sweep's findings travel sealed for the keyveil CLI that proved your factor",
        )
        .hint("run `keyveil sweep` at your terminal")
    })
}

/// A redactor of every secret the broker holds (see [`secrets`]), once `event` can be audited.
pub(super) fn redactor(
    broker: &Broker,
    event: &str,
) -> OpResult<(crate::redact::Redactor, BTreeMap<String, Key>)> {
    let (redactor, keys, _) = redactors(broker, event, false)?;
    Ok((redactor, keys))
}

/// [`redactor`], and with `scrub` the scrub's: only the secrets a scrub may rewrite
/// ([`scrubbable`]), each under its marker `ENV/SHOWN`. Both are made from one read of the
/// broker's state, before containment destroys the minted credentials.
fn redactors(
    broker: &Broker,
    event: &str,
    scrub: bool,
) -> OpResult<(
    crate::redact::Redactor,
    BTreeMap<String, Key>,
    Option<Scrubbers>,
)> {
    let mut inner = broker.lock();
    inner.audit_log_mut().ready(event)?;
    let (secrets, keys) = secrets(&inner)?;
    drop(inner);
    let redactor =
        crate::redact::Redactor::new(secrets.iter().map(|(k, v)| (k.clone(), v.as_slice())));
    let of = |keep: &dyn Fn(&str) -> bool| {
        crate::redact::Redactor::new(secrets.iter().filter_map(|(k, v)| {
            let (env, _, shown, what, _) = keys.get(k)?;
            keep(what).then(|| (format!("{env}/{shown}"), v.as_slice()))
        }))
    };
    let scrubbers = scrub.then(|| Scrubbers {
        all: of(&scrubbable),
        gated: of(&|w| w != FORMER_UNVERIFIED && scrubbable(w)),
    });
    Ok((redactor, keys, scrubbers))
}

/// Replaces the redactor's names in `findings` by environment, shown name and credential.
pub(super) fn name_findings(findings: &mut [Finding], keys: &BTreeMap<String, Key>) {
    for f in findings {
        if let Some((env, _, shown, what, _)) = keys.get(&f.variable) {
            f.environment.clone_from(env);
            f.variable.clone_from(shown);
            f.credential = (*what).to_owned();
        }
    }
}

/// Smallest padded size of a sealed sweep reply (plain bytes); larger ones are padded to this
/// times a power of 4.
pub(super) const SEALED_MIN: usize = 16 << 10;
/// Most bytes of JSON that findings in recently changed places (`recent`) take in a sealed
/// reply; the rest are counted in a note ([`cap_recent`]).
pub(super) const RECENT_LISTED: usize = 6 << 10;

/// Keeps the `recent` findings of `report` (copies the agent may have planted) to
/// [`RECENT_LISTED`] bytes of JSON, in order, and counts the others in a note. One guess planted
/// in many files would otherwise make a hit's report outgrow the padding bucket a miss stays in
/// ([`SEALED_MIN`]), and the reply's length, which a relay at the socket sees, would say
/// whether it matched. Containment and the scrub use every finding; only the listing is cut.
pub(super) fn cap_recent(report: &mut crate::sweep::SweepReport) {
    let mut spent = 0usize;
    let mut unlisted = 0u64;
    report.findings.retain(|f| {
        if !f.recent {
            return true;
        }
        let n = serde_json::to_vec(f).map_or(usize::MAX, |v| v.len());
        if unlisted == 0 && spent.saturating_add(n) <= RECENT_LISTED {
            spent += n;
            true
        } else {
            unlisted += 1;
            false
        }
    });
    if unlisted > 0 {
        report.notes.push(format!(
            "{unlisted} more copies in places changed in the last day are not listed (a reply that grew with them would tell an agent that planted one guess in many files whether it matched); sweep a narrower path to list them"
        ));
    }
}

/// The padded length of `len` plain bytes: the smallest `min` × 4^k at or above it.
pub(super) fn bucket(len: usize, min: usize) -> usize {
    let mut b = min.max(1);
    while b < len {
        b = b.saturating_mul(4);
    }
    b
}

/// Seals `outcome` for the CLI that proved the factor, its JSON padded with spaces (which JSON
/// ignores) to a fixed bucket ([`bucket`] of `min`): the sealed length says nothing of what
/// was found.
pub(super) fn seal(
    key: &factor_proof::FactorKey,
    nonce: &[u8; factor_proof::LEN],
    outcome: &SweepOutcome,
    min: usize,
) -> OpResult<op::SweepReply> {
    let mut plain = zeroize::Zeroizing::new(serde_json::to_vec(outcome).unwrap_or_default());
    let padded = bucket(plain.len(), min);
    plain.resize(padded, b' ');
    let sealed = factor_proof::seal_in_transit(key, nonce, b"sweep", &plain)
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    Ok(op::SweepReply { sealed })
}

/// `sweep`: see the module docs. Replies [`op::SweepReply`].
///
/// Errors: no factor or a wrong one (`Denied`), a relative path (`Usage`), the audit log not
/// writable (`Failed`: nothing is swept).
pub(crate) async fn sweep(
    broker: &Arc<Broker>,
    req: op::Sweep,
    digest: Option<[u8; factor_proof::LEN]>,
) -> OpResult<op::SweepReply> {
    sweep_with(broker, req, digest, None).await
}

/// [`sweep`], counting its work in `progress` (once the factor is proved).
async fn sweep_with(
    broker: &Arc<Broker>,
    req: op::Sweep,
    digest: Option<[u8; factor_proof::LEN]>,
    progress: Option<Arc<crate::scan::Progress>>,
) -> OpResult<op::SweepReply> {
    let plan = plan_of(&req)?;
    let (key, nonce) = authorize(broker, &req, &plan, digest).await?;
    let scrub = req.contain && req.scrub_transcripts;
    let (redactor, keys, scrubber) = redactors(broker, "sweep", scrub)?;
    let run_plan = plan.clone();
    let mut report = tokio::task::spawn_blocking(move || {
        crate::sweep::sweep_with(&run_plan, &redactor, progress.as_deref())
    })
    .await
    .map_err(|_| {
        OpError::new(
            ErrorCode::Failed,
            "the sweep stopped unexpectedly; nothing was contained",
        )
    })?;
    name_findings(&mut report.findings, &keys);
    let contained = if req.contain {
        contain(broker, &report.findings, &keys).await
    } else {
        Vec::new()
    };
    // After containment: the minted credentials it found are destroyed at their source.
    let scrubbed = match scrubber {
        Some(scrubber) => {
            let home = plan.home.clone();
            Some(scrub_after(&report.findings, home, scrubber, !contained.is_empty()).await)
        }
        None => None,
    };
    // Nothing about what was found: the audit log is readable by every process of the user, an
    // agent included, and a place, a count or even "found or not" would answer "does one of my
    // planted files hold a value" (with --contain the `incident` entries say, one bit a sweep).
    broker.lock().audit(
        "sweep",
        json!({
            "paths": plan.roots.len(),
            "home": plan.home.is_some(),
            "contain": req.contain,
            "truncated": report.truncated,
            "elapsed_ms": report.elapsed_ms,
        }),
    );
    cap_recent(&mut report);
    let mut outcome = SweepOutcome {
        report,
        contained,
        ..SweepOutcome::default()
    };
    if let Some((s, left)) = scrubbed {
        // No count either: guess k planted in k transcripts would be answered by the number
        // of files rewritten. The human's sealed report names each.
        broker.lock().audit("sweep_scrub", json!({"ran": true}));
        outcome.scrubbed = s
            .files
            .into_iter()
            .map(|(p, n)| (p.to_string_lossy().into_owned(), n as u64))
            .collect();
        outcome.scrub_notes = s.notes;
        outcome.scrub_notes.extend(left);
    }
    seal(&key, &nonce, &outcome, SEALED_MIN)
}

/// `sweep` with `progress`: the connection stays open and a [`Reply::SweepProgress`] frame
/// (counts of work done, never of findings) goes out every [`PROGRESS_EVERY`] until the final
/// reply, the same as without progress. Nothing is sent before the factor is proved.
///
/// [`Reply::SweepProgress`]: keyveil_proto::Reply::SweepProgress
pub(crate) async fn serve(
    broker: &Arc<Broker>,
    req: op::Sweep,
    mut framed: tokio_util::codec::Framed<tokio::net::UnixStream, keyveil_proto::FrameCodec>,
) {
    use futures::SinkExt as _;
    use keyveil_proto::{Frame, Reply, Request};
    use std::sync::atomic::Ordering::Relaxed;
    let digest = factor_proof::request_digest(
        &serde_json::to_value(Request::Sweep(req.clone())).unwrap_or_default(),
    );
    let budget_ms = plan_of(&req)
        .map(|p| u64::try_from(p.max_duration.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let progress = Arc::new(crate::scan::Progress::default());
    let start = std::time::Instant::now();
    let work = sweep_with(broker, req, Some(digest), Some(Arc::clone(&progress)));
    tokio::pin!(work);
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                let files = progress.files.load(Relaxed);
                let bytes = progress.bytes.load(Relaxed);
                // Nothing read yet: the factor is still being checked (or was refused).
                if files == 0 && bytes == 0 {
                    continue;
                }
                let p = Reply::SweepProgress(op::SweepProgress {
                    files,
                    bytes,
                    git_objects: progress.objects.load(Relaxed),
                    elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    budget_ms,
                });
                if let Ok(f) = Frame::json(&p) {
                    // A client that went away gets the sweep finished all the same.
                    let _ = framed.send(f).await;
                }
            }
        }
    };
    let reply = match result.and_then(|r| {
        serde_json::to_value(r)
            .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot encode the reply: {e}")))
    }) {
        Ok(data) => Reply::ok(data),
        Err(e) => e.reply(),
    };
    let _ = super::send(&mut framed, &reply).await;
}

/// How often [`serve`] sends progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Contains each variable found: revoke, mark, audit (see the module docs).
pub(super) async fn contain(
    broker: &Arc<Broker>,
    findings: &[Finding],
    keys: &BTreeMap<String, Key>,
) -> Vec<Contained> {
    let now = Timestamp::now();
    let mut out = Vec::new();
    for ((env, real), found) in found_variables(findings, keys) {
        let (mut c, runs) = {
            let mut inner = broker.lock();
            contain_one(&mut inner, &env, &real, &found, now)
        };
        broker.notify();
        c.runs_stopped = RunsStopped::wait(runs).await.runs;
        out.push(c);
    }
    out
}

/// What a sweep found of one variable: the name shown, the kinds of place, the copies.
struct Found {
    shown: String,
    kinds: BTreeSet<String>,
    copies: u64,
}

/// The variables whose current value (or minted credential) `findings` hold, by (environment,
/// real name), with what was found of each. Former values are left out: they were replaced
/// already, there is nothing of the variable's now to contain.
fn found_variables(
    findings: &[Finding],
    keys: &BTreeMap<String, Key>,
) -> BTreeMap<(String, String), Found> {
    let mut found: BTreeMap<(String, String), Found> = BTreeMap::new();
    let real_of: BTreeMap<(&str, &str), &str> = keys
        .values()
        .map(|(e, r, s, ..)| ((e.as_str(), s.as_str()), r.as_str()))
        .collect();
    // Copies in files changed recently (the watch's findings all are) may be the agent's
    // planted guesses: their kinds and number would tell it which guess matched (guess k in k
    // files, or in the k-th kind of place). What an agent can read (the mark in listings and
    // on cards, the `incident`) counts them once, as the kind `recent`; the human's sealed
    // report has every one.
    let mut recent_seen: BTreeSet<(String, String)> = BTreeSet::new();
    for f in findings {
        if is_former(&f.credential) {
            continue;
        }
        let Some(real) = real_of.get(&(f.environment.as_str(), f.variable.as_str())) else {
            continue;
        };
        let id = (f.environment.clone(), (*real).to_owned());
        let e = found.entry(id.clone()).or_insert_with(|| Found {
            shown: f.variable.clone(),
            kinds: BTreeSet::new(),
            copies: 0,
        });
        if f.recent {
            if recent_seen.insert(id) {
                e.kinds.insert(RECENT_KIND.to_owned());
                e.copies += 1;
            }
        } else {
            e.kinds.insert(f.kind.clone());
            e.copies += 1;
        }
    }
    found
}

/// Contains one variable under the broker's lock: revokes its grants, marks it compromised in
/// the vault (saved; the old mark put back when the save fails), audits the `incident`; what
/// was done, and the runs its revoked grants ended (for the caller to wait on, unlocked).
fn contain_one(
    inner: &mut Inner,
    env: &str,
    real: &str,
    found: &Found,
    now: Timestamp,
) -> (
    Contained,
    Vec<tokio::sync::watch::Receiver<Option<super::spawn::TreeEnd>>>,
) {
    let mut c = Contained {
        environment: env.to_owned(),
        variable: found.shown.clone(),
        ..Contained::default()
    };
    let ids: Vec<String> = inner
        .grants()
        .iter()
        .filter(|g| {
            !g.revoked() && g.environment() == env && g.variables().iter().any(|v| v == real)
        })
        .map(|g| g.id().to_owned())
        .collect();
    for id in &ids {
        if inner.revoke(id, "its value was found outside keyveil by a sweep") {
            c.grants_revoked += 1;
        }
    }
    let var = inner
        .vault()
        .ok()
        .and_then(|v| v.data().environments.get(env))
        .and_then(|e| e.variables.get(real));
    c.dynamic = var.is_some_and(|v| v.dynamic.is_some());
    let mark = Compromise {
        found_at: now,
        kinds: found.kinds.iter().cloned().collect(),
        copies: found.copies,
        // Kept for later sweeps once the variable is rotated (`FORMER`).
        value: var.and_then(|v| v.value.clone()),
        value_by_factor: var
            .and_then(|v| v.stored.as_ref())
            .is_some_and(|s| s.factor),
    };
    match inner.vault_mut() {
        Ok(v) => {
            let id = format!("{env}/{real}");
            let before = v.data_mut().compromised.insert(id.clone(), mark);
            match v.save() {
                Ok(()) => c.marked = true,
                Err(e) => {
                    match before {
                        Some(b) => v.data_mut().compromised.insert(id, b),
                        None => v.data_mut().compromised.remove(&id),
                    };
                    c.problems
                        .push(format!("cannot save the mark in the vault: {e}"));
                }
            }
        }
        Err(e) => c.problems.push(e.message.clone()),
    }
    inner.audit(
        "incident",
        json!({
            "environment": env,
            "variable": found.shown,
            "kinds": found.kinds,
            "copies": found.copies,
            "grants_revoked": c.grants_revoked,
            "dynamic": c.dynamic,
            "marked": c.marked,
        }),
    );
    let runs = inner.runs().ended_of(&ids);
    (c, runs)
}

/// The compromise mark filed under `env/real`, if it is `var`'s: a mark older than the variable
/// was made for one of the same name that was removed since. The agent can declare a variable
/// of that name and give it a first value (no factor: nothing is stored); the removed value
/// must not then count as this variable's former value (a scrub would rewrite its copies and
/// confirm the agent's guesses of a value that may still be live where the human moved it),
/// nor its mark flag the new variable (`tests/it/redteam_s9b.rs`).
fn mark_of<'a>(
    data: &'a keyveil_vault::VaultData,
    env: &str,
    real: &str,
    var: &keyveil_vault::Variable,
) -> Option<&'a Compromise> {
    data.compromised
        .get(&format!("{env}/{real}"))
        .filter(|m| m.found_at >= var.created_at)
}

/// The compromise mark of `env/real` as listings show it, unless spent (the value was replaced
/// after the mark).
pub(crate) fn mark(inner: &Inner, env: &str, real: &str) -> Option<op::CompromiseMark> {
    let v = inner.vault().ok()?;
    let var = v.data().environments.get(env)?.variables.get(real)?;
    let m = mark_of(v.data(), env, real, var)?;
    if var.rotated_at.is_some_and(|r| r > m.found_at) {
        return None;
    }
    let hint = if var.dynamic.is_some() {
        "its credentials were destroyed at their source; replace the admin credential if the sweep found it (`keyveil dynamic add`)"
    } else {
        "rotate it at its source, then store the new value: keyveil set ENV NAME"
    };
    Some(op::CompromiseMark {
        found_at: m.found_at,
        kinds: m.kinds.clone(),
        copies: m.copies,
        hint: hint.to_owned(),
    })
}

/// Whether any of `vars` (real names) of `env` carries a live compromise mark.
pub(crate) fn any_compromised(inner: &Inner, env: &str, vars: &[String]) -> bool {
    vars.iter().any(|n| mark(inner, env, n).is_some())
}

#[cfg(test)]
mod tests {
    use super::{bucket, guessable};

    #[test]
    fn sealed_replies_are_padded_to_fixed_buckets() {
        assert_eq!(bucket(10, 16 << 10), 16 << 10);
        assert_eq!(bucket(16 << 10, 16 << 10), 16 << 10);
        assert_eq!(bucket((16 << 10) + 1, 16 << 10), 64 << 10);
        assert_eq!(bucket(300 << 10, 16 << 10), 1 << 20);
    }

    #[test]
    fn short_and_low_entropy_values_are_guessable() {
        assert!(guessable(b"hunter2"));
        assert!(guessable(b"123456789012345678901234")); // 24 digits: 79 bits
        assert!(guessable(b"  correcthorse  "));
        assert!(!guessable(b"sk_live_4eC39HqLyjWDarjtT1zdp7dc"));
        assert!(!guessable(b"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"));
    }
}
