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
pub(in crate::broker::mounts) fn close_alone(
    fd: OwnedFd,
    watch: &Watch,
    ours: usize,
    r: &Holder,
    dev: u64,
    ino: u64,
) -> Option<String> {
    use rustix::fs::{Mode, OFlags};
    use std::os::fd::AsRawFd;
    if let Some(why) = watch.written_or_changed(ours) {
        return Some(why);
    }
    let rd = rustix::fs::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    );
    drop(fd);
    let Ok(rd) = rd else {
        return Some("cannot tell whether another process holds the FIFO for writing".to_owned());
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
        if why.is_some()
            || t0.elapsed() >= CLOSE_WATCH
            || start_time(r.pid) != Some(r.start)
            || fds_of(r.pid, dev, ino).is_empty()
        {
            return why;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
