//! Git repositories: every object, placed at a commit and path.
//!
//! Objects, refs and reflogs are read in process by gitoxide's plumbing crates (`gix-odb` and
//! `gix-pack` for loose and packed objects, deltas resolved; `gix-ref` for loose and packed refs;
//! `gix-object` to parse commits, tags, trees and reflog lines). No git process is started and
//! the repository's configuration is never read: nothing it names (hooks, a file-system
//! monitor, a signature checker, a pager, a transport for a lazy fetch, replace objects) can
//! run or apply. Before anything is read, [`refusal`] checks every entry of the git directory
//! and of each object directory an alternates file names: a named pipe or device where the
//! reader opens files refuses the repository.
//!
//! Every object of the store is matched (reachable from a branch, a tag, the reflog or the
//! stash, or from nothing: a dropped stash, an amended commit not yet collected), in windows of
//! [`WINDOW`] bytes that overlap by the redactor's longest pattern. An object larger than
//! [`MAX_OBJECT`] is never decoded (its size is read from its header first, and the store
//! refuses to allocate more): it is left out with a note, so memory stays bounded whatever a
//! crafted pack claims. Found objects are then placed ([`super::git_place`]): one walk of
//! every commit reachable from a ref, `HEAD` or any reflog entry (the stash is `refs/stash` and
//! its reflog) gives, for each found blob or tree, a path and the commits (newest first) that
//! add or remove it. The walk runs for every repository, found or not.
//!
//! The reading runs on a thread of its own, fed to the matcher through a small channel: a
//! named pipe swapped in after the check blocks that thread, never the sweep, which gives up
//! on the repository when nothing arrives for [`FIRST_OUTPUT`] or at its deadline.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gix_hash::ObjectId;
use keyveil_redact::Redactor;

use super::git_check::{MAX_CHECKED, read_small, refusal};
use super::git_place::{Placement, place};
use super::{Finding, Location, SweepReport};

/// Bytes matched at once from one git object.
pub(crate) const WINDOW: usize = 8 << 20;
/// Largest object decoded, in bytes: a larger one is left out with a note.
pub(crate) const MAX_OBJECT: usize = 48 << 20;
/// The reader of a repository that has sent nothing for this long (no object, no sign of
/// progress) is given up on: a named pipe swapped in where it opens a file blocks it in `open`.
pub(super) const FIRST_OUTPUT: Duration = Duration::from_secs(20);
/// Memory the pack reader may keep for decoded delta bases, in bytes.
const PACK_CACHE: usize = 32 << 20;
/// Deepest directory level searched for repositories below a root.
const MAX_DEPTH: usize = 24;
/// Most directory entries examined while looking for repositories.
const MAX_ENTRIES: u64 = 5_000_000;
/// Objects queued between the reader and the matcher.
const QUEUE: usize = 2;

/// The git directory of a working tree (`.git`, or what a `.git` file points to), or the
/// repository itself when bare.
pub(crate) fn git_dir(repo: &Path) -> PathBuf {
    let dot = repo.join(".git");
    if dot.is_dir() {
        return dot;
    }
    // Only a regular `.git` file is read (a planted named pipe would block the sweep).
    if std::fs::symlink_metadata(&dot).is_ok_and(|m| m.is_file())
        && let Ok(text) = read_small(&dot)
        && let Some(p) = text.strip_prefix("gitdir:")
    {
        let p = Path::new(p.trim());
        return if p.is_absolute() {
            p.to_path_buf()
        } else {
            repo.join(p)
        };
    }
    repo.to_path_buf()
}

/// Whether `dir` is a bare repository (`HEAD`, `objects/`, `refs/`).
fn is_bare(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// The repository `dir` is inside of: the nearest folder at or above it with a `.git`, or a
/// bare repository. Nothing is run and no file is opened.
fn enclosing(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .find(|a| std::fs::symlink_metadata(a.join(".git")).is_ok() || is_bare(a))
        .map(Path::to_path_buf)
}

/// Repositories at or below `roots` (and the one a root is inside of), each once. Symlinks are
/// not followed.
pub(super) fn discover(
    roots: &[PathBuf],
    deadline: Instant,
    report: &mut SweepReport,
) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let mut entries = 0u64;
    // Folders below the deepest level searched: never searched, and said so.
    let mut too_deep = 0u64;
    for root in roots {
        // A file named alone is matched alone: its repository is not swept.
        if root.is_dir()
            && let Some(top) = enclosing(root)
        {
            found.insert(top);
        }
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if Instant::now() >= deadline || entries > MAX_ENTRIES {
                report.truncated = true;
                report
                    .notes
                    .push("the search for git repositories was cut short".into());
                return found.into_iter().collect();
            }
            if let Ok(m) = std::fs::symlink_metadata(dir.join(".git")) {
                found.insert(dir.clone());
                // Submodules keep their git directories here, and one whose working tree is
                // gone is reached from nowhere else.
                let modules = dir.join(".git/modules");
                if m.is_dir() && modules.is_dir() && depth < MAX_DEPTH {
                    stack.push((modules, depth + 1));
                }
            } else if is_bare(&dir) {
                found.insert(dir.clone());
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                entries += 1;
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() && e.file_name() != ".git" {
                    if depth < MAX_DEPTH {
                        stack.push((e.path(), depth + 1));
                    } else {
                        too_deep += 1;
                    }
                }
            }
        }
    }
    if too_deep > 0 {
        report.truncated = true;
        report.notes.push(format!(
            "{too_deep} folders more than {MAX_DEPTH} levels below a path were not searched for git repositories (their files were still read): sweep a deeper path to include them"
        ));
    }
    // A submodule with a working tree is found twice (the working tree, and its git directory
    // under the parent's `.git/modules`): read once, under its working tree.
    let mut dirs = HashSet::new();
    let (modules, trees): (Vec<PathBuf>, Vec<PathBuf>) = found
        .into_iter()
        .partition(|r| r.components().any(|c| c.as_os_str() == ".git"));
    let mut out = Vec::new();
    for r in trees.into_iter().chain(modules) {
        // Past the deadline nothing more is resolved (each is then named as not read): a `.git`
        // naming a path through a chain of links costs tens of milliseconds to make canonical,
        // and the agent can plant as many as the search finds in time.
        if Instant::now() >= deadline {
            out.push(r);
            continue;
        }
        let key = std::fs::canonicalize(git_dir(&r)).unwrap_or_else(|_| git_dir(&r));
        if dirs.insert(key) {
            out.push(r);
        }
    }
    out
}

/// Whether anything in the object store of the repository whose git directory is `dir` (its
/// `objects` folder, each folder and file directly in it, in each of its folders (the loose
/// objects), in `objects/pack` and `objects/info`, and the same in every object directory an alternates file or `commondir`
/// names) changed (inode change time) within `window` before now, or cannot be told.
///
/// A found object is placed by no file of its own (a pack holds many), and git keeps no date
/// an agent cannot forge: so every object of a store that changed lately may be the agent's
/// planted guess, and counts once as `recent`, like a file changed lately.
pub(super) fn store_recent(dir: &Path, window: Duration) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let now = std::time::SystemTime::now();
    let fresh = |p: &Path| -> bool {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return true;
        };
        let Ok(secs) = u64::try_from(m.ctime()) else {
            return true;
        };
        let ctime = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        now.duration_since(ctime).map_or(true, |age| age < window)
    };
    let mut stores = vec![dir.join("objects")];
    // Read without blocking (a named pipe swapped in after git ran); one that is there but
    // cannot be read leaves the store's age unknown: recent.
    let read = |p: &Path| match read_small(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    };
    match read(&dir.join("commondir")) {
        Ok(Some(c)) => stores.push(dir.join(c.trim()).join("objects")),
        Ok(None) => {}
        Err(()) => return true,
    }
    let mut seen = BTreeSet::new();
    let mut checked = 0u64;
    while let Some(objects) = stores.pop() {
        if !seen.insert(objects.clone()) || seen.len() > 16 {
            continue;
        }
        if fresh(&objects) {
            return true;
        }
        for sub in [PathBuf::new(), PathBuf::from("pack"), PathBuf::from("info")] {
            let Ok(rd) = std::fs::read_dir(objects.join(&sub)) else {
                continue;
            };
            for e in rd.flatten() {
                checked += 1;
                if checked > MAX_CHECKED || fresh(&e.path()) {
                    return true;
                }
                // A loose object's fan-out folder (`objects/ab`) keeps its change time when a
                // file in it is rewritten in place, and git reads a rewritten loose object
                // without checking its hash: every file in it counts too.
                let name = e.file_name();
                if sub.as_os_str().is_empty()
                    && name != "pack"
                    && name != "info"
                    && e.path().is_dir()
                    && let Ok(inner) = std::fs::read_dir(e.path())
                {
                    for x in inner.flatten() {
                        checked += 1;
                        if checked > MAX_CHECKED || fresh(&x.path()) {
                            return true;
                        }
                    }
                }
            }
        }
        let Ok(alternates) = read(&objects.join("info/alternates")) else {
            return true;
        };
        if let Some(text) = alternates {
            for l in text.lines().take(64).map(str::trim) {
                if !l.is_empty() && !l.starts_with('#') {
                    stores.push(objects.join(l));
                }
            }
        }
    }
    false
}

/// What the reader thread sends the matcher.
enum Msg {
    /// One object's bytes.
    Object {
        oid: ObjectId,
        kind: gix_object::Kind,
        data: zeroize::Zeroizing<Vec<u8>>,
    },
    /// An object not read (larger than [`MAX_OBJECT`], or corrupt): why, without its bytes.
    Skipped { oid: ObjectId, why: String },
    /// The store could not be opened or listed.
    Failed(String),
    /// Every object was sent.
    Done,
    /// The history walk is still going (sent every [`TICK`](super::git_place::TICK) objects it reads).
    Tick,
    /// Where the found objects are.
    Placed(Placement),
}

/// One object whose bytes hold a value.
struct Hit {
    oid: ObjectId,
    kind: gix_object::Kind,
    variables: BTreeSet<String>,
}

/// Sweeps every object of `repo`. Findings name the repository, object, commits and path.
pub(super) fn sweep_repo(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    recent: Duration,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
) -> Vec<Finding> {
    sweep_repo_checked(repo, redactor, deadline, recent, report, progress, true)
}

/// [`sweep_repo`]; `check: false` skips [`refusal`] (tests: what the reader does with a named
/// pipe the check did not see, as when one is swapped in after it).
pub(super) fn sweep_repo_checked(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    recent: Duration,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
    check: bool,
) -> Vec<Finding> {
    let dir = git_dir(repo);
    // A repository with a named pipe or device where the reader opens files would block it:
    // refused, with a note.
    if let Some(why) = check.then(|| refusal(&dir, deadline)).flatten() {
        report.skipped += 1;
        report.truncated = true;
        report
            .notes
            .push(format!("repository {}: not read: {why}", repo.display()));
        return Vec::new();
    }
    // Read as SHA-1, a SHA-256 store would show nothing: its loose objects' names are skipped
    // and its pack indexes do not parse. Said, not passed over in silence.
    if sha256(&common_dir(&dir)) {
        report.skipped += 1;
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: not read: a SHA-256 repository (only SHA-1 ones are read); hint: search its history yourself (`git -C {} log -p --all`)",
            repo.display(),
            repo.display()
        ));
        return Vec::new();
    }
    let (tx, rx) = mpsc::sync_channel::<Msg>(QUEUE);
    let (wanted_tx, wanted_rx) = mpsc::channel::<HashSet<ObjectId>>();
    let reader_dir = dir.clone();
    // Detached: a reader blocked for good in `open` (a named pipe swapped in after the check)
    // is left behind, and the sweep goes on.
    let spawned = std::thread::Builder::new()
        .name("keyveil-sweep-git".into())
        .stack_size(16 << 20)
        .spawn(move || read_repo(&reader_dir, deadline, &tx, &wanted_rx));
    if let Err(e) = spawned {
        report.skipped += 1;
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: cannot read its objects ({e})",
            repo.display()
        ));
        return Vec::new();
    }
    let hits = match match_objects(repo, redactor, deadline, &rx, report, progress) {
        Ok(h) => h,
        Err(e) => {
            report.skipped += 1;
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: cannot read its objects ({e})",
                repo.display()
            ));
            return Vec::new();
        }
    };
    // The history walk runs whether or not anything was found: the same work either way.
    let wanted: HashSet<ObjectId> = hits
        .iter()
        .filter(|h| h.kind != gix_object::Kind::Commit)
        .map(|h| h.oid)
        .collect();
    let _ = wanted_tx.send(wanted);
    let placed = wait_placement(&rx, deadline).unwrap_or_else(|| Placement {
        cut: true,
        ..Placement::default()
    });
    if placed.cut {
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: out of time while placing objects at commits",
            repo.display()
        ));
    }
    if placed.unlisted {
        // Not `truncated`: the audit says whether a sweep was cut short, and only a hit gets here.
        report.notes.push(format!(
            "repository {}: its history is too intricate to list every commit that adds or removes a found object; some are not listed",
            repo.display()
        ));
    }
    if placed.unread > 0 {
        report.notes.push(format!(
            "repository {}: {} refs, reflogs or history objects could not be read",
            repo.display(),
            placed.unread
        ));
    }
    // Judged for every repository, found or not (the same work either way).
    let fresh = store_recent(&dir, recent);
    let mut out = Vec::new();
    for h in &hits {
        let commits = match h.kind {
            gix_object::Kind::Commit => vec![h.oid.to_string()],
            _ => placed
                .commits
                .get(&h.oid)
                .map(|c| c.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
        };
        for v in &h.variables {
            out.push(Finding {
                environment: String::new(),
                credential: String::new(),
                variable: v.clone(),
                kind: "git-history".into(),
                location: Location::Git {
                    repo: repo.to_string_lossy().into_owned(),
                    object: h.oid.to_string(),
                    object_type: h.kind.to_string(),
                    commits: commits.clone(),
                    path: placed.paths.get(&h.oid).cloned(),
                },
                form: "git-object".into(),
                recent: fresh,
            });
        }
    }
    out
}

/// Waits for the reader's [`Placement`] until `deadline`, or until it has sent nothing for
/// [`FIRST_OUTPUT`]; `None` when none came.
fn wait_placement(rx: &mpsc::Receiver<Msg>, deadline: Instant) -> Option<Placement> {
    loop {
        let due = deadline.min(Instant::now() + FIRST_OUTPUT);
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Msg::Placed(p)) => return Some(p),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// Matches every object the reader sends through the redactor, each in windows.
fn match_objects(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    rx: &mpsc::Receiver<Msg>,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
) -> std::io::Result<Vec<Hit>> {
    let overlap = redactor.max_pattern_len().max(1);
    let mut hits = Vec::new();
    let mut objects = 0u64;
    let mut skipped = Vec::new();
    loop {
        let due = deadline.min(Instant::now() + FIRST_OUTPUT);
        let msg = match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(m) => m,
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                let why = format!(
                    "nothing could be read for {} s (a named pipe where objects are read?)",
                    FIRST_OUTPUT.as_secs()
                );
                if objects == 0 {
                    return Err(std::io::Error::other(why));
                }
                report.truncated = true;
                report.notes.push(format!(
                    "repository {}: {why}; the objects after that point were not matched",
                    repo.display()
                ));
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                report.truncated = true;
                report.notes.push(format!(
                    "repository {}: out of time while reading objects",
                    repo.display()
                ));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                report.truncated = true;
                report.notes.push(format!(
                    "repository {}: the object reader stopped early",
                    repo.display()
                ));
                break;
            }
        };
        let (oid, kind, data) = match msg {
            Msg::Object { oid, kind, data } => (oid, kind, data),
            Msg::Skipped { oid, why } => {
                objects += 1;
                skipped.push(format!("{oid} ({why})"));
                continue;
            }
            Msg::Failed(why) => {
                if objects == 0 {
                    return Err(std::io::Error::other(why));
                }
                report.truncated = true;
                report.notes.push(format!(
                    "repository {}: reading its objects stopped ({why}); the objects after that point were not matched",
                    repo.display()
                ));
                break;
            }
            Msg::Done => break,
            Msg::Tick | Msg::Placed(_) => continue,
        };
        objects += 1;
        report.git_objects += 1;
        let size = data.len() as u64;
        if let Some(p) = progress {
            p.objects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            p.add(0, size);
        }
        report.bytes_scanned += size;
        let mut vars = BTreeSet::new();
        let mut at = 0usize;
        loop {
            let end = (at + WINDOW).min(data.len());
            vars.extend(redactor.find_leaks(data.get(at..end).unwrap_or_default()));
            if end >= data.len() {
                break;
            }
            // The next window starts `overlap` bytes back: a value may straddle two.
            at = end - overlap.min(end - at);
        }
        if !vars.is_empty() {
            hits.push(Hit {
                oid,
                kind,
                variables: vars,
            });
        }
    }
    if !skipped.is_empty() {
        report.skipped += skipped.len() as u64;
        report.truncated = true;
        let n = skipped.len();
        skipped.truncate(5);
        report.notes.push(format!(
            "repository {}: {n} objects not matched (larger than {} MiB or corrupt): {}",
            repo.display(),
            MAX_OBJECT >> 20,
            skipped.join(", ")
        ));
    }
    Ok(hits)
}

/// The reader thread: sends every object of the store at `dir`, then waits for the found
/// objects and sends where they are. Stops when the matcher hangs up or at `deadline`.
fn read_repo(
    dir: &Path,
    deadline: Instant,
    tx: &mpsc::SyncSender<Msg>,
    wanted_rx: &mpsc::Receiver<HashSet<ObjectId>>,
) {
    use gix_object::{Find as _, FindHeader as _};
    let common = common_dir(dir);
    let objects = common.join("objects");
    let opts = gix_odb::store::init::Options {
        // A crafted pack or loose object may claim any size: never allocate more than this.
        alloc_limit_bytes: Some(MAX_OBJECT),
        // Relative alternates resolve from the object directory, not the broker's own.
        current_dir: Some(objects.clone()),
        ..Default::default()
    };
    let mut db = match gix_odb::at_opts(&objects, gix_hash::Kind::Sha1, std::iter::empty(), opts) {
        Ok(db) => db,
        Err(e) => {
            let _ = tx.send(Msg::Failed(format!("cannot open its object store: {e}")));
            return;
        }
    };
    db.set_pack_cache(|| Box::new(gix_pack::cache::lru::MemoryCappedHashmap::new(PACK_CACHE)));
    let all = match db.iter() {
        Ok(i) => i.with_ordering(
            gix_odb::store::iter::Ordering::PackAscendingOffsetThenLooseLexicographical,
        ),
        Err(e) => {
            let _ = tx.send(Msg::Failed(format!("cannot list its objects: {e}")));
            return;
        }
    };
    let mut seen = HashSet::new();
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    for oid in all {
        if Instant::now() >= deadline {
            return;
        }
        let oid = match oid {
            Ok(o) => o,
            Err(e) => {
                let _ = tx.send(Msg::Failed(format!("cannot list its objects: {e}")));
                return;
            }
        };
        // Packs and loose files may hold the same object more than once.
        if !seen.insert(oid) {
            continue;
        }
        let msg = match db.try_header(&oid) {
            Ok(Some(h)) if h.size > MAX_OBJECT as u64 => Msg::Skipped {
                oid,
                why: format!("{} bytes", h.size),
            },
            Ok(None) => continue,
            Err(e) => Msg::Skipped {
                oid,
                why: format!("corrupt: {e}"),
            },
            Ok(Some(_)) => match db.try_find(&oid, &mut buf) {
                Ok(Some(d)) => Msg::Object {
                    oid,
                    kind: d.kind,
                    data: zeroize::Zeroizing::new(d.data.to_vec()),
                },
                Ok(None) => continue,
                Err(e) => Msg::Skipped {
                    oid,
                    why: format!("corrupt: {e}"),
                },
            },
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
    drop(buf);
    if tx.send(Msg::Done).is_err() {
        return;
    }
    let Ok(wanted) = wanted_rx.recv() else { return };
    let placed = place(dir, &common, &db, &wanted, deadline, &|| {
        let _ = tx.try_send(Msg::Tick);
    });
    let _ = tx.send(Msg::Placed(placed));
}

/// Whether the repository whose common git directory is `common` says its objects are named
/// by SHA-256 (`extensions.objectFormat` in its `config`, the one setting read: nothing in it
/// runs or applies). A config that cannot be read says no.
fn sha256(common: &Path) -> bool {
    read_small(&common.join("config")).is_ok_and(|t| {
        t.lines().any(|l| {
            let l: String = l
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect::<String>()
                .to_ascii_lowercase();
            l.starts_with("objectformat=") && l.contains("sha256")
        })
    })
}

/// The common git directory of a linked worktree (its `commondir`), else `dir` itself.
fn common_dir(dir: &Path) -> PathBuf {
    match read_small(&dir.join("commondir")) {
        Ok(c) if !c.trim().is_empty() => dir.join(c.trim()),
        _ => dir.to_path_buf(),
    }
}
