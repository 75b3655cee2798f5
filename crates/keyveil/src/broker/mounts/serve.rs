//! Serving a mount: the poll, one opening's holders, the request and its answer.

use super::*;

/// Longest the broker looks for the process whose `open` let its own open succeed.
pub(super) const HOLDER_WAIT: Duration = Duration::from_secs(3);

/// Runs for the broker's life: looks at every mount each [`POLL`] while the vault is unlocked
/// and starts [`serve_read`] for each new reader.
pub(crate) async fn supervise(broker: Arc<Broker>) {
    // The known dumpers' digests are hashed once, off the first reader's path.
    tokio::task::spawn_blocking(|| {
        dumper_digests();
    });
    let mut iv = tokio::time::interval(POLL);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = iv.tick() => {}
            _ = broker.shutdown.cancelled() => return,
        }
        let unlocked = broker.lock().is_unlocked();
        let todo: Vec<(String, u64, u64)> = {
            let mut m = broker.mounts.lock();
            for e in m.values_mut() {
                if !unlocked && !e.busy {
                    e.state = "locked";
                }
            }
            if !unlocked {
                continue;
            }
            m.values()
                .filter(|e| !e.busy)
                .map(|e| (e.stored.path.clone(), e.stored.dev, e.stored.ino))
                .collect()
        };
        for (path, dev, ino) in todo {
            // A FIFO made before this broker started: its openings are counted from now on
            // (trusted once no read end is seen).
            if !opens_known(dev, ino) && matches!(at_path(&path, dev, ino), AtPath::Ours) {
                watch_opens(Path::new(&path), dev, ino);
            }
            before_poll(dev, ino);
            let opened = open_if_read(&path, dev, ino);
            if matches!(opened, Ok(None))
                && let Some(w) = opens_of(dev, ino)
            {
                w.reset();
            }
            let mut m = broker.mounts.lock();
            let Some(e) = m.get_mut(&path) else { continue };
            match opened {
                Ok(None) => e.state = "serving",
                Err(AtPath::Missing) => e.state = "missing",
                Err(AtPath::Replaced) => e.state = "replaced",
                Err(AtPath::Ours) => {}
                Ok(Some(fd)) => {
                    e.state = "serving";
                    e.busy = true;
                    let env = e.stored.environment.clone();
                    drop(m);
                    let b = broker.clone();
                    tokio::spawn(async move {
                        serve_read(&b, &path, &env, fd, dev, ino).await;
                        if let Some(e) = b.mounts.lock().get_mut(&path) {
                            e.busy = false;
                        }
                    });
                }
            }
        }
    }
}

/// Refuses an opening: audited once per set of holders, the FIFO closed unwritten.
pub(super) fn refuse(broker: &Broker, path: &str, hs: &[Holder], why: &str) {
    let key: Vec<(u32, u64)> = hs.iter().map(|h| (h.pid, h.start)).collect();
    let again = {
        let mut m = broker.mounts.lock();
        match m.get_mut(path) {
            Some(e) if e.refused_holders == key => true,
            Some(e) => {
                e.refused_holders = key;
                false
            }
            None => true,
        }
    };
    if again {
        return;
    }
    let pids: Vec<u32> = hs.iter().map(|h| h.pid).collect();
    broker.lock().audit(
        "mount_refused",
        json!({"path": path, "pids": pids, "why": why, "listed": why, "refused": true}),
    );
    broker.mounts.note(path, true, why.to_owned());
    tracing::warn!(path, ?pids, why, "mount read refused");
}

/// Refuses an opening ([`refuse`]) and puts a fresh FIFO in place while the broker still holds
/// its write end (an opener of the old one then gets end-of-file, never an `open` that waits
/// for ever): the openings of the refused FIFO (a parked read end's among them) count no
/// more, and the next reader's opening is the first of the new one.
fn renew(broker: &Broker, path: &str, hs: &[Holder], why: &str, dev: u64, ino: u64) {
    refuse(broker, path, hs, why);
    if swap(broker, path, dev, ino).is_ok() {
        forget_opens(dev, ino);
    }
}

/// Serves one opening of a mount's FIFO (`fd`, open for writing): see the module docs.
pub(super) async fn serve_read(
    broker: &Arc<Broker>,
    path: &str,
    env: &str,
    fd: OwnedFd,
    dev: u64,
    ino: u64,
) {
    // Our open succeeds as soon as a reader is *in* its `open`; its descriptor shows in
    // /proc only once that call has returned: look again for a moment before giving up.
    let mut hs = holders(dev, ino);
    let t0 = tokio::time::Instant::now();
    while hs.is_empty() && t0.elapsed() < HOLDER_WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
        hs = holders(dev, ino);
    }
    let reader = match hs.as_slice() {
        // Gone before it was seen: its opening was counted; the next reader gets a fresh FIFO.
        [] => {
            if swap(broker, path, dev, ino).is_ok() {
                forget_opens(dev, ino);
            }
            return;
        }
        [h] if h.read_only => h.clone(),
        [_] => {
            return renew(
                broker,
                path,
                &hs,
                "the process holding it opened it for writing (only a reader is served)",
                dev,
                ino,
            );
        }
        _ => {
            return renew(
                broker,
                path,
                &hs,
                "more than one process holds it open at once; each read gets nothing (read it one at a time)",
                dev,
                ino,
            );
        }
    };
    // Every read end was opened: one opening beyond the reader's is a copier's read end,
    // which it may have parked out of sight (a socket's queue, an io_uring ring). The FIFO is
    // replaced by a fresh one, so that such a read end holds nothing the next reader gets.
    if let Some(why) = openings_doubt(dev, ino) {
        return renew(
            broker,
            path,
            &hs,
            &format!("{why}; nothing was served; read it again"),
            dev,
            ino,
        );
    }
    let Some(r) = identify(&reader) else {
        return renew(
            broker,
            path,
            &hs,
            "the reader could not be identified (it exited, or its pid was reused)",
            dev,
            ino,
        );
    };
    // A process with io_uring threads may copy the pipe unseen (see `uring`): no card, no
    // grant used, while one runs.
    if let Some(why) = UringWatch::new(&r.holder).1 {
        let hint = uring_hint(&why).map_or_else(String::new, |h| format!(" {h}"));
        return renew(
            broker,
            path,
            &hs,
            &format!("{why}; nothing was served.{hint}"),
            dev,
            ino,
        );
    }
    match ask_and_wait(broker, path, env, &r).await {
        Ok(grant_id) => write_once(broker, path, env, fd, &r, &grant_id, dev, ino).await,
        Err(why) => {
            broker.lock().audit(
                "mount_not_served",
                json!({"path": path, "pid": r.holder.pid, "listed": why, "refused": true}),
            );
            broker.mounts.note(path, true, why);
            // A fresh FIFO before the reader gets end-of-file: the next reader's opening is
            // then the first the count sees.
            if swap(broker, path, dev, ino).is_ok() {
                forget_opens(dev, ino);
            }
            drop(fd);
        }
    }
    // A FIFO swapped out is served no more.
    let current = broker
        .mounts
        .lock()
        .get(path)
        .map(|e| (e.stored.dev, e.stored.ino));
    if current != Some((dev, ino)) {
        forget_opens(dev, ino);
    }
}

/// The ask a reader makes: its argv, cwd and code-loading environment, the mount's flags.
pub(super) fn mount_ask(broker: &Broker, path: &str, env: &str, r: &Reader) -> Result<Ask, String> {
    crate::broker::manifest_pin::check_pin(broker, env).map_err(|e| e.message)?;
    let inner = broker.lock();
    let variables = inner
        .resolve_variables(env, None)
        .map_err(|e| format!("environment {}: {}", shown(env), e.message))?;
    Ok(Ask {
        client: ClientInfo {
            kind: MOUNT_KIND.to_owned(),
            name: path.to_owned(),
            version: String::new(),
            pid: r.holder.pid,
        },
        environment: env.to_owned(),
        variables,
        argv: Some(r.argv.clone()),
        cwd: r.cwd.clone(),
        // The reader's code-loading environment, as a run's pass-through values are: on
        // the card, and bound by digest into the grant.
        pass_env: r.env.iter().map(|(k, _)| k.clone()).collect(),
        pass_values: r
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        stdin: None,
        peer: r.peer.clone(),
        mount: Some(MountAsk {
            path: path.to_owned(),
            flags: reader_flags(r),
            anchor: anchor_of(&r.lineage),
            lineage: if r.lineage.complete {
                r.lineage.links.iter().map(|l| (l.pid, l.start)).collect()
            } else {
                Vec::new()
            },
        }),
        linked: Vec::new(),
    })
}

/// A live grant for this mount, argv and cwd, pinned to this executable, made for this very
/// code-loading environment (the same names, each value the same by digest): its id, with one
/// use counted. A reader whose argv is not evidence of what runs is never served by one.
pub(super) fn live_grant(broker: &Broker, ask: &Ask, r: &Reader) -> Option<String> {
    if argv_untrusted(r) {
        return None;
    }
    let mut inner = broker.lock();
    let now = Timestamp::now();
    let hit = inner
        .grants().iter()
        .find(|g| {
            g.covers(ask, now)
                && g.pass_env() == ask.pass_env
                && matches!((&g.executable(), &r.exe), (Some(a), Some(b)) if a.dev == b.dev && a.ino == b.ino && a.sha256 == b.sha256)
                && super::access::check_chosen(&inner, g.id(), ask).is_ok()
        })
        .map(|g| g.id().to_owned())?;
    inner.grants_mut().use_if(&hit, |_| true).then_some(hit)
}

/// The grant that serves this reader: a live one, or the one the human's approval creates.
/// `Err`: why nothing is written.
pub(super) async fn ask_and_wait(
    broker: &Arc<Broker>,
    path: &str,
    env: &str,
    r: &Reader,
) -> Result<String, String> {
    let ask = mount_ask(broker, path, env, r)?;
    if let Some(id) = live_grant(broker, &ask, r) {
        return Ok(id);
    }
    let home = broker.lock().child_home();
    let pins = super::access::Pins {
        writable: r.exe.as_ref().is_some_and(|e| {
            crate::pin::requester_writable(
                Path::new(&e.path),
                Path::new(&r.cwd),
                home.as_deref().map(Path::new),
            )
        }),
        executable: r.exe.clone(),
        inputs: Vec::new(),
    };
    let id = {
        let mut inner = broker.lock();
        match super::access::find_or_create_request(&mut inner, &ask, pins, None, None) {
            Ok((id, _)) => id,
            Err(e) => return Err(format!("refused: {}", e.message)),
        }
    };
    broker.notify();
    let mut changed = broker.changed.subscribe();
    loop {
        let state = broker
            .lock()
            .requests()
            .get(id)
            .map(|q| q.state().to_owned())
            .unwrap_or(RequestState::Expired);
        match state {
            RequestState::Approved { grant_id } => {
                let mut inner = broker.lock();
                if inner
                    .grants_mut()
                    .use_if(&grant_id, |g| g.live(Timestamp::now()))
                {
                    return Ok(grant_id);
                }
                return Err(format!("request #{id}: the grant ended before the read"));
            }
            RequestState::Denied { .. } => return Err(format!("request #{id} denied")),
            RequestState::Expired => return Err(format!("request #{id} expired")),
            RequestState::Pending => {}
        }
        // The reader left while waiting: the request is withdrawn (expired, not denied: a
        // denial would be remembered against the next honest read).
        let still = holders_of_reader(path, broker, r);
        if !still {
            let mut inner = broker.lock();
            inner.requests_mut().decide(id, RequestState::Expired);
            inner.audit("mount_reader_left", json!({"path": path, "request_id": id}));
            drop(inner);
            broker.notify();
            return Err(format!(
                "request #{id}: the reader closed the file before approval"
            ));
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = broker.shutdown.cancelled() => return Err("the broker stopped".to_owned()),
        }
    }
}

/// Whether the reader still holds the FIFO it opened.
pub(super) fn holders_of_reader(path: &str, broker: &Broker, r: &Reader) -> bool {
    let (dev, ino) = match broker.mounts.lock().get(path) {
        Some(e) => (e.stored.dev, e.stored.ino),
        None => return false,
    };
    holders(dev, ino)
        .iter()
        .any(|h| h.pid == r.holder.pid && h.start == r.holder.start)
}
