//! [`Inner`], everything behind the broker's mutex: it holds one store per kind of thing
//! ([`Grants`], [`Requests`], [`Runs`], [`FactorState`], [`AuditLog`], [`HeldApprovals`]: each
//! in its own file, with its methods, and none of them knows `Inner`) and the smaller parts
//! (the vault, the approval memory, the dynamic credentials, the card and run redactors).
//! The operations that span several of them are here: the vault and variables, revocation
//! (the grant, its runs, its redactor, its credentials, the audit entry), expiry, whether a
//! requester may hold values, and the audit entries (scrubbed of names and values with the
//! vault's policy and the card matcher, and live runs stopped when one cannot be written).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use keyveil_vault::Vault;
use serde_json::{Value, json};

use keyveil_proto::ErrorCode;

use super::audit::{Appended, AuditLog};
use super::error::{OpError, OpResult, locked, unknown_env};
use super::factor::FactorState;
use super::grants::Grants;
use super::held::HeldApprovals;
use super::memory::ApprovalMemory;
use super::requests::Requests;
use super::runs::Runs;
use crate::broker::card_redact::{self, CardRedactor, WholeValues};

/// Everything behind the broker's mutex. Its fields are private: the rest of the crate goes
/// through the stores' methods (reached with [`Inner::grants`], [`Inner::requests`],
/// [`Inner::runs`], ...) and the operations below that span several of them.
#[derive(Default)]
pub(crate) struct Inner {
    /// The unlocked vault, or `None` while locked.
    vault: Option<Vault>,
    /// The audit writer and what went wrong with the log (`audit.rs`).
    log: AuditLog,
    /// Requests by id, and the next request id (`requests.rs`).
    requests: Requests,
    /// Grants by id (`grants.rs`).
    grants: Grants,
    /// Live runs by id (`runs.rs`).
    runs: Runs,
    /// The factor's guard, a TOTP enrolment in progress, the challenges held (`factor.rs`).
    factor: FactorState,
    /// What was approved and denied before: for the `first-time`, `denied-before` and
    /// `rephrased-denied` flags (`memory.rs`).
    memory: ApprovalMemory,
    /// Request times per real origin (`peer.rs`), and of all clients under the empty key: for
    /// the `burst` flag.
    recent: std::collections::HashMap<String, std::collections::VecDeque<Instant>>,
    /// Dynamic credentials minted for grants (`crate::dynamic`).
    dynamic: crate::dynamic::Registry,
    /// Runs agents asked for while the vault is locked, by id, with when they were last asked
    /// (`locked_asks.rs`); dropped at unlock (the broker that unlocks is a new process).
    locked_asks: BTreeMap<u64, (keyveil_proto::op::LockedAsk, Instant)>,
    /// Approvals held between the factor and the human's yes where names are hidden
    /// (`held.rs`, `held_approvals.rs`).
    held_approvals: HeldApprovals,
    /// The matcher cards and request entries go through (`card_redact.rs`); dropped at `lock`.
    card_redactor: Option<CardRedactor>,
    /// Redactors kept between the runs of live grants (`redactor_cache.rs`): dropped with their
    /// grant, after idling, and when the vault locks.
    run_redactors: crate::broker::redactor_cache::RedactorCache,
    /// Working directories watched between runs (`tree_watches.rs`): dropped with the grants
    /// that ran in them and when the vault locks.
    tree_watches: crate::broker::tree_watches::TreeWatches,
    /// Mount readers that were (or were about to be) written values, by (pid, start time):
    /// they and their descendants may hold values ([`Inner::peer_holds_values`]). Pruned as
    /// they exit.
    value_readers: Vec<(u32, u64)>,
    /// CI mode (`broker/ci`): no factor exists; a request no frozen rule covers is refused.
    ci: bool,
}

/// Whether a requester may hold values ([`Inner::peer_holds_values`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Holds {
    /// It descends from nothing that holds values: its strings are its own.
    No,
    /// It is, or descends from, a live run's process or a mount reader that was written values.
    Yes,
    /// The broker cannot tell (no pid, the process exited or its pid was reused, a parent it
    /// cannot read): the request is refused, since masking its strings would answer planted
    /// guesses and showing them could show a value.
    Unsure,
}

impl Inner {
    /// Whether the process behind `peer` may hold values: it is, or descends from, a live
    /// run's reaper (every process of a run is below it: the reaper is their subreaper) or a
    /// mount reader that was written values (by pid and start time). The whole parent chain is
    /// read from `/proc`; the peer must still be the process that connected (same start
    /// time). Anything that cannot be read is [`Holds::Unsure`].
    pub(crate) fn peer_holds_values(&mut self, peer: &crate::broker::peer::Peer) -> Holds {
        let (Some(pid), Some(start)) = (peer.pid(), peer.start) else {
            return Holds::Unsure;
        };
        let Some(chain) = crate::broker::peer::ancestry(pid) else {
            return Holds::Unsure;
        };
        if chain.first() != Some(&(pid, start)) {
            return Holds::Unsure;
        }
        self.value_readers
            .retain(|(p, s)| crate::broker::mounts::procfs::start_time(*p) == Some(*s));
        let runs = self.runs.pgids();
        if chain
            .iter()
            .any(|link| runs.contains(&link.0) || self.value_readers.contains(link))
        {
            Holds::Yes
        } else {
            Holds::No
        }
    }
}

impl Inner {
    /// An empty state whose request ids start at `next` and are kept in `file` (`None`: not
    /// kept, as in tests).
    pub(crate) fn with_request_ids(next: u64, file: Option<std::path::PathBuf>) -> Inner {
        Inner {
            requests: Requests::new(next, file),
            ..Inner::default()
        }
    }

    /// The grants kept.
    pub(crate) fn grants(&self) -> &Grants {
        &self.grants
    }

    /// The grants kept, to add one or consume a use (revocation is [`Inner::revoke`]).
    pub(crate) fn grants_mut(&mut self) -> &mut Grants {
        &mut self.grants
    }

    /// The requests kept, and their ids.
    pub(crate) fn requests(&self) -> &Requests {
        &self.requests
    }

    /// The requests kept, to add, decide or count one.
    pub(crate) fn requests_mut(&mut self) -> &mut Requests {
        &mut self.requests
    }

    /// The live runs.
    pub(crate) fn runs(&self) -> &Runs {
        &self.runs
    }

    /// The live runs, to register or forget one.
    pub(crate) fn runs_mut(&mut self) -> &mut Runs {
        &mut self.runs
    }

    /// The factor's guard, challenges and TOTP enrolment.
    pub(crate) fn factor(&self) -> &FactorState {
        &self.factor
    }

    /// The factor's guard, challenges and TOTP enrolment, to record or take.
    pub(crate) fn factor_mut(&mut self) -> &mut FactorState {
        &mut self.factor
    }

    /// The audit log's state (entries are written with [`Inner::audit`] and its kin).
    pub(crate) fn audit_log(&self) -> &AuditLog {
        &self.log
    }

    /// The audit log's state, to start, check or close it.
    pub(crate) fn audit_log_mut(&mut self) -> &mut AuditLog {
        &mut self.log
    }

    /// The approvals held for the human's yes.
    pub(crate) fn held_approvals_mut(&mut self) -> &mut HeldApprovals {
        &mut self.held_approvals
    }

    /// Whether this broker runs in CI mode (`docs/ci.md`).
    pub(crate) fn ci(&self) -> bool {
        self.ci
    }

    /// Switches CI mode on, for the broker's life (`broker/ci`).
    pub(crate) fn set_ci(&mut self) {
        self.ci = true;
    }

    /// Whether the vault is unlocked (in memory).
    pub(crate) fn is_unlocked(&self) -> bool {
        self.vault.is_some()
    }

    /// At unlock or init: the opened vault comes into memory.
    pub(crate) fn install_vault(&mut self, vault: Vault) {
        self.vault = Some(vault);
    }

    /// The vault leaves memory (an init undone).
    pub(crate) fn drop_vault(&mut self) {
        self.vault = None;
    }

    /// At lock, after the runs were stopped and the log sealed: the vault, the redactors built
    /// from its values, the audit writer (its gap kept), the challenges, held approvals and a
    /// TOTP enrolment in progress leave memory.
    pub(crate) fn forget_unlocked(&mut self) {
        self.vault = None;
        self.card_redactor = None;
        self.run_redactors.clear();
        self.tree_watches.clear();
        self.log.close();
        self.factor.forget_unlocked();
        self.held_approvals.clear();
    }

    /// What was approved and denied in this broker's life (the risk flags' memory).
    pub(crate) fn approval_memory(&self) -> &ApprovalMemory {
        &self.memory
    }

    /// What was approved and denied, to record an approval or a denial.
    pub(crate) fn approval_memory_mut(&mut self) -> &mut ApprovalMemory {
        &mut self.memory
    }

    /// Request times per real origin, and of all clients under the empty key (the `burst`
    /// flag's count).
    pub(crate) fn request_times_mut(
        &mut self,
    ) -> &mut std::collections::HashMap<String, std::collections::VecDeque<Instant>> {
        &mut self.recent
    }

    /// Runs asked for while the vault is locked, by id, with when they were last asked.
    pub(crate) fn locked_asks(&self) -> &BTreeMap<u64, (keyveil_proto::op::LockedAsk, Instant)> {
        &self.locked_asks
    }

    /// Runs asked for while the vault is locked, to record or refresh one (`locked_asks.rs`).
    pub(crate) fn locked_asks_mut(
        &mut self,
    ) -> &mut BTreeMap<u64, (keyveil_proto::op::LockedAsk, Instant)> {
        &mut self.locked_asks
    }

    /// The card matcher for strings whose requester may hold values (`masked`: every whole
    /// secret value) or holds none (only the values keyveil made at random, which no planted
    /// guess finds: `card_redact::made_at_random`). Built again when the set of secret values
    /// changed since the last call; `None` while the vault is locked.
    pub(crate) fn card_matcher(&mut self, masked: bool) -> Option<Arc<WholeValues>> {
        let vault = self.vault.as_ref()?;
        let minted = self.dynamic.held_values();
        let key = card_redact::secrets_key(
            vault,
            minted.iter().map(|(g, v, _)| (g.as_str(), v.as_str())),
        );
        if let Some(m) = self
            .card_redactor
            .as_ref()
            .and_then(|c| c.matcher_for(&key, masked))
        {
            return Some(m);
        }
        // Minted values are named in the environment of their grant (dropped with it).
        let with_env: Vec<(String, &str, &keyveil_vault::SecretValue)> = minted
            .iter()
            .filter_map(|(g, v, val)| {
                Some((self.grants.get(g)?.environment.clone(), v.as_str(), val))
            })
            .collect();
        let values = card_redact::card_secrets(
            vault,
            with_env.iter().map(|(e, v, val)| (e.as_str(), *v, *val)),
            |env, real| self.names().shown_name(env, real),
        );
        let built = CardRedactor::build(key, &values);
        let matcher = built.matcher_for(&key, masked);
        self.card_redactor = Some(built);
        matcher
    }

    /// The run redactors kept per grant.
    pub(crate) fn run_redactors(&self) -> &crate::broker::redactor_cache::RedactorCache {
        &self.run_redactors
    }

    /// The run redactors kept per grant, to take or keep one.
    pub(crate) fn run_redactors_mut(
        &mut self,
    ) -> &mut crate::broker::redactor_cache::RedactorCache {
        &mut self.run_redactors
    }

    /// The watched working directories.
    pub(crate) fn tree_watches(&self) -> &crate::broker::tree_watches::TreeWatches {
        &self.tree_watches
    }

    /// The watched working directories, to take a ticket or add one.
    pub(crate) fn tree_watches_mut(&mut self) -> &mut crate::broker::tree_watches::TreeWatches {
        &mut self.tree_watches
    }

    /// Records a mount reader (by pid and start time) that is about to be written values: it
    /// and its descendants hold values from now on ([`Inner::peer_holds_values`]).
    pub(crate) fn add_value_reader(&mut self, pid: u32, start: u64) {
        self.value_readers.push((pid, start));
    }

    /// The dynamic credentials held per grant, and their engines' shared state.
    pub(crate) fn dynamic(&self) -> &crate::dynamic::Registry {
        &self.dynamic
    }

    /// The dynamic credentials held per grant, mutably (to reuse, register or take them).
    pub(crate) fn dynamic_mut(&mut self) -> &mut crate::dynamic::Registry {
        &mut self.dynamic
    }

    /// The vault, or the locked error.
    pub(crate) fn vault(&self) -> OpResult<&Vault> {
        self.vault.as_ref().ok_or_else(locked)
    }

    /// The naming rules of the open vault ([`Names`](super::Names): hidden variable names);
    /// with the vault locked, names are shown as given.
    pub(crate) fn names(&self) -> super::Names<'_> {
        super::Names::of(self.vault.as_ref())
    }

    /// The vault mutably, or the locked error.
    pub(crate) fn vault_mut(&mut self) -> OpResult<&mut Vault> {
        self.vault.as_mut().ok_or_else(locked)
    }

    /// unknown or unset ones.
    pub(crate) fn resolve_variables(
        &self,
        env: &str,
        asked: Option<&[String]>,
    ) -> OpResult<Vec<String>> {
        let vault = self.vault()?;
        let e = vault
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, vault))?;
        let names: Vec<String> = match asked {
            None => e
                .variables
                .iter()
                .filter(|(_, v)| v.value.is_some() || v.dynamic.is_some())
                .map(|(k, _)| k.clone())
                .collect(),
            Some(list) => {
                let mut out = Vec::new();
                for given in list {
                    // Where names are hidden, clients name variables by alias.
                    let real = self.names().real_name(env, given);
                    let n = given;
                    match real.as_ref().and_then(|r| e.variables.get(r)) {
                        None => {
                            return Err(OpError::new(
                                ErrorCode::NotFound,
                                format!("environment '{env}' has no variable '{n}'"),
                            )
                            .hint(format!("see its variables with `keyveil env show {env}` (MCP: describe_environment)")));
                        }
                        Some(v) if v.value.is_none() && v.dynamic.is_none() => {
                            return Err(OpError::new(
                                ErrorCode::Failed,
                                format!("variable '{n}' in '{env}' has no value yet"),
                            )
                            .hint(format!(
                                "ask the user to run `keyveil set {env} {n}` in a terminal"
                            )));
                        }
                        Some(_) => {
                            if let Some(r) = real
                                && !out.contains(&r)
                            {
                                out.push(r);
                            }
                        }
                    }
                }
                out.sort();
                out
            }
        };
        if names.is_empty() {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("environment '{env}' has no variable with a value"),
            )
            .hint(format!(
                "ask the user to run `keyveil set {env} NAME` in a terminal"
            )));
        }
        Ok(names)
    }

    /// The values of `vars` for a spawn, still sealed (a clone of each sealed value): the caller
    /// opens them outside the broker's lock (opened values are zeroized when dropped). Dynamic
    /// variables are skipped (minted or fetched per grant: `crate::broker::leases::values_for_grant`).
    pub(crate) fn sealed_values(
        &self,
        env: &str,
        vars: &[String],
    ) -> OpResult<Vec<(String, keyveil_vault::SealedValue)>> {
        let vault = self.vault()?;
        let e = vault
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, vault))?;
        let mut out = Vec::with_capacity(vars.len());
        for n in vars {
            if e.variables.get(n).is_some_and(|v| v.dynamic.is_some()) {
                continue;
            }
            let v = e
                .variables
                .get(n)
                .and_then(|v| v.value.as_ref())
                .ok_or_else(|| {
                    OpError::new(
                        ErrorCode::Failed,
                        format!("variable '{n}' in '{env}' has no value"),
                    )
                })?;
            out.push((n.clone(), v.clone()));
        }
        Ok(out)
    }

    /// The `PATH` that resolves `argv[0]` and that children get, for an environment.
    pub(crate) fn policy_path(&self, env: &str) -> String {
        let v = self.vault.as_ref();
        v.and_then(|v| {
            v.data()
                .environments
                .get(env)
                .and_then(|e| e.policy.path.clone())
        })
        .or_else(|| v.and_then(|v| v.data().settings.path.clone()))
        .unwrap_or_else(|| crate::pin::DEFAULT_PATH.to_owned())
    }

    /// The `HOME` children get.
    pub(crate) fn child_home(&self) -> Option<String> {
        self.vault
            .as_ref()
            .and_then(|v| v.data().settings.home.clone())
            .or_else(|| std::env::var("HOME").ok())
    }

    /// Marks expired pending requests (each audited), and forgets requests decided long ago.
    pub(crate) fn expire_requests(&mut self) {
        for id in self.requests.expire() {
            self.audit("request_expired", json!({ "request_id": id }));
        }
    }

    /// Marks a grant revoked and cancels its runs; its run redactor is dropped and its dynamic
    /// credentials destroyed at their source. Returns whether it was live.
    pub(crate) fn revoke(&mut self, grant_id: &str, why: &str) -> bool {
        let Some((was_live, env)) = self.grants.mark_revoked(grant_id) else {
            return false;
        };
        self.run_redactors.forget_grant(grant_id);
        self.tree_watches.forget_grant(grant_id);
        if was_live {
            self.audit(
                "revoke",
                json!({ "grant_id": grant_id, "environment": env, "why": why }),
            );
        }
        // Destroy its dynamic credentials at their source (in the background, now).
        self.end_grant_credentials(grant_id);
        was_live
    }

    /// Destroys, in the background, every credential `grant_id` holds (called when it is
    /// revoked or expires; a no-op for grants without dynamic credentials). The request is
    /// audited now, the outcome by the next `leases::sweep`.
    pub(crate) fn end_grant_credentials(&mut self, grant_id: &str) {
        let Some(creds) = self.dynamic.take(grant_id) else {
            return;
        };
        let handles: Vec<Value> = creds
            .iter()
            .map(crate::dynamic::Held::audit_fields)
            .collect();
        self.audit(
            "dynamic_revoke",
            json!({ "grant_id": grant_id, "credentials": handles }),
        );
        self.dynamic.revoke_in_background(grant_id, creds);
    }

    /// The tick's housekeeping: the run redactors of grants no longer live (and idle ones) are
    /// dropped, and grants revoked more than an hour after their deadline `now` are forgotten.
    pub(crate) fn prune_ended_grants(&mut self, now: Timestamp) {
        let grants = &self.grants;
        self.run_redactors
            .prune(std::time::Instant::now(), |id| grants.not_revoked(id));
        self.tree_watches
            .prune(|id| grants.get(id).is_some_and(|g| g.live(now)));
        self.grants.forget_ended(now);
    }
}

/// The audit entries: scrubbed, then written by the [`AuditLog`]; a failure stops live runs.
impl Inner {
    /// An audit entry as it may be written: real names hidden where the policy hides them,
    /// and, when `masked`, every string through the card matcher (`card_redact.rs`): argv,
    /// cwd, paths and reasons in entries (`run_start`, `deny_rule`, `mount_read`, ...) can come
    /// from a granted child holding values, and the agent reads the log without a factor. An
    /// entry whose strings are an agent's own (`AccessReq::masked` false) has real names hidden
    /// and only the values keyveil made at random masked (masking a planted guess of any other
    /// value there would confirm it; one made at random cannot be guessed).
    fn scrub_entry_as(
        &mut self,
        mut fields: Value,
        masked: bool,
    ) -> serde_json::Map<String, Value> {
        self.names().hide_names_in(&mut fields);
        if let Some(r) = self.card_matcher(masked) {
            card_redact::redact_json(&r, &mut fields);
        }
        match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }

    /// Records an audit entry for something that happens whatever the log says: a revocation,
    /// a lock, a refusal, the end of a run, a failed factor. It may use the log's reserved
    /// space (`keyveil_vault::audit::RESERVE_BYTES`), so it is written on a full disk as long as
    /// the reserve lasts. It never refuses: an entry that cannot be written is counted in the
    /// writer's pending gap (written first, as `audit.gap`, at the next possible append), logged
    /// to `broker.log`, and live runs are stopped (their ends could not be recorded either).
    /// Actions that must not happen unrecorded use [`Inner::must_audit`], or
    /// [`AuditLog::ready`] before acting and this after. Hidden names are audited by alias
    /// (see `state/names.rs`).
    pub(crate) fn audit(&mut self, event: &str, fields: Value) {
        self.audit_recorded(event, fields);
    }

    /// [`Inner::audit`], saying whether the entry reached the log (`false`: the vault is
    /// locked, the log was moved, or the disk is full and the entry is counted in the gap).
    pub(crate) fn audit_recorded(&mut self, event: &str, fields: Value) -> bool {
        self.audit_recorded_as(event, fields, true)
    }

    /// [`Inner::audit`] of an entry whose requester strings are matched against values only
    /// when `masked` ([`Inner::scrub_entry_as`]).
    pub(crate) fn audit_as(&mut self, event: &str, fields: Value, masked: bool) {
        self.audit_recorded_as(event, fields, masked);
    }

    fn audit_recorded_as(&mut self, event: &str, fields: Value, masked: bool) -> bool {
        let map = self.scrub_entry_as(fields, masked);
        let appended = self.log.append(event, map);
        self.after_append(appended)
    }

    /// Whether an entry was recorded; live runs stopped when it could not be written at all.
    fn after_append(&mut self, appended: Appended) -> bool {
        if appended == Appended::Failed {
            self.stop_runs_unrecordable();
        }
        appended == Appended::Recorded
    }

    /// [`Inner::audit`] for several entries at once, in order, with one write and one sync
    /// (`AuditWriter::append_records`): for a source that records many things that happened
    /// anyway (a run's egress proxy, one entry per request). On failure every entry is counted
    /// in the pending gap and live runs are stopped, as for [`Inner::audit`].
    pub(crate) fn audit_batch(&mut self, entries: Vec<(String, Value)>) {
        // Like every entry: an egress path or destination is the child's, which may hold a
        // value (`redteam_s9.rs`).
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(event, fields)| (event, self.scrub_entry_as(fields, true)))
            .collect();
        let appended = self.log.append_batch(entries);
        self.after_append(appended);
    }

    /// Records a refusal or failure that a requester can repeat at will (a wrong or locked-out
    /// factor, a deny rule, a denial): written only while the log keeps its reserve after it
    /// (`AuditWriter::append_if_room`), so repeating it on a full disk never eats the space
    /// kept for revocations and the ends of runs; otherwise counted in the pending gap as lost
    /// and logged. Never refuses, never stops runs.
    pub(crate) fn audit_note(&mut self, event: &str, fields: Value) {
        self.audit_note_as(event, fields, true);
    }

    /// [`Inner::audit_note`], matched against values only when `masked`
    /// ([`Inner::scrub_entry_as`]).
    pub(crate) fn audit_note_as(&mut self, event: &str, fields: Value, masked: bool) {
        let map = self.scrub_entry_as(fields, masked);
        self.log.append_if_room(event, map);
    }

    /// Appends an audit entry **before** the action it records; the action must not happen
    /// unless this returns `Ok`. The entry is refused (and counted in the pending gap) when the
    /// log cannot keep its reserve after it: a full disk, a quota, an I/O error, a short write,
    /// a failed sync, a moved log. `Ok` while locked (no writer; the locked error comes from
    /// elsewhere).
    ///
    /// # Errors
    /// [`ErrorCode::Failed`]: "the audit log cannot be written: CAUSE; nothing was done" with a
    /// hint to free space (see [`audit_refusal`](super::audit::audit_refusal)), or the moved-log error of
    /// [`AuditLog::check_path`].
    pub(crate) fn must_audit(&mut self, event: &str, fields: Value) -> OpResult<()> {
        self.must_audit_as(event, fields, true)
    }

    /// [`Inner::must_audit`], matched against values only when `masked`
    /// ([`Inner::scrub_entry_as`]).
    ///
    /// # Errors
    /// As [`Inner::must_audit`].
    pub(crate) fn must_audit_as(
        &mut self,
        event: &str,
        fields: Value,
        masked: bool,
    ) -> OpResult<()> {
        self.log.check_path()?;
        let map = self.scrub_entry_as(fields, masked);
        self.log.append_before(event, map)
    }

    /// Stops every live run by revoking its grant (SIGTERM, then SIGKILL): called when an entry
    /// could not be recorded even from the reserve, so the runs' ends could not be either.
    fn stop_runs_unrecordable(&mut self) {
        if !self.log.begin_stopping_runs() {
            return;
        }
        for gid in self.runs.grant_ids() {
            self.revoke(&gid, "the audit log cannot be written");
        }
        self.log.end_stopping_runs();
    }

    /// Seals the audit log's end into the vault and closes the audit session (lock, stop): the
    /// next unlock then knows this broker ended cleanly. See [`Inner::open_audit_session`].
    pub(crate) fn seal_audit_final(&mut self) {
        self.seal_audit();
        if self.log.seal_broken().is_some() {
            return;
        }
        let Some(v) = self.vault.as_mut() else {
            return;
        };
        if v.data().audit_session_open {
            v.data_mut().audit_session_open = false;
            if let Err(e) = v.save() {
                tracing::error!(error = %e, "cannot close the audit session in the vault");
            }
        }
    }

    /// At unlock: if the previous broker never closed its audit session (it was killed, or the
    /// host stopped), records `audit_unclean_end` naming the last sealed entry — anything a
    /// same-user process cut off the log after it cannot be detected otherwise — then marks the
    /// session open in the vault.
    pub(crate) fn open_audit_session(&mut self) {
        let Some(v) = self.vault.as_ref() else {
            return;
        };
        let unclean = v.data().audit_session_open;
        let sealed = v.data().audit_checkpoint.as_ref().map(|c| c.seq);
        if unclean {
            tracing::warn!(
                ?sealed,
                "the previous broker ended without closing its audit session"
            );
            self.audit(
                "audit_unclean_end",
                serde_json::json!({"sealed_seq": sealed, "why": "the previous broker stopped without sealing the log (killed, or the host stopped): entries after sealed_seq cannot be vouched for"}),
            );
            self.record_runs_ended_by_crash();
        }
        if let Some(v) = self.vault.as_mut() {
            v.data_mut().audit_session_open = true;
            if let Err(e) = v.save() {
                tracing::error!(error = %e, "cannot mark the audit session open in the vault");
            }
        }
    }

    /// After an unclean end: every run the log shows started (`run_start`) and never ended
    /// (`run_end`) died with the broker that ran it (its reaper and command are killed by
    /// `PR_SET_PDEATHSIG`, what they started by the supervisor); each gets a `run_end` marked
    /// `broker_crashed`, so the log says how it ended. Returns how many.
    pub(crate) fn record_runs_ended_by_crash(&mut self) -> usize {
        let open = self.log.runs_left_open();
        let n = open.len();
        for (run_id, grant_id) in open {
            self.audit(
                "run_end",
                serde_json::json!({
                    "run_id": run_id,
                    "grant_id": grant_id,
                    "broker_crashed": true,
                    "why": "the broker stopped (killed, or the host stopped) before this run's end was recorded; the run ended with it",
                }),
            );
        }
        if n > 0 {
            tracing::warn!(
                runs = n,
                "recorded the end of runs a crashed broker left open"
            );
        }
        n
    }

    /// Seals the audit log's current end into the vault (the sealed checkpoint), so that cutting
    /// entries off the end of the log is detected by `keyveil audit verify`. Saves the vault only
    /// when the checkpoint moved. Errors are logged.
    pub(crate) fn seal_audit(&mut self) {
        // Never moved forward over a log that did not match it.
        let Some(cp) = self.log.checkpoint_to_seal() else {
            return;
        };
        let Some(v) = self.vault.as_mut() else {
            return;
        };
        if v.data().audit_checkpoint.as_ref() == Some(&cp) {
            return;
        }
        v.data_mut().audit_checkpoint = Some(cp);
        // A full save, never a journal record (a journal cut must not bring back an old
        // checkpoint); it also folds the journaled variable changes into the vault file.
        if let Err(e) = v.save_audit_checkpoint() {
            tracing::error!(error = %e, "cannot save the audit checkpoint into the vault");
        }
    }
}

/// A fresh random id: `prefix` + 12 hex digits.
pub(crate) fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 6];
    if getrandom::fill(&mut b).is_err() {
        // getrandom failing is unrecoverable for a security tool; fall back to time+pid so the
        // id is at least unique, and log it.
        tracing::error!("getrandom failed while making an id");
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!(
            "{prefix}{:012x}",
            (t as u64) ^ u64::from(std::process::id())
        );
    }
    format!("{prefix}{}", hex::encode(b))
}
