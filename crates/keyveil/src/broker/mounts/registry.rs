//! The list of mounts (`mounts.json`) and what the broker knows of each now.

use super::*;

/// One mount as `mounts.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Stored {
    pub(super) path: String,
    pub(super) environment: String,
    pub(super) created_at: Timestamp,
    pub(super) dev: u64,
    pub(super) ino: u64,
    /// The FIFO's modification time when the broker made it (ns since the epoch): a write
    /// into a FIFO moves it, so a change means someone else wrote into the pipe.
    #[serde(default)]
    pub(super) mtime_ns: Option<i128>,
}

/// One mount and what the broker knows of it now.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) stored: Stored,
    pub(super) state: &'static str,
    pub(super) reads: u64,
    pub(super) refused: u64,
    /// The last events, oldest first, each with its time ([`RECENT`] at most; see
    /// [`push_event`] for which one goes).
    pub(super) recent: Vec<Event>,
    /// A read is being served (the FIFO is open for writing).
    pub(super) busy: bool,
    /// Holders last refused, by (pid, start time): refused again silently.
    pub(super) refused_holders: Vec<(u32, u64)>,
}

/// Most events the listing keeps per path.
pub(super) const RECENT: usize = 8;

/// One event of a mount's listing, in words (never a value), its time first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Event {
    /// What the listing shows.
    pub(super) words: String,
    /// A stop, a take-back, a denial or a cut in the audit log: pushed out only by another.
    pub(super) alarm: bool,
}

/// Whether what a note says is one a human must not miss (see [`Event::alarm`]).
fn is_alarm(words: &str) -> bool {
    words.starts_with("STOPPED")
        || words.starts_with("taken back")
        || words.starts_with("the audit log")
        || (words.starts_with("request #") && words.ends_with(" denied"))
}

/// Adds `words` (said at `when`) to a mount's recent events: when there are more than
/// [`RECENT`], the oldest that is not an alarm goes (the oldest alarm only when all are), so a
/// flood of mundane refusals (an agent's `O_RDWR` openers) cannot push a stop or a denial out.
pub(super) fn push_event(recent: &mut Vec<Event>, when: &str, words: &str) {
    recent.push(Event {
        words: format!("{}: {words}", crate::when::human_time(when)),
        alarm: is_alarm(words),
    });
    if recent.len() > RECENT {
        let i = recent.iter().position(|e| !e.alarm).unwrap_or(0);
        recent.remove(i);
    }
}

/// What the listing said of an unmounted path: reads, refusals, the recent events.
pub(super) type Gone = (u64, u64, Vec<Event>);

/// The mounts of this broker's home, behind their own mutex (never held across an `await`, and
/// never while the broker's state lock is taken).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub(super) file: Option<PathBuf>,
    pub(super) mounts: Mutex<BTreeMap<String, Entry>>,
    /// What the listing said of each path unmounted since the broker started (reads, refusals,
    /// the last event): a mount made again at that path carries it on, so unmounting and
    /// mounting again (no factor needed for either) cannot wipe a refusal or a stop from
    /// `keyveil mounts`. The audit log keeps every one in any case.
    pub(super) gone: Mutex<BTreeMap<String, Gone>>,
}

impl Registry {
    /// The mounts listed in `file` (a missing or unreadable list is empty; one that cannot be
    /// parsed is kept aside as `mounts.json.bad`).
    pub(crate) fn load(file: PathBuf) -> Registry {
        let stored: Vec<Stored> = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "mounts.json cannot be read; kept aside as mounts.json.bad");
                let _ = std::fs::rename(&file, file.with_extension("json.bad"));
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let mounts = stored
            .into_iter()
            .map(|s| {
                (
                    s.path.clone(),
                    Entry {
                        stored: s,
                        state: "locked",
                        reads: 0,
                        refused: 0,
                        recent: Vec::new(),
                        busy: false,
                        refused_holders: Vec::new(),
                    },
                )
            })
            .collect();
        Registry {
            file: Some(file),
            mounts: Mutex::new(mounts),
            gone: Mutex::default(),
        }
    }

    /// Keeps what the listing said of an unmounted entry, for a mount made there again.
    pub(super) fn keep_gone(&self, e: &Entry) {
        if e.reads == 0 && e.refused == 0 && e.recent.is_empty() {
            return;
        }
        let mut g = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(
            e.stored.path.clone(),
            (e.reads, e.refused, e.recent.clone()),
        );
    }

    /// Gives a new mount at `path` what the listing said of the one unmounted there before. The
    /// record is kept until [`Registry::drop_gone`] (the new mount recorded): a mount that fails
    /// after this loses nothing.
    pub(super) fn carry_gone(&self, e: &mut Entry) {
        let g = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((reads, refused, recent)) = g.get(&e.stored.path) {
            e.reads += reads;
            e.refused += refused;
            e.recent = recent
                .iter()
                .map(|ev| Event {
                    words: format!(
                        "{} (before an unmount and a new mount at this path)",
                        ev.words
                    ),
                    alarm: ev.alarm,
                })
                .collect();
        }
    }

    /// Forgets what [`Registry::carry_gone`] gave the mount at `path`, now recorded.
    pub(super) fn drop_gone(&self, path: &str) {
        let mut g = self.gone.lock().unwrap_or_else(|p| p.into_inner());
        g.remove(path);
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the list (atomically: a temporary file renamed over it, mode 0600).
    pub(super) fn save(&self, m: &BTreeMap<String, Entry>) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let list: Vec<&Stored> = m.values().map(|e| &e.stored).collect();
        let text = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
        let tmp = file.with_extension("json.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)
    }

    /// Counts a read (or a refusal) of the mount at `path` and adds what happened to its recent
    /// events. Every caller audits the same words (`listed`) first: at unlock the listing is
    /// rebuilt from the verified audit log (`history`).
    pub(super) fn note(&self, path: &str, refused: bool, words: String) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(path) {
            if refused {
                e.refused += 1;
            } else {
                e.reads += 1;
            }
            push_event(&mut e.recent, &Timestamp::now().to_string(), &words);
        }
    }
}

pub(super) fn info(e: &Entry) -> op::MountInfo {
    op::MountInfo {
        path: e.stored.path.clone(),
        environment: e.stored.environment.clone(),
        created_at: e.stored.created_at,
        state: e.state.to_owned(),
        reads: e.reads,
        refused: e.refused,
        last: e.recent.last().map(|ev| ev.words.clone()),
        recent: e.recent.iter().rev().map(|ev| ev.words.clone()).collect(),
    }
}
