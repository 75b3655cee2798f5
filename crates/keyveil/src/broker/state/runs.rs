//! Runs in progress ([`LiveRun`]), their store ([`Runs`]), and what stopping them achieved
//! ([`RunsStopped`]).

use jiff::Timestamp;
use serde::Serialize;

use std::collections::BTreeMap;

/// A run in progress.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveRun {
    /// Run id.
    pub(super) id: String,
    /// Grant id.
    pub(super) grant_id: String,
    /// The process group the run started in: the pid of its reaper (Linux; the command is the
    /// reaper's child and starts in that group, which it may leave), or of the command.
    pub(super) pgid: i32,
    /// argv as the requester gave it, every whole value masked (`card_redact.rs`).
    pub(super) argv: Vec<String>,
    /// Start.
    pub(super) started_at: Timestamp,
    /// How the run's processes ended, once they have (see [`Runs::ended_of`]).
    #[serde(skip)]
    pub(super) ended: tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>,
    /// The run's egress proxy, when a variable of it is bound to hosts (closed when the run
    /// ends, and by its grant's end).
    #[serde(skip)]
    pub(super) egress: Option<std::sync::Arc<crate::broker::egress::RunEgress>>,
}

impl LiveRun {
    /// A run that started now: `id` under grant `grant_id`, in process group `pgid`, its argv
    /// as shown (`argv`, masked), how its processes end (`ended`), its egress proxy.
    pub(crate) fn new(
        id: String,
        grant_id: String,
        pgid: i32,
        argv: Vec<String>,
        ended: tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>,
        egress: Option<std::sync::Arc<crate::broker::egress::RunEgress>>,
    ) -> LiveRun {
        LiveRun {
            id,
            grant_id,
            pgid,
            argv,
            started_at: Timestamp::now(),
            ended,
            egress,
        }
    }

    /// Run id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Grant id.
    pub(crate) fn grant_id(&self) -> &str {
        &self.grant_id
    }

    /// The process group the run started in: the pid of its reaper (Linux; the command is the
    /// reaper's child and starts in that group, which it may leave), or of the command.
    pub(crate) fn pgid(&self) -> i32 {
        self.pgid
    }

    /// argv as the requester gave it, every whole value masked (`card_redact.rs`).
    pub(crate) fn argv(&self) -> &[String] {
        &self.argv
    }

    /// Start.
    pub(crate) fn started_at(&self) -> Timestamp {
        self.started_at
    }
}

/// What stopping some runs achieved: the reply to `revoke` and `lock` says it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RunsStopped {
    /// Runs that were live.
    pub runs: u32,
    /// Their processes that were signalled and are gone.
    pub killed: u32,
    /// Runs whose end was not confirmed: processes left alive, a reaper killed before it could
    /// report, or no end within the wait.
    pub unconfirmed: u32,
}

impl RunsStopped {
    /// As the replies to `revoke` and `lock` carry it.
    pub(crate) fn reply(&self) -> keyveil_proto::op::RunsStopped {
        keyveil_proto::op::RunsStopped {
            runs_stopped: self.runs,
            processes_killed: self.killed,
            runs_unconfirmed: self.unconfirmed,
        }
    }

    /// Waits (at most [`crate::broker::spawn::KILL_GRACE`] + 5 s in all) until each run of `ended` has
    /// ended, and adds up what became of their processes.
    pub(crate) async fn wait(
        ended: Vec<tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>>,
    ) -> RunsStopped {
        let deadline = tokio::time::Instant::now()
            + crate::broker::spawn::KILL_GRACE
            + std::time::Duration::from_secs(5);
        let mut out = RunsStopped::default();
        for mut rx in ended {
            out.runs += 1;
            let end = tokio::time::timeout_at(deadline, rx.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|r| r.ok().and_then(|e| *e));
            match end {
                Some(e) => {
                    out.killed += e.killed;
                    if !e.confirmed {
                        out.unconfirmed += 1;
                    }
                }
                None => out.unconfirmed += 1,
            }
        }
        out
    }
}

/// The live runs, by id.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    by_id: BTreeMap<String, LiveRun>,
}

impl Runs {
    /// The live runs.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &LiveRun> {
        self.by_id.values()
    }

    /// Whether a run under this grant is live.
    pub(crate) fn grant_has_runs(&self, grant_id: &str) -> bool {
        self.by_id.values().any(|r| r.grant_id == grant_id)
    }

    /// Registers a run that started.
    pub(crate) fn insert(&mut self, run: LiveRun) {
        self.by_id.insert(run.id.clone(), run);
    }

    /// Forgets a run that ended; returns it.
    pub(crate) fn remove(&mut self, id: &str) -> Option<LiveRun> {
        self.by_id.remove(id)
    }

    /// Takes a live run's egress proxy (to close it).
    pub(crate) fn take_egress(
        &mut self,
        id: &str,
    ) -> Option<std::sync::Arc<crate::broker::egress::RunEgress>> {
        self.by_id.get_mut(id).and_then(|r| r.egress.take())
    }

    /// Watches on the end of every live run of these grants (to wait for them with
    /// [`RunsStopped::wait`] once the lock is released).
    pub(crate) fn ended_of(
        &self,
        grant_ids: &[String],
    ) -> Vec<tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>> {
        self.by_id
            .values()
            .filter(|r| grant_ids.contains(&r.grant_id))
            .map(|r| r.ended.clone())
            .collect()
    }

    /// The grants live runs are under (each once).
    pub(super) fn grant_ids(&self) -> std::collections::BTreeSet<String> {
        self.by_id.values().map(|r| r.grant_id.clone()).collect()
    }

    /// The process groups of the live runs (their reapers' pids).
    pub(super) fn pgids(&self) -> Vec<u32> {
        self.by_id
            .values()
            .filter_map(|r| u32::try_from(r.pgid).ok())
            .collect()
    }
}
