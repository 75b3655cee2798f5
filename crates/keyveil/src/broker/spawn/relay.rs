//! The relay of a run's output: each pipe read and redacted by its own reader ([`pump`]), the
//! chunks written to the client or collected, the run stopped on timeout, revocation or the
//! client hanging up.

use std::time::{Duration, Instant};

use crate::redact::Redactor;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use keyveil_proto::{OutputMode, RunResult};

use super::child::{RunHandle, Started, TreeEnd, reaper_exited};
use super::conn::{ABANDON_AFTER, OutputSink};

/// Read buffer size per stream (bytes): one read takes what the pipe holds, up to this much.
pub(super) const READ_CHUNK: usize = 1024 * 1024;
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
pub(super) const RECYCLE_MAX: usize = 2 * READ_CHUNK;
/// Redacted chunks in flight between the two readers and the relay (each up to
/// [`READ_CHUNK`] bytes and a few markers).
pub(super) const IN_FLIGHT: usize = 4;

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
pub(super) trait OutputPipe: AsyncRead + std::os::fd::AsFd + Send + Unpin {}
impl<T: AsyncRead + std::os::fd::AsFd + Send + Unpin> OutputPipe for T {}

/// Runs a started child to completion, relaying redacted output through `sink`.
///
/// `sink` receives `(stream, bytes)` in `Stream` mode; in `Collect` mode output is gathered into
/// the result instead. Stops early (SIGTERM, then SIGKILL after [`KILL_GRACE`](crate::reap::KILL_GRACE)) on timeout, on
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
    let Readers {
        mut rx,
        readers,
        recycle,
    } = start_readers(&mut started, redactor, output);
    let handle = started.handle.clone();
    let mut result = RunResult::default();
    let cap = match output {
        OutputMode::Collect { cap_bytes } => Some(cap_bytes),
        OutputMode::Stream => None,
    };
    let (mut out_buf, mut err_buf) = (Vec::new(), Vec::new());
    let mut ending = Ending::default();
    let deadline = tokio::time::sleep(spec_timeout);
    tokio::pin!(deadline);
    let mut sink_open = true;
    let mut streams_open = true;

    // Phase 1: until the child exits (or is stopped) and both streams reach EOF.
    while ending.status.is_none() || streams_open {
        tokio::select! {
            msg = rx.recv(), if streams_open => match msg {
                Some(Chunk { kind, bytes, redactions }) => {
                    result.redactions += redactions as u64;
                    match cap {
                        Some(cap) => {
                            let buf = if kind == StreamKind::Stdout { &mut out_buf } else { &mut err_buf };
                            collect(buf, cap, &bytes, &mut result.truncated);
                        }
                        None if sink_open => {
                            let watch = Watch {
                                handle: &handle,
                                deadline: deadline.as_mut(),
                                cancel: &cancel,
                                gone: &client_gone,
                            };
                            if !send_watching(sink, kind, &bytes, &mut started, watch, &mut ending).await {
                                sink_open = false;
                                if ending.stop.is_none() {
                                    ending.stop = Some(Stop::ClientGone);
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
            st = started.child.wait(), if ending.status.is_none() => {
                ending.status = st.ok();
                // Nothing started under a grant outlives its leader (the reaper has killed
                // the rest of its tree before it exited).
                ending.report = reaper_exited(&handle, &mut started.report, &started.ended);
            }
            why = next_stop(deadline.as_mut(), &cancel, &client_gone), if ending.stop.is_none() => {
                ending.stop = Some(why);
                handle.terminate();
            }
        }
    }
    for r in readers {
        let _ = r.await;
    }
    if ending.status.is_none() {
        // The exit was never seen (waiting failed): nothing is confirmed.
        let _ = started.ended.send(Some(TreeEnd::default()));
    }
    let (code, sig) = exit_code(ending.report, ending.status);
    result.exit_code = code;
    result.signal = sig;
    result.timed_out = ending.stop == Some(Stop::Timeout);
    result.revoked = ending.stop == Some(Stop::Revoked);
    result.stdout = String::from_utf8_lossy(&out_buf).into_owned();
    result.stderr = String::from_utf8_lossy(&err_buf).into_owned();
    result.duration_ms = u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX);
    result
}

/// How a run is ending, as the relay learns it.
#[derive(Default)]
struct Ending {
    /// Why it was stopped early, once it was.
    stop: Option<Stop>,
    /// The leader's exit status, once seen.
    status: Option<std::process::ExitStatus>,
    /// The reaper's report on the whole tree, once the leader exited.
    report: Option<crate::reap::Report>,
}

/// The readers of a child's output pipes (see [`start_readers`]).
struct Readers {
    /// Redacted chunks of both streams, in order per stream.
    rx: mpsc::Receiver<Chunk>,
    /// The reader tasks.
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// Where a written buffer goes back to its reader (index: `StreamKind as usize`).
    recycle: [Option<mpsc::Sender<Vec<u8>>>; 2],
}

/// Takes the child's stdout and stderr and starts a reader ([`pump`]) on each, redacting as
/// it reads.
fn start_readers(started: &mut Started, redactor: &Redactor, output: OutputMode) -> Readers {
    let (tx, rx) = mpsc::channel::<Chunk>(IN_FLIGHT);
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
    Readers {
        rx,
        readers,
        recycle,
    }
}

/// Keeps what fits of `bytes` in `buf` (at most `cap` bytes in all); sets `truncated` when
/// some did not fit.
fn collect(buf: &mut Vec<u8>, cap: usize, bytes: &[u8], truncated: &mut bool) {
    let room = cap.saturating_sub(buf.len());
    if bytes.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or_default());
}

/// What stops a run while a write to its client is pending.
struct Watch<'a> {
    /// The run's processes.
    handle: &'a RunHandle,
    /// The run's timeout.
    deadline: std::pin::Pin<&'a mut tokio::time::Sleep>,
    /// The grant's revocation.
    cancel: &'a CancellationToken,
    /// The client hanging up.
    gone: &'a CancellationToken,
}

/// Writes one output frame to the client while watching the run. A client that stops reading
/// blocks this write (the socket is full); the timeout, a revocation, the client hanging up
/// and the leader exiting still end the process group meanwhile (recorded in `ending`). Until
/// the run is stopped the write is finished (never cut mid-frame); once it is, a client that
/// still does not read within [`ABANDON_AFTER`] is abandoned: the write is dropped (the frame
/// may be cut, so the sink refuses every later write) and the run ends without it. Whether the
/// frame was sent.
async fn send_watching(
    sink: &mut OutputSink,
    kind: StreamKind,
    bytes: &[u8],
    started: &mut Started,
    mut w: Watch<'_>,
    ending: &mut Ending,
) -> bool {
    let write = send_output(sink, kind, bytes);
    tokio::pin!(write);
    let mut give_up = ending.stop.map(|_| abandon_timer());
    loop {
        let was_running = ending.stop.is_none();
        tokio::select! {
            ok = &mut write => return ok,
            () = expiry(give_up.as_mut()) => return false,
            st = started.child.wait(), if ending.status.is_none() => {
                ending.status = st.ok();
                // As in `relay`: nothing outlives the leader.
                ending.report = reaper_exited(w.handle, &mut started.report, &started.ended);
            }
            why = next_stop(w.deadline.as_mut(), w.cancel, w.gone), if ending.stop.is_none() => {
                ending.stop = Some(why);
                w.handle.terminate();
            }
        }
        if was_running && ending.stop.is_some() {
            give_up = Some(abandon_timer());
        }
    }
}

/// The run's exit code and signal: from the reaper's report when there is one, else from the
/// leader's status (a signal as 128 + its number); 1 when neither was seen.
fn exit_code(
    report: Option<crate::reap::Report>,
    status: Option<std::process::ExitStatus>,
) -> (i32, Option<i32>) {
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
    status_code.unwrap_or((1, None))
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
pub(super) fn recyclable(buf: &Vec<u8>) -> bool {
    buf.capacity() <= RECYCLE_MAX
}

/// Redacted bytes of one stream, on their way from a reader to the relay.
pub(super) struct Chunk {
    /// The stream it came from.
    pub(super) kind: StreamKind,
    /// Redacted output (the reader's buffer, moved; handed back after it is written).
    pub(super) bytes: Vec<u8>,
    /// Values replaced since the previous chunk of this stream.
    pub(super) redactions: usize,
}

/// How long a program may be quiet before the redactor lets out what it holds back
/// (`RedactStream::flush`: never more of a value than a pause may show).
pub(crate) const QUIET: Duration = Duration::from_millis(200);

/// Reads one pipe to EOF, redacting as it goes. Only what the redactor released is sent on;
/// output buffers come back on `back` once written, so a long run reuses the same few. With
/// `quiet`, a held-back tail is flushed once the pipe has been silent that long.
pub(super) async fn pump(
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
