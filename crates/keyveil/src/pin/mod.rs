//! Pinning what runs: the executable and the inputs a command will execute.
//!
//! At request time the broker resolves `argv[0]` with the policy `PATH` (never the requester's),
//! records the file's identity and SHA-256 ([`FilePin`]), and fingerprints the inputs that decide
//! what a task runner or interpreter executes ([`InputPin`]: `package.json` scripts, Makefiles,
//! the script operand of `sh script.sh`, ...). The human sees both. At spawn time the broker opens
//! the executable, checks the open file against the pin, and executes that very descriptor
//! (`/proc/self/fd/N`, i.e. `fexecve`), so the bytes checked are the bytes run. Any difference
//! ends the grant and asks again.

mod digest;
mod exe;
mod files;
mod inputs;
mod operand;
pub(crate) mod path_dirs;
pub(crate) mod sealdirs;
mod shebang;
mod wrappers;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use digest::key;

pub(crate) use exe::{open_verified, pin_file};
pub(crate) use files::{
    Opened, first_unpinnable, open_regular, pin_input, pin_input_text, read_for_requester,
    readable_for_requester, requester_writable, set_private_roots, unpinnable,
};
pub(crate) use inputs::inputs;
pub(crate) use shebang::interpreter_of;

/// The default policy `PATH` when the vault records none.
pub(crate) const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Largest input file hashed (bytes); a bigger one is pinned by its identity (device, inode,
/// size, ctime): the kernel sets ctime on every write and no same-uid process can set it back,
/// so the pin still ends at any change.
const MAX_INPUT: u64 = 16 * 1024 * 1024;

/// Largest text input read to be quoted and followed (a config file); a bigger one makes the
/// request unpinnable ([`UNPINNABLE`]) rather than pinned unread.
const MAX_TEXT: u64 = MAX_INPUT;

/// Role of the marker input [`unpinnable`]: something the command would run or read that the
/// broker cannot pin completely. A request carrying one is refused (`access::prepare`), and a
/// run whose re-derived inputs carry one ends its grant: never a grant on what was not pinned.
pub(crate) const UNPINNABLE: &str = "unpinnable";

/// Identity and content hash of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FilePin {
    /// Canonical absolute path.
    pub(crate) path: String,
    /// Device id.
    pub(crate) dev: u64,
    /// Inode number.
    pub(crate) ino: u64,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Modification time (ns since the epoch).
    pub(crate) mtime_ns: i64,
    /// Status-change time (ns since the epoch); set by the kernel on every write, not forgeable
    /// by `utimes`.
    pub(crate) ctime_ns: i64,
    /// Lowercase hex SHA-256 of the content.
    pub(crate) sha256: String,
}

/// A fingerprinted input of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct InputPin {
    /// What it is: `package.json`, `makefile`, `script`, `justfile`, `cargo`, `pytest-config`.
    pub(crate) role: String,
    /// Canonical path.
    pub(crate) path: String,
    /// Lowercase hex SHA-256 of the content.
    pub(crate) sha256: String,
    /// What it resolves to, when known (the npm script text).
    pub(crate) detail: Option<String>,
}

/// Why a pin does not hold.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PinError {
    /// `argv[0]` is not on the policy PATH.
    #[error(
        "\"{}\" was not found on the policy PATH ({path})",
        keyveil_proto::display::visible(name)
    )]
    NotFound {
        /// `argv[0]`.
        name: String,
        /// The PATH searched.
        path: String,
    },
    /// The file changed since approval.
    #[error("the executable {path} changed since approval (sha256 {was:.12}… is now {now:.12}…)")]
    Changed {
        /// Path.
        path: String,
        /// Pinned hash.
        was: String,
        /// Current hash.
        now: String,
    },
    /// `argv[0]` now resolves to another file.
    #[error("the executable now resolves to {now}, not the approved {was}")]
    Moved {
        /// Pinned path.
        was: String,
        /// Current path.
        now: String,
    },
    /// An input of the command changed.
    #[error("inputs changed since approval: {0}")]
    InputsChanged(String),
    /// I/O.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> PinError {
    PinError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Resolves `argv[0]`: a name containing `/` relative to `cwd`, otherwise the first executable
/// regular file in `search_path` (absolute entries only; relative ones are ignored).
pub(crate) fn resolve(argv0: &str, search_path: &str, cwd: &Path) -> Result<PathBuf, PinError> {
    let not_found = || PinError::NotFound {
        name: argv0.to_owned(),
        path: search_path.to_owned(),
    };
    if argv0.is_empty() {
        return Err(not_found());
    }
    if argv0.contains('/') {
        let p = cwd.join(argv0);
        return std::fs::canonicalize(&p).map_err(|e| io(&p, e));
    }
    for dir in search_path.split(':').filter(|d| d.starts_with('/')) {
        let cand = Path::new(dir).join(argv0);
        if let Ok(m) = std::fs::metadata(&cand)
            && m.is_file()
            && m.permissions().mode() & 0o111 != 0
        {
            return std::fs::canonicalize(&cand).map_err(|e| io(&cand, e));
        }
    }
    Err(not_found())
}

/// What a requester's own `PATH` (relative entries included, resolved against `cwd`) would run
/// for `argv[0]`: used to notice a PATH that shadows the policy's executable.
pub(crate) fn resolve_as_requester(
    argv0: &str,
    requester_path: &str,
    cwd: &Path,
) -> Option<PathBuf> {
    if argv0.contains('/') || argv0.is_empty() {
        return None;
    }
    requester_path.split(':').find_map(|dir| {
        let d = if dir.is_empty() {
            cwd.to_path_buf()
        } else {
            cwd.join(dir)
        };
        let cand = d.join(argv0);
        let m = std::fs::metadata(&cand).ok()?;
        (m.is_file() && m.permissions().mode() & 0o111 != 0)
            .then(|| std::fs::canonicalize(&cand).ok())?
    })
}

/// A file input's identity when a run starts: (path, device, inode, ctime). The kernel sets
/// ctime on every write, rename and chmod, and no same-uid process can set it back, so a file
/// rewritten and restored during a run has another ctime at its end ([`changed_since`]).
pub(crate) type Stamp = (String, u64, u64, i64);

/// The files a run reads as they were checked (`reap/seal.rs`): its script operands and the files
/// interpreter options name (roles `script`, `script-option`), the executable and each `#!`
/// interpreter when it is a script (it starts with `#!`: the kernel hands its path to the next
/// interpreter, which reads it as it runs), and the files of the directories a script sources
/// or imports from ([`sealdirs`]), each as (canonical path, SHA-256, or the identity string of a
/// file over 16 MiB, which the reaper checks and copies from the same descriptor). A binary is
/// run through its checked descriptor and is not listed.
///
/// # Errors
/// [`PinError::InputsChanged`] when a sealed directory's files are no longer the approved ones.
pub(crate) fn sealed_files(
    exe: Option<&FilePin>,
    inputs: &[InputPin],
) -> Result<Vec<(String, String)>, PinError> {
    let mut out: Vec<(String, String)> = inputs
        .iter()
        .filter(|p| {
            matches!(p.role.as_str(), "script" | "script-option")
                || (p.role == shebang::ROLE && starts_with_shebang(Path::new(&p.path)))
        })
        .filter(|p| by_content(&p.sha256) || p.sha256.starts_with("identity:"))
        .map(|p| (p.path.clone(), p.sha256.clone()))
        .collect();
    if let Some(e) = exe
        && by_content(&e.sha256)
        && starts_with_shebang(std::path::Path::new(&e.path))
    {
        out.push((e.path.clone(), e.sha256.clone()));
    }
    for p in inputs
        .iter()
        .filter(|p| sealdirs::SEALED_DIR_ROLES.contains(&p.role.as_str()))
    {
        out.extend(sealdirs::sealed_from(p)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Whether a pin is of content (a SHA-256), not of identity (a file too big to hash).
fn by_content(sha256: &str) -> bool {
    sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether the file at `path` starts with `#!` (read without following a symlink or blocking).
fn starts_with_shebang(path: &std::path::Path) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut b = [0u8; 2];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok_and(|()| b == *b"#!")
}

/// The identity of each file input (directory pins are checked by their own fingerprint);
/// taken before the inputs are hashed for a run, so any write after it shows at the run's end.
pub(crate) fn stamps(inputs: &[InputPin]) -> Vec<Stamp> {
    inputs
        .iter()
        .filter(|p| {
            !crate::pin::path_dirs::DIR_ROLES.contains(&p.role.as_str()) && p.role != UNPINNABLE
        })
        .filter_map(|p| {
            let m = std::fs::metadata(&p.path).ok()?;
            let k = key(&m);
            Some((p.path.clone(), k.0, k.1, k.4))
        })
        .collect()
}

/// The first stamped file that was written, replaced or removed since [`stamps`] (one `stat`
/// each: no hashing on the run path).
pub(crate) fn changed_since(stamps: &[Stamp]) -> Option<String> {
    stamps.iter().find_map(|(path, dev, ino, ctime)| {
        let same = std::fs::metadata(path).ok().is_some_and(|m| {
            let k = key(&m);
            (k.0, k.1, k.4) == (*dev, *ino, *ctime)
        });
        (!same).then(|| path.clone())
    })
}

/// Re-fingerprints pinned inputs; `Err` names the first that changed or vanished.
pub(crate) fn check_inputs(pinned: &[InputPin]) -> Result<(), PinError> {
    for p in pinned {
        if p.role == UNPINNABLE {
            return Err(PinError::InputsChanged(format!(
                "{} ({})",
                p.path,
                p.detail.as_deref().unwrap_or("cannot be pinned")
            )));
        }
        if crate::pin::path_dirs::DIR_ROLES.contains(&p.role.as_str()) {
            let holds = if p.role == sealdirs::SCRIPT_DIR {
                sealdirs::still_holds(p)
            } else {
                crate::pin::path_dirs::still_holds(p)
            };
            if !holds {
                return Err(PinError::InputsChanged(p.path.clone()));
            }
            continue;
        }
        let now = pin_input(&p.role, Path::new(&p.path), None);
        match now {
            Some(n) if n.sha256 == p.sha256 => {}
            _ => return Err(PinError::InputsChanged(p.path.clone())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
