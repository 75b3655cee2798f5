//! Grants: what an approval creates ([`Grant`]), what it covers, the options a human approves
//! with ([`ApproveOptions`]), and the store of grants ([`Grants`]).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::pin::{FilePin, InputPin};

use super::requests::{AccessReq, Ask};

/// A grant approved without `--ttl` is one use, valid this long (seconds).
pub(crate) const ONCE_GRANT_TTL_SECONDS: u64 = 900;

/// Options of an approval: what the human chose beyond the request's scope.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ApproveOptions {
    /// Lifetime (seconds); `None` = one use within 15 minutes.
    pub ttl_seconds: Option<u64>,
    /// Uses.
    pub uses: Option<u32>,
    /// Any command.
    pub any_command: bool,
    /// argv prefix.
    pub prefix: bool,
    /// Canonical subdirectories.
    pub subdirs: bool,
}

/// What an approval creates.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Grant {
    /// `g-` and 12 hex digits.
    pub(super) id: String,
    /// The request it came from.
    pub(super) request_id: u64,
    /// Client scope key (`mcp:NAME`, `cli:keyveil`).
    pub(super) client: String,
    /// Environment name.
    pub(super) environment: String,
    /// Variables it serves.
    pub(super) variables: Vec<String>,
    /// The argv it covers; `None` covers any command.
    pub(super) argv: Option<Vec<String>>,
    /// `argv` is a token prefix: longer argv are covered when every extra token is one
    /// `prefix.rs` allows (positional, or a safe option of the tool).
    pub(super) prefix: bool,
    /// Canonical working directory a run must use.
    pub(super) cwd: String,
    /// Runs in canonical subdirectories of `cwd` are covered too.
    pub(super) subdirs: bool,
    /// Pass-through names it allows.
    pub(super) pass_env: Vec<String>,
    /// The pinned executable (from the request); `None` for any-command grants (pinned per run).
    pub(super) executable: Option<FilePin>,
    /// Pinned inputs; a change ends the grant.
    pub(super) inputs: Vec<InputPin>,
    /// The keyed digest (`state::value_digest`) of each pass-through value as the card showed
    /// it (`None`: not set); a run with another value ends the grant. Not listed (`grants`): the request showed them.
    #[serde(skip)]
    pub(super) pass_values: BTreeMap<String, Option<String>>,
    /// The keyed digest (`state::value_digest`) of each granted variable's value that was stored
    /// without the factor, as the card showed it; a run finding another value stored without the factor ends the grant. Not
    /// listed: its keys are real variable names, which a policy may hide.
    #[serde(skip)]
    pub(super) chosen_vars: BTreeMap<String, String>,
    /// The keyed digest (`state::value_digest`) of the standard input the card showed (`None`:
    /// `/dev/null`); a grant for a command covers only runs with these same bytes on standard
    /// input. Not listed.
    #[serde(skip)]
    pub(super) stdin_digest: Option<String>,
    /// The mount's risk flags on the card this grant was approved from (empty for a run): a
    /// mount read it serves without a card must have none the card did not show (a reader
    /// started under an agent host is `agent-reader` even when the approved one was not).
    #[serde(skip)]
    pub(super) mount_flags: Vec<String>,
    /// For a mount read's grant: the approved reader's anchor (`MountAnchor`); a later reader
    /// is served without a card only if this very process (pid and start time) is in its live
    /// parent chain. `None` (the approved reader had no anchor): it serves no later reader.
    #[serde(skip)]
    pub(super) mount_anchor: Option<super::requests::MountAnchor>,
    /// Creation time.
    pub(super) created_at: Timestamp,
    /// Deadline.
    pub(super) expires_at: Timestamp,
    /// Uses left; `None` is unlimited until the deadline.
    pub(super) uses_left: Option<u32>,
    /// Runs started so far.
    pub(super) runs: u32,
    /// Revoked (or expired) and unusable.
    pub(super) revoked: bool,
    /// Cancelled on revocation: live runs under the grant watch it.
    #[serde(skip)]
    pub(super) cancel: CancellationToken,
    /// Its request's strings may hold a value ([`AccessReq::masked`]): its listing masks them.
    ///
    #[serde(skip)]
    pub(super) masked: bool,
}

/// Whether every name of `wanted` is in `have`: by a hash set when both are long (a grant of
/// every variable of an environment of thousands, checked under the broker's lock on each run,
/// would otherwise compare every pair).
pub(crate) fn includes_all(have: &[String], wanted: &[String]) -> bool {
    if wanted.len() <= 16 || have.len() <= 16 {
        return wanted.iter().all(|v| have.contains(v));
    }
    let have: std::collections::HashSet<&str> = have.iter().map(String::as_str).collect();
    wanted.iter().all(|v| have.contains(v.as_str()))
}

impl Grant {
    /// The grant an approval of `req` with options `o` creates, under id `id`: its scope is the
    /// request's (any command when `o.any_command` or the request named none, and then no pins),
    /// its pass-through and chosen values bound by digest as the card showed them; it lasts
    /// `o.ttl_seconds` (at most `max_ttl`) or, without one, is one use within
    /// [`ONCE_GRANT_TTL_SECONDS`]. Returns it with its lifetime in seconds.
    pub(crate) fn approved(
        id: String,
        req: &AccessReq,
        o: ApproveOptions,
        max_ttl: u64,
    ) -> (Grant, u64) {
        let (ttl, uses_left) = match o.ttl_seconds {
            Some(t) => (t.min(max_ttl).max(1), o.uses),
            None => (
                ONCE_GRANT_TTL_SECONDS.min(max_ttl.max(60)),
                Some(o.uses.unwrap_or(1)),
            ),
        };
        let any = o.any_command || req.argv.is_none();
        let now = Timestamp::now();
        let grant = Grant {
            id,
            request_id: req.id,
            client: req.client.scope_key(),
            environment: req.environment.clone(),
            variables: req.variables.clone(),
            argv: if any { None } else { req.argv.clone() },
            prefix: o.prefix && !any,
            cwd: req.cwd.clone(),
            subdirs: o.subdirs,
            pass_env: req.pass_env.clone(),
            executable: if any { None } else { req.executable.clone() },
            inputs: if any { Vec::new() } else { req.inputs.clone() },
            pass_values: req
                .chosen_values
                .iter()
                .filter_map(|c| c.name.clone().map(|n| (n, c.digest.clone())))
                .collect(),
            chosen_vars: req
                .chosen_values
                .iter()
                .filter_map(|c| Some((c.variable.clone()?, c.digest.clone()?)))
                .collect(),
            stdin_digest: req.stdin.as_ref().map(|s| s.digest.clone()),
            mount_flags: req.mount_flags.clone(),
            mount_anchor: req.mount_anchor.clone(),
            masked: req.masked,
            created_at: now,
            expires_at: now
                .saturating_add(jiff::SignedDuration::from_secs(
                    i64::try_from(ttl).unwrap_or(i64::MAX),
                ))
                .unwrap_or(now),
            uses_left,
            runs: 0,
            revoked: false,
            cancel: CancellationToken::new(),
        };
        (grant, ttl)
    }

    /// `g-` and 12 hex digits.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The request it came from.
    pub(crate) fn request_id(&self) -> u64 {
        self.request_id
    }

    /// Client scope key (`mcp:NAME`, `cli:keyveil`).
    pub(crate) fn client(&self) -> &str {
        &self.client
    }

    /// Environment name.
    pub(crate) fn environment(&self) -> &str {
        &self.environment
    }

    /// Variables it serves.
    pub(crate) fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The argv it covers; `None` covers any command.
    pub(crate) fn argv(&self) -> &Option<Vec<String>> {
        &self.argv
    }

    /// `argv` is a token prefix: longer argv are covered when every extra token is one
    /// `prefix.rs` allows (positional, or a safe option of the tool).
    pub(crate) fn prefix(&self) -> bool {
        self.prefix
    }

    /// Canonical working directory a run must use.
    pub(crate) fn cwd(&self) -> &str {
        &self.cwd
    }

    /// Runs in canonical subdirectories of `cwd` are covered too.
    pub(crate) fn subdirs(&self) -> bool {
        self.subdirs
    }

    /// Pass-through names it allows.
    pub(crate) fn pass_env(&self) -> &[String] {
        &self.pass_env
    }

    /// The pinned executable (from the request); `None` for any-command grants (pinned per run).
    pub(crate) fn executable(&self) -> &Option<FilePin> {
        &self.executable
    }

    /// Pinned inputs; a change ends the grant.
    pub(crate) fn inputs(&self) -> &[InputPin] {
        &self.inputs
    }

    /// The keyed digest (`state::value_digest`) of each pass-through value as the card showed
    /// it (`None`: not set); a run with another value ends the grant. Not listed (`grants`): the request showed them.
    pub(crate) fn pass_values(&self) -> &BTreeMap<String, Option<String>> {
        &self.pass_values
    }

    /// The keyed digest (`state::value_digest`) of each granted variable's value that was stored
    /// without the factor, as the card showed it; a run finding another value stored without the factor ends the grant. Not
    /// listed: its keys are real variable names, which a policy may hide.
    pub(crate) fn chosen_vars(&self) -> &BTreeMap<String, String> {
        &self.chosen_vars
    }

    /// Creation time.
    pub(crate) fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Deadline.
    pub(crate) fn expires_at(&self) -> Timestamp {
        self.expires_at
    }

    /// Uses left; `None` is unlimited until the deadline.
    pub(crate) fn uses_left(&self) -> Option<u32> {
        self.uses_left
    }

    /// Revoked (or expired) and unusable.
    pub(crate) fn revoked(&self) -> bool {
        self.revoked
    }

    /// Cancelled on revocation: live runs under the grant watch it.
    pub(crate) fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Its request's strings may hold a value ([`AccessReq::masked`]): its listing masks them.
    pub(crate) fn masked(&self) -> bool {
        self.masked
    }

    /// For a mount read's grant, what later readers it serves without a card, in words:
    /// `None` for a run's grant.
    pub(crate) fn mount_scope(&self) -> Option<String> {
        // A mount read's client scope is `mount:PATH` (`mounts::MOUNT_KIND`).
        if !self.client.starts_with("mount:") {
            return None;
        }
        Some(match &self.mount_anchor {
            Some(a) => format!("readers started under {}", a.shown()),
            None => "no later reader without a card (the approved reader's parent was init or a subreaper: nothing to bind to)".to_owned(),
        })
    }

    /// Runs started so far.
    pub(crate) fn runs(&self) -> u32 {
        self.runs
    }

    /// Whether the grant can serve this run now (pins are checked separately, at spawn).
    pub(crate) fn covers(&self, ask: &Ask, now: Timestamp) -> bool {
        let Some(argv) = ask.argv.as_deref() else {
            return false;
        };
        !self.revoked
            && self.expires_at > now
            && self.uses_left != Some(0)
            && self.client == ask.client.scope_key()
            && self.environment == ask.environment
            && includes_all(&self.variables, &ask.variables)
            && ask.pass_env.iter().all(|v| self.pass_env.contains(v))
            && self.argv_covers(argv)
            && self.cwd_covers(&ask.cwd)
            // Standard input is an input: an any-command grant covers any, a command's grant
            // only the bytes its card showed.
            && (self.argv.is_none()
                || self.stdin_digest.as_deref() == ask.stdin.as_ref().map(|s| s.digest.as_str()))
            // A mount reader with a flag its card did not show is asked about again, and so is
            // one not started under the approved reader's anchor (reparented to init, or from
            // elsewhere).
            && ask.mount.as_ref().is_none_or(|m| {
                m.flags.iter().all(|f| self.mount_flags.contains(f))
                    && self
                        .mount_anchor
                        .as_ref()
                        .is_some_and(|a| m.lineage.contains(&(a.pid, a.start)))
            })
    }

    /// Token-wise argv matching: exact, or the prefix followed by allowed extras (`prefix.rs`).
    /// Bytes are compared as they are (no Unicode normalisation that could drop invisible
    /// characters).
    pub(crate) fn argv_covers(&self, argv: &[String]) -> bool {
        match &self.argv {
            None => true,
            Some(a) if !self.prefix => a.as_slice() == argv,
            Some(a) => crate::broker::prefix::allowlist_covers(a, argv),
        }
    }

    /// Canonical cwd matching: equal, or a canonical descendant when `subdirs`.
    pub(crate) fn cwd_covers(&self, cwd: &str) -> bool {
        self.cwd == cwd || (self.subdirs && std::path::Path::new(cwd).starts_with(&self.cwd))
    }

    /// Whether it is still usable at `now`.
    pub(crate) fn live(&self, now: Timestamp) -> bool {
        !self.revoked && self.expires_at > now && self.uses_left != Some(0)
    }
}

/// The grants kept, by id: live ones, and ended ones for an hour after their deadline.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    by_id: BTreeMap<String, Grant>,
}

impl Grants {
    /// The grant with this id (live or not; grants are forgotten an hour after they end).
    pub(crate) fn get(&self, id: &str) -> Option<&Grant> {
        self.by_id.get(id)
    }

    /// Consumes one use of grant `id` (for a run or a mount read it serves) if `still` holds
    /// for it now (it may have been revoked or used up meanwhile); whether it did. The only
    /// change made to a grant outside `broker::state` besides `Inner::revoke`.
    pub(crate) fn use_if(&mut self, id: &str, still: impl FnOnce(&Grant) -> bool) -> bool {
        match self.by_id.get_mut(id) {
            Some(g) if still(g) => {
                if let Some(u) = g.uses_left.as_mut() {
                    *u = u.saturating_sub(1);
                }
                g.runs += 1;
                true
            }
            _ => false,
        }
    }

    /// Every grant kept, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.by_id.values()
    }

    /// The ids of every grant kept.
    pub(crate) fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }

    /// Adds a grant an approval created.
    pub(crate) fn insert(&mut self, grant: Grant) {
        self.by_id.insert(grant.id.clone(), grant);
    }

    /// Live grants that cover a run, soonest-expiring first, among those whose request was
    /// `masked` as this ask is (`AccessReq::masked`): a grant of a holder's masked request
    /// never serves an agent's own ask with the same argv (the run that starts without a
    /// request would single out the planted candidate that is the value), nor the other way.
    pub(crate) fn find(&self, ask: &Ask, masked: bool) -> Option<String> {
        let now = Timestamp::now();
        self.by_id
            .values()
            .filter(|g| g.masked == masked && g.covers(ask, now))
            .min_by_key(|g| g.expires_at)
            .map(|g| g.id.clone())
    }

    /// Whether grant `id` is kept and not revoked.
    pub(crate) fn not_revoked(&self, id: &str) -> bool {
        self.by_id.get(id).is_some_and(|g| !g.revoked)
    }

    /// Marks grant `id` revoked and cancels its runs (`Inner::revoke` does the rest): whether
    /// it was live, and its environment; `None` for an unknown id.
    pub(super) fn mark_revoked(&mut self, id: &str) -> Option<(bool, String)> {
        let g = self.by_id.get_mut(id)?;
        let was_live = !g.revoked;
        g.revoked = true;
        g.cancel.cancel();
        Some((was_live, g.environment.clone()))
    }

    /// Forgets grants revoked more than an hour after their deadline `now`.
    pub(super) fn forget_ended(&mut self, now: Timestamp) {
        self.by_id.retain(|_, g| {
            !g.revoked || now.duration_since(g.expires_at) < jiff::SignedDuration::from_secs(3600)
        });
    }
}
