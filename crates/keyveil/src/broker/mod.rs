//! The broker: the per-user daemon that alone decrypts values and alone starts granted
//! processes. Clients (the CLI, the MCP server) talk to it over a Unix socket in a 0700
//! directory; the peer's uid must be ours (same uid is not authorization: the factor is).

pub(crate) mod access;
pub(crate) mod background;
pub(crate) mod card_redact;
pub(crate) mod ci;
mod cwd;
pub(crate) mod dynamic_ops;
pub(crate) mod egress;
pub(crate) mod factor_ops;
mod guard;
pub(crate) mod held_approvals;
pub(crate) mod kdf_gate;
#[cfg(feature = "openbao")]
mod lease_reap;
mod leases;
pub(crate) mod locked_asks;
pub(crate) mod manifest_pin;
pub(crate) mod mounts;
pub(crate) mod ops;
pub(crate) mod peer;
pub(crate) mod policy_ops;
pub(crate) mod prefix;
pub(crate) mod private_tmp;
pub(crate) mod redactor_cache;
pub(crate) mod request_ids;
pub(crate) mod runner;
pub(crate) mod spawn;
pub(crate) mod state;
pub(crate) mod sweep_ops;
mod sweep_scrub;
pub(crate) mod sweep_watch;
pub(crate) mod tree_watches;
pub(crate) mod web;

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::paths::{Paths, set_mode};
use keyveil_proto::{ErrorCode, Frame, Reply, Request};
use state::Inner;

/// The broker's shared state.
pub(crate) struct Broker {
    /// Its files.
    pub paths: Paths,
    inner: Mutex<Inner>,
    /// Bumped on every change to requests or grants; waiters re-check on each bump.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Cancelled by `daemon stop`.
    pub shutdown: CancellationToken,
    /// The local web approval page, started on first use.
    pub web: web::Web,
    /// Background runs (`keyveil start`, MCP `start`) and their output buffers.
    pub background: background::Registry,
    /// Mounts (`keyveil mount`): FIFOs served while the vault is unlocked.
    pub mounts: mounts::Registry,
    /// CI mode (`keyveil ci start`): its signing key and the values its runs used; set once.
    pub ci: std::sync::OnceLock<ci::Session>,
}

impl Broker {
    /// Locks the state. A poisoned mutex (a panic while held) is recovered: every operation
    /// leaves the state consistent before it can panic.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes everything waiting for a decision.
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Runs the broker in the foreground until `daemon stop` or SIGTERM/SIGINT.
///
/// With `bootstrap`, first reads one [`keyveil_proto::Bootstrap`] JSON line from stdin (the
/// pipe of the CLI that started it: `keyveil init` or `unlock`), creates or unlocks the vault
/// with it, and writes the outcome as one [`Reply`] JSON line on stdout before serving anyone.
/// A failed bootstrap stops the broker.
///
/// Errors: another broker already holds this home's lock; the socket cannot be bound.
pub(crate) async fn serve(paths: Paths, bootstrap: bool) -> Result<()> {
    crate::harden::harden_broker().context("cannot make the broker non-dumpable")?;
    // Read the passphrase only once nothing else of ours can be read by another process.
    let boot = if bootstrap {
        Some(read_bootstrap().context("cannot read the bootstrap from stdin")?)
    } else {
        None
    };
    paths.check_socket_len()?;
    paths.ensure_dirs()?;
    let lock = take_lock(&paths)?;
    // Only the broker holding the lock: private TMPDIRs of runs that never finished (a crash,
    // `kill -9`) are removed; nothing a run left there outlives it.
    private_tmp::clear_leftovers(&paths);
    // Temporary files of vault saves a kill interrupted (each a full copy of the vault).
    match keyveil_vault::remove_stale_temp_files(&paths.vault()) {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            removed = n,
            "removed temporary files of interrupted vault saves"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot remove temporary files of interrupted vault saves")
        }
    }
    // The broker never reads a requester's "input" from its own home (runs' private TMPDIRs,
    // the vault, the audit): see `pin::readable_for_requester`.
    crate::pin::set_private_roots(vec![paths.home.clone()]);
    let (listener, sock) = bind_socket(&paths)?;

    let (changed, _) = tokio::sync::watch::channel(0u64);
    let broker = Arc::new(Broker {
        paths: paths.clone(),
        inner: Mutex::new(Inner::with_request_ids(
            request_ids::load(&request_ids::file(&paths.run_dir())),
            Some(request_ids::file(&paths.run_dir())),
        )),
        changed,
        shutdown: CancellationToken::new(),
        web: web::Web::default(),
        background: background::Registry::default(),
        mounts: mounts::Registry::load(paths.mounts()),
        ci: std::sync::OnceLock::new(),
    });
    tracing::info!(pid = std::process::id(), socket = %sock.display(), "broker listening");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    if let Some(b) = boot {
        let reply = match ops::bootstrap(&broker, b).await.and_then(|v| {
            serde_json::to_value(v).map_err(|e| {
                state::OpError::new(
                    keyveil_proto::ErrorCode::Failed,
                    format!("cannot encode the answer: {e}"),
                )
            })
        }) {
            Ok(v) => Reply::ok(v),
            Err(e) => e.reply(),
        };
        let failed = !matches!(reply, Reply::Ok { .. });
        answer_bootstrap(&reply);
        if failed {
            let _ = std::fs::remove_file(&sock);
            let _ = std::fs::remove_file(paths.run_dir().join("broker.pid"));
            bail!("the bootstrap failed; the broker stops");
        }
    }
    let ticker = tokio::spawn(tick(broker.clone()));
    let mount_server = tokio::spawn(mounts::supervise(broker.clone()));
    accept_loop(&broker, &listener, &mut sigterm, &mut sigint).await;
    ticker.abort();
    mount_server.abort();
    stop_runs_and_seal(&broker).await;
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(paths.run_dir().join("broker.pid"));
    tracing::info!("broker stopped");
    drop(lock);
    Ok(())
}

/// Opens and takes the home's broker lock (one broker per home); held until the broker stops.
///
/// Errors: another broker holds it ("already running", with a hint); the file cannot be opened.
fn take_lock(paths: &Paths) -> Result<std::fs::File> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(paths.lock())
        .with_context(|| {
            format!(
                "cannot open {}{}",
                paths.lock().display(),
                paths.full_disk_hint()
            )
        })?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another keyveil broker is already running for {}\nhint: use it, or stop it with `keyveil daemon stop`",
            paths.home.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).context("cannot take the broker lock");
        }
    }
    Ok(lock)
}

/// Binds the broker's socket (a stale one is removed first; mode 0600) and writes the
/// informational `broker.pid`; returns the listener and the socket's path.
fn bind_socket(paths: &Paths) -> Result<(UnixListener, std::path::PathBuf)> {
    let sock = paths.socket();
    if sock.exists() {
        std::fs::remove_file(&sock)
            .with_context(|| format!("cannot remove stale socket {}", sock.display()))?;
    }
    let listener = UnixListener::bind(&sock)
        .with_context(|| format!("cannot bind {}{}", sock.display(), paths.full_disk_hint()))?;
    set_mode(&sock, 0o600)?;
    // Informational only (nothing reads it to find the broker: the socket and the lock do), so
    // a full disk must not keep the broker from starting.
    if let Err(e) = std::fs::write(
        paths.run_dir().join("broker.pid"),
        std::process::id().to_string(),
    ) {
        tracing::warn!(error = %e, "cannot write broker.pid; the broker runs without it");
    }
    Ok((listener, sock))
}

/// Accepts connections of our own uid until `daemon stop`, SIGTERM or SIGINT, each handled
/// on its own task ([`handle`]).
async fn accept_loop(
    broker: &Arc<Broker>,
    listener: &UnixListener,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) {
    let me = rustix::process::getuid();
    // After a failed accept (out of file descriptors: EMFILE, ENFILE; or memory) the pending
    // connection is still there and `accept` fails again at once: without a pause the loop
    // spins. It waits, doubling up to 1 s, and logs once per episode.
    let mut backoff: Option<std::time::Duration> = None;
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let stream = match conn {
                    Ok((stream, _)) => {
                        if backoff.take().is_some() {
                            tracing::info!("accepting connections again");
                        }
                        stream
                    }
                    Err(e) => {
                        let wait = match backoff {
                            None => {
                                tracing::error!(error = %e, "cannot accept connections (out of file descriptors?); retrying with a pause");
                                std::time::Duration::from_millis(10)
                            }
                            Some(d) => (d * 2).min(std::time::Duration::from_secs(1)),
                        };
                        backoff = Some(wait);
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = broker.shutdown.cancelled() => break,
                        }
                        continue;
                    }
                };
                match stream.peer_cred() {
                    Ok(c) if c.uid() == me.as_raw() => {
                        tokio::spawn(handle(broker.clone(), stream));
                    }
                    Ok(c) => tracing::warn!(uid = c.uid(), "refused a connection from another user"),
                    Err(e) => tracing::warn!(error = %e, "cannot read peer credentials; connection refused"),
                }
            }
            _ = broker.shutdown.cancelled() => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
}

/// The broker's last steps before it exits: every grant revoked and every run's tree stopped,
/// the audit log's last entries and sealed checkpoint written, dynamic credentials destroyed at
/// their sources, killed runs given a moment to be reaped.
async fn stop_runs_and_seal(broker: &Arc<Broker>) {
    let ended = ops::stop_everything(broker, "broker stopping");
    // Every run's tree is gone (or the wait is over) before the broker exits; what is left
    // then is the supervisor's to kill.
    let stopped = state::RunsStopped::wait(ended).await;
    if stopped.runs > 0 {
        tracing::info!(
            runs = stopped.runs,
            killed = stopped.killed,
            unconfirmed = stopped.unconfirmed,
            "runs stopped"
        );
    }
    {
        let mut inner = broker.lock();
        // The last chance to record a pending gap: the reserve is no longer needed after this.
        inner.audit_log_mut().flush_gap_closing();
        inner.seal_audit_final();
        if let Some(gap) = inner.audit_log().pending_gap() {
            tracing::error!(
                lost = gap.lost,
                refused = gap.refused,
                "the broker stops with audit entries it could not write; the gap is not in the audit log"
            );
        }
    }
    // Let dynamic credentials be destroyed at their sources before the runtime goes.
    leases::settle(broker, std::time::Duration::from_secs(5)).await;
    leases::close_logins(broker, std::time::Duration::from_secs(1)).await;
    // Give killed runs a moment to be reaped and audited.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// One JSON line from stdin: the [`keyveil_proto::Bootstrap`] the starting CLI wrote.
fn read_bootstrap() -> Result<keyveil_proto::Bootstrap> {
    use std::io::BufRead;
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("stdin")?;
    serde_json::from_str(&line).context("not a bootstrap line")
}

/// The bootstrap's outcome as one JSON line on stdout (the starting CLI reads it), then stdout
/// is left alone: the broker never writes there again.
fn answer_bootstrap(reply: &Reply) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(reply) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Once a second: expire requests, revoke grants past their deadline.
async fn tick(broker: Arc<Broker>) {
    let mut iv = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut ticks: u64 = 0;
    let home_id = dir_identity(&broker.paths.home);
    let mut trim = Trim::default();
    loop {
        iv.tick().await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(8) && trim.due() {
            // Every 2 s: after a burst of work has ended, give freed memory back.
            tokio::task::spawn_blocking(crate::harden::release_free_memory);
        }
        if ticks.is_multiple_of(4)
            && home_id.is_some()
            && dir_identity(&broker.paths.home) != home_id
        {
            // The home was deleted (or replaced): nobody can reach this broker at its socket
            // any more, and its vault file and audit log are gone. It must not run on, unlocked
            // and unreachable: it stops (runs end, values leave memory).
            tracing::error!(home = %broker.paths.home.display(), "KEYVEIL_HOME was deleted or replaced; the broker stops");
            broker.shutdown.cancel();
            return;
        }
        if ticks.is_multiple_of(4) {
            // Every second: record a pending audit gap as soon as the log has room again.
            broker.lock().audit_log_mut().flush_gap();
        }
        if ticks.is_multiple_of(40) {
            // Every 10 s: seal the audit log's end into the vault.
            broker.lock().seal_audit();
        }
        let changed = {
            let mut inner = broker.lock();
            let before = inner.requests().pending().count();
            inner.expire_requests();
            let after = inner.requests().pending().count();
            let now = jiff::Timestamp::now();
            let due: Vec<String> = inner
                .grants()
                .iter()
                .filter(|g| !g.revoked() && g.expires_at() <= now)
                .map(|g| g.id().to_owned())
                .collect();
            for id in &due {
                inner.revoke(id, "expired");
            }
            // Dynamic credentials of grants that ended; background results into the audit.
            leases::sweep(&mut inner);
            // Redactors of ended grants (revocation drops them too) and idle ones.
            // Forget dead grants after an hour.
            inner.prune_ended_grants(now);
            before != after || !due.is_empty()
        };
        if changed {
            broker.notify();
        }
    }
}

/// Connections accepted so far (a measure of activity for [`Trim`]).
static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// When to give freed memory back to the kernel (issue 21, performance item 4): once a burst of
/// connections has ended (none in the last check period) and not again until new ones came.
#[derive(Debug, Default)]
struct Trim {
    /// [`CONNECTIONS`] at the last check.
    seen: u64,
    /// Connections came since the last trim.
    dirty: bool,
}

impl Trim {
    /// Whether to trim now: activity happened earlier and none since the previous check.
    fn due(&mut self) -> bool {
        let now = CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed);
        let busy = now != self.seen;
        self.seen = now;
        if busy {
            self.dirty = true;
            return false;
        }
        std::mem::take(&mut self.dirty)
    }
}

/// The device and inode of a directory, `None` when it is gone.
fn dir_identity(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// One connection: one request, its replies.
async fn handle(broker: Arc<Broker>, stream: UnixStream) {
    CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Read before the request arrives: who connected, from the kernel, not from the claim.
    let peer = peer::Peer::of_stream(&stream);
    let mut framed = Framed::new(stream, keyveil_proto::FrameCodec);
    let first = match framed.next().await {
        Some(Ok(f)) => f,
        _ => return,
    };
    let req: Request = match Frame::decode(first) {
        Ok(Frame::Json(b)) => match serde_json::from_slice(&b) {
            Ok(r) => r,
            Err(e) => {
                let _ = send(
                    &mut framed,
                    &Reply::error(ErrorCode::Usage, format!("malformed request: {e}"), None),
                )
                .await;
                return;
            }
        },
        _ => {
            let _ = send(
                &mut framed,
                &Reply::error(ErrorCode::Usage, "expected a JSON request frame", None),
            )
            .await;
            return;
        }
    };
    tracing::debug!(op = req.op(), "request");
    if let Some(refused) = ci::gate(&broker, &req) {
        let _ = send(&mut framed, &refused.reply()).await;
        return;
    }
    match req {
        Request::Run(r) => runner::run(&broker, r, framed, peer).await,
        Request::Start(r) => background::start(&broker, r, framed, peer).await,
        Request::SweepWatch(r) => sweep_watch::watch(&broker, r, framed).await,
        Request::Sweep(r) if r.progress => sweep_ops::serve(&broker, r, framed).await,
        // The page's links: the page is a client of the dispatcher, not a part of it.
        link @ (Request::WebUrl | Request::SetUrl(_)) => {
            let reply = web::answer(&broker, link).await;
            let _ = send(&mut framed, &reply).await;
        }
        other => {
            let reply = ops::dispatch_from(&broker, other, Some(&peer)).await;
            let _ = send(&mut framed, &reply).await;
        }
    }
}

/// Writes one JSON reply frame.
pub(crate) async fn send(
    framed: &mut Framed<UnixStream, keyveil_proto::FrameCodec>,
    reply: &Reply,
) -> Result<()> {
    let body = Frame::json(reply)?;
    framed.send(body).await?;
    Ok(())
}
