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
pub(crate) fn parent_dir(path: &Path) -> &Path {
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

/// Removes the temporary files an atomic save leaves next to `path` when its process is
/// killed mid-save (`.<name>.<pid>.<n>.tmp`), under `path`'s lock: while it is held no save is
/// running, so every such file is a leftover. Returns how many were removed. A file that cannot
/// be removed is skipped.
///
/// # Errors
/// [`VaultError::Locked`] (a save is running elsewhere); [`VaultError::Io`] when the lock or
/// the directory cannot be opened.
pub fn remove_stale_temp_files(path: &Path) -> Result<usize, VaultError> {
    let _guard = lock_exclusive(&lock_path(path))?;
    let dir = parent_dir(path);
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let prefix = prefix.to_string_lossy().into_owned();
    let entries = std::fs::read_dir(dir).map_err(|e| VaultError::io("list", dir, e))?;
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(middle) = name
            .strip_prefix(prefix.as_str())
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        // `<pid>.<n>`: digits and one dot, nothing else (never another file's name).
        let mut parts = middle.split('.');
        let ours = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(a), Some(b), None)
                if !a.is_empty() && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
        );
        let regular = entry.file_type().is_ok_and(|t| t.is_file());
        if ours && regular && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// fsyncs a directory so a rename in it is durable (Unix; a no-op elsewhere).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), VaultError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn leftover_temporary_files_are_removed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let vault = dir.path().join("vault.kv");
        write_atomic(&vault, b"current").unwrap();
        for name in [".vault.kv.123.0.tmp", ".vault.kv.9.41.tmp"] {
            std::fs::write(dir.path().join(name), b"left by a kill").unwrap();
        }
        let keep = [
            ".vault.kv.x.0.tmp",
            ".vault.kv.1.2.3.tmp",
            ".other.kv.1.0.tmp",
            "vault.kv.1.0.tmp",
            ".vault.kv.1.0.tmp.keep",
        ];
        for name in keep {
            std::fs::write(dir.path().join(name), b"not ours").unwrap();
        }
        std::fs::create_dir(dir.path().join(".vault.kv.5.5.tmp")).unwrap();
        assert_eq!(remove_stale_temp_files(&vault).unwrap(), 2);
        for name in keep {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
        assert!(dir.path().join(".vault.kv.5.5.tmp").is_dir());
        assert_eq!(std::fs::read(&vault).unwrap(), b"current");
        assert_eq!(remove_stale_temp_files(&vault).unwrap(), 0);
    }
}
