//! io_uring threads: the one way left to copy a served pipe unseen.
//!
//! A process that holds the served FIFO only through an io_uring ring (a registered file, its
//! own descriptor closed) is not in `/proc/*/fd`, and `IORING_OP_TEE` copies the pipe's
//! buffers without consuming them: the reader still reads every byte and the watch sees only
//! reads. But the kernel runs every tee and splice of a ring on an io-wq worker
//! (`REQ_F_FORCE_ASYNC`), a thread of the submitting process (`iou-wrk-TID`; a ring's SQPOLL
//! thread, `iou-sqp-TID`, is one too), and every such thread carries `PF_IO_WORKER` in the
//! flags of `/proc/PID/task/TID/stat` (field 9: readable for any process, set by the kernel
//! alone; the name in `comm` is not evidence, a process may rename its threads). So a read is
//! served only while no process that may be the agent's has such a thread ([`UringWatch`]).
//!
//! Between two looks only a new task can be a new worker: `/proc/loadavg` ends with the last
//! pid the kernel handed out in the broker's pid namespace (threads and tasks of nested
//! namespaces included), so a look reads the pids handed out since the one before
//! (`/proc/TID/stat` works for a thread too) and scans everything only when it cannot tell.

use super::procfs::STARVED_MARK;
use super::*;

/// `PF_IO_WORKER` (`include/linux/sched.h`): an io_uring worker or SQPOLL thread.
const PF_IO_WORKER: u64 = 0x10;

/// Most new pids a look reads one by one; more (or a wrap of the pid counter): a full scan.
const MAX_NEW: u32 = 4096;

/// A process with io_uring threads: what the audit and the human are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UringProc {
    /// Process id (the thread group's).
    pub(super) pid: u32,
    /// Its executable (`/proc/PID/exe`), or `?` when `/proc` does not say.
    pub(super) exe: String,
}

/// What every `why` of [`UringProc::why`] says (so a note can add the [`hint`]).
const MARK: &str = "has io_uring worker threads";

impl UringProc {
    /// Why a read is not served, or stopped, while this process runs (no `hint:`; see
    /// [`hint`]).
    pub(super) fn why(&self) -> String {
        format!(
            "process {} ({}) {MARK}, and through io_uring a process can copy the pipe's contents unseen",
            self.pid,
            shown(&self.exe)
        )
    }
}

/// What the human can do about a process with io_uring threads: the `hint:` of a refusal or
/// a stop.
pub(super) fn hint() -> String {
    let sysctl = match io_uring_disabled() {
        Some(2) => "",
        _ => {
            ", or set `sysctl kernel.io_uring_disabled=2` (then restart the programs that made rings before)"
        }
    };
    format!(
        "hint: end that process if it is not yours to keep{sysctl}; where the program can be started differently, `keyveil run --env ENV -- COMMAND` serves it without a pipe"
    )
}

/// The [`hint`] when `why` is about io_uring threads, or what to do when it is about the
/// subordinate uid ranges ([`subuid_hint`]) or the broker's own scheduling.
pub(super) fn uring_hint(why: &str) -> Option<String> {
    if why.contains(STARVED_MARK) {
        return Some(
            "hint: a process of your user changed the broker's scheduling; find it, end it, then `keyveil daemon stop` and start the broker again".to_owned(),
        );
    }
    if why.contains(SUBUID_MARK) {
        return Some(subuid_hint());
    }
    why.contains(MARK).then(hint)
}

/// `kernel.io_uring_disabled` (0: anyone may make a ring; 1: only `kernel.io_uring_group`
/// and `CAP_SYS_ADMIN`; 2: no one), or `None` on a kernel without it. Rings made before it
/// was raised keep working, so the broker looks for workers whatever it says.
pub(crate) fn io_uring_disabled() -> Option<u8> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The last pid handed out in the broker's pid namespace (the last field of
/// `/proc/loadavg`).
fn last_pid() -> Option<u32> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .nth(4)?
        .parse()
        .ok()
}

/// The `stat` flags (field 9) of the task whose `stat` file is `path`.
pub(super) fn task_flags(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    // Field n is the (n - 2)th word after the command name, which may hold any byte.
    s.get(s.rfind(')')? + 1..)?
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()
}

/// The values of the `Uid:` line (real, effective, saved, filesystem) and the `Tgid:` of a
/// `/proc/.../status` file.
pub(super) fn uids_tgid(status: &str) -> (Vec<u32>, Option<u32>) {
    let s = std::fs::read_to_string(status).unwrap_or_default();
    let uids = s
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let tgid = s
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok());
    (uids, tgid)
}

/// Looks for processes with io_uring threads while a mount read is served: any process whose
/// uids hold the broker's or the reader's, or a uid of one of their subordinate ranges
/// (`/etc/subuid`, [`Subuids`]), or that runs in a user namespace mapping one of those
/// ([`in_users_namespace`]): a process with none of them cannot be made to copy the pipe for
/// the agent. The broker and the approved reader itself are not counted (the reader's threads
/// run only its own submissions: an agent that can make the reader submit a tee runs code in
/// the reader, and reads the text there anyway).
///
/// A look also tells whether it can vouch for the time since the one before
/// ([`UringWatch::take_unsure`]): a task handed out meanwhile that is gone (or not yet in
/// `/proc`) may have been a worker that copied what was in the pipe and ended; a full scan
/// cannot tell either.
pub(super) struct UringWatch {
    /// The last pid seen handed out (`None`: unknown, the next look scans everything).
    last: Option<u32>,
    /// The approved reader: pid and start time.
    reader: (u32, u64),
    /// The uids whose processes count.
    uids: Vec<u32>,
    /// Their subordinate uid ranges.
    subuids: Subuids,
    /// Pids handed out that were not in `/proc` at the last look: looked at again at the next.
    pending: Vec<u32>,
    /// A look since the last [`UringWatch::take_unsure`] could not vouch for its interval.
    unsure: bool,
    /// The pending pids are from the full scan, before anything was written: one still
    /// missing at the next look died with nothing in the pipe.
    quiet: bool,
}

/// How many of the pids handed out last before a full scan are looked at again by the next
/// look when the scan did not find them in `/proc`: a task is given its pid before it
/// shows in `/proc`, so a worker being made during the scan would be missed by both.
const STRADDLE: u32 = 64;

impl UringWatch {
    /// A watch for a read by `reader`, and why no read may be served now, if so: a process
    /// with io_uring threads (a full scan; the pids handed out after it are what the next
    /// [`UringWatch::look`] reads, with those of the last [`STRADDLE`] not in `/proc` yet),
    /// or subordinate uid ranges that cannot be read.
    pub(super) fn new(reader: &Holder) -> (UringWatch, Option<String>) {
        let mut uids = vec![
            rustix::process::getuid().as_raw(),
            rustix::process::geteuid().as_raw(),
        ];
        uids.extend(uids_tgid(&format!("/proc/{}/status", reader.pid)).0);
        uids.sort_unstable();
        uids.dedup();
        let mut w = UringWatch {
            last: None,
            reader: (reader.pid, reader.start),
            subuids: Subuids::new(&uids),
            uids,
            pending: Vec::new(),
            unsure: false,
            quiet: true,
        };
        w.last = last_pid();
        let why = match w.subuids.ranges() {
            Err(e) => Some(e.to_owned()),
            Ok(_) => w.scan().first().map(UringProc::why),
        };
        if let Some(last) = w.last {
            w.pending = (last.saturating_sub(STRADDLE - 1).max(1)..=last)
                .filter(|tid| task_flags(&format!("/proc/{tid}/stat")).is_none())
                .collect();
        }
        w.unsure = false;
        (w, why)
    }

    /// Whether the process `tgid` counts (see [`UringWatch`]); `uids`: its `Uid:` values.
    fn counts(&self, tgid: u32, uids: &[u32]) -> bool {
        if tgid == std::process::id()
            || (tgid == self.reader.0 && start_time(tgid) == Some(self.reader.1))
        {
            return false;
        }
        // Unknown ranges: every process counts (a look stops the read before it gets here).
        let ranges = self.subuids.ranges().unwrap_or(&[(0, 1 << 32)]);
        uids.iter()
            .any(|u| self.uids.contains(u) || in_ranges(ranges, *u))
            || in_users_namespace(tgid, &self.uids, ranges)
    }

    /// The process `tgid`, as told.
    fn proc(tgid: u32) -> UringProc {
        UringProc {
            pid: tgid,
            exe: std::fs::read_link(format!("/proc/{tgid}/exe"))
                .map_or_else(|_| "?".to_owned(), |p| p.to_string_lossy().into_owned()),
        }
    }

    /// Every counted process with an io_uring thread now: each `/proc/PID/task/TID/stat`.
    pub(super) fn scan(&self) -> Vec<UringProc> {
        let mut out = Vec::new();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return out;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            let io = tasks.flatten().any(|t| {
                task_flags(&t.path().join("stat").to_string_lossy())
                    .is_some_and(|f| f & PF_IO_WORKER != 0)
            });
            if io && self.counts(pid, &uids_tgid(&format!("/proc/{pid}/status")).0) {
                out.push(Self::proc(pid));
            }
        }
        out
    }

    /// Why the read must stop now, or `None`: a counted process that got an io_uring thread
    /// since the last look (the tasks created since, by pid, and those not yet in `/proc` at
    /// the last look; everything when the pids cannot tell: unknown, too many handed out, or
    /// wrapped around), or subordinate uid ranges that changed into something unreadable.
    pub(super) fn look(&mut self) -> Option<String> {
        self.subuids.refresh();
        if let Err(e) = self.subuids.ranges() {
            return Some(e.to_owned());
        }
        let now = last_pid();
        let mut todo = std::mem::take(&mut self.pending);
        let rechecked = todo.len();
        let quiet = std::mem::take(&mut self.quiet);
        let full = match (self.last, now) {
            (Some(a), Some(b)) if a == b => false,
            (Some(a), Some(b)) if b > a && b - a <= MAX_NEW => {
                todo.extend(a + 1..=b);
                false
            }
            _ => true,
        };
        self.last = now;
        if full {
            self.unsure = true;
            return self.scan().first().map(UringProc::why);
        }
        for (i, tid) in todo.into_iter().enumerate() {
            let Some(flags) = task_flags(&format!("/proc/{tid}/stat")) else {
                // Gone, or not in /proc yet: it may have been a worker. Looked at once more.
                // (Missing since the scan before the first piece: gone with nothing written.)
                if i >= rechecked {
                    self.unsure = true;
                    self.pending.push(tid);
                } else if !quiet {
                    self.unsure = true;
                }
                continue;
            };
            if flags & PF_IO_WORKER == 0 {
                continue;
            }
            let (uids, tgid) = uids_tgid(&format!("/proc/{tid}/status"));
            let Some(tgid) = tgid else {
                self.unsure = true;
                continue;
            };
            if self.counts(tgid, &uids) {
                return Some(Self::proc(tgid).why());
            }
        }
        None
    }

    /// Whether a look since the last call could not vouch for its interval (a task handed out
    /// meanwhile was gone, or a full scan was needed); resets it.
    pub(super) fn take_unsure(&mut self) -> bool {
        std::mem::take(&mut self.unsure)
    }
}
