//! Mounts: `.env` files that exist only for an approved reader (`docs/mounts.md`).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Create a mount: a FIFO at `path`, served by the broker, whose every read is a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mount {
    /// Environment whose variables a read gets.
    pub environment: String,
    /// Absolute path of the FIFO to create (its directory must exist).
    pub path: String,
    /// Put the FIFO in place of an existing regular file at `path` (one atomic rename:
    /// `keyveil import --mount`); without it an existing `path` is refused.
    #[serde(default)]
    pub replace: bool,
}

/// The reply to [`Mount`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mounted {
    /// The mount as listed.
    pub mount: MountInfo,
    /// It replaced a regular file.
    pub replaced: bool,
}

/// Remove a mount and its FIFO.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unmount {
    /// Absolute path of the mount.
    pub path: String,
}

/// The reply to [`Unmount`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unmounted {
    /// The path.
    pub path: String,
    /// The FIFO was removed (`false`: it was already gone or replaced by something else, which
    /// was left as it is).
    pub removed: bool,
}

/// List mounts.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Mounts {}

/// The reply to [`Mounts`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountList {
    /// Every mount of this keyveil home.
    pub mounts: Vec<MountInfo>,
}

/// One mount.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountInfo {
    /// Absolute path of the FIFO.
    pub path: String,
    /// Environment served.
    pub environment: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// `serving`, `locked` (the vault is locked: readers wait), `missing` (the FIFO was
    /// deleted by someone else) or `replaced` (something else is at the path now; it is left
    /// alone).
    pub state: String,
    /// Reads answered since the broker started.
    pub reads: u64,
    /// Reads that got nothing (denied, expired, refused).
    pub refused: u64,
    /// The last thing that happened, in words (never a value).
    pub last: Option<String>,
    /// The recent events, newest first, in words (a few; a stop or a denial is kept over
    /// mundane refusals). Rebuilt from the verified audit log when the vault is unlocked.
    #[serde(default)]
    pub recent: Vec<String>,
}

operation!(Mount => Mounted);
operation!(Unmount => Unmounted);
operation!(Mounts => MountList);
