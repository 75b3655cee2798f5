//! The user's subordinate uids (`/etc/subuid`): processes the agent can run under another uid.
//!
//! `newuidmap` lets every user listed in `/etc/subuid` map the ranges given there into a user
//! namespace of its own (rootless podman, `unshare --map-auto`): a process of the user can so
//! run code under any uid of those ranges, and pass it a descriptor. The mounts' io_uring look
//! counts such processes as the user's own, and the owner check of a plain-HTTP loopback
//! server (`dynamic/owner`) counts such a listener as the user's own.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// What every reason of [`Subuids::ranges`] ends with (so a note can add the [`subuid_hint`]).
pub(crate) const SUBUID_MARK: &str =
    "so the processes the user runs under its subordinate uids cannot be told apart";

/// What the human can do when the ranges cannot be read: the `hint:` of a refusal or a stop.
pub(crate) fn subuid_hint() -> String {
    format!(
        "hint: make {} readable (mode 0644) with one range a line, NAME_OR_UID:FIRST_UID:COUNT, as `newuidmap` reads it; then read the mount again",
        subuid_path().display()
    )
}

/// Where the ranges are read from. Debug builds (the integration tests) may name another file
/// in `KEYVEIL_TEST_SUBUID`; release builds read `/etc/subuid` only.
fn subuid_path() -> PathBuf {
    #[cfg(debug_assertions)]
    if let Some(p) = std::env::var_os("KEYVEIL_TEST_SUBUID").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    PathBuf::from("/etc/subuid")
}

/// What identifies one version of the file: device, inode, size, modification and change
/// times (`None`: no such file).
type Stamp = Option<(u64, u64, u64, i64, i64, i64, i64)>;

/// A range of uids, `start..end` (end excluded; `u64` so a range may end past `u32::MAX`).
pub(crate) type Range = (u64, u64);

/// The user's subordinate uid ranges, re-read whenever the file changes.
pub(crate) struct Subuids {
    path: PathBuf,
    stamp: Stamp,
    /// The ranges, or why they are not known (ending in [`SUBUID_MARK`]).
    ranges: Result<Vec<Range>, String>,
    /// The uids whose lines count (the broker's and the reader's).
    uids: Vec<u32>,
}

impl Subuids {
    /// The ranges of the users with uids `uids` (by name or by number), read now.
    pub(crate) fn new(uids: &[u32]) -> Subuids {
        Subuids::at(subuid_path(), uids)
    }

    /// As [`Subuids::new`], from the file at `path`.
    pub(crate) fn at(path: PathBuf, uids: &[u32]) -> Subuids {
        let mut s = Subuids {
            path,
            stamp: None,
            ranges: Ok(Vec::new()),
            uids: uids.to_vec(),
        };
        s.reload();
        s
    }

    /// Reads the file again if it changed since it was last read.
    pub(crate) fn refresh(&mut self) {
        if stamp(&self.path) != self.stamp {
            self.reload();
        }
    }

    fn reload(&mut self) {
        self.stamp = stamp(&self.path);
        self.ranges = match std::fs::read_to_string(&self.path) {
            Ok(text) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                parse(&text, &passwd, &self.uids).map_err(|e| {
                    format!(
                        "{} cannot be read as subordinate uid ranges ({e}), {SUBUID_MARK}",
                        self.path.display()
                    )
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!(
                "{} cannot be read ({e}), {SUBUID_MARK}",
                self.path.display()
            )),
        };
    }

    /// The ranges, or why they are not known (ending in [`SUBUID_MARK`]; [`subuid_hint`] says what to do).
    pub(crate) fn ranges(&self) -> Result<&[Range], &str> {
        self.ranges.as_deref().map_err(String::as_str)
    }
}

/// The subordinate uid ranges of the user with uid `uid` (its lines of `/etc/subuid`, by name
/// or by number), read now: uids a process of that user can run code under (through
/// `newuidmap`), so a socket or process of such a uid may be the agent's. `Err` says why they
/// cannot be known (ending in [`SUBUID_MARK`]).
pub(crate) fn ranges_of(uid: u32) -> Result<Vec<Range>, String> {
    Subuids::new(&[uid])
        .ranges()
        .map(<[Range]>::to_vec)
        .map_err(str::to_owned)
}

/// What identifies the version of the file at `path` now.
fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// The ranges of `subuid` (the text of `/etc/subuid`) that belong to a user with one of `uids`:
/// a line whose owner is one of those uids in digits, a name `passwd` (the text of
/// `/etc/passwd`) gives one of them, or a name `passwd` does not know at all (a user from
/// another name service may be this one: counted, never skipped). Blank lines and lines
/// starting with `#` are skipped. `Err`: the first line that is not `OWNER:FIRST:COUNT` with
/// two numbers as `newuidmap` reads them ([`number`]: decimal, `0` octal, `0x` hexadecimal;
/// its number, never its text).
pub(crate) fn parse(subuid: &str, passwd: &str, uids: &[u32]) -> Result<Vec<Range>, String> {
    let mut known: Vec<(&str, u32)> = Vec::new();
    for l in passwd.lines() {
        let mut f = l.split(':');
        if let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next())
            && let Ok(uid) = uid.parse::<u32>()
        {
            known.push((name, uid));
        }
    }
    let mut out = Vec::new();
    for (n, l) in subuid.lines().enumerate() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let bad = || format!("line {} is not OWNER:FIRST_UID:COUNT", n + 1);
        let f: Vec<&str> = l.split(':').collect();
        let [owner, first, count] = f.as_slice() else {
            return Err(bad());
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if owner.is_empty() {
            return Err(bad());
        }
        let (Some(first), Some(count)) = (number(first), number(count)) else {
            return Err(bad());
        };
        let ours = if digits(owner) {
            owner.parse::<u32>().is_ok_and(|u| uids.contains(&u))
        } else {
            let mut named = known.iter().filter(|(name, _)| name == owner).peekable();
            named.peek().is_none() || named.any(|(_, u)| uids.contains(u))
        };
        if ours && count > 0 {
            out.push((first, first.saturating_add(count)));
        }
    }
    Ok(out)
}

/// A number of `/etc/subuid` as `newuidmap` reads it (shadow's `getulong`/`str2ul`:
/// `strtoul` with base 0): `0x` or `0X` then hexadecimal digits, `0` then octal digits, else
/// decimal digits. So `0200000` is 65536, not 200000: read as decimal, a range written in
/// octal would be counted where it is not, and the uids `newuidmap` maps left out. `None`
/// for anything else (signs and spaces too, which `strtoul` would take: the file is then
/// refused, never read another way).
fn number(s: &str) -> Option<u64> {
    let (digits, radix) = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        (h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || !digits.bytes().all(|b| char::from(b).is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Whether `uid` lies in one of `ranges`.
pub(crate) fn in_ranges(ranges: &[Range], uid: u32) -> bool {
    ranges
        .iter()
        .any(|&(a, b)| (a..b).contains(&u64::from(uid)))
}

/// Whether process `pid` is in a user namespace other than the broker's whose uid map
/// (`/proc/PID/uid_map`, as the broker sees it) maps one of `uids` or a uid of `ranges`: a
/// namespace the user made (or was given), whose processes run for the user whatever uid
/// they show. Who owns a namespace is not in `/proc` (it takes an `ioctl` on the namespace's
/// descriptor); its map is.
pub(crate) fn in_users_namespace(pid: u32, uids: &[u32], ranges: &[Range]) -> bool {
    let Ok(map) = std::fs::read_to_string(format!("/proc/{pid}/uid_map")) else {
        return false;
    };
    let ours = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
    if map.split_whitespace().eq(ours.split_whitespace()) {
        return false;
    }
    map.lines().any(|l| {
        let f: Vec<u64> = l
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        let [_, outside, count] = f.as_slice() else {
            return false;
        };
        let (a, b) = (*outside, outside.saturating_add(*count));
        uids.iter().any(|u| (a..b).contains(&u64::from(*u)))
            || ranges.iter().any(|&(x, y)| x < b && a < y)
    })
}
