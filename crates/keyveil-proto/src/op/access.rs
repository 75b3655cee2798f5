//! Requests for access, approvals and grants.

use crate::request::FactorProof;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::request::{AccessRequest, ClientInfo};

/// State of a request.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessStatus {
    /// Request id.
    pub request_id: u64,
}

/// Approve a request with the human's factor.
#[derive(Debug, Serialize, Deserialize)]
pub struct Approve {
    /// Request id.
    pub request_id: u64,
    /// `factor_proof::card_digest` of the request as the human was shown it: the broker
    /// refuses the approval if its request no longer has this digest.
    pub card: String,
    /// Proof of the human's factor (absent only with `confirm`).
    #[serde(default)]
    pub factor: Option<FactorProof>,
    /// No secret factor: allowed only where the environment's policy is `confirm`.
    #[serde(default)]
    pub confirm: bool,
    /// Grant lifetime in seconds (absent: a one-use grant valid for 15 minutes).
    pub ttl_seconds: Option<u64>,
    /// Number of uses (absent: 1 without a TTL, unlimited within a TTL).
    pub uses: Option<u32>,
    /// Let the grant cover any command in the environment.
    pub any_command: bool,
    /// Cover longer argv that start with the approved one (token-wise, no code options).
    #[serde(default)]
    pub prefix: bool,
    /// Cover canonical subdirectories of the approved working directory.
    #[serde(default)]
    pub subdirs: bool,
}

/// Step one of approving a request in an environment that hides its names (the human's CLI):
/// the factor is checked and the card matched as for [`Approve`], but nothing is granted yet.
/// The reply carries the real names of the request's variables and a one-time ticket, sealed
/// for the CLI that proved the factor; the human reads the names and, on a yes, sends the ticket
/// with [`ApproveConfirm`]. The options are fixed here: the ticket grants exactly these.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApproveReveal {
    /// Request id.
    pub request_id: u64,
    /// `factor_proof::card_digest` of the request as the human was shown it.
    pub card: String,
    /// Proof of the human's factor (passphrase or TOTP; never a plain confirmation).
    #[serde(default)]
    pub factor: Option<FactorProof>,
    /// Grant lifetime in seconds (as [`Approve::ttl_seconds`]).
    pub ttl_seconds: Option<u64>,
    /// Number of uses (as [`Approve::uses`]).
    pub uses: Option<u32>,
    /// Let the grant cover any command in the environment.
    pub any_command: bool,
    /// Cover longer argv that start with the approved one.
    #[serde(default)]
    pub prefix: bool,
    /// Cover canonical subdirectories of the approved working directory.
    #[serde(default)]
    pub subdirs: bool,
}

/// Step two: the human said yes to the names [`ApproveReveal`] showed; the ticket (64 hex
/// digits, single use, 2 minutes) stands for the factor checked in step one and grants the
/// request with the options given there, if its card is still the one shown.
#[derive(Debug, Serialize, Deserialize)]
pub struct ApproveConfirm {
    /// Request id (must be the ticket's).
    pub request_id: u64,
    /// The ticket from the sealed reply to [`ApproveReveal`].
    pub ticket: String,
}

/// The reply to [`ApproveReveal`]: nothing granted yet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalHeld {
    /// The request held.
    pub request_id: u64,
    /// The JSON of [`HeldReveal`] sealed under the transit key of the factor proof
    /// (associated data `approve_reveal`).
    pub sealed: String,
    /// How long the ticket waits for [`ApproveConfirm`], in seconds.
    pub expires_in_seconds: u64,
}

/// What [`ApprovalHeld::sealed`] opens to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldReveal {
    /// The ticket for [`ApproveConfirm`].
    pub ticket: String,
    /// The request's variables: alias and real name (no description).
    pub names: Vec<super::RevealedName>,
}

/// Deny a request.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deny {
    /// Request id.
    pub request_id: u64,
    /// Reason shown to the requester.
    pub reason: Option<String>,
}

/// Live grants (of one client if `client` is set).
#[derive(Debug, Serialize, Deserialize)]
pub struct Grants {
    /// Filter: a client scope key (`mcp:NAME`).
    pub client: Option<String>,
}

/// Revoke one grant, or all.
#[derive(Debug, Serialize, Deserialize)]
pub struct Revoke {
    /// Grant id; `None` with `all` revokes every grant.
    pub grant_id: Option<String>,
    /// Revoke every live grant.
    pub all: bool,
    /// Only grants of this client scope key (used by MCP `revoke_grant`).
    pub client: Option<String>,
}

operation!(Revoke => Revoked);

/// The reply to [`Revoke`], once the grants' runs are gone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    /// Always `true`.
    pub revoked: bool,
    /// Grants revoked.
    pub count: u32,
    /// Of those, grants that had already ended (no use left, or expired): revoking them
    /// stopped their runs.
    pub already_ended: u32,
    /// The grants named or matched.
    pub grant_ids: Vec<String>,
    /// The runs stopped.
    #[serde(flatten)]
    pub stopped: super::RunsStopped,
}

operation!(AccessStatus => AccessState);
operation!(Approve => Approved);
operation!(ApproveReveal => ApprovalHeld);
operation!(ApproveConfirm => Approved);
operation!(Deny => Denied);

impl From<AccessRequest> for crate::Request {
    fn from(o: AccessRequest) -> crate::Request {
        crate::Request::RequestAccess(o)
    }
}

impl super::Operation for AccessRequest {
    type Reply = AccessRequested;
}

/// The reply to [`AccessRequest`]: a request waits for the human.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessRequested {
    /// The request to approve.
    pub request_id: u64,
    /// `pending`.
    pub status: String,
    /// What the human should do.
    pub hint: String,
}

/// The reply to [`AccessStatus`], tagged by `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum AccessState {
    /// Waiting for the human.
    Pending {
        /// What the human should do.
        hint: String,
    },
    /// Approved; the grant is usable.
    Approved {
        /// The grant.
        grant_id: String,
        /// When it expires (`None`: it is gone).
        expires_at: Option<Timestamp>,
    },
    /// Approved, but the grant is used up, expired or revoked.
    Ended {
        /// The grant.
        grant_id: String,
        /// When it expired or would have (`None`: it is gone).
        expires_at: Option<Timestamp>,
    },
    /// Denied.
    Denied {
        /// The human's reason.
        reason: Option<String>,
    },
    /// Nobody decided in time.
    Expired,
}

/// The reply to [`Approve`] (and what an auto-approve rule grants).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approved {
    /// The request approved.
    pub request_id: u64,
    /// The grant created.
    pub grant_id: String,
    /// When it expires.
    pub expires_at: Timestamp,
    /// Uses left (`None`: any number until it expires).
    pub uses_left: Option<u32>,
    /// It covers any command of the environment.
    pub any_command: bool,
    /// It covers longer argv starting with the approved one.
    pub prefix: bool,
    /// It covers subdirectories of the approved working directory.
    pub subdirs: bool,
}

/// The reply to [`Deny`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Denied {
    /// The request denied.
    pub request_id: u64,
    /// `denied`.
    pub status: String,
}

operation!(Grants => GrantList);

/// The reply to [`Grants`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantList {
    /// Grants still usable, or with a run still live.
    pub grants: Vec<GrantInfo>,
}

/// One grant in [`GrantList`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantInfo {
    /// Grant id.
    pub id: String,
    /// The request it came from.
    pub request_id: u64,
    /// The client scope key it is bound to (`mcp:NAME`, `cli:keyveil`).
    pub client: String,
    /// Environment.
    pub environment: String,
    /// Variables it serves.
    pub variables: Vec<String>,
    /// The argv it covers; `None`: any command.
    pub argv: Option<Vec<String>>,
    /// It covers longer argv starting with `argv`.
    pub prefix: bool,
    /// Working directory runs must use.
    pub cwd: String,
    /// It covers subdirectories of `cwd`.
    pub subdirs: bool,
    /// Requester variables passed through.
    pub pass_env: Vec<String>,
    /// The executable pinned at approval.
    pub executable: Option<FilePinInfo>,
    /// Inputs pinned at approval (scripts, configuration the command executes).
    pub inputs: Vec<InputPinInfo>,
    /// Approved.
    pub created_at: Timestamp,
    /// Expires.
    pub expires_at: Timestamp,
    /// Uses left (`None`: any number until it expires).
    pub uses_left: Option<u32>,
    /// Runs started under it.
    pub runs: u32,
    /// Revoked.
    pub revoked: bool,
    /// Credentials minted for it (handles and expiry, never a secret).
    #[serde(default)]
    pub dynamic: Vec<DynamicCredential>,
    /// For a mount read's grant: which later readers it serves without a card
    /// (`readers started under bash (pid 812)`, or none). `None` for a run's grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount_scope: Option<String>,
    /// Reads a spawn under it waits on: OpenBao holds them for a control group until a second
    /// approver authorizes them there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub openbao_waits: Vec<ControlGroupWait>,
}

/// A read OpenBao holds for a control group, which a spawn waits on (in
/// [`GrantInfo::openbao_waits`]): what the second approver needs, no secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlGroupWait {
    /// The variable the read is for.
    pub variable: String,
    /// The path read (`secret/data/team/app`).
    pub path: String,
    /// The wrapping token's accessor, to authorize in OpenBao (it cannot unwrap).
    pub accessor: String,
    /// Since when the spawn waits.
    pub since: Timestamp,
}

/// A file pinned at approval: identity and content digest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FilePinInfo {
    /// Absolute path.
    pub path: String,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Size, bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// SHA-256 of the content (hex).
    pub sha256: String,
}

/// An input pinned at approval (a script, a configuration file the command executes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputPinInfo {
    /// What it is to the command (`script`, `config`, ...).
    pub role: String,
    /// Path.
    pub path: String,
    /// SHA-256 of the content (hex).
    pub sha256: String,
    /// What the card quotes of it.
    pub detail: Option<String>,
}

/// A credential minted for a grant (in [`GrantInfo::dynamic`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DynamicCredential {
    /// The variable it is injected as.
    pub variable: String,
    /// Where it lives.
    pub handle: CredentialInfo,
    /// Minted.
    pub minted_at: Timestamp,
    /// When it stops working at its source.
    pub expires_at: Timestamp,
}

/// Names a minted credential at its source; no secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialInfo {
    /// `postgres`, `redis`, `openbao-database`.
    pub engine: String,
    /// Role or user name.
    pub user: String,
    /// The OpenBao lease id, else empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease_id: String,
    /// The server (`user@host:port/db`, the OpenBao address).
    pub target: String,
}

unit_operation!(
    /// Requests waiting for the human, as approval cards.
    Requests => PendingRequests
);

/// The reply to [`Requests`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRequests {
    /// Pending requests, by id.
    pub requests: Vec<RequestCard>,
}

/// One pending request as the human is shown it (the terminal card, `approve --watch`, the
/// web page). An approval names the card's digest (`factor_proof::card_digest` of its JSON,
/// without `asks` and `expires_at`): the broker refuses it for any other card. Missing fields
/// take their defaults only so that a partial card can be rendered in tests; the broker always
/// sends every field.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestCard {
    /// Request id.
    pub id: u64,
    /// Who the requester claims to be.
    pub client: ClientInfo,
    /// The process that really connected.
    pub peer: PeerInfo,
    /// Environment.
    pub environment: String,
    /// Variables asked for.
    pub variables: Vec<String>,
    /// The command; `None`: any command.
    pub argv: Option<Vec<String>>,
    /// Canonical working directory.
    pub cwd: String,
    /// The requester's reason (a claim).
    pub reason: Option<String>,
    /// Requested grant lifetime, seconds.
    pub ttl_seconds: Option<u64>,
    /// Requester variables passed through.
    pub pass_env: Vec<String>,
    /// The executable pinned.
    pub executable: Option<FilePinInfo>,
    /// Inputs pinned.
    pub inputs: Vec<InputPinInfo>,
    /// Risk flags.
    pub risk: Vec<String>,
    /// Values the requester could have chosen, shown and bound.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub chosen_values: Vec<ChosenValueInfo>,
    /// Standard input the requester supplies to the command, shown and bound (a run with other
    /// bytes is another request); `None`: the command's standard input is `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<StdinInfo>,
    /// Requested variables stored recently without the factor.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_variables: Vec<NewVariableInfo>,
    /// Facts that contradict the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub contradictions: Vec<String>,
    /// Requested variables bound to hosts: the run gets placeholders, the value goes only to
    /// these hosts through the run's egress proxy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound: Vec<BoundVariable>,
    /// Identical asks merged into this request.
    pub asks: u32,
    /// Created.
    pub created_at: Timestamp,
    /// `pending`.
    pub state: String,
    /// When it expires unanswered.
    pub expires_at: Timestamp,
    /// Set when the request is a read of a mount (`docs/mounts.md`): the reader was not started
    /// by keyveil, and the card says what that means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<MountRead>,
}

/// A read of a mount, as its card shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MountRead {
    /// The FIFO's path.
    pub path: String,
    /// The reader's pid.
    pub pid: u32,
    /// The process a `--ttl` grant of this read is bound to, as `NAME (pid N)`: later readers
    /// are served without a card only when started under it. `None`: no anchor (the reader's
    /// parent is init or a subreaper), and such a grant serves no later reader without a card.
    pub anchor: Option<String>,
}

/// A variable bound to hosts, as a card shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundVariable {
    /// Variable name (an alias where names are hidden).
    pub variable: String,
    /// Destinations (`host` or `host:port`).
    pub hosts: Vec<String>,
    /// The value is also swapped into the request's path and query.
    #[serde(default)]
    pub url: bool,
    /// The value is also swapped into the request's body and trailers.
    #[serde(default)]
    pub body: bool,
}

/// The process at the other end of a requester's connection (from the kernel and `/proc`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerInfo {
    /// The connecting process (`None`: the kernel gave no pid).
    pub process: Option<ProcInfo>,
    /// For a keyveil peer: `mcp` or `cli`.
    pub keyveil_mode: Option<String>,
    /// Its parents, nearest first.
    pub parents: Vec<ProcInfo>,
    /// What open requests are counted by (the origin's executable path).
    pub origin: String,
}

/// One process of a peer's chain.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcInfo {
    /// Process id.
    pub pid: u32,
    /// Its `comm` (set by the process itself: a label only).
    pub comm: String,
    /// Its executable, when readable.
    pub exe: Option<String>,
    /// It runs keyveil's own executable.
    pub keyveil: bool,
}

/// A value an agent could have chosen, as the card shows it and a grant binds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChosenValueInfo {
    /// `pass-env` or `stored-without-factor`.
    pub origin: String,
    /// The pass-through name (for `pass-env`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The vault variable (for `stored-without-factor`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variable: Option<String>,
    /// When the vault value was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<Timestamp>,
    /// The value's first characters, as given (`None`: not set).
    pub value: Option<String>,
    /// The value's length, bytes.
    pub bytes: usize,
    /// Only part of the value is in `value`.
    pub clipped: bool,
    /// HMAC-SHA256 (hex) of the whole value under a key the broker makes at start and never
    /// lets out: it names the value for the broker's life, and cannot be searched offline.
    pub digest: Option<String>,
}

/// Standard input a requester supplies to a run, as the card shows it and a grant binds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StdinInfo {
    /// Its first characters, as given (escaped when shown).
    pub text: String,
    /// Its length, bytes.
    pub bytes: usize,
    /// Only part of it is in `text`.
    pub clipped: bool,
    /// HMAC-SHA256 (hex) of all of it under a key the broker makes at start and never lets
    /// out: it names the input for the broker's life, and cannot be searched offline.
    pub digest: String,
    /// The command reads program text or commands from standard input (an interpreter or REPL
    /// keyveil knows, or a `-`/`/dev/stdin` operand): the card says it is code.
    pub program: bool,
}

/// A requested variable stored recently without the factor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NewVariableInfo {
    /// Its name.
    pub variable: String,
    /// Created.
    pub created_at: Timestamp,
    /// Its value (or declaration) stored, if recorded.
    pub stored_at: Option<Timestamp>,
    /// `without the factor` or `unknown`.
    pub stored: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// An approval binds the digest of the card's JSON as the client re-encodes it: a card must
    /// come back from its own JSON byte for byte, with every optional part set or not.
    #[test]
    fn a_request_card_round_trips_exactly() {
        let t: Timestamp = "2026-12-06T10:00:00.123456789Z".parse().unwrap();
        let full = RequestCard {
            id: 7,
            client: ClientInfo {
                kind: "mcp".into(),
                name: "codex".into(),
                version: "1".into(),
                pid: 42,
            },
            peer: PeerInfo {
                process: Some(ProcInfo {
                    pid: 42,
                    comm: "node".into(),
                    exe: None,
                    keyveil: false,
                }),
                keyveil_mode: Some("mcp".into()),
                parents: vec![ProcInfo::default()],
                origin: "/usr/bin/node".into(),
            },
            environment: "demo".into(),
            variables: vec!["API_TOKEN".into()],
            argv: Some(vec!["make".into(), "test".into()]),
            cwd: "/w".into(),
            reason: None,
            ttl_seconds: Some(60),
            pass_env: vec!["API_HOST".into()],
            executable: Some(FilePinInfo {
                path: "/usr/bin/make".into(),
                dev: 1,
                ino: 2,
                size: 3,
                mtime_ns: -4,
                ctime_ns: 5,
                sha256: "ab".into(),
            }),
            inputs: vec![InputPinInfo {
                role: "makefile".into(),
                path: "/w/Makefile".into(),
                sha256: "cd".into(),
                detail: None,
            }],
            risk: vec!["first-time".into()],
            chosen_values: vec![ChosenValueInfo {
                origin: "pass-env".into(),
                name: Some("API_HOST".into()),
                variable: None,
                stored_at: None,
                value: None,
                bytes: 0,
                clipped: false,
                digest: None,
            }],
            stdin: Some(StdinInfo {
                text: "print(1)\n".into(),
                bytes: 9,
                clipped: false,
                digest: "00".repeat(32),
                program: true,
            }),
            new_variables: vec![NewVariableInfo {
                variable: "API_TOKEN".into(),
                created_at: t,
                stored_at: None,
                stored: "unknown".into(),
            }],
            contradictions: vec!["x".into()],
            bound: vec![BoundVariable {
                variable: "API_TOKEN".into(),
                hosts: vec!["api.example.com".into()],
                url: false,
                body: true,
            }],
            asks: 2,
            created_at: t,
            state: "pending".into(),
            expires_at: t,
            mount: Some(MountRead {
                path: "/w/.env".into(),
                pid: 42,
                anchor: Some("bash (pid 20)".into()),
            }),
        };
        let empty = RequestCard {
            bound: Vec::new(),
            argv: None,
            executable: None,
            chosen_values: Vec::new(),
            stdin: None,
            new_variables: Vec::new(),
            contradictions: Vec::new(),
            mount: None,
            ..full.clone()
        };
        for card in [full, empty] {
            let once = serde_json::to_string(&card).unwrap();
            let back: RequestCard = serde_json::from_str(&once).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), once);
        }
    }
}
