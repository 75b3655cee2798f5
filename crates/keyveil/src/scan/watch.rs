//! A working directory watched between runs, so that the write-side scan of a run costs the
//! events the run caused instead of one `lstat` per entry of the tree (issue 21, item 3; see
//! `docs/write-side.md`, "Watched working directories").
//!
//! A [`TreeWatch`] holds one inotify instance with a watch on every directory of a tree (each
//! added before the directory is read, so nothing created meanwhile is missed). Every event
//! names a directory and, for an entry in it, the entry: both become *candidates*, remembered
//! with the sequence number of the event. A run takes a [`Ticket`] before its child is spawned
//! (its *mark*); when the run has ended, [`TreeWatch::take`] gives the candidates of events at
//! or after the mark, and the scan examines exactly those (`lstat`, the same change test as the
//! walk) plus, walked whole, every directory that appeared during the run (created or moved
//! in: everything in it is new, and it may hold entries written before its own watch was
//! added).
//!
//! The watch gives up (the run falls back to the full walk, and the broker builds the watch
//! again) on any doubt: the kernel's event queue overflowed (`IN_Q_OVERFLOW`), a directory
//! was moved (paths of the watches below it would be stale), a watched directory moved or the
//! root went away, a new directory could not be watched (the user's watch limit,
//! `fs.inotify.max_user_watches`), a directory on another file system or too deep, an event
//! from a watch it does not know, or too many candidates remembered. A watch that gave up
//! stays given up ([`TreeWatch::broken`]).
//!
//! A run is walked too, the watch kept, when a file written during it (content or attributes)
//! then lost a name: deleted, moved out of the tree, or moved over ([`LOST_NAME`]). It may
//! have had another name in the tree, whose inode changed while no event named it.
//!
//! What events cannot show (the walk, which compares every inode's ctime, does): a write
//! through a hard link whose other name is outside the tree, and a write through a shared
//! mapping whose descriptor outlives the run (handed to another process, or opened by one
//! outside the run): no `IN_MODIFY` for mapped writes, no `IN_CLOSE_WRITE` before the scan.
//! See `docs/threat-model.md`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Most directories one watch holds; a larger tree is not watched (its runs are walked).
pub const MAX_DIRS: usize = 65_536;

/// The user's inotify watch limit (`fs.inotify.max_user_watches`; 8,192 when it cannot be
/// read, the old kernels' default).
pub fn user_watch_limit() -> usize {
    fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(8_192)
}
/// Most candidate paths remembered between the oldest live run's mark and now; past it the
/// watch gives up.
const MAX_DIRTY: usize = 200_000;
/// Deepest directory level watched below the root (the walk's default limit).
const MAX_DEPTH: usize = 256;

/// Why a run's scan walked the tree instead of using a watch (a short phrase, for the audit).
pub const NO_WATCH: &str = "no watch of this folder yet";
/// ... the watch could not be built (see [`TreeWatch::new`]).
pub const UNWATCHABLE: &str =
    "this folder cannot be watched (too many folders, the watch limit, another file system inside)";
/// ... the watch is still being built.
pub const BUILDING: &str = "the watch of this folder is being built";
/// ... the kernel's event queue overflowed.
pub const OVERFLOW: &str = "the event queue overflowed";
/// ... a file written during the run lost a name (deleted, moved out of the tree or moved
/// over): it may have another name in the tree, which no event named (the watch is kept).
pub const LOST_NAME: &str = "a file written during the run lost a name";

/// One event, as read from the kernel.
struct RawEvent {
    wd: i32,
    mask: u32,
    /// Pairs the two halves of a rename (`IN_MOVED_FROM`, `IN_MOVED_TO`).
    cookie: u32,
    name: Option<OsString>,
}

// Event bits (inotify(7)), kept by this module whatever the platform.
const E_MODIFY: u32 = 0x0000_0002;
const E_ATTRIB: u32 = 0x0000_0004;
const E_CLOSE_WRITE: u32 = 0x0000_0008;
const E_MOVED_FROM: u32 = 0x0000_0040;
const E_MOVED_TO: u32 = 0x0000_0080;
const E_CREATE: u32 = 0x0000_0100;
const E_DELETE: u32 = 0x0000_0200;
const E_DELETE_SELF: u32 = 0x0000_0400;
const E_MOVE_SELF: u32 = 0x0000_0800;
const E_Q_OVERFLOW: u32 = 0x0000_4000;
const E_IGNORED: u32 = 0x0000_8000;
const E_ISDIR: u32 = 0x4000_0000;

/// The kernel side: an inotify instance.
#[cfg(target_os = "linux")]
struct Kernel(inotify::Inotify);

#[cfg(target_os = "linux")]
impl Kernel {
    fn init() -> io::Result<Kernel> {
        inotify::Inotify::init().map(Kernel)
    }

    /// Watches the directory at `path` (never through a symlink): its id.
    fn add(&mut self, path: &Path) -> io::Result<i32> {
        use inotify::WatchMask as M;
        let mask = M::MODIFY
            | M::ATTRIB
            | M::CLOSE_WRITE
            | M::MOVED_FROM
            | M::MOVED_TO
            | M::CREATE
            | M::DELETE
            | M::DELETE_SELF
            | M::MOVE_SELF
            | M::ONLYDIR
            | M::DONT_FOLLOW;
        let wd = self.0.watches().add(path, mask)?;
        Ok(wd.get_watch_descriptor_id())
    }

    /// Every event queued now (never blocks).
    fn drain(&mut self, out: &mut Vec<RawEvent>) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.0.read_events(&mut buf) {
                Ok(events) => {
                    for e in events {
                        out.push(RawEvent {
                            wd: e.wd.get_watch_descriptor_id(),
                            mask: e.mask.bits(),
                            cookie: e.cookie,
                            name: e.name.map(std::ffi::OsStr::to_os_string),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The kernel side where there is no inotify: nothing can be watched (every run is walked).
#[cfg(not(target_os = "linux"))]
struct Kernel;

#[cfg(not(target_os = "linux"))]
impl Kernel {
    fn init() -> io::Result<Kernel> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn add(&mut self, _path: &Path) -> io::Result<i32> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    fn drain(&mut self, _out: &mut Vec<RawEvent>) -> io::Result<()> {
        Ok(())
    }
}

/// What changed in a watched tree since a run's mark ([`TreeWatch::take`]).
#[derive(Debug, Default)]
pub struct Touched {
    /// Entries (files, symlinks, directories, ...) an event named, and the directories events
    /// came from: each is examined like one entry of the walk.
    pub entries: Vec<PathBuf>,
    /// Directories that appeared (created or moved in): walked whole.
    pub new_dirs: Vec<PathBuf>,
}

/// One working directory watched: see the module documentation.
pub struct TreeWatch {
    root: PathBuf,
    /// The root's device and inode.
    root_key: (u64, u64),
    kernel: Kernel,
    /// Watch id → the directory's path.
    dirs: HashMap<i32, PathBuf>,
    /// The root's watch id.
    root_wd: i32,
    /// Events taken so far (each one's sequence number).
    seq: u64,
    /// Candidate path → (sequence number of its last event, walk it whole).
    dirty: HashMap<PathBuf, (u64, bool)>,
    /// Why the watch gave up, and at which sequence number.
    broken: Option<(&'static str, u64)>,
    /// Files written (content or attributes) → sequence number of their last such event.
    written: HashMap<PathBuf, u64>,
    /// Renames under way of written files: cookie → sequence number of the write.
    moving: HashMap<u32, u64>,
    /// Sequence number of the last event after which a written file lost a name ([`LOST_NAME`]):
    /// runs whose mark is at or before it are walked. 0: none.
    lost_name: u64,
    /// Marks of the runs under way → how many runs hold each.
    live: BTreeMap<u64, usize>,
    /// Most directories watched.
    max_dirs: usize,
}

impl std::fmt::Debug for TreeWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatch")
            .field("root", &self.root)
            .field("dirs", &self.dirs.len())
            .field("broken", &self.broken.map(|b| b.0))
            .finish_non_exhaustive()
    }
}

/// The device and inode of `meta`.
#[cfg(unix)]
fn key(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn key(_meta: &fs::Metadata) -> (u64, u64) {
    (0, 0)
}

impl TreeWatch {
    /// Watches every directory under `root` (canonical: no symlink in it). One readdir per
    /// directory and one `inotify_add_watch`, no `stat` of files.
    ///
    /// Errors: `root` is not a directory; inotify is not available; the user's watch limit
    /// (`fs.inotify.max_user_watches`), `max_dirs` or [`MAX_DIRS`] is reached; a directory is
    /// on another file system or deeper than the walk's limit (such a tree is walked at every
    /// run).
    pub fn new(root: &Path, max_dirs: usize) -> io::Result<TreeWatch> {
        let meta = fs::symlink_metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a folder"));
        }
        let mut w = TreeWatch {
            root: root.to_path_buf(),
            root_key: key(&meta),
            kernel: Kernel::init()?,
            dirs: HashMap::new(),
            root_wd: -1,
            seq: 0,
            dirty: HashMap::new(),
            broken: None,
            written: HashMap::new(),
            moving: HashMap::new(),
            lost_name: 0,
            live: BTreeMap::new(),
            max_dirs: max_dirs.min(MAX_DIRS),
        };
        w.root_wd = w.add_tree(root, 0)?;
        Ok(w)
    }

    /// The watched root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directories watched.
    pub fn dirs(&self) -> usize {
        self.dirs.len()
    }

    /// Why the watch gave up, if it did (a short phrase).
    pub fn broken(&self) -> Option<&'static str> {
        self.broken.map(|b| b.0)
    }

    /// Watches `top` and every directory below it, each watched before it is read (an entry
    /// created meanwhile is either read or reported by an event). `depth` is `top`'s level
    /// below the root. Returns `top`'s watch id.
    fn add_tree(&mut self, top: &Path, depth: usize) -> io::Result<i32> {
        let dev = self.root_key.0;
        let mut first = None;
        let mut stack = vec![(top.to_path_buf(), depth)];
        while let Some((dir, depth)) = stack.pop() {
            if depth > MAX_DEPTH {
                return Err(io::Error::other("folders nested too deep"));
            }
            if self.dirs.len() >= self.max_dirs {
                return Err(io::Error::other("too many folders to watch"));
            }
            let meta = match fs::symlink_metadata(&dir) {
                Ok(m) => m,
                // Gone (or replaced) already: its parent's event says so.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if !meta.is_dir() {
                continue;
            }
            if key(&meta).0 != dev {
                return Err(io::Error::other("a folder on another file system"));
            }
            let wd = match self.kernel.add(&dir) {
                Ok(wd) => wd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if let Some(other) = self.dirs.get(&wd)
                && *other != dir
            {
                // The same folder under two paths (a bind mount): events would name one.
                return Err(io::Error::other("a folder reachable by two paths"));
            }
            self.dirs.insert(wd, dir.clone());
            first.get_or_insert(wd);
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in rd {
                let entry = entry?;
                // d_type: no stat; never a symlink followed.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push((entry.path(), depth + 1));
                }
            }
        }
        first.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    /// Gives up (see the module documentation): runs whose mark is at or before now fall back
    /// to the walk, and so does every later run (the broker builds a new watch).
    fn give_up(&mut self, why: &'static str) {
        if self.broken.is_none() {
            self.seq += 1;
            self.broken = Some((why, self.seq));
            self.dirty.clear();
            self.written.clear();
            self.moving.clear();
        }
    }

    /// Takes the queued events into [`Self::dirty`].
    fn pump(&mut self) {
        if self.broken.is_some() {
            return;
        }
        let mut events = Vec::new();
        if self.kernel.drain(&mut events).is_err() {
            self.give_up("the watch could not be read");
            return;
        }
        for e in events {
            self.event(e);
            if self.broken.is_some() {
                return;
            }
        }
        if !self.moving.is_empty() {
            // A written file moved out of the tree (no `IN_MOVED_TO` here): it lost a name.
            self.moving.clear();
            self.lost_name = self.seq;
        }
        if self.dirty.len() + self.written.len() > MAX_DIRTY {
            self.give_up("too many changes remembered");
        }
    }

    /// One event.
    fn event(&mut self, e: RawEvent) {
        if e.mask & E_Q_OVERFLOW != 0 {
            self.give_up(OVERFLOW);
            return;
        }
        let Some(dir) = self.dirs.get(&e.wd).cloned() else {
            if e.mask & E_IGNORED == 0 {
                self.give_up("an event from an unknown watch");
            }
            return;
        };
        if e.mask & E_IGNORED != 0 {
            // The folder was deleted (or its file system unmounted).
            self.dirs.remove(&e.wd);
            if e.wd == self.root_wd {
                self.give_up("the folder went away");
            }
            return;
        }
        if e.mask & E_MOVE_SELF != 0 {
            self.give_up("a watched folder was moved");
            return;
        }
        if e.mask & E_DELETE_SELF != 0 {
            if e.wd == self.root_wd {
                self.give_up("the folder went away");
            }
            return;
        }
        let is_dir = e.mask & E_ISDIR != 0;
        if is_dir && e.mask & E_MOVED_FROM != 0 {
            self.give_up("a folder was moved");
            return;
        }
        self.seq += 1;
        let seq = self.seq;
        // The folder itself: an entry created, deleted or renamed in it moved its ctime.
        self.touch(dir.clone(), seq, false);
        let Some(name) = e.name else {
            return;
        };
        let path = dir.join(name);
        let appeared = e.mask & (E_CREATE | E_MOVED_TO) != 0;
        if is_dir && appeared {
            let depth = path
                .strip_prefix(&self.root)
                .map_or(0, |r| r.components().count());
            if let Err(e) = self.add_tree(&path, depth)
                && e.kind() != io::ErrorKind::NotFound
            {
                self.give_up("a new folder could not be watched");
                return;
            }
            self.touch(path, seq, true);
        } else {
            if !is_dir {
                self.names(&path, e.mask, e.cookie, seq);
            }
            if e.mask & (E_MODIFY | E_ATTRIB | E_CLOSE_WRITE | E_MOVED_TO | E_CREATE | E_MOVED_FROM)
                != 0
            {
                self.touch(path, seq, false);
            }
        }
        // E_DELETE of an entry: only its folder changed (above).
    }

    /// Follows the names of written files (red team s14b, w1/w2): a file written during a run
    /// through a name that is then deleted, moved out of the tree, or moved over, may have
    /// another name in the tree (a hard link made before or during the run) whose inode
    /// changed while no event named it; the runs under way are then walked ([`LOST_NAME`]),
    /// which compares every inode's ctime. A rename inside the tree carries the write to the
    /// new name (examined there, where a second name shows as a link count above one).
    fn names(&mut self, path: &Path, mask: u32, cookie: u32, seq: u64) {
        if mask & (E_MODIFY | E_ATTRIB | E_CLOSE_WRITE) != 0 {
            self.written.insert(path.to_path_buf(), seq);
        }
        if mask & E_DELETE != 0 && self.written.remove(path).is_some() {
            self.lost_name = seq;
        }
        if mask & E_MOVED_FROM != 0
            && let Some(w) = self.written.remove(path)
        {
            self.moving.insert(cookie, w);
        }
        if mask & E_MOVED_TO != 0 {
            if self.written.remove(path).is_some() {
                // Moved over a written file: that inode lost this name.
                self.lost_name = seq;
            }
            if self.moving.remove(&cookie).is_some() {
                self.written.insert(path.to_path_buf(), seq);
            }
        }
    }

    fn touch(&mut self, path: PathBuf, seq: u64, whole: bool) {
        let e = self.dirty.entry(path).or_insert((seq, whole));
        e.0 = seq;
        e.1 |= whole;
    }

    /// Drops what no live run can still ask for.
    fn prune(&mut self) {
        match self.live.keys().next() {
            Some(&oldest) => {
                self.dirty.retain(|_, (seq, _)| *seq >= oldest);
                self.written.retain(|_, seq| *seq >= oldest);
            }
            None => {
                self.dirty.clear();
                self.written.clear();
            }
        }
    }

    /// Is the root still the directory that was watched?
    fn root_is_same(&self) -> bool {
        fs::symlink_metadata(&self.root).is_ok_and(|m| m.is_dir() && key(&m) == self.root_key)
    }

    /// The candidates of events at or after `mark`, or why they cannot be trusted (the run
    /// is then walked). Events are taken from the kernel first: call it once every process of
    /// the run has ended.
    pub fn take(&mut self, mark: u64) -> Result<Touched, &'static str> {
        self.pump();
        if let Some((why, _)) = self.broken {
            return Err(why);
        }
        if !self.root_is_same() {
            self.give_up("the folder went away");
            return Err("the folder went away");
        }
        if self.lost_name >= mark {
            return Err(LOST_NAME);
        }
        let mut t = Touched::default();
        for (path, &(seq, whole)) in &self.dirty {
            if seq < mark {
                continue;
            }
            if whole {
                t.new_dirs.push(path.clone());
            }
            t.entries.push(path.clone());
        }
        t.entries.sort();
        t.new_dirs.sort();
        Ok(t)
    }
}

/// Locks a watch; a panic while it was held cannot leave it unusable for the next run (the
/// worst is a run that falls back to the walk), so a poisoned lock is taken as is.
fn lock(w: &Mutex<TreeWatch>) -> MutexGuard<'_, TreeWatch> {
    w.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A run's place in a watch's events: taken before the run's child is spawned
/// ([`Ticket::begin`]), handed to the scan when every process of the run has ended.
pub struct Ticket {
    watch: Arc<Mutex<TreeWatch>>,
    mark: u64,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("mark", &self.mark).finish()
    }
}

impl Ticket {
    /// A run is about to start in `watch`'s tree: its mark, or why the watch gave up (the
    /// run will be walked).
    pub fn begin(watch: &Arc<Mutex<TreeWatch>>) -> Result<Ticket, &'static str> {
        let mut w = lock(watch);
        w.pump();
        if let Some((why, _)) = w.broken {
            return Err(why);
        }
        let mark = w.seq + 1;
        *w.live.entry(mark).or_default() += 1;
        w.prune();
        Ok(Ticket {
            watch: watch.clone(),
            mark,
        })
    }

    /// What the run touched ([`TreeWatch::take`]), or why the run must be walked.
    pub fn take(&self) -> Result<Touched, &'static str> {
        lock(&self.watch).take(self.mark)
    }

    /// The watched root.
    pub fn root(&self) -> PathBuf {
        lock(&self.watch).root.clone()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut w = lock(&self.watch);
        if let Some(n) = w.live.get_mut(&self.mark) {
            *n -= 1;
            if *n == 0 {
                w.live.remove(&self.mark);
            }
        }
        w.prune();
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// A watch of a fresh folder holding `a.txt`, and a ticket taken in it.
    fn watched() -> (tempfile::TempDir, Arc<Mutex<TreeWatch>>, Ticket) {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a.txt"), "a").unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        let w = Arc::new(Mutex::new(TreeWatch::new(&root, MAX_DIRS).unwrap()));
        let t = Ticket::begin(&w).unwrap();
        (d, w, t)
    }

    #[test]
    fn a_written_second_name_removed_makes_the_run_walked_and_keeps_the_watch() {
        let (d, w, t) = watched();
        let alias = d.path().join(".alias");
        fs::hard_link(d.path().join("a.txt"), &alias).unwrap();
        fs::write(&alias, "written").unwrap();
        fs::remove_file(&alias).unwrap();
        assert_eq!(t.take().unwrap_err(), LOST_NAME);
        assert!(lock(&w).broken().is_none(), "the watch is kept");
        drop(t);
        // A later run is watched again.
        let t = Ticket::begin(&w).unwrap();
        fs::write(d.path().join("b.txt"), "b").unwrap();
        assert!(t.take().is_ok());
    }

    #[test]
    fn a_written_file_renamed_inside_the_tree_stays_watched_but_moved_over_walks() {
        let (d, _w, t) = watched();
        fs::write(d.path().join(".tmp"), "new").unwrap();
        fs::rename(d.path().join(".tmp"), d.path().join("a.txt")).unwrap();
        let got = t.take().unwrap();
        assert!(got.entries.iter().any(|p| p.ends_with("a.txt")), "{got:?}");
        fs::write(d.path().join(".other"), "x").unwrap();
        fs::rename(d.path().join(".other"), d.path().join("a.txt")).unwrap();
        assert_eq!(t.take().unwrap_err(), LOST_NAME);
    }
}
