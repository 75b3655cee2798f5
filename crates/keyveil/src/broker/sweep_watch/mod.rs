//! `keyveil sweep --watch`: watch agent host transcript folders (and the paths given) and report,
//! and with `contain` contain, a value within a second of it landing there: a human pasting a
//! key into a prompt is the common case (see `docs/sweep.md`).
//!
//! The CLI proves the factor once; the broker then keeps the connection open and sends one
//! [`Reply::Sweep`] frame (sealed for that CLI) every [`TICK`], **whether or not anything was
//! found**, each padded to exactly [`FRAME_PLAIN`] plain bytes: a relay at the socket, or the
//! CLI's wake-ups in `/proc`, see the same stream for a planted guess that matched and one that
//! did not. What does not fit in one frame waits for the next.
//!
//! Every folder is watched on its own (inotify through the `notify` crate, one non-recursive
//! watch a folder, added by the broker's own walk): symbolic links are never followed, and a
//! folder that cannot be watched (the kernel's limit on watches, a permission) is named to the
//! human and counted in the audit; so are watch errors and events the kernel dropped (then
//! every known file is looked at again). Each changed file is read from where the previous
//! read ended (less the redactor's longest pattern), so a growing transcript is never read
//! twice. The values are those held when the watch started.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use keyveil_proto::FrameCodec;
use notify::Watcher as _;
use serde_json::json;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

use super::Broker;
use super::state::OpError;
use super::sweep_ops;
use crate::factor_proof;
use crate::sweep::wire::{Contained, SweepOutcome};
use crate::sweep::{Finding, Location};
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, Frame, Reply, Request};

/// Folders of `$HOME` watched (with every folder below them) when they exist.
const HOST_DIRS: &[&str] = &[
    ".codex",
    ".claude",
    ".gemini",
    ".copilot",
    ".cursor",
    ".config/Code/User",
    ".config/Cursor/User",
    ".local/share/fish",
    "Library/Application Support/Code/User",
    "Library/Application Support/Cursor/User",
];
/// How often the watch sends a frame, found or not (events are gathered meanwhile).
pub(crate) const TICK: Duration = Duration::from_millis(250);
/// Plain bytes of every frame of a watch (its JSON, padded with spaces).
pub(crate) const FRAME_PLAIN: usize = 8 << 10;
/// Most plain bytes one finding, note or containment takes in a frame (a longer path is
/// shortened from its start).
const ITEM_MAX: usize = 2 << 10;
/// Most findings, notes and containments waiting for a frame; beyond, they are counted.
const MAX_QUEUED: usize = 20_000;
/// Most bytes read from one file per batch (the rest on the next event).
const MAX_READ: u64 = 64 << 20;
/// Most files the watch remembers (where each was read to).
const MAX_FILES: usize = 500_000;
/// Most folders watched at once (each is an inotify watch of the user's, whose limit the
/// kernel sets: `fs.inotify.max_user_watches`).
const MAX_WATCHES: usize = 200_000;
/// Files up to this size are read whole on each change (bytes).
const WHOLE_MAX: u64 = 1 << 20;

/// Runs a watch on `framed` until the client leaves. Errors are sent as the final reply.
pub(crate) async fn watch(
    broker: &Arc<Broker>,
    req: op::Sweep,
    mut framed: Framed<UnixStream, FrameCodec>,
) {
    if let Err(e) = run(broker, req, &mut framed).await {
        let _ = super::send(&mut framed, &e.reply()).await;
    }
}

/// What the notify thread tells the watch.
enum Msg {
    /// A file or folder was created or changed.
    Path(PathBuf),
    /// The kernel dropped events (its queue overflowed): look at every known file again.
    Rescan,
    /// A watch error (its text).
    Error(String),
}

/// One thing waiting for a frame.
#[derive(Debug, Clone)]
enum Item {
    Finding(Finding),
    Contained(Contained),
    Note(String),
}

impl Item {
    /// Plain bytes it takes in a frame's JSON (with its comma).
    fn len(&self) -> usize {
        1 + match self {
            Item::Finding(f) => serde_json::to_vec(f).map_or(ITEM_MAX, |v| v.len()),
            Item::Contained(c) => serde_json::to_vec(c).map_or(ITEM_MAX, |v| v.len()),
            Item::Note(n) => serde_json::to_vec(n).map_or(ITEM_MAX, |v| v.len()),
        }
    }

    /// The item shortened to at most [`ITEM_MAX`] bytes (a path or note loses its start).
    fn fit(mut self) -> Item {
        if self.len() <= ITEM_MAX {
            return self;
        }
        match &mut self {
            Item::Finding(f) => {
                if let Location::File { path, lines } = &mut f.location {
                    lines.truncate(5);
                    *path = shorten(path, ITEM_MAX / 2);
                }
            }
            Item::Contained(c) => {
                for p in &mut c.problems {
                    *p = shorten(p, ITEM_MAX / 8);
                }
                c.problems.truncate(4);
            }
            Item::Note(n) => *n = shorten(n, ITEM_MAX / 2),
        }
        self
    }
}

/// `s` without its start, so that its JSON takes at most about `max` bytes.
fn shorten(s: &str, max: usize) -> String {
    let mut keep = String::new();
    let mut used = 3;
    for c in s.chars().rev() {
        // A character serde_json escapes takes up to 6 bytes.
        used += if c.is_control() { 6 } else { c.len_utf8() };
        if used > max {
            break;
        }
        keep.insert(0, c);
    }
    if keep.len() == s.len() {
        keep
    } else {
        format!("...{keep}")
    }
}

/// The findings, containments and notes waiting for a frame.
#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    dropped: u64,
}

impl Queue {
    fn push(&mut self, item: Item) {
        if self.items.len() >= MAX_QUEUED {
            self.dropped += 1;
        } else {
            self.items.push_back(item.fit());
        }
    }

    /// The next frame's outcome: as many waiting items as fit in [`FRAME_PLAIN`] bytes.
    fn frame(&mut self) -> SweepOutcome {
        let mut o = SweepOutcome::default();
        if self.dropped > 0 && self.items.len() < MAX_QUEUED / 2 {
            let n = std::mem::take(&mut self.dropped);
            self.items.push_back(Item::Note(format!(
                "{n} more findings or notes were not shown (too many at once); run `keyveil sweep` for the full list"
            )));
        }
        // The empty outcome's JSON, the lists' brackets, and room to spare.
        let mut used = serde_json::to_vec(&o).map_or(512, |v| v.len()) + 256;
        while let Some(item) = self.items.front() {
            let n = item.len();
            if used + n > FRAME_PLAIN {
                break;
            }
            used += n;
            match self.items.pop_front() {
                Some(Item::Finding(f)) => o.report.findings.push(f),
                Some(Item::Contained(c)) => o.contained.push(c),
                Some(Item::Note(n)) => o.report.notes.push(n),
                None => break,
            }
        }
        o
    }
}

async fn send_sealed(
    framed: &mut Framed<UnixStream, FrameCodec>,
    key: &factor_proof::FactorKey,
    nonce: &[u8; factor_proof::LEN],
    outcome: &SweepOutcome,
) -> Result<(), OpError> {
    let reply = Reply::Sweep(sweep_ops::seal(key, nonce, outcome, FRAME_PLAIN)?);
    let body = Frame::json(&reply).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    framed
        .send(body)
        .await
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))
}

/// The folders watched and what could not be.
#[derive(Default)]
struct Watches {
    /// Folders with a watch.
    dirs: BTreeSet<PathBuf>,
    /// Folders left unwatched, and why (the first few; all are counted).
    unwatched: Vec<String>,
    /// How many folders were left unwatched.
    unwatched_count: u64,
}

impl Watches {
    fn left(&mut self, dir: &Path, why: &str) {
        self.unwatched_count += 1;
        if self.unwatched.len() < 20 {
            self.unwatched
                .push(format!("not watching {}: {why}", dir.display()));
        }
    }
}

/// Watches `root` and, when `deep`, every folder below it (one watch each, at most
/// [`MAX_WATCHES`]; symbolic links are never followed), through `add`. Regular files met are
/// recorded in `files` (read from their end later: what was there before is a sweep's job), or
/// with `new`, those not yet known are pushed there (a folder created during the watch: its
/// files were written before it was watched).
fn watch_tree(
    root: &Path,
    deep: bool,
    w: &mut Watches,
    add: &mut dyn FnMut(&Path) -> Result<(), String>,
    files: &mut BTreeMap<PathBuf, Seen>,
    mut new: Option<&mut Vec<PathBuf>>,
) {
    use std::os::unix::fs::MetadataExt as _;
    let mut stack = vec![(root.to_path_buf(), 0u32)];
    let mut seen = 0u32;
    while let Some((d, depth)) = stack.pop() {
        if !w.dirs.contains(&d) {
            if w.dirs.len() >= MAX_WATCHES {
                w.left(&d, "too many folders watched already");
            } else {
                match add(&d) {
                    Ok(()) => {
                        w.dirs.insert(d.clone());
                    }
                    Err(e) => w.left(&d, &e),
                }
            }
        }
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 1_000_000 {
                w.left(root, "more than a million entries below it");
                return;
            }
            // Never through a symbolic link (a link to `/` would watch the whole disk).
            let Ok(t) = e.file_type() else { continue };
            let p = e.path();
            if t.is_file() {
                match new.as_deref_mut() {
                    Some(out) if !files.contains_key(&p) => out.push(p),
                    Some(_) => {}
                    None if files.len() < MAX_FILES => {
                        if let Ok(m) = std::fs::symlink_metadata(&p) {
                            files.insert(
                                p,
                                Seen {
                                    offset: m.len(),
                                    ino: m.ino(),
                                    whole: BTreeSet::new(),
                                },
                            );
                        }
                    }
                    None => {}
                }
            } else if t.is_dir() && deep {
                if depth < 64 {
                    stack.push((p, depth + 1));
                } else {
                    w.left(&p, "more than 64 levels deep");
                }
            }
        }
    }
}

/// `home/rel` when it is a folder reached without a symbolic link below `home`; otherwise why
/// not (`None` when it does not exist).
fn host_dir(home: &Path, rel: &str) -> Option<Result<PathBuf, String>> {
    let mut p = home.to_path_buf();
    for c in Path::new(rel).components() {
        p.push(c);
        let m = std::fs::symlink_metadata(&p).ok()?;
        if m.file_type().is_symlink() {
            return Some(Err(format!(
                "{} is a symbolic link (never followed)",
                p.display()
            )));
        }
        if !m.is_dir() {
            return None;
        }
    }
    Some(Ok(p))
}

/// A watch's state between ticks.
struct State {
    /// Folders watched with all below them, and folders watched alone (`$HOME`).
    recursive: Vec<PathBuf>,
    flat: Vec<PathBuf>,
    watches: Watches,
    files: BTreeMap<PathBuf, Seen>,
    queue: Queue,
    /// Variables (redactor names) the watch has contained: each at most once. A containment
    /// is visible to the agent (a revoked grant, the mark, the `incident`), so every later one
    /// would answer one more planted guess (a 12-byte fragment of a long value, extended one
    /// character at a time): after the first, a variable is only reported.
    contained_once: BTreeSet<String>,
    errors: u64,
    rescans: u64,
}

async fn run(
    broker: &Arc<Broker>,
    req: op::Sweep,
    framed: &mut Framed<UnixStream, FrameCodec>,
) -> Result<(), OpError> {
    let digest = factor_proof::request_digest(
        &serde_json::to_value(Request::SweepWatch(req.clone())).unwrap_or_default(),
    );
    let plan = sweep_ops::plan_of(&req)?;
    let (key, nonce) = sweep_ops::authorize(broker, &req, &plan, Some(digest)).await?;
    let (redactor, keys) = sweep_ops::redactor(broker, "sweep_watch")?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
    let handler = move |ev: notify::Result<notify::Event>| match ev {
        Ok(ev) => {
            if ev.need_rescan() {
                let _ = tx.send(Msg::Rescan);
            }
            if matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            ) {
                for p in ev.paths {
                    let _ = tx.send(Msg::Path(p));
                }
            }
        }
        Err(e) => {
            let _ = tx.send(Msg::Error(e.to_string()));
        }
    };
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(handler, config)
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot watch files: {e}")))?;
    let mut st = setup(&plan, &mut watcher, &redactor);
    if st.watches.dirs.is_empty() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            "nothing to watch: none of the paths or host folders exists",
        )
        .hint("give a directory to watch, or start an agent host first"));
    }
    broker.lock().audit(
        "sweep_watch",
        json!({"paths": plan.roots.len(), "home": plan.home.is_some(), "contain": req.contain,
            "watched": st.recursive.len() + st.flat.len(), "folders": st.watches.dirs.len(),
            "unwatched": st.watches.unwatched_count}),
    );
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut paths = BTreeSet::new();
    let mut rescan = false;
    let mut first_error = true;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Msg::Path(p)) => { paths.insert(p); continue }
                Some(Msg::Rescan) => { rescan = true; continue }
                Some(Msg::Error(e)) => {
                    st.errors += 1;
                    if st.errors <= 20 {
                        st.queue.push(Item::Note(crate::sweep::redact_text(
                            &format!("watch error: {e}; some changes may not be seen"),
                            &redactor,
                        )));
                    }
                    if std::mem::take(&mut first_error) {
                        // Once a watch (an agent can cause many); the end counts them all.
                        broker.lock().audit("sweep_watch_error", json!({"errors": 1}));
                    }
                    continue
                }
                None => break,
            },
            f = framed.next() => match f { Some(Ok(_)) => continue, _ => break },
            _ = broker.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if rescan || !paths.is_empty() {
            let batch = std::mem::take(&mut paths);
            let again = std::mem::take(&mut rescan);
            tick_batch(
                broker,
                &req,
                &plan,
                &redactor,
                &keys,
                &mut st,
                &mut watcher,
                batch,
                again,
            )
            .await;
        }
        // One frame every tick, found or not, always the same size.
        let outcome = st.queue.frame();
        send_sealed(framed, &key, &nonce, &outcome).await?;
    }
    broker.lock().audit(
        "sweep_watch_end",
        json!({"contained": st.contained_once.len(), "errors": st.errors,
            "rescans": st.rescans, "unwatched": st.watches.unwatched_count}),
    );
    drop(watcher);
    Ok(())
}

/// Watches the host folders of `$HOME`, `$HOME` itself (its own entries) and the paths given,
/// each folder on its own; the first frame's notes say what is watched and what is not.
fn setup(
    plan: &crate::sweep::SweepPlan,
    watcher: &mut notify::RecommendedWatcher,
    redactor: &crate::redact::Redactor,
) -> State {
    let mut st = State {
        recursive: plan.roots.clone(),
        flat: Vec::new(),
        watches: Watches::default(),
        files: BTreeMap::new(),
        queue: Queue::default(),
        contained_once: BTreeSet::new(),
        errors: 0,
        rescans: 0,
    };
    if let Some(h) = &plan.home {
        for d in HOST_DIRS {
            match host_dir(h, d) {
                Some(Ok(p)) => st.recursive.push(p),
                Some(Err(why)) => st.watches.left(&h.join(d), &why),
                None => {}
            }
        }
        st.flat.push(h.clone());
    }
    let mut add = |d: &Path| {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|e| e.to_string())
    };
    for (dirs, deep) in [(&st.recursive, true), (&st.flat, false)] {
        for d in dirs {
            watch_tree(d, deep, &mut st.watches, &mut add, &mut st.files, None);
        }
    }
    let mut notes: Vec<String> = st
        .recursive
        .iter()
        .chain(st.flat.iter())
        .filter(|d| st.watches.dirs.contains(*d))
        .map(|w| format!("watching {}", w.display()))
        .collect();
    notes.append(&mut st.watches.unwatched);
    if st.watches.unwatched_count > 20 {
        notes.push(format!(
            "{} folders in all are not watched",
            st.watches.unwatched_count
        ));
    }
    for n in notes {
        st.queue
            .push(Item::Note(crate::sweep::redact_text(&n, redactor)));
    }
    st
}

/// Reads what changed since the last tick (`paths`, or with `rescan` every known file), and
/// queues what was found (with `contain`, contained).
#[allow(clippy::too_many_arguments)]
async fn tick_batch(
    broker: &Arc<Broker>,
    req: &op::Sweep,
    plan: &crate::sweep::SweepPlan,
    redactor: &crate::redact::Redactor,
    keys: &BTreeMap<String, sweep_ops::Key>,
    st: &mut State,
    watcher: &mut notify::RecommendedWatcher,
    mut paths: BTreeSet<PathBuf>,
    rescan: bool,
) {
    let overlap = redactor.max_pattern_len().max(1) as u64;
    if rescan {
        // Events were lost: every known file that changed is read as if an event named it.
        st.rescans += 1;
        for (p, seen) in &st.files {
            use std::os::unix::fs::MetadataExt as _;
            if std::fs::symlink_metadata(p)
                .is_ok_and(|m| m.len() != seen.offset || m.ino() != seen.ino)
            {
                paths.insert(p.clone());
            }
        }
        // And every folder is walked again from the top (folders created meanwhile).
        paths.extend(st.recursive.iter().cloned());
        st.queue.push(Item::Note(
            "the kernel dropped file events (too many at once): every watched file was looked at again".into(),
        ));
    }
    // A folder created since the last tick: watched now, and its files read (a host makes a
    // project folder and writes its transcript at once, before the folder is watched).
    let mut more = Vec::new();
    let mut add = |d: &Path| {
        watcher
            .watch(d, notify::RecursiveMode::NonRecursive)
            .map_err(|e| e.to_string())
    };
    let before = st.watches.unwatched_count;
    for p in &paths {
        if st.recursive.iter().any(|r| p.starts_with(r))
            && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
        {
            watch_tree(
                p,
                true,
                &mut st.watches,
                &mut add,
                &mut st.files,
                Some(&mut more),
            );
        }
    }
    for n in st.watches.unwatched.drain(..) {
        st.queue
            .push(Item::Note(crate::sweep::redact_text(&n, redactor)));
    }
    if st.watches.unwatched_count > before && st.watches.unwatched_count > 20 {
        st.queue.push(Item::Note(format!(
            "{} folders in all are not watched",
            st.watches.unwatched_count
        )));
    }
    paths.extend(more);
    // Bounded memory whatever the agent creates: at MAX_FILES, forget files that are gone
    // (once a batch); past it, new files are read without being remembered.
    if st.files.len() >= MAX_FILES {
        st.files.retain(|f, _| std::fs::symlink_metadata(f).is_ok());
    }
    if st.watches.dirs.len() >= MAX_WATCHES {
        st.watches
            .dirs
            .retain(|d| std::fs::symlink_metadata(d).is_ok());
    }
    let mut batch = Vec::new();
    for p in paths {
        let mut scratch = Seen::default();
        let seen = if st.files.len() < MAX_FILES || st.files.contains_key(&p) {
            st.files.entry(p.clone()).or_default()
        } else {
            &mut scratch
        };
        for v in read_new(&p, seen, overlap, redactor) {
            batch.push(crate::sweep::redact_finding(
                Finding {
                    environment: String::new(),
                    credential: String::new(),
                    variable: v,
                    kind: crate::sweep::classify(&p, plan.home.as_deref()).to_owned(),
                    location: Location::File {
                        path: p.to_string_lossy().into_owned(),
                        lines: Vec::new(),
                    },
                    form: "raw".into(),
                    recent: !plan.recent.is_zero(),
                },
                redactor,
            ));
        }
    }
    if batch.is_empty() {
        return;
    }
    found(broker, req, keys, st, batch).await;
}

/// Queues a batch of findings and, with `contain`, contains each variable not yet contained
/// whose value is not guessable.
async fn found(
    broker: &Arc<Broker>,
    req: &op::Sweep,
    keys: &BTreeMap<String, sweep_ops::Key>,
    st: &mut State,
    mut batch: Vec<Finding>,
) {
    // Guessable values are reported, never contained by the watch itself (see
    // `card_redact::guessable`); the redactor's names say which. Nor is a variable contained
    // twice.
    // A former value is reported, never contained (its variable was rotated already): it must
    // not count in `contained_once`, whose size the `sweep_watch_end` entry (readable by the
    // agent) gives.
    let former = |f: &&Finding| {
        keys.get(&f.variable)
            .is_some_and(|k| super::sweep_scrub::is_former(k.3))
    };
    let to_contain: Vec<Finding> = batch
        .iter()
        .filter(|f| keys.get(&f.variable).is_some_and(|k| !k.4))
        .filter(|f| !former(f))
        .filter(|f| !st.contained_once.contains(&f.variable))
        .cloned()
        .collect();
    let guessable = batch
        .iter()
        .filter(|f| !former(f))
        .filter(|f| keys.get(&f.variable).is_none_or(|k| k.4))
        .count();
    let formers = batch.iter().filter(former).count();
    let again = batch.len() - formers - guessable - to_contain.len();
    sweep_ops::name_findings(&mut batch, keys);
    let mut contained = Vec::new();
    if req.contain {
        st.contained_once
            .extend(to_contain.iter().map(|f| f.variable.clone()));
        let mut named = to_contain;
        sweep_ops::name_findings(&mut named, keys);
        contained = sweep_ops::contain(broker, &named, keys).await;
    }
    // No audit entry per batch: its existence would answer each planted guess, for guessable
    // values too. Containments are audited (`incident`), once per variable.
    for f in batch {
        st.queue.push(Item::Finding(f));
    }
    for c in contained {
        st.queue.push(Item::Contained(c));
    }
    if req.contain && guessable > 0 {
        st.queue.push(Item::Note(format!(
            "{guessable} copies of short or guessable values were not contained by the watch (an agent could plant guesses and watch for the containment); contain them with `keyveil sweep --contain`"
        )));
    }
    if req.contain && again > 0 {
        st.queue.push(Item::Note(format!(
            "{again} copies of variables this watch already contained were reported only (each containment would answer one more planted guess); rotate them"
        )));
    }
}

/// What the watch knows of one file.
#[derive(Debug, Default, Clone)]
struct Seen {
    /// Bytes read so far (the file's length when the watch started, for a file already there).
    offset: u64,
    /// Its inode when last read (0: not yet known).
    ino: u64,
    /// Variables found by the last read of the whole file.
    whole: BTreeSet<String>,
}

/// Reads what is new in `path` (never through a symlink, at most [`MAX_READ`] bytes) and
/// returns the variables found in it. A file that grew in place is read from where the last
/// read ended, less `overlap`; a file replaced (a new inode: written beside and renamed over,
/// as hosts save whole JSON files), shrunk, or no larger than [`WHOLE_MAX`] is read whole, and
/// only variables its previous whole read did not find are returned (so a copy that was there
/// before the watch started is reported the first time such a file changes).
fn read_new(
    path: &Path,
    seen: &mut Seen,
    overlap: u64,
    redactor: &crate::redact::Redactor,
) -> BTreeSet<String> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let flags =
        rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    else {
        return BTreeSet::new();
    };
    let Ok(meta) = f.metadata() else {
        return BTreeSet::new();
    };
    if !meta.is_file() {
        return BTreeSet::new();
    }
    let len = meta.len();
    let start = seen.offset;
    let replaced = seen.ino != 0 && seen.ino != meta.ino();
    // Small files are read whole every time: a host may rewrite one in place with the new
    // text in the middle (`~/.claude.json` keeps its prompt history newest first).
    let whole = replaced || len < start || len <= WHOLE_MAX;
    let from = if whole {
        0
    } else {
        start.saturating_sub(overlap)
    };
    if f.seek(std::io::SeekFrom::Start(from)).is_err() {
        return BTreeSet::new();
    }
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    let n = (&mut f).take(MAX_READ).read_to_end(&mut buf).unwrap_or(0) as u64;
    seen.ino = meta.ino();
    seen.offset = from + n;
    let mut found: BTreeSet<String> = redactor.find_leaks(&buf).into_iter().collect();
    if whole {
        let before = std::mem::replace(&mut seen.whole, found.clone());
        found.retain(|v| !before.contains(v));
        return found;
    }
    // The re-read tail was matched by the previous read: new are what the new bytes hold alone,
    // and what only the tail and new bytes together hold (a value straddling the boundary).
    let old = usize::try_from(start.saturating_sub(from))
        .unwrap_or(0)
        .min(buf.len());
    if old > 0 {
        let (tail, fresh) = buf.split_at(old);
        let fresh: BTreeSet<String> = redactor.find_leaks(fresh).into_iter().collect();
        for v in redactor.find_leaks(tail) {
            if !fresh.contains(&v) {
                found.remove(&v);
            }
        }
    }
    if from == 0 {
        seen.whole.extend(found.iter().cloned());
    }
    found
}

#[cfg(test)]
mod tests;
