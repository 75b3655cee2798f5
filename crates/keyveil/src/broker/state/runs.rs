//! Runs in progress ([`LiveRun`]) and what stopping them achieved ([`RunsStopped`]).

use jiff::Timestamp;
use serde::Serialize;

use super::inner::Inner;

/// A run in progress.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LiveRun {
    /// Run id.
    pub id: String,
    /// Grant id.
    pub grant_id: String,
    /// The process group the run started in: the pid of its reaper (Linux; the command is the
    /// reaper's child and starts in that group, which it may leave), or of the command.
    pub pgid: i32,
    /// argv as the requester gave it, every whole value masked (`card_redact.rs`).
    pub argv: Vec<String>,
    /// Start.
    pub started_at: Timestamp,
    /// How the run's processes ended, once they have (see [`super::Inner::runs_ended`]).
    #[serde(skip)]
    pub ended: tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>,
    /// The run's egress proxy, when a variable of it is bound to hosts (closed when the run
    /// ends, and by its grant's end).
    #[serde(skip)]
    pub egress: Option<std::sync::Arc<crate::broker::egress::RunEgress>>,
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

impl Inner {
    /// The live runs.
    pub(crate) fn runs(&self) -> impl Iterator<Item = &LiveRun> {
        self.runs.values()
    }

    /// Whether a run under this grant is live.
    pub(crate) fn grant_has_runs(&self, grant_id: &str) -> bool {
        self.runs.values().any(|r| r.grant_id == grant_id)
    }

    /// Registers a run that started.
    pub(crate) fn insert_run(&mut self, run: LiveRun) {
        self.runs.insert(run.id.clone(), run);
    }

    /// Forgets a run that ended; returns it.
    pub(crate) fn remove_run(&mut self, id: &str) -> Option<LiveRun> {
        self.runs.remove(id)
    }

    /// Takes a live run's egress proxy (to close it).
    pub(crate) fn take_run_egress(
        &mut self,
        id: &str,
    ) -> Option<std::sync::Arc<crate::broker::egress::RunEgress>> {
        self.runs.get_mut(id).and_then(|r| r.egress.take())
    }
}
