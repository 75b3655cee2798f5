//! The broker's supervisor: what `keyveil daemon --foreground` really starts.
//!
//! A granted child gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the broker even on
//! `kill -9`. But that covers the direct child only: its own children (the `sleep` of a shell
//! script, a test runner's workers, anything that daemonises with `setsid`) would be re-parented
//! to init and keep running with the values in their environment.
//!
//! So the daemon is two processes. The supervisor marks itself a *child subreaper*
//! (`PR_SET_CHILD_SUBREAPER`) and starts the broker (`daemon --foreground --supervised`) as its
//! child. Every process orphaned below the broker is then re-parented to the supervisor instead
//! of init, whatever its process group or session. When the broker exits, for any reason
//! (`daemon stop`, a crash, `kill -9`), the supervisor kills every process it holds, repeating
//! until none is left (killing one re-parents its own children to us), and exits with the
//! broker's status.
//!
//! While the broker runs, a run's processes are not orphaned to the supervisor: each run has a
//! reaper of its own (`reap.rs`) that holds its whole tree. Only when a reaper is killed (the
//! agent can `kill -9` it) or gives up does its tree come here; the broker sees that (the
//! reaper exits without its report), kills every child of the supervisor but itself, and
//! sends the supervisor `SIGUSR1`, which does the same (the broker does not rely on it alone:
//! the agent can `SIGSTOP` the supervisor, and a stopped process acts on no signal). Nothing polls: the supervisor
//! blocks in `wait` and in a signal wait, and costs no CPU while nothing happens.
//!
//! The supervisor holds no secret and never talks to clients; it forwards SIGTERM, SIGINT and
//! SIGHUP to the broker, which stops gracefully. Limits: killing the supervisor first (it is a
//! process of the same user) removes this safety net, not the broker's own clean-up; a process
//! that is not a descendant of the broker is not ours to kill.
//!
//! Linux only (subreapers are a Linux feature); elsewhere the broker runs unsupervised.

use anyhow::Result;

/// The supervisor's pid, recorded by a broker started with `--supervised` (its parent).
static SUPERVISOR: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Records that this process is a broker started by a supervisor (its parent), for
/// [`request_sweep`].
pub fn mark_supervised() {
    if let Some(p) = rustix::process::getppid() {
        let _ = SUPERVISOR.set(p.as_raw_nonzero().get());
    }
}

/// Kills every process re-parented to the supervisor (a run whose reaper was killed left its
/// tree there): the broker does it itself, on a thread of its own, and also asks the
/// supervisor (`SIGUSR1`). Doing it here too matters: the agent can `SIGSTOP` the supervisor
/// (a process of the same user), which then acts on no signal, while its children can still
/// be killed by us. A no-op for an unsupervised broker, or once the supervisor is gone (then
/// this process is no longer its child, and the pid may name another process).
pub fn request_sweep() {
    let Some(&sup) = SUPERVISOR.get() else {
        return;
    };
    let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
    if parent == Some(sup)
        && let Some(p) = rustix::process::Pid::from_raw(sup)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::USR1);
        std::thread::spawn(move || imp::kill_other_children(sup));
    }
}

/// Runs the supervisor (Linux) or the broker directly (elsewhere); returns the exit code.
/// `bootstrap` passes `--bootstrap-stdin` on to the broker (its stdin and stdout are inherited).
pub fn main(bootstrap: bool) -> Result<i32> {
    imp::main(bootstrap)
}

fn broker_args(bootstrap: bool) -> Vec<&'static str> {
    let mut a = vec!["daemon", "--foreground", "--supervised"];
    if bootstrap {
        a.push("--bootstrap-stdin");
    }
    a
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use anyhow::{Context, Result};

    pub fn kill_other_children(_parent: i32) {}

    pub fn main(bootstrap: bool) -> Result<i32> {
        let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
        let status = std::process::Command::new(exe)
            .args(super::broker_args(bootstrap))
            .status()
            .context("cannot start the broker")?;
        Ok(status.code().unwrap_or(1))
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::time::{Duration, Instant};

    use anyhow::{Context, Result};
    use rustix::process::{Pid, Signal, WaitOptions};

    pub fn main(bootstrap: bool) -> Result<i32> {
        let _ =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .context("cannot become a child subreaper")?;
        // Handlers first, so a signal that arrives while the broker starts is forwarded, not
        // fatal to the supervisor.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let signals = rt
            .block_on(async {
                use tokio::signal::unix::{SignalKind, signal};
                Ok::<_, std::io::Error>((
                    [
                        (signal(SignalKind::terminate())?, Signal::TERM),
                        (signal(SignalKind::interrupt())?, Signal::INT),
                        (signal(SignalKind::hangup())?, Signal::HUP),
                    ],
                    signal(SignalKind::user_defined1())?,
                ))
            })
            .context("cannot install signal handlers")?;

        let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
        let broker = std::process::Command::new(exe)
            .args(super::broker_args(bootstrap))
            .spawn()
            .context("cannot start the broker")?;
        let broker_pid = i32::try_from(broker.id()).context("pid out of range")?;
        drop(broker); // reaped below, by `wait`
        std::thread::spawn(move || forward(rt, signals, broker_pid));

        let status = loop {
            match rustix::process::wait(WaitOptions::empty()) {
                Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == broker_pid => {
                    break status;
                }
                // An orphan of a run exited: reaped.
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("waiting for the broker"),
            }
        };
        let killed = kill_orphans();
        if killed > 0 {
            tracing::warn!(
                killed,
                "the broker exited; killed the processes its runs left behind"
            );
        }
        Ok(status
            .exit_status()
            .or_else(|| status.terminating_signal().map(|s| 128 + s))
            .unwrap_or(1))
    }

    /// Forwards SIGTERM, SIGINT and SIGHUP to the broker; on SIGUSR1 (from the broker: a
    /// run's reaper died and its tree was re-parented here) kills every orphan it holds.
    fn forward(
        rt: tokio::runtime::Runtime,
        signals: (
            [(tokio::signal::unix::Signal, Signal); 3],
            tokio::signal::unix::Signal,
        ),
        broker_pid: i32,
    ) {
        let Some(broker) = Pid::from_raw(broker_pid) else {
            return;
        };
        let ([(mut term, t), (mut int, i), (mut hup, h)], mut usr1) = signals;
        rt.block_on(async move {
            loop {
                let sig = tokio::select! {
                    _ = term.recv() => t,
                    _ = int.recv() => i,
                    _ = hup.recv() => h,
                    _ = usr1.recv() => {
                        sweep(broker_pid);
                        continue;
                    }
                };
                let _ = rustix::process::kill_process(broker, sig);
            }
        });
    }

    /// Kills every child of this process until it has none left at all (at most 2 s); returns
    /// how many were killed. "None left" is what `wait` says (`ECHILD`), not a look at
    /// `/proc`: a dying process whose leader is already a zombie still holds children that
    /// come to us only when its last thread exits. Only our own children are touched: a
    /// child's pid cannot be reused before we reap it, so no unrelated process can be hit.
    fn kill_orphans() -> usize {
        let me = std::process::id() as i32;
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed = 0;
        while reap() && Instant::now() <= deadline {
            for pid in crate::reap::tree::children(me) {
                if let Some(p) = Pid::from_raw(pid)
                    && rustix::process::kill_process(p, Signal::KILL).is_ok()
                {
                    killed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        killed
    }

    /// Kills every child of the supervisor but the broker, repeating until none is left (at
    /// most 2 s): each is a process of a run whose reaper was killed. It still holds the run's
    /// values in its environment.
    fn sweep(broker_pid: i32) {
        let killed = kill_children_but(std::process::id() as i32, broker_pid);
        if killed > 0 {
            tracing::warn!(
                killed,
                "killed processes of a run whose reaper was killed: nothing started under a grant outlives its run"
            );
        }
    }

    /// The broker's half of [`super::request_sweep`]: kills every child of `parent` (the
    /// supervisor) but this process.
    pub fn kill_other_children(parent: i32) {
        let killed = kill_children_but(parent, std::process::id() as i32);
        if killed > 0 {
            tracing::warn!(
                killed,
                "killed processes of a run whose reaper was killed (re-parented to the supervisor)"
            );
        }
    }

    /// Kills every running child of `parent` except `keep`, repeating until none is left (at
    /// most 2 s; killing one re-parents its own children to `parent`); returns how many were
    /// signalled. Each is pinned with a pidfd and checked to still be a child of `parent`, so
    /// a pid reused meanwhile is never signalled.
    fn kill_children_but(parent: i32, keep: i32) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut killed = 0usize;
        loop {
            let orphans: Vec<i32> = crate::reap::tree::children(parent)
                .into_iter()
                .filter(|&p| p != keep)
                .collect();
            if orphans.is_empty() || Instant::now() > deadline {
                return killed;
            }
            for pid in orphans {
                let Some(p) = Pid::from_raw(pid) else {
                    continue;
                };
                let Ok(fd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                else {
                    continue;
                };
                if crate::reap::tree::stat(pid).is_some_and(|st| st.ppid == parent)
                    && rustix::process::pidfd_send_signal(&fd, Signal::KILL).is_ok()
                {
                    killed += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reaps every child that has ended; `false` when this process has no child left at all.
    fn reap() -> bool {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}
