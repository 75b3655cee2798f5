//! Walking the scope: which entries changed during the run, and reading them safely.
//!
//! Two phases. First the tree is walked, by up to [`ScanLimits::threads`] threads of the
//! `ignore` crate's parallel walker (ripgrep's, with every filter off), and every entry is
//! `lstat`ed; those changed during the run are collected (this is most of the cost in
//! a large, mostly unchanged tree). Then the changed entries are scanned one by one, in path
//! order, so that the result does not depend on thread timing.
//!
//! Symlinks are never followed (a symlink's own name and target are matched, not what it points
//! to); FIFOs, sockets and devices are never opened; a file is opened with `O_NOFOLLOW |
//! O_NONBLOCK | O_NOCTTY` and read only if the opened descriptor is the regular file that was
//! examined (same device and inode). Directories are walked each at most once (by device and inode: bind-mount loops end), down to
//! [`ScanLimits::max_dir_depth`]. Pseudo file systems (`/proc`, `/sys`, ...) met below a root
//! are not entered.
//!
//! [`ScanLimits::threads`]: super::ScanLimits::threads
//! [`ScanLimits::max_dir_depth`]: super::ScanLimits::max_dir_depth

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use super::bounded::{len_u64, read_bounded};
use super::{
    Forms, OUT_OF_TIME, OVER_BYTES, ScanLimits, ScanScope, Scanner, UNREADABLE, decode, home,
    path_bytes,
};

/// How often (in entries) a walker looks at the clock.
const CLOCK_EVERY: u64 = 1024;

/// Most walker threads when [`ScanLimits::threads`](super::ScanLimits::threads) is 0.
const AUTO_THREADS: usize = 4;

/// A directory's identity, to walk each directory once.
type DirKey = (u64, u64);

/// An entry that changed during the run.
struct Changed {
    path: PathBuf,
    meta: Metadata,
}

/// Walks the scope and scans every changed entry.
pub(super) fn run(sc: &mut Scanner<'_>, scope: &ScanScope) {
    let changed = collect(scope, sc.limits, sc.threshold, sc.deadline(), sc, None);
    scan_all(sc, changed);
}

/// Why a watched scan gave way to the walk: a changed file has other names (hard links),
/// which the walk would report too and events do not name.
pub(super) const MULTI_LINK: &str = "a changed file has more than one name";

/// Scans what a watched run touched (`touched`, from the watch of `scope.cwd`): each entry an
/// event named is examined like one entry of the walk, each directory that appeared is walked
/// whole, and `$HOME` is walked as usual (the working directory's own subtree left out of it).
/// Nothing is read, and `Err` is returned, when a changed regular file has more than one name
/// (the walk is then the one to run: it would report every name of the inode).
pub(super) fn run_touched(
    sc: &mut Scanner<'_>,
    scope: &ScanScope,
    touched: &super::watch::Touched,
) -> Result<(), &'static str> {
    let mut found = collect(
        scope,
        sc.limits,
        sc.threshold,
        sc.deadline(),
        sc,
        Some(&touched.new_dirs),
    );
    let root = fs::canonicalize(&scope.cwd).unwrap_or_else(|_| scope.cwd.clone());
    let mut plain_dirs: std::collections::HashMap<PathBuf, bool> = std::collections::HashMap::new();
    for path in &touched.entries {
        if *path == root {
            continue; // the walk never reports its root
        }
        // Only through real folders: a folder replaced by a symlink since the event is not
        // followed (the walk would not either; the symlink is an entry of its own).
        let Some(parent) = path.parent() else {
            continue;
        };
        let plain = *plain_dirs
            .entry(parent.to_path_buf())
            .or_insert_with(|| fs::canonicalize(parent).is_ok_and(|c| c == parent));
        if !plain {
            continue;
        }
        sc.entries_seen += 1;
        if let Ok(meta) = fs::symlink_metadata(path)
            && changed(&meta, sc.threshold)
        {
            found.push(Changed {
                path: path.clone(),
                meta,
            });
        }
    }
    if found.iter().any(|c| c.meta.is_file() && links(&c.meta) > 1) {
        return Err(MULTI_LINK);
    }
    scan_all(sc, found);
    Ok(())
}

#[cfg(unix)]
fn links(meta: &Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    meta.nlink()
}

#[cfg(not(unix))]
fn links(_meta: &Metadata) -> u64 {
    1
}

/// Scans the changed entries in path order, each once.
fn scan_all(sc: &mut Scanner<'_>, mut changed: Vec<Changed>) {
    changed.sort_by(|a, b| a.path.cmp(&b.path));
    changed.dedup_by(|a, b| a.path == b.path);
    for c in changed {
        if sc.out_of_time() {
            sc.skip(OUT_OF_TIME);
            continue;
        }
        scan_changed(sc, &c.path, &c.meta);
    }
}

/// Did this entry change during the run? Its inode change time (ctime) at or after the
/// threshold: any write or metadata change moves it, and no process can set it. The
/// modification time is not used where a ctime exists: anyone can date a file in the future
/// (`touch -d`), and an agent that planted candidate files so dated would have a human's run
/// report which candidate holds a value. Without a ctime (not Unix), the mtime.
pub(super) fn changed(meta: &Metadata, threshold: SystemTime) -> bool {
    match ctime(meta) {
        Some(c) => c >= threshold,
        None => meta.modified().map_or(true, |m| m >= threshold),
    }
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

#[cfg(unix)]
fn dev_of(meta: &Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    meta.dev()
}

#[cfg(not(unix))]
fn dev_of(_meta: &Metadata) -> u64 {
    0
}

// ---------------------------------------------------------------------------------------------
// phase 1: collect the changed entries

/// What the walkers share.
struct Walk<'a> {
    limits: &'a ScanLimits,
    threshold: SystemTime,
    deadline: Instant,
    /// `$HOME` when walked as such (its top-level files and dot-directories only).
    home: Option<PathBuf>,
    home_skip: HashSet<PathBuf>,
    visited: Mutex<HashSet<DirKey>>,
    entries: AtomicU64,
    collected: AtomicU64,
    skipped: AtomicU64,
    left_out: Mutex<BTreeMap<&'static str, u64>>,
    stop: AtomicBool,
    truncated: AtomicBool,
}

/// Locks a mutex; a walker that panicked cannot leave the data inconsistent (every update is
/// a single insert or push), so a poisoned lock is taken as is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Walk<'_> {
    fn skip(&self, why: &'static str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        *lock(&self.left_out).entry(why).or_default() += 1;
        self.truncated.store(true, Ordering::Relaxed);
    }

    /// Stops every walker (a budget is spent: `why`); the report is truncated.
    fn halt(&self, why: &'static str) {
        self.skip(why);
        self.stop.store(true, Ordering::Relaxed);
    }

    /// First visit of this directory?
    fn first_visit(&self, meta: &Metadata) -> bool {
        dir_key(meta).is_none_or(|k| lock(&self.visited).insert(k))
    }

    /// Most changed entries kept for phase 2 (what phase 2 cannot read anyway is not kept).
    fn collect_cap(&self) -> u64 {
        self.limits.max_files.saturating_mul(4).max(100_000)
    }

    /// Counts one examined entry; false once a budget is spent.
    fn tick(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let n = self.entries.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.max_entries {
            self.halt("over the entry count limit");
            return false;
        }
        if n.is_multiple_of(CLOCK_EVERY) && Instant::now() >= self.deadline {
            self.halt(OUT_OF_TIME);
            return false;
        }
        true
    }

    /// Keeps a changed entry.
    fn keep(&self, out: &mut Vec<Changed>, path: PathBuf, meta: Metadata) {
        if self.collected.fetch_add(1, Ordering::Relaxed) >= self.collect_cap() {
            self.halt("over the changed-entry limit");
            return;
        }
        out.push(Changed { path, meta });
    }

    /// One entry met by a walker: a changed one is kept; a directory is entered unless it is
    /// skipped (below a [`home::HOME_SKIP`] subtree, a top-level folder of `$HOME` that is not
    /// a dot-directory, too deep, already walked, or a pseudo file system).
    fn visit(
        &self,
        res: Result<ignore::DirEntry, ignore::Error>,
        out: &mut Vec<Changed>,
    ) -> ignore::WalkState {
        use ignore::WalkState::{Continue, Quit, Skip};
        let entry = match res {
            Ok(e) => e,
            Err(e) => {
                if e.io_error()
                    .is_none_or(|io| io.kind() != io::ErrorKind::NotFound)
                {
                    self.skip("unreadable folder or entry");
                }
                return if self.stop.load(Ordering::Relaxed) {
                    Quit
                } else {
                    Continue
                };
            }
        };
        // A root: checked (and marked visited) before the walk.
        if entry.depth() == 0 {
            return Continue;
        }
        if !self.tick() {
            return Quit;
        }
        let Some(ft) = entry.file_type() else {
            return Continue;
        };
        let path = entry.path();
        // Not followed: the link's own metadata.
        let Ok(meta) = entry.metadata() else {
            return Continue;
        };
        if !ft.is_dir() {
            if changed(&meta, self.threshold) {
                self.keep(out, entry.into_path(), meta);
            }
            return Continue;
        }
        if let Some(h) = &self.home
            && path.starts_with(h)
        {
            let top = path.parent() == Some(h.as_path());
            if self.home_skip.contains(path)
                || (top && !home::walks_top_dir(&super::os_bytes(entry.file_name())))
            {
                return Skip;
            }
        }
        if u32::try_from(entry.depth()).unwrap_or(u32::MAX) > self.limits.max_dir_depth {
            self.skip("folders nested too deep");
            return Skip;
        }
        let parent_dev = path
            .parent()
            .and_then(|p| fs::symlink_metadata(p).ok())
            .map_or(0, |m| dev_of(&m));
        if !self.first_visit(&meta) || crosses_into_pseudo_fs(parent_dev, &meta, path) {
            return Skip;
        }
        if changed(&meta, self.threshold) {
            self.keep(out, entry.into_path(), meta);
        }
        Continue
    }
}

/// A walker's changed entries, handed over when the walker ends.
struct Collector<'a> {
    walk: &'a Walk<'a>,
    out: Vec<Changed>,
    all: &'a Mutex<Vec<Changed>>,
}

impl ignore::ParallelVisitor for Collector<'_> {
    fn visit(&mut self, res: Result<ignore::DirEntry, ignore::Error>) -> ignore::WalkState {
        self.walk.visit(res, &mut self.out)
    }
}

impl Drop for Collector<'_> {
    fn drop(&mut self) {
        lock(self.all).append(&mut self.out);
    }
}

/// Makes one [`Collector`] per walker thread.
struct Collectors<'a> {
    walk: &'a Walk<'a>,
    all: &'a Mutex<Vec<Changed>>,
}

impl<'s> ignore::ParallelVisitorBuilder<'s> for Collectors<'s> {
    fn build(&mut self) -> Box<dyn ignore::ParallelVisitor + 's> {
        Box::new(Collector {
            walk: self.walk,
            out: Vec::new(),
            all: self.all,
        })
    }
}

/// Phase 1: the changed entries under the working directory and in `$HOME`'s scope, walked
/// in parallel by the `ignore` crate (ripgrep's walker) with every filter off: hidden files,
/// ignored files (a gitignored `.env`) and `.git` itself are walked; symlinks are not followed
/// and no file is opened (FIFOs and devices included): entries are only `lstat`ed.
fn collect(
    scope: &ScanScope,
    limits: &ScanLimits,
    threshold: SystemTime,
    deadline: Instant,
    sc: &mut Scanner<'_>,
    watched: Option<&[PathBuf]>,
) -> Vec<Changed> {
    let home = scope.home.as_ref().and_then(|h| fs::canonicalize(h).ok());
    let cwd = fs::canonicalize(&scope.cwd).ok();
    // $HOME, unless the working directory's walk covers it.
    let home = home.filter(|h| !cwd.as_ref().is_some_and(|c| h.starts_with(c)));
    let mut walk = Walk {
        limits,
        threshold,
        deadline,
        home: None,
        home_skip: home
            .as_ref()
            .map(|h| home::HOME_SKIP.iter().map(|s| h.join(s)).collect())
            .unwrap_or_default(),
        visited: Mutex::new(HashSet::new()),
        entries: AtomicU64::new(0),
        collected: AtomicU64::new(0),
        skipped: AtomicU64::new(0),
        left_out: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
        truncated: AtomicBool::new(false),
    };
    let mut roots = Vec::new();
    for (root, is_home) in [(cwd, false), (home, true)] {
        if let Some(r) = root
            && let Ok(meta) = fs::symlink_metadata(&r)
            && meta.is_dir()
            && walk.first_visit(&meta)
        {
            if is_home {
                walk.home = Some(r.clone());
            } else if let Some(new_dirs) = watched {
                // Watched: the working directory is not walked (marked visited, so a walk of
                // `$HOME` around it does not enter it either); only the folders that appeared
                // in it are.
                for d in new_dirs {
                    if let Ok(m) = fs::symlink_metadata(d)
                        && m.is_dir()
                        && walk.first_visit(&m)
                    {
                        roots.push(d.clone());
                    }
                }
                continue;
            }
            roots.push(r);
        }
    }
    let mut out = Vec::new();
    if let Some((first, rest)) = roots.split_first() {
        let threads = match limits.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(AUTO_THREADS)),
            n => n,
        };
        let mut b = ignore::WalkBuilder::new(first);
        for r in rest {
            b.add(r);
        }
        b.standard_filters(false)
            .follow_links(false)
            .same_file_system(false)
            .threads(threads);
        let all = Mutex::new(Vec::new());
        b.build_parallel().visit(&mut Collectors {
            walk: &walk,
            all: &all,
        });
        out = all
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
    sc.entries_seen += walk.entries.load(Ordering::Relaxed);
    sc.skipped += walk.skipped.load(Ordering::Relaxed);
    for (why, n) in std::mem::take(&mut *lock(&walk.left_out)) {
        *sc.left_out.entry(why).or_default() += n;
    }
    sc.truncated |= walk.truncated.load(Ordering::Relaxed);
    out
}

// ---------------------------------------------------------------------------------------------
// phase 2: scan each changed entry

/// A changed entry: its name, and its content (regular file) or target (symlink).
fn scan_changed(sc: &mut Scanner<'_>, path: &Path, meta: &Metadata) {
    sc.current = path.to_path_buf();
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
    // Directories: the name only. FIFOs, sockets and devices: the name only, never opened.
    // Every kind: its `user.*` extended attributes.
    super::xattr::scan(sc, path);
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
    if sc.out_of_time() {
        sc.skip(OUT_OF_TIME);
        return;
    }
    if sc.files_scanned >= sc.limits.max_files {
        sc.skip("over the file count limit");
        return;
    }
    let mut file = match open_regular(path, meta) {
        Ok(Some(f)) => f,
        Ok(None) => return, // replaced by something else since it was examined
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(_) => {
            sc.skip(UNREADABLE);
            return;
        }
    };
    sc.files_scanned += 1;
    let size = file.metadata().map_or(meta.len(), |m| m.len());
    if size > sc.limits.max_file_bytes {
        if let Some(p) = sc.progress {
            p.add(1, 0);
        }
        scan_large(sc, &mut file, path);
        return;
    }
    let budget = sc.bytes_left().min(sc.limits.max_file_bytes);
    let (data, hit, err) = read_bounded(&mut file, budget);
    sc.bytes_scanned += len_u64(&data);
    if let Some(p) = sc.progress {
        p.add(1, len_u64(&data));
    }
    if hit {
        sc.skip(OVER_BYTES);
    } else if err {
        sc.skip(UNREADABLE);
    }
    decode::scan_blob(sc, &data, path.as_os_str(), &Forms::default());
    if !hit && !err {
        sc.note_lines(&data);
    }
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
                sc.skip(OVER_BYTES);
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
                sc.skip(UNREADABLE);
            }
            break;
        }
        if first && decode::is_container(&chunk) {
            // Compressed or archived content this large is not decoded.
            sc.skip("a compressed file or archive too large to decode");
        }
        first = false;
        sc.bytes_scanned += n;
        if let Some(p) = sc.progress {
            p.add(0, n);
        }
        buf.extend_from_slice(&chunk);
        sc.match_bytes(&buf, path.as_os_str(), &Forms::default());
        if err {
            sc.skip(UNREADABLE);
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

/// True when `child` (a directory below `parent`) is the root of a pseudo file system
/// (`proc`, `sysfs`, `cgroup`, `debugfs`, ...), which is not entered.
#[cfg(target_os = "linux")]
fn crosses_into_pseudo_fs(parent_dev: u64, child: &Metadata, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    if parent_dev == child.dev() {
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
fn crosses_into_pseudo_fs(_parent_dev: u64, _child: &Metadata, _path: &Path) -> bool {
    false
}
