//! Working directories watched between runs (issue 21, item 3): the write-side scan of a run
//! in a watched directory costs the events the run caused, not one `lstat` per file of the
//! tree (`scan/watch.rs`, `docs/write-side.md`, "Watched working directories").
//!
//! The first run of a grant in a directory is walked, as every run was before; once it has
//! ended, a watch of that directory is built in the background (one readdir and one
//! `inotify_add_watch` per folder). The next runs there take a [`Ticket`] before their child is
//! spawned and are scanned from it. A watch is kept while a grant that ran in its directory
//! lives: dropped when the last such grant is revoked or expires, and every watch when the
//! vault locks. At most [`MAX_TREES`] directories are watched, with at most a quarter of the
//! user's inotify watch limit in all (the rest is left to `keyveil sweep --watch`, editors and
//! build tools). A directory whose watch could not be built (over that share, another file
//! system inside, nested too deep) is walked at every run and not tried again while its grants
//! live; a watch that gave up (queue overflow, a folder moved) is built again after the run
//! that found out, which is walked.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::Broker;
use crate::redact::Redactor;
use crate::scan::watch::{self, Ticket, TreeWatch};
use crate::scan::{Method, ScanReport, ScanScope};

/// Most working directories watched at once.
pub(crate) const MAX_TREES: usize = 8;

/// Where a directory's watch is.
enum State {
    /// Being built after a walked run.
    Building,
    /// Built: runs take tickets from it.
    Ready(Arc<Mutex<TreeWatch>>),
    /// Could not be built: its runs are walked.
    Failed,
}

/// One watched (or unwatchable) working directory.
struct Entry {
    /// Canonical path.
    root: PathBuf,
    /// Grants that ran in it: it is kept while one of them lives.
    grants: HashSet<String>,
    state: State,
    /// Folders watched (for the share of the user's limit).
    dirs: usize,
}

/// The broker's watched working directories (held in its state, behind its lock).
#[derive(Default)]
pub(crate) struct TreeWatches {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for TreeWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatches")
            .field("trees", &self.entries.len())
            .finish()
    }
}

impl TreeWatches {
    fn find(&mut self, root: &Path) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.root == root)
    }

    /// The ready watch of `root` for a run of `grant_id` about to start (the grant now keeps
    /// it), or why there is none.
    pub(crate) fn get(
        &mut self,
        root: &Path,
        grant_id: &str,
    ) -> Result<Arc<Mutex<TreeWatch>>, &'static str> {
        let e = self.find(root).ok_or(watch::NO_WATCH)?;
        let w = match &e.state {
            State::Ready(w) => w.clone(),
            State::Building => return Err(watch::BUILDING),
            State::Failed => return Err(watch::UNWATCHABLE),
        };
        e.grants.insert(grant_id.to_owned());
        Ok(w)
    }

    /// After a walked run of `grant_id` in `root`: true when the caller is to build its watch
    /// (then marked as being built), false when one is built, being built, cannot be built, or
    /// no more may be. A watch that gave up is replaced.
    pub(crate) fn claim(&mut self, root: &Path, grant_id: &str) -> bool {
        if let Some(e) = self.find(root) {
            e.grants.insert(grant_id.to_owned());
            let gave_up = match &e.state {
                State::Ready(w) => w
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .broken()
                    .is_some(),
                State::Building | State::Failed => false,
            };
            if !gave_up {
                return false;
            }
            e.state = State::Building;
            e.dirs = 0;
            return true;
        }
        if self.entries.len() >= MAX_TREES {
            return false;
        }
        self.entries.push(Entry {
            root: root.to_path_buf(),
            grants: HashSet::from([grant_id.to_owned()]),
            state: State::Building,
            dirs: 0,
        });
        true
    }

    /// Folders a new watch may still hold: a quarter of `limit` (the user's inotify watch
    /// limit) less what the other watches hold.
    pub(crate) fn share_left(&self, limit: usize) -> usize {
        let used: usize = self.entries.iter().map(|e| e.dirs).sum();
        (limit / 4).saturating_sub(used)
    }

    /// The build of `root`'s watch ended. Dropped if its grants ended meanwhile.
    pub(crate) fn built(&mut self, root: &Path, watch: std::io::Result<TreeWatch>) {
        let Some(e) = self.find(root) else {
            return;
        };
        if !matches!(e.state, State::Building) {
            return;
        }
        match watch {
            Ok(w) => {
                e.dirs = w.dirs();
                e.state = State::Ready(Arc::new(Mutex::new(w)));
            }
            Err(_) => e.state = State::Failed,
        }
    }

    /// A grant ended: directories no live grant ran in are no longer watched.
    pub(crate) fn forget_grant(&mut self, grant_id: &str) {
        for e in &mut self.entries {
            e.grants.remove(grant_id);
        }
        self.entries.retain(|e| !e.grants.is_empty());
    }

    /// Keeps the directories of grants for which `live` is true.
    pub(crate) fn prune(&mut self, live: impl Fn(&str) -> bool) {
        for e in &mut self.entries {
            e.grants.retain(|g| live(g));
        }
        self.entries.retain(|e| !e.grants.is_empty());
    }

    /// Drops every watch (the vault locked).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// (directories watched, folders watched in all).
    pub(crate) fn counts(&self) -> (usize, usize) {
        let ready = self
            .entries
            .iter()
            .filter(|e| matches!(e.state, State::Ready(_)))
            .count();
        (ready, self.entries.iter().map(|e| e.dirs).sum())
    }
}

/// A run of `grant_id` in `cwd` is about to be spawned: its ticket in the watch of `cwd`, if
/// one is ready (the run is then scanned from its events), or why not (it is walked).
/// Events queued since the last run are taken first (on a blocking thread: a folder created
/// meanwhile is watched and read).
pub(crate) async fn ticket(
    broker: &Broker,
    cwd: &str,
    grant_id: &str,
) -> Result<Ticket, &'static str> {
    let root = std::fs::canonicalize(cwd).map_err(|_| watch::NO_WATCH)?;
    let watch = broker.lock().tree_watches_mut().get(&root, grant_id)?;
    tokio::task::spawn_blocking(move || Ticket::begin(&watch))
        .await
        .unwrap_or(Err(watch::NO_WATCH))
}

/// The user's inotify watch limit. Debug builds (the integration tests) read it instead from
/// the file named in `KEYVEIL_TEST_WATCH_LIMIT` while it exists, so a test reaches it with a
/// small tree.
fn watch_limit() -> usize {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os("KEYVEIL_TEST_WATCH_LIMIT").filter(|p| !p.is_empty())
        && let Ok(s) = std::fs::read_to_string(p)
        && let Ok(n) = s.trim().parse()
    {
        return n;
    }
    watch::user_watch_limit()
}

/// The write-side scan of a run that has ended (every process of it), from its `ticket` when
/// there is one ([`crate::scan::scan_watched`]). A run that was walked has the watch of its
/// directory built in the background for the next runs. `None` if the scan's task failed.
pub(crate) async fn scan_run(
    broker: &Arc<Broker>,
    scope: ScanScope,
    redactor: &Redactor,
    ticket: Result<Ticket, &'static str>,
    grant_id: &str,
) -> Option<(ScanReport, Method)> {
    let cwd = scope.cwd.clone();
    let scanner = redactor.clone();
    let (report, method) = tokio::task::spawn_blocking(move || {
        let r = crate::scan::scan_watched(&scope, &scanner, ticket.as_ref().map_err(|e| *e));
        drop(ticket);
        r
    })
    .await
    .ok()?;
    if method != Method::Watched {
        build_later(broker, &cwd, grant_id);
    }
    Some((report, method))
}

/// Builds the watch of `cwd` in the background if it is wanted ([`TreeWatches::claim`]).
fn build_later(broker: &Arc<Broker>, cwd: &Path, grant_id: &str) {
    let Ok(root) = std::fs::canonicalize(cwd) else {
        return;
    };
    let share = {
        let mut inner = broker.lock();
        // Not for a grant that ended with this run (a one-shot approval).
        let now = jiff::Timestamp::now();
        if !inner.grants().get(grant_id).is_some_and(|g| g.live(now)) {
            return;
        }
        let w = inner.tree_watches_mut();
        if !w.claim(&root, grant_id) {
            return;
        }
        w.share_left(watch_limit())
    };
    let broker = broker.clone();
    tokio::task::spawn_blocking(move || {
        let w = TreeWatch::new(&root, share);
        broker.lock().tree_watches_mut().built(&root, w);
    });
}
