//! Counting the openings of a mount's FIFO with fanotify, from the moment the broker made it.
//!
//! A copier needs a read end of the served FIFO. One it opens (by name before the reader, or
//! through `/proc/READER/fd/N` while the card waits) and then parks out of sight (in a unix
//! socket's queue, `SCM_RIGHTS`, or an io_uring ring) is in no `/proc/PID/fd` when the holders
//! scan runs, yet copies each piece with `tee(2)` when it takes it back. Every such read end
//! was *opened*, though, and fanotify reports each opening of a marked inode; unlike inotify,
//! it never merges the events of two different processes into one (an inotify count of
//! identical events is not sound). The broker marks each FIFO it makes right after `mkfifo`
//! (before it has its name) and, while no read end exists, counts the openings by processes
//! other than itself: the reader's is the one expected, any other is a copier's (or a second
//! reader's) and refuses the read. An unprivileged listener sees other processes' pids as 0,
//! which is enough: only its own opens are told apart, and two processes' events stay two.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};

/// `FAN_REPORT_FID` (fanotify_init(2), Linux 5.1): events name the object by file handle
/// instead of opening a descriptor of it, which is what lets an unprivileged process listen.
const FAN_REPORT_FID: u32 = 0x200;
const FAN_OPEN: u64 = 0x20;
const FAN_Q_OVERFLOW: u64 = 0x4000;

/// The openings of one FIFO seen so far.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    /// Openings by other processes since the last time no read end existed.
    opens: usize,
    /// A moment with no read end was seen after the mark (only then is `opens` all of them).
    trusted: bool,
    /// The kernel dropped events.
    overflow: bool,
}

/// A fanotify group watching the openings of one FIFO.
#[derive(Debug)]
pub(in crate::broker::mounts) struct OpenWatch {
    fd: OwnedFd,
    count: Mutex<Count>,
}

impl OpenWatch {
    /// Marks the FIFO open as `fifo` (any descriptor of it, `O_PATH` too) for its openings.
    /// `None`: the kernel or the filesystem does not allow it (see the module's notes).
    fn new(fifo: &OwnedFd) -> Option<OpenWatch> {
        let group = Fanotify::init(
            InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::from_bits_retain(FAN_REPORT_FID),
            EventFFlags::O_RDONLY | EventFFlags::O_CLOEXEC,
        )
        .ok()?;
        let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
        group
            .mark(
                MarkFlags::FAN_MARK_ADD,
                MaskFlags::FAN_OPEN,
                nix::fcntl::AT_FDCWD,
                Some(path.as_str()),
            )
            .ok()?;
        Some(OpenWatch {
            fd: OwnedFd::from(group),
            count: Mutex::new(Count::default()),
        })
    }

    /// Reads the events queued so far into the count.
    fn drain(&self) -> Count {
        let me = std::process::id() as i32;
        let mut buf = [0u8; 4096];
        let mut c = self.count.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let n = match rustix::io::read(&self.fd, &mut buf[..]) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(_) => {
                    c.overflow = true;
                    break;
                }
            };
            if n == 0 {
                break;
            }
            let mut off = 0;
            // struct fanotify_event_metadata: event_len u32, vers u8, reserved u8,
            // metadata_len u16, mask u64, fd i32, pid i32 (24 bytes), then info records.
            while off + 24 <= n {
                let word = |a: usize, b: usize| buf.get(off + a..off + b).unwrap_or_default();
                let len = u32::from_ne_bytes(word(0, 4).try_into().unwrap_or_default()) as usize;
                let mask = u64::from_ne_bytes(word(8, 16).try_into().unwrap_or_default());
                let pid = i32::from_ne_bytes(word(20, 24).try_into().unwrap_or_default());
                if mask & FAN_Q_OVERFLOW != 0 {
                    c.overflow = true;
                }
                if mask & FAN_OPEN != 0 && pid != me {
                    c.opens += 1;
                }
                if len < 24 {
                    c.overflow = true;
                    break;
                }
                off += len;
            }
        }
        *c
    }

    /// No read end exists now (the broker's non-blocking open for writing failed with
    /// `ENXIO` *after* [`OpenWatch::drain`]): every opening counted so far was closed, and any
    /// later one is an event still to come. From here on the count is all of them.
    pub(in crate::broker::mounts) fn reset(&self) {
        let mut c = self.count.lock().unwrap_or_else(|e| e.into_inner());
        c.opens = 0;
        c.trusted = true;
    }

    /// Why the FIFO's openings are not exactly one reader's, or `None`.
    pub(in crate::broker::mounts) fn doubt(&self) -> Option<String> {
        let c = self.drain();
        if c.overflow {
            Some("the watch of the FIFO's openings lost events".to_owned())
        } else if !c.trusted {
            Some("the FIFO may have been opened before the broker watched its openings (a broker restart)".to_owned())
        } else if c.opens != 1 {
            Some(format!(
                "the FIFO was opened {} times by other processes than the broker, where only the reader's opening is expected (a descriptor kept out of sight, as parked in a socket's queue or an io_uring ring, copies every piece)",
                c.opens
            ))
        } else {
            None
        }
    }
}

/// A FIFO's watch, or `None` where the kernel or the filesystem refused one (fanotify with
/// file ids: an unprivileged process may use it since Linux 5.13, on filesystems that give
/// file handles).
type Slot = Option<Arc<OpenWatch>>;

/// The watches by the FIFO's (device, inode).
fn table() -> &'static Mutex<BTreeMap<(u64, u64), Slot>> {
    static T: OnceLock<Mutex<BTreeMap<(u64, u64), Slot>>> = OnceLock::new();
    T.get_or_init(Mutex::default)
}

/// Starts watching the openings of the FIFO at `path` (`dev`, `ino`: the broker's, checked
/// through an `O_PATH` descriptor, which opens nothing). `fresh`: the broker just made it and
/// no one can have opened it yet, which a non-blocking open for writing then confirms
/// (`ENXIO`: no read end); otherwise the count is trusted only once the supervising poll sees
/// no read end ([`OpenWatch::reset`]). Where the kernel does not allow it, that is recorded
/// (the fallback `docs/mounts.md` describes).
pub(in crate::broker::mounts) fn watch_opens(path: &std::path::Path, dev: u64, ino: u64) {
    use rustix::fs::{Mode, OFlags};
    let Ok(f) = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    if !rustix::fs::fstat(&f).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino) {
        return;
    }
    let Some(w) = (!count_off()).then(|| OpenWatch::new(&f)).flatten() else {
        table()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((dev, ino), None);
        return;
    };
    let none = matches!(
        rustix::fs::open(
            format!("/proc/self/fd/{}", f.as_raw_fd()),
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ),
        Err(rustix::io::Errno::NXIO)
    );
    if none {
        w.drain();
        w.reset();
    }
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert((dev, ino), Some(Arc::new(w)));
}

/// Whether the openings of the FIFO `(dev, ino)` were looked at (watched, or refused a watch).
pub(in crate::broker::mounts) fn opens_known(dev: u64, ino: u64) -> bool {
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&(dev, ino))
}

/// The watch of the FIFO `(dev, ino)`, if there is one.
pub(in crate::broker::mounts) fn opens_of(dev: u64, ino: u64) -> Option<Arc<OpenWatch>> {
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(dev, ino))
        .cloned()
        .flatten()
}

/// Forgets the watch of a FIFO the broker no longer serves.
pub(in crate::broker::mounts) fn forget_opens(dev: u64, ino: u64) {
    table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&(dev, ino));
}

/// Before the broker drains the watch and tries its non-blocking open for writing: the
/// count so far (see [`OpenWatch::reset`]).
pub(in crate::broker::mounts) fn before_poll(dev: u64, ino: u64) {
    if let Some(w) = opens_of(dev, ino) {
        w.drain();
    }
}

/// Why a read of the FIFO `(dev, ino)` is not to be served as far as its openings tell:
/// not exactly one opening by another process since no read end existed, or never looked
/// at. `None` where the kernel or the filesystem refused the watch (the fallback
/// `docs/mounts.md` describes).
pub(in crate::broker::mounts) fn openings_doubt(dev: u64, ino: u64) -> Option<String> {
    let slot = table()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(dev, ino))
        .cloned();
    match slot {
        Some(Some(w)) => w.doubt(),
        Some(None) => None,
        None => Some("the FIFO's openings were not watched".to_owned()),
    }
}

/// Debug builds (the integration tests) serve without the count of openings while the file
/// named in `KEYVEIL_TEST_NO_OPEN_COUNT` exists, as on a kernel without fanotify: the replays
/// of the layers behind it (the inotify watch from the swap on, the byte counts, the io_uring
/// looks, the check after the text) run as they do there. Release builds always count.
fn count_off() -> bool {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os("KEYVEIL_TEST_NO_OPEN_COUNT").filter(|p| !p.is_empty()) {
        return std::path::Path::new(&p).exists();
    }
    false
}
