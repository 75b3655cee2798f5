//! Who is really on the other end of a connection.
//!
//! A request's [`ClientInfo`] (kind, name, version, pid) is what the client *says*; any process
//! of the user can write a raw frame claiming `cli:keyveil` with pid 1. The broker therefore
//! takes the peer's credentials from the socket at accept (`SO_PEERCRED`: the pid of the
//! process that connected), reads that process's executable (`/proc/PID/exe`) and a few levels
//! of its parent chain (`/proc/PID/stat`), and uses those facts for what must not rest on a
//! claim: the cap on open requests, the `burst` flag, the `claimed-identity` flag and what the
//! approval card shows.
//!
//! Requests are counted per *origin*: the first process of the chain (the peer itself, then its
//! parents) that runs neither keyveil's own executable nor a shell or wrapper (`sh`, `bash`,
//! `env`, `nohup`, ...), keyed by its executable's path. `keyveil run` typed in a terminal and
//! `keyveil run` issued by an agent host's shell tool count apart (the terminal, the agent
//! host), while every `keyveil mcp` child of one agent host and that host's shell commands
//! count together.
//!
//! This identifies honest clients and makes a lie visible; it is not authentication. A process
//! of the same user can hand a connected socket to another process (`fork`, `SCM_RIGHTS`) or
//! `exec` after connecting, and can start processes from executables it copied, so caps also
//! hold across all peers (see `access.rs`), and the factor stays the only authorization.

use std::os::unix::fs::MetadataExt;

use serde::Serialize;

use keyveil_proto::ClientInfo;

/// Origin of every peer whose executable cannot be read.
const UNREADABLE: &str = "unreadable";

/// Parent levels read above the peer.
const CHAIN: usize = 4;

/// Executables that only start another program: skipped when looking for a peer's origin.
const WRAPPERS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "ash", "busybox", "tcsh", "csh", "env",
    "nohup", "timeout", "setsid", "stdbuf", "nice", "xargs", "sudo", "doas", "script",
];

/// One process of a peer's parent chain.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Proc {
    /// Process id (in the broker's PID namespace).
    pub pid: u32,
    /// Its `comm` (the kernel's short name; the process can set it, so it is only a label).
    pub comm: String,
    /// The executable's path (`/proc/PID/exe`), when readable.
    pub exe: Option<String>,
    /// It runs keyveil's own executable (same device and inode as the broker's).
    pub keyveil: bool,
}

/// The process at the other end of a connection, as the kernel and `/proc` tell it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Peer {
    /// The connecting process (`None` when the kernel gave no pid, e.g. another PID namespace).
    pub process: Option<Proc>,
    /// For a keyveil peer: `mcp` when it runs `keyveil mcp`, `cli` otherwise.
    pub keyveil_mode: Option<String>,
    /// Its parents, nearest first (at most a few levels, up to pid 1).
    pub parents: Vec<Proc>,
    /// What open requests and bursts are counted by: the origin's executable path (see the
    /// module docs), `unreadable` when it cannot be read, `unknown` without a pid.
    pub origin: String,
    /// The connecting process's start time (clock ticks after boot, `/proc/PID/stat` field
    /// 22) when it was read: with the pid, it names the process even if the pid is reused
    /// ([`ancestry`]). Not shown.
    #[serde(skip)]
    pub start: Option<u64>,
}

/// Most parent levels [`ancestry`] walks before it gives up (a chain that long is unsure).
const MAX_ANCESTRY: usize = 4096;

/// `(ppid, start time)` from `/proc/PID/stat` (fields 4 and 22).
fn ppid_and_start(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // After `comm`: state (3), ppid (4), ... starttime (22).
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// `pid` and every process above it up to the first process of the PID namespace, nearest
/// first, each as `(pid, start time)`. `None` when any of them cannot be read (it exited
/// during the walk, or another PID namespace hides it) or the chain is absurdly long: the
/// caller cannot then tell what the process descends from.
pub(crate) fn ancestry(pid: u32) -> Option<Vec<(u32, u64)>> {
    let mut out = Vec::new();
    let mut at = pid;
    loop {
        let (ppid, start) = ppid_and_start(at)?;
        out.push((at, start));
        if ppid == 0 || out.len() >= MAX_ANCESTRY {
            return (ppid == 0).then_some(out);
        }
        at = ppid;
    }
}

/// Most links [`lineage`] reads: a safety cap far above any honest process tree, not a depth
/// an agent can hide under (a chain cut by it is reported incomplete).
pub(crate) const LINEAGE_CAP: usize = 256;

/// One process of a [`lineage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Link {
    /// Process id.
    pub pid: u32,
    /// Start time (clock ticks after boot, `/proc/PID/stat` field 22): with the pid, it names
    /// the process even when the pid is reused.
    pub start: u64,
    /// Its parent's pid (0 for the first process of the PID namespace).
    pub ppid: u32,
    /// Its session id (`/proc/PID/stat` field 6).
    pub session: u32,
    /// Its `comm` (only a label: the process can set it).
    pub comm: String,
    /// Its executable's path, when readable.
    pub exe: Option<String>,
    /// It runs keyveil's own executable.
    pub keyveil: bool,
}

/// A process and every process above it, as read from `/proc` now.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lineage {
    /// The process first, then its parents, nearest first.
    pub links: Vec<Link>,
    /// The walk reached the first process of the PID namespace (its parent is 0). `false`:
    /// a link could not be read (it exited during the walk, or another PID namespace hides
    /// it) or the chain is longer than [`LINEAGE_CAP`]; what it descends from is then unsure.
    pub complete: bool,
}

/// A process's executable path (`/proc/PID/exe`, when readable) and whether it is keyveil's own
/// (same device and inode as `me`).
fn exe_of(pid: u32, me: Option<(u64, u64)>) -> (Option<String>, bool) {
    let exe_link = format!("/proc/{pid}/exe");
    let exe = std::fs::read_link(&exe_link)
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let keyveil = me.is_some()
        && std::fs::metadata(&exe_link)
            .ok()
            .map(|m| (m.dev(), m.ino()))
            == me;
    (exe, keyveil)
}

/// One link from `/proc/PID/stat` and `/proc/PID/exe`.
fn link(pid: u32, me: Option<(u64, u64)>) -> Option<Link> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let rest: Vec<&str> = s.get(close + 1..)?.split_whitespace().collect();
    // After `comm`: state (3), ppid (4), pgrp (5), session (6), ... starttime (22).
    let ppid = rest.get(1)?.parse().ok()?;
    let session = rest.get(3)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    let (exe, keyveil) = exe_of(pid, me);
    Some(Link {
        pid,
        start,
        ppid,
        session,
        comm,
        exe,
        keyveil,
    })
}

/// `pid` and every process above it up to the first process of the PID namespace, read now
/// (at most [`LINEAGE_CAP`] links). Unlike [`Peer::parents`] (a few levels, for the card),
/// this is the whole chain: what a process descends from is decided on it.
pub(crate) fn lineage(pid: u32) -> Lineage {
    let me = self_exe_id();
    let mut out = Lineage::default();
    let mut at = pid;
    while out.links.len() < LINEAGE_CAP {
        let Some(l) = link(at, me) else {
            return out;
        };
        let ppid = l.ppid;
        out.links.push(l);
        if ppid == 0 {
            out.complete = true;
            return out;
        }
        at = ppid;
    }
    out
}

fn self_exe_id() -> Option<(u64, u64)> {
    std::fs::metadata("/proc/self/exe")
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// `(comm, ppid)` from `/proc/PID/stat` (`comm` may hold spaces and parentheses: it ends at
/// the last `)`).
fn stat(pid: u32) -> Option<(String, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    let mut rest = s.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, ppid))
}

fn read_proc(pid: u32, me: Option<(u64, u64)>) -> (Proc, Option<u32>) {
    let (comm, ppid) = match stat(pid) {
        Some((c, p)) => (c, Some(p)),
        None => (String::new(), None),
    };
    let (exe, keyveil) = exe_of(pid, me);
    (
        Proc {
            pid,
            comm,
            exe,
            keyveil,
        },
        ppid,
    )
}

fn basename(p: &str) -> &str {
    p.trim_end_matches(" (deleted)")
        .rsplit('/')
        .next()
        .unwrap_or(p)
}

fn is_wrapper(p: &Proc) -> bool {
    p.exe.as_deref().is_some_and(|e| {
        let b = basename(e);
        // python3.12 -> python3 is not a wrapper; bash5 -> bash is.
        let fam = b.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        WRAPPERS.contains(&b) || WRAPPERS.contains(&fam)
    })
}

impl Peer {
    /// The peer of a connected socket (its `SO_PEERCRED` pid, then `/proc`).
    pub(crate) fn of_stream(stream: &tokio::net::UnixStream) -> Peer {
        let pid = stream
            .peer_cred()
            .ok()
            .and_then(|c| c.pid())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        Peer::of_pid(pid)
    }

    /// The peer with this pid (`None`: unknown).
    pub(crate) fn of_pid(pid: Option<u32>) -> Peer {
        let Some(pid) = pid else {
            return Peer {
                origin: "unknown".to_owned(),
                ..Peer::default()
            };
        };
        let me = self_exe_id();
        let (process, mut next) = read_proc(pid, me);
        let keyveil_mode = process.keyveil.then(|| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mode = cmdline.split(|b| *b == 0).nth(1) == Some(b"mcp".as_slice());
            if mode { "mcp" } else { "cli" }.to_owned()
        });
        let mut parents = Vec::new();
        while let Some(p) = next.filter(|p| *p > 0) {
            if parents.len() >= CHAIN {
                break;
            }
            let (proc_, up) = read_proc(p, me);
            parents.push(proc_);
            next = up;
        }
        let chain = std::iter::once(&process).chain(parents.iter());
        let origin = chain
            .clone()
            .find(|p| !p.keyveil && !is_wrapper(p))
            .or_else(|| chain.last())
            // A process that is gone (it connected, handed the socket on and exited) or whose
            // executable cannot be read counts with every other such process: a fresh pid
            // must not be a fresh allowance.
            .map(|p| p.exe.clone().unwrap_or_else(|| UNREADABLE.to_owned()))
            .unwrap_or_else(|| "unknown".to_owned());
        Peer {
            process: Some(process),
            keyveil_mode,
            parents,
            origin,
            start: ppid_and_start(pid).map(|(_, s)| s),
        }
    }

    /// The peer's pid, if known.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }

    /// How a claim disagrees with the peer, if it does: the claimed pid is not the connecting
    /// process, or the claim is `cli`/`mcp` (keyveil's own clients) from another executable or
    /// from keyveil running the other mode. `None` when it agrees or the peer is unknown.
    pub(crate) fn mismatch(&self, claim: &ClientInfo) -> Option<String> {
        let p = self.process.as_ref()?;
        if claim.pid != p.pid {
            return Some(format!(
                "claims pid {}, connected from pid {}",
                claim.pid, p.pid
            ));
        }
        match &self.keyveil_mode {
            None => Some(format!(
                "claims to be keyveil's {} client, connected from {}",
                claim.kind,
                p.exe.as_deref().unwrap_or("an unreadable executable")
            )),
            Some(mode) if *mode != claim.kind => Some(format!(
                "claims kind {}, connected from keyveil running as {mode}",
                claim.kind
            )),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claim(kind: &str, pid: u32) -> ClientInfo {
        ClientInfo {
            kind: kind.into(),
            name: "keyveil".into(),
            version: "1".into(),
            pid,
        }
    }

    #[test]
    fn a_peer_is_read_from_proc_and_a_false_claim_is_named() {
        let me = std::process::id();
        let peer = Peer::of_pid(Some(me));
        let p = peer.process.clone().unwrap();
        assert_eq!(p.pid, me);
        assert_eq!(
            p.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|e| e.to_str())
        );
        // The test binary is the broker's "own" executable here: keyveil, as cli.
        assert!(p.keyveil);
        assert_eq!(peer.keyveil_mode.as_deref(), Some("cli"));
        assert!(!peer.parents.is_empty());
        assert_eq!(peer.mismatch(&claim("cli", me)), None);
        assert!(peer.mismatch(&claim("cli", 1)).unwrap().contains("pid 1"));
        assert!(peer.mismatch(&claim("mcp", me)).is_some());
        // Unknown peers: nothing to compare, counted together.
        let unknown = Peer::of_pid(None);
        assert_eq!(unknown.origin, "unknown");
        assert_eq!(unknown.mismatch(&claim("cli", 1)), None);
        // A pid that is gone: unreadable, one shared origin, and any claim disagrees.
        let gone = Peer::of_pid(Some(u32::MAX - 7));
        assert_eq!(gone.origin, UNREADABLE);
        assert!(gone.mismatch(&claim("cli", u32::MAX - 7)).is_some());
    }

    #[test]
    fn ancestry_reaches_the_first_process_and_names_each_by_start_time() {
        let me = std::process::id();
        let chain = ancestry(me).unwrap();
        assert_eq!(chain.first().map(|c| c.0), Some(me));
        assert_eq!(
            chain.first().map(|c| c.1),
            Peer::of_pid(Some(me)).start,
            "the peer's start time is its first link's"
        );
        let parent = stat(me).unwrap().1;
        assert_eq!(chain.get(1).map(|c| c.0), Some(parent));
        // A pid that is gone: unsure.
        assert!(ancestry(u32::MAX - 7).is_none());
    }

    #[test]
    fn lineage_reads_the_whole_chain_to_the_first_process() {
        let me = std::process::id();
        let l = lineage(me);
        assert!(l.complete);
        assert_eq!(l.links.first().map(|x| x.pid), Some(me));
        assert_eq!(l.links.last().map(|x| x.ppid), Some(0));
        let chain = ancestry(me).unwrap();
        let pairs: Vec<(u32, u64)> = l.links.iter().map(|x| (x.pid, x.start)).collect();
        assert_eq!(pairs, chain, "the same chain, named by start time");
        // A pid that is gone: nothing read, incomplete.
        let gone = lineage(u32::MAX - 7);
        assert!(!gone.complete && gone.links.is_empty());
    }

    #[test]
    fn stat_parses_a_comm_with_spaces_and_parentheses() {
        let (comm, ppid) = stat(std::process::id()).unwrap();
        assert!(!comm.is_empty());
        assert!(ppid > 0);
    }

    #[test]
    fn wrappers_are_recognised_by_executable() {
        let p = |e: &str| Proc {
            pid: 2,
            comm: String::new(),
            exe: Some(e.to_owned()),
            keyveil: false,
        };
        assert!(is_wrapper(&p("/usr/bin/bash")));
        assert!(is_wrapper(&p("/bin/sh (deleted)")));
        assert!(!is_wrapper(&p("/usr/bin/python3.12")));
        assert!(!is_wrapper(&p("/usr/bin/node")));
    }
}
