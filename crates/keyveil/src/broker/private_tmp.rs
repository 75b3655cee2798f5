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
//! Limits: a program that writes to `/tmp/...` by literal path, not through `$TMPDIR`, is not
//! covered; while the run is live, the same user can read the directory (as any file of the
//! run's). `keyveil agent` hides the keyveil home, this directory included, from the agent.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::paths::Paths;
use crate::protocol::WriteLeak;
use crate::redact::Redactor;

/// The variables that name the private directory in a run's environment.
pub const TMP_VARS: [&str; 4] = ["TMPDIR", "TMP", "TEMP", "TEMPDIR"];

/// Creates the run's private directory (and `KEYVEIL_HOME/tmp`, mode 0700, if missing).
///
/// Errors: the I/O error of creating it; the directory must not exist yet (a run id is
/// random, so an existing one means something is wrong and is not reused).
pub fn create(paths: &Paths, run_id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let parent = paths.home.join("tmp");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&parent)?;
    let dir = parent.join(run_id);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// Points the temporary-directory variables of a child environment at `dir`.
pub fn point_env_at(env: &mut Vec<(String, String)>, dir: &Path) {
    env.retain(|(k, _)| !TMP_VARS.contains(&k.as_str()));
    let shown = dir.to_string_lossy().into_owned();
    for k in TMP_VARS {
        env.push((k.to_owned(), shown.clone()));
    }
}

/// Scans the whole directory for the run's values, then deletes it. Returns the leaks found
/// (by variable and path, never the value), each with the action `removed`. Deletion does not
/// follow symbolic links (`std::fs::remove_dir_all`); a failure to delete is logged.
pub async fn finish(dir: PathBuf, redactor: &Redactor, since: SystemTime) -> Vec<WriteLeak> {
    let scope = crate::scan::ScanScope {
        cwd: dir.clone(),
        home: None,
        since,
        limits: crate::scan::ScanLimits::default(),
    };
    let scan_redactor = redactor.clone();
    let report =
        tokio::task::spawn_blocking(move || crate::scan::scan(&scope, &scan_redactor)).await;
    let leaks = match report {
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
    if !matches!(removed, Ok(Ok(()))) {
        tracing::warn!(dir = %dir.display(), "cannot remove a run's private TMPDIR");
    }
    leaks
}
