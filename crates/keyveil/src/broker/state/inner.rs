//! [`Inner`], everything behind the broker's mutex, and its methods on the vault, variables,
//! grants' matching and revocation, and the smaller parts it holds. Its fields are private to
//! `broker::state`; methods on grants, requests and runs are in `grants.rs`, `requests.rs` and
//! `runs.rs`, on the factor in `factor.rs`, on the audit log in `audit.rs`.

use std::collections::BTreeMap;
use std::time::Instant;

use jiff::Timestamp;
use keyveil_vault::Vault;
use serde_json::json;

use keyveil_proto::ErrorCode;

use super::audit::AuditLog;
use super::error::{OpError, OpResult, locked, unknown_env};
use super::factor::FactorState;
use super::grants::Grant;
use super::memory::ApprovalMemory;
use super::requests::{AccessReq, Ask, DENIAL_MEMORY, RequestState};
use super::runs::LiveRun;

/// Everything behind the broker's mutex. Its fields are private to `broker::state`: the rest of
/// the crate goes through the methods below (and those in `audit.rs`, `factor.rs`), grouped by
/// what they hold.
#[derive(Default)]
pub(crate) struct Inner {
    /// The unlocked vault, or `None` while locked.
    pub(super) vault: Option<Vault>,
    /// The audit writer and what went wrong with the log (`audit.rs`).
    pub(super) log: AuditLog,
    /// Next request id.
    pub(super) next_request: u64,
    /// Where the next request id is kept across restarts (`request_ids.rs`); `None` in tests
    /// that build a broker state by hand.
    pub(super) request_ids: Option<std::path::PathBuf>,
    /// Requests by id.
    pub(super) requests: BTreeMap<u64, AccessReq>,
    /// Grants by id.
    pub(super) grants: BTreeMap<String, Grant>,
    /// Live runs by id.
    pub(super) runs: BTreeMap<String, LiveRun>,
    /// The factor's guard, a TOTP enrolment in progress, the challenges held (`factor.rs`).
    pub(super) factor: FactorState,
    /// What was approved and denied before: for the `first-time`, `denied-before` and
    /// `rephrased-denied` flags (`memory.rs`).
    pub(super) memory: ApprovalMemory,
    /// Request times per real origin (`peer.rs`), and of all clients under the empty key: for
    /// the `burst` flag.
    pub(super) recent: std::collections::HashMap<String, std::collections::VecDeque<Instant>>,
    /// Dynamic credentials minted for grants (`crate::dynamic`).
    pub(super) dynamic: crate::dynamic::Registry,
    /// Runs agents asked for while the vault is locked, by id, with when they were last asked
    /// (`locked_asks.rs`); dropped at unlock (the broker that unlocks is a new process).
    pub(super) locked_asks: BTreeMap<u64, (keyveil_proto::op::LockedAsk, Instant)>,
    /// Approvals held between the factor and the human's yes where names are hidden
    /// (`held_approvals.rs`), by SHA-256 of their ticket.
    pub(super) held_approvals:
        std::collections::HashMap<[u8; 32], crate::broker::held_approvals::Held>,
    /// The redactor cards and request entries go through (`card_redact.rs`); dropped at `lock`.
    pub(super) card_redactor: Option<crate::broker::card_redact::CardRedactor>,
    /// Redactors kept between the runs of live grants (`redactor_cache.rs`): dropped with their
    /// grant, after idling, and when the vault locks.
    pub(super) run_redactors: crate::broker::redactor_cache::RedactorCache,
    /// Mount readers that were (or were about to be) written values, by (pid, start time):
    /// they and their descendants may hold values ([`Inner::peer_holds_values`]). Pruned as
    /// they exit.
    pub(super) value_readers: Vec<(u32, u64)>,
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
        let runs: Vec<u32> = self
            .runs
            .values()
            .filter_map(|r| u32::try_from(r.pgid).ok())
            .collect();
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
            next_request: next,
            request_ids: file,
            ..Inner::default()
        }
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
        self.close_audit();
        self.factor.challenges.clear();
        self.held_approvals.clear();
        self.factor.pending_totp = None;
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

    /// Holds an approval waiting for the human's yes under the digest of its ticket: approvals
    /// older than `ttl` are dropped first, then the oldest until fewer than `max` are held.
    pub(crate) fn hold_approval(
        &mut self,
        ticket_digest: [u8; 32],
        held: crate::broker::held_approvals::Held,
        ttl: std::time::Duration,
        max: usize,
    ) {
        let now = Instant::now();
        let all = &mut self.held_approvals;
        all.retain(|_, h| now.duration_since(h.at()) < ttl);
        while all.len() >= max {
            let Some(oldest) = all.iter().min_by_key(|(_, h)| h.at()).map(|(k, _)| *k) else {
                break;
            };
            all.remove(&oldest);
        }
        all.insert(ticket_digest, held);
    }

    /// Takes the approval held under this ticket digest (a ticket is used once).
    pub(crate) fn take_held_approval(
        &mut self,
        ticket_digest: &[u8; 32],
    ) -> Option<crate::broker::held_approvals::Held> {
        self.held_approvals.remove(ticket_digest)
    }

    /// The card redactor built last (`card_redact.rs` rebuilds it when the values change).
    pub(crate) fn cached_card_redactor(&self) -> Option<&crate::broker::card_redact::CardRedactor> {
        self.card_redactor.as_ref()
    }

    /// Keeps a freshly built card redactor.
    pub(crate) fn set_card_redactor(&mut self, r: crate::broker::card_redact::CardRedactor) {
        self.card_redactor = Some(r);
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
                    let real = self.real_name(env, given);
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

    /// Live grants that cover a run, soonest-expiring first, among those whose request was
    /// `masked` as this ask is ([`AccessReq::masked`]): a grant of a holder's masked request
    /// never serves an agent's own ask with the same argv (the run that starts without a
    /// request would single out the planted candidate that is the value), nor the other way.
    pub(crate) fn find_grant(&self, ask: &Ask, masked: bool) -> Option<String> {
        let now = Timestamp::now();
        self.grants
            .values()
            .filter(|g| g.masked == masked && g.covers(ask, now))
            .min_by_key(|g| g.expires_at)
            .map(|g| g.id.clone())
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

    /// Marks expired pending requests.
    pub(crate) fn expire_requests(&mut self) {
        let now = Timestamp::now();
        let mut expired = Vec::new();
        for r in self.requests.values_mut() {
            if r.state == RequestState::Pending && r.expires_at() <= now {
                r.state = RequestState::Expired;
                r.decided = Some(Instant::now());
                expired.push(r.id);
            }
        }
        for id in expired {
            self.audit("request_expired", json!({ "request_id": id }));
        }
        // Forget decided requests after a while, keeping the map small.
        self.requests.retain(|_, r| {
            r.state == RequestState::Pending
                || r.decided.is_none_or(|d| d.elapsed() < DENIAL_MEMORY * 2)
        });
    }

    /// Watches on the end of every live run of these grants (to wait for them with
    /// [`super::RunsStopped::wait`] once the lock is released).
    pub(crate) fn runs_ended(
        &self,
        grant_ids: &[String],
    ) -> Vec<tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>> {
        self.runs
            .values()
            .filter(|r| grant_ids.contains(&r.grant_id))
            .map(|r| r.ended.clone())
            .collect()
    }

    /// Marks a grant revoked and cancels its runs. Returns whether it was live.
    pub(crate) fn revoke(&mut self, grant_id: &str, why: &str) -> bool {
        let Some(g) = self.grants.get_mut(grant_id) else {
            return false;
        };
        let was_live = !g.revoked;
        g.revoked = true;
        g.cancel.cancel();
        self.run_redactors.forget_grant(grant_id);
        if was_live {
            let env = g.environment.clone();
            self.audit(
                "revoke",
                json!({ "grant_id": grant_id, "environment": env, "why": why }),
            );
        }
        // Destroy its dynamic credentials at their source (in the background, now).
        crate::broker::leases::end_grant(self, grant_id);
        was_live
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
