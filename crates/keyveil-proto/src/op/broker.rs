//! The broker itself: status, lock, shutdown, factor challenges, the web page's one-time links.

use std::path::PathBuf;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::request::Challenge;

/// A fresh challenge for proving a factor (see `factor_proof.rs`); replies [`Challenge`].
#[derive(Debug, Serialize, Deserialize)]
pub struct FactorChallenge {
    /// 64 hex digits of the CLI's random nonce.
    pub client_nonce: String,
    /// For a TOTP code: the CLI's SPAKE2 messages (hex), one per candidate time step.
    #[serde(default)]
    pub totp: Vec<String>,
}

/// A one-time URL of the local page where the human types the value of a declared variable
/// that has none yet (the value goes from the browser to the broker, never through a client).
#[derive(Debug, Serialize, Deserialize)]
pub struct SetUrl {
    /// Environment name.
    pub environment: String,
    /// Variable name.
    pub name: String,
}

operation!(FactorChallenge => Challenge);
operation!(SetUrl => OneTimeLink);

unit_operation!(
    /// Broker state.
    Status => BrokerStatus
);
unit_operation!(
    /// Drop the decrypted vault from memory; revoke all grants (their runs are stopped).
    Lock => Locked
);
unit_operation!(
    /// Stop the broker and its runs.
    Shutdown => Stopping
);
unit_operation!(
    /// A one-time URL of the local web approval page (starts the page on first use).
    WebUrl => OneTimeLink
);

/// The reply to [`Status`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerStatus {
    /// Always `true` (a broker answered).
    pub running: bool,
    /// The broker's process id.
    pub pid: u32,
    /// The broker's version.
    pub version: String,
    /// Its `KEYVEIL_HOME`.
    pub home: PathBuf,
    /// Its socket.
    pub socket: PathBuf,
    /// Whether a vault file exists.
    pub vault_exists: bool,
    /// Whether the vault is locked (not in memory).
    pub locked: bool,
    /// Requests waiting for the human.
    pub pending_requests: usize,
    /// Grants still usable.
    pub live_grants: usize,
    /// Runs whose processes are still alive.
    pub live_runs: usize,
    /// Those runs.
    pub runs: Vec<LiveRun>,
    /// While the vault is locked: what agents asked for (the human's `keyveil approve` unlocks
    /// the vault and approves the request the agent makes again, with one passphrase entry).
    /// Empty while unlocked.
    #[serde(default)]
    pub locked_asks: Vec<LockedAsk>,
    /// Lines of the broker's own log (`broker.log`) that could not be written since it started
    /// (a full disk): the broker goes on without them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_lines_lost: u64,
    /// Redactors the broker keeps between the runs of live grants (a count; each is dropped
    /// with its grant, after five idle minutes, and when the vault locks).
    #[serde(default)]
    pub kept_redactors: usize,
    /// Working directories watched between runs for the write-side scan (each kept while a
    /// grant that ran in it lives, dropped when the vault locks).
    #[serde(default)]
    pub watched_folders: usize,
    /// inotify watches those hold in all (one per folder under them).
    #[serde(default)]
    pub watched_dirs: usize,
    /// Variables whose value keyveil made at random was found in the strings of a request
    /// whose requester holds no values (flag `value-outside-custody`), not rotated since:
    /// whoever wrote those strings holds the value. Empty while the vault is locked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_outside_custody: Vec<OutsideCustody>,
    /// Whether this broker runs in CI mode (`docs/ci.md`): no factor, a frozen allowlist.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ci: bool,
}

/// A variable whose value was found outside keyveil's custody (in [`BrokerStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutsideCustody {
    /// Environment.
    pub environment: String,
    /// The variable, as clients see it (an alias where names are hidden).
    pub variable: String,
    /// When it was found.
    pub found_at: Timestamp,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// A run an agent asked for while the vault was locked (in [`BrokerStatus::locked_asks`]).
/// A locked broker cannot resolve names, pins or risk: this is what the agent sent, as given
/// (names as the agent wrote them); the full card comes from the unlocked broker when the
/// agent asks again. Every string is requester-supplied: show it through `display`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockedAsk {
    /// Its number (taken from the request ids, so it never repeats).
    pub id: u64,
    /// The client's self-declared name.
    pub client: String,
    /// Environment name as asked.
    pub environment: String,
    /// Variable names as asked (`None`: every variable of the environment).
    pub variables: Option<Vec<String>>,
    /// The command.
    pub argv: Vec<String>,
    /// Working directory, made canonical.
    pub cwd: String,
    /// Pass-through names as asked (empty: none).
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// HMAC-SHA256 (hex) of the standard input the agent supplies, under a key the locked
    /// broker made at start and never lets out (`None`: `/dev/null`): it tells asks apart while
    /// that broker runs. The unlock starts another broker, whose key (and so whose cards'
    /// digests) differ: `approve` compares [`LockedAsk::stdin_bytes`] instead.
    #[serde(default)]
    pub stdin_digest: Option<String>,
    /// The length in bytes of the standard input the agent supplies (`None`: `/dev/null`).
    #[serde(default)]
    pub stdin_bytes: Option<usize>,
    /// The agent's reason.
    pub reason: Option<String>,
    /// When it was last asked.
    pub asked_at: Timestamp,
}

/// A run whose processes are alive (in [`BrokerStatus::runs`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveRun {
    /// Run id.
    pub id: String,
    /// Grant id.
    pub grant_id: String,
    /// The run's process group (its reaper's pid).
    pub pgid: i32,
    /// argv as the requester gave it, every whole stored value masked (`[REDACTED:NAME]`).
    pub argv: Vec<String>,
    /// Start.
    pub started_at: Timestamp,
}

/// What stopping runs achieved (part of the replies to [`Lock`] and `Revoke`): only what the
/// broker confirmed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunsStopped {
    /// Runs that were live.
    pub runs_stopped: u32,
    /// Their processes that were signalled and are gone.
    pub processes_killed: u32,
    /// Runs whose end was not confirmed (processes left alive, a reaper killed first, no end
    /// within the wait).
    pub runs_unconfirmed: u32,
}

/// The reply to [`Lock`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Locked {
    /// Always `true`: the values left the broker's memory, whatever else failed.
    pub locked: bool,
    /// The runs the lock stopped.
    #[serde(flatten)]
    pub stopped: RunsStopped,
    /// Whether the `lock` entry reached the audit log (`false` on a full disk: it is counted
    /// in the gap the next unlock records first). Absent means `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub recorded: bool,
    /// `true` when the vault was locked already: nothing happened, so nothing was recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already: bool,
    /// What is wrong with the audit log, when the broker knows (one sentence for the human):
    /// it was replaced or moved since the unlock, or it does not verify against the vault's
    /// seal. Absent when nothing is known to be wrong (a failed write without a known cause
    /// leaves only `recorded` false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_problem: Option<String>,
}

/// The reply to [`Shutdown`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stopping {
    /// Always `true`: the broker stops after answering.
    pub stopping: bool,
}

/// The reply to [`WebUrl`] and [`SetUrl`]: a one-time link to a page on 127.0.0.1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OneTimeLink {
    /// `http://127.0.0.1:PORT/...?token=...`.
    pub url: String,
    /// The token's lifetime, seconds.
    pub expires_in_seconds: u64,
}

/// The one-line answer of a broker started with a [`crate::Bootstrap`] (on its stdout, the
/// socket pair of the CLI that started it), inside a [`crate::Reply::Ok`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bootstrapped {
    /// `Bootstrap::Init`: the vault created.
    Created {
        /// The vault file.
        created: PathBuf,
    },
    /// `Bootstrap::Ci`: the CI broker serves.
    CiStarted {
        /// What it froze and the key that will sign its audit chain.
        ci: super::CiStarted,
    },
    /// `Bootstrap::Unlock`: the vault is open.
    Unlocked {
        /// Always `true`.
        unlocked: bool,
        /// `Some(true)` when it already was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        already: Option<bool>,
        /// What the human must know about this unlock (an audit log that failed verification
        /// and was moved aside, with what is missing from it).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
}
