//! One input file: whether the requester can write or read it, opened without following a
//! swap (regular files only, bounded), and pinned.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::digest::{hash_file, key};
use super::{InputPin, MAX_INPUT, MAX_TEXT, UNPINNABLE};

/// Whether the requester (same user) can plausibly have written the executable: it lies in the
/// working tree, in `$HOME`, in a temporary directory, in `node_modules/.bin`, or in a
/// world-writable directory; or, for a broker not run as root, the user could write or replace
/// it wherever it lies ([`writable_by`]: a directory of the user's under `/run/user`, `/opt`, a
/// second disk).
pub(crate) fn requester_writable(exe: &Path, cwd: &Path, home: Option<&Path>) -> bool {
    let uid = rustix::process::geteuid().as_raw();
    // For root every file is writable: the prefixes below are all that tells anything then.
    if uid != 0 {
        let mut gids = vec![rustix::process::getegid().as_raw()];
        gids.extend(
            rustix::process::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw()),
        );
        if writable_by(exe, uid, &gids) {
            return true;
        }
    }
    let s = exe.to_string_lossy();
    if exe.starts_with(cwd) || home.is_some_and(|h| exe.starts_with(h)) {
        return true;
    }
    if ["/tmp/", "/var/tmp/", "/dev/shm/"]
        .iter()
        .any(|t| s.starts_with(t))
        || s.contains("/node_modules/.bin/")
        || s.contains("/.local/bin/")
    {
        return true;
    }
    exe.parent()
        .and_then(|d| std::fs::metadata(d).ok())
        .is_some_and(|m| m.permissions().mode() & 0o002 != 0)
}

/// Whether a process of `uid` (in the groups `gids`: primary and supplementary) can write `exe`
/// or put another file in its place: `exe` or a directory on its way from `/` is the user's
/// own, writable by one of its groups or by anyone (a sticky directory, `/tmp`'s kind, only for
/// entries the user owns), or carries a POSIX ACL (whose entries may name the user: counted as
/// writable without reading them). Follows symlinks on the way to what they name; a path that
/// cannot be read is not counted.
pub(crate) fn writable_by(exe: &Path, uid: u32, gids: &[u32]) -> bool {
    use std::os::unix::fs::MetadataExt;
    let acl =
        |p: &Path| rustix::fs::lgetxattr_query(p, "system.posix_acl_access").is_ok_and(|n| n > 0);
    let writes = |m: &std::fs::Metadata, p: &Path| {
        m.uid() == uid
            || (gids.contains(&m.gid()) && m.mode() & 0o020 != 0)
            || m.mode() & 0o002 != 0
            || acl(p)
    };
    // Symlinks on the way (`/bin` → `usr/bin`) are read as what they lead to.
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_path_buf());
    let mut parent: Option<(std::fs::Metadata, PathBuf)> = None;
    let mut at = PathBuf::new();
    for part in exe.components() {
        at.push(part);
        let Ok(m) = std::fs::symlink_metadata(&at) else {
            return false;
        };
        // The directory holding this entry: one of the user's can be made writable; a
        // writable one lets the entry be renamed away and replaced, unless it is sticky and
        // the entry someone else's.
        if let Some((d, dp)) = &parent {
            let sticky = d.mode() & 0o1000 != 0;
            if d.uid() == uid || (writes(d, dp) && (!sticky || m.uid() == uid)) {
                return true;
            }
        }
        parent = Some((m, at.clone()));
    }
    // The file itself.
    parent.is_some_and(|(m, p)| writes(&m, &p))
}

/// Directories the broker never reads an input from on a requester's behalf, besides the
/// pseudo file systems: set once by the broker (its own `KEYVEIL_HOME`, which holds runs'
/// private `TMPDIR`s and what `keyveil agent` hides).
static PRIVATE_ROOTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Names the broker's private directories (see [`PRIVATE_ROOTS`]); the first call wins.
pub(crate) fn set_private_roots(roots: Vec<PathBuf>) {
    let roots = roots
        .into_iter()
        .map(|r| std::fs::canonicalize(&r).unwrap_or(r))
        .collect();
    let _ = PRIVATE_ROOTS.set(roots);
}

/// Whether the broker may read `canon` (a canonical path) for a requester: never a file of
/// `/proc`, `/sys` or `/dev` (a granted child's `/proc/PID/environ` hashed into a request's input
/// pins was a value oracle), nor of the broker's own home. A requester that names such a file
/// as a script gets no pin for it: the card shows the argv as it is.
pub(crate) fn readable_for_requester(canon: &Path) -> bool {
    let pseudo = ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| canon.starts_with(p));
    let private = PRIVATE_ROOTS
        .get()
        .is_some_and(|roots| roots.iter().any(|r| canon.starts_with(r)));
    !pseudo && !private && !on_pseudo_fs(canon)
}

/// Whether `path` lives on procfs, sysfs, devpts or debugfs wherever it is mounted.
#[cfg(target_os = "linux")]
fn on_pseudo_fs(path: &Path) -> bool {
    const PROC: i64 = 0x9fa0;
    const SYSFS: i64 = 0x6265_6572;
    const DEVPTS: i64 = 0x1cd1;
    const DEBUGFS: i64 = 0x6462_6720;
    rustix::fs::statfs(path).map_or(true, |s| {
        // `f_type` is a signed word on Linux targets (`__fsword_t`).
        #[allow(clippy::unnecessary_cast)]
        let t = s.f_type as i64;
        t == PROC || t == SYSFS || t == DEVPTS || t == DEBUGFS
    })
}

#[cfg(not(target_os = "linux"))]
fn on_pseudo_fs(_path: &Path) -> bool {
    false
}

/// The marker input of something the broker cannot pin completely (see [`UNPINNABLE`]): `path`
/// as given, `why` in words for the refusal ("a FIFO, not a regular file").
pub(crate) fn unpinnable(path: &Path, why: impl Into<String>) -> InputPin {
    InputPin {
        role: UNPINNABLE.to_owned(),
        path: path.display().to_string(),
        sha256: UNPINNABLE.to_owned(),
        detail: Some(why.into()),
    }
}

/// The first [`UNPINNABLE`] marker among `inputs`, as `"PATH: why"`.
pub(crate) fn first_unpinnable(inputs: &[InputPin]) -> Option<String> {
    inputs.iter().find(|p| p.role == UNPINNABLE).map(|p| {
        format!(
            "{}: {}",
            keyveil_proto::display::visible(&p.path),
            p.detail.as_deref().unwrap_or("cannot be pinned")
        )
    })
}

/// What kind of file `m` is, in words, when it is neither a regular file nor a directory.
pub(super) fn odd_kind(m: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() || t.is_dir() {
        None
    } else if t.is_fifo() {
        Some("a named pipe (FIFO)")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    }
}

/// How [`open_regular`] fails.
pub(crate) enum Opened {
    /// It does not exist or cannot be opened (a directory is reported here too).
    Missing,
    /// It exists and is no regular file (FIFO, socket, device): a tool reading it gets what a
    /// writer sends at that moment, never what was pinned.
    Odd(&'static str),
}

/// Opens `canon` (a canonical path) for reading without ever blocking: `O_NONBLOCK` (opening a
/// FIFO does not wait for a writer), `O_NOFOLLOW` (a symlink swapped in after canonicalising is
/// refused), `O_NOCTTY`; then checks the open file (`fstat`) is a regular file. Every read the
/// broker does on a requester's behalf goes through here: a shared helper for `loaders/`.
pub(crate) fn open_regular(canon: &Path) -> Result<(File, std::fs::Metadata), Opened> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags =
        rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NOCTTY;
    let f = std::fs::OpenOptions::new()
        .read(true)
        // The bits are small positive flags: the cast is exact.
        .custom_flags(flags.bits() as i32)
        .open(canon);
    let f = match f {
        Ok(f) => f,
        Err(_) => {
            // A socket cannot be opened at all; say what it is rather than "missing".
            return match std::fs::metadata(canon).ok().as_ref().and_then(odd_kind) {
                Some(k) => Err(Opened::Odd(k)),
                None => Err(Opened::Missing),
            };
        }
    };
    let m = f.metadata().map_err(|_| Opened::Missing)?;
    if let Some(k) = odd_kind(&m) {
        return Err(Opened::Odd(k));
    }
    if !m.is_file() {
        return Err(Opened::Missing);
    }
    Ok((f, m))
}

/// Fingerprints a text input and reads it from the same bytes (a config file whose settings the
/// card quotes, a makefile whose includes are followed), so what the card quotes is what was
/// hashed: only where [`pin_input`] would hash it (never `/proc`, `/sys`, `/dev` or the broker's
/// home, whatever a symlink or include says). `detail` makes the input's detail from the text.
/// Fails closed: a FIFO, socket or device, or a file over 16 MiB (too big to read and quote),
/// gives an [`UNPINNABLE`] marker with empty text, never a pin of what was not read.
pub(crate) fn pin_input_text(
    role: &str,
    path: &Path,
    detail: impl FnOnce(&str) -> Option<String>,
) -> Option<(InputPin, String)> {
    let canon = std::fs::canonicalize(path).ok()?;
    if !readable_for_requester(&canon) {
        return None;
    }
    let f = match open_regular(&canon) {
        Ok((f, m)) if m.len() <= MAX_TEXT => f,
        Ok((_, m)) => {
            let why = format!(
                "{} bytes, too big for keyveil to read and show (at most {MAX_TEXT})",
                m.len()
            );
            return Some((unpinnable(&canon, why), String::new()));
        }
        Err(Opened::Odd(k)) => return Some((unpinnable(&canon, k), String::new())),
        Err(Opened::Missing) => return None,
    };
    let mut b = Vec::new();
    f.take(MAX_TEXT + 1).read_to_end(&mut b).ok()?;
    if b.len() as u64 > MAX_TEXT {
        return Some((unpinnable(&canon, "grew too big while read"), String::new()));
    }
    let text = String::from_utf8_lossy(&b).into_owned();
    Some((
        InputPin {
            role: role.to_owned(),
            path: canon.display().to_string(),
            sha256: hex::encode(Sha256::digest(&b)),
            detail: detail(&text),
        },
        text,
    ))
}

/// Reads a small text file on a requester's behalf, where [`pin_input_text`] would: `None` for
/// anything but a readable regular file (never blocks on a FIFO).
pub(crate) fn read_for_requester(path: &Path) -> Option<String> {
    match pin_input_text("", path, |_| None) {
        Some((p, t)) if p.role != UNPINNABLE => Some(t),
        _ => None,
    }
}

/// Fingerprints one input file (canonical path, SHA-256; over 16 MiB its identity, see
/// [`MAX_INPUT`]); `None` when it does not exist, is a directory, or lies where the broker never
/// reads for a requester. A FIFO, socket or device gives an [`UNPINNABLE`] marker.
pub(crate) fn pin_input(role: &str, path: &Path, detail: Option<String>) -> Option<InputPin> {
    let canon = std::fs::canonicalize(path).ok()?;
    if !readable_for_requester(&canon) {
        return None;
    }
    let (f, m) = match open_regular(&canon) {
        Ok(x) => x,
        Err(Opened::Odd(k)) => return Some(unpinnable(&canon, k)),
        Err(Opened::Missing) => return None,
    };
    let sha256 = if m.len() <= MAX_INPUT {
        hash_file(&f).ok()?.1
    } else {
        let k = key(&m);
        format!("identity:{}:{}:{}:{}", k.0, k.1, k.2, k.4)
    };
    Some(InputPin {
        role: role.to_owned(),
        path: canon.display().to_string(),
        sha256,
        detail,
    })
}
