//! Walking the scope: which entries changed during the run, and reading them safely.
//!
//! Symlinks are never followed (a symlink's own name and target are matched, not what it points
//! to); FIFOs, sockets and devices are never opened; a file is opened with `O_NOFOLLOW |
//! O_NONBLOCK | O_NOCTTY` and read only if the opened descriptor is the regular file that was
//! examined (same device and inode). Directories are walked iteratively (no recursion), each at
//! most once (by device and inode: bind-mount loops end), down to
//! [`ScanLimits::max_dir_depth`](super::ScanLimits::max_dir_depth). Pseudo file systems
//! (`/proc`, `/sys`, ...) met below a root are not entered.

use std::collections::HashSet;
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Forms, ScanScope, Scanner, decode, home, path_bytes};

/// How often (in entries) the walk looks at the clock.
const CLOCK_EVERY: u64 = 1024;

/// A directory's identity, to walk each directory once.
type DirKey = (u64, u64);

/// Walks the scope and scans every changed entry.
pub(super) fn run(sc: &mut Scanner<'_>, scope: &ScanScope) {
    let mut visited: HashSet<DirKey> = HashSet::new();
    let cwd = fs::canonicalize(&scope.cwd).ok();
    if let Some(cwd) = &cwd {
        walk_tree(sc, cwd, &HashSet::new(), &mut visited);
    }
    let Some(home) = scope.home.as_ref().and_then(|h| fs::canonicalize(h).ok()) else {
        return;
    };
    if cwd.as_ref().is_some_and(|c| home.starts_with(c)) {
        return; // the working directory's walk covered $HOME
    }
    walk_home(sc, &home, &mut visited);
}

/// Did this entry change during the run (mtime or ctime at or after the threshold)?
pub(super) fn changed(meta: &Metadata, threshold: SystemTime) -> bool {
    let modified = meta.modified().map_or(true, |m| m >= threshold);
    modified || ctime(meta).is_some_and(|c| c >= threshold)
}

#[cfg(unix)]
fn ctime(meta: &Metadata) -> Option<SystemTime> {
    use std::os::unix::fs::MetadataExt as _;
    let secs = u64::try_from(meta.ctime()).ok()?;
    let nanos = u32::try_from(meta.ctime_nsec()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

#[cfg(not(unix))]
fn ctime(_meta: &Metadata) -> Option<SystemTime> {
    None
}

#[cfg(unix)]
fn dir_key(meta: &Metadata) -> Option<DirKey> {
    use std::os::unix::fs::MetadataExt as _;
    Some((meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn dir_key(_meta: &Metadata) -> Option<DirKey> {
    None
}

/// Counts one examined entry; false once the entry budget or the time budget is spent.
fn tick(sc: &mut Scanner<'_>) -> bool {
    sc.entries_seen += 1;
    if sc.entries_seen > sc.limits.max_entries {
        sc.skip();
        return false;
    }
    !(sc.entries_seen.is_multiple_of(CLOCK_EVERY) && sc.out_of_time())
}

/// Walks `root` (a directory, already examined by the caller) and scans every changed entry
/// below it, except the subtrees in `skip`.
fn walk_tree(
    sc: &mut Scanner<'_>,
    root: &Path,
    skip: &HashSet<PathBuf>,
    visited: &mut HashSet<DirKey>,
) {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    if let Some(key) = dir_key(&meta)
        && !visited.insert(key)
    {
        return;
    }
    let mut stack: Vec<(PathBuf, u32, Metadata)> = vec![(root.to_path_buf(), 0, meta)];
    while let Some((dir, depth, dir_meta)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(_) => {
                sc.skip();
                continue;
            }
        };
        for entry in entries {
            if !tick(sc) {
                return;
            }
            let Ok(entry) = entry else {
                sc.skip();
                continue;
            };
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                if skip.contains(&path) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                if changed(&meta, sc.threshold) {
                    entry_name(sc, &path);
                    sc.flush();
                }
                if depth + 1 > sc.limits.max_dir_depth {
                    sc.skip();
                    continue;
                }
                if let Some(key) = dir_key(&meta)
                    && !visited.insert(key)
                {
                    continue;
                }
                if crosses_into_pseudo_fs(&dir_meta, &meta, &path) {
                    continue;
                }
                stack.push((path, depth + 1, meta));
            } else {
                let Ok(meta) = entry.metadata() else { continue };
                scan_entry(sc, &path, &meta);
            }
        }
    }
}

/// Walks `$HOME`: the files directly in it, and its dot-directories minus [`home::HOME_SKIP`].
fn walk_home(sc: &mut Scanner<'_>, home_dir: &Path, visited: &mut HashSet<DirKey>) {
    let Ok(meta) = fs::symlink_metadata(home_dir) else {
        return;
    };
    if let Some(key) = dir_key(&meta)
        && !visited.insert(key)
    {
        return;
    }
    let skip: HashSet<PathBuf> = home::HOME_SKIP.iter().map(|s| home_dir.join(s)).collect();
    let entries = match fs::read_dir(home_dir) {
        Ok(e) => e,
        Err(_) => {
            sc.skip();
            return;
        }
    };
    for entry in entries {
        if !tick(sc) {
            return;
        }
        let Ok(entry) = entry else {
            sc.skip();
            continue;
        };
        let Ok(ft) = entry.file_type() else { continue };
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if ft.is_dir() {
            let name = super::os_bytes(&entry.file_name());
            if !home::walks_top_dir(&name) || skip.contains(&path) {
                continue;
            }
            if changed(&meta, sc.threshold) {
                entry_name(sc, &path);
                sc.flush();
            }
            walk_tree(sc, &path, &skip, visited);
        } else {
            scan_entry(sc, &path, &meta);
        }
    }
}

/// A non-directory entry: if it changed, its name, and its content (regular file) or target
/// (symlink).
fn scan_entry(sc: &mut Scanner<'_>, path: &Path, meta: &Metadata) {
    if !changed(meta, sc.threshold) {
        return;
    }
    entry_name(sc, path);
    let ft = meta.file_type();
    if ft.is_symlink() {
        if let Ok(target) = fs::read_link(path) {
            let bytes = path_bytes(&target);
            sc.match_bytes(
                &bytes,
                path.as_os_str(),
                &Forms::default().with("symlink-target"),
            );
        }
    } else if ft.is_file() {
        scan_file(sc, path, meta);
    }
    // FIFOs, sockets and devices: the name only, never opened.
    sc.flush();
}

/// Matches the entry's own name (a file or directory named after a value).
fn entry_name(sc: &mut Scanner<'_>, path: &Path) {
    if let Some(name) = path.file_name() {
        let bytes = super::os_bytes(name);
        sc.match_bytes(
            &bytes,
            path.as_os_str(),
            &Forms::default().with("file-name"),
        );
    }
}

/// Reads one changed regular file and scans its bytes.
fn scan_file(sc: &mut Scanner<'_>, path: &Path, meta: &Metadata) {
    if sc.files_scanned >= sc.limits.max_files || sc.out_of_time() {
        sc.skip();
        return;
    }
    let mut file = match open_regular(path, meta) {
        Ok(Some(f)) => f,
        Ok(None) => return, // replaced by something else since it was examined
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(_) => {
            sc.skip();
            return;
        }
    };
    sc.files_scanned += 1;
    let size = file.metadata().map_or(meta.len(), |m| m.len());
    if size > sc.limits.max_file_bytes {
        scan_large(sc, &mut file, path);
        return;
    }
    let budget = sc.bytes_left().min(sc.limits.max_file_bytes);
    let (data, hit, err) = read_bounded(&mut file, budget);
    sc.bytes_scanned += len_u64(&data);
    if hit || err {
        sc.skip();
    }
    decode::scan_blob(sc, &data, path.as_os_str(), &Forms::default());
}

/// A file larger than [`ScanLimits::max_file_bytes`](super::ScanLimits::max_file_bytes):
/// matched as stored, in overlapping windows, within the total budget; not decoded.
fn scan_large(sc: &mut Scanner<'_>, file: &mut File, path: &Path) {
    let window = sc.limits.max_file_bytes.max(1 << 20);
    let overlap = usize::try_from(
        (64 * 1024u64).max(8 * u64::try_from(sc.redactor.max_pattern_len()).unwrap_or(0)),
    )
    .unwrap_or(64 * 1024);
    let mut buf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let want = window.min(sc.bytes_left());
        if want == 0 {
            // Out of budget: truncated, unless the file ended exactly here.
            if file.read(&mut [0u8; 1]).map_or(true, |k| k > 0) {
                sc.skip();
            }
            break;
        }
        if sc.out_of_time() {
            break;
        }
        // Exactly `want` bytes at most: the next window starts where this one ends.
        let mut chunk = Vec::new();
        let err = (&mut *file).take(want).read_to_end(&mut chunk).is_err();
        let n = len_u64(&chunk);
        if n == 0 {
            if err {
                sc.skip();
            }
            break;
        }
        if first && decode::is_container(&chunk) {
            // Compressed or archived content this large is not decoded.
            sc.skip();
        }
        first = false;
        sc.bytes_scanned += n;
        buf.extend_from_slice(&chunk);
        sc.match_bytes(&buf, path.as_os_str(), &Forms::default());
        if err {
            sc.skip();
            break;
        }
        if n < want {
            break;
        }
        let keep_from = buf.len().saturating_sub(overlap);
        buf.drain(..keep_from);
    }
}

/// Opens `path` for reading without following a symlink and without blocking on a FIFO, and
/// returns it only if it is still the regular file described by `meta`.
#[cfg(unix)]
fn open_regular(path: &Path, meta: &Metadata) -> io::Result<Option<File>> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let flags = OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
        .open(path)?;
    let now = file.metadata()?;
    if !now.is_file() || now.dev() != meta.dev() || now.ino() != meta.ino() {
        return Ok(None);
    }
    Ok(Some(file))
}

#[cfg(not(unix))]
fn open_regular(path: &Path, meta: &Metadata) -> io::Result<Option<File>> {
    if !meta.is_file() {
        return Ok(None);
    }
    let file = File::open(path)?;
    Ok(file.metadata()?.is_file().then_some(file))
}

/// Reads at most `limit` bytes. Returns the bytes, whether there was more than `limit`, and
/// whether a read error stopped it (the bytes read before the error are kept).
pub(super) fn read_bounded<R: Read>(reader: R, limit: u64) -> (Vec<u8>, bool, bool) {
    let mut out = Vec::new();
    let mut take = reader.take(limit.saturating_add(1));
    let err = take.read_to_end(&mut out).is_err();
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let hit = out.len() > cap;
    out.truncate(cap);
    (out, hit, err)
}

/// `data.len()` as `u64`.
pub(super) fn len_u64(data: &[u8]) -> u64 {
    u64::try_from(data.len()).unwrap_or(u64::MAX)
}

/// True when `child` (a directory below `parent`) is the root of a pseudo file system
/// (`proc`, `sysfs`, `cgroup`, `debugfs`, ...), which is not entered.
#[cfg(target_os = "linux")]
fn crosses_into_pseudo_fs(parent: &Metadata, child: &Metadata, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if parent.dev() == child.dev() {
        return false;
    }
    const PSEUDO: &[u64] = &[
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x1cd1,      // devpts
        0x0027_e0eb, // cgroup
        0x6367_7270, // cgroup2
        0x6462_6720, // debugfs
        0x7472_6163, // tracefs
        0x7363_6673, // securityfs
        0xcafe_4a11, // bpf
        0x6165_676c, // pstore
        0x4249_4e4d, // binfmt_misc
        0x6e73_6673, // nsfs
    ];
    match rustix::fs::statfs(path) {
        #[allow(clippy::unnecessary_cast)]
        Ok(st) => PSEUDO.contains(&(st.f_type as u64)),
        Err(_) => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn crosses_into_pseudo_fs(_parent: &Metadata, _child: &Metadata, _path: &Path) -> bool {
    false
}
