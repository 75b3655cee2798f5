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
use jiff::Timestamp;
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
    // Where each file was read to; files met for the first time are read from their end at
    // the start of the watch (what was there before is a sweep's job), from 0 when created later.
    let mut offsets: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for d in recursive.iter().chain(flat.iter()) {
        prime(
            d,
            d != plan.home.as_ref().unwrap_or(&PathBuf::new()),
            &mut offsets,
        );
    }
    broker.lock().audit(
        "sweep_watch",
        json!({"paths": plan.roots.len(), "home": plan.home.is_some(), "contain": req.contain, "watched": watched.len()}),
    );
    let mut hello = SweepOutcome::default();
    hello.report.notes = watched.iter().map(|w| format!("watching {w}")).collect();
    send_sealed(framed, &key, &nonce, &hello).await?;
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
        let home = plan.home.clone();
        let window = plan.recent;
        let mut batch = Vec::new();
        for p in paths {
            let start = offsets.get(&p).copied().unwrap_or(0);
            let (vars, end) = read_new(&p, start, overlap, &redactor);
            offsets.insert(p.clone(), end);
            for v in vars {
                batch.push(Finding {
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
                });
            }
        }
        if batch.is_empty() {
            continue;
        }
        // Guessable values are reported, never contained by the watch itself (see
        // `sweep_ops::guessable`); the redactor's names say which.
        let unguessable: Vec<Finding> = batch
            .iter()
            .filter(|f| keys.get(&f.variable).is_some_and(|k| !k.4))
            .cloned()
            .collect();
        let held_back = batch.len() - unguessable.len();
        sweep_ops::name_findings(&mut batch, &keys);
        let mut contained = Vec::new();
        if req.contain {
            let mut named = unguessable;
            sweep_ops::name_findings(&mut named, &keys);
            contained = sweep_ops::contain(broker, &named, &keys).await;
        }
        let mut notes = Vec::new();
        if req.contain && held_back > 0 {
            notes.push(format!(
                "{held_back} copies of short or guessable values were not contained by the watch (an agent could plant guesses and watch for the containment); contain them with `keyveil sweep --contain`"
            ));
        }
        broker.lock().audit(
            "sweep_watch_found",
            json!({"copies": batch.len(), "contain": req.contain, "at": Timestamp::now()}),
        );
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
    drop(watcher);
    Ok(())
}

/// Records the current length of every regular file below `dir` (only its own entries unless
/// `deep`), so a watch reads only what is added after it starts.
fn prime(dir: &Path, deep: bool, offsets: &mut BTreeMap<PathBuf, u64>) {
    let mut stack = vec![(dir.to_path_buf(), 0u32)];
    let mut seen = 0u32;
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            seen += 1;
            if seen > 1_000_000 {
                return;
            }
            let Ok(m) = e.metadata() else { continue };
            if m.is_file() {
                offsets.insert(e.path(), m.len());
            } else if m.is_dir() && deep && depth < 64 && !m.file_type().is_symlink() {
                stack.push((e.path(), depth + 1));
            }
        }
    }
}

/// Reads `path` from `start` (less `overlap`), at most [`MAX_READ`] bytes, never through a
/// symlink; returns the variables found and the offset read to. A file that shrank (rewritten)
/// is read from 0.
fn read_new(
    path: &Path,
    start: u64,
    overlap: u64,
    redactor: &crate::redact::Redactor,
) -> (BTreeSet<String>, u64) {
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags =
        rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
    else {
        return (BTreeSet::new(), start);
    };
    let Ok(meta) = f.metadata() else {
        return (BTreeSet::new(), start);
    };
    if !meta.is_file() {
        return (BTreeSet::new(), start);
    }
    let len = meta.len();
    let from = if len < start {
        0
    } else {
        start.saturating_sub(overlap)
    };
    if f.seek(std::io::SeekFrom::Start(from)).is_err() {
        return (BTreeSet::new(), start);
    }
    let mut buf = zeroize::Zeroizing::new(Vec::new());
    let n = f.take(MAX_READ).read_to_end(&mut buf).unwrap_or(0) as u64;
    let mut found: BTreeSet<String> = redactor.find_leaks(&buf).into_iter().collect();
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
    (found, from + n)
}
