//! A private temporary directory per run.
//!
//! Programs put scratch files, caches and "debug dumps" in `$TMPDIR`, and `/tmp` is outside
//! the write-side scan (too big to walk after every run). So each granted run gets its own
//! directory, `KEYVEIL_HOME/tmp/<run-id>` (mode 0700, created fresh, never reused), named by
//! `TMPDIR`, `TMP`, `TEMP` and `TEMPDIR` in its environment (overriding any pass-through of
//! those names). When the run ends, the whole directory is scanned for the run's values like
//! the working directory (`docs/write-side.md`), the leaks are reported with the action
//! `removed`, and the directory is deleted, whatever it holds: nothing a run left in its
//! temporary directory outlives it.
//!
//! Before the scan, every directory in it is given back to its owner (mode 0700, never through
//! a symbolic link), so a run cannot hide a file from the scan or the deletion with `chmod`. If
//! the directory cannot be created the run is refused; if it cannot be removed, the leaks say
//! so.
//!
//! Limits: a program that writes to `/tmp/...` by literal path, not through `$TMPDIR`, is not
//! covered; while the run is live, the same user can read the directory (as any file of the
//! run's). `keyveil agent` hides the keyveil home, this directory included, from the agent.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::paths::Paths;
use crate::redact::Redactor;
use keyveil_proto::WriteLeak;

/// The variables that name the private directory in a run's environment.
pub(crate) const TMP_VARS: [&str; 4] = ["TMPDIR", "TMP", "TEMP", "TEMPDIR"];

/// Creates the run's private directory (and `KEYVEIL_HOME/tmp`, mode 0700, if missing).
///
/// Errors: the I/O error of creating it; the directory must not exist yet (a run id is
/// random, so an existing one means something is wrong and is not reused).
pub(crate) fn create(paths: &Paths, run_id: &str) -> std::io::Result<RunTmp> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let parent = paths.home.join("tmp");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)?;
    let dir = parent.join(run_id);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let m = std::fs::symlink_metadata(&dir)?;
    Ok(RunTmp {
        dir,
        id: (m.dev(), m.ino()),
    })
}

/// A run's private directory: its path and the identity (device, inode) it was created with,
/// so that [`finish`] scans and deletes that directory and nothing the run put in its place.
#[derive(Debug, Clone)]
pub(crate) struct RunTmp {
    /// `KEYVEIL_HOME/tmp/<run-id>`.
    pub dir: PathBuf,
    id: (u64, u64),
}

/// Points the temporary-directory variables of a child environment at `dir`.
pub(crate) fn point_env_at(env: &mut Vec<(String, String)>, dir: &Path) {
    env.retain(|(k, _)| !TMP_VARS.contains(&k.as_str()));
    let shown = dir.to_string_lossy().into_owned();
    for k in TMP_VARS {
        env.push((k.to_owned(), shown.clone()));
    }
}

/// Scans the whole directory for the run's values, then deletes it. Returns the leaks found
/// (by variable and path, never the value), each with the action `removed`. Deletion does not
/// follow symbolic links (`std::fs::remove_dir_all`); a failure to delete is logged.
pub(crate) async fn finish(tmp: RunTmp, redactor: &Redactor, since: SystemTime) -> Vec<WriteLeak> {
    use std::os::unix::fs::MetadataExt;
    let dir = tmp.dir;
    // A run that replaced its directory (by a link, or by another directory) or moved it away
    // must not steer the scan elsewhere, nor pass for clean: say so, scan nothing, and remove
    // only a link put in its place.
    let same =
        std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == tmp.id);
    if !same {
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(&dir);
        }
        return vec![WriteLeak {
            variable: "(any)".to_owned(),
            path: dir.to_string_lossy().into_owned(),
            form: "tmpdir-replaced".to_owned(),
            action: "kept: the run moved or replaced its TMPDIR, so it was not scanned; look for what it wrote".to_owned(),
        }];
    }
    // A run may have locked subdirectories (`chmod 000`) so that the scan cannot read them and
    // the deletion cannot empty them: give every directory back to its owner first.
    let unlock = dir.clone();
    let _ = tokio::task::spawn_blocking(move || unlock_tree(&unlock)).await;
    let scope = crate::scan::ScanScope {
        cwd: dir.clone(),
        home: None,
        since,
        limits: crate::scan::ScanLimits::default(),
    };
    let scan_redactor = redactor.clone();
    let report =
        tokio::task::spawn_blocking(move || crate::scan::scan(&scope, &scan_redactor)).await;
    let mut leaks: Vec<WriteLeak> = match report {
        Ok(r) => r
            .leaks
            .into_iter()
            .map(|leak| WriteLeak {
                variable: leak.variable,
                path: leak.path.to_string_lossy().into_owned(),
                form: leak.form,
                action: "removed".to_owned(),
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    let gone = dir.clone();
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&gone)).await;
    if !matches!(removed, Ok(Ok(()))) || dir.exists() {
        // Say so where the user looks (the run's result), not only in the broker log.
        tracing::warn!(dir = %dir.display(), "cannot remove a run's private TMPDIR");
        for leak in &mut leaks {
            leak.action = "kept: the run's TMPDIR could not be removed, delete it".to_owned();
        }
    }
    leaks
}

/// Deletes every run directory left under `KEYVEIL_HOME/tmp` (runs that never reached
/// [`finish`]: the broker crashed or was killed). Called when the broker starts, before any
/// run exists. Failures are logged.
pub(crate) fn clear_leftovers(paths: &Paths) {
    let parent = paths.home.join("tmp");
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let gone = if is_dir {
            unlock_tree(&path);
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => {
                tracing::warn!(dir = %path.display(), "removed the TMPDIR of a run that never finished")
            }
            Err(e) => {
                tracing::error!(dir = %path.display(), error = %e, "cannot remove a leftover run TMPDIR")
            }
        }
    }
}

/// Most directories [`unlock_tree`] visits.
const UNLOCK_BUDGET: usize = 100_000;
/// Deepest nesting [`unlock_tree`] follows.
const UNLOCK_DEPTH: usize = 256;

/// Sets every directory under `root` (root included) to mode 0700 without ever following a
/// symbolic link: each directory is opened `O_PATH | O_NOFOLLOW` relative to its parent's
/// descriptor and changed through `/proc/self/fd/N`, so swapping a directory for a link
/// cannot redirect the change outside the tree. Best effort; bounded by [`UNLOCK_BUDGET`] and
/// [`UNLOCK_DEPTH`].
fn unlock_tree(root: &Path) {
    use rustix::fs::{Mode, OFlags, open};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if let Ok(fd) = open(root, flags, Mode::empty()) {
        let mut budget = UNLOCK_BUDGET;
        unlock_dir(fd, &mut budget, 0);
    }
}

fn unlock_dir(fd: rustix::fd::OwnedFd, budget: &mut usize, depth: usize) {
    use rustix::fd::AsRawFd;
    use rustix::fs::{Dir, FileType, Mode, OFlags, chmod, open, openat};
    let through = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let _ = chmod(through.as_str(), Mode::from_raw_mode(0o700));
    let Ok(listing) = open(
        through.as_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(mut dir) = Dir::new(listing) else {
        return;
    };
    let mut children = Vec::new();
    while let Some(Ok(entry)) = dir.read() {
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        if matches!(entry.file_type(), FileType::Directory | FileType::Unknown) {
            children.push(entry.file_name().to_owned());
        }
    }
    for name in children {
        if *budget == 0 || depth >= UNLOCK_DEPTH {
            return;
        }
        *budget -= 1;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if let Ok(child) = openat(&fd, name.as_c_str(), flags, Mode::empty()) {
            unlock_dir(child, budget, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn unlock_gives_locked_directories_back_and_never_follows_links() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let deep = root.path().join("locked/deeper");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        std::fs::set_permissions(&deep, std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(
            root.path().join("locked"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        unlock_tree(root.path());
        assert_eq!(mode(&root.path().join("locked")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        // The link's target outside the tree is untouched.
        assert_eq!(mode(outside.path()), 0o755);
        // And the tree can now be removed.
        std::fs::remove_dir_all(root.path().join("locked")).unwrap();
    }
}
