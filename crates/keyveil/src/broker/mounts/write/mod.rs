//! Writing an approved read: the text, the swap, the last checks, the write and the watch.

use super::*;

mod checks;
mod close;
mod pieces;
mod text;
mod watch;

pub(super) use checks::*;
pub(super) use close::*;
pub(super) use pieces::*;
pub(super) use text::*;
pub(super) use watch::*;

/// The read being served: the mount, its environment and grant, the approved reader and the
/// served FIFO's device and inode. What every step of [`write_once`] is about.
struct Served<'a> {
    broker: &'a Arc<Broker>,
    path: &'a str,
    env: &'a str,
    r: &'a Reader,
    grant_id: &'a str,
    dev: u64,
    ino: u64,
}

/// What the checks before the first piece leave for the write: the text and its lines, and
/// the watch on the served FIFO (swapped out, read-only).
struct Ready {
    text: zeroize::Zeroizing<String>,
    lines: Vec<Line>,
    watch: Watch,
}

/// What the write of the pieces left: how the text left the pipe, the broker's write end
/// (still open), the bytes written, the watch, the broker's own writes (`ours`) and the
/// pieces the io_uring look could not vouch for (`uncleared`, see [`write_pieces`]).
struct Written {
    drained: Drain,
    fd: OwnedFd,
    written: usize,
    watch: Watch,
    ours: usize,
    uncleared: Exposed,
}

/// Swaps a fresh FIFO in at `path` (so no one can open the served one by name any more), makes
/// the served one read-only and watches it, checks the holders once more, then writes the
/// text in pieces, each after the reader read the one before ([`write_pieces`]). Nothing is
/// written on any doubt; a read shared with another process ends the grant, and a piece
/// another process may have read is reported as a possible theft.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_once(
    broker: &Arc<Broker>,
    path: &str,
    env: &str,
    fd: OwnedFd,
    r: &Reader,
    grant_id: &str,
    dev: u64,
    ino: u64,
) {
    let s = Served {
        broker,
        path,
        env,
        r,
        grant_id,
        dev,
        ino,
    };
    let ready = match s.ready(&fd).await {
        Ok(x) => x,
        Err(why) => {
            s.fail(why);
            // Nothing was written, but a write end held out of sight (opened before the
            // swap, as through an io_uring ring) keeps the reader from end-of-file, and what
            // it writes is read as `.env`.
            let left = tokio::task::spawn_blocking(move || other_writer(fd))
                .await
                .unwrap_or(None);
            if let Some(why) = left {
                s.record_tampering(why, 0, &s.others());
            }
            return;
        }
    };
    let Ready { text, lines, watch } = ready;
    let len = text.len();
    let w = match s.write(fd, text, &lines, watch).await {
        Ok(x) => x,
        Err(why) => return s.fail(why),
    };
    // `fd` stays open until the outcome is recorded: the reader sees end-of-file (and whoever
    // waits on it, the audit) only after the audit entry and the mount's note are written.
    let others = s.others();
    match w.drained {
        Drain::Suspect {
            why,
            bytes,
            piece,
            exposed,
        } => s.record_suspect(&lines, len, &others, why, bytes, piece, &exposed),
        Drain::Reclaimed {
            why,
            bytes,
            tampered,
        } => s.record_reclaimed(
            &lines,
            &others,
            w.written,
            why,
            bytes,
            tampered,
            &w.uncleared,
        ),
        Drain::Read => {
            s.record_read(&lines, &others, &w.uncleared);
            if let Some(why) = s
                .close_after_text(w.fd, w.watch, w.ours, w.written, &others)
                .await
            {
                // A read end out of sight may have copied every piece.
                let mut all = w.uncleared.clone();
                pieces(len, &lines).iter().for_each(|p| all.add(p));
                s.record_suspect(&lines, len, &others, why, w.written, 0, &all);
            }
        }
    }
}

impl Served<'_> {
    /// Audits a read left unwritten (`mount_not_written`) and notes why on the mount.
    fn fail(&self, why: String) {
        let Served {
            broker,
            path,
            grant_id,
            r,
            ..
        } = *self;
        broker.lock().audit(
            "mount_not_written",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "listed": why, "refused": true}),
        );
        broker.mounts.note(path, true, why);
    }

    /// The steps before the first piece, in this order: the text (nothing is swapped for a
    /// read that cannot be served), the reader counted as a value holder, the swap, the pipe
    /// untouched, the FIFO read-only and watched, the reader waiting for input and the last
    /// checks ([`ready_to_write`]). `Err`: why nothing was written.
    async fn ready(&self, fd: &OwnedFd) -> Result<Ready, String> {
        let Served {
            broker,
            path,
            env,
            r,
            grant_id,
            dev,
            ino,
        } = *self;
        // The text first: nothing is swapped for a read that cannot be served.
        let (text, lines) = dotenv_text(broker, env, grant_id)?;
        // From here the reader may get values: it and what it starts are value holders, whose
        // requests' strings are masked where shown (`Inner::peer_holds_values`).
        broker.lock().add_value_reader(r.holder.pid, r.holder.start);
        let made = broker
            .mounts
            .lock()
            .get(path)
            .and_then(|e| e.stored.mtime_ns);
        swap(broker, path, dev, ino)?;
        untouched(fd, made)?;
        // Read-only from now on, and watched: putting back a piece read out of the pipe takes
        // an opening for writing, which takes a `chmod`; both are seen.
        rustix::fs::fchmod(fd, rustix::fs::Mode::RUSR)
            .map_err(|e| format!("cannot make the FIFO read-only: {e}; nothing was written"))?;
        let watch = Watch::new(fd)?;
        wait_reading(r, dev, ino).await?;
        ready_to_write(fd, r, dev, ino, made)?;
        Ok(Ready { text, lines, watch })
    }

    /// Writes the text in its pieces off the runtime ([`write_pieces`]), after a last look for
    /// a starved broker or a process with io_uring threads (either: a suspected theft of
    /// nothing written). The text is dropped (zeroed) once written. `Err`: the blocking task
    /// failed.
    async fn write(
        &self,
        fd: OwnedFd,
        text: zeroize::Zeroizing<String>,
        lines: &[Line],
        watch: Watch,
    ) -> Result<Written, String> {
        let Served { r, dev, ino, .. } = *self;
        let pieces = pieces(text.len(), lines);
        let holder = r.holder.clone();
        // Looked at last, right before the first piece: a process with io_uring threads now may
        // copy every piece unseen.
        let (mut uring, found) = UringWatch::new(&r.holder);
        tokio::task::spawn_blocking(move || {
            let mut written = 0;
            let mut uncleared = Exposed::default();
            let drained = match broker_starved().or(found) {
                Some(why) => Drain::Suspect {
                    why,
                    bytes: 0,
                    piece: 0,
                    exposed: Exposed::default(),
                },
                None => write_pieces(
                    &fd,
                    &holder,
                    text.as_bytes(),
                    &pieces,
                    &watch,
                    &mut uring,
                    dev,
                    ino,
                    &mut written,
                    &mut uncleared,
                ),
            };
            drop(text);
            Written {
                drained,
                fd,
                written,
                watch,
                ours: pieces.len(),
                uncleared,
            }
        })
        .await
        .map_err(|e| format!("the write failed: {e}"))
    }

    /// The pids of the processes other than the approved reader holding the served FIFO now.
    fn others(&self) -> Vec<u32> {
        holders(self.dev, self.ino)
            .iter()
            .filter(|h| **h != self.r.holder)
            .map(|h| h.pid)
            .collect()
    }

    /// Records a read stopped as a possible theft: audits it (`mount_read_suspect`, with the
    /// values or hidden names the text may have exposed), ends the grant, and notes on the
    /// mount what may be exposed and what to rotate. `lines`, `len`: the text's lines and
    /// length; `why`, `bytes`, `piece`, `exposed`: as in [`Drain::Suspect`].
    #[allow(clippy::too_many_arguments)]
    fn record_suspect(
        &self,
        lines: &[Line],
        len: usize,
        others: &[u32],
        why: String,
        bytes: usize,
        piece: usize,
        exposed: &Exposed,
    ) {
        let Served {
            broker,
            path,
            env,
            r,
            grant_id,
            ..
        } = *self;
        let which = shown_values(lines, exposed);
        let mut inner = broker.lock();
        // The text holds real names: where the policy hides them, a stolen name piece gave
        // away what the agent is never shown.
        let hidden = inner.names().hides_names(env) && exposed.names > 0;
        let what = exposure_note(exposed, &which, hidden);
        // A copier through io_uring stays while its process runs: say what to do.
        let hint = uring_hint(&why).map_or_else(String::new, |h| format!(" {h}"));
        let listed = format!(
            "STOPPED, possible theft: {why}; {what}. The grant was ended; the reader got {bytes} bytes of {len}.{hint}"
        );
        inner.audit(
            "mount_read_suspect",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "bytes_written": bytes, "bytes_unconfirmed": piece,
                   "bytes_exposed_at_most": exposed.bytes,
                   "pieces_exposed_at_most": exposed.pieces,
                   "values_partly_exposed": which,
                   "hidden_name_exposed": hidden,
                   "holders_after": others, "listed": listed, "refused": true}),
        );
        inner.revoke(
            grant_id,
            "a mount read may have been read by another process",
        );
        drop(inner);
        tracing::error!(
            path,
            why,
            "mount read stopped: another process may have read part of it"
        );
        broker.notify();
        broker.mounts.note(path, true, listed);
    }

    /// Records a read whose rest the broker took back (`mount_reclaimed`); ends the grant when
    /// it was tampered with or another process holds the FIFO. `written`: bytes written;
    /// `why`, `bytes`, `tampered`: as in [`Drain::Reclaimed`]; `uncleared`: as in
    /// [`Written`], audited.
    #[allow(clippy::too_many_arguments)]
    fn record_reclaimed(
        &self,
        lines: &[Line],
        others: &[u32],
        written: usize,
        why: String,
        bytes: usize,
        tampered: bool,
        uncleared: &Exposed,
    ) {
        let Served {
            broker,
            path,
            r,
            grant_id,
            ..
        } = *self;
        let mut inner = broker.lock();
        inner.audit(
            "mount_reclaimed",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "bytes_taken_back": bytes, "bytes_written": written, "holders_after": others,
                   "uncleared": uncleared_json(lines, uncleared),
                   "listed": format!("taken back: {why}"), "refused": true}),
        );
        if tampered || !others.is_empty() {
            inner.revoke(grant_id, "a mount read was tampered with");
        }
        drop(inner);
        broker.notify();
        broker.mounts.note(path, true, format!("taken back: {why}"));
    }

    /// Records a read the approved reader read whole (`mount_read`, its argv and cwd masked as
    /// its card was, and the pieces the io_uring look could not vouch for, `uncleared`); ends
    /// the grant when another process held the FIFO meanwhile.
    fn record_read(&self, lines: &[Line], others: &[u32], uncleared: &Exposed) {
        let Served {
            broker,
            path,
            r,
            grant_id,
            ..
        } = *self;
        let listed = format!("served pid {} (grant {grant_id})", r.holder.pid);
        {
            let mut inner = broker.lock();
            // The reader's argv and cwd, matched against values as its card was.
            let masked = inner.grants().get(grant_id).is_none_or(|g| g.masked());
            inner.audit_as(
                "mount_read",
                json!({
                    "path": path, "grant_id": grant_id, "pid": r.holder.pid,
                    "argv": r.argv, "cwd": r.cwd,
                    "opened_during_write": others,
                    "uncleared": uncleared_json(lines, uncleared),
                    "listed": listed, "refused": false,
                }),
                masked,
            );
            // Someone else held the served FIFO while the text was in it: the grant serves no
            // more.
            if !others.is_empty() {
                inner.revoke(grant_id, "a mount read was shared with another process");
            }
        }
        broker.mounts.note(path, false, listed);
    }

    /// Closes the write end after a whole read ([`close_alone`], off the runtime); another
    /// writer found then is recorded as possible tampering (`mount_read_suspect` with
    /// `after_text`), ends the grant and is noted on the mount. A read end left out of sight
    /// is returned (why), for the caller to record as a possible theft of the whole text.
    async fn close_after_text(
        &self,
        fd: OwnedFd,
        watch: Watch,
        ours: usize,
        written: usize,
        others: &[u32],
    ) -> Option<String> {
        let Served { r, dev, ino, .. } = *self;
        // The reader gets end-of-file now, unless another writer holds the FIFO out of sight:
        // then what that writer adds is read as `.env` too.
        let holder = r.holder.clone();
        let after_text =
            tokio::task::spawn_blocking(move || close_alone(fd, &watch, ours, &holder, dev, ino))
                .await
                .unwrap_or_else(|e| Some((format!("the check after the text failed: {e}"), false)));
        let (why, read_end) = after_text?;
        if read_end {
            return Some(why);
        }
        self.record_tampering(why, written, others);
        None
    }

    /// Records that another process could write into the served FIFO (`why`) after the
    /// broker's `written` bytes: audited `mount_read_suspect` with `after_text`, the grant
    /// ended, and the mount's note says the reader may have loaded lines keyveil did not
    /// write.
    fn record_tampering(&self, why: String, written: usize, others: &[u32]) {
        let Served {
            broker,
            path,
            r,
            grant_id,
            ..
        } = *self;
        let listed = format!(
            "STOPPED, possible tampering: {why}; the reader (pid {}) may have loaded lines keyveil did not write (a variable added or overridden). The grant was ended; check what the reader did with its values",
            r.holder.pid
        );
        let mut inner = broker.lock();
        inner.audit(
            "mount_read_suspect",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "bytes_written": written, "bytes_unconfirmed": 0,
                   "value_partly_exposed": null, "holders_after": others,
                   "after_text": true, "listed": listed, "refused": true}),
        );
        inner.revoke(
            grant_id,
            "a mount read may have been written into by another process",
        );
        drop(inner);
        tracing::error!(
            path,
            why,
            "mount read: another process could write into the served FIFO"
        );
        broker.notify();
        broker.mounts.note(path, true, listed);
    }
}

/// The names (or aliases) of the values `exposed` holds part of, as the human is shown them.
fn shown_values(lines: &[Line], exposed: &Exposed) -> Vec<String> {
    exposed
        .values
        .iter()
        .map(|i| {
            lines
                .get(*i)
                .map_or_else(|| "one of the values".to_owned(), |l| l.shown.clone())
        })
        .collect()
}

/// What a stopped read may have exposed, for the mount's note: at most `exposed` (an upper
/// bound, not a guess), the values `which` to rotate, and whether a real name hidden from
/// agents was in it (`hidden`).
pub(in crate::broker::mounts) fn exposure_note(
    exposed: &Exposed,
    which: &[String],
    hidden: bool,
) -> String {
    if exposed.pieces == 0 {
        return "nothing was written".to_owned();
    }
    let names = if hidden {
        ", and variable names this environment hides from agents"
    } else {
        ""
    };
    if which.is_empty() {
        return if hidden {
            "no value was exposed, but the piece held a variable's real name, which this environment hides from agents".to_owned()
        } else {
            "no value was exposed (the piece held a name)".to_owned()
        };
    }
    let list = which.join(", ");
    let scope = if exposed.pieces > 1 {
        format!(
            " (in {} pieces served while the broker could not rule out a copier)",
            exposed.pieces
        )
    } else {
        String::new()
    };
    format!(
        "up to {} bytes of the text{scope}, parts of the values of {list}{names}, may be exposed; rotate {list}",
        exposed.bytes
    )
}

/// The audit's account of the pieces the io_uring look could not vouch for: `null` when none,
/// else their bytes, pieces and the values they hold part of (names or aliases, never a value).
fn uncleared_json(lines: &[Line], uncleared: &Exposed) -> serde_json::Value {
    if uncleared.pieces == 0 {
        return serde_json::Value::Null;
    }
    json!({"bytes": uncleared.bytes, "pieces": uncleared.pieces,
           "values": shown_values(lines, uncleared), "names": uncleared.names})
}
