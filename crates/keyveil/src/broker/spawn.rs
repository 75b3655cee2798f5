//! Starting a granted process and relaying its redacted output.
//!
//! On Linux the broker starts a run's *reaper* (`crate::reap`), a child subreaper that starts
//! the command and holds every process the command starts, whatever process group or session
//! it moves to; revocation, timeouts, `stop` and the leader's exit end that whole tree
//! ([`RunHandle`]). Elsewhere the command is started directly in a process group of its own,
//! which is what revocation signals. Either way the child gets `PR_SET_PDEATHSIG(SIGKILL)` (so
//! it dies with its parent), the requester's pass-through environment plus the granted values,
//! and nothing else. Its stdout and stderr are
//! pipes, read in chunks of up to [`READ_CHUNK`] bytes, each through its own
//! [`keyveil_redact::RedactStream`], and only redacted bytes ever leave this module. A pipe that
//! turns out busy (one read drained a full default-sized pipe) is enlarged to [`PIPE_BYTES`]
//! (Linux), at most [`ENLARGED_PIPES_MAX`] at a time across the broker.
//!
//! The output path copies as little as it can: the redactor appends into a buffer that is moved
//! (not copied) to the relay, written to the client as one frame with a vectored write
//! ([`crate::frame_writer::FrameWriter`]) and then handed back to its reader for reuse.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::redact::Redactor;
use keyveil_vault::SecretValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use keyveil_proto::{OutputMode, RunResult};

/// Grace period between SIGTERM and SIGKILL when a run is stopped.
pub(crate) const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long a stopped run (revoked, timed out, client hung up) waits on a client that does not
/// read its output or its exit reply before abandoning the connection and ending without it.
pub(crate) const ABANDON_AFTER: Duration = Duration::from_secs(KILL_GRACE.as_secs() * 2);
/// Default run timeout (seconds).
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u64 = 600;
/// Read buffer size per stream (bytes): one read takes what the pipe holds, up to this much.
const READ_CHUNK: usize = 1024 * 1024;
/// Capacity asked for a busy child's stdout or stderr pipe (bytes; Linux `F_SETPIPE_SZ`). The
/// default 64 KiB pipe makes a fast writer and the broker take turns every 64 KiB; 1 MiB is
/// the largest an unprivileged process may ask for by default (`/proc/sys/fs/pipe-max-size`).
/// When the kernel refuses, the pipe keeps its default size.
pub(crate) const PIPE_BYTES: usize = 1024 * 1024;
/// Most pipes enlarged at once across the broker. Pipe buffers count against the user's
/// `pipe-user-pages-soft` quota (64 MiB by default), and past it *every* new pipe of the user,
/// in any process, gets a minimal buffer: 16 × 1 MiB keeps the broker to a quarter of it.
pub(crate) const ENLARGED_PIPES_MAX: usize = 16;
/// Default Linux pipe capacity (bytes): a read of this much means the writer is ahead.
const DEFAULT_PIPE_BYTES: usize = 64 * 1024;
/// Pipes currently enlarged (see [`ENLARGED_PIPES_MAX`]).
static ENLARGED_PIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// Largest output buffer (capacity, bytes) handed back to its reader for reuse. Marker
/// expansion can grow a buffer to many times [`READ_CHUNK`]; such a one is dropped instead of
/// being kept for the rest of the run.
const RECYCLE_MAX: usize = 2 * READ_CHUNK;
/// Redacted chunks in flight between the two readers and the relay (each up to
/// [`READ_CHUNK`] bytes and a few markers).
const IN_FLIGHT: usize = 4;

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
}

/// Which stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamKind {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// Why the run was stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Timeout,
    Revoked,
    ClientGone,
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
fn reaper_exited(
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
fn tree_end(report: Option<crate::reap::Report>) -> TreeEnd {
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
    child: tokio::process::Child,
    /// Process id of the run's reaper (Linux; the command is its child) or of the command
    /// (elsewhere, also its process-group id).
    pub pid: i32,
    stdout: Option<tokio::process::ChildStdout>,
    stderr: Option<tokio::process::ChildStderr>,
    handle: RunHandle,
    /// The read end of the reaper's report pipe (`crate::reap::Report`).
    report: Option<std::fs::File>,
    ended: tokio::sync::watch::Sender<Option<TreeEnd>>,
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
            .arg(report_w.as_raw_fd().to_string())
            .arg(program)
            .arg(argv0)
            .args(args);
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

/// One of the [`ENLARGED_PIPES_MAX`] slots, held while its pipe is being read.
struct EnlargedPipe;

impl EnlargedPipe {
    /// Takes a slot and asks for a [`PIPE_BYTES`] pipe; `None` (the pipe keeps its size) when
    /// no slot is free or the kernel refuses.
    fn try_new(fd: std::os::fd::BorrowedFd<'_>) -> Option<EnlargedPipe> {
        use std::sync::atomic::Ordering;
        if !cfg!(target_os = "linux") {
            return None;
        }
        ENLARGED_PIPES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ENLARGED_PIPES_MAX).then_some(n + 1)
            })
            .ok()?;
        let slot = EnlargedPipe;
        #[cfg(target_os = "linux")]
        if let Err(e) = rustix::pipe::fcntl_setpipe_size(fd, PIPE_BYTES) {
            tracing::debug!(error = %e, "cannot enlarge a run's output pipe; keeping its size");
            return None;
        }
        #[cfg(not(target_os = "linux"))]
        let _ = fd;
        Some(slot)
    }
}

impl Drop for EnlargedPipe {
    fn drop(&mut self) {
        ENLARGED_PIPES.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A child's output pipe as the readers take it.
trait OutputPipe: AsyncRead + std::os::fd::AsFd + Send + Unpin {}
impl<T: AsyncRead + std::os::fd::AsFd + Send + Unpin> OutputPipe for T {}

/// Sends a signal to a process group, ignoring "no such process".
fn signal_group(pgid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Runs a started child to completion, relaying redacted output through `sink`.
///
/// `sink` receives `(stream, bytes)` in `Stream` mode; in `Collect` mode output is gathered into
/// the result instead. Stops early (SIGTERM, then SIGKILL after [`KILL_GRACE`]) on timeout, on
/// `cancel` (revocation) or on `client_gone`.
pub(crate) async fn relay(
    mut started: Started,
    spec_timeout: Duration,
    output: OutputMode,
    redactor: &Redactor,
    cancel: CancellationToken,
    client_gone: CancellationToken,
    sink: &mut OutputSink,
) -> RunResult {
    let t0 = Instant::now();
    let (tx, mut rx) = mpsc::channel::<Chunk>(IN_FLIGHT);
    let mut readers = Vec::new();
    // Buffers go back to the reader they came from once written (index: StreamKind as usize).
    let mut recycle: [Option<mpsc::Sender<Vec<u8>>>; 2] = [None, None];
    for (kind, pipe) in [
        (
            StreamKind::Stdout,
            started
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn OutputPipe>),
        ),
        (
            StreamKind::Stderr,
            started
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn OutputPipe>),
        ),
    ] {
        let Some(pipe) = pipe else { continue };
        let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT + 1);
        if let Some(slot) = recycle.get_mut(kind as usize) {
            *slot = Some(back_tx);
        }
        readers.push(tokio::spawn(pump(
            pipe,
            kind,
            redactor.clone(),
            tx.clone(),
            back_rx,
            // Someone watches a streamed run: a quiet program's held-back tail is let out.
            matches!(output, OutputMode::Stream).then_some(QUIET),
        )));
    }
    drop(tx);

    let handle = started.handle.clone();
    let mut result = RunResult::default();
    let cap = match output {
        OutputMode::Collect { cap_bytes } => Some(cap_bytes),
        OutputMode::Stream => None,
    };
    let mut out_buf: Vec<u8> = Vec::new();
    let mut err_buf: Vec<u8> = Vec::new();
    let mut stop: Option<Stop> = None;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut report: Option<crate::reap::Report> = None;
    let deadline = tokio::time::sleep(spec_timeout);
    tokio::pin!(deadline);
    let mut sink_open = true;
    let mut streams_open = true;

    // Phase 1: until the child exits (or is stopped) and both streams reach EOF.
    loop {
        if status.is_some() && !streams_open {
            break;
        }
        tokio::select! {
            msg = rx.recv(), if streams_open => match msg {
                Some(Chunk { kind, bytes, redactions }) => {
                    result.redactions += redactions as u64;
                    match cap {
                        Some(cap) => {
                            let buf = if kind == StreamKind::Stdout { &mut out_buf } else { &mut err_buf };
                            let room = cap.saturating_sub(buf.len());
                            if bytes.len() > room {
                                result.truncated = true;
                            }
                            buf.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
                        }
                        None if sink_open => {
                            // A client that stops reading blocks this write (the socket is
                            // full); the timeout, a revocation, the client hanging up and the
                            // leader exiting still end the process group meanwhile. Until the
                            // run is stopped the write is finished (never cut mid-frame);
                            // once it is, a client that still does not read within
                            // [`ABANDON_AFTER`] is abandoned: the write is dropped (the frame
                            // may be cut, so the sink refuses every later write) and the run
                            // ends without it.
                            let write = send_output(sink, kind, &bytes);
                            tokio::pin!(write);
                            let mut give_up = stop.map(|_| abandon_timer());
                            let sent = loop {
                                let was_running = stop.is_none();
                                tokio::select! {
                                    ok = &mut write => break ok,
                                    () = expiry(give_up.as_mut()) => break false,
                                    st = started.child.wait(), if status.is_none() => {
                                        status = st.ok();
                                        // As below: nothing outlives the leader.
                                        report = reaper_exited(&handle, &mut started.report, &started.ended);
                                    }
                                    why = next_stop(deadline.as_mut(), &cancel, &client_gone), if stop.is_none() => {
                                        stop = Some(why);
                                        handle.terminate();
                                    }
                                }
                                if was_running && stop.is_some() {
                                    give_up = Some(abandon_timer());
                                }
                            };
                            if !sent {
                                sink_open = false;
                                if stop.is_none() {
                                    stop = Some(Stop::ClientGone);
                                    handle.terminate();
                                }
                            }
                        }
                        None => {}
                    }
                    // Back to its reader for the next chunk (dropped when the reader is done,
                    // or when marker expansion made it too big to keep).
                    if recyclable(&bytes)
                        && let Some(Some(back)) = recycle.get(kind as usize)
                    {
                        let _ = back.try_send(bytes);
                    }
                }
                None => streams_open = false,
            },
            st = started.child.wait(), if status.is_none() => {
                status = st.ok();
                // Nothing started under a grant outlives its leader (the reaper has killed
                // the rest of its tree before it exited).
                report = reaper_exited(&handle, &mut started.report, &started.ended);
            }
            why = next_stop(deadline.as_mut(), &cancel, &client_gone), if stop.is_none() => {
                stop = Some(why);
                handle.terminate();
            }
        }
    }
    for r in readers {
        let _ = r.await;
    }
    if status.is_none() {
        // The exit was never seen (waiting failed): nothing is confirmed.
        let _ = started.ended.send(Some(TreeEnd::default()));
    }
    let status_code = match report {
        Some(crate::reap::Report {
            signal: Some(sig), ..
        }) => Some((128 + sig, Some(sig))),
        Some(crate::reap::Report { exit: Some(c), .. }) => Some((c, None)),
        _ => status.map(|s| {
            use std::os::unix::process::ExitStatusExt;
            match (s.code(), s.signal()) {
                (Some(c), _) => (c, None),
                (None, Some(sig)) => (128 + sig, Some(sig)),
                (None, None) => (1, None),
            }
        }),
    };
    let (code, sig) = status_code.unwrap_or((1, None));
    result.exit_code = code;
    result.signal = sig;
    result.timed_out = stop == Some(Stop::Timeout);
    result.revoked = stop == Some(Stop::Revoked);
    result.stdout = String::from_utf8_lossy(&out_buf).into_owned();
    result.stderr = String::from_utf8_lossy(&err_buf).into_owned();
    result.duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    result
}

/// Where streamed output frames go: the write half of the client's connection.
pub(crate) type OutputSink = crate::frame_writer::FrameWriter<tokio::net::unix::OwnedWriteHalf>;

/// The read side of a client connection after [`split_connection`].
pub(crate) type ConnReader =
    tokio_util::codec::Framed<tokio::net::unix::OwnedReadHalf, keyveil_proto::FrameCodec>;

/// Splits a client connection into its frame reader (keeping bytes already read past the
/// request) and an [`OutputSink`] for the replies and output frames.
pub(crate) fn split_connection(
    framed: tokio_util::codec::Framed<tokio::net::UnixStream, keyveil_proto::FrameCodec>,
) -> (ConnReader, OutputSink) {
    let old = framed.into_parts();
    // Nothing is pending: every frame written before this point was flushed by `send`.
    debug_assert!(old.write_buf.is_empty());
    let (rd, wr) = old.io.into_split();
    let mut parts = tokio_util::codec::FramedParts::new::<bytes::Bytes>(rd, old.codec);
    parts.read_buf = old.read_buf;
    (
        tokio_util::codec::Framed::from_parts(parts),
        crate::frame_writer::FrameWriter::new(wr),
    )
}

async fn send_output(sink: &mut OutputSink, kind: StreamKind, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let tag = if kind == StreamKind::Stdout {
        keyveil_proto::TAG_STDOUT
    } else {
        keyveil_proto::TAG_STDERR
    };
    sink.write_frame(tag, bytes).await.is_ok()
}

/// A timer for [`ABANDON_AFTER`], started now.
fn abandon_timer() -> std::pin::Pin<Box<tokio::time::Sleep>> {
    Box::pin(tokio::time::sleep(ABANDON_AFTER))
}

/// Why the run stops, once the first of its stop signals comes: the run's timeout (`deadline`),
/// the grant's revocation (`cancel`), or the client hanging up (`gone`).
async fn next_stop(
    deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    cancel: &CancellationToken,
    gone: &CancellationToken,
) -> Stop {
    tokio::select! {
        () = deadline => Stop::Timeout,
        () = cancel.cancelled() => Stop::Revoked,
        () = gone.cancelled() => Stop::ClientGone,
    }
}

/// Completes when `timer` fires; never without one.
async fn expiry(timer: Option<&mut std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Whether an output buffer is small enough to be reused (see [`RECYCLE_MAX`]).
fn recyclable(buf: &Vec<u8>) -> bool {
    buf.capacity() <= RECYCLE_MAX
}

/// Sends the final reply of a run, giving up on a client that has not taken it within
/// `bound` (the frame may be cut; the connection is about to be closed anyway). Without a
/// bound the write waits for the client like every output frame. The run path bounds it by
/// [`ABANDON_AFTER`] once a run was stopped (revoked, timed out, client hung up). Returns
/// whether the reply was sent.
pub(crate) async fn send_final<W: tokio::io::AsyncWrite + Unpin>(
    sink: &mut crate::frame_writer::FrameWriter<W>,
    body: bytes::Bytes,
    bound: Option<Duration>,
) -> bool {
    let send = sink.send(body);
    match bound {
        Some(limit) => matches!(tokio::time::timeout(limit, send).await, Ok(Ok(()))),
        None => send.await.is_ok(),
    }
}

/// Redacted bytes of one stream, on their way from a reader to the relay.
struct Chunk {
    kind: StreamKind,
    /// Redacted output (the reader's buffer, moved; handed back after it is written).
    bytes: Vec<u8>,
    /// Values replaced since the previous chunk of this stream.
    redactions: usize,
}

/// How long a program may be quiet before the redactor lets out what it holds back
/// (`RedactStream::flush`: never more of a value than a pause may show).
pub(crate) const QUIET: Duration = Duration::from_millis(200);

/// Reads one pipe to EOF, redacting as it goes. Only what the redactor released is sent on;
/// output buffers come back on `back` once written, so a long run reuses the same few. With
/// `quiet`, a held-back tail is flushed once the pipe has been silent that long.
async fn pump(
    mut r: Box<dyn OutputPipe>,
    kind: StreamKind,
    redactor: Redactor,
    tx: mpsc::Sender<Chunk>,
    mut back: mpsc::Receiver<Vec<u8>>,
    quiet: Option<Duration>,
) {
    let mut stream = redactor.stream();
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut enlarged: Option<EnlargedPipe> = None;
    let mut tried = false;
    loop {
        let read = match quiet {
            // `read` is cancel-safe: a timeout loses no byte.
            Some(q) if stream.is_holding() => {
                match tokio::time::timeout(q, r.read(&mut buf)).await {
                    Ok(read) => read,
                    Err(_) => {
                        let mut flushed = Vec::new();
                        stream.flush(&mut flushed);
                        if !flushed.is_empty() {
                            let now = stream.redactions();
                            let chunk = Chunk {
                                kind,
                                bytes: flushed,
                                redactions: now - seen,
                            };
                            if tx.send(chunk).await.is_err() {
                                return;
                            }
                            seen = now;
                        }
                        continue;
                    }
                }
            }
            _ => r.read(&mut buf).await,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !tried && n >= DEFAULT_PIPE_BYTES {
            // The writer filled the default pipe: let it run further ahead of us.
            tried = true;
            enlarged = EnlargedPipe::try_new(r.as_fd());
        }
        if out.capacity() == 0 {
            out = loop {
                match back.try_recv() {
                    Ok(b) if recyclable(&b) => break b,
                    // Too big to keep: dropped.
                    Ok(_) => continue,
                    Err(_) => break Vec::with_capacity(READ_CHUNK + 1024),
                }
            };
        }
        out.clear();
        stream.push(buf.get(..n).unwrap_or_default(), &mut out);
        if out.is_empty() {
            // Held back (a possible match); its redactions are counted with the next send.
            continue;
        }
        let now = stream.redactions();
        let chunk = Chunk {
            kind,
            bytes: std::mem::take(&mut out),
            redactions: now - seen,
        };
        if tx.send(chunk).await.is_err() {
            return;
        }
        seen = now;
    }
    // The slot is free once the pipe is closed.
    drop(r);
    drop(enlarged);
    out.clear();
    stream.finish(&mut out);
    let now = stream.redactions();
    let _ = tx
        .send(Chunk {
            kind,
            bytes: out,
            redactions: now - seen,
        })
        .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A client connection that is full (the client reads nothing).
    fn full_sink() -> (
        crate::frame_writer::FrameWriter<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
    ) {
        let (a, b) = tokio::io::duplex(8);
        (crate::frame_writer::FrameWriter::new(a), b)
    }

    fn reply() -> bytes::Bytes {
        keyveil_proto::Frame::json(&serde_json::json!({"exit": 0})).unwrap()
    }

    #[tokio::test]
    async fn a_bounded_final_reply_gives_up_on_a_client_that_does_not_read() {
        let bound = Duration::from_millis(200);
        let (mut sink, _client) = full_sink();
        let t0 = Instant::now();
        assert!(!send_final(&mut sink, reply(), Some(bound)).await);
        assert!(t0.elapsed() >= bound && t0.elapsed() < Duration::from_secs(5));
        // The cut frame is never followed by anything.
        let next = sink.write_frame(keyveil_proto::TAG_STDOUT, b"x").await;
        assert!(next.is_err());
        // Unbounded, the reply waits for its client (back pressure, as for output).
        let (mut sink, _client) = full_sink();
        let waited = tokio::time::timeout(bound * 3, send_final(&mut sink, reply(), None)).await;
        assert!(waited.is_err(), "an unbounded reply was given up on");
    }

    #[tokio::test]
    async fn a_revocation_counts_only_what_the_reapers_confirmed() {
        use crate::broker::state::RunsStopped;
        let confirmed = tokio::sync::watch::channel(None);
        let left_some = tokio::sync::watch::channel(None);
        let killed_reaper = tokio::sync::watch::channel(None);
        let rx = vec![
            confirmed.0.subscribe(),
            left_some.0.subscribe(),
            killed_reaper.0.subscribe(),
        ];
        let waiting = tokio::spawn(RunsStopped::wait(rx));
        // The ends come after the wait started, from the relays.
        let report = |l: &str| crate::reap::Report::parse(l);
        confirmed
            .0
            .send(Some(tree_end(report("signal=15 killed=52 left=0\n"))))
            .unwrap();
        left_some
            .0
            .send(Some(tree_end(report("exit=0 killed=3 left=1\n"))))
            .unwrap();
        // A reaper killed by the agent wrote nothing.
        killed_reaper.0.send(Some(tree_end(report("")))).unwrap();
        let got = waiting.await.unwrap();
        assert_eq!(
            got,
            RunsStopped {
                runs: 3,
                killed: 55,
                unconfirmed: 2
            }
        );
        assert_eq!(got.reply().processes_killed, 55);
        assert_eq!(RunsStopped::wait(Vec::new()).await, RunsStopped::default());
    }

    #[tokio::test]
    async fn oversized_output_buffers_are_not_reused() {
        let (mut w, r) = tokio::net::UnixStream::pair().unwrap();
        let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
        let (back_tx, back_rx) = mpsc::channel(IN_FLIGHT + 1);
        // One buffer grown by marker expansion, then one of the usual size.
        back_tx
            .try_send(Vec::with_capacity(RECYCLE_MAX + 1))
            .unwrap();
        back_tx.try_send(Vec::with_capacity(READ_CHUNK)).unwrap();
        let pump = tokio::spawn(pump(
            Box::new(r),
            StreamKind::Stdout,
            Redactor::new([("N", b"planted-value".to_vec())]),
            tx,
            back_rx,
            None,
        ));
        w.write_all(b"hello planted-value\n").await.unwrap();
        drop(w);
        let mut seen = Vec::new();
        while let Some(c) = rx.recv().await {
            assert!(recyclable(&c.bytes), "capacity {}", c.bytes.capacity());
            seen.extend_from_slice(&c.bytes);
        }
        pump.await.unwrap();
        assert_eq!(seen, b"hello [REDACTED:N]\n");
        assert!(!recyclable(&Vec::with_capacity(RECYCLE_MAX + 1)));
        assert!(recyclable(&Vec::with_capacity(READ_CHUNK + 1024)));
    }
}
