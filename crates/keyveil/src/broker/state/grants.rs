//! Grants: what an approval creates ([`Grant`]), what it covers, the options a human approves
//! with ([`ApproveOptions`]), and the store of grants ([`Grants`]).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::pin::{FilePin, InputPin};

use super::requests::Ask;

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
    pub id: String,
    /// The request it came from.
    pub request_id: u64,
    /// Client scope key (`mcp:NAME`, `cli:keyveil`).
    pub client: String,
    /// Environment name.
    pub environment: String,
    /// Variables it serves.
    pub variables: Vec<String>,
    /// The argv it covers; `None` covers any command.
    pub argv: Option<Vec<String>>,
    /// `argv` is a token prefix: longer argv are covered when every extra token is one
    /// `prefix.rs` allows (positional, or a safe option of the tool).
    pub prefix: bool,
    /// Canonical working directory a run must use.
    pub cwd: String,
    /// Runs in canonical subdirectories of `cwd` are covered too.
    pub subdirs: bool,
    /// Pass-through names it allows.
    pub pass_env: Vec<String>,
    /// The pinned executable (from the request); `None` for any-command grants (pinned per run).
    pub executable: Option<FilePin>,
    /// Pinned inputs; a change ends the grant.
    pub inputs: Vec<InputPin>,
    /// SHA-256 of each pass-through value as the card showed it (`None`: not set); a run with
    /// another value ends the grant. Not listed (`grants`): the request showed them.
    #[serde(skip)]
    pub pass_values: BTreeMap<String, Option<String>>,
    /// SHA-256 of each granted variable's value that was stored without the factor, as the card
    /// showed it; a run finding another value stored without the factor ends the grant. Not
    /// listed: its keys are real variable names, which a policy may hide.
    #[serde(skip)]
    pub chosen_vars: BTreeMap<String, String>,
    /// SHA-256 of the standard input the card showed (`None`: `/dev/null`); a grant for a
    /// command covers only runs with these same bytes on standard input. Not listed.
    #[serde(skip)]
    pub stdin_sha256: Option<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Deadline.
    pub expires_at: Timestamp,
    /// Uses left; `None` is unlimited until the deadline.
    pub uses_left: Option<u32>,
    /// Runs started so far.
    pub runs: u32,
    /// Revoked (or expired) and unusable.
    pub revoked: bool,
    /// Cancelled on revocation: live runs under the grant watch it.
    #[serde(skip)]
    pub cancel: CancellationToken,
    /// Its request's strings may hold a value ([`AccessReq::masked`]): its listing masks them.
    ///
    /// [`AccessReq::masked`]: super::requests::AccessReq::masked
    #[serde(skip)]
    pub masked: bool,
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
                || self.stdin_sha256.as_deref() == ask.stdin.as_ref().map(|s| s.sha256.as_str()))
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
