//! Background runs: long-running processes (dev servers, watchers) started under a grant.
//!
//! `start` goes through the run path's first steps ([`super::runner::start_run`]): the same
//! grant matching, approval wait, pins, environment built from scratch and spawn. Instead of
//! relaying to the requester, the child is adopted here: its output is redacted by the same
//! relay ([`super::spawn::relay`], streaming into a socket pair whose far end fills a ring
//! buffer) and kept, already redacted, in a bounded ring of [`RING_BYTES`] per run. The ring
//! joins stdout and stderr, so what enters it is redacted once more as one stream: pieces of a
//! value alternated between the two streams are marked where they meet. Clients
//! read it incrementally with `logs` from a byte offset of the combined stdout+stderr stream;
//! bytes that fell out of the ring before they were read are reported as `dropped`.
//!
//! A background run ends when it exits, on `stop` (SIGTERM to every process of the run,
//! SIGKILL after [`super::spawn::KILL_GRACE`]), at its timeout, or when its grant ends:
//! revocation, expiry, `keyveil lock` and `daemon stop` cancel the grant's token, which the
//! relay watches, so the run's whole process tree is killed as for a foreground run
//! (`crate::reap`). Finished runs stay readable for
//! [`KEEP_FINISHED_FOR`] (at most [`MAX_FINISHED`] of them).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use jiff::Timestamp;
use serde_json::json;
use tokio::net::UnixStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::spawn;
use super::state::{OpError, OpResult};
use crate::redact::Redactor;
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, Frame, OutputMode, Reply, RunRequest, RunResult};

/// Output kept per run (redacted bytes, stdout and stderr combined).
pub(crate) const RING_BYTES: usize = 1024 * 1024;
/// Most bytes one `logs` call returns.
pub(crate) const MAX_LOG_READ: usize = 64 * 1024;
/// Default timeout of a background run: a day (its grant usually ends it sooner).
pub(crate) const DEFAULT_TIMEOUT_SECONDS: u64 = 86_400;
/// Background runs alive at once.
const MAX_LIVE: usize = 32;
/// Finished runs kept for `logs`.
const MAX_FINISHED: usize = 32;
/// How long a finished run stays readable.
const KEEP_FINISHED_FOR: Duration = Duration::from_secs(3600);

/// A bounded byte ring with absolute offsets.
#[derive(Debug)]
pub(crate) struct Ring {
    buf: VecDeque<u8>,
    /// Absolute offset of `buf[0]`: the number of bytes dropped so far.
    start: u64,
    cap: usize,
}

impl Ring {
    /// An empty ring holding at most `cap` bytes.
    pub(crate) fn new(cap: usize) -> Ring {
        Ring {
            buf: VecDeque::new(),
            start: 0,
            cap,
        }
    }

    /// Appends bytes, dropping the oldest beyond the capacity.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        let over = self.buf.len().saturating_sub(self.cap);
        if over > 0 {
            self.buf.drain(..over);
            self.start += over as u64;
        }
    }

    /// Offset one past the last byte written.
    pub(crate) fn end(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    /// Bytes dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.start
    }

    /// Up to `max` bytes from `from`: `(offset actually read from, bytes)`. A `from` before
    /// the ring's start reads from the start; one past the end reads nothing. The cut never
    /// splits a UTF-8 sequence when more data follows.
    pub(crate) fn read(&self, from: u64, max: usize) -> (u64, Vec<u8>) {
        let at = from.clamp(self.start, self.end());
        let skip = usize::try_from(at - self.start).unwrap_or(usize::MAX);
        let mut out: Vec<u8> = self.buf.iter().skip(skip).take(max).copied().collect();
        if (at + out.len() as u64) < self.end() {
            out.truncate(utf8_cut(&out));
        }
        (at, out)
    }
}

/// Length of `b` without a trailing incomplete UTF-8 sequence (at most 3 bytes cut).
fn utf8_cut(b: &[u8]) -> usize {
    let n = b.len();
    for back in 1..=3.min(n) {
        let i = n - back;
        let c = b.get(i).copied().unwrap_or(0);
        if c & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let need = if c >= 0xF0 {
            4
        } else if c >= 0xE0 {
            3
        } else if c >= 0xC0 {
            2
        } else {
            1
        };
        return if need > back { i } else { n };
    }
    n
}

/// What a finished background run left.
#[derive(Debug, Clone)]
struct Ended {
    result: RunResult,
    at: Instant,
}

#[derive(Debug)]
struct BgState {
    ring: Ring,
    ended: Option<Ended>,
    stopped: bool,
}

/// One background run.
#[derive(Debug)]
pub(crate) struct BgRun {
    id: String,
    grant_id: String,
    client: String,
    environment: String,
    argv: Vec<String>,
    pid: i32,
    started_at: Timestamp,
    stop: CancellationToken,
    state: Mutex<BgState>,
    done: tokio::sync::watch::Sender<bool>,
}

impl BgRun {
    fn state(&self) -> MutexGuard<'_, BgState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The broker's background runs.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    runs: Mutex<BTreeMap<String, Arc<BgRun>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Arc<BgRun>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets finished runs past [`KEEP_FINISHED_FOR`], and the oldest beyond
    /// [`MAX_FINISHED`].
    fn prune(&self) {
        let mut runs = self.lock();
        let now = Instant::now();
        runs.retain(|_, r| {
            r.state()
                .ended
                .as_ref()
                .is_none_or(|e| now.duration_since(e.at) < KEEP_FINISHED_FOR)
        });
        let mut finished: Vec<(Instant, String)> = runs
            .values()
            .filter_map(|r| r.state().ended.as_ref().map(|e| (e.at, r.id.clone())))
            .collect();
        finished.sort();
        let extra = finished.len().saturating_sub(MAX_FINISHED);
        for (_, id) in finished.into_iter().take(extra) {
            runs.remove(&id);
        }
    }

    fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| r.state().ended.is_none())
            .count()
    }

    fn get(&self, id: &str) -> Option<Arc<BgRun>> {
        self.lock().get(id).cloned()
    }
}

/// A child spawned by the run path for a background `start`.
pub(crate) struct Detached {
    /// Run id.
    pub run_id: String,
    /// The grant it runs under.
    pub grant_id: String,
    /// Scope key of the requester (`mcp:NAME`, `cli:keyveil`).
    pub client: String,
    /// Environment.
    pub environment: String,
    /// argv as the requester gave it, every whole value masked (`card_redact.rs`).
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: String,
    /// The child.
    pub started: spawn::Started,
    /// Kill it after this long.
    pub timeout: Duration,
    /// Redactor of its granted values.
    pub redactor: Redactor,
    /// The write-side scan's matcher of them (`runner::scan_redactor`: whole values only).
    pub scan_redactor: Redactor,
    /// The grant's revocation token.
    pub cancel: CancellationToken,
    /// When it was spawned (for the write-side scan).
    pub started_at: SystemTime,
    /// The run's private TMPDIR, scanned and deleted at its end (`private_tmp.rs`).
    pub tmp_dir: Option<super::private_tmp::RunTmp>,
    /// Its place in the watch of its working directory, if any (`tree_watches.rs`).
    pub watch: Result<crate::scan::watch::Ticket, &'static str>,
}

/// Serves one `start` request: the run path's approval wait and spawn, then a final reply.
/// `peer` is the process at the other end of the socket (`peer.rs`).
pub(crate) async fn start(
    broker: &Arc<Broker>,
    mut req: RunRequest,
    framed: Framed<UnixStream, keyveil_proto::FrameCodec>,
    peer: super::peer::Peer,
) {
    let (mut stream, mut sink) = spawn::split_connection(framed);
    let gone = CancellationToken::new();
    let gone2 = gone.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {}
        gone2.cancel();
    });
    broker.background.prune();
    let reply = if broker.background.live() >= MAX_LIVE {
        Some(
            OpError::new(
                ErrorCode::Failed,
                format!("{MAX_LIVE} background runs are already running"),
            )
            .hint("stop one first (`keyveil stop RUN_ID`, or the MCP `stop` tool)")
            .reply(),
        )
    } else {
        req.stdin = None;
        req.output = OutputMode::Collect { cap_bytes: 0 };
        req.timeout_seconds = Some(
            req.timeout_seconds
                .unwrap_or(DEFAULT_TIMEOUT_SECONDS)
                .clamp(1, DEFAULT_TIMEOUT_SECONDS),
        );
        match super::runner::start_run(broker, req, &mut sink, &gone, peer).await {
            Ok((req, a, l)) => Some(adopt(
                broker,
                Detached {
                    run_id: l.run_id,
                    grant_id: l.grant_id,
                    client: req.client.scope_key(),
                    environment: req.environment,
                    argv: l.shown_argv,
                    cwd: a.cwd,
                    started: l.started,
                    timeout: l.timeout,
                    redactor: l.redactor,
                    scan_redactor: l.scan_redactor,
                    cancel: l.cancel,
                    started_at: l.started_at,
                    tmp_dir: l.tmp_dir,
                    watch: l.watch,
                },
            )),
            Err(r) => r,
        }
    };
    if let Some(r) = reply
        && let Ok(body) = Frame::json(&r)
    {
        let _ = sink.send(body).await;
    }
    watcher.abort();
}

/// Takes over a spawned child: relays its redacted output into the run's ring until it ends.
/// Returns the reply to `start`.
pub(crate) fn adopt(broker: &Arc<Broker>, d: Detached) -> Reply {
    let Detached {
        run_id,
        grant_id,
        client,
        environment,
        argv,
        cwd,
        started,
        timeout,
        redactor,
        scan_redactor,
        cancel,
        started_at,
        tmp_dir,
        watch,
    } = d;
    let pid = started.pid;
    let run = Arc::new(BgRun {
        id: run_id.clone(),
        grant_id: grant_id.clone(),
        client,
        environment,
        argv,
        pid,
        started_at: Timestamp::now(),
        stop: CancellationToken::new(),
        state: Mutex::new(BgState {
            ring: Ring::new(RING_BYTES),
            ended: None,
            stopped: false,
        }),
        done: tokio::sync::watch::channel(false).0,
    });
    broker.background.lock().insert(run_id.clone(), run.clone());
    let broker = broker.clone();
    tokio::spawn(async move {
        let result = relay_to_ring(&run, started, timeout, &redactor, cancel).await;
        finish(
            &broker,
            &run,
            result,
            &cwd,
            (started_at, watch),
            &scan_redactor,
            tmp_dir,
        )
        .await;
    });
    started_reply(run_id, grant_id, pid)
}

/// The relay streams redacted frames into one end of a socket pair; the other end fills the
/// run's ring ([`fill_ring`]). A failure here stops the child at once (nothing may run
/// unobserved). The run's result once it ended.
async fn relay_to_ring(
    run: &Arc<BgRun>,
    started: spawn::Started,
    timeout: Duration,
    redactor: &Redactor,
    cancel: CancellationToken,
) -> RunResult {
    let (a, b) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "cannot relay a background run; stopping it");
            started.kill_now();
            drop(started);
            return RunResult {
                exit_code: 137,
                signal: Some(9),
                ..RunResult::default()
            };
        }
    };
    let (_unused, a) = a.into_split();
    let mut sink = crate::frame_writer::FrameWriter::new(a);
    let reader = tokio::spawn(fill_ring(run.clone(), b, redactor.clone()));
    let mut r = spawn::relay(
        started,
        timeout,
        OutputMode::Stream,
        redactor,
        cancel,
        run.stop.clone(),
        &mut sink,
    )
    .await;
    drop(sink);
    drop(_unused);
    // Values first marked where the two streams meet.
    r.redactions += reader.await.unwrap_or(0);
    r
}

/// Reads the relay's frames from `b` into the run's ring until the relay ends; returns the
/// values marked there. The relay redacts stdout and stderr each on its own; the ring joins
/// them, so pieces of a value alternated between the two would meet whole there. What `logs`
/// reads is therefore redacted again, as one stream.
async fn fill_ring(run: Arc<BgRun>, b: UnixStream, redactor: Redactor) -> u64 {
    let mut frames = Framed::new(b, keyveil_proto::FrameCodec);
    let mut joined = redactor.stream();
    let mut out = Vec::new();
    loop {
        let next = if joined.is_holding() {
            match tokio::time::timeout(spawn::QUIET, frames.next()).await {
                Ok(next) => next,
                Err(_) => {
                    // Quiet: what a pause may show (`RedactStream::flush`).
                    out.clear();
                    joined.flush(&mut out);
                    if !out.is_empty() {
                        run.state().ring.push(&out);
                    }
                    continue;
                }
            }
        } else {
            frames.next().await
        };
        let Some(Ok(f)) = next else { break };
        if let Ok(Frame::Stdout(bytes) | Frame::Stderr(bytes)) = Frame::decode(f) {
            out.clear();
            joined.push(&bytes, &mut out);
            if !out.is_empty() {
                run.state().ring.push(&out);
            }
        }
    }
    out.clear();
    joined.finish(&mut out);
    run.state().ring.push(&out);
    joined.redactions() as u64
}

/// The reply to `start`: the run, its grant and its pid.
fn started_reply(run_id: String, grant_id: String, pid: i32) -> Reply {
    match serde_json::to_value(op::Started {
        run_id,
        grant_id,
        pid: i64::from(pid),
    }) {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::error(
            ErrorCode::Failed,
            format!("cannot encode the reply: {e}"),
            None,
        ),
    }
}

/// Records the end: result, audit, write-side scan, live-run bookkeeping.
async fn finish(
    broker: &Arc<Broker>,
    run: &Arc<BgRun>,
    mut result: RunResult,
    cwd: &str,
    (started_at, watch): (SystemTime, Result<crate::scan::watch::Ticket, &'static str>),
    scan_redactor: &Redactor,
    tmp_dir: Option<super::private_tmp::RunTmp>,
) {
    result.run_id = run.id.clone();
    result.grant_id = run.grant_id.clone();
    result
        .write_leaks
        .extend(super::runner::close_egress(broker, &run.id).await);
    let home = broker.lock().child_home();
    let scope = crate::scan::ScanScope {
        cwd: std::path::PathBuf::from(cwd),
        home: home.map(std::path::PathBuf::from),
        since: started_at,
        limits: crate::scan::ScanLimits::default(),
    };
    let mut how = None;
    if let Some((report, method)) =
        super::tree_watches::scan_run(broker, scope, scan_redactor, watch, &run.grant_id).await
    {
        how = Some(method.describe());
        for leak in report.leaks {
            result.write_leaks.push(keyveil_proto::WriteLeak {
                variable: leak.variable,
                path: leak.path.to_string_lossy().into_owned(),
                form: leak.form,
                action: "reported".to_owned(),
            });
        }
    }
    if let Some(dir) = tmp_dir {
        let leaks = super::private_tmp::finish(dir, scan_redactor, started_at).await;
        result.write_leaks.extend(leaks);
    }
    let stopped = run.state().stopped;
    {
        let mut inner = broker.lock();
        inner.runs_mut().remove(&run.id);
        inner.audit(
            "run_end",
            json!({
                "run_id": run.id,
                "grant_id": run.grant_id,
                "background": true,
                "exit_code": result.exit_code,
                "signal": result.signal,
                "redactions": result.redactions,
                "timed_out": result.timed_out,
                "revoked": result.revoked,
                "stopped": stopped,
                "duration_ms": result.duration_ms,
                "write_scan": how,
                // By variable and form, never the path: the audit is readable by the agent, and a path
                // would tell which of the files it planted holds a value (the requester sees paths).
                "write_leaks": result.write_leaks.iter().map(|l| json!({"variable": l.variable, "form": l.form, "action": l.action})).collect::<Vec<_>>(),
            }),
        );
    }
    run.state().ended = Some(Ended {
        result,
        at: Instant::now(),
    });
    run.done.send_replace(true);
    broker.notify();
}

fn find(broker: &Broker, run_id: &str, client: Option<&str>) -> OpResult<Arc<BgRun>> {
    let not_found = || {
        OpError::new(
            ErrorCode::NotFound,
            format!(
                "no background run {}",
                keyveil_proto::display::visible(&keyveil_proto::display::clip(run_id, 80))
            ),
        )
        .hint("`start` returns the run id; finished runs are kept for an hour")
    };
    let run = broker.background.get(run_id).ok_or_else(not_found)?;
    match client {
        Some(c) if c != run.client => Err(not_found()),
        _ => Ok(run),
    }
}

/// `logs`: up to `max_bytes` of redacted output from offset `from`.
///
/// Reply: `{run_id, from, next, output, dropped, running, exit_code?, signal?, timed_out,
/// revoked, stopped, redactions, argv, grant_id, started_at}`; `dropped` is the number of
/// bytes between `from` and the oldest byte still kept (lost to the ring's bound).
pub(crate) fn logs(
    broker: &Broker,
    run_id: &str,
    from: u64,
    max_bytes: Option<usize>,
    client: Option<&str>,
) -> OpResult<op::RunLogs> {
    let run = find(broker, run_id, client)?;
    let max = max_bytes.unwrap_or(MAX_LOG_READ).clamp(1, MAX_LOG_READ);
    let st = run.state();
    let (at, bytes) = st.ring.read(from, max);
    let next = at + bytes.len() as u64;
    Ok(op::RunLogs {
        run_id: run.id.clone(),
        grant_id: run.grant_id.clone(),
        environment: run.environment.clone(),
        argv: run.argv.clone(),
        pid: i64::from(run.pid),
        started_at: run.started_at.to_string(),
        from: at,
        next,
        end: st.ring.end(),
        output: String::from_utf8_lossy(&bytes).into_owned(),
        dropped: at.saturating_sub(from),
        dropped_total: st.ring.dropped(),
        running: st.ended.is_none(),
        stopped: st.stopped,
        ended: st.ended.as_ref().map(|e| {
            let r = &e.result;
            op::LogsEnd {
                exit_code: r.exit_code,
                signal: r.signal,
                timed_out: r.timed_out,
                revoked: r.revoked,
                redactions: r.redactions,
                duration_ms: r.duration_ms,
                write_leaks: r
                    .write_leaks
                    .iter()
                    .map(|l| op::LeakSeen {
                        variable: l.variable.clone(),
                        path: l.path.clone(),
                        form: l.form.clone(),
                    })
                    .collect(),
            }
        }),
    })
}

/// `stop`: SIGTERM to every process of the run, SIGKILL after the grace period; waits for the
/// end (at most a few seconds) and returns `{run_id, stopped, running, exit_code?, signal?}`.
pub(crate) async fn stop(
    broker: &Arc<Broker>,
    run_id: &str,
    client: Option<&str>,
) -> OpResult<op::RunStopped> {
    let run = find(broker, run_id, client)?;
    let already = run.state().ended.is_some();
    if !already {
        run.state().stopped = true;
        run.stop.cancel();
        broker.lock().audit(
            "run_stop",
            json!({"run_id": run.id, "grant_id": run.grant_id}),
        );
        let mut done = run.done.subscribe();
        let _ = tokio::time::timeout(
            spawn::KILL_GRACE + Duration::from_secs(3),
            done.wait_for(|d| *d),
        )
        .await;
    }
    let st = run.state();
    Ok(op::RunStopped {
        run_id: run.id.clone(),
        stopped: !already,
        running: st.ended.is_none(),
        ended: st.ended.as_ref().map(|e| op::ExitSeen {
            exit_code: e.result.exit_code,
            signal: e.result.signal,
        }),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ring_keeps_the_newest_bytes_with_absolute_offsets() {
        let mut r = Ring::new(8);
        r.push(b"abcdef");
        assert_eq!(r.read(0, 100), (0, b"abcdef".to_vec()));
        r.push(b"ghijk");
        assert_eq!(r.end(), 11);
        assert_eq!(r.dropped(), 3);
        assert_eq!(r.read(0, 100), (3, b"defghijk".to_vec()));
        assert_eq!(r.read(9, 100), (9, b"jk".to_vec()));
        assert_eq!(r.read(9, 1), (9, b"j".to_vec()));
        assert_eq!(r.read(50, 10), (11, Vec::new()));
    }

    #[test]
    fn reads_do_not_split_utf8_unless_at_the_end() {
        let mut r = Ring::new(64);
        r.push("aé€".as_bytes()); // 1 + 2 + 3 bytes
        assert_eq!(r.read(0, 2), (0, b"a".to_vec()));
        assert_eq!(r.read(0, 4), (0, "aé".as_bytes().to_vec()));
        assert_eq!(r.read(0, 6), (0, "aé€".as_bytes().to_vec()));
        assert_eq!(utf8_cut(b"ab"), 2);
        assert_eq!(utf8_cut(&[0xE2, 0x82]), 0);
    }
}
