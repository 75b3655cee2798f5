//! Process trees read from `/proc` (Linux), for the run reaper and the supervisor.
//!
//! A process is *gone* only when every one of its threads has exited. `/proc/PID/stat` shows
//! the state of the thread-group leader, and a leader that ended with `pthread_exit` while its
//! other threads run shows as a zombie (`Z`) although the process still runs, still holds its
//! environment, and still holds the children its dead main thread started (they are
//! re-parented to a live thread of the same process, so their parent pid does not change).
//! Treating every `Z` as gone let such a process, and its whole subtree, outlive a revocation;
//! so here a zombie counts as alive while `/proc/PID/task` lists more than its leader, and the
//! tree is walked through zombies.

use std::collections::HashMap;

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// The leader's state letter (`R`, `S`, `Z`, ...).
    pub(crate) state: char,
    /// The parent's pid (the thread-group id of the thread that is its parent).
    pub(crate) ppid: i32,
}

/// Parses `/proc/PID/stat` (`pid (comm) state ppid ...`; `comm` may hold spaces and
/// parentheses, so the last `)` ends it). `None` when the process does not exist.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The parsing half of [`stat`].
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid })
}

/// Whether `pid` still runs any thread: not a zombie, or a zombie leader whose process still
/// has other threads (see the module docs).
pub(crate) fn runs(pid: i32, st: Stat) -> bool {
    if st.state != 'Z' && st.state != 'X' {
        return true;
    }
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name() != *pid.to_string())
                .count()
                > 0
        })
        .unwrap_or(false)
}

/// Every process whose parent is `root`, or a descendant of it, that still [`runs`]; found by
/// one pass over `/proc`. Zombies are walked through (their children are still below `root`)
/// but not returned unless they run.
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut children: HashMap<i32, Vec<(i32, Stat)>> = HashMap::new();
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(st) = stat(pid) {
            children.entry(st.ppid).or_default().push((pid, st));
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        for (pid, st) in children.remove(&p).unwrap_or_default() {
            if runs(pid, st) {
                out.push(pid);
            }
            todo.push(pid);
        }
    }
    out
}

/// The direct children of `root` that still [`runs`].
pub(crate) fn children(root: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|st| st.ppid == root && runs(pid, st)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let s = parse_stat("42 (a) b (c)) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                ppid: 7
            }
        );
        let z = parse_stat("43 (x) Z 1 0").unwrap();
        assert_eq!(z.state, 'Z');
        assert!(parse_stat("44 (no close paren S 1").is_none());
        assert!(parse_stat("45 (x) S notapid").is_none());
    }

    #[test]
    fn this_process_runs_and_is_below_its_parent() {
        let me = std::process::id() as i32;
        let st = stat(me).unwrap();
        assert!(runs(me, st));
        let parent = st.ppid;
        assert!(descendants(parent).contains(&me));
        assert!(children(parent).contains(&me));
    }
}
