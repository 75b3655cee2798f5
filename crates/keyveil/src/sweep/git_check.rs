//! What is checked on a repository the agent can write before its objects, refs and reflogs
//! are read in process ([`super::git`]): every entry of its git directory, and of each object
//! directory an alternates file or `commondir` names, is a regular file, a directory or a link
//! to one ([`refusal`]: a named pipe would block the reader in `open`, a device would feed it
//! without end); the small files naming other places are read without blocking
//! ([`read_small`]).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use std::collections::BTreeSet;

/// Most entries of a git directory examined before its objects are read ([`refusal`]).
pub(super) const MAX_CHECKED: u64 = 2_000_000;
/// Largest ref file (a loose ref, `HEAD`, a reflog) read whole, in bytes.
pub(super) const MAX_REF_FILE: u64 = 64 << 20;

/// Why the repository whose git directory is `dir` must not be read, if it must not: an
/// entry the reader may open (its `config`, `HEAD`, a ref, `objects/info/alternates`, an object, ...)
/// that is not a regular file or a directory (a named pipe would block the reader, a device
/// would feed it without end), or a ref file (`HEAD`, a loose ref, a reflog) larger than
/// [`MAX_REF_FILE`] (read whole), here or in an object directory an alternates file names. Symbolic
/// links are judged by what they point to, and not descended into.
///
/// The check stops at `deadline` (the repository is then refused, said as out of time): judging
/// a link costs a `stat` that follows it, and the agent can make each one take milliseconds (a
/// chain of links whose targets are long `d/../d/..` paths), two million of them hours.
pub(super) fn refusal(dir: &Path, deadline: Instant) -> Option<String> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut checked = 0u64;
    let mut dirs = vec![dir.to_path_buf()];
    let mut seen_alt = BTreeSet::new();
    let mut stack: Vec<(PathBuf, u32)> = Vec::new();
    while let Some(top) = dirs.pop() {
        stack.push((top, 0));
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                checked += 1;
                if Instant::now() >= deadline {
                    return Some(format!(
                        "out of time while its git directory was checked ({checked} entries)"
                    ));
                }
                if checked > MAX_CHECKED {
                    return Some(format!(
                        "more than {MAX_CHECKED} entries in its git directory"
                    ));
                }
                let Ok(t) = e.file_type() else { continue };
                let p = e.path();
                let t = if t.is_symlink() {
                    match std::fs::metadata(&p) {
                        Ok(m) => m.file_type(),
                        Err(_) => continue, // dangling: nothing is read there
                    }
                } else {
                    t
                };
                if t.is_fifo() || t.is_socket() || t.is_block_device() || t.is_char_device() {
                    let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                    return Some(format!(
                        "{rel} is not a regular file (a named pipe or device would block or feed the reader)"
                    ));
                }
                // Ref files are read whole: one the size of a disk would be held in memory.
                let rel = p.strip_prefix(dir).unwrap_or(&p);
                let name = e.file_name();
                let ref_file = rel.starts_with("refs")
                    || rel.starts_with("logs")
                    || (depth == 0 && name.to_string_lossy().ends_with("HEAD"));
                if t.is_file()
                    && ref_file
                    && std::fs::metadata(&p).is_ok_and(|m| m.len() > MAX_REF_FILE)
                {
                    return Some(format!(
                        "{} is larger than a ref file can be ({} MiB at most)",
                        rel.display(),
                        MAX_REF_FILE >> 20
                    ));
                }
                if t.is_dir() && !e.file_type().is_ok_and(|t| t.is_symlink()) && depth < 16 {
                    stack.push((p.clone(), depth + 1));
                }
                // Read without blocking: a file checked above may be a named pipe by now.
                let read = |p: &Path| {
                    read_small(p).map_err(|_| {
                        format!(
                            "{} changed while it was checked",
                            p.strip_prefix(dir).unwrap_or(p).display()
                        )
                    })
                };
                // A linked worktree's common directory is read too.
                if depth == 0 && e.file_name() == "commondir" && t.is_file() {
                    let text = match read(&p) {
                        Ok(t) => t,
                        Err(why) => return Some(why),
                    };
                    let c = d.join(text.trim());
                    if seen_alt.len() < 16 && seen_alt.insert(c.clone()) {
                        dirs.push(c);
                    }
                }
                // The object directories an alternates file names are read too.
                if e.file_name() == "alternates" && t.is_file() {
                    let text = match read(&p) {
                        Ok(t) => t,
                        Err(why) => return Some(why),
                    };
                    for line in text.lines().take(64) {
                        let l = line.trim();
                        if l.is_empty() || l.starts_with('#') {
                            continue;
                        }
                        let objects = d.parent().map_or_else(|| d.clone(), Path::to_path_buf);
                        let alt = if Path::new(l).is_absolute() {
                            PathBuf::from(l)
                        } else {
                            objects.join(l)
                        };
                        if seen_alt.len() < 16 && seen_alt.insert(alt.clone()) {
                            dirs.push(alt);
                        }
                    }
                }
            }
        }
    }
    None
}

/// The text of a small file the sweep reads (`commondir`, an alternates file, a `.git` file), at
/// most 64 KiB, opened without blocking and read only if it is a regular file (links
/// followed). The agent can swap a file checked a moment before for a named pipe: a plain
/// read would then wait for a writer, and the sweep with it, for good. Errors: absent
/// (`NotFound`), not a regular file (`InvalidInput`), or unreadable.
pub(super) fn read_small(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    f.take(64 << 10).read_to_string(&mut text)?;
    Ok(text)
}

/// The bytes of a reflog, at most [`MAX_REF_FILE`], opened without blocking and without
/// following a final symbolic link, and read only if the opened file is a regular file. Errors
/// as [`read_small`], and `InvalidData` for a larger file.
pub(super) fn read_reflog(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags =
        rustix::fs::OFlags::NONBLOCK.bits() as i32 | rustix::fs::OFlags::NOFOLLOW.bits() as i32;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_REF_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than a reflog can be",
        ));
    }
    let mut out = Vec::new();
    f.take(MAX_REF_FILE).read_to_end(&mut out)?;
    Ok(out)
}
