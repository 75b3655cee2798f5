//! Access requests and what they ask for: [`Ask`] (the scope a request, a grant and a rule
//! are matched on), [`AccessReq`] and its [`RequestState`], values and input shown on a card,
//! and the store of requests and their ids ([`Requests`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use serde::Serialize;

use zeroize::Zeroizing;

use super::shown::{Stdin, value_digest};
use crate::pin::{FilePin, InputPin};
use keyveil_proto::ClientInfo;

/// A pending request lives this long before it expires unanswered (seconds).
pub(crate) const REQUEST_TTL_SECONDS: i64 = 600;

/// A denial is remembered this long: the same ask from the same client is refused at once.
pub(crate) const DENIAL_MEMORY: Duration = Duration::from_secs(300);

/// Where a request stands.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum RequestState {
    /// Waiting for the human.
    Pending,
    /// Approved; the grant it created.
    Approved {
        /// Grant id.
        grant_id: String,
    },
    /// Denied by the human.
    Denied {
        /// The human's reason, if any.
        reason: Option<String>,
    },
    /// Nobody answered in time.
    Expired,
}

/// An ask for access, waiting for (or past) a human decision.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AccessReq {
    /// Sequential id the human types in `keyveil approve ID`.
    pub(super) id: u64,
    /// Who asked, as the requester claims it.
    pub(super) client: ClientInfo,
    /// The process that really asked: its pid, executable and parents, from the socket
    /// (`peer.rs`). Shown next to the claim.
    pub(super) peer: crate::broker::peer::Peer,
    /// Environment name.
    pub(super) environment: String,
    /// Variables asked for (resolved: never empty).
    pub(super) variables: Vec<String>,
    /// The exact argv, or `None` for "any command" (request_access without a command).
    pub(super) argv: Option<Vec<String>>,
    /// Canonical working directory.
    pub(super) cwd: String,
    /// The requester's reason: its claim, not a fact.
    pub(super) reason: Option<String>,
    /// Requested lifetime (seconds).
    pub(super) ttl_seconds: Option<u64>,
    /// Names of the requester's environment variables to pass through (shown to the human).
    pub(super) pass_env: Vec<String>,
    /// The executable `argv[0]` resolved to with the policy PATH, pinned.
    pub(super) executable: Option<FilePin>,
    /// Fingerprinted inputs (npm scripts, Makefile, script operand, ...).
    pub(super) inputs: Vec<InputPin>,
    /// Risk flags computed by the broker (see `risk/`).
    pub(super) risk: Vec<String>,
    /// Values the requester could have chosen, shown on the card and bound into the grant:
    /// pass-through values and variables stored without the factor (never one stored with it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) chosen_values: Vec<ChosenValue>,
    /// Standard input the requester supplies, all of it (shown masked then clipped, and part of
    /// the ask: other bytes are another request); `None`: `/dev/null`. Never serialized.
    #[serde(skip)]
    pub(super) stdin: Option<Stdin>,
    /// Requested variables stored in the last day without the factor (or before keyveil
    /// recorded how): the `new-variable` flag, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) new_variables: Vec<NewVariable>,
    /// Where the requester's reason claims what the broker's facts contradict, in plain words
    /// (`risk::contradictions`): shown on every surface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) contradictions: Vec<String>,
    /// The mount read (its path) when the request is one (`broker/mounts/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) mount: Option<String>,
    /// The mount's own risk flags for the reader on the card (`agent-reader`, `dumps-file`,
    /// ...): a grant made from it serves a later reader only if that reader has no flag the
    /// card did not show.
    #[serde(skip)]
    pub(super) mount_flags: Vec<String>,
    /// The process a `--ttl` grant made from this mount read is bound to ([`MountAnchor`]):
    /// `None` when the reader had none (its parent is init or a subreaper).
    #[serde(skip)]
    pub(super) mount_anchor: Option<MountAnchor>,
    /// Its strings (argv, cwd, reason, client name, pass-through values, what the card shows
    /// of the process) may hold a value: the requester descends from a live run or from a
    /// mount reader that was written values (`Inner::peer_holds_values`). Only then are
    /// they matched against values (`card_redact.rs`) wherever they are shown; otherwise
    /// they are the agent's own and shown as given: masking them would answer planted guesses.
    pub(super) masked: bool,
    /// How many times this same ask was made (identical asks coalesce into one request).
    pub(super) asks: u32,
    /// When it was made.
    pub(super) created_at: Timestamp,
    /// State.
    #[serde(flatten)]
    pub(super) state: RequestState,
    /// When the state last changed (used for denial memory).
    #[serde(skip)]
    pub(super) decided: Option<Instant>,
}

/// What the broker found about an ask before it becomes a request: the requester's reason and
/// lifetime, the pins, flags and values to show ([`AccessReq::new`]).
#[derive(Debug, Clone)]
pub(crate) struct RequestFacts {
    /// The requester's reason: its claim, not a fact.
    pub reason: Option<String>,
    /// Requested lifetime (seconds).
    pub ttl_seconds: Option<u64>,
    /// The executable `argv[0]` resolved to with the policy PATH, pinned.
    pub executable: Option<FilePin>,
    /// Fingerprinted inputs.
    pub inputs: Vec<InputPin>,
    /// Risk flags.
    pub risk: Vec<String>,
    /// Values the requester could have chosen.
    pub chosen_values: Vec<ChosenValue>,
    /// Requested variables stored recently without the factor.
    pub new_variables: Vec<NewVariable>,
    /// Where the reason contradicts the broker's facts.
    pub contradictions: Vec<String>,
    /// Its strings may hold a value ([`AccessReq::masked`]).
    pub masked: bool,
}

impl AccessReq {
    /// A pending request `id` for `ask`, made now, with what the broker found about it.
    pub(crate) fn new(id: u64, ask: &Ask, facts: RequestFacts) -> AccessReq {
        let RequestFacts {
            reason,
            ttl_seconds,
            executable,
            inputs,
            risk,
            chosen_values,
            new_variables,
            contradictions,
            masked,
        } = facts;
        AccessReq {
            id,
            client: ask.client.clone(),
            peer: ask.peer.clone(),
            environment: ask.environment.clone(),
            variables: ask.variables.clone(),
            argv: ask.argv.clone(),
            cwd: ask.cwd.clone(),
            reason,
            ttl_seconds,
            pass_env: ask.pass_env.clone(),
            executable,
            inputs,
            risk,
            chosen_values,
            stdin: ask.stdin.clone(),
            new_variables,
            contradictions,
            mount: ask.mount.as_ref().map(|m| m.path.clone()),
            mount_flags: ask
                .mount
                .as_ref()
                .map(|m| m.flags.clone())
                .unwrap_or_default(),
            mount_anchor: ask.mount.as_ref().and_then(|m| m.anchor.clone()),
            masked,
            asks: 1,
            created_at: Timestamp::now(),
            state: RequestState::Pending,
            decided: None,
        }
    }

    /// Sequential id the human types in `keyveil approve ID`.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Who asked, as the requester claims it.
    pub(crate) fn client(&self) -> &ClientInfo {
        &self.client
    }

    /// The process that really asked: its pid, executable and parents, from the socket
    /// (`peer.rs`). Shown next to the claim.
    pub(crate) fn peer(&self) -> &crate::broker::peer::Peer {
        &self.peer
    }

    /// Environment name.
    pub(crate) fn environment(&self) -> &str {
        &self.environment
    }

    /// Variables asked for (resolved: never empty).
    pub(crate) fn variables(&self) -> &[String] {
        &self.variables
    }

    /// The exact argv, or `None` for "any command" (request_access without a command).
    pub(crate) fn argv(&self) -> &Option<Vec<String>> {
        &self.argv
    }

    /// Canonical working directory.
    pub(crate) fn cwd(&self) -> &str {
        &self.cwd
    }

    /// The requester's reason: its claim, not a fact.
    pub(crate) fn reason(&self) -> &Option<String> {
        &self.reason
    }

    /// Requested lifetime (seconds).
    pub(crate) fn ttl_seconds(&self) -> Option<u64> {
        self.ttl_seconds
    }

    /// Names of the requester's environment variables to pass through (shown to the human).
    pub(crate) fn pass_env(&self) -> &[String] {
        &self.pass_env
    }

    /// The executable `argv[0]` resolved to with the policy PATH, pinned.
    pub(crate) fn executable(&self) -> &Option<FilePin> {
        &self.executable
    }

    /// Fingerprinted inputs (npm scripts, Makefile, script operand, ...).
    pub(crate) fn inputs(&self) -> &[InputPin] {
        &self.inputs
    }

    /// Risk flags computed by the broker (see `risk/`).
    pub(crate) fn risk(&self) -> &[String] {
        &self.risk
    }

    /// Values the requester could have chosen, shown on the card and bound into the grant:
    /// pass-through values and variables stored without the factor (never one stored with it).
    pub(crate) fn chosen_values(&self) -> &[ChosenValue] {
        &self.chosen_values
    }

    /// Standard input the requester supplies, all of it (shown masked then clipped, and part of
    /// the ask: other bytes are another request); `None`: `/dev/null`.
    pub(crate) fn stdin(&self) -> &Option<Stdin> {
        &self.stdin
    }

    /// Requested variables stored in the last day without the factor (or before keyveil
    /// recorded how): the `new-variable` flag, by name.
    pub(crate) fn new_variables(&self) -> &[NewVariable] {
        &self.new_variables
    }

    /// Where the requester's reason claims what the broker's facts contradict, in plain words
    /// (`risk::contradictions`): shown on every surface.
    pub(crate) fn contradictions(&self) -> &[String] {
        &self.contradictions
    }

    /// The process a `--ttl` grant of this mount read is bound to (`None`: no anchor).
    pub(crate) fn mount_anchor(&self) -> &Option<MountAnchor> {
        &self.mount_anchor
    }

    /// The mount read (its path) when the request is one (`broker/mounts/`).
    pub(crate) fn mount(&self) -> &Option<String> {
        &self.mount
    }

    /// Its strings (argv, cwd, reason, client name, pass-through values, what the card shows
    /// of the process) may hold a value: the requester descends from a live run or from a
    /// mount reader that was written values (`Inner::peer_holds_values`). Only then are
    /// they matched against values (`card_redact.rs`) wherever they are shown; otherwise
    /// they are the agent's own and shown as given: masking them would answer planted guesses.
    pub(crate) fn masked(&self) -> bool {
        self.masked
    }

    /// How many times this same ask was made (identical asks coalesce into one request).
    pub(crate) fn asks(&self) -> u32 {
        self.asks
    }

    /// When it was made.
    pub(crate) fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// State.
    pub(crate) fn state(&self) -> &RequestState {
        &self.state
    }

    /// When the state last changed (used for denial memory).
    pub(crate) fn decided(&self) -> Option<Instant> {
        self.decided
    }

    /// Whether `other` asks for the same thing as this request.
    pub(crate) fn same_ask(&self, ask: &Ask) -> bool {
        self.client.scope_key() == ask.client.scope_key()
            && self.environment == ask.environment
            && self.variables == ask.variables
            && self.argv == ask.argv
            && self.cwd == ask.cwd
            && self.pass_env == ask.pass_env
            && self.stdin.as_ref().map(|s| &s.digest) == ask.stdin.as_ref().map(|s| &s.digest)
            // Asks from different real origins stay apart: each card shows who asked.
            && self.peer.origin == ask.peer.origin
            && self.mount.as_deref() == ask.mount.as_ref().map(|m| m.path.as_str())
            // A mount read is one process's read: another process is another request.
            && (self.mount.is_none() || self.client.pid == ask.client.pid)
    }

    /// Adds risk flag `f` (once).
    pub(crate) fn flag(&mut self, f: &str) {
        if !self.risk.iter().any(|x| x == f) {
            self.risk.push(f.to_owned());
        }
    }

    /// Counts one more identical ask coalesced into this request, flagging a `burst` once
    /// (`bursting`: the asker's recent requests crossed the burst threshold).
    pub(crate) fn ask_again(&mut self, bursting: bool) {
        self.asks += 1;
        if bursting && !self.risk.iter().any(|f| f == "burst") {
            self.risk.push("burst".to_owned());
        }
    }

    /// The deadline of a pending request.
    pub(crate) fn expires_at(&self) -> Timestamp {
        self.created_at
            .saturating_add(jiff::SignedDuration::from_secs(REQUEST_TTL_SECONDS))
            .unwrap_or(self.created_at)
    }
}

/// Longest part of a chosen value shown on a card, in characters (the digest binds all of it).
pub(crate) const SHOWN_VALUE_CHARS: usize = 200;

/// A value an agent could have chosen, as a request shows it and a grant binds it.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ChosenValue {
    /// `pass-env` (from the requester's environment), `reader-env` (a code-loading variable
    /// of a mount reader's own environment), `stored-without-factor` (a vault variable
    /// whose value was stored by a call that proved no factor) or `kv-without-factor` (a
    /// variable read from an OpenBao KV secret whose source was linked by a call that proved
    /// no factor: its server may be the agent's).
    pub origin: &'static str,
    /// A pass-through name (set for `pass-env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A vault variable's name (set for `stored-without-factor` and `kv-without-factor`;
    /// aliased where names are hidden).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// When the vault value (or the KV source) was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Timestamp>,
    /// The whole value, as given; `None` when it is not set. Shown only masked, then clipped to
    /// its first [`SHOWN_VALUE_CHARS`] characters (`access::cards`), and never serialized: a
    /// value clipped before it is masked could hold part of a secret value no longer whole.
    #[serde(skip)]
    pub value: Option<Zeroizing<String>>,
    /// The value's length in bytes.
    pub bytes: usize,
    /// [`value_digest`] (hex, keyed by the broker's secret) of the whole value; `None` when it
    /// is not set.
    pub digest: Option<String>,
}

impl std::fmt::Debug for ChosenValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the value: a debug print is not masked.
        f.debug_struct("ChosenValue")
            .field("origin", &self.origin)
            .field("name", &self.name)
            .field("variable", &self.variable)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

impl ChosenValue {
    /// Describes `value` for the card.
    pub(crate) fn of(value: Option<&str>) -> ChosenValue {
        ChosenValue {
            origin: "pass-env",
            name: None,
            variable: None,
            stored_at: None,
            value: value.map(|v| Zeroizing::new(v.to_owned())),
            bytes: value.map_or(0, str::len),
            digest: value.map(|v| value_digest(v.as_bytes())),
        }
    }
}

/// How many characters of a requester's standard input the card shows.
pub(crate) const SHOWN_STDIN_CHARS: usize = SHOWN_VALUE_CHARS * 10;

/// Longest standard input a run request may carry, in bytes (the MCP `run` tool's limit too).
pub(crate) const MAX_STDIN_BYTES: usize = 1024 * 1024;

/// Describes a requester's standard input: all of it, kept for the card (masked, then clipped
/// to its first [`SHOWN_STDIN_CHARS`] characters where it is shown), its size, digest
/// ([`value_digest`]), and whether the command may read program text from it (`program`:
/// [`crate::stdin_program::reads_program_at`]).
pub(crate) fn stdin_info(text: &str, program: bool) -> Stdin {
    Stdin::of(text, program)
}

/// A requested variable stored recently without the factor (see [`AccessReq::new_variables`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct NewVariable {
    /// Its name (aliased where names are hidden).
    pub variable: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its value (or declaration) was stored, if recorded.
    pub stored_at: Option<Timestamp>,
    /// How it was stored: `without the factor`, or `unknown` (before keyveil recorded it).
    pub stored: &'static str,
}

/// What a requester asks for, normalised (canonical cwd, resolved variables).
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    /// Who asks.
    pub client: ClientInfo,
    /// Environment.
    pub environment: String,
    /// Resolved, sorted variable names.
    pub variables: Vec<String>,
    /// Exact argv, or `None` for any command.
    pub argv: Option<Vec<String>>,
    /// Canonical cwd.
    pub cwd: String,
    /// Pass-through names, sorted.
    pub pass_env: Vec<String>,
    /// The requester's value of each pass-through name (`None`: not set), as the child would
    /// get it: shown on the card and bound into the grant.
    pub pass_values: BTreeMap<String, Option<String>>,
    /// Standard input the requester supplies (`None`: `/dev/null`): shown on the card and part
    /// of what a grant covers.
    pub stdin: Option<Stdin>,
    /// The process that really asked (from the socket, not the claim): caps and flags count
    /// by it, and the card shows it.
    pub peer: crate::broker::peer::Peer,
    /// Set only by the broker itself, for a read of a mount (`broker/mounts/`): never from a
    /// request.
    pub mount: Option<MountAsk>,
    /// The values of the asked variables whose source the requester could have chosen (an
    /// OpenBao KV secret linked without the factor), fetched before the request is made
    /// (`crate::broker::leases::linked_chosen`): shown on the card and bound into the grant
    /// like values stored without the factor. Empty for a mount read (mounts serve no
    /// dynamic variable).
    pub linked: Vec<ChosenValue>,
}

/// A read of a mount, as the ask carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountAsk {
    /// The FIFO's path.
    pub path: String,
    /// The mount's own risk flags for this reader (`dumps-file`, `agent-reader`, ...).
    pub flags: Vec<String>,
    /// The reader's anchor ([`MountAnchor`]): what a grant approved from its card is bound to.
    pub anchor: Option<MountAnchor>,
    /// The reader's whole live parent chain, as `(pid, start time)` (empty when it could not
    /// be read to its end): a grant serves it only if its anchor is in it.
    pub lineage: Vec<(u32, u64)>,
}

/// The process a `--ttl` grant of a mount read is bound to: the approved reader's session
/// leader when that is one of its parents, else its parent, never init nor a subreaper (see
/// `broker/mounts/reader.rs`). Named by pid *and* start time, so a reused pid is not it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct MountAnchor {
    /// Its pid.
    pub pid: u32,
    /// Its start time (clock ticks after boot).
    pub start: u64,
    /// Its executable's file name (or `comm`): what the card and `keyveil grants` say.
    pub name: String,
}

impl MountAnchor {
    /// How the card and `keyveil grants` name it: `bash (pid 812)`.
    pub(crate) fn shown(&self) -> String {
        format!("{} (pid {})", self.name, self.pid)
    }
}

/// When `var`'s current value was stored without the factor, as given by the caller (so an
/// agent may have chosen it): `None` for values stored with the factor, generated, dynamic, or
/// stored before keyveil recorded how.
pub(crate) fn agent_chosen(var: &keyveil_vault::Variable) -> Option<Timestamp> {
    match var.stored {
        Some(r)
            if !r.factor
                && var.source == keyveil_vault::Source::Human
                && var.dynamic.is_none()
                && var.value.is_some() =>
        {
            Some(r.at)
        }
        _ => None,
    }
}

/// The requests kept (pending, and decided ones for a while), and the ids they get.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    by_id: BTreeMap<u64, AccessReq>,
    /// Next request id.
    next: u64,
    /// Where the next request id is kept across restarts (`request_ids.rs`); `None` in tests
    /// that build a broker state by hand.
    ids_file: Option<std::path::PathBuf>,
}

impl Requests {
    /// No request yet; ids start at `next` and are kept in `file` (`None`: not kept).
    pub(super) fn new(next: u64, file: Option<std::path::PathBuf>) -> Requests {
        Requests {
            by_id: BTreeMap::new(),
            next,
            ids_file: file,
        }
    }

    /// The request with this id (pending or decided; decided ones are forgotten after a while).
    pub(crate) fn get(&self, id: u64) -> Option<&AccessReq> {
        self.by_id.get(&id)
    }

    /// Every request kept, by id.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &AccessReq> {
        self.by_id.values()
    }

    /// Every request kept, mutably (an identical ask counted on a pending one:
    /// [`AccessReq::ask_again`]).
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut AccessReq> {
        self.by_id.values_mut()
    }

    /// Decides pending request `id`: it takes `state` (approved, denied or expired) now.
    /// Returns the request, or `None` when there is no such request or it is no longer
    /// pending (nothing is changed then).
    pub(crate) fn decide(&mut self, id: u64, state: RequestState) -> Option<&AccessReq> {
        let r = self.by_id.get_mut(&id)?;
        if r.state != RequestState::Pending {
            return None;
        }
        r.state = state;
        r.decided = Some(Instant::now());
        Some(r)
    }

    /// Denies every pending request, with `reason` (at lock, and when the broker stops).
    pub(crate) fn deny_all_pending(&mut self, reason: &str) {
        let ids: Vec<u64> = self.pending().map(|r| r.id).collect();
        for id in ids {
            self.decide(
                id,
                RequestState::Denied {
                    reason: Some(reason.to_owned()),
                },
            );
        }
    }

    /// The requests waiting for the human.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &AccessReq> {
        self.by_id
            .values()
            .filter(|r| r.state == RequestState::Pending)
    }

    /// Adds a request (its id from [`Requests::take_id`]).
    pub(crate) fn insert(&mut self, req: AccessReq) {
        self.by_id.insert(req.id, req);
    }

    /// The id the next request will get.
    pub(crate) fn next_id(&self) -> u64 {
        self.next
    }

    /// Takes the next request id (a request, or a run asked for while locked): it is never
    /// given again, across restarts too (`request_ids.rs`).
    pub(crate) fn take_id(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        if let Some(f) = &self.ids_file {
            crate::broker::request_ids::store(f, self.next);
        }
        id
    }

    /// Marks pending requests past their deadline expired, and forgets requests decided long
    /// ago (keeping the map small); the ids of those that expired now.
    pub(super) fn expire(&mut self) -> Vec<u64> {
        let now = Timestamp::now();
        let mut expired = Vec::new();
        for r in self.by_id.values_mut() {
            if r.state == RequestState::Pending && r.expires_at() <= now {
                r.state = RequestState::Expired;
                r.decided = Some(Instant::now());
                expired.push(r.id);
            }
        }
        self.by_id.retain(|_, r| {
            r.state == RequestState::Pending
                || r.decided.is_none_or(|d| d.elapsed() < DENIAL_MEMORY * 2)
        });
        expired
    }
}
