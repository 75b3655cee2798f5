//! Writing the text piece by piece, each only once the reader read the one before, and taking back what is left.

use crate::broker::mounts::*;

/// How long the broker watches a written pipe for the reader to drain it. Text left unread
/// after it, untouched, is taken back (the reader gets nothing).
pub(in crate::broker::mounts) const DRAIN_WATCH: Duration = Duration::from_secs(10);

/// How the text left the pipe.
pub(in crate::broker::mounts) enum Drain {
    /// The approved reader read all of it, piece by piece, and nothing else opened, changed
    /// or wrote into the FIFO meanwhile.
    Read,
    /// The broker took back what was left (`bytes`), for the reason given; `tampered`: not
    /// only because the reader left or was slow.
    Reclaimed {
        why: String,
        bytes: usize,
        tampered: bool,
    },
    /// Another process may have read part of the text: the broker stopped writing at once.
    /// `bytes`: how many bytes were written, of which the last `piece` were not seen read
    /// by the reader; `exposed`: what may have been read by another process, that piece and
    /// every piece served while the io_uring look could not vouch for its time in the pipe
    /// (an upper bound).
    Suspect {
        why: String,
        bytes: usize,
        piece: usize,
        exposed: Exposed,
    },
}

/// Pieces of the text another process may have copied: how many bytes, of which lines'
/// values, and how many pieces held a name. An upper bound: every piece that was in the pipe
/// while the broker could not tell that no copier ran.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(in crate::broker::mounts) struct Exposed {
    /// Bytes of the text in those pieces.
    pub(in crate::broker::mounts) bytes: usize,
    /// The lines whose value one of them holds part of, in order (`usize::MAX`: a line not
    /// known, see [`Piece`]).
    pub(in crate::broker::mounts) values: Vec<usize>,
    /// How many of them hold a name and its `=`.
    pub(in crate::broker::mounts) names: usize,
    /// How many pieces.
    pub(in crate::broker::mounts) pieces: usize,
    /// Where each starts in the text (each piece is counted once).
    starts: Vec<usize>,
}

impl Exposed {
    /// Counts `p` (once).
    pub(in crate::broker::mounts) fn add(&mut self, p: &Piece) {
        if self.starts.contains(&p.range.start) {
            return;
        }
        self.starts.push(p.range.start);
        self.bytes += p.range.len();
        self.pieces += 1;
        match p.value_of {
            Some(i) if !self.values.contains(&i) => self.values.push(i),
            Some(_) => {}
            None => self.names += 1,
        }
    }

    /// These, and `p` when given.
    fn with(&self, p: Option<&Piece>) -> Exposed {
        let mut e = self.clone();
        if let Some(p) = p {
            e.add(p);
        }
        e
    }
}

/// How long the pipe may be empty while the reader's `rchar` has not yet grown by the piece
/// (it is counted when the reader's `read` returns, a moment after the pipe is emptied)
/// before the piece counts as read by someone else.
pub(in crate::broker::mounts) const RCHAR_WAIT: Duration = Duration::from_secs(5);

/// Writes the text (`fd`: the served FIFO, mode 0400, watched by `watch`) in [`pieces`], each
/// only once the one before was read by the reader: the pipe empty, the reader's `rchar`
/// grown by at least the piece, no one else having opened the FIFO, changed its mode or
/// written into it. On any doubt nothing more is written. `written`: how many bytes were
/// written into the pipe. Before each piece, while a slow reader leaves it waiting and after
/// the last, `uring` looks for a process that got io_uring threads (a copier the watch cannot
/// see): one found ends the read as a suspected theft of the piece last written and of every
/// piece in `uncleared`. `uncleared` collects the pieces that were in the pipe while a look
/// could not vouch for its interval (a task created and gone between two looks may have been
/// a worker that copied it): whatever the outcome, an upper bound of what a copier that was
/// never seen may have. Blocking: run off the runtime.
///
/// A write into the FIFO by another process, seen at any point, widens what a stop reports
/// to every piece written so far: the watch's events come when the other process's read or
/// write *completes* (an io_uring read-write end's, after the reader was already woken by the
/// bytes), so a piece read out and put back may have passed before its events were seen, and
/// every piece the reader read since the write end existed may have passed through it (a
/// replay once read 8 bytes while the report, of the last piece only, said 4).
#[allow(clippy::too_many_arguments)]
pub(in crate::broker::mounts) fn write_pieces(
    fd: &OwnedFd,
    holder: &Holder,
    text: &[u8],
    pieces: &[Piece],
    watch: &Watch,
    uring: &mut UringWatch,
    dev: u64,
    ino: u64,
    written: &mut usize,
    uncleared: &mut Exposed,
) -> Drain {
    let d = write_each(
        fd, holder, text, pieces, watch, uring, dev, ino, written, uncleared,
    );
    let sent = pieces.iter().filter(|p| p.range.end <= *written);
    if !watch.foreign_writes(sent.clone().count()) {
        return d;
    }
    let mut all = uncleared.clone();
    sent.for_each(|p| all.add(p));
    match d {
        Drain::Suspect {
            why, bytes, piece, ..
        } => Drain::Suspect {
            why,
            bytes,
            piece,
            exposed: all,
        },
        Drain::Reclaimed { why, .. } => Drain::Suspect {
            why,
            bytes: *written,
            piece: 0,
            exposed: all,
        },
        Drain::Read => Drain::Suspect {
            why: "another process wrote into the FIFO".to_owned(),
            bytes: *written,
            piece: 0,
            exposed: all,
        },
    }
}

/// [`write_pieces`] but for the widening of what a stop reports.
#[allow(clippy::too_many_arguments)]
fn write_each(
    fd: &OwnedFd,
    holder: &Holder,
    text: &[u8],
    pieces: &[Piece],
    watch: &Watch,
    uring: &mut UringWatch,
    dev: u64,
    ino: u64,
    written: &mut usize,
    uncleared: &mut Exposed,
) -> Drain {
    // The broker's own writes so far.
    let mut ours = 0usize;
    let mut last: Option<&Piece> = None;
    for p in pieces {
        if let Some(why) = watch.doubt(fd, ours) {
            return match last {
                Some(l) => Drain::Suspect {
                    why,
                    bytes: *written,
                    piece: l.range.len(),
                    exposed: uncleared.with(Some(l)),
                },
                None => Drain::Reclaimed {
                    why,
                    bytes: reclaim(fd),
                    tampered: true,
                },
            };
        }
        let stop = broker_starved().or_else(|| uring.look());
        // The looks since the piece before was written: each could vouch for its interval, or
        // that piece may have been copied by a worker that came and went unseen.
        if uring.take_unsure()
            && let Some(l) = last
        {
            uncleared.add(l);
        }
        if let Some(why) = stop {
            return Drain::Suspect {
                why,
                bytes: *written,
                piece: last.map_or(0, |l| l.range.len()),
                exposed: uncleared.with(last),
            };
        }
        // The reader on the card must be the one that reads: before each piece, a thread of
        // it blocked reading the FIFO through its own descriptor (where the kernel shows it).
        if let Err((why, tampered)) = wait_on_fifo(holder, dev, ino) {
            return Drain::Reclaimed {
                why,
                bytes: reclaim(fd),
                tampered,
            };
        }
        let Some(before) = rchar(holder.pid) else {
            return Drain::Reclaimed {
                why: "the reader exited before reading all of it".to_owned(),
                bytes: reclaim(fd),
                tampered: false,
            };
        };
        if let Err(d) = write_piece(fd, text.get(p.range.clone()).unwrap_or_default()) {
            return d;
        }
        ours += 1;
        *written += p.range.len();
        last = Some(p);
        let want = before + p.range.len() as u64;
        if let Err(d) = wait_read(
            fd,
            holder,
            p.range.len(),
            want,
            watch,
            uring,
            ours,
            dev,
            ino,
        ) {
            if uring.take_unsure() {
                uncleared.add(p);
            }
            return match d {
                Drain::Suspect { why, .. } => Drain::Suspect {
                    why,
                    bytes: *written,
                    piece: p.range.len(),
                    exposed: uncleared.with(Some(p)),
                },
                d => d,
            };
        }
    }
    after_the_last(fd, watch, uring, ours, last, *written, uncleared)
}

/// One piece written whole into the FIFO. Errors: the reader closed it (`EPIPE`: nothing is
/// left to take back), or the write failed or was cut short (what is left is taken back).
fn write_piece(fd: &OwnedFd, bytes: &[u8]) -> Result<(), Drain> {
    match rustix::io::write(fd.as_fd(), bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Err(rustix::io::Errno::PIPE) => Err(Drain::Reclaimed {
            why: "the reader closed the file before reading all of it (EPIPE)".to_owned(),
            bytes: 0,
            tampered: false,
        }),
        Ok(_) | Err(_) => Err(Drain::Reclaimed {
            why: "a write into the FIFO failed or was cut short".to_owned(),
            bytes: reclaim(fd),
            tampered: false,
        }),
    }
}

/// The looks once every piece was read (`ours` writes, `last` the final piece, `written`
/// bytes in all): a doubt raised now makes the read `Suspect`, bounded by what the looks
/// could not vouch for.
fn after_the_last(
    fd: &OwnedFd,
    watch: &Watch,
    uring: &mut UringWatch,
    ours: usize,
    last: Option<&Piece>,
    written: usize,
    uncleared: &mut Exposed,
) -> Drain {
    let doubt = watch
        .doubt(fd, ours)
        .or_else(broker_starved)
        .or_else(|| uring.look());
    if uring.take_unsure()
        && let Some(l) = last
    {
        uncleared.add(l);
    }
    match (doubt, last) {
        (Some(why), Some(l)) => Drain::Suspect {
            why,
            bytes: written,
            piece: l.range.len(),
            exposed: uncleared.with(Some(l)),
        },
        _ => Drain::Read,
    }
}

/// Waits until the piece just written (`piece` bytes) left the pipe and the reader's `rchar`
/// reached `want`. While it is in the pipe, another process seen at the FIFO by the watch, the
/// approved reader stopping or being traced, leaving, or any
/// other process holding the FIFO makes the broker take back what is left (see [`reclaim`]);
/// so does a piece left untouched for [`DRAIN_WATCH`]. A pipe emptied while the reader's
/// `rchar` stays short is a piece someone else read (`Drain::Suspect`, its sizes filled in by
/// the caller): at once when the watch saw another process at the FIFO, else after
/// [`RCHAR_WAIT`]. A process that got io_uring threads meanwhile (`uring`) may be copying
/// the piece: what is left is taken back and the piece counts as read by someone else.
#[allow(clippy::too_many_arguments)]
fn wait_read(
    fd: &OwnedFd,
    r: &Holder,
    piece: usize,
    want: u64,
    watch: &Watch,
    uring: &mut UringWatch,
    ours: usize,
    dev: u64,
    ino: u64,
) -> Result<(), Drain> {
    let t0 = std::time::Instant::now();
    let mut emptied: Option<std::time::Instant> = None;
    let mut round: u32 = 0;
    loop {
        // A reader takes a piece within microseconds: the look before the next piece sees
        // a worker made meanwhile that still runs. While a slow reader keeps it waiting, a
        // worker made to copy it is looked for here too.
        if t0.elapsed() >= Duration::from_millis(1)
            && let Some(why) = broker_starved().or_else(|| uring.look())
        {
            reclaim(fd);
            return Err(suspect(why));
        }
        let left = rustix::io::ioctl_fionread(fd).map_or(0, |n| n as usize);
        if left == 0 {
            if let Some(done) = pipe_emptied(fd, r, want, watch, ours, &mut emptied) {
                return done;
            }
        } else if let Some(why) = watch.doubt(fd, ours) {
            // Another process at the FIFO with the piece in the pipe: taken back at once; if
            // not all of it was left, the rest may be the other process's.
            return Err(taken_back(fd, piece, why));
        } else if t0.elapsed() >= Duration::from_millis(1) {
            // A reader takes a piece within microseconds when it runs: the looks at /proc
            // are for one that does not.
            if let Some((why, tampered)) = slow_reader(r, dev, ino, round, t0) {
                return Err(Drain::Reclaimed {
                    why,
                    bytes: reclaim(fd),
                    tampered,
                });
            }
        }
        round = round.wrapping_add(1);
        // Tight at first (a reader reads a piece at once), then gentler.
        std::thread::sleep(if t0.elapsed() < Duration::from_millis(50) {
            Duration::from_micros(20)
        } else {
            Duration::from_millis(2)
        });
    }
}

/// Waits (at most [`READ_WAIT`]) until a thread of the approved reader `r` is blocked reading
/// the FIFO `(dev, ino)` through one of its own descriptors ([`waits_on_fifo`]). A holder
/// asleep on another descriptor (a stand-in the agent started with the FIFO inherited, its
/// byte count grown through its standard input while the agent reads the pieces through a
/// copy of the descriptor parked out of sight) never is: `Err` (why, and that it is
/// tampering). Meanwhile the reader gone, stopped, traced or starved, or another holder, ends
/// the wait as [`slow_reader`] says. Where the kernel does not show the calls to the broker,
/// it does not wait (see `docs/mounts.md`).
fn wait_on_fifo(r: &Holder, dev: u64, ino: u64) -> Result<(), (String, bool)> {
    let t0 = std::time::Instant::now();
    let mut round: u32 = 0;
    loop {
        match waits_on_fifo(r.pid, dev, ino) {
            Some(true) | None => return Ok(()),
            Some(false) if t0.elapsed() >= READ_WAIT => {
                return Err((
                    format!(
                        "the approved reader (pid {}) was not reading the FIFO through its own descriptor within {} s (a stand-in holder, asleep on another input?); nothing more was written",
                        r.pid,
                        READ_WAIT.as_secs()
                    ),
                    true,
                ));
            }
            Some(false) => {
                if t0.elapsed() >= Duration::from_millis(1)
                    && let Some(stop) = slow_reader(r, dev, ino, round, t0)
                {
                    return Err(stop);
                }
                round = round.wrapping_add(1);
                std::thread::sleep(if t0.elapsed() < Duration::from_millis(50) {
                    Duration::from_micros(20)
                } else {
                    Duration::from_millis(2)
                });
            }
        }
    }
}

/// A suspected theft, its sizes left for the caller of [`wait_read`] to fill in.
fn suspect(why: String) -> Drain {
    Drain::Suspect {
        why,
        bytes: 0,
        piece: 0,
        exposed: Exposed::default(),
    }
}

/// The pipe is empty: the piece was read, by the reader when its `rchar` (of `r`) reached
/// `want`. `Some(Ok)`: read by the reader; `Some(Err)`: a suspected theft (at once when the
/// watch saw another process, after [`RCHAR_WAIT`] since the pipe was first seen empty,
/// `emptied`, otherwise, or when the reader exited); `None`: wait on.
fn pipe_emptied(
    fd: &OwnedFd,
    r: &Holder,
    want: u64,
    watch: &Watch,
    ours: usize,
    emptied: &mut Option<std::time::Instant>,
) -> Option<Result<(), Drain>> {
    let c = rchar(r.pid);
    if c.is_some_and(|c| c < want)
        && let Some(why) = watch.doubt(fd, ours)
    {
        return Some(Err(suspect(why)));
    }
    match c {
        Some(c) if c >= want => Some(Ok(())),
        Some(_)
            if emptied
                .get_or_insert_with(std::time::Instant::now)
                .elapsed()
                < RCHAR_WAIT =>
        {
            None
        }
        Some(_) => Some(Err(suspect(
            "the text left the pipe but the approved reader did not read it".to_owned(),
        ))),
        None => Some(Err(suspect(
            "the text left the pipe and the approved reader exited before it could be told who read it".to_owned(),
        ))),
    }
}

/// Another process was seen at the FIFO (`why`) with the piece (`piece` bytes) in the pipe:
/// takes back what is left; all of it back is a reclaimed read, less a suspected theft.
fn taken_back(fd: &OwnedFd, piece: usize, why: String) -> Drain {
    let took = reclaim(fd);
    if took >= piece {
        Drain::Reclaimed {
            why,
            bytes: took,
            tampered: true,
        }
    } else {
        suspect(why)
    }
}

/// Why a piece still in the pipe since `t0` is to be taken back, and whether that is
/// tampering: the reader (`r`) gone, stopped or traced, or starved; every 16th `round`,
/// another holder of the FIFO (`dev`, `ino`) or none; or [`DRAIN_WATCH`] passed. `None`:
/// wait on.
fn slow_reader(
    r: &Holder,
    dev: u64,
    ino: u64,
    round: u32,
    t0: std::time::Instant,
) -> Option<(String, bool)> {
    let gone = start_time(r.pid) != Some(r.start);
    if gone {
        Some((
            "the reader exited before reading all of it".to_owned(),
            false,
        ))
    } else if stopped(r.pid) {
        Some((
            format!(
                "the approved reader (pid {}) was stopped or traced with the text unread",
                r.pid
            ),
            true,
        ))
    } else if let Some(why) = starved(r.pid) {
        Some((format!("{why}, with the text unread"), true))
    } else if round.is_multiple_of(16) {
        let hs = holders(dev, ino);
        if hs.iter().any(|h| h != r) {
            Some((
                "another process held the FIFO with the text unread".to_owned(),
                true,
            ))
        } else if hs.is_empty() {
            Some((
                "the reader closed the file before reading all of it".to_owned(),
                false,
            ))
        } else {
            None
        }
    } else if t0.elapsed() >= DRAIN_WATCH {
        Some((
            format!(
                "the reader did not read the text within {} s",
                DRAIN_WATCH.as_secs()
            ),
            false,
        ))
    } else {
        None
    }
}

/// Takes back what is left in the pipe of the served FIFO (`fd`: the broker's write end): it
/// opens the same FIFO for reading through its own descriptor (`/proc/self/fd/N`; the broker
/// is not dumpable, so no other process can) and reads it out. Returns how many bytes it took.
pub(in crate::broker::mounts) fn reclaim(fd: &OwnedFd) -> usize {
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
