//! After the text: closing the write end alone, with no other writer left.

use crate::broker::mounts::*;

/// How long, after the text, the broker goes on watching the served FIFO for the reader to
/// close it (see [`close_alone`]).
pub(in crate::broker::mounts) const CLOSE_WATCH: Duration = Duration::from_secs(1);

/// After the whole text was read: closes the broker's write end (`fd`) and tells whether
/// another process could still write into the FIFO, or did. A write end held out of sight
/// (an io_uring registered file opened before the swap, while the FIFO was writable and
/// unwatched) keeps the reader from end-of-file once the broker is done, and what it writes
/// then is read as part of `.env`: lines the agent adds, or a value it overrides. The
/// broker opens a read end of its own first (`/proc/self/fd/N`) and, once its write end is
/// closed, a non-blocking read of it says `EAGAIN` exactly when a writer remains (end of
/// file when none does). Until the reader closes the FIFO (at most [`CLOSE_WATCH`]) the
/// watch must see no write but the broker's `ours` and no change of mode; anything that
/// arrives meanwhile is taken back where the broker gets to it first.
///
/// Once the reader closed the FIFO (and no process's `/proc/PID/fd` shows it), the broker
/// also drops its read end and opens the FIFO for writing without blocking, through an
/// `O_PATH` descriptor of its own (which the FIFO's counts ignore): that fails (`ENXIO`)
/// exactly when no read end is left anywhere. A read end left is one held out of sight (a
/// descriptor parked in a socket's queue, `SCM_RIGHTS`, or in an io_uring ring) that may have
/// copied every piece (`tee(2)`). The second of the pair: `true` for such a read end (a
/// possible theft of the whole text), `false` for a writer (possible tampering).
pub(in crate::broker::mounts) fn close_alone(
    fd: OwnedFd,
    watch: &Watch,
    ours: usize,
    r: &Holder,
    dev: u64,
    ino: u64,
) -> Option<(String, bool)> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    if let Some(why) = watch.written_or_changed(ours) {
        return Some((why, false));
    }
    let at = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let rd = rustix::fs::open(
        &at,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let path_fd = rustix::fs::open(&at, OFlags::PATH | OFlags::CLOEXEC, Mode::empty());
    drop(fd);
    let Ok(rd) = rd else {
        return Some((
            "cannot tell whether another process holds the FIFO for writing".to_owned(),
            false,
        ));
    };
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 4096]);
    let t0 = std::time::Instant::now();
    let mut why = None;
    loop {
        match rustix::io::read(&rd, &mut buf[..]) {
            Ok(0) => {}
            Ok(_) => {
                why.get_or_insert_with(|| {
                    "another process wrote into the FIFO after the text".to_owned()
                });
            }
            Err(rustix::io::Errno::AGAIN) => {
                why.get_or_insert_with(|| {
                    "another process holds the FIFO open for writing (out of sight of /proc, as through io_uring)".to_owned()
                });
            }
            Err(_) => {}
        }
        if let Some(w) = watch.written_or_changed(ours) {
            why.get_or_insert(w);
        }
        if why.is_some() {
            return why.map(|w| (w, false));
        }
        let closed = start_time(r.pid) != Some(r.start) || fds_of(r.pid, dev, ino).is_empty();
        if closed {
            drop(rd);
            return path_fd
                .ok()
                .and_then(|p| read_end_left(&p, r, dev, ino))
                .map(|w| (w, true));
        }
        if t0.elapsed() >= CLOSE_WATCH {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Why a read end of the served FIFO (`path_fd`: the broker's `O_PATH` descriptor of it)
/// is left once the approved reader `r` closed it, or `None`. Opening a FIFO for writing
/// without blocking succeeds exactly while some read end is open (`ENXIO` otherwise), a count
/// the kernel keeps of every open read end: in a descriptor table, in flight in a unix
/// socket's queue or registered in an io_uring ring. A read end left is another process's:
/// one `/proc` shows (a copier that took its parked descriptor back, or a child the reader
/// left it to), or one out of sight. Either may have copied every piece (`tee(2)`).
pub(in crate::broker::mounts) fn read_end_left(
    path_fd: &OwnedFd,
    r: &Holder,
    dev: u64,
    ino: u64,
) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    let w = rustix::fs::open(
        format!("/proc/self/fd/{}", path_fd.as_raw_fd()),
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    );
    let hs = holders(dev, ino);
    let others: Vec<u32> = hs.iter().filter(|h| *h != r).map(|h| h.pid).collect();
    match w {
        Err(rustix::io::Errno::NXIO) => None,
        Err(e) => Some(format!(
            "cannot tell whether a read end of the FIFO is left after the reader's ({e})"
        )),
        Ok(_) if !others.is_empty() => Some(format!(
            "process(es) {others:?} other than the approved reader held the FIFO after the text: they could copy every piece (tee(2)) as the reader read it"
        )),
        // The reader's own descriptor after all (it closed it a moment later than seen).
        Ok(_) if !hs.is_empty() => None,
        Ok(_) => Some(
            "a read end of the FIFO outlived the reader's, out of sight of /proc (a descriptor parked in a socket's queue, SCM_RIGHTS, or in an io_uring ring): it could copy every piece (tee(2)) as the reader read it".to_owned(),
        ),
    }
}

/// Closes the broker's write end (`fd`) of a FIFO it wrote nothing into and tells whether
/// another process still holds it for writing (`Some(why)`): a read end of the broker's own,
/// opened first, reads `EAGAIN` without blocking exactly while a writer remains (end of file
/// when none does), as in [`close_alone`]. What such a writer writes is read as `.env`;
/// what was written into the pipe before is read out here.
pub(in crate::broker::mounts) fn other_writer(fd: OwnedFd) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    let rd = rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    );
    drop(fd);
    let rd = rd.ok()?;
    let mut buf = zeroize::Zeroizing::new(vec![0u8; 4096]);
    // What another process wrote before is taken out on the way (the reader gets none of it).
    loop {
        match rustix::io::read(&rd, &mut buf[..]) {
            Ok(1..) | Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                return Some(
                    "another process holds the FIFO open for writing (out of sight of /proc, as through io_uring)".to_owned(),
                );
            }
            Ok(0) | Err(_) => return None,
        }
    }
}
