//! The broker's state: the unlocked vault, requests, grants, live runs, the factor guard and
//! the audit writer, behind one mutex that is never held across an `await`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use keyveil_vault::audit::AuditWriter;
use keyveil_vault::{SecretValue, Vault};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::pin::{FilePin, InputPin};
use keyveil_proto::{ClientInfo, ErrorCode, Reply};

/// A pending request lives this long before it expires unanswered (seconds).
pub(crate) const REQUEST_TTL_SECONDS: i64 = 600;
/// A grant approved without `--ttl` is one use, valid this long (seconds).
pub(crate) const ONCE_GRANT_TTL_SECONDS: u64 = 900;
/// A denial is remembered this long: the same ask from the same client is refused at once.
pub(crate) const DENIAL_MEMORY: Duration = Duration::from_secs(300);
/// Failed factor attempts allowed before approvals lock.
pub(crate) const MAX_FACTOR_FAILURES: u32 = 5;
/// First lockout after [`MAX_FACTOR_FAILURES`]; doubles with each further lockout.
pub(crate) const FACTOR_LOCKOUT: Duration = Duration::from_secs(60);
/// The longest lockout of TOTP codes (the doubling stops there): an agent's guesses may make
/// TOTP unusable for a while, never for hours; the passphrase is never locked out.
pub(crate) const MAX_FACTOR_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// The longest wait before the answer to a wrong passphrase typed into the approval page.
pub(crate) const MAX_TYPED_DELAY: Duration = Duration::from_secs(10);

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
    pub id: u64,
    /// Who asked, as the requester claims it.
    pub client: ClientInfo,
    /// The process that really asked: its pid, executable and parents, from the socket
    /// (`peer.rs`). Shown next to the claim.
    pub peer: super::peer::Peer,
    /// Environment name.
    pub environment: String,
    /// Variables asked for (resolved: never empty).
    pub variables: Vec<String>,
    /// The exact argv, or `None` for "any command" (request_access without a command).
    pub argv: Option<Vec<String>>,
    /// Canonical working directory.
    pub cwd: String,
    /// The requester's reason: its claim, not a fact.
    pub reason: Option<String>,
    /// Requested lifetime (seconds).
    pub ttl_seconds: Option<u64>,
    /// Names of the requester's environment variables to pass through (shown to the human).
    pub pass_env: Vec<String>,
    /// The executable `argv[0]` resolved to with the policy PATH, pinned.
    pub executable: Option<FilePin>,
    /// Fingerprinted inputs (npm scripts, Makefile, script operand, ...).
    pub inputs: Vec<InputPin>,
    /// Risk flags computed by the broker (see `risk/`).
    pub risk: Vec<String>,
    /// Values the requester could have chosen, shown on the card and bound into the grant:
    /// pass-through values and variables stored without the factor (never one stored with it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chosen_values: Vec<ChosenValue>,
    /// Standard input the requester supplies (shown, and part of the ask: other bytes are
    /// another request); `None`: `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<keyveil_proto::op::StdinInfo>,
    /// Requested variables stored in the last day without the factor (or before keyveil
    /// recorded how): the `new-variable` flag, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_variables: Vec<NewVariable>,
    /// Where the requester's reason claims what the broker's facts contradict, in plain words
    /// (`risk::contradictions`): shown on every surface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contradictions: Vec<String>,
    /// The mount read (its path) when the request is one (`broker/mounts/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<String>,
    /// Its strings (argv, cwd, reason, client name, pass-through values, what the card shows
    /// of the process) may hold a value: the requester descends from a live run or from a
    /// mount reader that was written values ([`Inner::peer_holds_values`]). Only then are
    /// they matched against values (`card_redact.rs`) wherever they are shown; otherwise
    /// they are the agent's own and shown as given: masking them would answer planted guesses.
    pub masked: bool,
    /// How many times this same ask was made (identical asks coalesce into one request).
    pub asks: u32,
    /// When it was made.
    pub created_at: Timestamp,
    /// State.
    #[serde(flatten)]
    pub state: RequestState,
    /// When the state last changed (used for denial memory).
    #[serde(skip)]
    pub decided: Option<Instant>,
}

impl AccessReq {
    /// Whether `other` asks for the same thing as this request.
    pub(crate) fn same_ask(&self, ask: &Ask) -> bool {
        self.client.scope_key() == ask.client.scope_key()
            && self.environment == ask.environment
            && self.variables == ask.variables
            && self.argv == ask.argv
            && self.cwd == ask.cwd
            && self.pass_env == ask.pass_env
            && self.stdin.as_ref().map(|s| &s.sha256) == ask.stdin.as_ref().map(|s| &s.sha256)
            // Asks from different real origins stay apart: each card shows who asked.
            && self.peer.origin == ask.peer.origin
            && self.mount.as_deref() == ask.mount.as_ref().map(|m| m.path.as_str())
            // A mount read is one process's read: another process is another request.
            && (self.mount.is_none() || self.client.pid == ask.client.pid)
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ChosenValue {
    /// `pass-env` (from the requester's environment), `reader-env` (a code-loading variable
    /// of a mount reader's own environment) or `stored-without-factor` (a vault variable
    /// whose value was stored by a call that proved no factor).
    pub origin: &'static str,
    /// A pass-through name (set for `pass-env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A vault variable's name (set for `stored-without-factor`; aliased where names are
    /// hidden).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// When the vault value was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Timestamp>,
    /// The value's first [`SHOWN_VALUE_CHARS`] characters, as given (escaped when shown);
    /// `None` when it is not set.
    pub value: Option<String>,
    /// The value's length in bytes.
    pub bytes: usize,
    /// Only part of the value is in `value`.
    pub clipped: bool,
    /// SHA-256 (hex) of the whole value; `None` when it is not set.
    pub sha256: Option<String>,
}

impl ChosenValue {
    /// Describes `value` for the card.
    pub(crate) fn of(value: Option<&str>) -> ChosenValue {
        use sha2::Digest as _;
        ChosenValue {
            origin: "pass-env",
            name: None,
            variable: None,
            stored_at: None,
            value: value.map(|v| v.chars().take(SHOWN_VALUE_CHARS).collect()),
            bytes: value.map_or(0, str::len),
            clipped: value.is_some_and(|v| v.chars().count() > SHOWN_VALUE_CHARS),
            sha256: value.map(|v| hex::encode(sha2::Sha256::digest(v.as_bytes()))),
        }
    }
}

/// How many characters of a requester's standard input the card shows.
pub(crate) const SHOWN_STDIN_CHARS: usize = SHOWN_VALUE_CHARS * 10;

/// Longest standard input a run request may carry, in bytes (the MCP `run` tool's limit too).
pub(crate) const MAX_STDIN_BYTES: usize = 1024 * 1024;

/// Describes a requester's standard input for the card: its first [`SHOWN_STDIN_CHARS`]
/// characters, size, digest, and whether the command may read program text from it
/// (`program`: [`crate::stdin_program::reads_program_at`]).
pub(crate) fn stdin_info(text: &str, program: bool) -> keyveil_proto::op::StdinInfo {
    use sha2::Digest as _;
    let shown = SHOWN_STDIN_CHARS;
    keyveil_proto::op::StdinInfo {
        text: text.chars().take(shown).collect(),
        bytes: text.len(),
        clipped: text.chars().count() > shown,
        sha256: hex::encode(sha2::Sha256::digest(text.as_bytes())),
        program,
    }
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
    pub stdin: Option<keyveil_proto::op::StdinInfo>,
    /// The process that really asked (from the socket, not the claim): caps and flags count
    /// by it, and the card shows it.
    pub peer: super::peer::Peer,
    /// Set only by the broker itself, for a read of a mount (`broker/mounts/`): never from a
    /// request.
    pub mount: Option<MountAsk>,
}

/// A read of a mount, as the ask carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountAsk {
    /// The FIFO's path.
    pub path: String,
    /// The mount's own risk flags for this reader (`dumps-file`, `agent-reader`, ...).
    pub flags: Vec<String>,
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
            Some(a) => super::prefix::allowlist_covers(a, argv),
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

/// Rate limiting of failed factors.
#[derive(Debug, Default)]
pub(crate) struct FactorGuard {
    /// Consecutive failures since the last success or lockout.
    pub failures: u32,
    /// Number of lockouts so far (the lockout doubles each time).
    pub lockouts: u32,
    /// Approvals refused until then.
    pub locked_until: Option<Instant>,
}

impl FactorGuard {
    /// `Err(seconds left)` while locked out.
    pub(crate) fn check(&mut self, now: Instant) -> Result<(), u64> {
        match self.locked_until {
            Some(t) if t > now => Err(t.saturating_duration_since(now).as_secs().max(1)),
            Some(_) => {
                self.locked_until = None;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failure; returns the lockout length if this failure triggered one.
    pub(crate) fn fail(&mut self, now: Instant) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= MAX_FACTOR_FAILURES {
            let d = FACTOR_LOCKOUT
                .saturating_mul(1u32 << self.lockouts.min(10))
                .min(MAX_FACTOR_LOCKOUT);
            self.lockouts += 1;
            self.failures = 0;
            self.locked_until = Some(now + d);
            return Some(d);
        }
        None
    }

    /// How long the answer to a wrong passphrase typed into the approval page waits: while
    /// TOTP is locked out, what is left of the lockout (at most [`MAX_TYPED_DELAY`]); after 3
    /// failures in a row, 1 s; else nothing. A speed bump for a guesser, never a refusal.
    pub(crate) fn typed_delay(&self, now: Instant) -> Duration {
        match self.locked_until {
            Some(t) if t > now => t.saturating_duration_since(now).min(MAX_TYPED_DELAY),
            _ if self.failures >= 3 => Duration::from_secs(1),
            _ => Duration::ZERO,
        }
    }

    /// Records a success, which also lifts a lockout: only the human's passphrase can succeed
    /// while one is on (TOTP codes are refused then).
    pub(crate) fn succeed(&mut self) {
        self.failures = 0;
        self.lockouts = 0;
        self.locked_until = None;
    }
}

/// A run in progress.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveRun {
    /// Run id.
    pub id: String,
    /// Grant id.
    pub grant_id: String,
    /// The process group the run started in: the pid of its reaper (Linux; the command is the
    /// reaper's child and starts in that group, which it may leave), or of the command.
    pub pgid: i32,
    /// argv as the requester gave it, every whole value masked (`card_redact.rs`).
    pub argv: Vec<String>,
    /// Start.
    pub started_at: Timestamp,
    /// How the run's processes ended, once they have (see [`Inner::runs_ended`]).
    #[serde(skip)]
    pub ended: tokio::sync::watch::Receiver<Option<super::spawn::TreeEnd>>,
    /// The run's egress proxy, when a variable of it is bound to hosts (closed when the run
    /// ends, and by its grant's end).
    #[serde(skip)]
    pub egress: Option<std::sync::Arc<super::egress::RunEgress>>,
}

/// What stopping some runs achieved: the reply to `revoke` and `lock` says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunsStopped {
    /// Runs that were live.
    pub runs: u32,
    /// Their processes that were signalled and are gone.
    pub killed: u32,
    /// Runs whose end was not confirmed: processes left alive, a reaper killed before it could
    /// report, or no end within the wait.
    pub unconfirmed: u32,
}

impl RunsStopped {
    /// As the replies to `revoke` and `lock` carry it.
    pub(crate) fn reply(&self) -> keyveil_proto::op::RunsStopped {
        keyveil_proto::op::RunsStopped {
            runs_stopped: self.runs,
            processes_killed: self.killed,
            runs_unconfirmed: self.unconfirmed,
        }
    }

    /// Waits (at most [`super::spawn::KILL_GRACE`] + 5 s in all) until each run of `ended` has
    /// ended, and adds up what became of their processes.
    pub(crate) async fn wait(
        ended: Vec<tokio::sync::watch::Receiver<Option<super::spawn::TreeEnd>>>,
    ) -> RunsStopped {
        let deadline = tokio::time::Instant::now()
            + super::spawn::KILL_GRACE
            + std::time::Duration::from_secs(5);
        let mut out = RunsStopped::default();
        for mut rx in ended {
            out.runs += 1;
            let end = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|e| *e));
            match end {
                Some(e) => {
                    out.killed += e.killed;
                    if !e.confirmed {
                        out.unconfirmed += 1;
                    }
                }
                None => out.unconfirmed += 1,
            }
        }
        out
    }
}

/// Everything behind the broker's mutex.
#[derive(Default)]
pub(crate) struct Inner {
    /// The unlocked vault, or `None` while locked.
    pub vault: Option<Vault>,
    /// The audit writer (opened at unlock: its key comes from the vault).
    pub audit: Option<AuditWriter>,
    /// Next request id.
    pub next_request: u64,
    /// Where the next request id is kept across restarts (`request_ids.rs`); `None` in tests
    /// that build a broker state by hand.
    pub request_ids: Option<std::path::PathBuf>,
    /// Requests by id.
    pub requests: BTreeMap<u64, AccessReq>,
    /// Grants by id.
    pub grants: BTreeMap<String, Grant>,
    /// Live runs by id.
    pub runs: BTreeMap<String, LiveRun>,
    /// Failed-factor rate limiting.
    pub factor: FactorGuard,
    /// (environment, argv, masked) approved in this broker's life: for the `first-time` flag.
    /// `masked` is the request's [`AccessReq::masked`]: a holder's approved argv never answers
    /// an agent's own ask (the flag would single out the planted candidate that is the value).
    pub approved_argv: std::collections::HashSet<(String, Vec<String>, bool)>,
    /// (argv, masked) denied recently, with when: for the `denied-before` flag (`masked` as
    /// for `approved_argv`).
    pub denied_argv: std::collections::HashMap<(Vec<String>, bool), Instant>,
    /// What denied commands did (`risk::behaviour`), with when: for the `rephrased-denied` flag.
    pub denied_behaviour: Vec<(Instant, Vec<String>)>,
    /// Why the audit log did not match the vault's sealed checkpoint at unlock (entries cut off
    /// its end, or an older log swapped in); while set, the seal is not moved forward.
    pub audit_seal_broken: Option<String>,
    /// Set when the audit log's path stopped naming the open log file (moved, deleted or
    /// replaced while the broker runs); cleared at unlock or when the file is back.
    pub audit_path_changed: Option<keyveil_vault::audit::PathChange>,
    /// Audit entries that could not be written, carried across a lock (the writer is closed
    /// then) and handed to the next writer at unlock, which writes them first as `audit.gap`.
    pub audit_gap: Option<keyveil_vault::audit::AuditGap>,
    /// Set while live runs are being stopped because their ends could not be recorded (the
    /// revocations' own entries fail too; this keeps that from recursing).
    pub audit_stopping_runs: bool,
    /// A TOTP enrolment waiting for its confirming code: the base32 seed and when it started.
    pub pending_totp: Option<(SecretValue, Instant)>,
    /// Factor challenges handed out and not yet used (`factor_ops::challenge`), by id.
    pub challenges: std::collections::HashMap<String, HeldChallenge>,
    /// Request times per real origin (`peer.rs`), and of all clients under the empty key: for
    /// the `burst` flag.
    pub recent: std::collections::HashMap<String, std::collections::VecDeque<Instant>>,
    /// Dynamic credentials minted for grants (`crate::dynamic`).
    pub dynamic: crate::dynamic::Registry,
    /// Runs agents asked for while the vault is locked, by id, with when they were last asked
    /// (`locked_asks.rs`); dropped at unlock (the broker that unlocks is a new process).
    pub locked_asks: BTreeMap<u64, (keyveil_proto::op::LockedAsk, Instant)>,
    /// Approvals held between the factor and the human's yes where names are hidden
    /// (`held_approvals.rs`), by SHA-256 of their ticket.
    pub held_approvals: std::collections::HashMap<[u8; 32], super::held_approvals::Held>,
    /// The redactor cards and request entries go through (`card_redact.rs`); dropped at `lock`.
    pub card_redactor: Option<super::card_redact::CardRedactor>,
    /// Redactors kept between the runs of live grants (`redactor_cache.rs`): dropped with their
    /// grant, after idling, and when the vault locks.
    pub run_redactors: super::redactor_cache::RedactorCache,
    /// Mount readers that were (or were about to be) written values, by (pid, start time):
    /// they and their descendants may hold values ([`Inner::peer_holds_values`]). Pruned as
    /// they exit.
    pub value_readers: Vec<(u32, u64)>,
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

/// Error of a broker operation: becomes a [`Reply::Error`].
#[derive(Debug)]
pub(crate) struct OpError {
    /// Class.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
    /// What to do.
    pub hint: Option<String>,
}

impl OpError {
    /// New error.
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> OpError {
        OpError {
            code,
            message: message.into(),
            hint: None,
        }
    }
    /// With a hint.
    pub(crate) fn hint(mut self, hint: impl Into<String>) -> OpError {
        self.hint = Some(hint.into());
        self
    }
    /// As a reply.
    pub(crate) fn reply(self) -> Reply {
        Reply::error(self.code, self.message, self.hint)
    }
}

/// Shorthand result.
pub(crate) type OpResult<T> = Result<T, OpError>;

/// A value sealed in memory could not be opened (the broker's memory was changed).
pub(crate) fn sealed_value_error(e: keyveil_vault::VaultError) -> OpError {
    OpError::new(ErrorCode::Failed, e.to_string())
        .hint("ask the user to restart the broker: `keyveil daemon stop`, then `keyveil unlock`")
}

/// The message of the locked error (the CLI recognises it to word the hint for a human).
pub(crate) const LOCKED_MESSAGE: &str = "the keyveil vault is locked";

/// The locked error, with its hint.
pub(crate) fn locked() -> OpError {
    OpError::new(ErrorCode::Locked, LOCKED_MESSAGE)
        .hint("ask the user to run `keyveil unlock` in a terminal")
}

impl Inner {
    /// The vault, or the locked error.
    pub(crate) fn vault(&self) -> OpResult<&Vault> {
        self.vault.as_ref().ok_or_else(locked)
    }

    /// The vault mutably, or the locked error.
    pub(crate) fn vault_mut(&mut self) -> OpResult<&mut Vault> {
        self.vault.as_mut().ok_or_else(locked)
    }

    /// An audit entry as it may be written: real names hidden where the policy hides them,
    /// and every string through the card redactor (`card_redact.rs`): argv, cwd, paths and
    /// reasons in entries (`run_start`, `deny_rule`, `mount_read`, ...) can come from a granted
    /// child holding values, and the agent reads the log without a factor.
    fn scrub_entry(&mut self, fields: &mut Value) {
        self.scrub_entry_as(fields, true);
    }

    /// [`Inner::scrub_entry`], with the card matcher only when `masked`: an entry whose
    /// strings are an agent's own ([`AccessReq::masked`] false) has real names hidden and
    /// nothing else changed (masking a planted guess there would confirm it).
    fn scrub_entry_as(&mut self, fields: &mut Value, masked: bool) {
        self.hide_names_in(fields);
        if masked && let Some(r) = self.card_redactor() {
            super::card_redact::redact_json(&r, fields);
        }
    }

    /// Whether the process behind `peer` may hold values: it is, or descends from, a live
    /// run's reaper (every process of a run is below it: the reaper is their subreaper) or a
    /// mount reader that was written values (by pid and start time). The whole parent chain is
    /// read from `/proc`; the peer must still be the process that connected (same start
    /// time). Anything that cannot be read is [`Holds::Unsure`].
    pub(crate) fn peer_holds_values(&mut self, peer: &super::peer::Peer) -> Holds {
        let (Some(pid), Some(start)) = (peer.pid(), peer.start) else {
            return Holds::Unsure;
        };
        let Some(chain) = super::peer::ancestry(pid) else {
            return Holds::Unsure;
        };
        if chain.first() != Some(&(pid, start)) {
            return Holds::Unsure;
        }
        self.value_readers
            .retain(|(p, s)| super::mounts::procfs::start_time(*p) == Some(*s));
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

    /// Records an audit entry for something that happens whatever the log says: a revocation,
    /// a lock, a refusal, the end of a run, a failed factor. It may use the log's reserved
    /// space (`keyveil_vault::audit::RESERVE_BYTES`), so it is written on a full disk as long as
    /// the reserve lasts. It never refuses: an entry that cannot be written is counted in the
    /// writer's pending gap (written first, as `audit.gap`, at the next possible append), logged
    /// to `broker.log`, and live runs are stopped (their ends could not be recorded either).
    /// Actions that must not happen unrecorded use [`Inner::must_audit`], or
    /// [`Inner::audit_ready`] before acting and this after. Hidden names are audited by alias
    /// (see `names.rs`).
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

    fn audit_recorded_as(&mut self, event: &str, mut fields: Value, masked: bool) -> bool {
        use keyveil_vault::audit::AuditError;
        self.scrub_entry_as(&mut fields, masked);
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let Some(w) = self.audit.as_mut() else {
            tracing::info!(event, "audit log not open (vault locked)");
            return false;
        };
        match w.append_record(event, map) {
            // The path names the file again (moved back): a later move is noticed anew.
            Ok(_) => {
                self.audit_path_changed = None;
                true
            }
            Err(AuditError::PathChanged { change, .. }) => {
                self.note_audit_path_changed(change);
                tracing::error!(
                    event,
                    "audit entry not recorded: the audit log was moved or replaced"
                );
                false
            }
            Err(e) => {
                tracing::error!(event, error = %e, "audit entry not recorded (kept as a gap, written when the log can be written again); live runs are stopped");
                self.stop_runs_unrecordable();
                false
            }
        }
    }

    /// [`Inner::audit`] for several entries at once, in order, with one write and one sync
    /// (`AuditWriter::append_records`): for a source that records many things that happened
    /// anyway (a run's egress proxy, one entry per request). On failure every entry is counted
    /// in the pending gap and live runs are stopped, as for [`Inner::audit`].
    pub(crate) fn audit_batch(&mut self, entries: Vec<(String, Value)>) {
        use keyveil_vault::audit::AuditError;
        let entries: Vec<_> = entries
            .into_iter()
            .map(|(event, mut fields)| {
                // Like every entry: an egress path or destination is the child's, which may
                // hold a value (`redteam_s9.rs`).
                self.scrub_entry(&mut fields);
                let map = match fields {
                    Value::Object(m) => m,
                    _ => serde_json::Map::new(),
                };
                (event, map)
            })
            .collect();
        let Some(w) = self.audit.as_mut() else {
            tracing::info!(entries = entries.len(), "audit log not open (vault locked)");
            return;
        };
        match w.append_records(entries) {
            Ok(_) => self.audit_path_changed = None,
            Err(AuditError::PathChanged { change, .. }) => {
                self.note_audit_path_changed(change);
                tracing::error!("audit entries not recorded: the audit log was moved or replaced");
            }
            Err(e) => {
                tracing::error!(error = %e, "audit entries not recorded (kept as a gap, written when the log can be written again); live runs are stopped");
                self.stop_runs_unrecordable();
            }
        }
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
    pub(crate) fn audit_note_as(&mut self, event: &str, mut fields: Value, masked: bool) {
        self.scrub_entry_as(&mut fields, masked);
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let Some(w) = self.audit.as_mut() else {
            tracing::info!(event, "audit log not open (vault locked)");
            return;
        };
        if let Err(e) = w.append_if_room(event, map) {
            tracing::error!(event, error = %e, "audit entry not recorded (counted in the gap)");
        }
    }

    /// Appends an audit entry **before** the action it records; the action must not happen
    /// unless this returns `Ok`. The entry is refused (and counted in the pending gap) when the
    /// log cannot keep its reserve after it: a full disk, a quota, an I/O error, a short write,
    /// a failed sync, a moved log. `Ok` while locked (no writer; the locked error comes from
    /// elsewhere).
    ///
    /// # Errors
    /// [`ErrorCode::Failed`]: "the audit log cannot be written: CAUSE; nothing was done" with a
    /// hint to free space (see [`audit_refusal`]), or the moved-log error of
    /// [`Inner::check_audit_path`].
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
        mut fields: Value,
        masked: bool,
    ) -> OpResult<()> {
        self.check_audit_path()?;
        self.scrub_entry_as(&mut fields, masked);
        let map = match fields {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        let Some(w) = self.audit.as_mut() else {
            return Ok(());
        };
        match w.append(event, map) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(event, error = %e, "audit entry refused; the action is refused");
                Err(audit_refusal(event, w.path(), &e))
            }
        }
    }

    /// Stops every live run by revoking its grant (SIGTERM, then SIGKILL): called when an entry
    /// could not be recorded even from the reserve, so the runs' ends could not be either.
    fn stop_runs_unrecordable(&mut self) {
        if self.audit_stopping_runs {
            return;
        }
        self.audit_stopping_runs = true;
        let grants: std::collections::BTreeSet<String> =
            self.runs.values().map(|r| r.grant_id.clone()).collect();
        for gid in grants {
            self.revoke(&gid, "the audit log cannot be written");
        }
        self.audit_stopping_runs = false;
    }

    /// Writes a pending `audit.gap` entry if the log has room for it and its reserve (the
    /// broker's 10-second tick calls this, so a gap is sealed even when nothing else happens).
    pub(crate) fn flush_audit_gap(&mut self) {
        if self.audit_path_changed.is_some() {
            return;
        }
        if let Some(w) = self.audit.as_mut()
            && let Ok(true) = w.flush_gap()
        {
            tracing::info!("audit log writable again; the gap was recorded");
        }
    }

    /// Closes the audit writer (at lock), keeping its pending gap for the next one.
    pub(crate) fn close_audit(&mut self) {
        if let Some(w) = self.audit.as_mut() {
            // Closing: the reserve is no longer needed, the gap may use it.
            let _ = w.flush_gap_closing();
        }
        if let Some(mut w) = self.audit.take()
            && let Some(gap) = w.take_gap()
        {
            tracing::error!(
                entries = gap.entries(),
                "audit entries could not be written; the gap is kept in memory and recorded at the next unlock"
            );
            match &mut self.audit_gap {
                Some(g) => g.merge(gap),
                None => self.audit_gap = Some(gap),
            }
        }
    }

    /// First notice of a moved or replaced audit log: closes the chain in the moved file with
    /// an `audit.path_changed` entry and logs what to do. Later notices only log.
    fn note_audit_path_changed(&mut self, change: keyveil_vault::audit::PathChange) {
        if self.audit_path_changed.is_some() {
            return;
        }
        self.audit_path_changed = Some(change);
        let Some(w) = self.audit.as_mut() else {
            return;
        };
        tracing::error!(
            path = %w.path().display(),
            %change,
            "the audit log is no longer at its path; grants and runs are refused until it is moved back, or until `keyveil lock` and `keyveil unlock` start a new log"
        );
        if let Err(e) = w.record_path_change(change) {
            tracing::error!(error = %e, "cannot record the change in the moved audit log");
        }
    }

    /// Whether the audit log's path still names the file the broker appends to (checked now, by
    /// device and inode). `Ok` while locked (the locked error comes from elsewhere).
    ///
    /// # Errors
    /// [`ErrorCode::Failed`] saying the log was moved, deleted or replaced, with a hint (move it
    /// back, or lock and unlock to start a new log); the first time, an `audit.path_changed`
    /// entry is appended to the moved file.
    pub(crate) fn check_audit_path(&mut self) -> OpResult<()> {
        use keyveil_vault::audit::AuditError;
        let Some(w) = self.audit.as_ref() else {
            return Ok(());
        };
        match w.check_path() {
            Ok(()) => {
                self.audit_path_changed = None;
                Ok(())
            }
            Err(AuditError::PathChanged { path, change }) => {
                self.note_audit_path_changed(change);
                let path = path.display();
                Err(OpError::new(
                    ErrorCode::Failed,
                    format!(
                        "keyveil's audit log {path} was changed while the broker was running ({change}): it is no longer the file the broker writes to, so nothing done now could be recorded, and grants and runs are refused"
                    ),
                )
                .hint(format!(
                    "if the file was moved on purpose, move it back to {path}; otherwise the user runs `keyveil lock` then `keyveil unlock` (with their passphrase), which starts a new log there (`keyveil audit verify` then reports the break against the vault's sealed checkpoint)"
                )))
            }
            Err(e) => Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot check keyveil's audit log: {e}; grants and runs are refused"),
            )
            .hint("check the permissions of KEYVEIL_HOME; `keyveil status` shows where it is")),
        }
    }

    /// Whether an action whose entry is written after it (with [`Inner::audit`]) may proceed:
    /// the log's path must still name the open file ([`Inner::check_audit_path`]), a pending
    /// gap is written, and the log must have room for the entry and its reserve, so that the
    /// entry is written once the action is done. `event` names the entry, for the gap when it
    /// is refused. `Ok` while locked.
    ///
    /// # Errors
    /// As [`Inner::must_audit`].
    pub(crate) fn audit_ready(&mut self, event: &str) -> OpResult<()> {
        self.audit_ready_for(event, 0)
    }

    /// [`Inner::audit_ready`] for an entry of about `entry_len` bytes (a run's argv can be
    /// long): the room checked for is that, or 4 KiB, whichever is more, plus the reserve.
    ///
    /// # Errors
    /// As [`Inner::must_audit`].
    pub(crate) fn audit_ready_for(&mut self, event: &str, entry_len: usize) -> OpResult<()> {
        self.check_audit_path()?;
        let Some(w) = self.audit.as_mut() else {
            return Ok(());
        };
        w.ready(event, entry_len as u64).map_err(|e| {
            tracing::error!(event, error = %e, "the audit log cannot be written; the action is refused");
            audit_refusal(event, w.path(), &e)
        })
    }

    /// Seals the audit log's end into the vault and closes the audit session (lock, stop): the
    /// next unlock then knows this broker ended cleanly. See [`Inner::open_audit_session`].
    pub(crate) fn seal_audit_final(&mut self) {
        self.seal_audit();
        if self.audit_seal_broken.is_some() {
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
        let Some(path) = self.audit.as_ref().map(|w| w.path().to_path_buf()) else {
            return 0;
        };
        let entries = keyveil_vault::audit::read_entries(&path, None).unwrap_or_default();
        let mut open: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        for e in &entries {
            let Some(run_id) = e.get("run_id").and_then(Value::as_str) else {
                continue;
            };
            match e.get("event").and_then(Value::as_str) {
                Some("run_start") => {
                    open.insert(
                        run_id.to_owned(),
                        e.get("grant_id").cloned().unwrap_or(Value::Null),
                    );
                }
                Some("run_end") => {
                    open.remove(run_id);
                }
                _ => {}
            }
        }
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
        if self.audit_seal_broken.is_some() {
            // Never move a seal forward over a log that did not match it.
            return;
        }
        let Some(cp) = self.audit.as_ref().and_then(|w| w.checkpoint()) else {
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

    /// Resolves the variables a request asks for: all set variables when `None`; errors name
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
    /// variables are skipped (minted or fetched per grant: `crate::dynamic::values_for_grant`).
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
    /// [`RunsStopped::wait`] once the lock is released).
    pub(crate) fn runs_ended(
        &self,
        grant_ids: &[String],
    ) -> Vec<tokio::sync::watch::Receiver<Option<super::spawn::TreeEnd>>> {
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
        crate::dynamic::end_grant(self, grant_id);
        was_live
    }
}

/// The error for an action refused because its audit entry cannot be written: "the audit log
/// cannot be written: CAUSE; nothing was run" (for a run) or "...; nothing was done", with a
/// hint to free space where the log lives. Names no entry content.
pub(crate) fn audit_refusal(
    event: &str,
    log: &std::path::Path,
    e: &keyveil_vault::audit::AuditError,
) -> OpError {
    use keyveil_vault::audit::AuditError;
    let cause = match e {
        AuditError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let nothing = if event.starts_with("run") {
        "nothing was run"
    } else {
        "nothing was done"
    };
    let dir = log
        .parent()
        .map_or_else(|| log.display().to_string(), |d| d.display().to_string());
    OpError::new(
        ErrorCode::Failed,
        format!("the audit log cannot be written: {cause}; {nothing}"),
    )
    .hint(format!(
        "free space in {dir} (see `df {dir}`), then try again; keyveil refuses to act on anything it cannot record, and records how many entries were missed as an `audit.gap` entry once it can write again"
    ))
}

/// The "unknown environment" error, listing the ones that exist.
pub(crate) fn unknown_env(env: &str, vault: &Vault) -> OpError {
    let names: Vec<&str> = vault
        .data()
        .environments
        .keys()
        .map(String::as_str)
        .collect();
    OpError::new(ErrorCode::NotFound, format!("no environment named '{env}'")).hint(
        if names.is_empty() {
            "no environment exists yet; the user can create one with `keyveil env create NAME`"
                .to_owned()
        } else {
            format!("environments: {}", names.join(", "))
        },
    )
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

/// Which factor a key a challenge holds stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldKind {
    /// The passphrase's factor key (from the data key).
    Passphrase,
    /// A TOTP exchange for this 30-second step.
    Totp(u64),
}

/// A challenge the broker handed out: its nonce and the keys a proof may use.
#[derive(Debug)]
pub(crate) struct HeldChallenge {
    /// The broker's nonce.
    pub(crate) nonce: [u8; crate::factor_proof::LEN],
    /// The keys a proof may use, by index (taken when used).
    pub(crate) keys: Vec<Option<(HeldKind, crate::factor_proof::FactorKey)>>,
    /// When it was handed out.
    pub(crate) created: std::time::Instant,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(super) fn client(name: &str) -> ClientInfo {
        ClientInfo {
            kind: "mcp".into(),
            name: name.into(),
            version: "1".into(),
            pid: 1,
        }
    }

    fn grant(argv: Option<Vec<String>>) -> Grant {
        let now = Timestamp::now();
        Grant {
            id: "g-1".into(),
            request_id: 1,
            client: "mcp:host".into(),
            environment: "demo".into(),
            variables: vec!["A".into(), "B".into()],
            argv,
            prefix: false,
            cwd: "/w".into(),
            subdirs: false,
            pass_env: vec![],
            executable: None,
            inputs: vec![],
            pass_values: Default::default(),
            chosen_vars: Default::default(),
            stdin_sha256: None,
            created_at: now,
            expires_at: now
                .saturating_add(jiff::SignedDuration::from_secs(60))
                .unwrap(),
            uses_left: Some(1),
            runs: 0,
            revoked: false,
            cancel: CancellationToken::new(),
            masked: true,
        }
    }

    fn ask(client: &str, env: &str, vars: &[&str], argv: &[&str], cwd: &str) -> Ask {
        Ask {
            client: super::tests::client(client),
            environment: env.into(),
            variables: vars.iter().map(|s| s.to_string()).collect(),
            argv: Some(argv.iter().map(|s| s.to_string()).collect()),
            cwd: cwd.into(),
            pass_env: vec![],
            pass_values: Default::default(),
            stdin: None,
            peer: crate::broker::peer::Peer::of_pid(None),
            mount: None,
        }
    }

    #[test]
    fn a_grant_covers_only_its_scope() {
        let now = Timestamp::now();
        let g = grant(Some(vec!["echo".to_string(), "hi".to_string()]));
        assert!(g.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), now));
        // another argv (a shell around it), another cwd, env, client, variable
        assert!(!g.covers(
            &ask("host", "demo", &["A"], &["sh", "-c", "env"], "/w"),
            now
        ));
        assert!(!g.covers(
            &ask("host", "demo", &["A"], &["echo", "hi", "x"], "/w"),
            now
        ));
        assert!(!g.covers(
            &ask("host", "demo", &["A"], &["echo", "hi\u{200b}"], "/w"),
            now
        ));
        assert!(!g.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w/sub"), now));
        assert!(!g.covers(&ask("host", "prod", &["A"], &["echo", "hi"], "/w"), now));
        assert!(!g.covers(&ask("other", "demo", &["A"], &["echo", "hi"], "/w"), now));
        assert!(!g.covers(&ask("host", "demo", &["C"], &["echo", "hi"], "/w"), now));
        let mut p = ask("host", "demo", &["A"], &["echo", "hi"], "/w");
        p.pass_env = vec!["EXTRA".into()];
        assert!(
            !g.covers(&p, now),
            "pass-through names are part of the scope"
        );
        let mut used = g.clone();
        used.uses_left = Some(0);
        assert!(!used.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), now));
        let mut revoked = g.clone();
        revoked.revoked = true;
        assert!(!revoked.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), now));
        let later = now
            .saturating_add(jiff::SignedDuration::from_secs(61))
            .unwrap();
        assert!(!g.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), later));
        assert!(grant(None).covers(&ask("host", "demo", &["A"], &["anything"], "/w"), now));
    }

    #[test]
    fn prefix_grants_match_tokens_and_refuse_code_options() {
        let mut g = grant(Some(vec!["git".to_string(), "fetch".to_string()]));
        g.prefix = true;
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(g.argv_covers(&argv(&["git", "fetch"])));
        assert!(g.argv_covers(&argv(&["git", "fetch", "origin"])));
        assert!(!g.argv_covers(&argv(&["git", "fetch", "--upload-pack=touch /tmp/x"])));
        assert!(!g.argv_covers(&argv(&["git", "fetchx"])));
        assert!(!g.argv_covers(&argv(&["sh", "-c", "git fetch && curl x"])));
        let mut s = grant(Some(vec!["ssh".to_string(), "host".to_string()]));
        s.prefix = true;
        assert!(!s.argv_covers(&argv(&["ssh", "host", "-oProxyCommand=sh"])));
    }

    #[test]
    fn subdir_grants_compare_canonical_paths() {
        let mut g = grant(None);
        g.subdirs = true;
        assert!(g.cwd_covers("/w/sub/deeper"));
        assert!(!g.cwd_covers("/wx"));
        assert!(!g.cwd_covers("/outside"));
    }

    #[test]
    fn factor_guard_locks_after_five_failures_and_doubles() {
        let mut f = FactorGuard::default();
        let t0 = Instant::now();
        for _ in 0..4 {
            assert!(f.fail(t0).is_none());
            assert!(f.check(t0).is_ok());
        }
        assert_eq!(f.fail(t0), Some(FACTOR_LOCKOUT));
        assert!(f.check(t0).is_err());
        assert!(
            f.check(t0 + FACTOR_LOCKOUT + Duration::from_secs(1))
                .is_ok()
        );
        for _ in 0..4 {
            f.fail(t0);
        }
        assert_eq!(f.fail(t0), Some(FACTOR_LOCKOUT * 2));
    }

    #[test]
    fn the_lockout_stops_doubling_and_typed_passphrases_only_wait() {
        let mut f = FactorGuard::default();
        let t0 = Instant::now();
        let mut longest = Duration::ZERO;
        for _ in 0..100 {
            if let Some(d) = f.fail(t0) {
                longest = longest.max(d);
            }
        }
        assert_eq!(longest, MAX_FACTOR_LOCKOUT);
        // While locked, a wrong typed passphrase waits at most MAX_TYPED_DELAY.
        assert_eq!(f.typed_delay(t0), MAX_TYPED_DELAY);
        assert_eq!(
            f.typed_delay(t0 + MAX_FACTOR_LOCKOUT - Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        f.succeed();
        assert_eq!(f.typed_delay(t0), Duration::ZERO);
    }
}
