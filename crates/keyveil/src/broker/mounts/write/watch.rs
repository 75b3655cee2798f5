//! The inotify watch on the served FIFO: every opening, mode change and write, by any process.

use crate::broker::mounts::*;

/// What the FIFO's watch saw since it was made.
#[derive(Default, Clone, Copy)]
pub(in crate::broker::mounts) struct Seen {
    /// Someone opened the FIFO (every opening after the watch is another process's: the
    /// reader opened it before, the broker's own write end was opened before).
    pub(in crate::broker::mounts) opened: bool,
    /// Its mode, owner or times were changed (`chmod` back to writable, first of all).
    pub(in crate::broker::mounts) changed: bool,
    /// Writes into it (the broker's own pieces among them).
    pub(in crate::broker::mounts) writes: usize,
    /// The kernel dropped events: nothing can be told.
    pub(in crate::broker::mounts) overflow: bool,
}

/// An inotify watch on the served FIFO (through the broker's own descriptor,
/// `/proc/self/fd/N`: the FIFO has no name left). Sees every opening of it, every change of
/// its mode and every write into it, by any process, however brief: what a process that
/// opens `/proc/READER/fd/N` to read the text (and maybe write it back) cannot avoid.
pub(in crate::broker::mounts) struct Watch {
    fd: OwnedFd,
    seen: std::cell::Cell<Seen>,
}

impl Watch {
    /// Watches the FIFO open as `fifo`.
    pub(in crate::broker::mounts) fn new(fifo: &OwnedFd) -> Result<Watch, String> {
        use rustix::fs::inotify;
        use std::os::fd::AsRawFd;
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .map_err(|e| format!("cannot watch the FIFO (inotify): {e}; nothing was written"))?;
        inotify::add_watch(
            &fd,
            format!("/proc/self/fd/{}", fifo.as_raw_fd()),
            inotify::WatchFlags::OPEN
                | inotify::WatchFlags::ATTRIB
                | inotify::WatchFlags::MODIFY
                // Reads part the broker's write from a write-back (which would otherwise be
                // merged with it into one event).
                | inotify::WatchFlags::ACCESS,
        )
        .map_err(|e| format!("cannot watch the FIFO (inotify): {e}; nothing was written"))?;
        Ok(Watch {
            fd,
            seen: std::cell::Cell::new(Seen::default()),
        })
    }

    /// Everything seen since the watch was made.
    pub(in crate::broker::mounts) fn seen(&self) -> Seen {
        use rustix::fs::inotify::{ReadFlags, Reader};
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut r = Reader::new(&self.fd, &mut buf);
        let mut seen = self.seen.get();
        loop {
            match r.next() {
                Ok(ev) => {
                    let f = ev.events();
                    seen.opened |= f.contains(ReadFlags::OPEN);
                    seen.changed |= f.contains(ReadFlags::ATTRIB);
                    seen.overflow |= f.contains(ReadFlags::QUEUE_OVERFLOW);
                    seen.writes += usize::from(f.contains(ReadFlags::MODIFY));
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    seen.overflow = true;
                    break;
                }
            }
        }
        self.seen.set(seen);
        seen
    }

    /// Why the FIFO was written into or changed by another process, given the broker's own
    /// `ours` writes, or `None`; openings aside (see [`close_alone`]).
    pub(in crate::broker::mounts) fn written_or_changed(&self, ours: usize) -> Option<String> {
        let seen = self.seen();
        if seen.overflow {
            Some("the FIFO's watch lost events".to_owned())
        } else if seen.changed {
            Some("the FIFO's mode or times were changed (as to make it writable)".to_owned())
        } else if seen.writes > ours {
            Some("another process wrote into the FIFO".to_owned())
        } else {
            None
        }
    }

    /// Whether another process wrote into the FIFO, given the broker's own `ours` writes.
    pub(in crate::broker::mounts) fn foreign_writes(&self, ours: usize) -> bool {
        let seen = self.seen();
        seen.overflow || seen.writes > ours
    }

    /// Why the FIFO is not as the broker left it after its own `ours` writes, or `None`.
    pub(in crate::broker::mounts) fn doubt(&self, fd: &OwnedFd, ours: usize) -> Option<String> {
        let seen = self.seen();
        if seen.overflow {
            Some("the FIFO's watch lost events".to_owned())
        } else if seen.opened {
            Some("another process opened the FIFO (as through /proc/READER/fd/N)".to_owned())
        } else if seen.changed {
            Some("the FIFO's mode or times were changed (as to make it writable)".to_owned())
        } else if seen.writes > ours {
            Some("another process wrote into the FIFO".to_owned())
        } else {
            match rustix::fs::fstat(fd) {
                Ok(st) if st.st_mode & 0o777 == 0o400 => None,
                _ => Some("the FIFO's mode was changed (as to make it writable)".to_owned()),
            }
        }
    }
}
