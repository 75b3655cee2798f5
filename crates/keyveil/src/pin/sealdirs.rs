//! Directories whose files a run reads as code besides its script, pinned and sealed (issue 15):
//! the directory of a shell script (the files it may source: `. ./lib.sh`, `source common`) and
//! the directory Python imports from first (`sys.path[0]`: `import helper`).
//!
//! A script directory is pinned by content (each sourceable file's name and SHA-256);
//! `sys.path[0]` by a filtered fingerprint of identities
//! ([`crate::pin::path_dirs::fingerprint_filtered`]: ctime included, so any write, rename or new
//! file changes it). When a run starts, [`sealed_from`] hashes each kept regular file from an
//! open descriptor and checks the result against the pin (for an identity fingerprint: that no
//! write happened while a file was read, and that the fingerprint still is the approved one):
//! the (path, SHA-256) pairs it returns are the approved contents, which the reaper copies and
//! binds read-only over the files (`reap/seal.rs`). A file rewritten during the run is then
//! never the one the run sources or imports.
//!
//! Bound: at most [`MAX_FILES`] files and [`MAX_BYTES`] bytes in one directory pin; a directory
//! with more cannot be pinned (the request is refused, with the reason on the card). Hashes are
//! cached by file identity, so a run of an unchanged directory costs two `stat`s per file and
//! the copies (`docs/threat-model.md`, "What a grant binds").

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::{hash_file, key};
use super::files::{Opened, open_regular, readable_for_requester, unpinnable};
use super::path_dirs::{fingerprint_filtered, python_importable};
use super::{InputPin, MAX_INPUT, PinError};

/// Role of a shell script's directory: the files it may source.
pub(crate) const SCRIPT_DIR: &str = "script-dir";

/// Role of `sys.path[0]` (written by `loaders/python.rs`).
pub(crate) const PYTHON_DIR: &str = "python-import-dir";

/// Directory roles whose files are sealed for the run.
pub(crate) const SEALED_DIR_ROLES: &[&str] = &[SCRIPT_DIR, PYTHON_DIR];

/// Most files sealed from one directory pin.
pub(crate) const MAX_FILES: usize = 4096;

/// Most bytes sealed from one directory pin (the copies live in memory, on a tmpfs).
pub(crate) const MAX_BYTES: u64 = 64 << 20;

/// Name extensions of files a shell script is taken to source (`lib.sh`, `.env`, `vars.inc`);
/// a name without an extension (`common`, `functions`) counts too.
const SHELL_EXTS: &[&str] = &[
    "sh", "bash", "zsh", "ksh", "env", "inc", "rc", "lib", "conf", "cfg", "profile", "source",
];

/// Whether a shell script may source the entry `name` of `dir`: a regular file (after symlinks)
/// with a shell-like extension or none. Directories are left out: a run writing into `build/`
/// does not change the pin.
pub(crate) fn shell_sourceable(dir: &Path, name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    let ext_ok = match n.get(1..).and_then(|rest| rest.rsplit_once('.')) {
        None => !n.starts_with('.') || SHELL_EXTS.contains(&n.get(1..).unwrap_or("")),
        Some((_, e)) => SHELL_EXTS.contains(&e),
    };
    ext_ok && std::fs::metadata(dir.join(name)).is_ok_and(|m| m.is_file())
}

/// Whether Python may load the file `name` as code: a module, a compiled module or an
/// extension module (data files beside them are not sealed and do not count in the bound).
fn python_code(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n.rsplit_once('.')
        .is_some_and(|(_, e)| ["py", "pyc", "pyw", "so"].contains(&e))
}

/// The fingerprint of a sealed directory pin of `role` (`None` where the broker never reads).
/// A script directory's is of content: each sourceable file's name and SHA-256 (so a hard link
/// or a `chmod` leaves it as it was); `sys.path[0]`'s is of identity, as every directory pin.
pub(crate) fn fingerprint(role: &str, dir: &Path) -> Option<super::path_dirs::Fingerprint> {
    if role != SCRIPT_DIR {
        return fingerprint_filtered(dir, 1, python_importable);
    }
    let canon = std::fs::canonicalize(dir).ok();
    if canon.as_deref().is_some_and(|c| !readable_for_requester(c)) {
        return None;
    }
    let mut h = Sha256::new();
    let (programs, incomplete) = match content(dir) {
        Ok(list) => {
            for (path, sha) in &list {
                h.update(format!("{}\0{sha}\n", path.display()).as_bytes());
            }
            (list.len(), None)
        }
        Err(why) => (0, Some(why)),
    };
    Some(super::path_dirs::Fingerprint {
        digest: hex::encode(h.finalize()),
        programs,
        exists: canon.is_some(),
        incomplete,
    })
}

/// Re-fingerprints a sealed directory pin; `true` when it still holds.
pub(crate) fn still_holds(p: &InputPin) -> bool {
    fingerprint(&p.role, Path::new(&p.path))
        .is_some_and(|f| f.incomplete.is_none() && f.digest == p.sha256)
}

/// Each sourceable file of a script directory (its path as listed) with its SHA-256 (the
/// identity string of one over 16 MiB), hashed from an open descriptor (cached by identity).
fn content(dir: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let mut out = Vec::new();
    for f in files(SCRIPT_DIR, dir)? {
        let gone = || format!("{} changed while it was read", f.display());
        let canon = std::fs::canonicalize(&f).map_err(|_| gone())?;
        if !readable_for_requester(&canon) {
            return Err(format!("{} leads where keyveil never reads", f.display()));
        }
        let (file, m) = open_regular(&canon).map_err(|_| gone())?;
        let sha = if m.len() <= MAX_INPUT {
            hash_file(&file).map_err(|_| gone())?.1
        } else {
            let k = key(&m);
            format!("identity:{}:{}:{}:{}", k.0, k.1, k.2, k.4)
        };
        out.push((f, sha));
    }
    Ok(out)
}

/// The regular files a pin of `role` on `dir` seals: a script directory's sourceable files;
/// `sys.path[0]`'s modules and those of its importable directories (packages, `__pycache__`):
/// `.py`, `.pyc`, `.pyw`, `.so`. `Err` says why they are too many or too big ([`MAX_FILES`], [`MAX_BYTES`]).
pub(crate) fn files(role: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    let mut bytes = 0u64;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut add = |p: PathBuf, out: &mut Vec<PathBuf>| -> Result<(), String> {
        let Ok(m) = std::fs::metadata(&p) else {
            return Ok(());
        };
        if !m.is_file() {
            return Ok(());
        }
        bytes += m.len();
        out.push(p);
        if out.len() > MAX_FILES || bytes > MAX_BYTES {
            return Err(format!(
                "{} holds more code files than keyveil seals for a run (at most {MAX_FILES} \
                 files, {} MiB)",
                dir.display(),
                MAX_BYTES >> 20
            ));
        }
        Ok(())
    };
    for e in rd.filter_map(Result::ok) {
        let n = e.file_name();
        let p = dir.join(&n);
        if role == SCRIPT_DIR {
            if shell_sourceable(dir, &n) {
                add(p, &mut out)?;
            }
        } else if python_importable(&n) {
            if p.is_dir() {
                for s in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    if python_code(&s.file_name()) {
                        add(s.path(), &mut out)?;
                    }
                }
            } else if python_code(&n) {
                add(p, &mut out)?;
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Pins `dir` as a sealed directory of `role`, described by `what`; an [`UNPINNABLE`] marker
/// when it holds more than the bound.
///
/// [`UNPINNABLE`]: crate::pin::UNPINNABLE
pub(crate) fn pin(role: &str, dir: &Path, what: &str) -> Option<InputPin> {
    let n = match files(role, dir) {
        Ok(f) => f.len(),
        Err(why) => {
            return Some(unpinnable(
                dir,
                format!(
                    "{why}; move the script into a directory of its own (hint: the files there \
                     are sealed read-only for the run)"
                ),
            ));
        }
    };
    let f = fingerprint(role, dir)?;
    if let Some(why) = f.incomplete {
        return Some(unpinnable(dir, format!("{what}: {why}")));
    }
    Some(InputPin {
        role: role.to_owned(),
        path: dir.display().to_string(),
        sha256: f.digest,
        detail: Some(format!(
            "{what}: {n} file{} pinned and sealed read-only for the run (a change ends the grant)",
            if n == 1 { "" } else { "s" }
        )),
    })
}

/// The directory of a shell script, pinned: the files it may source ([`shell_sourceable`]).
pub(crate) fn script_dir(script: &Path) -> Option<InputPin> {
    let dir = script.parent()?;
    pin(
        SCRIPT_DIR,
        dir,
        "the shell script's directory (files it may source)",
    )
}

/// The files of a sealed directory pin `p` as they were approved: (canonical path, SHA-256, or
/// the identity string of a file over 16 MiB). Each is hashed from an open descriptor whose
/// identity did not move while it was read and is still the path's; then the directory's
/// fingerprint must still be the pinned one, so each identity, and so each content, is the
/// approved one (the kernel sets ctime on every write; no same-uid process sets it back).
///
/// # Errors
/// [`PinError::InputsChanged`] naming the directory or file that changed.
pub(crate) fn sealed_from(p: &InputPin) -> Result<Vec<(String, String)>, PinError> {
    let dir = Path::new(&p.path);
    let changed = |what: &Path| PinError::InputsChanged(what.display().to_string());
    if p.role == SCRIPT_DIR {
        // The digest of these very hashes is the pinned one: they are the approved contents.
        let list = content(dir).map_err(|_| changed(dir))?;
        let mut h = Sha256::new();
        for (path, sha) in &list {
            h.update(format!("{}\0{sha}\n", path.display()).as_bytes());
        }
        if hex::encode(h.finalize()) != p.sha256 {
            return Err(changed(dir));
        }
        return list
            .into_iter()
            .map(|(f, sha)| {
                let c = std::fs::canonicalize(&f).map_err(|_| changed(&f))?;
                Ok((c.display().to_string(), sha))
            })
            .collect();
    }
    let list = files(&p.role, dir).map_err(|_| changed(dir))?;
    let mut out = Vec::with_capacity(list.len());
    for f in list {
        let canon = std::fs::canonicalize(&f).map_err(|_| changed(&f))?;
        if !readable_for_requester(&canon) {
            continue;
        }
        let (file, m) = match open_regular(&canon) {
            Ok(x) => x,
            Err(Opened::Missing | Opened::Odd(_)) => return Err(changed(&f)),
        };
        let sha = if m.len() <= MAX_INPUT {
            let (k, sha) = hash_file(&file).map_err(|_| changed(&f))?;
            let after = file.metadata().map(|m| key(&m)).map_err(|_| changed(&f))?;
            let by_path = std::fs::metadata(&canon).map(|m| key(&m)).ok();
            if after != k || by_path != Some(k) {
                return Err(changed(&f));
            }
            sha
        } else {
            let k = key(&m);
            format!("identity:{}:{}:{}:{}", k.0, k.1, k.2, k.4)
        };
        out.push((canon.display().to_string(), sha));
    }
    let now = fingerprint(&p.role, dir).ok_or_else(|| changed(dir))?;
    if now.incomplete.is_some() || now.digest != p.sha256 {
        return Err(changed(dir));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_script_dir_pins_what_a_script_may_source_and_not_its_outputs() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        for n in ["ci.sh", "lib.sh", "common", ".env", "vars.inc"] {
            std::fs::write(dir.join(n), "true\n").unwrap();
        }
        std::fs::write(dir.join("build.log"), "x").unwrap();
        std::fs::create_dir(dir.join("build")).unwrap();
        let p = script_dir(&dir.join("ci.sh")).unwrap();
        assert_eq!(p.role, SCRIPT_DIR);
        assert!(p.detail.as_deref().unwrap().contains("5 files"), "{p:?}");
        let sealed = sealed_from(&p).unwrap();
        assert_eq!(sealed.len(), 5);
        // Outputs of a run (a log, files under a directory) leave the pin as it was.
        std::fs::write(dir.join("build.log"), "y").unwrap();
        std::fs::write(dir.join("build/out"), "y").unwrap();
        assert!(still_holds(&p));
        assert_eq!(sealed_from(&p).unwrap(), sealed);
        // A sourced file rewritten: the pin ends.
        std::fs::write(dir.join("common"), "evil\n").unwrap();
        assert!(!still_holds(&p));
        assert!(sealed_from(&p).is_err());
    }

    #[test]
    fn a_directory_over_the_bound_is_unpinnable() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..=MAX_FILES {
            std::fs::write(d.path().join(format!("f{i}.sh")), "").unwrap();
        }
        let p = script_dir(&d.path().join("f0.sh")).unwrap();
        assert_eq!(p.role, crate::pin::UNPINNABLE, "{p:?}");
    }

    #[test]
    fn sys_path0_seals_modules_not_data() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("pkg")).unwrap();
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        std::fs::write(d.path().join("helper.py"), "x = 1\n").unwrap();
        std::fs::write(d.path().join("pkg/mod.py"), "x = 1\n").unwrap();
        for i in 0..=MAX_FILES {
            std::fs::write(d.path().join(format!("data/{i}.csv")), "").unwrap();
        }
        let f = files(PYTHON_DIR, d.path()).unwrap();
        assert_eq!(f.len(), 2, "{f:?}");
        let p = pin(PYTHON_DIR, d.path(), "sys.path[0]").unwrap();
        assert_eq!(sealed_from(&p).unwrap().len(), 2);
        std::fs::write(d.path().join("pkg/mod.py"), "x = 2\n").unwrap();
        assert!(sealed_from(&p).is_err());
    }
}
