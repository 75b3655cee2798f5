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
/// Largest input file fingerprinted (bytes); bigger ones are pinned by identity only.
const MAX_INPUT: u64 = 16 * 1024 * 1024;

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
        crate::display::visible(name)
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

/// Pins a file by path.
pub fn pin_file(path: &Path) -> Result<FilePin, PinError> {
    let f = File::open(path).map_err(|e| io(path, e))?;
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
    let f = File::open(p).map_err(|e| io(p, e))?;
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

/// Fingerprints a small text input and reads it from the same bytes (a config file whose
/// settings the card quotes, a makefile whose includes are followed), so what the card quotes is
/// what was hashed: only where [`pin_input`] would hash it (never `/proc`, `/sys`, `/dev` or the
/// broker's home, whatever a symlink or include says). `detail` makes the input's detail from the
/// text. A file over 1 MiB is pinned without being read (empty text).
pub(crate) fn pin_input_text(
    role: &str,
    path: &Path,
    detail: impl FnOnce(&str) -> Option<String>,
) -> Option<(InputPin, String)> {
    const MAX_TEXT: u64 = 1 << 20;
    let canon = std::fs::canonicalize(path).ok()?;
    if !readable_for_requester(&canon) {
        return None;
    }
    let f = File::open(&canon).ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() {
        return None;
    }
    if m.len() > MAX_TEXT {
        return pin_input(role, &canon, None).map(|p| (p, String::new()));
    }
    let mut b = Vec::new();
    f.take(MAX_TEXT).read_to_end(&mut b).ok()?;
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

/// Reads a small text file on a requester's behalf, where [`pin_input_text`] would.
pub(crate) fn read_for_requester(path: &Path) -> Option<String> {
    pin_input_text("", path, |_| None).map(|(_, t)| t)
}

/// Fingerprints one input file (canonical path, SHA-256); `None` when it does not exist, is not a
/// regular file, or lies where the broker never reads for a requester.
pub(crate) fn pin_input(role: &str, path: &Path, detail: Option<String>) -> Option<InputPin> {
    let canon = std::fs::canonicalize(path).ok()?;
    if !readable_for_requester(&canon) {
        return None;
    }
    let m = std::fs::metadata(&canon).ok()?;
    if !m.is_file() {
        return None;
    }
    let sha256 = if m.len() <= MAX_INPUT {
        let f = File::open(&canon).ok()?;
        hash_file(&f).ok()?.1
    } else {
        format!("size:{}", m.len())
    };
    Some(InputPin {
        role: role.to_owned(),
        path: canon.display().to_string(),
        sha256,
        detail,
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
    // Interpreters with a script operand: the first non-option argument, unless code is inline.
    if is(&[
        "sh", "bash", "dash", "zsh", "ksh", "ash", "python", "node", "ruby", "perl", "php", "deno",
        "bun", "lua", "Rscript",
    ]) {
        let shell = is(&["sh", "bash", "dash", "zsh", "ksh", "ash"]);
        let code_opts: &[&str] = if is(&["python"]) {
            &["-c"]
        } else if is(&["node", "deno", "bun"]) {
            &["-e", "--eval", "-p", "--print", "eval"]
        } else if is(&["perl"]) {
            &["-e", "-E"]
        } else if is(&["ruby", "lua"]) {
            &["-e"]
        } else if is(&["php"]) {
            &["-r"]
        } else {
            &[]
        };
        let inline = argv.iter().skip(1).any(|a| {
            code_opts.contains(&a.as_str())
                || (shell && a.starts_with('-') && !a.starts_with("--") && a.contains('c'))
        });
        if !inline {
            let mut it = argv.iter().skip(1);
            let operand = loop {
                match it.next() {
                    Some(a) if a == "run" && is(&["deno", "bun"]) => continue,
                    Some(a) if a.starts_with('-') => continue,
                    other => break other,
                }
            };
            if let Some(op) = operand {
                out.extend(pin_input("script", &cwd.join(op), None));
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
        if !out.iter().any(|q| q.path == p.path) {
            out.push(p);
        }
    }
    out
}

/// Re-fingerprints pinned inputs; `Err` names the first that changed or vanished.
pub fn check_inputs(pinned: &[InputPin]) -> Result<(), PinError> {
    for p in pinned {
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
}
