//! Requests for access, approvals and grants.

use crate::request::FactorProof;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::request::AccessRequest;

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
