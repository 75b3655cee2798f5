//! The FIFO itself: making it, what is at its path, opening it for writing only when read.

use super::*;

/// Whether an error of `mkfifo` means the filesystem has no FIFOs.
pub(super) fn no_fifos(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    e == Errno::PERM || e == Errno::OPNOTSUPP || e == Errno::INVAL || e == Errno::NOSYS
}

/// Makes a FIFO (mode 0600) at `path`: its device and inode.
#[cfg(test)]
pub(super) fn make_fifo(path: &Path) -> OpResult<(u64, u64)> {
    make_fifo_timed(path).map(|(dev, ino, _)| (dev, ino))
}

/// A modification time as ns since the epoch.
pub(super) fn mtime_ns(sec: i64, nsec: i64) -> i128 {
    i128::from(sec) * 1_000_000_000 + i128::from(nsec)
}

/// Makes a FIFO (mode 0600) at `path`: its device, inode and modification time (ns); the
/// error says what to do.
pub(super) fn make_fifo_timed(path: &Path) -> OpResult<(u64, u64, i128)> {
    use rustix::fs::{CWD, Mode};
    rustix::fs::mkfifoat(CWD, path, Mode::RUSR | Mode::WUSR).map_err(|e| {
        if no_fifos(e) {
            OpError::new(
                ErrorCode::Failed,
                format!(
                    "the filesystem of {} cannot hold a named pipe (FIFO): {e}",
                    shown(&path.display().to_string())
                ),
            )
            .hint("mount on a local filesystem (ext4, xfs, btrfs, tmpfs), not a network, FAT or FUSE share; or start the program with `keyveil run --env ENV -- CMD`, which needs no file")
        } else if e == rustix::io::Errno::EXIST {
            OpError::new(
                ErrorCode::Failed,
                format!("{} already exists", shown(&path.display().to_string())),
            )
            .hint("remove it first, or import it and put the mount in its place with `keyveil import ENV FILE --mount`")
        } else {
            OpError::new(
                ErrorCode::Failed,
                format!("cannot create a named pipe at {}: {e}", shown(&path.display().to_string())),
            )
            .hint("check that the directory exists and is yours")
        }
    })?;
    let m = std::fs::symlink_metadata(path)
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot read the new FIFO: {e}")))?;
    // Its openings are counted from now on, before it has the mount's name.
    watch_opens(path, m.dev(), m.ino());
    Ok((m.dev(), m.ino(), mtime_ns(m.mtime(), m.mtime_nsec())))
}

/// A name next to `path` for a FIFO that is renamed over it.
pub(super) fn sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.keyveil-{}",
        super::state::new_id("").trim_start_matches('-')
    ))
}

/// What is at a mount's path now.
pub(super) enum AtPath {
    /// The FIFO the broker made.
    Ours,
    /// Nothing.
    Missing,
    /// Something else.
    Replaced,
}

pub(super) fn at_path(path: &str, dev: u64, ino: u64) -> AtPath {
    match std::fs::symlink_metadata(path) {
        Err(_) => AtPath::Missing,
        Ok(m) if m.file_type().is_fifo() && m.dev() == dev && m.ino() == ino => AtPath::Ours,
        Ok(_) => AtPath::Replaced,
    }
}

/// Opens the mount's FIFO for writing if a process holds it open for reading, and only if it
/// is still the FIFO the broker made (checked before and after the open).
pub(super) fn open_if_read(path: &str, dev: u64, ino: u64) -> Result<Option<OwnedFd>, AtPath> {
    use rustix::fs::{Mode, OFlags};
    match at_path(path, dev, ino) {
        AtPath::Ours => {}
        other => return Err(other),
    }
    let fd = match rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // No reader: nothing to serve.
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::NOENT) => return Err(AtPath::Missing),
        Err(_) => return Err(AtPath::Replaced),
    };
    match rustix::fs::fstat(&fd) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
                && st.st_dev == dev
                && st.st_ino == ino =>
        {
            Ok(Some(fd))
        }
        // Replaced between the check and the open: closed unwritten.
        _ => Err(AtPath::Replaced),
    }
}
