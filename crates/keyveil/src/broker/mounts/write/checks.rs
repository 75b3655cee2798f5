//! The checks before the first piece: the swap, an untouched pipe, the holders, a reader waiting.

use crate::broker::mounts::*;

/// Puts a fresh FIFO at `path` in place of the served one `(dev, ino)` (made next to it,
/// renamed over it) and records it as the mount's: from now on the served FIFO can be opened
/// only through descriptors already open (or a hard link, checked after).
pub(in crate::broker::mounts) fn swap(
    broker: &Broker,
    path: &str,
    dev: u64,
    ino: u64,
) -> Result<(), String> {
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
pub(in crate::broker::mounts) fn untouched(fd: &OwnedFd, made: Option<i128>) -> Result<(), String> {
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
pub(in crate::broker::mounts) fn ready_to_write(
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
    // A read end opened while the card waited (through /proc/READER/fd/N, before the swap
    // and the FIFO's inotify watch) and parked out of sight.
    if let Some(why) = openings_doubt(dev, ino) {
        return Err(format!("{why}; nothing was written"));
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
pub(in crate::broker::mounts) const READ_WAIT: Duration = Duration::from_secs(5);

/// Waits (at most [`READ_WAIT`]) until the approved reader is waiting for input: the text is
/// written only into a pipe its reader is about to drain, never left for a reader that is busy
/// elsewhere (anyone opening `/proc/READER/fd/N` could read it meanwhile).
pub(in crate::broker::mounts) async fn wait_reading(
    r: &Reader,
    dev: u64,
    ino: u64,
) -> Result<(), String> {
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
                    "the reader did not start reading the FIFO within {} s (where /proc shows the descriptor it waits on, it must be the FIFO's: a holder asleep on another input is a stand-in); nothing was written",
                    READ_WAIT.as_secs()
                ));
            }
            Some(false) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}
