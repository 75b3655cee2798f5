//! Sealed scripts: the run reads the script it was granted, to the end (Linux).
//!
//! A shell reads its script as it executes it (bash and dash seek back to the end of each
//! command and read on), so a script rewritten in place while an approved run sleeps ran the
//! new lines with the values; the run's end saw the write and ended the grant, but only after
//! that run. The broker now names the run's script files (the pinned script operand, a file an
//! interpreter option names, and the executable when it is a script: `SpawnSpec::sealed`,
//! each with the SHA-256 it was checked against). Before it starts the command, the reaper:
//!
//! 1. reads each file (regular files only, without following a symlink or blocking, at most
//!    16 MiB) and compares its SHA-256 with the pinned one: a mismatch refuses the run (the
//!    file changed between the broker's check and now);
//! 2. enters a new user namespace (its own uid and gid mapped to themselves, nothing else) and a
//!    new mount namespace, private to the run;
//! 3. writes the checked bytes to a tmpfs mounted in that namespace only, bind-mounts each copy
//!    read-only over the file's own path, and detaches the tmpfs.
//!
//! So every process of the run opens, by the same names (`$0`, `BASH_SOURCE`, `dirname "$0"`
//! keep their meaning), the bytes that were checked, and a write to the real file from outside
//! (the agent, same uid) changes nothing the run reads. No same-uid process outside the run can
//! reach the copies: the tmpfs has no path outside the namespace, and the binds are read-only;
//! the real file's identity is still compared when the run ends (a write ends the grant).
//!
//! ELF files are not copied (the broker executes the checked binary through its descriptor).
//! Where the kernel refuses an unprivileged user namespace (`kernel.unprivileged_userns_clone=0`,
//! `user.max_user_namespaces=0`, some container profiles) the run reads its script by path as
//! before and only its end sees a rewrite: `docs/threat-model.md` states this limit.
//! Limits of the sealed run: inside the user namespace, files of other users show as owned by
//! `nobody` and set-uid programs (`sudo`) do not gain privileges; a script renamed over (not
//! written in place) in the instant between this check and the interpreter's `open` detaches
//! the bind (the kernel drops mounts on a name replaced from another namespace), and that run
//! reads the new file; its end sees the new identity and ends the grant.

use std::path::{Path, PathBuf};

use sha2::Digest as _;

/// The argument that introduces one sealed file to the reaper: `--keyveil-seal PATH SHA256`.
pub(crate) const SEAL_ARG: &str = "--keyveil-seal";

/// The `hint:` of a run refused because its script could not be sealed.
const HINT: &str = "\nhint: make the script a readable regular file and run the command again; \
                    `unshare -U -m true` says whether this system allows user namespaces";

/// Largest file read whole and checked by content (as the pins: a bigger file is pinned by
/// identity, not content, and streamed).
const MAX_SEALED: u64 = 16 << 20;

/// A file to seal: its canonical path and the lowercase hex SHA-256 it was checked against.
pub(crate) type Sealed = (PathBuf, String);

/// What [`seal`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Nothing to seal (no file, or only ELF binaries).
    Nothing,
    /// The files are sealed in the run's own mount namespace.
    Sealed(usize),
    /// The kernel refused a user namespace: the run reads its files by path.
    Unavailable,
}

/// Splits the reaper's arguments after the report descriptor into the sealed files and the
/// rest (program, argv0, arguments); `None` when a `--keyveil-seal` lacks its two values.
pub(crate) fn split_args(
    args: &[std::ffi::OsString],
) -> Option<(Vec<Sealed>, &[std::ffi::OsString])> {
    let mut sealed = Vec::new();
    let mut rest = args;
    while rest.first().is_some_and(|a| a == SEAL_ARG) {
        let (Some(path), Some(sha)) = (rest.get(1), rest.get(2)) else {
            return None;
        };
        sealed.push((PathBuf::from(path), sha.to_string_lossy().into_owned()));
        rest = rest.get(3..).unwrap_or_default();
    }
    Some((sealed, rest))
}

/// Seals `files` for the run (see the module docs). Call it in the reaper before any thread
/// exists (a multi-threaded process cannot enter a user namespace).
///
/// # Errors
/// A message for the run's stderr when a file changed since the broker checked it, cannot be
/// read as a regular file, or the namespace could not be set up after it was entered: the run
/// must not start then.
pub(crate) fn seal(files: &[Sealed]) -> Result<Outcome, String> {
    let mut copies = Vec::new();
    for (path, sha) in files {
        let c = read_checked(path, sha)?;
        if c.elf {
            continue;
        }
        copies.push((path.as_path(), c));
    }
    if copies.is_empty() {
        return Ok(Outcome::Nothing);
    }
    let (uid, gid) = (rustix::process::getuid(), rustix::process::getgid());
    if crate::harden::enter_user_and_mount_namespaces().is_err() {
        return Ok(Outcome::Unavailable);
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        format!("cannot seal the run's script ({what}: {e}); the run was not started{HINT}")
    };
    std::fs::write("/proc/self/setgroups", "deny").map_err(|e| fail("setgroups", &e))?;
    std::fs::write("/proc/self/uid_map", format!("{0} {0} 1", uid.as_raw()))
        .map_err(|e| fail("uid_map", &e))?;
    std::fs::write("/proc/self/gid_map", format!("{0} {0} 1", gid.as_raw()))
        .map_err(|e| fail("gid_map", &e))?;
    use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| fail("make mounts private", &e))?;
    let stage = stage_dir().map_err(|e| fail("staging directory", &e))?;
    let sealed = (|| {
        rustix::mount::mount(
            "keyveil-sealed",
            &stage,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            c"mode=0700",
        )
        .map_err(|e| fail("tmpfs", &e))?;
        for (i, (path, c)) in copies.iter_mut().enumerate() {
            let copy = stage.join(i.to_string());
            c.write_to(&copy, path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::InvalidData {
                    format!("{e}; the run was not started\nhint: run the command again: a changed file ends its grant and the human is asked again")
                } else {
                    fail("copy", &e)
                }
            })?;
            rustix::mount::mount_bind(&copy, *path).map_err(|e| fail("bind", &e))?;
            rustix::mount::mount_remount(
                *path,
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                "",
            )
            .map_err(|e| fail("read-only bind", &e))?;
        }
        rustix::mount::unmount(&stage, UnmountFlags::DETACH).map_err(|e| fail("detach", &e))?;
        Ok(Outcome::Sealed(copies.len()))
    })();
    let _ = std::fs::remove_dir(&stage);
    sealed
}

/// A checked file, ready to be copied into the run's tmpfs.
#[derive(Debug)]
struct Checked {
    /// Its content, read and compared with the pinned SHA-256; `None` for a file pinned by
    /// identity (over 16 MiB), copied from [`Checked::file`] as it is written.
    bytes: Option<Vec<u8>>,
    /// For a streamed file pinned by content (an executable script over 16 MiB): the SHA-256
    /// the copy must have, computed as it is written.
    sha: Option<String>,
    /// The open file whose identity was checked.
    file: std::fs::File,
    /// Its status when checked.
    meta: std::fs::Metadata,
    /// Whether it is an ELF binary (run by descriptor, never copied).
    elf: bool,
}

impl Checked {
    /// Writes the copy at `copy` with the file's permission bits (set-id bits dropped) and
    /// times (so a compiled module's cache, which records its source's mtime, stays valid); a
    /// streamed file must not have changed while it was copied (its ctime, set by the kernel on
    /// every write, is the same after as when checked).
    fn write_to(&mut self, copy: &Path, path: &Path) -> std::io::Result<()> {
        use std::io::{Read as _, Seek as _, Write as _};
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let mut out = std::fs::File::create(copy)?;
        match &self.bytes {
            Some(b) => out.write_all(b)?,
            None => {
                self.file.seek(std::io::SeekFrom::Start(0))?;
                let mut hash = sha2::Sha256::new();
                let mut n = 0u64;
                let mut buf = vec![0u8; 1 << 20];
                let mut src = (&self.file).take(self.meta.size());
                loop {
                    let k = src.read(&mut buf)?;
                    let Some(chunk) = buf.get(..k).filter(|c| !c.is_empty()) else {
                        break;
                    };
                    hash.update(chunk);
                    out.write_all(chunk)?;
                    n += k as u64;
                }
                let now = self.file.metadata()?;
                let content_differs = self
                    .sha
                    .as_ref()
                    .is_some_and(|want| hex::encode(hash.finalize()) != *want);
                if n != self.meta.size()
                    || content_differs
                    || (now.ctime(), now.ctime_nsec())
                        != (self.meta.ctime(), self.meta.ctime_nsec())
                {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} was written while it was copied",
                            keyveil_proto::display::visible(&path.to_string_lossy())
                        ),
                    ));
                }
            }
        }
        out.set_permissions(std::fs::Permissions::from_mode(self.meta.mode() & 0o777))?;
        let mut times = std::fs::FileTimes::new();
        if let Ok(t) = self.meta.modified() {
            times = times.set_modified(t);
        }
        if let Ok(t) = self.meta.accessed() {
            times = times.set_accessed(t);
        }
        out.set_times(times)
    }
}

/// Largest file pinned by identity that is streamed into the run's tmpfs (which lives in
/// memory); a bigger one refuses the run.
const MAX_STREAMED: u64 = 256 << 20;

/// Opens `path` (a regular file, never through a symlink) and checks it is the one pinned: its
/// SHA-256 is `sha`, or, for a file over [`MAX_SEALED`] bytes pinned by identity
/// (`identity:DEV:INO:SIZE:CTIME`), its device, inode, size and ctime are the pinned ones (it
/// is then copied from this descriptor, its ctime checked again after: see [`Checked`]).
fn read_checked(path: &Path, sha: &str) -> Result<Checked, String> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let shown = keyveil_proto::display::visible(&path.to_string_lossy());
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(|e| format!("cannot read \"{shown}\" to seal it: {e}{HINT}"))?;
    let m = f
        .metadata()
        .map_err(|e| format!("cannot read \"{shown}\" to seal it: {e}{HINT}"))?;
    if !m.is_file() {
        return Err(format!(
            "\"{shown}\" is no regular file; the run was not started\nhint: run a script \
             that is a regular file"
        ));
    }
    let changed = || {
        format!(
            "\"{shown}\" changed after it was checked; the run was not started\nhint: run the \
             command again: a changed file ends its grant and the human is asked again"
        )
    };
    if let Some(id) = sha.strip_prefix("identity:") {
        let now = format!("{}:{}:{}:{}", m.dev(), m.ino(), m.size(), ctime_ns(&m));
        if id != now {
            return Err(changed());
        }
        let mut head = [0u8; 4];
        let elf = f.read_exact(&mut head).is_ok() && head == *b"\x7fELF";
        if !elf && m.size() > MAX_STREAMED {
            return Err(too_big(&shown, m.size()));
        }
        return Ok(Checked {
            bytes: None,
            sha: None,
            file: f,
            meta: m,
            elf,
        });
    }
    if m.size() > MAX_SEALED {
        // An executable script pinned by content over the read limit: streamed, its SHA-256
        // computed as it is copied.
        if m.size() > MAX_STREAMED {
            return Err(too_big(&shown, m.size()));
        }
        let mut head = [0u8; 4];
        let elf = f.read_exact(&mut head).is_ok() && head == *b"\x7fELF";
        return Ok(Checked {
            bytes: None,
            sha: Some(sha.to_owned()),
            file: f,
            meta: m,
            elf,
        });
    }
    let mut bytes = Vec::with_capacity(m.size().min(MAX_SEALED) as usize);
    f.by_ref()
        .take(MAX_SEALED + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read \"{shown}\" to seal it: {e}{HINT}"))?;
    if bytes.len() as u64 > MAX_SEALED || hex::encode(sha2::Sha256::digest(&bytes)) != sha {
        return Err(changed());
    }
    Ok(Checked {
        elf: bytes.starts_with(b"\x7fELF"),
        sha: None,
        bytes: Some(bytes),
        file: f,
        meta: m,
    })
}

/// The refusal of a script too big to seal (see [`MAX_STREAMED`]).
fn too_big(shown: &str, size: u64) -> String {
    format!(
        "\"{shown}\" is {} MiB, more than keyveil seals for a run ({} MiB); the run was not \
         started\nhint: keep the script small and have it read its payload from a separate \
         file, or run the payload's program directly",
        size >> 20,
        MAX_STREAMED >> 20
    )
}

/// A file's ctime in nanoseconds since the epoch, as the pins write it.
fn ctime_ns(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt as _;
    m.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(m.ctime_nsec())
}

/// `O_NOFOLLOW | O_NONBLOCK`: never a symlink, never a FIFO that blocks.
fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// A fresh empty directory to mount the staging tmpfs on: under the run's private `TMPDIR`.
fn stage_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for n in 0..16u32 {
        let d = base.join(format!(".keyveil-sealed-{}-{n}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_arguments_are_split_from_the_command() {
        let a: Vec<std::ffi::OsString> = [
            "--keyveil-seal",
            "/w/ci.sh",
            "ab",
            "/bin/bash",
            "bash",
            "ci.sh",
        ]
        .iter()
        .map(Into::into)
        .collect();
        let (s, rest) = split_args(&a).unwrap();
        assert_eq!(s, vec![(PathBuf::from("/w/ci.sh"), "ab".to_owned())]);
        assert_eq!(rest.len(), 3);
        assert!(split_args(&a[..2]).is_none());
        let (s, rest) = split_args(&a[3..]).unwrap();
        assert!(s.is_empty() && rest.len() == 3);
    }

    #[test]
    fn a_file_changed_since_its_check_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ci.sh");
        std::fs::write(&p, "echo ok\n").unwrap();
        let good = hex::encode(sha2::Sha256::digest(b"echo ok\n"));
        assert!(read_checked(&p, &good).unwrap().bytes.is_some());
        std::fs::write(&p, "echo changed\n").unwrap();
        assert!(
            read_checked(&p, &good)
                .unwrap_err()
                .contains("changed after it was checked")
        );
        let link = d.path().join("link.sh");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(read_checked(&link, &good).is_err());
    }

    #[test]
    fn a_file_over_the_read_limit_is_streamed_and_checked() {
        use std::os::unix::fs::MetadataExt as _;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big.sh");
        let body = format!(
            "echo ok\nexit 0\n{}",
            "#".repeat((MAX_SEALED + 10) as usize)
        );
        std::fs::write(&p, &body).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        // Pinned by identity (an operand over 16 MiB): checked, then copied from the descriptor.
        let id = format!(
            "identity:{}:{}:{}:{}",
            m.dev(),
            m.ino(),
            m.size(),
            ctime_ns(&m)
        );
        let mut c = read_checked(&p, &id).unwrap();
        assert!(c.bytes.is_none() && !c.elf);
        let copy = d.path().join("copy");
        c.write_to(&copy, &p).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), body.as_bytes());
        assert_eq!(std::fs::metadata(&copy).unwrap().mtime(), m.mtime());
        // Pinned by content (an executable script): the copy's SHA-256 must be the pinned one.
        let good = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        read_checked(&p, &good)
            .unwrap()
            .write_to(&copy, &p)
            .unwrap();
        let bad = hex::encode(sha2::Sha256::digest(b"other"));
        assert!(read_checked(&p, &bad).unwrap().write_to(&copy, &p).is_err());
        // A write after the identity was pinned.
        std::fs::write(&p, &body).unwrap();
        assert!(read_checked(&p, &id).is_err());
    }
}
