//! Directories whose programs a granted command finds by name at run time, in places the agent
//! can write (issue 15): the policy `PATH`'s entries under `$HOME` (`~/.cargo/bin`,
//! `~/.local/bin`, `~/.pyenv/shims`), a project's `node_modules/.bin`, a version manager's
//! hooks and installed toolchains.
//!
//! `make test` under a standing grant runs `xxd`, `sed`, `python3`, ... found through `PATH`;
//! the executable the human approved is pinned, but the helpers it runs are not. A program the
//! agent plants in a writable `PATH` directory that comes before `/usr/bin` runs with the granted
//! values. So every such directory is pinned as a whole: its identity and, for each entry, the
//! (name, type, inode, size, mode, mtime, ctime) of the entry and of what a symlink leads to.
//! `ctime` is set by the kernel on every write, rename, link, chmod or `utimes`, and a process of
//! the same user cannot set it back, so an unchanged fingerprint means no entry was added,
//! removed, replaced or written. A directory that does not exist but that the agent could create
//! is pinned as absent. Nothing is hashed: a run costs one `readdir` and two `stat`s per entry.
//!
//! The pins are [`InputPin`]s of role [`ROLE`] (or a tool's role, for hook and toolchain
//! directories): on the card (`PATH dir the agent can write: 14 programs, pinned`), bound into the
//! grant with the other inputs, re-checked at every run and once more when a run ends (a change
//! during the run ends the grant too).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::pin::InputPin;

/// Role of a pinned `PATH` directory the agent can write.
pub(crate) const ROLE: &str = "path-dir";

/// Roles whose pins are directory fingerprints (see [`fingerprint`]), not file hashes.
pub(crate) const DIR_ROLES: &[&str] = &[
    ROLE,
    "version-manager-hooks",
    "toolchain-dir",
    "toolchain-lib",
    "git-hooks-dir",
    "python-import-dir",
    "script-dir",
    "make-include-dir",
    "config-dir",
];

pub(crate) use crate::pin::unpinnable;

/// Most entries fingerprinted in one directory pin, subdirectories included; a directory with
/// more cannot be pinned (the request is refused, see [`crate::pin::UNPINNABLE`]). Each entry costs two
/// `stat`s at request time and at every run.
const MAX_ENTRIES: usize = 200_000;

/// A directory's fingerprint: the digest and how many programs (executable regular files, after
/// symlinks) it holds. `None` when it lies where the broker never reads for a requester.
pub(crate) struct Fingerprint {
    /// Lowercase hex SHA-256 of the listing and every entry's identity.
    pub digest: String,
    /// Executable regular files found (symlinks followed), at the top level.
    pub programs: usize,
    /// Whether the directory exists.
    pub exists: bool,
    /// Why the fingerprint does not cover everything (a listing failed, too many entries): such
    /// a directory is not pinned but refused ([`crate::pin::UNPINNABLE`]).
    pub incomplete: Option<String>,
}

fn ident(m: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{:o}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.mode(),
        m.uid(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    )
}

/// Fingerprints `dir` as a child would see it (the path as given, symlinks followed). With
/// `depth` > 0, subdirectories are fingerprinted too, that many levels down (hook directories,
/// whole toolchains). Every listing must succeed and at most [`MAX_ENTRIES`] entries are taken
/// in all; otherwise the fingerprint says why it is `incomplete`.
pub(crate) fn fingerprint(dir: &Path, depth: u32) -> Option<Fingerprint> {
    fingerprint_of(dir, depth, &|_| true, false)
}

/// [`fingerprint`] of the top-level entries whose names pass `keep` (subdirectories below them
/// are taken whole); the directory's own times are left out, so an entry that `keep` rejects
/// (a data file) does not change it.
pub(crate) fn fingerprint_filtered(
    dir: &Path,
    depth: u32,
    keep: impl Fn(&std::ffi::OsStr) -> bool,
) -> Option<Fingerprint> {
    fingerprint_of(dir, depth, &keep, true)
}

fn fingerprint_of(
    dir: &Path,
    depth: u32,
    keep: &dyn Fn(&std::ffi::OsStr) -> bool,
    filtered: bool,
) -> Option<Fingerprint> {
    let mut h = Sha256::new();
    let canon = match std::fs::canonicalize(dir) {
        Ok(c) => c,
        Err(_) => {
            // Absent (or a dangling symlink): pinned as such, so creating it is a change.
            let link = std::fs::symlink_metadata(dir).ok().map(|m| ident(&m));
            h.update(format!("absent\0{link:?}\n").as_bytes());
            return Some(Fingerprint {
                digest: hex::encode(h.finalize()),
                programs: 0,
                exists: false,
                incomplete: None,
            });
        }
    };
    if !crate::pin::readable_for_requester(&canon) {
        return None;
    }
    let mut budget = MAX_ENTRIES;
    let mut programs = 0;
    if filtered {
        let m = std::fs::metadata(&canon).ok()?;
        h.update(format!("filtered {}:{}\n", m.dev(), m.ino()).as_bytes());
    }
    let incomplete = walk(
        &canon,
        depth,
        keep,
        filtered,
        &mut budget,
        &mut h,
        &mut programs,
    )
    .err();
    Some(Fingerprint {
        digest: hex::encode(h.finalize()),
        programs,
        exists: true,
        incomplete,
    })
}

/// Hashes `canon` (canonical) and its entries into `h`; `Err` says why the result does not
/// cover everything.
fn walk(
    canon: &Path,
    depth: u32,
    keep: &dyn Fn(&std::ffi::OsStr) -> bool,
    skip_own_ident: bool,
    budget: &mut usize,
    h: &mut Sha256,
    programs: &mut usize,
) -> Result<(), String> {
    let m =
        std::fs::metadata(canon).map_err(|e| format!("cannot stat {}: {e}", canon.display()))?;
    if !skip_own_ident {
        h.update(format!("{}\0{}\n", canon.display(), ident(&m)).as_bytes());
    }
    if !m.is_dir() {
        return Ok(());
    }
    let rd = std::fs::read_dir(canon).map_err(|e| {
        format!(
            "cannot list {} ({e}): a program planted there could not be seen",
            canon.display()
        )
    })?;
    let mut names: Vec<std::ffi::OsString> = Vec::new();
    for e in rd {
        let e = e.map_err(|e| format!("cannot list {}: {e}", canon.display()))?;
        if keep(&e.file_name()) {
            names.push(e.file_name());
        }
    }
    names.sort();
    h.update(format!("entries {}\n", names.len()).as_bytes());
    if names.len() > *budget {
        return Err(format!(
            "{} holds more entries than keyveil fingerprints ({MAX_ENTRIES})",
            canon.display()
        ));
    }
    *budget -= names.len();
    for n in names {
        let p = canon.join(&n);
        h.update(n.as_encoded_bytes());
        h.update(b"\0");
        let Ok(l) = std::fs::symlink_metadata(&p) else {
            h.update(b"gone\n");
            continue;
        };
        h.update(ident(&l).as_bytes());
        let target = if l.file_type().is_symlink() {
            let t = std::fs::read_link(&p).ok();
            h.update(format!("\0->{t:?}").as_bytes());
            std::fs::metadata(&p).ok()
        } else {
            Some(l)
        };
        match target {
            Some(t) => {
                h.update(format!("\0{}", ident(&t)).as_bytes());
                if t.is_file() && t.mode() & 0o111 != 0 {
                    *programs += 1;
                }
                if t.is_dir() && depth > 0 {
                    let sub = std::fs::canonicalize(&p)
                        .map_err(|e| format!("cannot resolve {}: {e}", p.display()))?;
                    if !crate::pin::readable_for_requester(&sub) {
                        return Err(format!("{} leads where keyveil never reads", p.display()));
                    }
                    // A symlink loop or a link back up would be walked until the budget ends.
                    let mut sub_programs = 0;
                    walk(
                        &sub,
                        depth - 1,
                        &|_| true,
                        false,
                        budget,
                        h,
                        &mut sub_programs,
                    )?;
                }
            }
            None => h.update(b"\0dangling"),
        }
        h.update(b"\n");
    }
    Ok(())
}

/// Pins a directory by [`fingerprint`] as an input of role `role`, described by `what`
/// (`"PATH dir the agent can write"`). The pin's path is the path as given (what the child
/// looks up), not the canonical one.
pub(crate) fn pin_dir(role: &str, dir: &Path, depth: u32, what: &str) -> Option<InputPin> {
    pin_fingerprint(role, dir, fingerprint(dir, depth)?, what)
}

/// A pin from a fingerprint taken of `dir`; an incomplete one is an [`crate::pin::UNPINNABLE`] input.
pub(crate) fn pin_fingerprint(
    role: &str,
    dir: &Path,
    f: Fingerprint,
    what: &str,
) -> Option<InputPin> {
    if let Some(why) = &f.incomplete {
        return Some(unpinnable(dir, format!("{what}: {why}")));
    }
    let detail = if f.exists {
        format!(
            "{what}: {} program{}, pinned (a change ends the grant)",
            f.programs,
            if f.programs == 1 { "" } else { "s" }
        )
    } else {
        format!("{what}: absent, pinned as absent (creating it ends the grant)")
    };
    Some(InputPin {
        role: role.to_owned(),
        path: dir.display().to_string(),
        sha256: f.digest,
        detail: Some(detail),
    })
}

/// Re-fingerprints a directory pin; `true` when it still holds. `depth` is read back from the
/// role (hook directories are pinned two levels down). A `script-dir` pin is of content:
/// `pin/sealdirs.rs` checks it (`check_inputs` sends it there).
pub(crate) fn still_holds(p: &InputPin) -> bool {
    let f = if p.role == "python-import-dir" {
        fingerprint_filtered(Path::new(&p.path), depth_for(&p.role), python_importable)
    } else {
        fingerprint(Path::new(&p.path), depth_for(&p.role))
    };
    f.is_some_and(|f| f.incomplete.is_none() && f.digest == p.sha256)
}

/// How deep a directory pin of `role` looks: hook directories three levels down, an installed
/// version's `lib` and the directory Python imports first from two (`lib/python3.12/os.py`;
/// modules and each package's entries), `PATH`, `bin` and git hook directories at the top level.
pub(crate) fn depth_for(role: &str) -> u32 {
    match role {
        "version-manager-hooks" => 2,
        "toolchain-lib" | "python-import-dir" => 1,
        _ => 0,
    }
}

/// The entries of `sys.path[0]` Python can import (modules, extension modules, compiled files,
/// packages and `__pycache__`): a `json.py` or `json/` planted there shadows the standard
/// library. Hidden entries and data files are left out, so editing a README does not end a
/// grant.
pub(crate) fn python_importable(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    if n.starts_with('.') {
        return false;
    }
    let ext = n.rsplit_once('.').map(|(_, e)| e);
    match ext {
        None => true, // a package (or namespace package) directory, or a file that is neither
        Some(e) => ["py", "pyc", "pyw", "so", "pth", "zip", "egg"].contains(&e),
    }
}

/// The homes that count as the agent's: the child's HOME (the vault's setting) and the broker's
/// own `HOME`.
fn homes(home: Option<&Path>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = home.map(Path::to_path_buf).into_iter().collect();
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h));
    }
    v.into_iter()
        .flat_map(|h| {
            let c = std::fs::canonicalize(&h).ok();
            std::iter::once(h).chain(c)
        })
        .collect()
}

/// Whether the agent (the broker's user) can change what `dir` holds: it lies under a home, the
/// working directory or a temporary directory, in `node_modules/.bin` or `.local/bin`; or `dir`
/// (or, absent, its nearest existing ancestor) or one of its ancestors is world-writable (sticky
/// ancestors excepted), owned by the user, or writable by the user (for a user other than root:
/// root can write everywhere, and for root only the places above count).
pub(crate) fn agent_writable(dir: &Path, cwd: &Path, home: Option<&Path>) -> bool {
    let s = dir.to_string_lossy();
    let under = |root: &Path| dir.starts_with(root);
    let cwd_counts = cwd.parent().is_some();
    if homes(home).iter().any(|h| under(h))
        || (cwd_counts && under(cwd))
        || ["/tmp", "/var/tmp", "/dev/shm", "/run/user"]
            .iter()
            .any(|t| under(Path::new(t)))
        || s.contains("/node_modules/.bin")
        || s.contains("/.local/bin")
    {
        return true;
    }
    let Some(existing) = dir.ancestors().find_map(|a| std::fs::canonicalize(a).ok()) else {
        return false;
    };
    if homes(home).iter().any(|h| existing.starts_with(h))
        || (cwd_counts && existing.starts_with(cwd))
    {
        return true;
    }
    let euid = rustix::process::geteuid();
    for (i, a) in existing.ancestors().enumerate() {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let sticky = m.mode() & 0o1000 != 0;
        if m.mode() & 0o002 != 0 && (i == 0 || !sticky) {
            return true;
        }
        if !euid.is_root() {
            if m.uid() == euid.as_raw() {
                return true;
            }
            if rustix::fs::access(a, rustix::fs::Access::WRITE_OK).is_ok() && (i == 0 || !sticky) {
                return true;
            }
        }
    }
    false
}

/// Pins each absolute entry of `search_path` that [`agent_writable`] says the agent can change.
pub(crate) fn path_pins(search_path: &str, cwd: &Path, home: Option<&Path>) -> Vec<InputPin> {
    let mut out: Vec<InputPin> = Vec::new();
    for d in search_path.split(':').filter(|d| d.starts_with('/')) {
        let dir = Path::new(d);
        if out.iter().any(|p| p.path == d) || !agent_writable(dir, cwd, home) {
            continue;
        }
        out.extend(pin_dir(ROLE, dir, 0, "PATH dir the agent can write"));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn exe(p: &Path, body: &str) {
        std::fs::write(p, body).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn every_kind_of_change_to_a_writable_path_dir_is_seen() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        exe(&bin.join("tool"), "#!/bin/sh\necho one\n");
        let target = d.path().join("real");
        exe(&target, "#!/bin/sh\necho real\n");
        std::os::unix::fs::symlink(&target, bin.join("link")).unwrap();
        let pins = path_pins(&format!("{}:/usr/bin", bin.display()), d.path(), None);
        assert_eq!(pins.len(), 1, "{pins:?}");
        let p = &pins[0];
        assert_eq!(p.role, ROLE);
        assert!(p.detail.as_deref().unwrap().contains("2 programs"), "{p:?}");
        assert!(still_holds(p));
        // A planted program.
        exe(&bin.join("xxd"), "#!/bin/sh\necho planted\n");
        assert!(!still_holds(p));
        std::fs::remove_file(bin.join("xxd")).unwrap();
        // Removed again: the directory's ctime still tells.
        assert!(!still_holds(p));
        let p = &path_pins(&bin.display().to_string(), d.path(), None)[0];
        // Rewritten in place, same size, mtime set back.
        let before = std::fs::metadata(bin.join("tool")).unwrap();
        std::fs::write(bin.join("tool"), "#!/bin/sh\necho two\n").unwrap();
        let t = std::time::UNIX_EPOCH
            + std::time::Duration::new(before.mtime() as u64, before.mtime_nsec() as u32);
        std::fs::File::options()
            .write(true)
            .open(bin.join("tool"))
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert!(!still_holds(p));
        let p = &path_pins(&bin.display().to_string(), d.path(), None)[0];
        // What a symlink leads to, changed outside the directory.
        exe(&target, "#!/bin/sh\necho evil\n");
        assert!(!still_holds(p));
    }

    #[test]
    fn what_cannot_be_fingerprinted_whole_is_unpinnable() {
        let d = tempfile::tempdir().unwrap();
        // A subdirectory that leads where keyveil never reads cannot be walked.
        let t = d.path().join("t");
        std::fs::create_dir_all(t.join("bin")).unwrap();
        std::os::unix::fs::symlink("/proc/1", t.join("bin/up")).unwrap();
        let p = pin_dir("toolchain-lib", &t, 2, "x").unwrap();
        assert_eq!(p.role, crate::pin::UNPINNABLE, "{p:?}");
        // Within the budget a depth-1 pin sees a file rewritten one level down.
        let lib = d.path().join("lib");
        std::fs::create_dir_all(lib.join("python3.x")).unwrap();
        std::fs::write(lib.join("python3.x/os.py"), "a").unwrap();
        let p = pin_dir("toolchain-lib", &lib, depth_for("toolchain-lib"), "x").unwrap();
        assert!(still_holds(&p));
        std::fs::write(lib.join("python3.x/os.py"), "b").unwrap();
        assert!(!still_holds(&p));
    }

    #[test]
    fn an_absent_writable_dir_is_pinned_as_absent() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("later/bin");
        let pins = path_pins(&bin.display().to_string(), d.path(), None);
        assert_eq!(pins.len(), 1);
        assert!(pins[0].detail.as_deref().unwrap().contains("absent"));
        assert!(still_holds(&pins[0]));
        std::fs::create_dir_all(&bin).unwrap();
        assert!(!still_holds(&pins[0]));
    }

    #[test]
    fn system_dirs_are_not_pinned_and_home_dirs_are() {
        let d = tempfile::tempdir().unwrap();
        let cwd = d.path().join("proj");
        std::fs::create_dir(&cwd).unwrap();
        let home = Path::new("/nonexistent-home-kv");
        assert!(!agent_writable(Path::new("/usr/bin"), &cwd, Some(home)));
        assert!(agent_writable(&home.join(".cargo/bin"), &cwd, Some(home)));
        assert!(agent_writable(
            &cwd.join("node_modules/.bin"),
            Path::new("/"),
            None
        ));
        assert!(agent_writable(Path::new("/opt/x/.local/bin"), &cwd, None));
    }
}
