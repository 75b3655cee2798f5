//! Rewriting the copies found in agent host transcripts to the redactor's marker
//! (`keyveil sweep --contain --scrub-transcripts`; the flag, signed with the human's factor, is
//! the confirmation).
//!
//! Only text transcripts are rewritten: files of a host kind (`codex`, `claude-code`, `gemini`,
//! `copilot`, `vscode-cursor`) whose copy was found as stored (form `raw`, no archive member),
//! up to [`MAX_BYTES`], that are not SQLite databases and hold no NUL byte (binary stores:
//! write-ahead logs, journals, LevelDB logs). Each is read (never through a symlink),
//! redacted in memory (`Redactor::redact`: every variant it knows becomes `[REDACTED:ENV/NAME]`),
//! written to a new file beside it with the same mode, synced, and renamed over it, unless the
//! file changed while this was done (a host appending to it): then it is tried again, at most
//! three times, and otherwise left as it is with a note.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
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

/// What a scrub does with the file of one finding (see [`target`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A host's text transcript, where the copy was found as stored: rewritten.
    Rewrite(PathBuf),
    /// A host file that is no transcript (a configuration, credential or state file of the
    /// host): left as it is, with this note.
    Left(String),
    /// Not a host file, or a transcript where the copy was not found as stored (encoded, or in
    /// an archive member): nothing to rewrite or say.
    Ignored,
}

/// `home` resolved for [`target`] (`None` when there is none or it cannot be resolved: then
/// no file is taken for a transcript).
pub(crate) fn canonical_home(home: Option<&Path>) -> Option<PathBuf> {
    home.and_then(|h| std::fs::canonicalize(h).ok())
}

/// What a scrub does with `f`'s file: a host's text transcript below `home` (resolved by
/// [`canonical_home`]; [`super::kinds::TRANSCRIPTS`], by pattern: never a host's configuration
/// or credential file) where the copy was found as stored is rewritten, another host file is
/// left with a note.
pub(crate) fn target(f: &Finding, home: Option<&Path>) -> Target {
    if !HOST_KINDS.contains(&f.kind.as_str()) {
        return Target::Ignored;
    }
    let Location::File { path, .. } = &f.location else {
        return Target::Ignored;
    };
    let p = PathBuf::from(path);
    let transcript = home.is_some_and(|h| super::kinds::is_transcript(&p, h));
    if transcript && f.form == "raw" && !path.contains('!') {
        Target::Rewrite(p)
    } else if !transcript {
        Target::Left(format!(
            "{path}: not a host transcript (a configuration, credential or state file of the host): edit it yourself with the host closed"
        ))
    } else {
        Target::Ignored
    }
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

/// The directory `dir` (absolute), opened one component at a time without following a
/// symbolic link: the agent can swap a folder of a transcript's path for a link between the
/// sweep and the scrub, and the rewrite must then not land in the folder the link names.
fn open_dir_nofollow(dir: &Path) -> Result<rustix::fd::OwnedFd, String> {
    use rustix::fs::{Mode, OFlags};
    use std::path::Component;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut fd = rustix::fs::open("/", flags, Mode::empty()).map_err(|e| e.to_string())?;
    for c in dir.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => {
                fd = rustix::fs::openat(&fd, name, flags, Mode::empty()).map_err(|e| {
                    if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
                        format!(
                            "a folder on its path ({}) is a symbolic link or not a folder",
                            Path::new(name).display()
                        )
                    } else {
                        e.to_string()
                    }
                })?;
            }
            _ => return Err("not an absolute, normal path".into()),
        }
    }
    Ok(fd)
}

/// One attempt: `Ok(markers)` or why not. Every step is relative to the transcript's folder,
/// opened without following links ([`open_dir_nofollow`]), never through a path again.
fn once(path: &Path, redactor: &Redactor) -> Result<usize, String> {
    if super::is_fifo(path) {
        return Err("a named pipe (never opened)".to_owned());
    }
    use rustix::fs::{AtFlags, Mode, OFlags};
    let dir = path.parent().ok_or("no parent directory")?;
    let name = path.file_name().ok_or("no file name")?;
    let dirfd = open_dir_nofollow(dir)?;
    let fd = rustix::fs::openat(
        &dirfd,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e.to_string())?;
    let mut f = std::fs::File::from(fd);
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
    // Text transcripts hold no NUL byte; a binary store (a SQLite write-ahead log or journal,
    // a LevelDB log) does, and has checksums a rewrite would break: the host would lose it.
    if memchr::memchr(0, &data).is_some() {
        return Err(
            "not a text file (a database or log of the host: delete it with the host closed)"
                .into(),
        );
    }
    let (out, n) = redactor.redact(&data);
    let out = zeroize::Zeroizing::new(out);
    if n == 0 {
        return Ok(0);
    }
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| e.to_string())?;
    let tmp = format!(
        ".{}.keyveil-scrub-{}",
        name.to_string_lossy(),
        hex::encode(rnd)
    );
    let mode = before.mode() & 0o7777;
    let write = || -> Result<(), String> {
        let fd = rustix::fs::openat(
            &dirfd,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| e.to_string())?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| e.to_string())?;
        let mut t = std::fs::File::from(fd);
        t.write_all(&out).map_err(|e| e.to_string())?;
        t.sync_all().map_err(|e| e.to_string())
    };
    let unlink = || {
        let _ = rustix::fs::unlinkat(&dirfd, tmp.as_str(), AtFlags::empty());
    };
    if let Err(e) = write() {
        unlink();
        return Err(e);
    }
    // The host may have appended meanwhile: then the rewrite would lose its lines.
    let now = rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        unlink();
        e.to_string()
    })?;
    if now.st_ino != before.ino()
        || u64::try_from(now.st_size).unwrap_or(u64::MAX) != before.len()
        || now.st_mtime != before.mtime()
        || i64::try_from(now.st_mtime_nsec).unwrap_or(-1) != before.mtime_nsec()
    {
        unlink();
        return Err("it changed while it was rewritten".into());
    }
    rustix::fs::renameat(&dirfd, tmp.as_str(), &dirfd, name).map_err(|e| {
        unlink();
        e.to_string()
    })?;
    Ok(n)
}
