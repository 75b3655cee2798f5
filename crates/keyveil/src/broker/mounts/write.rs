//! Writing an approved read: the text, the swap, the last checks, the write and the watch.

use super::*;

/// Largest dotenv text a mount serves (the pipe is enlarged to hold all of it at once).
pub(super) const MAX_TEXT: usize = 1 << 20;

/// The dotenv text of the grant's variables, or why there is none.
pub(super) fn dotenv_text(
    broker: &Broker,
    env: &str,
    grant_id: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    let inner = broker.lock();
    let vars = inner
        .grants
        .get(grant_id)
        .map(|g| g.variables.clone())
        .unwrap_or_default();
    let opened = inner.sealed_values(env, &vars).and_then(|sealed| {
        sealed
            .into_iter()
            .map(|(k, v)| {
                v.open()
                    .map(|o| (k, o))
                    .map_err(super::state::sealed_value_error)
            })
            .collect::<Result<Vec<_>, _>>()
    });
    let text = match opened {
        Err(e) => Err(format!(
            "cannot read the values: {}",
            inner.hide_names_in_error(env, &vars, e).message
        )),
        Ok(values) => {
            keyveil_dotenv::write(values.iter().map(|(k, v)| (k.as_str(), v.expose()))).map_err(
                |e| {
                    // The name as clients see it (an alias where the policy hides names).
                    format!(
                        "cannot write a .env every reader reads the same: {}: {}",
                        inner.shown_name(env, &e.name),
                        e.what
                    )
                },
            )
        }
    }?;
    if text.len() > MAX_TEXT {
        return Err(format!("the .env text is over {MAX_TEXT} bytes"));
    }
    Ok(text)
}

/// Puts a fresh FIFO at `path` in place of the served one `(dev, ino)` (made next to it,
/// renamed over it) and records it as the mount's: from now on the served FIFO can be opened
/// only through descriptors already open (or a hard link, checked after).
pub(super) fn swap(broker: &Broker, path: &str, dev: u64, ino: u64) -> Result<(), String> {
    let p = PathBuf::from(path);
    if !matches!(at_path(path, dev, ino), AtPath::Ours) {
        return Err("the FIFO was replaced or removed while the request waited".to_owned());
    }
    let tmp = sibling(&p);
    let new_id =
        make_fifo_timed(&tmp).map_err(|e| format!("cannot swap the FIFO: {}", e.message))?;
    if let Err(e) = std::fs::rename(&tmp, &p) {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("cannot swap the FIFO: {e}"));
    }
    let mut m = broker.mounts.lock();
    let Some(e) = m.get_mut(path) else {
        // Unmounted meanwhile: the fresh FIFO goes too.
        let _ = std::fs::remove_file(&p);
        return Err("unmounted while the request waited".to_owned());
    };
    e.stored.dev = new_id.0;
    e.stored.ino = new_id.1;
    e.stored.mtime_ns = Some(new_id.2);
    if let Err(e) = broker.mounts.save(&m) {
        tracing::warn!(error = %e, "cannot write mounts.json");
    }
    Ok(())
}

/// Nothing was written into the served FIFO: nothing in the pipe now, and its modification
/// time is the one it had when the broker made it (`made`): bytes another process wrote and
/// the reader already drained moved it.
pub(super) fn untouched(fd: &OwnedFd, made: Option<i128>) -> Result<(), String> {
    let moved = rustix::fs::fstat(fd).map_or(true, |st| {
        made.is_some_and(|m| m != mtime_ns(st.st_mtime, st.st_mtime_nsec as i64))
    });
    match rustix::io::ioctl_fionread(fd) {
        Ok(0) if !moved => Ok(()),
        _ => Err("something else was already written into the FIFO".to_owned()),
    }
}

/// The checks right before the write, on the served FIFO (`fd`, already swapped out): held by
/// the approved reader alone, no name left, the reader running, the pipe empty.
pub(super) fn ready_to_write(
    fd: &OwnedFd,
    r: &Reader,
    dev: u64,
    ino: u64,
    made: Option<i128>,
) -> Result<(), String> {
    untouched(fd, made)?;
    let hs = holders(dev, ino);
    if hs.as_slice() != std::slice::from_ref(&r.holder) {
        return Err(format!(
            "the file was opened by {} process(es) other than the approved reader",
            hs.iter().filter(|h| **h != r.holder).count()
        ));
    }
    // After the swap the served FIFO must have no name left: a hard link the agent made
    // elsewhere would let it open the FIFO by that name and share the read.
    match rustix::fs::fstat(fd) {
        Ok(st) if st.st_nlink == 0 => {}
        _ => {
            return Err(
                "the FIFO has another name (a hard link made elsewhere); nothing was written"
                    .to_owned(),
            );
        }
    }
    // A stopped reader leaves the text in the pipe for as long as whoever stopped it likes,
    // for anyone who opens the reader's descriptor through /proc.
    if stopped(r.holder.pid) {
        return Err(format!(
            "the approved reader (pid {}) is stopped or traced; nothing was written",
            r.holder.pid
        ));
    }
    // The executable on the card is the one the text is written to: a reader that exec'd
    // another program since (same pid, same start time, the FIFO inherited) gets nothing.
    if let Some(exe) = &r.exe
        && !std::fs::metadata(format!("/proc/{}/exe", r.holder.pid))
            .is_ok_and(|m| m.dev() == exe.dev && m.ino() == exe.ino)
    {
        return Err(format!(
            "the approved reader (pid {}) now runs another executable than the one approved; nothing was written",
            r.holder.pid
        ));
    }
    // A reader kept off the CPU leaves the text in the pipe as a stopped one does. Looked at
    // last, right before the write.
    if let Some(why) = starved(r.holder.pid) {
        return Err(format!("{why}; nothing was written"));
    }
    match rustix::io::ioctl_fionread(fd) {
        Ok(0) => Ok(()),
        _ => Err("something else was already written into the FIFO".to_owned()),
    }
}

/// Longest the broker waits, after the approval, for the reader to be waiting for the text.
pub(super) const READ_WAIT: Duration = Duration::from_secs(5);

/// Waits (at most [`READ_WAIT`]) until the approved reader is waiting for input: the text is
/// written only into a pipe its reader is about to drain, never left for a reader that is busy
/// elsewhere (anyone opening `/proc/READER/fd/N` could read it meanwhile).
pub(super) async fn wait_reading(r: &Reader, dev: u64, ino: u64) -> Result<(), String> {
    let t0 = tokio::time::Instant::now();
    loop {
        if stopped(r.holder.pid) {
            return Err(format!(
                "the approved reader (pid {}) is stopped or traced; nothing was written",
                r.holder.pid
            ));
        }
        if let Some(why) = starved(r.holder.pid) {
            return Err(format!("{why}; nothing was written"));
        }
        match waiting_for_input(r.holder.pid, dev, ino) {
            Some(true) | None => return Ok(()),
            Some(false) if t0.elapsed() >= READ_WAIT => {
                return Err(format!(
                    "the reader did not start reading within {} s; nothing was written",
                    READ_WAIT.as_secs()
                ));
            }
            Some(false) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// How long the broker watches a written pipe for the reader to drain it. Text left unread
/// after it, untouched, is taken back (the reader gets nothing).
pub(super) const DRAIN_WATCH: Duration = Duration::from_secs(10);

/// How the text left the pipe.
pub(super) enum Drain {
    /// The approved reader read all of it, and nothing else held the FIFO meanwhile.
    Read,
    /// The broker took back what was left (`bytes`), for the reason given; `tampered`: not
    /// only because the reader left or was slow.
    Reclaimed {
        why: String,
        bytes: usize,
        tampered: bool,
    },
}

/// Watches the pipe after the write until the reader has read all of it. While text is left
/// in it, the approved reader stopping or being traced, leaving, or any other process holding
/// the FIFO makes the broker take back what is left (see [`reclaim`]); so does text left
/// untouched for [`DRAIN_WATCH`].
pub(super) async fn watch_drain(fd: &OwnedFd, r: &Reader, len: usize, dev: u64, ino: u64) -> Drain {
    let t0 = tokio::time::Instant::now();
    let mut round: u32 = 0;
    let mut left_early = false;
    loop {
        let left = rustix::io::ioctl_fionread(fd).map_or(0, |n| n as usize);
        if left == 0 {
            return Drain::Read;
        }
        let gone = start_time(r.holder.pid) != Some(r.holder.start);
        let why = if gone {
            left_early = true;
            Some("the reader exited before reading all of it".to_owned())
        } else if stopped(r.holder.pid) {
            Some(format!(
                "the approved reader (pid {}) was stopped or traced with the text unread",
                r.holder.pid
            ))
        } else if let Some(why) = starved(r.holder.pid) {
            Some(format!("{why}, with the text unread"))
        } else if round.is_multiple_of(8) {
            let hs = holders(dev, ino);
            if hs.iter().any(|h| *h != r.holder) {
                Some("another process held the FIFO with the text unread".to_owned())
            } else if hs.is_empty() {
                left_early = true;
                Some("the reader closed the file before reading all of it".to_owned())
            } else {
                None
            }
        } else if left == len && t0.elapsed() >= DRAIN_WATCH {
            Some(format!(
                "the reader did not read the text within {} s",
                DRAIN_WATCH.as_secs()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            return Drain::Reclaimed {
                why,
                bytes: reclaim(fd),
                tampered: !left_early,
            };
        }
        round = round.wrapping_add(1);
        // Tight at first (a reader drains the pipe at once), then gentler.
        let pause = if t0.elapsed() < Duration::from_millis(200) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        tokio::time::sleep(pause).await;
    }
}

/// Takes back what is left in the pipe of the served FIFO (`fd`: the broker's write end): it
/// opens the same FIFO for reading through its own descriptor (`/proc/self/fd/N`; the broker
/// is not dumpable, so no other process can) and reads it out. Returns how many bytes it took.
pub(super) fn reclaim(fd: &OwnedFd) -> usize {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let Ok(rd) = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return 0;
    };
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 64 * 1024]);
    let mut took = 0;
    while let Ok(n) = rustix::io::read(&rd, &mut buf[..]) {
        if n == 0 {
            break;
        }
        took += n;
    }
    took
}

/// Swaps a fresh FIFO in at `path` (so no one can open the served one by name any more), then
/// checks the holders once more, writes the text in one go, and watches the reader drain it.
/// Nothing is written on any doubt; a read shared with another process ends the grant.
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
    let fail = |why: String| {
        broker.lock().audit(
            "mount_not_written",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why}),
        );
        broker.mounts.note(path, true, why);
    };
    // The text first: nothing is swapped for a read that cannot be served.
    let text = match dotenv_text(broker, env, grant_id) {
        Ok(t) => t,
        Err(why) => return fail(why),
    };
    let made = broker
        .mounts
        .lock()
        .get(path)
        .and_then(|e| e.stored.mtime_ns);
    if let Err(why) = swap(broker, path, dev, ino) {
        return fail(why);
    }
    if let Err(why) = untouched(&fd, made) {
        return fail(why);
    }
    if let Err(why) = wait_reading(r, dev, ino).await {
        return fail(why);
    }
    if let Err(why) = ready_to_write(&fd, r, dev, ino, made) {
        return fail(why);
    }
    let cap = rustix::pipe::fcntl_setpipe_size(&fd, text.len().max(4096)).unwrap_or(0);
    if cap < text.len() {
        return fail("the pipe cannot be made large enough to hold the text at once".to_owned());
    }
    let len = text.len();
    let written = rustix::io::write(fd.as_fd(), text.as_bytes());
    drop(text);
    let drained = match written {
        Ok(n) if n == len => watch_drain(&fd, r, len, dev, ino).await,
        Ok(_) => return fail("the write was cut short".to_owned()),
        Err(rustix::io::Errno::PIPE) => {
            return fail("the reader closed the file before it was written (EPIPE)".to_owned());
        }
        Err(e) => return fail(format!("the write failed: {e}")),
    };
    let after = holders(dev, ino);
    drop(fd);
    let others: Vec<u32> = after
        .iter()
        .filter(|h| **h != r.holder)
        .map(|h| h.pid)
        .collect();
    if let Drain::Reclaimed {
        why,
        bytes,
        tampered,
    } = drained
    {
        let mut inner = broker.lock();
        inner.audit(
            "mount_reclaimed",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "bytes_taken_back": bytes, "bytes_written": len, "holders_after": others}),
        );
        if tampered || !others.is_empty() {
            inner.revoke(grant_id, "a mount read was tampered with");
        }
        drop(inner);
        broker.notify();
        return broker.mounts.note(path, true, format!("taken back: {why}"));
    }
    let mut inner = broker.lock();
    inner.audit(
        "mount_read",
        json!({
            "path": path, "grant_id": grant_id, "pid": r.holder.pid,
            "argv": r.argv, "cwd": r.cwd,
            "opened_during_write": others,
        }),
    );
    // Someone else held the served FIFO while the text was in it: the grant serves no more.
    if !others.is_empty() {
        inner.revoke(grant_id, "a mount read was shared with another process");
    }
    drop(inner);
    broker.mounts.note(
        path,
        false,
        format!("served pid {} (grant {grant_id})", r.holder.pid),
    );
}
