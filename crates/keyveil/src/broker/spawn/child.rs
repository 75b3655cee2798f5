//! A granted process started (under its reaper on Linux), the handle that stops its whole
//! tree, and how its end is known.

use std::process::Stdio;
use std::time::Duration;

use keyveil_vault::SecretValue;
use tokio::io::AsyncWriteExt;

pub(crate) use crate::reap::KILL_GRACE;
/// Default run timeout (seconds).
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u64 = 600;

/// What to start.
pub(crate) struct SpawnSpec {
    /// argv.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// Pass-through environment of the requester.
    pub env: Vec<(String, String)>,
    /// Granted values.
    pub values: Vec<(String, SecretValue)>,
    /// Stdin bytes.
    pub stdin: Option<String>,
    /// The verified, open executable (see `pin::open_verified`). ELF binaries are executed
    /// through this descriptor (`/proc/self/fd/N`), so the bytes checked are the bytes run;
    /// scripts are executed by their canonical path (an interpreter reads `$0` from it).
    pub exe: std::fs::File,
    /// Files the run reads as they were checked (canonical path, SHA-256): the script operand,
    /// a file an interpreter option names, the executable when it is a script. The reaper
    /// binds a sealed copy of each over its path in the run's own mount namespace
    /// (`reap/seal.rs`).
    pub sealed: Vec<(String, String)>,
}

/// How a run ended for the processes it started: what the broker can say after a revocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeEnd {
    /// Processes of the run that were signalled and are gone (the leader included when it was
    /// stopped; 0 when everything had exited on its own).
    pub killed: u32,
    /// Processes the run's reaper could not kill within its bound.
    pub left: u32,
    /// Whether the reaper reported the whole tree gone. `false` when it reported `left`, when
    /// it was itself killed before it could report (the supervisor is then asked to kill what
    /// was re-parented to it), or on systems without a reaper.
    pub confirmed: bool,
}

/// How the broker reaches a run's processes: its reaper (Linux, through a pidfd, so a reused
/// pid is never signalled), or its process group (elsewhere).
#[derive(Clone)]
pub(crate) struct RunHandle {
    pid: i32,
    #[cfg(target_os = "linux")]
    pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl RunHandle {
    /// Sends `sig` to the reaper (Linux) or the process group; whether it was delivered.
    fn signal(&self, sig: rustix::process::Signal) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.pidfd {
            return rustix::process::pidfd_send_signal(fd, sig).is_ok();
        }
        signal_group(self.pid, sig);
        true
    }

    /// Ends the run: SIGTERM to every process of it now, SIGKILL to whatever is left after
    /// [`KILL_GRACE`] (the reaper does both; `SIGUSR1` tells it not to wait any longer). A
    /// reaper that has not exited [`REAPER_BACKSTOP`] later is killed itself and the
    /// supervisor is asked to kill what was re-parented to it.
    pub(crate) fn terminate(&self) {
        use rustix::process::Signal;
        self.signal(Signal::TERM);
        let h = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(KILL_GRACE).await;
            if cfg!(target_os = "linux") {
                h.signal(Signal::USR1);
                tokio::time::sleep(REAPER_BACKSTOP).await;
                if h.signal(Signal::KILL) {
                    crate::supervise::request_sweep();
                }
            } else {
                h.signal(Signal::KILL);
            }
        });
    }

    /// Kills every process of the run now (SIGKILL; through the reaper on Linux).
    pub(crate) fn kill_now(&self) {
        if cfg!(target_os = "linux") {
            self.signal(rustix::process::Signal::USR1);
        } else {
            self.signal(rustix::process::Signal::KILL);
        }
    }

    /// The leader exited: without a reaper, the rest of its process group is killed (the
    /// reaper kills its whole tree itself).
    fn leader_exited(&self) {
        if !cfg!(target_os = "linux") {
            signal_group(self.pid, rustix::process::Signal::KILL);
        }
    }
}

/// The run's reaper (or, without one, its leader) exited: reads the reaper's report, which
/// has the leader's own status and what became of the rest of the tree. Without a report (the
/// reaper was killed, the agent can do that) or with processes left, its tree went to the
/// supervisor, which is asked to kill it now: the output pipes stay open while any of it
/// lives, so this cannot wait for the end of the output.
pub(super) fn reaper_exited(
    handle: &RunHandle,
    pipe: &mut Option<std::fs::File>,
    ended: &tokio::sync::watch::Sender<Option<TreeEnd>>,
) -> Option<crate::reap::Report> {
    handle.leader_exited();
    let report = pipe.take().and_then(|mut f| {
        use std::io::Read;
        let mut line = String::new();
        // Non-blocking: the line was written before the reaper exited, or never.
        let _ = f.read_to_string(&mut line);
        crate::reap::Report::parse(&line)
    });
    if cfg!(target_os = "linux") && report.is_none_or(|r| r.left > 0) {
        tracing::warn!(
            left = report.map(|r| r.left),
            "a run's reaper did not confirm its processes gone; asking the supervisor to kill what it holds"
        );
        crate::supervise::request_sweep();
    }
    // Known now, not when the output ends (a client that does not read may hold that back):
    // a revocation waiting on this run answers at once.
    let _ = ended.send(Some(tree_end(report)));
    report
}

/// What a reaper's report (or its absence) says about the run's processes.
pub(super) fn tree_end(report: Option<crate::reap::Report>) -> TreeEnd {
    match report {
        Some(r) => TreeEnd {
            killed: r.killed,
            left: r.left,
            confirmed: r.left == 0,
        },
        None => TreeEnd::default(),
    }
}

/// How long after the reaper was told to kill everything it is killed itself, if it has not
/// exited by then.
const REAPER_BACKSTOP: Duration = Duration::from_secs(3);

/// A started child.
pub(crate) struct Started {
    /// The process the broker started (the reaper on Linux).
    pub(super) child: tokio::process::Child,
    /// Process id of the run's reaper (Linux; the command is its child) or of the command
    /// (elsewhere, also its process-group id).
    pub pid: i32,
    /// Its standard output, until the relay takes it.
    pub(super) stdout: Option<tokio::process::ChildStdout>,
    /// Its standard error, until the relay takes it.
    pub(super) stderr: Option<tokio::process::ChildStderr>,
    /// How its processes are reached.
    pub(super) handle: RunHandle,
    /// The read end of the reaper's report pipe (`crate::reap::Report`).
    pub(super) report: Option<std::fs::File>,
    /// Told how the tree ended, once it has.
    pub(super) ended: tokio::sync::watch::Sender<Option<TreeEnd>>,
}

impl Started {
    /// Tells how the run's processes ended, once they have (for revocation replies).
    pub(crate) fn watch_end(&self) -> tokio::sync::watch::Receiver<Option<TreeEnd>> {
        self.ended.subscribe()
    }

    /// Kills every process of the run now.
    pub(crate) fn kill_now(&self) {
        self.handle.kill_now();
    }
}

impl Drop for Started {
    /// A run dropped before its reaper was seen to exit (a relay cut short) is killed whole:
    /// the reaper is told to kill its tree (killing the reaper itself would hand the tree to
    /// the supervisor), then exits and is reaped by the runtime.
    fn drop(&mut self) {
        if cfg!(target_os = "linux") && self.report.is_some() {
            self.handle.kill_now();
        }
    }
}

/// Spawns the child. Values are moved into the command's environment and the spec's copies are
/// dropped (zeroized) before this returns.
pub(crate) fn start(spec: &mut SpawnSpec) -> std::io::Result<Started> {
    let Some((argv0, args)) = spec.argv.split_first() else {
        return Err(std::io::Error::other("empty command"));
    };
    let (program, keep_fd) = exec_target(&spec.exe)?;
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut keep_fds: Vec<i32> = keep_fd.into_iter().collect();
    #[cfg(target_os = "linux")]
    let (report_r, report_w) = {
        use rustix::pipe::PipeFlags;
        use std::os::fd::AsRawFd;
        let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        keep_fds.push(w.as_raw_fd());
        (r, w)
    };
    #[cfg(target_os = "linux")]
    let mut cmd = {
        use std::os::fd::AsRawFd;
        // The reaper: this executable (the running file, whatever is at its path now).
        let mut c = tokio::process::Command::new("/proc/self/exe");
        c.arg0("keyveil")
            .arg(crate::reap::FLAG)
            .arg(report_w.as_raw_fd().to_string());
        for (path, sha) in &spec.sealed {
            c.arg(crate::reap::seal::SEAL_ARG).arg(path).arg(sha);
        }
        c.arg(program).arg(argv0).args(args);
        c
    };
    #[cfg(not(target_os = "linux"))]
    let mut cmd = {
        let mut c = tokio::process::Command::new(program);
        c.arg0(argv0).args(args);
        c
    };
    cmd.current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(spec.values.iter().map(|(k, v)| (k.as_str(), v.expose())))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Without a reaper, the command itself; with one, see `impl Drop for Started`.
        .kill_on_drop(!cfg!(target_os = "linux"));
    crate::harden::prepare_child(cmd.as_std_mut(), keep_fds);
    let spawned = cmd.spawn();
    // The values now live only in the command (dropped below) and the child.
    spec.values.clear();
    drop(cmd);
    // Only the reaper writes its report: the broker keeps the read end.
    #[cfg(target_os = "linux")]
    drop(report_w);
    let mut child = spawned?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    // Our child cannot be reaped before we wait for it: the pidfd names the reaper itself.
    #[cfg(target_os = "linux")]
    let handle = RunHandle {
        pid,
        pidfd: rustix::process::Pid::from_raw(pid)
            .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            .map(std::sync::Arc::new),
    };
    #[cfg(not(target_os = "linux"))]
    let handle = RunHandle { pid };
    #[cfg(target_os = "linux")]
    let report = Some(std::fs::File::from(report_r));
    #[cfg(not(target_os = "linux"))]
    let report = None;
    if let (Some(input), Some(mut w)) = (spec.stdin.take(), child.stdin.take()) {
        tokio::spawn(async move {
            let _ = w.write_all(input.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    Ok(Started {
        child,
        pid,
        stdout,
        stderr,
        handle,
        report,
        ended: tokio::sync::watch::channel(None).0,
    })
}

/// What to execute for a verified open file: `/proc/self/fd/N` (kept open across `exec`) for an
/// ELF binary on Linux; the canonical path for scripts and elsewhere.
fn exec_target(exe: &std::fs::File) -> std::io::Result<(std::path::PathBuf, Option<i32>)> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    let mut magic = [0u8; 4];
    let mut f = exe;
    let n = f.read(&mut magic)?;
    f.rewind()?;
    let fd = exe.as_raw_fd();
    if cfg!(target_os = "linux") && n == 4 && magic == *b"\x7fELF" {
        return Ok((
            std::path::PathBuf::from(format!("/proc/self/fd/{fd}")),
            Some(fd),
        ));
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok((path, None))
}

/// Sends a signal to a process group, ignoring "no such process".
fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}
