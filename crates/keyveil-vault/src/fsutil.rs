//! File-system helpers: private file creation, the sibling lock file, atomic replacement.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::VaultError;

/// How long a save waits for another process's lock before giving up with
/// [`VaultError::Locked`].
const LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_POLL: Duration = Duration::from_millis(10);

/// `OpenOptions` that create files readable and writable by the owner only (mode 0600 on Unix).
pub(crate) fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// The lock file that guards `path`: a sibling named `<file name>.lock` (`vault` → `vault.lock`).
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    path.with_file_name(name)
}

/// An exclusive advisory lock (`flock`-style, std `File::lock`); released when dropped.
#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

/// Takes the exclusive lock on `lock_path` (created 0600 if missing, never deleted), waiting up
/// to [`LOCK_WAIT`].
pub(crate) fn lock_exclusive(lock_path: &Path) -> Result<LockGuard, VaultError> {
    let file = private_options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path)
        .map_err(|e| VaultError::io("open lock file", lock_path, e))?;
    let start = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(LockGuard { _file: file }),
            Err(TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(LOCK_POLL);
            }
            Err(TryLockError::WouldBlock) => {
                return Err(VaultError::Locked {
                    path: lock_path.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(VaultError::io("lock", lock_path, e));
            }
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes` atomically: writes a temporary file (mode 0600) in the same
/// directory, fsyncs it, renames it over `path`, fsyncs the directory. On error the temporary
/// file is removed and `path` is untouched.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = parent_dir(path);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut file = private_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| VaultError::io("create temporary file", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| VaultError::io("write temporary file", &tmp, e))?;
        file.sync_all()
            .map_err(|e| VaultError::io("fsync temporary file", &tmp, e))?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| VaultError::io("rename over", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// fsyncs a directory so a rename in it is durable (Unix; a no-op elsewhere).
fn sync_dir(dir: &Path) -> Result<(), VaultError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| VaultError::io("fsync directory", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
