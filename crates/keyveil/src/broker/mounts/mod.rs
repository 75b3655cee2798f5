//! Mounts: a `.env` that exists only for an approved reader (`docs/mounts.md`).
//!
//! A mount is a FIFO the broker created at a path, listed in `KEYVEIL_HOME/mounts.json` (paths
//! and environment names only; never a value). While the vault is unlocked, [`supervise`] looks
//! at each mount every [`POLL`]: it opens the FIFO for writing without blocking
//! (`O_WRONLY|O_NONBLOCK|O_NOFOLLOW`), which succeeds only when some process holds it open for
//! reading, and checks that what it opened is still the FIFO it made (same device and inode,
//! still a FIFO): a regular file, a symlink or another FIFO put in its place is never written.
//!
//! Each opening is served by `serve_read`: the broker finds every process holding the FIFO
//! (a scan of `/proc/*/fd`, comparing device and inode; `/proc/PID/fdinfo` says how each opened
//! it), and serves only exactly one process that opened it read-only. Anything else (two
//! readers, a process that opened it for writing or `O_RDWR` to pose as a reader) gets nothing,
//! and is audited once. The one reader becomes an ask like a run's: its executable (from
//! `/proc/PID/exe`, pinned: the identity), argv (what it says of itself), pid, cwd, parents and
//! code-loading environment (the run path's list, as pass-through values: on the card, bound
//! by digest) are on the card, with the risk flags of its argv and the mount's own
//! (`dumps-file`: a command that copies or shows a file, by name or by the digest of the
//! installed ones; `agent-reader`: an agent host anywhere in its parent chain;
//! `detached-reader`: its parent is init or a subreaper; `argv-not-the-executable`;
//! `code-loading-environment`). A live grant of the same mount, environment, argv, cwd and
//! code-loading environment whose pinned executable is the reader's serves it without a card,
//! unless its argv is not evidence of what runs, or the approved reader's anchor (its session
//! leader or parent, by pid and start time: `reader::anchor_of`) is not in its parent chain.
//!
//! On approval, the FIFO at the path is first swapped for a fresh one (a new FIFO renamed over
//! it), so no process can open the served FIFO any more by its name; the broker waits for the
//! reader to wait for input; then the holders are read again (still exactly the reader, same
//! pid *and* start time, read-only, not stopped), the served FIFO must have no name left and
//! nothing written into it (empty, modification time unchanged). The served FIFO is made
//! read-only and watched (inotify) from the swap on, and the dotenv text is written in pieces
//! (`write::pieces`: a `NAME=`, or at most a few bytes of a value), each only once the reader
//! read the one before (the pipe empty, its `rchar` grown, no other opening, mode change or
//! write seen): a process racing the reader for the pipe gets at most a piece, and the broker
//! then stops, ends the grant and reports it (`mount_read_suspect`). A copier the watch
//! cannot see (a tee through an io_uring ring) runs on io_uring worker threads, which
//! `uring` looks for: while a process has them no read is asked for, and one that gets them
//! during the pieces stops the read the same way. While a piece waits, a
//! stop, another holder or an exit makes the broker read the rest back out itself (and, on
//! tampering, end the grant). On denial, expiry, lock, or any doubt, the FIFO is closed
//! unwritten: the reader reads end-of-file, zero bytes. A reader that closes early makes the
//! write fail with `EPIPE`, which is only audited (Rust ignores `SIGPIPE`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Broker;
use super::state::{Ask, MountAnchor, MountAsk, OpError, OpResult, RequestState};
use keyveil_proto::{ClientInfo, ErrorCode, op};

use super::{access, peer, runner, state};

mod fifo;
mod history;
mod manage;
mod opens;
pub(crate) mod procfs;
mod reader;
mod registry;
mod serve;
#[cfg(test)]
mod tests;
mod uring;
mod write;

use crate::subuid::*;
use fifo::*;
use opens::*;
use procfs::*;
use reader::*;
use registry::*;
use uring::*;
use write::*;

pub(crate) use history::rebuild as rebuild_history;
pub(crate) use manage::{list, mount, unmount};
pub(crate) use registry::Registry;
pub(crate) use serve::supervise;
pub(crate) use uring::io_uring_disabled;

/// How often each mount is looked at for a new reader.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// The client kind of a mount read (its grants' scope is `mount:PATH`). Refused from sockets:
/// only the broker makes asks of this kind.
pub(crate) const MOUNT_KIND: &str = "mount";

fn usage(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Usage, msg)
}

fn shown(p: &str) -> String {
    keyveil_proto::display::visible(p)
}
