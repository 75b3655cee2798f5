//! Pinning what runs: the executable and the inputs a command will execute.
//!
//! At request time the broker resolves `argv[0]` with the policy `PATH` (never the requester's),
//! records the file's identity and SHA-256 ([`FilePin`]), and fingerprints the inputs that decide
//! what a task runner or interpreter executes ([`InputPin`]: `package.json` scripts, Makefiles,
//! the script operand of `sh script.sh`, ...). The human sees both. At spawn time the broker opens
//! the executable, checks the open file against the pin, and executes that very descriptor
//! (`/proc/self/fd/N`, i.e. `fexecve`), so the bytes checked are the bytes run. Any difference
//! ends the grant and asks again.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The default policy `PATH` when the vault records none.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
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
pub const UNPINNABLE: &str = "unpinnable";

/// Identity and content hash of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePin {
    /// Canonical absolute path.
    pub path: String,
    /// Device id.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (ns since the epoch).
    pub mtime_ns: i64,
    /// Status-change time (ns since the epoch); set by the kernel on every write, not forgeable
    /// by `utimes`.
    pub ctime_ns: i64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

/// A fingerprinted input of the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPin {
    /// What it is: `package.json`, `makefile`, `script`, `justfile`, `cargo`, `pytest-config`.
    pub role: String,
    /// Canonical path.
    pub path: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// What it resolves to, when known (the npm script text).
    pub detail: Option<String>,
}

/// Why a pin does not hold.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
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
pub fn resolve(argv0: &str, search_path: &str, cwd: &Path) -> Result<PathBuf, PinError> {
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
pub fn resolve_as_requester(argv0: &str, requester_path: &str, cwd: &Path) -> Option<PathBuf> {
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

type Key = (u64, u64, u64, i64, i64);
static HASH_CACHE: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);

fn key(m: &std::fs::Metadata) -> Key {
    (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.mtime_nsec()),
        m.ctime()
            .saturating_mul(1_000_000_000)
            .saturating_add(m.ctime_nsec()),
    )
}

fn hash_reader(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex::encode(h.finalize()))
}

/// Hashes an open file, using a cache keyed by (dev, ino, size, mtime, ctime): the kernel bumps
/// ctime on every write, so an unchanged key means unchanged content.
fn hash_file(f: &File) -> std::io::Result<(Key, String)> {
    let m = f.metadata()?;
    let k = key(&m);
    if let Some(h) = HASH_CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|c| c.get(&k).cloned()))
    {
        return Ok((k, h));
    }
    let h = hash_reader(f)?;
    if let Ok(mut c) = HASH_CACHE.lock() {
        let map = c.get_or_insert_with(HashMap::new);
        if map.len() > 4096 {
            map.clear();
        }
        map.insert(k, h.clone());
    }
    Ok((k, h))
}

/// Opens an executable for pinning without blocking (a FIFO named as `argv[0]` never parks the
/// broker): a regular file only.
fn open_exe(path: &Path) -> Result<File, PinError> {
    match open_regular(path) {
        Ok((f, _)) => Ok(f),
        Err(Opened::Odd(k)) => Err(io(
            path,
            std::io::Error::other(format!("it is {k}, not a regular file")),
        )),
        Err(Opened::Missing) => Err(io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a readable regular file"),
        )),
    }
}

/// Pins a file by path.
pub fn pin_file(path: &Path) -> Result<FilePin, PinError> {
    let f = open_exe(path)?;
    let (k, sha256) = hash_file(&f).map_err(|e| io(path, e))?;
    Ok(FilePin {
        path: path.display().to_string(),
        dev: k.0,
        ino: k.1,
        size: k.2,
        mtime_ns: k.3,
        ctime_ns: k.4,
        sha256,
    })
}

/// Opens the pinned file and checks that the open file is the pinned one. Returns the open file,
/// which the spawn executes by descriptor.
pub fn open_verified(pin: &FilePin) -> Result<File, PinError> {
    let p = Path::new(&pin.path);
    let f = open_exe(p)?;
    let (k, now) = hash_file(&f).map_err(|e| io(p, e))?;
    if now != pin.sha256 || k.0 != pin.dev || k.1 != pin.ino {
        return Err(PinError::Changed {
            path: pin.path.clone(),
            was: pin.sha256.clone(),
            now,
        });
    }
    Ok(f)
}

/// Whether the requester (same user) can plausibly have written the executable: it lies in the
/// working tree, in `$HOME`, in a temporary directory, in `node_modules/.bin`, or in a
/// world-writable directory.
pub fn requester_writable(exe: &Path, cwd: &Path, home: Option<&Path>) -> bool {
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

/// Directories the broker never reads an input from on a requester's behalf, besides the
/// pseudo file systems: set once by the broker (its own `KEYVEIL_HOME`, which holds runs'
/// private `TMPDIR`s and what `keyveil agent` hides).
static PRIVATE_ROOTS: std::sync::OnceLock<Vec<PathBuf>> = std::sync::OnceLock::new();

/// Names the broker's private directories (see [`PRIVATE_ROOTS`]); the first call wins.
pub fn set_private_roots(roots: Vec<PathBuf>) {
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
pub fn unpinnable(path: &Path, why: impl Into<String>) -> InputPin {
    InputPin {
        role: UNPINNABLE.to_owned(),
        path: path.display().to_string(),
        sha256: UNPINNABLE.to_owned(),
        detail: Some(why.into()),
    }
}

/// The first [`UNPINNABLE`] marker among `inputs`, as `"PATH: why"`.
pub fn first_unpinnable(inputs: &[InputPin]) -> Option<String> {
    inputs.iter().find(|p| p.role == UNPINNABLE).map(|p| {
        format!(
            "{}: {}",
            keyveil_proto::display::visible(&p.path),
            p.detail.as_deref().unwrap_or("cannot be pinned")
        )
    })
}

/// What kind of file `m` is, in words, when it is neither a regular file nor a directory.
fn odd_kind(m: &std::fs::Metadata) -> Option<&'static str> {
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
/// broker does on a requester's behalf goes through here: a shared helper for `loaders.rs`.
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

/// A file input's identity when a run starts: (path, device, inode, ctime). The kernel sets
/// ctime on every write, rename and chmod, and no same-uid process can set it back, so a file
/// rewritten and restored during a run has another ctime at its end ([`changed_since`]).
pub type Stamp = (String, u64, u64, i64);

/// The identity of each file input (directory pins are checked by their own fingerprint);
/// taken before the inputs are hashed for a run, so any write after it shows at the run's end.
pub fn stamps(inputs: &[InputPin]) -> Vec<Stamp> {
    inputs
        .iter()
        .filter(|p| !crate::path_dirs::DIR_ROLES.contains(&p.role.as_str()) && p.role != UNPINNABLE)
        .filter_map(|p| {
            let m = std::fs::metadata(&p.path).ok()?;
            let k = key(&m);
            Some((p.path.clone(), k.0, k.1, k.4))
        })
        .collect()
}

/// The first stamped file that was written, replaced or removed since [`stamps`] (one `stat`
/// each: no hashing on the run path).
pub fn changed_since(stamps: &[Stamp]) -> Option<String> {
    stamps.iter().find_map(|(path, dev, ino, ctime)| {
        let same = std::fs::metadata(path).ok().is_some_and(|m| {
            let k = key(&m);
            (k.0, k.1, k.4) == (*dev, *ino, *ctime)
        });
        (!same).then(|| path.clone())
    })
}

fn npm_script(argv: &[String]) -> Option<String> {
    let args: Vec<&str> = argv
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match args.as_slice() {
        ["run" | "run-script" | "rum" | "urn", name, ..] => Some((*name).to_owned()),
        [
            cmd @ ("test" | "t" | "tst" | "start" | "stop" | "restart"),
            ..,
        ] => Some(match *cmd {
            "t" | "tst" => "test".to_owned(),
            c => c.to_owned(),
        }),
        [name, ..]
            if argv.first().is_some_and(|p| {
                p.ends_with("yarn") || p.ends_with("pnpm") || p.ends_with("bun")
            }) =>
        {
            Some((*name).to_owned())
        }
        _ => None,
    }
}

/// Fingerprints the inputs that decide what the command executes: the task runner's file or the
/// script operand, and the configuration each known tool executes code from
/// ([`crate::loaders`]; `home` is the child's HOME, the vault's), and the directories of
/// `search_path` (the child's PATH) the agent can write ([`crate::path_dirs`]).
pub fn inputs(
    argv: &[String],
    cwd: &Path,
    exe: &Path,
    home: Option<&Path>,
    search_path: &str,
) -> Vec<InputPin> {
    inputs_at(argv, cwd, exe, home, search_path, 0)
}

/// Most wrappers followed in one argv (`nice timeout 5 env sh x.sh`).
const MAX_WRAPPERS: u32 = 8;

/// [`inputs`] of a command `depth` wrappers deep.
fn inputs_at(
    argv: &[String],
    cwd: &Path,
    exe: &Path,
    home: Option<&Path>,
    search_path: &str,
    depth: u32,
) -> Vec<InputPin> {
    let mut out = Vec::new();
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let arg0 = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    let family: String = [name.as_str(), arg0.as_str()]
        .iter()
        .map(|n| {
            n.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                .to_owned()
        })
        .find(|n| !n.is_empty())
        .unwrap_or_default();
    let is = |names: &[&str]| names.contains(&family.as_str()) || names.contains(&arg0.as_str());
    if is(&["npm", "yarn", "pnpm", "bun", "npx"]) {
        let pj = cwd.join("package.json");
        // The script shown is read from the very bytes pinned.
        let detail = |text: &str| {
            let s = npm_script(argv)?;
            // npm strips a byte order mark before parsing.
            let json =
                serde_json::from_str::<serde_json::Value>(text.trim_start_matches('\u{feff}')).ok();
            if json.is_none() {
                return Some(format!(
                    "package.json does not parse as JSON: keyveil cannot show what {s:?} runs"
                ));
            }
            let script = |name: &str| {
                json.as_ref()
                    .and_then(|v| v.get("scripts"))
                    .and_then(|x| x.get(name))
                    .and_then(|x| x.as_str().map(str::to_owned))
            };
            let mut d = match script(&s) {
                Some(text) => format!("script {s:?} runs: {text}"),
                None => format!("script {s:?} is not defined in package.json"),
            };
            // Lifecycle scripts npm runs around it (npm-scripts(7): pre<name>, post<name>).
            for hook in [format!("pre{s}"), format!("post{s}")] {
                if let Some(text) = script(&hook) {
                    d.push_str(&format!("; {hook:?} runs: {text}"));
                }
            }
            Some(d)
        };
        out.extend(pin_input_text("package.json", &pj, detail).map(|(p, _)| p));
    }
    if is(&["deno"]) && argv.get(1).is_some_and(|a| a == "task") {
        deno_task(argv, cwd, &mut out);
    }
    if is(&["just"]) {
        for n in ["justfile", "Justfile", ".justfile"] {
            out.extend(pin_input("justfile", &cwd.join(n), None));
        }
    }
    if is(&["cargo"]) {
        out.extend(pin_input("cargo", &cwd.join("Cargo.toml"), None));
        out.extend(pin_input("cargo", &cwd.join("build.rs"), None));
    }
    if is(&["pytest", "tox", "nox"]) {
        for n in [
            "conftest.py",
            "pytest.ini",
            "pyproject.toml",
            "tox.ini",
            "noxfile.py",
            "setup.cfg",
        ] {
            out.extend(pin_input("pytest-config", &cwd.join(n), None));
        }
    }
    // Interpreters with a script operand: options are skipped with their arguments.
    if let Some(kind) = interp(&is) {
        let o = operand(kind, argv);
        let here = o
            .chdir
            .as_ref()
            .map_or_else(|| cwd.to_path_buf(), |d| cwd.join(d));
        if let Some(why) = o.unpinnable {
            out.push(unpinnable(exe, why));
        }
        if o.from_stdin {
            out.push(unpinnable(
                exe,
                "it reads program text from standard input, which the requester writes and \
                 no card shows; put the program in a file and name it (`python3 check.py`), \
                 or pass it inline (`-c`/`-e`), which the card shows",
            ));
        }
        if let Some(op) = o.script.and_then(|i| argv.get(i)) {
            out.extend(pin_operand("script", &here, op, kind == Interp::Python));
        }
        for f in &o.files {
            out.extend(pin_operand("script-option", &here, f, false));
        }
    }
    // Wrappers: what they run is pinned as if it were run itself (its executable and inputs).
    match wrapped(&is, argv) {
        Ok(None) => {}
        Err(why) => out.push(unpinnable(exe, why)),
        Ok(Some(_)) if depth >= MAX_WRAPPERS => {
            out.push(unpinnable(
                exe,
                "wrappers nested too deep for keyveil to follow",
            ));
        }
        Ok(Some(w)) => {
            let here = w
                .chdir
                .as_ref()
                .map_or_else(|| cwd.to_path_buf(), |d| cwd.join(d));
            let first = w.argv.first().map(String::as_str).unwrap_or("");
            if let Ok(inner) = resolve(first, search_path, &here) {
                let inner_is_interp = {
                    let base = inner
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let fam = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
                    let b0 = first.rsplit('/').next().unwrap_or(first);
                    interp(&|names: &[&str]| names.contains(&fam) || names.contains(&b0)).is_some()
                };
                if inner_is_interp && is(&["xargs"]) {
                    out.push(unpinnable(
                        exe,
                        "xargs adds arguments from its input: keyveil cannot tell which script runs",
                    ));
                }
                out.extend(pin_input(
                    "wrapped-executable",
                    &inner,
                    Some(format!("run by {arg0}")),
                ));
                out.extend(inputs_at(
                    &w.argv,
                    &here,
                    &inner,
                    home,
                    search_path,
                    depth + 1,
                ));
            }
        }
    }
    let cx = crate::loaders::Ctx {
        argv,
        cwd,
        exe,
        home,
    };
    let mut dirs = crate::path_dirs::path_pins(search_path, cwd, home);
    dirs.extend(crate::loaders::manager_inputs(search_path, &cx));
    for p in crate::loaders::inputs(&family, &arg0, &cx)
        .into_iter()
        .chain(dirs)
    {
        // A refusal marker is never merged away by a pin of the same path.
        if !out.iter().any(|q| q.path == p.path && q.role == p.role)
            && (p.role == UNPINNABLE || !out.iter().any(|q| q.path == p.path))
        {
            out.push(p);
        }
    }
    out
}

/// `deno task [OPTIONS] [NAME]` (docs.deno.com, "deno task"): the task's command line comes
/// from `deno.json`/`deno.jsonc` (found in the working directory or a parent, or named by
/// `--config`/`-c`), or from a `package.json` script. Each candidate is pinned, the named task
/// quoted on the card from the bytes pinned. `--cwd DIR` moves the search.
fn deno_task(argv: &[String], cwd: &Path, out: &mut Vec<InputPin>) {
    let mut config = None;
    let mut dir = cwd.to_path_buf();
    let mut name = None;
    let mut i = 2;
    while let Some(a) = argv.get(i) {
        let next = argv.get(i + 1);
        match a.as_str() {
            "-c" | "--config" => {
                config = next.cloned();
                i += 1;
            }
            "--cwd" => {
                if let Some(d) = next {
                    dir = cwd.join(d);
                }
                i += 1;
            }
            "-f" | "--filter" => i += 1,
            _ => {
                if let Some(c) = a.strip_prefix("--config=") {
                    config = Some(c.to_owned());
                } else if let Some(d) = a.strip_prefix("--cwd=") {
                    dir = cwd.join(d);
                } else if !a.starts_with('-') && name.is_none() {
                    name = Some(a.clone());
                }
            }
        }
        i += 1;
    }
    let show = |text: &str| {
        let n = name.as_deref()?;
        // deno.jsonc takes comments and trailing commas.
        let v: Option<serde_json::Value> = jsonc_parser::cst::CstRootNode::parse(
            text.trim_start_matches('\u{feff}'),
            &jsonc_parser::ParseOptions::default(),
        )
        .ok()
        .and_then(|r| r.value())
        .and_then(|v| v.to_serde_value());
        let Some(v) = v else {
            return Some(format!(
                "does not parse as JSON: keyveil cannot show what task {n:?} runs"
            ));
        };
        let task = v
            .get("tasks")
            .and_then(|t| t.get(n))
            .or_else(|| v.get("scripts").and_then(|t| t.get(n)))?;
        Some(match task {
            serde_json::Value::String(cmd) => format!("task {n:?} runs: {cmd}"),
            other => format!("task {n:?} runs: {other}"),
        })
    };
    if let Some(c) = config {
        out.extend(pin_input_text("deno-config", &cwd.join(c), show).map(|(p, _)| p));
        return;
    }
    for d in dir.ancestors() {
        for f in ["deno.json", "deno.jsonc", "package.json"] {
            out.extend(pin_input_text("deno-config", &d.join(f), show).map(|(p, _)| p));
        }
    }
}

/// The interpreters whose script operand is pinned, by family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interp {
    Shell,
    Python,
    Node,
    Deno,
    Bun,
    Perl,
    Ruby,
    Php,
    Lua,
    R,
}

/// What an interpreter's argv runs: its script operand (index into argv), whether code is given
/// inline (then shown on the card as the argv), files named by options that load code
/// (`node -r ./x.js`, `php -c php.ini`), a directory change (`ruby -C DIR`, `bun --cwd DIR`), or
/// why it cannot be told.
#[derive(Debug, Default)]
struct Operand {
    script: Option<usize>,
    files: Vec<String>,
    chdir: Option<String>,
    unpinnable: Option<String>,
    /// The interpreter reads program text from standard input (`python3 -`, a bare `sh`,
    /// `bash -s`, `python3 -i x.py`, `deno repl`): the requester writes it, nobody pins it.
    from_stdin: bool,
}

/// `php -d KEY=VALUE` keys that load or run code.
const PHP_CODE_KEYS: &[&str] = &[
    "auto_prepend_file",
    "auto_append_file",
    "extension",
    "zend_extension",
    "extension_dir",
    "include_path",
    "user_ini.filename",
];

/// Finds the script operand of an interpreter's argv: options are skipped with their
/// arguments (per interpreter: `bash -o pipefail`, `python3 -W error`, `perl -I lib`,
/// `ruby -r x`, `node --require x`), so the option's argument is never taken for the script.
fn operand(kind: Interp, argv: &[String]) -> Operand {
    let mut o = Operand::default();
    let mut i = 1;
    if matches!(kind, Interp::Deno | Interp::Bun) && argv.get(1).is_some_and(|a| a == "run") {
        i = 2;
    }
    if kind == Interp::Deno && argv.get(1).is_some_and(|a| a == "eval") {
        return o;
    }
    if kind == Interp::Deno && argv.get(1).is_some_and(|a| a == "repl") {
        o.from_stdin = true;
        return o;
    }
    // Options that print and exit, or name what runs otherwise (`node --test` discovers test
    // files): no program is read from standard input.
    let info_only = argv.iter().skip(1).any(|a| {
        matches!(a.as_str(), "--version" | "--help")
            || (kind == Interp::Python && matches!(a.as_str(), "-V" | "-VV" | "-h"))
            || (kind == Interp::Node
                && (matches!(a.as_str(), "-v" | "-h" | "--test" | "--v8-options")
                    || a.starts_with("--run")))
            || (kind == Interp::Perl && matches!(a.as_str(), "-v" | "-V"))
            || (kind == Interp::Ruby && a == "-v")
            || (kind == Interp::Php && matches!(a.as_str(), "-v" | "-i" | "-m"))
            || (kind == Interp::Lua && a == "-v")
    });
    // Options that read program text from standard input after (or instead of) the script.
    let interactive = argv.iter().skip(1).take_while(|a| *a != "--").any(|a| {
        let cluster = a.strip_prefix('-').filter(|c| !c.starts_with('-'));
        // Short flags up to the first one that takes an argument (`-Wignore` is no `-i`).
        let short_i = |stop: &str| {
            cluster.is_some_and(|c| {
                c.chars()
                    .take_while(|x| !stop.contains(*x))
                    .any(|x| x == 'i')
            })
        };
        (kind == Interp::Python && short_i("WXcm"))
            || (kind == Interp::Node && (short_i("rCep") || a == "--interactive"))
            || (kind == Interp::Perl && a.starts_with("-d"))
    });
    if interactive {
        o.from_stdin = true;
    }
    // Options whose argument is the next token unless attached (`--opt=v`, `-Wv`).
    let (long_arg, long_file, short_arg, short_file): (&[&str], &[&str], &str, &str) = match kind {
        Interp::Shell => (
            &["--rcfile", "--init-file"],
            &["--rcfile", "--init-file"],
            "oO",
            "",
        ),
        Interp::Python => (&["--check-hash-based-pycs"], &[], "WX", ""),
        Interp::Node => (
            &[
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--input-type",
                "--conditions",
                "--title",
                "--env-file",
                "--env-file-if-exists",
                "--redirect-warnings",
                "--icu-data-dir",
                "--openssl-config",
                "--watch-path",
                "--test-reporter",
                "--test-reporter-destination",
                "--test-name-pattern",
            ],
            &[
                "--require",
                "--import",
                "--loader",
                "--experimental-loader",
                "--env-file",
                "--env-file-if-exists",
                "--openssl-config",
            ],
            "rC",
            "r",
        ),
        Interp::Deno => (
            &[
                "--config",
                "--import-map",
                "--lock",
                "--cert",
                "--location",
                "--seed",
                "--env-file",
            ],
            &["--config", "--import-map", "--env-file"],
            "c",
            "c",
        ),
        Interp::Bun => (
            &[
                "--preload",
                "--cwd",
                "--env-file",
                "--tsconfig-override",
                "--config",
            ],
            &["--preload", "--env-file", "--tsconfig-override", "--config"],
            "rc",
            "rc",
        ),
        Interp::Perl => (&[], &[], "I", ""),
        Interp::Ruby => (
            &[
                "--encoding",
                "--external-encoding",
                "--internal-encoding",
                "--enable",
                "--disable",
                "--dump",
            ],
            &[],
            "IrCE",
            "",
        ),
        Interp::Php => (&[], &[], "cdftzSBRFEr", "cz"),
        Interp::Lua => (&[], &[], "l", ""),
        Interp::R => (&[], &[], "", ""),
    };
    // Short options whose argument is the rest of their token only (`perl -Mstrict`).
    let attached_only = match kind {
        Interp::Perl => "MmxilF0dDC",
        Interp::Ruby => "xFi0KTW",
        _ => "",
    };
    let inline_short = match kind {
        Interp::Shell => "c",
        Interp::Python => "c",
        Interp::Node | Interp::Bun => "ep",
        Interp::Perl => "eE",
        Interp::Ruby | Interp::Lua | Interp::R => "e",
        Interp::Php => "rBRE",
        Interp::Deno => "",
    };
    let inline_long: &[&str] = match kind {
        Interp::Node | Interp::Bun => &["--eval", "--print"],
        _ => &[],
    };
    let shell = kind == Interp::Shell;
    while let Some(a) = argv.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if a == "-" {
            // The program comes from standard input (shells: end of options).
            if shell {
                i += 1;
                break;
            }
            o.from_stdin = true;
            return o;
        }
        if let Some(long) = a.strip_prefix("--") {
            let name = format!("--{}", long.split('=').next().unwrap_or(long));
            if inline_long.contains(&name.as_str()) {
                return Operand {
                    from_stdin: o.from_stdin,
                    ..Operand::default()
                };
            }
            if long_arg.contains(&name.as_str()) {
                let value = match long.split_once('=') {
                    Some((_, v)) => Some(v.to_owned()),
                    None => {
                        i += 1;
                        argv.get(i).cloned()
                    }
                };
                if let Some(v) = value {
                    if name == "--cwd" {
                        o.chdir = Some(v);
                    } else if long_file.contains(&name.as_str()) {
                        o.files.push(v);
                    }
                }
            }
            i += 1;
            continue;
        }
        let cluster = if shell {
            a.strip_prefix('-').or_else(|| a.strip_prefix('+'))
        } else {
            a.strip_prefix('-')
        };
        let Some(cluster) = cluster else {
            break;
        };
        let mut consumed_next = 0;
        for (j, c) in cluster.char_indices() {
            let rest = cluster.get(j + c.len_utf8()..).unwrap_or("");
            if inline_short.contains(c) {
                return Operand {
                    from_stdin: o.from_stdin,
                    ..Operand::default()
                };
            }
            if shell && c == 's' {
                // Commands from standard input; the rest are positional parameters.
                o.from_stdin = true;
                return o;
            }
            if kind == Interp::Python && c == 'm' {
                // A module run: no script operand (the module is found on `sys.path`).
                return o;
            }
            if matches!(kind, Interp::Perl | Interp::Ruby) && c == 'S' {
                o.unpinnable = Some(
                    "`-S` looks the script up on PATH: keyveil cannot tell which file runs".into(),
                );
                return o;
            }
            if attached_only.contains(c) {
                break;
            }
            if short_arg.contains(c) {
                // Shells take each `-o` argument from the next token, even in a cluster.
                let value = if shell || rest.is_empty() {
                    consumed_next += 1;
                    argv.get(i + consumed_next).cloned()
                } else {
                    Some(rest.to_owned())
                };
                if let Some(v) = value {
                    if short_file.contains(c) {
                        o.files.push(v.clone());
                    }
                    if kind == Interp::Ruby && c == 'C' {
                        o.chdir = Some(v.clone());
                    }
                    if kind == Interp::Php && c == 'f' {
                        o.script = Some(i + consumed_next);
                    }
                    if kind == Interp::Php && c == 'd' {
                        let key = v.split('=').next().unwrap_or(&v).trim();
                        if PHP_CODE_KEYS.contains(&key) {
                            o.unpinnable = Some(format!(
                                "`-d {key}=...` makes php load code keyveil does not pin"
                            ));
                            return o;
                        }
                    }
                    if kind == Interp::Lua && c == 'l' {
                        // `require`'s default path includes `./?.lua`.
                        o.files.push(format!("{v}.lua"));
                    }
                }
                if !shell {
                    break;
                }
            }
        }
        i += 1 + consumed_next;
        if o.script.is_some() {
            return o;
        }
    }
    if argv.get(i).is_some() {
        o.script = Some(i);
    } else if !info_only && !matches!(kind, Interp::Bun | Interp::R) {
        // No operand: shells, python, node, deno, perl, ruby, php and lua read the program
        // from standard input (bun and Rscript print their usage).
        o.from_stdin = true;
    }
    o
}

/// Which interpreter `is` names, if any.
fn interp(is: &dyn Fn(&[&str]) -> bool) -> Option<Interp> {
    Some(
        if is(&["sh", "bash", "dash", "zsh", "ksh", "ash", "mksh", "yash"]) {
            Interp::Shell
        } else if is(&["python", "pypy"]) {
            Interp::Python
        } else if is(&["node", "nodejs"]) {
            Interp::Node
        } else if is(&["deno"]) {
            Interp::Deno
        } else if is(&["bun"]) {
            Interp::Bun
        } else if is(&["perl"]) {
            Interp::Perl
        } else if is(&["ruby"]) {
            Interp::Ruby
        } else if is(&["php"]) {
            Interp::Php
        } else if is(&["lua", "luajit"]) {
            Interp::Lua
        } else if is(&["Rscript"]) {
            Interp::R
        } else {
            return None;
        },
    )
}

/// Pins a script operand (or a file an interpreter option names) as `role`, failing closed: an
/// operand that exists but is no regular file (a FIFO, a socket, a device, `/dev/stdin`,
/// `/proc/self/fd/N`) or lies in the broker's home gives an [`UNPINNABLE`] marker; one that
/// does not exist is left to the run-time re-derivation (creating it ends the grant).
fn pin_operand(role: &str, cwd: &Path, op: &str, python: bool) -> Option<InputPin> {
    let given = cwd.join(op);
    let lexical_pseudo = ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|p| given.to_string_lossy().starts_with(p));
    let m = match std::fs::metadata(&given) {
        Ok(m) => m,
        // Missing, or a dangling link: nothing runs it now; the run-time check sees it appear.
        Err(_) if !lexical_pseudo => return None,
        Err(_) => return Some(unpinnable(&given, "a file of /dev, /proc or /sys")),
    };
    if let Some(k) = odd_kind(&m) {
        return Some(unpinnable(&given, k));
    }
    if m.is_dir() {
        // `python3 DIR` runs `DIR/__main__.py`.
        return if python {
            pin_operand(role, &given, "__main__.py", false)
        } else {
            None
        };
    }
    let canon = std::fs::canonicalize(&given).ok()?;
    if lexical_pseudo || !readable_for_requester(&canon) {
        return Some(unpinnable(
            &given,
            "it lies in /dev, /proc, /sys or keyveil's own home, which keyveil never reads for a requester",
        ));
    }
    pin_input(role, &canon, None)
}

/// A command run by a wrapper (`timeout 60 sh ci.sh`): the wrapped argv, and the directory it
/// runs in when the wrapper changes it (`env -C DIR`).
struct Wrapped {
    argv: Vec<String>,
    chdir: Option<String>,
}

/// Options of a wrapper: those taking an argument (next token unless attached), those taking
/// none, how many positionals precede the command (`timeout DURATION`), options after which no
/// command runs (`-p PID` modes) or the command is inline shell code (`flock -c`).
struct WrapSpec {
    names: &'static [&'static str],
    with_arg: &'static [&'static str],
    no_arg: &'static [&'static str],
    leading: usize,
    no_command: &'static [&'static str],
}

/// Wrappers keyveil sees through: the command they run is pinned as if it were run itself.
const WRAPPERS: &[WrapSpec] = &[
    WrapSpec {
        names: &["timeout"],
        with_arg: &["-s", "--signal", "-k", "--kill-after"],
        no_arg: &["--preserve-status", "--foreground", "-v", "--verbose"],
        leading: 1,
        no_command: &[],
    },
    WrapSpec {
        names: &["nice"],
        with_arg: &["-n", "--adjustment"],
        no_arg: &[],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["nohup", "chronic", "catchsegv"],
        with_arg: &[],
        no_arg: &[],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["env"],
        with_arg: &["-u", "--unset", "-C", "--chdir"],
        no_arg: &[
            "-i",
            "--ignore-environment",
            "-0",
            "--null",
            "-v",
            "--debug",
        ],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["stdbuf"],
        with_arg: &["-i", "-o", "-e", "--input", "--output", "--error"],
        no_arg: &[],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["ionice"],
        with_arg: &[
            "-c",
            "--class",
            "-n",
            "--classdata",
            "-p",
            "--pid",
            "-P",
            "--pgid",
            "-u",
            "--uid",
        ],
        no_arg: &["-t", "--ignore"],
        leading: 0,
        no_command: &["-p", "--pid", "-P", "--pgid", "-u", "--uid"],
    },
    WrapSpec {
        names: &["chrt"],
        with_arg: &[
            "-T",
            "--sched-runtime",
            "-P",
            "--sched-period",
            "-D",
            "--sched-deadline",
        ],
        no_arg: &[
            "-a",
            "--all-tasks",
            "-b",
            "--batch",
            "-d",
            "--deadline",
            "-f",
            "--fifo",
            "-i",
            "--idle",
            "-o",
            "--other",
            "-r",
            "--rr",
            "-R",
            "--reset-on-fork",
            "-v",
            "--verbose",
            "-e",
            "--ext",
        ],
        leading: 1,
        no_command: &["-m", "--max", "-p", "--pid"],
    },
    WrapSpec {
        names: &["taskset"],
        with_arg: &[],
        no_arg: &["-a", "--all-tasks", "-c", "--cpu-list"],
        leading: 1,
        no_command: &["-p", "--pid"],
    },
    WrapSpec {
        names: &["setsid"],
        with_arg: &[],
        no_arg: &["-c", "--ctty", "-f", "--fork", "-w", "--wait"],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["time"],
        with_arg: &["-f", "--format", "-o", "--output"],
        no_arg: &[
            "-a",
            "--append",
            "-p",
            "--portability",
            "-v",
            "--verbose",
            "-q",
            "--quiet",
        ],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["flock"],
        with_arg: &["-w", "--timeout", "--wait", "-E", "--conflict-exit-code"],
        no_arg: &[
            "-s",
            "--shared",
            "-x",
            "-e",
            "--exclusive",
            "-u",
            "--unlock",
            "-n",
            "--nb",
            "--nonblock",
            "-o",
            "--close",
            "-F",
            "--no-fork",
            "--verbose",
        ],
        leading: 1,
        no_command: &["-c", "--command"],
    },
    WrapSpec {
        names: &["unbuffer"],
        with_arg: &[],
        no_arg: &["-p"],
        leading: 0,
        no_command: &[],
    },
    WrapSpec {
        names: &["xargs"],
        with_arg: &[
            "-a",
            "--arg-file",
            "-d",
            "--delimiter",
            "-E",
            "-I",
            "-L",
            "--max-lines",
            "-n",
            "--max-args",
            "-P",
            "--max-procs",
            "-s",
            "--max-chars",
            "--process-slot-var",
        ],
        no_arg: &[
            "-0",
            "--null",
            "-p",
            "--interactive",
            "-r",
            "--no-run-if-empty",
            "-t",
            "--verbose",
            "-x",
            "--exit",
            "-o",
            "--open-tty",
        ],
        leading: 0,
        no_command: &[],
    },
];

/// The command a wrapper runs: `Ok(None)` when it is no wrapper or runs no command here (a
/// `-p PID` mode, `flock -c` inline code), `Err` (why) when keyveil cannot tell which command it
/// runs or the wrapper itself changes what runs (`env LD_PRELOAD=...`, `env -S`, an unknown
/// option).
fn wrapped(is: &dyn Fn(&[&str]) -> bool, argv: &[String]) -> Result<Option<Wrapped>, String> {
    let Some(spec) = WRAPPERS.iter().find(|w| is(w.names)) else {
        return Ok(None);
    };
    let name = spec.names.first().copied().unwrap_or("");
    let unknown = |t: &str| {
        format!(
            "keyveil cannot tell which command `{name}` runs (option {})",
            keyveil_proto::display::visible(t)
        )
    };
    let mut chdir = None;
    let mut i = 1;
    while let Some(a) = argv.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        // `nice -5`, the historical form of `-n 5`.
        if name == "nice"
            && a.get(1..)
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            i += 1;
            continue;
        }
        if name == "env" && (a.starts_with("-S") || a.starts_with("--split-string") || a == "-P") {
            return Err("`env -S` splits a string into the command: keyveil cannot pin it".into());
        }
        let (opt, attached) = if a.starts_with("--") {
            match a.split_once('=') {
                Some((o, _)) => (o.to_owned(), true),
                None => (a.clone(), false),
            }
        } else {
            // Short: `-n5` or `-n 5`; clusters of flags (`-ax`) one by one.
            let mut flags = a.chars().skip(1).peekable();
            let mut out = None;
            while let Some(c) = flags.next() {
                let o = format!("-{c}");
                if spec.with_arg.contains(&o.as_str()) || spec.no_command.contains(&o.as_str()) {
                    out = Some((o, flags.peek().is_some()));
                    break;
                }
                if !spec.no_arg.contains(&o.as_str()) {
                    return Err(unknown(a));
                }
            }
            match out {
                Some(x) => x,
                None => {
                    i += 1;
                    continue;
                }
            }
        };
        if spec.no_command.contains(&opt.as_str()) {
            return Ok(None);
        }
        if spec.with_arg.contains(&opt.as_str()) {
            let value = if attached {
                a.split_once('=')
                    .map(|(_, v)| v.to_owned())
                    .or_else(|| a.get(opt.len()..).map(str::to_owned))
            } else {
                i += 1;
                argv.get(i).cloned()
            };
            if name == "env" && (opt == "-C" || opt == "--chdir") {
                chdir = value;
            }
        } else if !spec.no_arg.contains(&opt.as_str()) {
            return Err(unknown(a));
        }
        i += 1;
    }
    if name == "env" {
        // `NAME=VALUE` assignments: one that makes a process run other code is refused.
        while let Some((n, _)) = argv.get(i).and_then(|a| a.split_once('=')) {
            if crate::broker::access::is_injection_var(n) {
                return Err(format!(
                    "`env` sets {}, which can make the command run code keyveil does not pin",
                    keyveil_proto::display::visible(n)
                ));
            }
            i += 1;
        }
    }
    i += spec.leading;
    if name == "flock" && argv.get(i).is_some_and(|a| a == "-c" || a == "--command") {
        return Ok(None);
    }
    match argv.get(i..) {
        Some(rest) if !rest.is_empty() => Ok(Some(Wrapped {
            argv: rest.to_vec(),
            chdir,
        })),
        _ => Ok(None),
    }
}

/// Re-fingerprints pinned inputs; `Err` names the first that changed or vanished.
pub fn check_inputs(pinned: &[InputPin]) -> Result<(), PinError> {
    for p in pinned {
        if p.role == UNPINNABLE {
            return Err(PinError::InputsChanged(format!(
                "{} ({})",
                p.path,
                p.detail.as_deref().unwrap_or("cannot be pinned")
            )));
        }
        if crate::path_dirs::DIR_ROLES.contains(&p.role.as_str()) {
            if !crate::path_dirs::still_holds(p) {
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
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resolution_ignores_relative_path_entries_and_pins_content() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\necho one\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("./bin:{}", bin.display());
        let r = resolve("tool", &path, d.path()).unwrap();
        assert_eq!(r, std::fs::canonicalize(&tool).unwrap());
        assert!(
            resolve("tool", "./bin", d.path()).is_err(),
            "relative PATH entries are ignored"
        );
        let pin = pin_file(&r).unwrap();
        open_verified(&pin).unwrap();
        std::fs::write(&tool, "#!/bin/sh\necho two\n").unwrap();
        match open_verified(&pin) {
            Err(PinError::Changed { .. }) => {}
            other => panic!("expected Changed, got {other:?}"),
        }
    }

    #[test]
    fn npm_inputs_show_the_script_and_detect_changes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("package.json"),
            r#"{"scripts":{"test":"jest"}}"#,
        )
        .unwrap();
        let argv: Vec<String> = vec!["npm".into(), "test".into()];
        let ins = inputs(&argv, d.path(), Path::new("/usr/bin/npm"), None, "");
        assert_eq!(ins[0].role, "package.json");
        assert_eq!(ins[0].detail.as_deref(), Some("script \"test\" runs: jest"));
        check_inputs(&ins).unwrap();
        std::fs::write(
            d.path().join("package.json"),
            r#"{"scripts":{"test":"curl x"}}"#,
        )
        .unwrap();
        assert!(matches!(
            check_inputs(&ins),
            Err(PinError::InputsChanged(_))
        ));
    }

    #[test]
    fn script_operands_are_pinned_but_inline_code_is_not() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ci.sh"), "echo ci\n").unwrap();
        let a: Vec<String> = vec!["bash".into(), "-e".into(), "ci.sh".into()];
        assert_eq!(
            inputs(&a, d.path(), Path::new("/bin/bash"), None, "").len(),
            1
        );
        let b: Vec<String> = vec!["sh".into(), "-c".into(), "ci.sh".into()];
        assert!(inputs(&b, d.path(), Path::new("/bin/sh"), None, "").is_empty());
    }

    #[test]
    fn requester_writable_locations() {
        let cwd = Path::new("/work/app");
        assert!(requester_writable(
            Path::new("/work/app/node_modules/.bin/npm"),
            cwd,
            None
        ));
        assert!(requester_writable(
            Path::new("/home/u/.local/bin/x"),
            cwd,
            None
        ));
        assert!(requester_writable(
            Path::new("/home/u/bin/x"),
            cwd,
            Some(Path::new("/home/u"))
        ));
        assert!(requester_writable(Path::new("/tmp/x"), cwd, None));
        assert!(!requester_writable(
            Path::new("/usr/bin/env"),
            cwd,
            Some(Path::new("/home/u"))
        ));
    }

    fn sv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn roles(argv: &[&str], cwd: &Path, exe: &str) -> Vec<(String, String)> {
        inputs(&sv(argv), cwd, Path::new(exe), None, "/usr/bin:/bin")
            .into_iter()
            .filter(|p| !crate::path_dirs::DIR_ROLES.contains(&p.role.as_str()))
            .map(|p| {
                let name = Path::new(&p.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (p.role, name)
            })
            .collect()
    }

    fn has(r: &[(String, String)], role: &str, name: &str) -> bool {
        r.iter().any(|(a, b)| a == role && b == name)
    }

    #[test]
    fn options_with_arguments_are_never_taken_for_the_script() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            "x.sh", "x.py", "t.pl", "t.rb", "app.js", "r.js", "a.lua", "m.lua",
        ] {
            std::fs::write(d.path().join(f), "x\n").unwrap();
        }
        let p = d.path();
        for (argv, exe, want) in [
            (&["bash", "-o", "pipefail", "x.sh"][..], "/bin/bash", "x.sh"),
            (&["bash", "-eo", "pipefail", "x.sh"], "/bin/bash", "x.sh"),
            (&["bash", "--rcfile", "r.js", "x.sh"], "/bin/bash", "x.sh"),
            (
                &["python3", "-W", "error", "x.py"],
                "/usr/bin/python3",
                "x.py",
            ),
            (
                &["python3", "-X", "dev", "-u", "x.py"],
                "/usr/bin/python3",
                "x.py",
            ),
            (&["perl", "-I", "lib", "t.pl"], "/usr/bin/perl", "t.pl"),
            (&["perl", "-Mstrict", "-w", "t.pl"], "/usr/bin/perl", "t.pl"),
            (&["ruby", "-r", "json", "t.rb"], "/usr/bin/ruby", "t.rb"),
            (
                &["node", "--title", "x", "app.js"],
                "/usr/bin/node",
                "app.js",
            ),
            (&["lua", "-l", "m", "a.lua"], "/usr/bin/lua", "a.lua"),
        ] {
            let r = roles(argv, p, exe);
            assert!(has(&r, "script", want), "{argv:?}: {r:?}");
        }
        // Files an option loads code from are pinned too.
        let r = roles(
            &["node", "--require", "./r.js", "app.js"],
            p,
            "/usr/bin/node",
        );
        assert!(
            has(&r, "script-option", "r.js") && has(&r, "script", "app.js"),
            "{r:?}"
        );
        let r = roles(&["lua", "-l", "m", "a.lua"], p, "/usr/bin/lua");
        assert!(has(&r, "script-option", "m.lua"), "{r:?}");
        // `bash x.sh -c y`: `-c` after the operand is the script's argument, not inline code.
        let r = roles(&["bash", "x.sh", "-c", "y"], p, "/bin/bash");
        assert!(has(&r, "script", "x.sh"), "{r:?}");
        // `python3 -m mod x.py`: a module run, `x.py` is its argument.
        let r = roles(
            &["python3", "-m", "json.tool", "x.py"],
            p,
            "/usr/bin/python3",
        );
        assert!(!has(&r, "script", "x.py"), "{r:?}");
        // `perl -S` and `php -d auto_prepend_file=` cannot be pinned.
        let r = roles(&["perl", "-S", "t.pl"], p, "/usr/bin/perl");
        assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
        let r = roles(
            &["php", "-d", "auto_prepend_file=/tmp/x", "x.py"],
            p,
            "/usr/bin/php",
        );
        assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
    }

    #[test]
    fn wrappers_are_seen_through_or_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("x.sh"), "echo\n").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/y.sh"), "echo\n").unwrap();
        let p = d.path();
        for argv in [
            &["timeout", "60", "sh", "x.sh"][..],
            &[
                "timeout",
                "-s",
                "KILL",
                "--kill-after=5",
                "60",
                "sh",
                "x.sh",
            ],
            &["nice", "-n", "5", "sh", "x.sh"],
            &["nice", "-5", "sh", "x.sh"],
            &["nohup", "sh", "x.sh"],
            &["env", "-u", "X", "CI=1", "sh", "x.sh"],
            &["stdbuf", "-oL", "-e", "0", "sh", "x.sh"],
            &["setsid", "-w", "sh", "x.sh"],
            &["time", "-f", "%e", "sh", "x.sh"],
            &["ionice", "-c", "3", "sh", "x.sh"],
            &["taskset", "-c", "0", "sh", "x.sh"],
            &["chrt", "-o", "0", "sh", "x.sh"],
            &["flock", "/tmp/l", "sh", "x.sh"],
            &["nice", "timeout", "5", "env", "sh", "x.sh"],
        ] {
            let exe = format!("/usr/bin/{}", argv[0]);
            let r = roles(argv, p, &exe);
            assert!(has(&r, "script", "x.sh"), "{argv:?}: {r:?}");
            assert!(
                has(&r, "wrapped-executable", "sh")
                    || has(&r, "wrapped-executable", "dash")
                    || r.iter().any(|(a, _)| a == "wrapped-executable"),
                "{argv:?}: {r:?}"
            );
        }
        let r = roles(&["env", "-C", "sub", "sh", "y.sh"], p, "/usr/bin/env");
        assert!(has(&r, "script", "y.sh"), "{r:?}");
        for argv in [
            &["env", "LD_PRELOAD=/tmp/x.so", "sh", "x.sh"][..],
            &["env", "-S", "sh x.sh"],
            &["timeout", "--bogus", "5", "sh", "x.sh"],
            &["xargs", "-n", "1", "sh"],
        ] {
            let exe = format!("/usr/bin/{}", argv[0]);
            let r = roles(argv, p, &exe);
            assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{argv:?}: {r:?}");
        }
        // Inline code and pid modes run no pinned command.
        let r = roles(&["flock", "/tmp/l", "-c", "echo"], p, "/usr/bin/flock");
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn what_cannot_be_pinned_is_marked_never_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        let fifo = p.join("f.sh");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let t0 = std::time::Instant::now();
        // Script operand, text input and executable: none blocks on the pipe.
        let r = roles(&["sh", "f.sh"], p, "/bin/sh");
        assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
        let (m, _) = pin_input_text("git-config", &fifo, |_| None).unwrap();
        assert_eq!(m.role, UNPINNABLE);
        assert!(read_for_requester(&fifo).is_none());
        assert_eq!(pin_input("x", &fifo, None).unwrap().role, UNPINNABLE);
        assert!(pin_file(&fifo).is_err());
        assert!(t0.elapsed() < std::time::Duration::from_secs(2));
        for op in ["/dev/stdin", "/proc/self/fd/0", "/dev/null"] {
            let r = roles(&["bash", op], p, "/bin/bash");
            assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{op}: {r:?}");
        }
        let _l = std::os::unix::net::UnixListener::bind(p.join("s.sh")).unwrap();
        let r = roles(&["sh", "s.sh"], p, "/bin/sh");
        assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
        // A pin marker never passes a check.
        assert!(check_inputs(&[unpinnable(&fifo, "a FIFO")]).is_err());
    }

    #[test]
    fn big_inputs_fail_closed() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("big.sh");
        let f = File::create(&big).unwrap();
        f.set_len(MAX_INPUT + 1).unwrap();
        drop(f);
        // Too big to hash: pinned by identity, which a same-size rewrite changes (ctime).
        let pin = pin_input("script", &big, None).unwrap();
        assert!(pin.sha256.starts_with("identity:"), "{}", pin.sha256);
        check_inputs(std::slice::from_ref(&pin)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
        f.set_len(MAX_INPUT + 1).unwrap();
        std::fs::write(&big, vec![b'#'; (MAX_INPUT + 1) as usize]).unwrap();
        assert!(check_inputs(&[pin]).is_err());
        // Too big to read and quote: a marker, never a pin of unread text.
        let (m, t) = pin_input_text("git-config", &big, |_| None).unwrap();
        assert_eq!(m.role, UNPINNABLE);
        assert!(t.is_empty());
    }

    #[test]
    fn a_file_written_during_a_run_shows_even_when_restored() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("ci.sh");
        std::fs::write(&s, "echo one\n").unwrap();
        let pins = vec![pin_input("script", &s, None).unwrap()];
        let st = stamps(&pins);
        assert_eq!(changed_since(&st), None);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&s, "echo two\n").unwrap();
        std::fs::write(&s, "echo one\n").unwrap();
        check_inputs(&pins).unwrap();
        assert!(changed_since(&st).is_some());
    }
}
