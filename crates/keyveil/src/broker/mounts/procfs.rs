//! What `/proc` says of the processes holding a FIFO: who, how, stopped, waiting for input.

use super::*;

/// What every `why` of [`broker_starved`] says.
pub(super) const STARVED_MARK: &str = "where it cannot look for io_uring threads in time";

/// Whether process `pid` is stopped or traced (state `T` or `t` in `/proc/PID/stat`), or gone.
pub(super) fn stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the command name, which is in parentheses and may hold any byte.
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .and_then(|rest| rest.split_whitespace().next());
    !matches!(state, Some(s) if s != "T" && s != "t")
}

/// A process holding a FIFO open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// Process id.
    pub pid: u32,
    /// Start time (clock ticks after boot, `/proc/PID/stat` field 22): with the pid, names
    /// the process even if the pid is reused.
    pub start: u64,
    /// It opened it read-only (not for writing, not `O_RDWR`).
    pub read_only: bool,
}

/// The start time of `pid`, from `/proc/PID/stat`.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    s.get(close + 1..)?.split_whitespace().nth(19)?.parse().ok()
}

/// Every process holding the file `(dev, ino)` open (the broker's own write descriptors
/// aside), from `/proc/*/fd` (each
/// descriptor is stat'ed through its link, never opened) and `/proc/*/fdinfo` (how it was
/// opened).
pub(crate) fn holders(dev: u64, ino: u64) -> Vec<Holder> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut read_only = None;
        for fd in fds.flatten() {
            let link = fd.path();
            // Sockets, pipes and anonymous inodes are not the FIFO: skip them unstat'ed.
            if let Ok(t) = std::fs::read_link(&link) {
                let t = t.to_string_lossy();
                if t.starts_with("socket:")
                    || t.starts_with("pipe:")
                    || t.starts_with("anon_inode:")
                {
                    continue;
                }
            }
            let Ok(m) = std::fs::metadata(&link) else {
                continue;
            };
            if m.dev() != dev || m.ino() != ino {
                continue;
            }
            let flags = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            });
            // O_ACCMODE: 0 read-only, 1 write-only, 2 read-write. Unknown counts as writing.
            let ro = flags.is_some_and(|f| f & 3 == 0);
            // The broker's own writers are the server; a reader in the broker (nothing of
            // keyveil should ever open a mount: the sweep and the scan never do) counts.
            // The broker's own `O_PATH` descriptors (neither end: the openings' and the
            // read ends' checks hold them) are not holders either.
            let o_path = flags.is_some_and(|f| f & 0o10000000 != 0);
            if pid == me && (!ro || o_path) {
                continue;
            }
            read_only = Some(read_only.unwrap_or(true) && ro);
        }
        if let Some(read_only) = read_only {
            out.push(Holder {
                pid,
                start: start_time(pid).unwrap_or(0),
                read_only,
            });
        }
    }
    out
}

/// The descriptor numbers under which `pid` holds the file `(dev, ino)`.
pub(super) fn fds_of(pid: u32, dev: u64, ino: u64) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino))
        .map(|fd| fd.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Whether one of `pid`'s epoll instances watches one of `fifo_fds` (its
/// `/proc/PID/fdinfo/N` lists each watched descriptor as `tfd: N`).
fn epoll_watches(pid: u32, fifo_fds: &[String]) -> bool {
    let Ok(infos) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    infos.flatten().any(|i| {
        std::fs::read_to_string(i.path()).is_ok_and(|s| {
            s.lines().any(|l| {
                l.strip_prefix("tfd:")
                    .and_then(|v| v.split_whitespace().next())
                    .is_some_and(|n| fifo_fds.iter().any(|f| f == n))
            })
        })
    })
}

/// What the threads of `pid` are doing: from `/proc/PID/task/*/syscall` where the broker may
/// read it ([`waits_on_fifo`]: a thread blocked reading the FIFO through its own descriptor),
/// else from `/proc/PID/task/*/wchan` (the kernel function each sleeps in): `Some(true)` when one sleeps in a pipe read, or in an epoll wait on an
/// epoll instance that watches the FIFO `(dev, ino)` (Go's netpoller reads a FIFO so);
/// `Some(false)` when none does, `None` when the kernel does not say (every `wchan` is `0`).
/// A thread in an event loop's epoll that does not watch the FIFO is not waiting for it (the
/// text would wait in the pipe meanwhile), nor is one in `poll`/`select`, whose descriptors
/// `/proc` does not show.
pub(super) fn waiting_for_input(pid: u32, dev: u64, ino: u64) -> Option<bool> {
    if let Some(on_fifo) = waits_on_fifo(pid, dev, ino) {
        return Some(on_fifo);
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut told = false;
    let mut in_epoll = false;
    for t in tasks.flatten() {
        let Ok(w) = std::fs::read_to_string(t.path().join("wchan")) else {
            continue;
        };
        let w = w.trim();
        if w.is_empty() || w == "0" {
            continue;
        }
        told = true;
        // `poll_schedule_timeout.constprop.0`: the compiler's suffix aside.
        let f = w.split('.').next().unwrap_or(w);
        // `pipe_read`, `anon_pipe_read` (6.16 on, FIFOs too).
        if f.ends_with("pipe_read") {
            return Some(true);
        }
        in_epoll |= f == "ep_poll" || f == "do_epoll_wait";
    }
    if in_epoll && epoll_watches(pid, &fds_of(pid, dev, ino)) {
        return Some(true);
    }
    told.then_some(false)
}

/// System call numbers (of this architecture) that read a descriptor given as their first
/// argument: `read`, `pread64`, `readv`, `preadv`, `preadv2`, `splice` (in), and the epoll
/// waits, whose first argument is an epoll instance.
#[cfg(target_arch = "x86_64")]
const READ_CALLS: &[u64] = &[0, 17, 19, 295, 327, 275];
#[cfg(target_arch = "x86_64")]
const EPOLL_CALLS: &[u64] = &[232, 281, 441];
#[cfg(target_arch = "aarch64")]
const READ_CALLS: &[u64] = &[63, 67, 65, 69, 286, 76];
#[cfg(target_arch = "aarch64")]
const EPOLL_CALLS: &[u64] = &[22, 441];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const READ_CALLS: &[u64] = &[];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const EPOLL_CALLS: &[u64] = &[];

/// Whether a thread of `pid` is blocked reading the FIFO `(dev, ino)` *through one of its own
/// descriptors of it*, from `/proc/PID/task/*/syscall` (the system call a blocked thread is
/// in and its arguments): a read-family call whose descriptor is the FIFO, or an epoll wait
/// on an instance that watches it. `wchan` says only "a pipe read", of any pipe: a stand-in
/// holder the agent started with the FIFO inherited, asleep reading its standard input, would
/// pass for the reader while the agent reads the text through a copy of the descriptor it
/// parked out of sight. `Some(false)`: the calls were readable and none is on the FIFO;
/// `None`: the kernel does not let the broker read them (it needs the ptrace access Yama's
/// `ptrace_scope` 1 or more denies, and a non-dumpable reader's are closed too), or the
/// architecture is not known: the caller falls back to `wchan`.
pub(super) fn waits_on_fifo(pid: u32, dev: u64, ino: u64) -> Option<bool> {
    if READ_CALLS.is_empty() {
        return None;
    }
    let fifo: Vec<u64> = fds_of(pid, dev, ino)
        .iter()
        .filter_map(|f| f.parse().ok())
        .collect();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut told = false;
    for t in tasks.flatten() {
        let s = match std::fs::read_to_string(t.path().join("syscall")) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => return None,
            Err(_) => continue, // the thread ended meanwhile
        };
        told = true;
        let mut words = s.split_whitespace();
        let (Some(nr), Some(arg0)) = (words.next(), words.next()) else {
            continue; // `running`
        };
        let (Ok(nr), Some(arg0)) = (
            nr.parse::<u64>(),
            arg0.strip_prefix("0x")
                .and_then(|a| u64::from_str_radix(a, 16).ok()),
        ) else {
            continue; // `-1 ...`: blocked outside a system call
        };
        if READ_CALLS.contains(&nr) && fifo.contains(&arg0) {
            return Some(true);
        }
        if EPOLL_CALLS.contains(&nr) && epoll_fd_watches(pid, arg0, &fifo) {
            return Some(true);
        }
    }
    told.then_some(false)
}

/// Whether the epoll instance `epfd` of `pid` watches one of `fifo` (`tfd: N` in its fdinfo).
fn epoll_fd_watches(pid: u32, epfd: u64, fifo: &[u64]) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{epfd}")).is_ok_and(|s| {
        s.lines().any(|l| {
            l.strip_prefix("tfd:")
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| fifo.contains(&n))
        })
    })
}

/// How many CPUs a `Cpus_allowed_list` (`0-3,6`) names.
pub(super) fn cpu_count(list: &str) -> usize {
    list.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum()
}

/// The `Cpus_allowed_list` of a `/proc/.../status` file.
pub(super) fn cpus_allowed(status: &str) -> Option<usize> {
    std::fs::read_to_string(status)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(cpu_count)
}

/// Why the approved reader would not run at once when the text arrives, or `None`. A process
/// of the same uid may lower another's CPU priority (`SCHED_IDLE`, `SCHED_BATCH`, a positive
/// nice, its autogroup's nice) and pin it to fewer CPUs, then keep those CPUs busy: the
/// reader then sleeps in its `read`, neither stopped nor traced, while the text waits in the
/// pipe for anyone who opens `/proc/READER/fd/N`. Every thread of `pid` is looked at
/// (`/proc/PID/task/*/stat`: nice is field 19, the policy field 41).
pub(super) fn starved(pid: u32) -> Option<String> {
    const BATCH: u32 = 3;
    const IDLE: u32 = 5;
    let ours = cpus_allowed("/proc/self/status");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 1..))
            .map(|rest| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field n of stat is fields[n - 3] (the pid and the name come before).
        let nice = fields.get(16).and_then(|v| v.parse::<i64>().ok());
        let policy = fields.get(38).and_then(|v| v.parse::<u32>().ok());
        let tid = t.file_name().to_string_lossy().into_owned();
        if matches!(policy, Some(BATCH | IDLE)) {
            return Some(format!(
                "thread {tid} of the approved reader (pid {pid}) runs under SCHED_IDLE or SCHED_BATCH"
            ));
        }
        if nice.is_some_and(|n| n > 0) {
            return Some(format!(
                "thread {tid} of the approved reader (pid {pid}) runs at a lower priority (nice {})",
                nice.unwrap_or_default()
            ));
        }
        let theirs = cpus_allowed(&t.path().join("status").to_string_lossy());
        if let (Some(a), Some(b)) = (ours, theirs)
            && b < a
        {
            return Some(format!(
                "thread {tid} of the approved reader (pid {pid}) may run on {b} CPU(s), fewer than the {a} the broker may"
            ));
        }
    }
    // Autogroups (`/proc/PID/autogroup`: "/autogroup-N nice K"): a positive nice starves the
    // whole session of the reader.
    let ag = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).unwrap_or_default();
    let ag_nice = ag
        .split_whitespace()
        .skip_while(|w| *w != "nice")
        .nth(1)
        .and_then(|v| v.parse::<i64>().ok());
    if let Some(n) = ag_nice.filter(|n| *n > 0) {
        return Some(format!(
            "the approved reader (pid {pid}) is in an autogroup of lower priority (nice {n})"
        ));
    }
    None
}

/// Why the broker itself would not run at once, or `None`: the io_uring look
/// ([`super::uring::UringWatch`]) sees a worker only while it runs, and a same-uid process may
/// put the broker's threads under `SCHED_IDLE` or `SCHED_BATCH`, raise their nice or pin them
/// beside a copier whose threads then keep the broker off its CPU until their workers are
/// gone (`tests/it/redteam_s10.rs`). Every thread of the broker is looked at: its policy
/// (field 41 of `/proc/self/task/TID/stat`), its nice (field 19), and the CPUs it may run on,
/// which must be as many as pid 1's (what the machine or the container gives every process;
/// not compared when `/proc/1/status` does not say).
pub(super) fn broker_starved() -> Option<String> {
    const BATCH: u32 = 3;
    const IDLE: u32 = 5;
    let all = cpus_allowed("/proc/1/status");
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rfind(')')
            .and_then(|i| stat.get(i + 1..))
            .map(|rest| rest.split_whitespace().collect())
            .unwrap_or_default();
        let nice = fields.get(16).and_then(|v| v.parse::<i64>().ok());
        let policy = fields.get(38).and_then(|v| v.parse::<u32>().ok());
        let tid = t.file_name().to_string_lossy().into_owned();
        if matches!(policy, Some(BATCH | IDLE)) || nice.is_some_and(|n| n > 0) {
            return Some(format!(
                "thread {tid} of the broker runs at a lower priority (SCHED_IDLE, SCHED_BATCH or a positive nice), {}",
                STARVED_MARK
            ));
        }
        let mine = cpus_allowed(&t.path().join("status").to_string_lossy());
        if let (Some(a), Some(b)) = (all, mine)
            && b < a
        {
            return Some(format!(
                "thread {tid} of the broker may run on {b} CPU(s), fewer than the {a} every process may, {}",
                STARVED_MARK
            ));
        }
    }
    None
}

/// Bytes process `pid` has read so far, by any `read` of any of its threads (`rchar` in
/// `/proc/PID/io`).
pub(super) fn rchar(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}
