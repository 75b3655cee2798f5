//! What `/proc` says of the processes holding a FIFO: who, how, stopped, waiting for input.

use super::*;

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
            if pid == me && !ro {
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

/// What the threads of `pid` are doing, from `/proc/PID/task/*/wchan` (the kernel function
/// each sleeps in): `Some(true)` when one sleeps in a pipe read or a poll (waiting for input),
/// `Some(false)` when none does, `None` when the kernel does not say (every `wchan` is `0`).
pub(super) fn waiting_for_input(pid: u32) -> Option<bool> {
    const WAITS: &[&str] = &[
        "pipe_read",
        "ep_poll",
        "do_epoll_wait",
        "do_sys_poll",
        "do_select",
        "core_sys_select",
        "poll_schedule_timeout",
    ];
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut told = false;
    for t in tasks.flatten() {
        let Ok(w) = std::fs::read_to_string(t.path().join("wchan")) else {
            continue;
        };
        let w = w.trim();
        if w.is_empty() || w == "0" {
            continue;
        }
        told = true;
        if WAITS.iter().any(|x| w.ends_with(x)) {
            return Some(true);
        }
    }
    told.then_some(false)
}
