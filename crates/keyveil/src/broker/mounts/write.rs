//! Writing an approved read: the text, the swap, the last checks, the write and the watch.

use super::*;

/// Largest dotenv text a mount serves.
pub(super) const MAX_TEXT: usize = 1 << 20;

/// One `NAME=VALUE` line of the text: the variable's name as clients see it (an alias where
/// the policy hides names), the length of `NAME=` and of the whole line.
pub(super) struct Line {
    pub(super) shown: String,
    pub(super) name_len: usize,
    pub(super) len: usize,
}

/// The dotenv text of the grant's variables and its lines, or why there is none.
pub(super) fn dotenv_text(
    broker: &Broker,
    env: &str,
    grant_id: &str,
) -> Result<(zeroize::Zeroizing<String>, Vec<Line>), String> {
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
        Ok(values) => keyveil_dotenv::write(values.iter().map(|(k, v)| (k.as_str(), v.expose())))
            .map_err(|e| {
                // The name as clients see it (an alias where the policy hides names).
                format!(
                    "cannot write a .env every reader reads the same: {}: {}",
                    inner.shown_name(env, &e.name),
                    e.what
                )
            })
            .map(|text| {
                // Each line as written alone: the text is these lines, one after the other.
                let lines = values
                    .iter()
                    .map(|(k, v)| Line {
                        shown: inner.shown_name(env, k),
                        name_len: k.len() + 1,
                        len: keyveil_dotenv::write([(k.as_str(), v.expose())])
                            .map_or(0, |l| l.len()),
                    })
                    .collect::<Vec<_>>();
                (text, lines)
            }),
    }?;
    if text.0.len() > MAX_TEXT {
        return Err(format!("the .env text is over {MAX_TEXT} bytes"));
    }
    Ok(text)
}

/// A piece of the text: its bytes, and the line whose value it holds part of (`None`: a
/// name and its `=`; `Some(usize::MAX)`: a value of a line not known).
pub(super) struct Piece {
    pub(super) range: std::ops::Range<usize>,
    pub(super) value_of: Option<usize>,
}

/// Most bytes of a value in one piece of the text (see [`pieces`]).
pub(super) const VALUE_PIECE: usize = 4;

/// The pieces the text is written in, each only after the reader has read the one before:
/// every `NAME=` in one piece, each value (with its line end) in pieces of at most
/// [`VALUE_PIECE`] bytes, so that a process that snatches one piece out of the pipe gets a
/// few bytes of one value, and the broker stops at once. Each piece comes with the index of
/// the line it is part of. Lines that do not add up to the text (never expected): the whole
/// text in pieces of [`VALUE_PIECE`] bytes, all counted as values of unknown lines.
pub(super) fn pieces(len: usize, lines: &[Line]) -> Vec<Piece> {
    let mut out = Vec::new();
    let value = |out: &mut Vec<_>, from: usize, to: usize, line: usize| {
        let mut at = from;
        while at < to {
            let end = (at + VALUE_PIECE).min(to);
            out.push(Piece {
                range: at..end,
                value_of: Some(line),
            });
            at = end;
        }
    };
    if lines.iter().map(|l| l.len).sum::<usize>() != len || lines.iter().any(|l| l.name_len > l.len)
    {
        value(&mut out, 0, len, usize::MAX);
        return out;
    }
    let mut at = 0;
    for (i, l) in lines.iter().enumerate() {
        out.push(Piece {
            range: at..at + l.name_len,
            value_of: None,
        });
        value(&mut out, at + l.name_len, at + l.len, i);
        at += l.len;
    }
    out
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
    /// by the reader; `value_of`: the line whose value that piece holds part of (see
    /// [`Piece`]).
    Suspect {
        why: String,
        bytes: usize,
        piece: usize,
        value_of: Option<usize>,
    },
}

/// What the FIFO's watch saw since it was made.
#[derive(Default, Clone, Copy)]
pub(super) struct Seen {
    /// Someone opened the FIFO (every opening after the watch is another process's: the
    /// reader opened it before, the broker's own write end was opened before).
    pub(super) opened: bool,
    /// Its mode, owner or times were changed (`chmod` back to writable, first of all).
    pub(super) changed: bool,
    /// Writes into it (the broker's own pieces among them).
    pub(super) writes: usize,
    /// The kernel dropped events: nothing can be told.
    pub(super) overflow: bool,
}

/// An inotify watch on the served FIFO (through the broker's own descriptor,
/// `/proc/self/fd/N`: the FIFO has no name left). Sees every opening of it, every change of
/// its mode and every write into it, by any process, however brief: what a process that
/// opens `/proc/READER/fd/N` to read the text (and maybe write it back) cannot avoid.
pub(super) struct Watch {
    fd: OwnedFd,
    seen: std::cell::Cell<Seen>,
}

impl Watch {
    /// Watches the FIFO open as `fifo`.
    pub(super) fn new(fifo: &OwnedFd) -> Result<Watch, String> {
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
    pub(super) fn seen(&self) -> Seen {
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
    pub(super) fn written_or_changed(&self, ours: usize) -> Option<String> {
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

    /// Why the FIFO is not as the broker left it after its own `ours` writes, or `None`.
    pub(super) fn doubt(&self, fd: &OwnedFd, ours: usize) -> Option<String> {
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

/// How long the pipe may be empty while the reader's `rchar` has not yet grown by the piece
/// (it is counted when the reader's `read` returns, a moment after the pipe is emptied)
/// before the piece counts as read by someone else.
pub(super) const RCHAR_WAIT: Duration = Duration::from_secs(5);

/// Writes the text (`fd`: the served FIFO, mode 0400, watched by `watch`) in [`pieces`], each
/// only once the one before was read by the reader: the pipe empty, the reader's `rchar`
/// grown by at least the piece, no one else having opened the FIFO, changed its mode or
/// written into it. On any doubt nothing more is written. `written`: how many bytes were
/// written into the pipe. Before each piece, while a slow reader leaves it waiting and after
/// the last, `uring` looks for a process that got io_uring threads (a copier the watch cannot see): one found
/// ends the read as a suspected theft of the piece last written. Blocking: run off the
/// runtime.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_pieces(
    fd: &OwnedFd,
    holder: &Holder,
    text: &[u8],
    pieces: &[Piece],
    watch: &Watch,
    uring: &mut UringWatch,
    dev: u64,
    ino: u64,
    written: &mut usize,
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
                    value_of: l.value_of,
                },
                None => Drain::Reclaimed {
                    why,
                    bytes: reclaim(fd),
                    tampered: true,
                },
            };
        }
        if let Some(why) = broker_starved().or_else(|| uring.look().map(|u| u.why())) {
            return Drain::Suspect {
                why,
                bytes: *written,
                piece: last.map_or(0, |l| l.range.len()),
                value_of: last.and_then(|l| l.value_of),
            };
        }
        let Some(before) = rchar(holder.pid) else {
            return Drain::Reclaimed {
                why: "the reader exited before reading all of it".to_owned(),
                bytes: reclaim(fd),
                tampered: false,
            };
        };
        let bytes = text.get(p.range.clone()).unwrap_or_default();
        match rustix::io::write(fd.as_fd(), bytes) {
            Ok(n) if n == p.range.len() => {}
            Err(rustix::io::Errno::PIPE) => {
                return Drain::Reclaimed {
                    why: "the reader closed the file before reading all of it (EPIPE)".to_owned(),
                    bytes: 0,
                    tampered: false,
                };
            }
            Ok(_) | Err(_) => {
                return Drain::Reclaimed {
                    why: "a write into the FIFO failed or was cut short".to_owned(),
                    bytes: reclaim(fd),
                    tampered: false,
                };
            }
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
            return match d {
                Drain::Suspect { why, .. } => Drain::Suspect {
                    why,
                    bytes: *written,
                    piece: p.range.len(),
                    value_of: p.value_of,
                },
                d => d,
            };
        }
    }
    let doubt = watch
        .doubt(fd, ours)
        .or_else(broker_starved)
        .or_else(|| uring.look().map(|u| u.why()));
    match (doubt, last) {
        (Some(why), Some(l)) => Drain::Suspect {
            why,
            bytes: *written,
            piece: l.range.len(),
            value_of: l.value_of,
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
            && let Some(why) = broker_starved().or_else(|| uring.look().map(|u| u.why()))
        {
            reclaim(fd);
            return Err(Drain::Suspect {
                why,
                bytes: 0,
                piece: 0,
                value_of: None,
            });
        }
        let left = rustix::io::ioctl_fionread(fd).map_or(0, |n| n as usize);
        if left == 0 {
            let c = rchar(r.pid);
            if c.is_some_and(|c| c < want)
                && let Some(why) = watch.doubt(fd, ours)
            {
                return Err(Drain::Suspect {
                    why,
                    bytes: 0,
                    piece: 0,
                    value_of: None,
                });
            }
            match c {
                Some(c) if c >= want => return Ok(()),
                Some(_)
                    if emptied
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed()
                        < RCHAR_WAIT => {}
                Some(_) => {
                    return Err(Drain::Suspect {
                        why: "the text left the pipe but the approved reader did not read it"
                            .to_owned(),
                        bytes: 0,
                        piece: 0,
                        value_of: None,
                    });
                }
                None => {
                    return Err(Drain::Suspect {
                        why: "the text left the pipe and the approved reader exited before it could be told who read it".to_owned(),
                        bytes: 0,
                        piece: 0,
                        value_of: None,
                    });
                }
            }
        } else if let Some(why) = watch.doubt(fd, ours) {
            // Another process at the FIFO with the piece in the pipe: taken back at once; if
            // not all of it was left, the rest may be the other process's.
            let took = reclaim(fd);
            return Err(if took >= piece {
                Drain::Reclaimed {
                    why,
                    bytes: took,
                    tampered: true,
                }
            } else {
                Drain::Suspect {
                    why,
                    bytes: 0,
                    piece: 0,
                    value_of: None,
                }
            });
        } else if t0.elapsed() >= Duration::from_millis(1) {
            // A reader takes a piece within microseconds when it runs: the looks at /proc
            // are for one that does not.
            let gone = start_time(r.pid) != Some(r.start);
            let why = if gone {
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
            };
            if let Some((why, tampered)) = why {
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

/// How long, after the text, the broker goes on watching the served FIFO for the reader to
/// close it (see [`close_alone`]).
pub(super) const CLOSE_WATCH: Duration = Duration::from_secs(1);

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
pub(super) fn close_alone(
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
    let fail = |why: String| {
        broker.lock().audit(
            "mount_not_written",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why}),
        );
        broker.mounts.note(path, true, why);
    };
    // The text first: nothing is swapped for a read that cannot be served.
    let (text, lines) = match dotenv_text(broker, env, grant_id) {
        Ok(t) => t,
        Err(why) => return fail(why),
    };
    // From here the reader may get values: it and what it starts are value holders, whose
    // requests' strings are masked where shown (`Inner::peer_holds_values`).
    broker
        .lock()
        .value_readers
        .push((r.holder.pid, r.holder.start));
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
    // Read-only from now on, and watched: putting back a piece read out of the pipe takes
    // an opening for writing, which takes a `chmod`; both are seen.
    if let Err(e) = rustix::fs::fchmod(&fd, rustix::fs::Mode::RUSR) {
        return fail(format!(
            "cannot make the FIFO read-only: {e}; nothing was written"
        ));
    }
    let watch = match Watch::new(&fd) {
        Ok(w) => w,
        Err(why) => return fail(why),
    };
    if let Err(why) = wait_reading(r, dev, ino).await {
        return fail(why);
    }
    if let Err(why) = ready_to_write(&fd, r, dev, ino, made) {
        return fail(why);
    }
    let len = text.len();
    let pieces = pieces(len, &lines);
    let holder = r.holder.clone();
    // Looked at last, right before the first piece: a process with io_uring threads now may
    // copy every piece unseen.
    let (mut uring, found) = UringWatch::new(&r.holder);
    let served = tokio::task::spawn_blocking(move || {
        let mut written = 0;
        let d = match broker_starved().or_else(|| found.first().map(UringProc::why)) {
            Some(why) => Drain::Suspect {
                why,
                bytes: 0,
                piece: 0,
                value_of: None,
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
            ),
        };
        drop(text);
        (d, fd, written, watch, pieces.len())
    })
    .await;
    let (drained, fd, written, watch, ours) = match served {
        Ok(x) => x,
        Err(e) => return fail(format!("the write failed: {e}")),
    };
    let after = holders(dev, ino);
    // `fd` stays open until the outcome is recorded: the reader sees end-of-file (and whoever
    // waits on it, the audit) only after the audit entry and the mount's note are written.
    let others: Vec<u32> = after
        .iter()
        .filter(|h| **h != r.holder)
        .map(|h| h.pid)
        .collect();
    if let Drain::Suspect {
        why,
        bytes,
        piece,
        value_of,
    } = drained
    {
        let which = value_of.map(|i| {
            lines
                .get(i)
                .map_or_else(|| "one of the values".to_owned(), |l| l.shown.clone())
        });
        let mut inner = broker.lock();
        // The text holds real names: where the policy hides them, a stolen name piece gave
        // away what the agent is never shown.
        let hidden = inner.hides_names(env);
        inner.audit(
            "mount_read_suspect",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "bytes_written": bytes, "bytes_unconfirmed": piece,
                   "value_partly_exposed": which, "hidden_name_exposed": which.is_none() && hidden && piece > 0,
                   "holders_after": others}),
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
        let what = match &which {
            _ if piece == 0 => "nothing was written".to_owned(),
            Some(v) => {
                format!("up to {piece} bytes of the value of {v} may be exposed; rotate {v}")
            }
            None if hidden && piece > 0 => "no value was exposed, but the piece held a variable's real name, which this environment hides from agents".to_owned(),
            None => "no value was exposed (the piece held a name)".to_owned(),
        };
        // A copier through io_uring stays while its process runs: say what to do.
        let hint = uring_hint(&why).map_or_else(String::new, |h| format!(" {h}"));
        return broker.mounts.note(
            path,
            true,
            format!(
                "STOPPED, possible theft: {why}; {what}. The grant was ended; the reader got {bytes} bytes of {len}.{hint}"
            ),
        );
    }
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
                   "bytes_taken_back": bytes, "bytes_written": written, "holders_after": others}),
        );
        if tampered || !others.is_empty() {
            inner.revoke(grant_id, "a mount read was tampered with");
        }
        drop(inner);
        broker.notify();
        return broker.mounts.note(path, true, format!("taken back: {why}"));
    }
    {
        let mut inner = broker.lock();
        // The reader's argv and cwd, matched against values as its card was.
        let masked = inner.grants.get(grant_id).is_none_or(|g| g.masked);
        inner.audit_as(
            "mount_read",
            json!({
                "path": path, "grant_id": grant_id, "pid": r.holder.pid,
                "argv": r.argv, "cwd": r.cwd,
                "opened_during_write": others,
            }),
            masked,
        );
        // Someone else held the served FIFO while the text was in it: the grant serves no
        // more.
        if !others.is_empty() {
            inner.revoke(grant_id, "a mount read was shared with another process");
        }
    }
    broker.mounts.note(
        path,
        false,
        format!("served pid {} (grant {grant_id})", r.holder.pid),
    );
    // The reader gets end-of-file now, unless another writer holds the FIFO out of sight:
    // then what that writer adds is read as `.env` too.
    let holder = r.holder.clone();
    let after_text =
        tokio::task::spawn_blocking(move || close_alone(fd, &watch, ours, &holder, dev, ino))
            .await
            .unwrap_or_else(|e| Some(format!("the check after the text failed: {e}")));
    if let Some(why) = after_text {
        let mut inner = broker.lock();
        inner.audit(
            "mount_read_suspect",
            json!({"path": path, "grant_id": grant_id, "pid": r.holder.pid, "why": why,
                   "bytes_written": written, "bytes_unconfirmed": 0,
                   "value_partly_exposed": null, "holders_after": others,
                   "after_text": true}),
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
        broker.mounts.note(
            path,
            true,
            format!(
                "STOPPED, possible tampering: {why}; the reader (pid {}) may have loaded lines keyveil did not write (a variable added or overridden). The grant was ended; check what the reader did with its values",
                r.holder.pid
            ),
        );
    }
}
