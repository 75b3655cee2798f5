//! Who the reader is (from `/proc`): its executable, argv, environment, and the mount's flags.

use super::*;

/// Commands that show or copy a file rather than load it: a read by one is flagged `dumps-file`.
pub(super) const DUMPERS: &[&str] = &[
    "cat",
    "tac",
    "less",
    "more",
    "most",
    "head",
    "tail",
    "cp",
    "mv",
    "dd",
    "tee",
    "xxd",
    "od",
    "hexdump",
    "base64",
    "base32",
    "strings",
    "grep",
    "egrep",
    "fgrep",
    "rg",
    "ag",
    "sed",
    "awk",
    "gawk",
    "mawk",
    "cut",
    "sort",
    "uniq",
    "nl",
    "paste",
    "bat",
    "batcat",
    "vi",
    "vim",
    "nvim",
    "nano",
    "emacs",
    "ed",
    "view",
    "scp",
    "rsync",
    "curl",
    "wget",
    "nc",
    "ncat",
    "socat",
    "tar",
    "zip",
    "gzip",
    "xz",
    "zstd",
    "openssl",
    "gpg",
    "jq",
    "yq",
    "diff",
    "cmp",
    "wc",
    "md5sum",
    "sha256sum",
    "install",
    "ln",
    "file",
    "pv",
    "split",
    "iconv",
    "tr",
];

/// Agent hosts: one among a reader's parents flags the read `agent-reader`.
pub(super) const AGENT_HOSTS: &[&str] = &[
    "claude",
    "codex",
    "opencode",
    "gemini",
    "cursor-agent",
    "aider",
    "goose",
    "amp",
    "qwen",
    "crush",
    "copilot",
    "cline",
    "kilo",
    "roo",
];

/// Executables that adopt orphans (init systems, container inits, supervisors): a reader whose
/// parent is one was reparented to it, or started by it; neither is an anchor. Child
/// subreapers are not visible in `/proc`, so they are known by name (and keyveil's own
/// reaper and supervisor by executable).
pub(super) const SUBREAPERS: &[&str] = &[
    "init",
    "systemd",
    "tini",
    "dumb-init",
    "catatonit",
    "docker-init",
    "s6-svscan",
    "s6-supervise",
    "runit",
    "runsv",
    "runsvdir",
    "supervisord",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "conmon",
    "bwrap",
];

/// Whether this link adopts orphans: the first process of the PID namespace, pid 1, keyveil
/// itself (its reaper and supervisor are subreapers), or a [`SUBREAPERS`] executable.
fn adopts(l: &peer::Link) -> bool {
    let e = l.exe.as_deref().map(base).unwrap_or("");
    l.ppid == 0
        || l.pid == 1
        || l.keyveil
        || SUBREAPERS.contains(&e)
        || SUBREAPERS.contains(&l.comm.as_str())
}

/// The reader's anchor: the process a `--ttl` grant approved from its card is bound to. Its
/// session leader when that is one of its parents below any process that adopts orphans (the
/// shell of the terminal it was typed in: a reader started again from there is under it, as
/// `npm run dev` started again is under the same shell but not the same `npm`), else its
/// parent. `None` when its parent adopts orphans (it was reparented, or started by init or a
/// subreaper: whatever started it is gone from its chain) or the chain is not whole.
pub(super) fn anchor_of(lin: &peer::Lineage) -> Option<MountAnchor> {
    if !lin.complete {
        return None;
    }
    let me = lin.links.first()?;
    let parents = lin.links.get(1..)?;
    let parent = parents.first().filter(|p| !adopts(p))?;
    let pick = parents
        .iter()
        .take_while(|l| !adopts(l))
        .find(|l| l.pid == me.session)
        .unwrap_or(parent);
    Some(MountAnchor {
        pid: pick.pid,
        start: pick.start,
        name: pick
            .exe
            .as_deref()
            .map(|e| base(e.trim_end_matches(" (deleted)")).to_owned())
            .unwrap_or_else(|| pick.comm.clone()),
    })
}

/// The reader as the card shows it.
pub(super) struct Reader {
    pub(super) holder: Holder,
    pub(super) argv: Vec<String>,
    pub(super) cwd: String,
    pub(super) exe: Option<crate::pin::FilePin>,
    pub(super) peer: super::peer::Peer,
    /// The variables of its environment that make a program run or find other code (the
    /// run path's list: `runner::never_passed`), sorted by name: shown on the card and bound
    /// into a grant.
    pub(super) env: Vec<(String, String)>,
    /// Its `/proc/PID/cmdline` ends in a run of NULs: the argv was overwritten in place
    /// (`process.title`, `setproctitle`), its original words gone.
    pub(super) argv_rewritten: bool,
    /// Its whole live parent chain (`peer::lineage`): the agent-host test and the anchor
    /// are decided on it, not on the card's few levels.
    pub(super) lineage: peer::Lineage,
}

/// Parses `/proc/PID/cmdline`: the words, and whether it ends in more than one NUL (what a
/// process that overwrote its argv area in place with a shorter title leaves behind).
pub(super) fn parse_cmdline(raw: &[u8]) -> (Vec<String>, bool) {
    let mut argv: Vec<String> = raw
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // `a\0b\0` splits into a, b and one empty tail; one more is an honest empty last
    // argument (`sh -c ''`); more than that is padding left by an in-place rewrite.
    let mut empty_tail = 0;
    while argv.last().is_some_and(String::is_empty) {
        argv.pop();
        empty_tail += 1;
    }
    let rewritten = empty_tail > 2 || (!raw.is_empty() && raw.last() != Some(&0));
    (argv, rewritten)
}

/// The code-loading variables of `/proc/PID/environ` (`NAME=value` NUL-separated), sorted.
pub(super) fn code_loading_env(raw: &[u8]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = raw
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            super::runner::never_passed(k).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect();
    // A stable sort by name: the first occurrence of a name stays first, and wins, as
    // `getenv` reads it.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|b, a| a.0 == b.0);
    out
}

pub(super) fn identify(h: &Holder) -> Option<Reader> {
    let pid = h.pid;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let (argv, argv_rewritten) = parse_cmdline(&cmdline);
    if argv.is_empty() {
        return None;
    }
    let env = code_loading_env(&std::fs::read(format!("/proc/{pid}/environ")).ok()?);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .ok()?
        .to_string_lossy()
        .into_owned();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| crate::pin::pin_file(&p).ok())
        .filter(|pin| {
            // The file at the path is the one the process runs.
            std::fs::metadata(format!("/proc/{pid}/exe"))
                .is_ok_and(|m| m.dev() == pin.dev && m.ino() == pin.ino)
        });
    let peer = super::peer::Peer::of_pid(Some(pid));
    let lineage = peer::lineage(pid);
    // The same process all along (not a pid reused while we read).
    let same = start_time(pid) == Some(h.start)
        && lineage
            .links
            .first()
            .is_some_and(|l| l.pid == pid && l.start == h.start);
    same.then_some(Reader {
        holder: h.clone(),
        argv,
        cwd,
        exe,
        peer,
        env,
        argv_rewritten,
        lineage,
    })
}

pub(super) fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Whether the reader's `argv[0]` names the executable it runs: as a path (from its cwd) or
/// a word found on its `PATH`, resolved through symlinks to the same device and inode; a
/// login shell's leading `-` aside. A process that rewrote its argv (`process.title =
/// 'vite'`) usually fails this: what the card's argv says is then not what runs.
pub(super) fn argv0_names_exe(r: &Reader) -> bool {
    let Some(exe) = &r.exe else {
        return true;
    };
    let Some(a0) = r.argv.first() else {
        return false;
    };
    let a0 = a0.strip_prefix('-').unwrap_or(a0);
    let same =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.dev() == exe.dev && m.ino() == exe.ino);
    if a0.contains('/') {
        return same(&Path::new(&r.cwd).join(a0));
    }
    let path = r
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .any(|d| same(&Path::new(&r.cwd).join(d).join(a0)))
}

/// SHA-256 of the known dumpers ([`DUMPERS`]) installed in the system's directories, computed
/// once: a copy of one under another name is still a dumper. A digest shared with the system
/// shell (a multi-call binary such as busybox) is left out, or every shell would be flagged.
pub(super) fn dumper_digests() -> &'static std::collections::BTreeSet<String> {
    static DIGESTS: std::sync::OnceLock<std::collections::BTreeSet<String>> =
        std::sync::OnceLock::new();
    DIGESTS.get_or_init(|| {
        let dirs = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];
        let digest = |p: &Path| {
            std::fs::canonicalize(p)
                .ok()
                .and_then(|c| crate::pin::pin_file(&c).ok())
                .map(|pin| pin.sha256)
        };
        let shells: Vec<String> = ["/bin/sh", "/bin/bash", "/usr/bin/sh", "/usr/bin/bash"]
            .iter()
            .filter_map(|p| digest(Path::new(p)))
            .collect();
        let mut out = std::collections::BTreeSet::new();
        for name in DUMPERS {
            for d in dirs {
                if let Some(sha) = digest(&Path::new(d).join(name))
                    && !shells.contains(&sha)
                {
                    out.insert(sha);
                }
            }
        }
        out
    })
}

/// Code-loading variables that almost every process has (`PATH`, `HOME`, ...): still shown
/// on the card and bound into a grant, but no flag by themselves.
pub(super) const ORDINARY_ENV: &[&str] = &[
    "PATH", "HOME", "SHELL", "TMPDIR", "TMP", "TEMP", "EDITOR", "VISUAL", "PAGER",
];

/// The mount's own flags for a reader.
pub(super) fn reader_flags(r: &Reader) -> Vec<String> {
    let mut f = Vec::new();
    let exe = r
        .peer
        .process
        .as_ref()
        .and_then(|p| p.exe.as_deref())
        .unwrap_or("");
    let words: Vec<&str> = std::iter::once(base(exe))
        .chain(r.argv.first().map(|a| base(a)))
        .collect();
    let dumper_by_digest = r
        .exe
        .as_ref()
        .is_some_and(|p| dumper_digests().contains(&p.sha256));
    if words.iter().any(|w| DUMPERS.contains(w)) || dumper_by_digest {
        f.push("dumps-file".to_owned());
    }
    // The whole chain, to the first process (a chain that cannot be read to its end may hide
    // one: flagged too).
    let host = |exe: Option<&str>, comm: &str| {
        let e = exe.map(base).unwrap_or("");
        AGENT_HOSTS.contains(&e) || AGENT_HOSTS.contains(&comm)
    };
    let agent = !r.lineage.complete
        || r.lineage
            .links
            .iter()
            .skip(1)
            .any(|l| host(l.exe.as_deref(), &l.comm))
        || r.peer
            .parents
            .iter()
            .any(|p| host(p.exe.as_deref(), &p.comm));
    if agent {
        f.push("agent-reader".to_owned());
    }
    if anchor_of(&r.lineage).is_none() {
        f.push("detached-reader".to_owned());
    }
    if r.exe.is_none() {
        f.push("unpinned-executable".to_owned());
    }
    if argv_untrusted(r) {
        f.push("argv-not-the-executable".to_owned());
    }
    if r.env
        .iter()
        .any(|(k, _)| !ORDINARY_ENV.contains(&k.as_str()))
    {
        f.push("code-loading-environment".to_owned());
    }
    f
}

/// The reader's argv is not evidence of what runs: rewritten in place, or its first word is
/// not the executable. Such a reader always gets a card.
pub(super) fn argv_untrusted(r: &Reader) -> bool {
    r.argv_rewritten || !argv0_names_exe(r)
}
