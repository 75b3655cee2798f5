//! Rewriting the copies found in agent host transcripts to the redactor's marker
//! (`keyveil sweep --contain --scrub-transcripts`; the flag, signed with the human's factor, is
//! the confirmation).
//!
//! Only text transcripts are rewritten: files of a host kind (`codex`, `claude-code`, `gemini`,
//! `copilot`, `vscode-cursor`) whose copy was found as stored (form `raw`, no archive member),
//! up to [`MAX_BYTES`], that are not SQLite databases. Each is read (never through a symlink),
//! redacted in memory (`Redactor::redact`: every variant it knows becomes `[REDACTED:ENV/NAME]`),
//! written to a new file beside it with the same mode, synced, and renamed over it, unless the
//! file changed while this was done (a host appending to it): then it is tried again, at most
//! three times, and otherwise left as it is with a note.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use keyveil_redact::Redactor;

use super::{Finding, Location};

/// Largest transcript rewritten (bytes).
pub(crate) const MAX_BYTES: u64 = 256 << 20;
/// Host kinds whose files are rewritten.
const HOST_KINDS: &[&str] = &["codex", "claude-code", "gemini", "copilot", "vscode-cursor"];

/// What a scrub did.
#[derive(Debug, Default)]
pub(crate) struct Scrubbed {
    /// Files rewritten, with the markers put in each.
    pub files: Vec<(PathBuf, usize)>,
    /// Files left as they were, and why (no value).
    pub notes: Vec<String>,
}

/// The transcript files among `findings` that a scrub rewrites.
pub(crate) fn targets(findings: &[Finding]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = findings
        .iter()
        .filter(|f| HOST_KINDS.contains(&f.kind.as_str()) && f.form == "raw")
        .filter_map(|f| match &f.location {
            Location::File { path, .. } if !path.contains('!') => Some(PathBuf::from(path)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Rewrites each of `files` with every value `redactor` knows replaced by its marker.
pub(crate) fn scrub(files: &[PathBuf], redactor: &Redactor) -> Scrubbed {
    let mut done = Scrubbed::default();
    for f in files {
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..3 {
            match once(f, redactor) {
                Ok(n) => {
                    done.files.push((f.clone(), n));
                    ok = true;
                    break;
                }
                Err(e) => last = e,
            }
        }
        if !ok {
            done.notes
                .push(format!("{}: not rewritten ({last})", f.display()));
        }
    }
    done
}

/// One attempt: `Ok(markers)` or why not.
fn once(path: &Path, redactor: &Redactor) -> Result<usize, String> {
    if super::is_fifo(path) {
        return Err("a named pipe (never opened)".to_owned());
    }
    let nofollow =
        rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow)
        .open(path)
        .map_err(|e| e.to_string())?;
    let before = f.metadata().map_err(|e| e.to_string())?;
    if !before.is_file() {
        return Err("not a regular file".into());
    }
    if before.len() > MAX_BYTES {
        return Err(format!("larger than {} MiB", MAX_BYTES >> 20));
    }
    let mut data = zeroize::Zeroizing::new(Vec::with_capacity(before.len() as usize));
    f.read_to_end(&mut data).map_err(|e| e.to_string())?;
    if data.starts_with(b"SQLite format 3\0") {
        return Err("a SQLite database (rewrite it with the host closed, or delete it)".into());
    }
    let (out, n) = redactor.redact(&data);
    let out = zeroize::Zeroizing::new(out);
    if n == 0 {
        return Ok(0);
    }
    let dir = path.parent().ok_or("no parent directory")?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.keyveil-scrub-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut t = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(before.mode() & 0o7777)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        t.set_permissions(std::fs::Permissions::from_mode(before.mode() & 0o7777))?;
        t.write_all(&out)?;
        t.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.to_string());
    }
    // The host may have appended meanwhile: then the rewrite would lose its lines.
    let now = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if now.ino() != before.ino()
        || now.len() != before.len()
        || now.mtime_nsec() != before.mtime_nsec()
        || now.mtime() != before.mtime()
    {
        let _ = std::fs::remove_file(&tmp);
        return Err("it changed while it was rewritten".into());
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.to_string()
    })?;
    Ok(n)
}
