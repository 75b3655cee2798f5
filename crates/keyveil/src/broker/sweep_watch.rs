//! `keyveil sweep --watch`: watch agent host transcript folders (and the paths given) and report,
//! and with `contain` contain, a value within a second of it landing there: a human pasting a
//! key into a prompt is the common case (see `docs/sweep.md`).
//!
//! The CLI proves the factor once; the broker then keeps the connection open and sends one
//! [`Reply::Sweep`] frame (sealed for that CLI) when it starts watching and one per batch of
//! findings, until the CLI goes away or the broker stops. File events come from inotify
//! through the `notify` crate; each changed file is read from where the previous read ended
//! (less the redactor's longest pattern), so a growing transcript is never read twice. The
//! values are those held when the watch started.

use std::collections::{BTreeMap, BTreeSet};
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
use crate::sweep::wire::SweepOutcome;
use crate::sweep::{Finding, Location, SweepReport};
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, Frame, Reply, Request};

/// Folders of `$HOME` watched (recursively) when they exist.
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
/// Events are gathered this long before the files they name are read.
const SETTLE: Duration = Duration::from_millis(50);
/// Most bytes read from one file per event batch (the rest on the next event).
const MAX_READ: u64 = 64 << 20;
/// Most files the watch remembers (where each was read to).
const MAX_FILES: usize = 500_000;
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

async fn send_sealed(
    framed: &mut Framed<UnixStream, FrameCodec>,
    key: &factor_proof::FactorKey,
    nonce: &[u8; factor_proof::LEN],
    outcome: &SweepOutcome,
) -> Result<(), OpError> {
    let reply = Reply::Sweep(sweep_ops::seal(key, nonce, outcome)?);
    let body = Frame::json(&reply).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    framed
        .send(body)
        .await
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))
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
    let overlap = redactor.max_pattern_len().max(1) as u64;
    // What is watched: host folders of $HOME, its top-level files (shell histories,
    // `.claude.json`), and the paths given.
    let mut recursive: Vec<PathBuf> = plan.roots.clone();
    let mut flat = Vec::new();
    if let Some(h) = &plan.home {
        recursive.extend(HOST_DIRS.iter().map(|d| h.join(d)).filter(|p| p.is_dir()));
        flat.push(h.clone());
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && matches!(
                ev.kind,
                notify::EventKind::Create(_) | notify::EventKind::Modify(_)
            )
        {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
    })
    .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot watch files: {e}")))?;
    let mut watched = Vec::new();
    for (dirs, mode) in [
        (&recursive, notify::RecursiveMode::Recursive),
        (&flat, notify::RecursiveMode::NonRecursive),
    ] {
        for d in dirs {
            if watcher.watch(d, mode).is_ok() {
                watched.push(d.to_string_lossy().into_owned());
            }
        }
    }
    if watched.is_empty() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            "nothing to watch: none of the paths or host folders exists",
        )
        .hint("give a directory to watch, or start an agent host first"));
    }
    // What is known of each file: where it was read to, its inode, and the variables a whole
    // read of it found. Files met for the first time are read from their end at the start of
    // the watch (what was there before is a sweep's job), from 0 when created later.
    let mut files: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    for d in recursive.iter().chain(flat.iter()) {
        prime(
            d,
            d != plan.home.as_ref().unwrap_or(&PathBuf::new()),
            &mut files,
        );
    }
    broker.lock().audit(
        "sweep_watch",
        json!({"paths": plan.roots.len(), "home": plan.home.is_some(), "contain": req.contain, "watched": watched.len()}),
    );
    let mut hello = SweepOutcome::default();
    hello.report.notes = watched.iter().map(|w| format!("watching {w}")).collect();
    send_sealed(framed, &key, &nonce, &hello).await?;
    // Variables (redactor names) the watch has contained: each at most once. A containment
    // is visible to the agent (a revoked grant, the mark, the `incident`), so every later one
    // would answer one more planted guess (a 12-byte fragment of a long value, extended one
    // character at a time): after the first, a variable is only reported.
    let mut contained_once: BTreeSet<String> = BTreeSet::new();
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p { Some(p) => p, None => break },
            f = framed.next() => match f { Some(Ok(_)) => continue, _ => break },
            _ = broker.shutdown.cancelled() => break,
        };
        tokio::time::sleep(SETTLE).await;
        let mut paths = BTreeSet::from([first]);
        while let Ok(p) = rx.try_recv() {
            paths.insert(p);
        }
        // A directory created since the last batch: its files were written before it was
        // watched (a host makes a project folder and writes a transcript in one go), so
        // read them all.
        let mut more = Vec::new();
        for p in &paths {
            if recursive.iter().any(|r| p.starts_with(r))
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
            {
                new_files(p, &files, &mut more);
            }
        }
        paths.extend(more);
        // Bounded memory whatever the agent creates: at MAX_FILES, forget files that are gone
        // (once a batch); past it, new files are read without being remembered.
        if files.len() >= MAX_FILES {
            files.retain(|f, _| std::fs::symlink_metadata(f).is_ok());
        }
        let home = plan.home.clone();
        let window = plan.recent;
        let mut batch = Vec::new();
        for p in paths {
            let mut scratch = Seen::default();
            let seen = if files.len() < MAX_FILES || files.contains_key(&p) {
                files.entry(p.clone()).or_default()
            } else {
                &mut scratch
            };
            let vars = read_new(&p, seen, overlap, &redactor);
            for v in vars {
                batch.push(crate::sweep::redact_finding(
                    Finding {
                        environment: String::new(),
                        credential: String::new(),
                        variable: v,
                        kind: crate::sweep::classify(&p, home.as_deref()).to_owned(),
                        location: Location::File {
                            path: p.to_string_lossy().into_owned(),
                            lines: Vec::new(),
                        },
                        form: "raw".into(),
                        recent: !window.is_zero(),
                    },
                    &redactor,
                ));
            }
        }
        if batch.is_empty() {
            continue;
        }
        // Guessable values are reported, never contained by the watch itself (see
        // `sweep_ops::guessable`); the redactor's names say which. Nor is a variable contained
        // twice.
        let to_contain: Vec<Finding> = batch
            .iter()
            .filter(|f| keys.get(&f.variable).is_some_and(|k| !k.4))
            .filter(|f| !contained_once.contains(&f.variable))
            .cloned()
            .collect();
        let guessable = batch
            .iter()
            .filter(|f| keys.get(&f.variable).is_none_or(|k| k.4))
            .count();
        let again = batch.len() - guessable - to_contain.len();
        sweep_ops::name_findings(&mut batch, &keys);
        let mut contained = Vec::new();
        if req.contain {
            contained_once.extend(to_contain.iter().map(|f| f.variable.clone()));
            let mut named = to_contain;
            sweep_ops::name_findings(&mut named, &keys);
            contained = sweep_ops::contain(broker, &named, &keys).await;
        }
        let mut notes = Vec::new();
        if req.contain && guessable > 0 {
            notes.push(format!(
                "{guessable} copies of short or guessable values were not contained by the watch (an agent could plant guesses and watch for the containment); contain them with `keyveil sweep --contain`"
            ));
        }
        if req.contain && again > 0 {
            notes.push(format!(
                "{again} copies of variables this watch already contained were reported only (each containment would answer one more planted guess); rotate them"
            ));
        }
        // No audit entry per batch: its existence would answer each planted guess, for
        // guessable values too. Containments are audited (`incident`), once per variable.
        let outcome = SweepOutcome {
            report: SweepReport {
                findings: batch,
                notes,
                ..SweepReport::default()
            },
            contained,
            ..SweepOutcome::default()
        };
        send_sealed(framed, &key, &nonce, &outcome).await?;
    }
    broker.lock().audit(
        "sweep_watch_end",
        json!({"contained": contained_once.len()}),
    );
    drop(watcher);
    Ok(())
}

/// What the watch knows of one file.
#[derive(Debug, Default)]
struct Seen {
    /// Bytes read so far (the file's length when the watch started, for a file already there).
    offset: u64,
    /// Its inode when last read (0: not yet known).
    ino: u64,
    /// Variables found by the last read of the whole file.
    whole: BTreeSet<String>,
}

/// Records the length and inode of every regular file below `dir` (only its own entries unless
/// `deep`), so a watch reads only what is added after it starts.
fn prime(dir: &Path, deep: bool, files: &mut BTreeMap<PathBuf, Seen>) {
    use std::os::unix::fs::MetadataExt as _;
    let mut stack = vec![(dir.to_path_buf(), 0u32)];
    let mut seen = 0u32;
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 1_000_000 || files.len() >= MAX_FILES {
                return;
            }
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_file() {
                files.insert(
                    e.path(),
                    Seen {
                        offset: m.len(),
                        ino: m.ino(),
                        whole: BTreeSet::new(),
                    },
                );
            } else if m.is_dir() && deep && depth < 64 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
}

/// Regular files below the new directory `dir` that the watch has not met (at most 10,000,
/// 16 levels deep; symlinks not followed).
fn new_files(dir: &Path, files: &BTreeMap<PathBuf, Seen>, out: &mut Vec<PathBuf>) {
    let mut stack = vec![(dir.to_path_buf(), 0u32)];
    let mut n = 0u32;
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            n += 1;
            if n > 10_000 {
                return;
            }
            let Ok(t) = e.file_type() else { continue };
            if t.is_file() && !files.contains_key(&e.path()) {
                out.push(e.path());
            } else if t.is_dir() && depth < 16 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
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
