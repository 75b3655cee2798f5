//! Mounts: a `.env` that exists only for an approved reader (`docs/mounts.md`).
//!
//! A mount is a FIFO the broker created at a path, listed in `KEYVEIL_HOME/mounts.json` (paths
//! and environment names only; never a value). While the vault is unlocked, [`supervise`] looks
//! at each mount every [`POLL`]: it opens the FIFO for writing without blocking
//! (`O_WRONLY|O_NONBLOCK|O_NOFOLLOW`), which succeeds only when some process holds it open for
//! reading, and checks that what it opened is still the FIFO it made (same device and inode,
//! still a FIFO): a regular file, a symlink or another FIFO put in its place is never written.
//!
//! Each opening is served by [`serve_read`]: the broker finds every process holding the FIFO
//! (a scan of `/proc/*/fd`, comparing device and inode; `/proc/PID/fdinfo` says how each opened
//! it), and serves only exactly one process that opened it read-only. Anything else (two
//! readers, a process that opened it for writing or `O_RDWR` to pose as a reader) gets nothing,
//! and is audited once. The one reader becomes an ask like a run's: its argv, pid, executable
//! (pinned), cwd and parents are on the card, with the risk flags of its argv and the
//! mount's own (`dumps-file`: a command that copies or shows a file; `agent-reader`: an agent
//! host among its parents). A live grant of the same mount, environment, argv and cwd whose
//! pinned executable is the reader's serves it without a card.
//!
//! On approval, the FIFO at the path is first swapped for a fresh one (a new FIFO renamed over
//! it), so no process can open the served FIFO any more by its name; then the holders are read
//! again (still exactly the reader, same pid *and* start time, read-only, nothing already in the
//! pipe), the pipe is enlarged to hold the whole text, and the dotenv text is written in one
//! non-blocking write that either fits or is not made (never a partial file). On denial,
//! expiry, lock, or any doubt, the FIFO is closed unwritten: the reader reads end-of-file,
//! zero bytes. A reader that closes early makes the write fail with `EPIPE`, which is only
//! audited (Rust ignores `SIGPIPE`).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Broker;
use super::state::{Ask, MountAsk, OpError, OpResult, RequestState};
use keyveil_proto::{ClientInfo, ErrorCode, op};

/// How often each mount is looked at for a new reader.
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// The client kind of a mount read (its grants' scope is `mount:PATH`). Refused from sockets:
/// only the broker makes asks of this kind.
pub(crate) const MOUNT_KIND: &str = "mount";

/// Longest the broker looks for the process whose `open` let its own open succeed.
const HOLDER_WAIT: Duration = Duration::from_secs(3);

/// Largest dotenv text a mount serves (the pipe is enlarged to hold all of it at once).
const MAX_TEXT: usize = 1 << 20;

/// Commands that show or copy a file rather than load it: a read by one is flagged `dumps-file`.
const DUMPERS: &[&str] = &[
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
const AGENT_HOSTS: &[&str] = &[
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

/// One mount as `mounts.json` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    path: String,
    environment: String,
    created_at: Timestamp,
    dev: u64,
    ino: u64,
}

/// One mount and what the broker knows of it now.
#[derive(Debug, Clone)]
struct Entry {
    stored: Stored,
    state: &'static str,
    reads: u64,
    refused: u64,
    last: Option<String>,
    /// A read is being served (the FIFO is open for writing).
    busy: bool,
    /// Holders last refused, by (pid, start time): refused again silently.
    refused_holders: Vec<(u32, u64)>,
}

/// The mounts of this broker's home, behind their own mutex (never held across an `await`, and
/// never while the broker's state lock is taken).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    file: Option<PathBuf>,
    mounts: Mutex<BTreeMap<String, Entry>>,
}

impl Registry {
    /// The mounts listed in `file` (a missing or unreadable list is empty; one that cannot be
    /// parsed is kept aside as `mounts.json.bad`).
    pub(crate) fn load(file: PathBuf) -> Registry {
        let stored: Vec<Stored> = match std::fs::read(&file) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "mounts.json cannot be read; kept aside as mounts.json.bad");
                let _ = std::fs::rename(&file, file.with_extension("json.bad"));
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        let mounts = stored
            .into_iter()
            .map(|s| {
                (
                    s.path.clone(),
                    Entry {
                        stored: s,
                        state: "locked",
                        reads: 0,
                        refused: 0,
                        last: None,
                        busy: false,
                        refused_holders: Vec::new(),
                    },
                )
            })
            .collect();
        Registry {
            file: Some(file),
            mounts: Mutex::new(mounts),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the list (atomically: a temporary file renamed over it, mode 0600).
    fn save(&self, m: &BTreeMap<String, Entry>) -> std::io::Result<()> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let list: Vec<&Stored> = m.values().map(|e| &e.stored).collect();
        let text = serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?;
        let tmp = file.with_extension("json.tmp");
        {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)
    }

    fn note(&self, path: &str, refused: bool, last: String) {
        let mut m = self.lock();
        if let Some(e) = m.get_mut(path) {
            if refused {
                e.refused += 1;
            } else {
                e.reads += 1;
            }
            e.last = Some(format!(
                "{}: {last}",
                crate::when::human_time(&Timestamp::now().to_string())
            ));
        }
    }
}

fn info(e: &Entry) -> op::MountInfo {
    op::MountInfo {
        path: e.stored.path.clone(),
        environment: e.stored.environment.clone(),
        created_at: e.stored.created_at,
        state: e.state.to_owned(),
        reads: e.reads,
        refused: e.refused,
        last: e.last.clone(),
    }
}

fn usage(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Usage, msg)
}

fn shown(p: &str) -> String {
    keyveil_proto::display::visible(p)
}

/// Whether an error of `mkfifo` means the filesystem has no FIFOs.
fn no_fifos(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    e == Errno::PERM || e == Errno::OPNOTSUPP || e == Errno::INVAL || e == Errno::NOSYS
}

/// Makes a FIFO (mode 0600) at `path`; the error says what to do.
fn make_fifo(path: &Path) -> OpResult<(u64, u64)> {
    use rustix::fs::{CWD, Mode};
    rustix::fs::mkfifoat(CWD, path, Mode::RUSR | Mode::WUSR).map_err(|e| {
        if no_fifos(e) {
            OpError::new(
                ErrorCode::Failed,
                format!(
                    "the filesystem of {} cannot hold a named pipe (FIFO): {e}",
                    shown(&path.display().to_string())
                ),
            )
            .hint("mount on a local filesystem (ext4, xfs, btrfs, tmpfs), not a network, FAT or FUSE share; or start the program with `keyveil run --env ENV -- CMD`, which needs no file")
        } else if e == rustix::io::Errno::EXIST {
            OpError::new(
                ErrorCode::Failed,
                format!("{} already exists", shown(&path.display().to_string())),
            )
            .hint("remove it first, or import it and put the mount in its place with `keyveil import ENV FILE --mount`")
        } else {
            OpError::new(
                ErrorCode::Failed,
                format!("cannot create a named pipe at {}: {e}", shown(&path.display().to_string())),
            )
            .hint("check that the directory exists and is yours")
        }
    })?;
    let m = std::fs::symlink_metadata(path)
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot read the new FIFO: {e}")))?;
    Ok((m.dev(), m.ino()))
}

/// A name next to `path` for a FIFO that is renamed over it.
fn sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.keyveil-{}",
        super::state::new_id("").trim_start_matches('-')
    ))
}

/// `mount`: creates the FIFO (or puts one in place of a regular file, with `replace`) and
/// starts serving it.
pub(crate) fn mount(broker: &Broker, o: op::Mount) -> OpResult<op::Mounted> {
    let path = PathBuf::from(&o.path);
    if !path.is_absolute() {
        return Err(usage("the mount path must be absolute"));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(usage("the mount path names no file"));
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| {
        OpError::new(
            ErrorCode::NotFound,
            format!("the directory of {} is not usable: {e}", shown(&o.path)),
        )
        .hint("create the directory first")
    })?;
    let path = dir.join(name);
    let key = path.display().to_string();
    {
        let inner = broker.lock();
        if !inner
            .vault()?
            .data()
            .environments
            .contains_key(&o.environment)
        {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("no environment {}", shown(&o.environment)),
            )
            .hint("`keyveil env list` shows them; `keyveil env create NAME` makes one"));
        }
    }
    if broker.mounts.lock().contains_key(&key) {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("{} is already a mount", shown(&key)),
        )
        .hint("`keyveil mounts` lists them; `keyveil unmount PATH` removes one"));
    }
    let existing = std::fs::symlink_metadata(&path).ok();
    let replaced = match &existing {
        None => false,
        Some(m) if o.replace && m.is_file() => true,
        Some(m) if o.replace => {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!(
                    "{} is not a regular file ({}); nothing was replaced",
                    shown(&key),
                    if m.file_type().is_fifo() {
                        "a named pipe"
                    } else if m.is_symlink() {
                        "a symlink"
                    } else {
                        "not a file"
                    }
                ),
            ));
        }
        Some(_) => {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("{} already exists", shown(&key)),
            )
            .hint("move it away, or import it and put the mount in its place with `keyveil import ENV FILE --mount`"));
        }
    };
    let (dev, ino) = if replaced {
        let tmp = sibling(&path);
        let id = make_fifo(&tmp)?;
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot put the mount in place of {}: {e}", shown(&key)),
            ));
        }
        id
    } else {
        make_fifo(&path)?
    };
    let stored = Stored {
        path: key.clone(),
        environment: o.environment.clone(),
        created_at: Timestamp::now(),
        dev,
        ino,
    };
    let entry = Entry {
        stored,
        state: "serving",
        reads: 0,
        refused: 0,
        last: None,
        busy: false,
        refused_holders: Vec::new(),
    };
    let out = info(&entry);
    {
        let mut m = broker.mounts.lock();
        m.insert(key.clone(), entry);
        if let Err(e) = broker.mounts.save(&m) {
            m.remove(&key);
            drop(m);
            let _ = std::fs::remove_file(&path);
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot record the mount: {e}; nothing was mounted"),
            ));
        }
    }
    broker.lock().audit(
        "mount",
        json!({"path": key, "environment": o.environment, "replaced_file": replaced}),
    );
    Ok(op::Mounted {
        mount: out,
        replaced,
    })
}

/// `unmount`: forgets the mount and removes its FIFO if it is still the one the broker made.
pub(crate) fn unmount(broker: &Broker, o: op::Unmount) -> OpResult<op::Unmounted> {
    let given = PathBuf::from(&o.path);
    let key = given
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .zip(given.file_name())
        .map(|(d, n)| d.join(n).display().to_string())
        .unwrap_or_else(|| o.path.clone());
    let entry = {
        let mut m = broker.mounts.lock();
        let Some(e) = m.remove(&key) else {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("{} is not a mount", shown(&key)),
            )
            .hint("`keyveil mounts` lists them"));
        };
        if let Err(e) = broker.mounts.save(&m) {
            tracing::warn!(error = %e, "cannot write mounts.json");
        }
        e
    };
    let ours = std::fs::symlink_metadata(&key).is_ok_and(|m| {
        m.file_type().is_fifo() && m.dev() == entry.stored.dev && m.ino() == entry.stored.ino
    });
    let removed = ours && std::fs::remove_file(&key).is_ok();
    broker
        .lock()
        .audit("unmount", json!({"path": key, "removed": removed}));
    Ok(op::Unmounted { path: key, removed })
}

/// `mounts`.
pub(crate) fn list(broker: &Broker) -> op::MountList {
    op::MountList {
        mounts: broker.mounts.lock().values().map(info).collect(),
    }
}

/// What is at a mount's path now.
enum AtPath {
    /// The FIFO the broker made.
    Ours,
    /// Nothing.
    Missing,
    /// Something else.
    Replaced,
}

fn at_path(path: &str, dev: u64, ino: u64) -> AtPath {
    match std::fs::symlink_metadata(path) {
        Err(_) => AtPath::Missing,
        Ok(m) if m.file_type().is_fifo() && m.dev() == dev && m.ino() == ino => AtPath::Ours,
        Ok(_) => AtPath::Replaced,
    }
}

/// Opens the mount's FIFO for writing if a process holds it open for reading, and only if it
/// is still the FIFO the broker made (checked before and after the open).
fn open_if_read(path: &str, dev: u64, ino: u64) -> Result<Option<OwnedFd>, AtPath> {
    use rustix::fs::{Mode, OFlags};
    match at_path(path, dev, ino) {
        AtPath::Ours => {}
        other => return Err(other),
    }
    let fd = match rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // No reader: nothing to serve.
        Err(rustix::io::Errno::NXIO) => return Ok(None),
        Err(rustix::io::Errno::NOENT) => return Err(AtPath::Missing),
        Err(_) => return Err(AtPath::Replaced),
    };
    match rustix::fs::fstat(&fd) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Fifo
                && st.st_dev == dev
                && st.st_ino == ino =>
        {
            Ok(Some(fd))
        }
        // Replaced between the check and the open: closed unwritten.
        _ => Err(AtPath::Replaced),
    }
}

/// Whether process `pid` is stopped or traced (state `T` or `t` in `/proc/PID/stat`), or gone.
fn stopped(pid: u32) -> bool {
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

/// The reader as the card shows it.
struct Reader {
    holder: Holder,
    argv: Vec<String>,
    cwd: String,
    exe: Option<crate::pin::FilePin>,
    peer: super::peer::Peer,
}

fn identify(h: &Holder) -> Option<Reader> {
    let pid = h.pid;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    while argv.last().is_some_and(String::is_empty) {
        argv.pop();
    }
    if argv.is_empty() {
        return None;
    }
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
    // The same process all along (not a pid reused while we read).
    (start_time(pid) == Some(h.start)).then_some(Reader {
        holder: h.clone(),
        argv,
        cwd,
        exe,
        peer,
    })
}

fn base(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// The mount's own flags for a reader.
fn reader_flags(r: &Reader) -> Vec<String> {
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
    if words.iter().any(|w| DUMPERS.contains(w)) {
        f.push("dumps-file".to_owned());
    }
    let agent = r.peer.parents.iter().any(|p| {
        let e = p.exe.as_deref().map(base).unwrap_or("");
        AGENT_HOSTS.contains(&e) || AGENT_HOSTS.contains(&p.comm.as_str())
    });
    if agent {
        f.push("agent-reader".to_owned());
    }
    if r.exe.is_none() {
        f.push("unpinned-executable".to_owned());
    }
    f
}

/// Runs for the broker's life: looks at every mount each [`POLL`] while the vault is unlocked
/// and starts [`serve_read`] for each new reader.
pub(crate) async fn supervise(broker: Arc<Broker>) {
    let mut iv = tokio::time::interval(POLL);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = iv.tick() => {}
            _ = broker.shutdown.cancelled() => return,
        }
        let unlocked = broker.lock().vault.is_some();
        let todo: Vec<(String, u64, u64)> = {
            let mut m = broker.mounts.lock();
            for e in m.values_mut() {
                if !unlocked && !e.busy {
                    e.state = "locked";
                }
            }
            if !unlocked {
                continue;
            }
            m.values()
                .filter(|e| !e.busy)
                .map(|e| (e.stored.path.clone(), e.stored.dev, e.stored.ino))
                .collect()
        };
        for (path, dev, ino) in todo {
            let opened = open_if_read(&path, dev, ino);
            let mut m = broker.mounts.lock();
            let Some(e) = m.get_mut(&path) else { continue };
            match opened {
                Ok(None) => e.state = "serving",
                Err(AtPath::Missing) => e.state = "missing",
                Err(AtPath::Replaced) => e.state = "replaced",
                Err(AtPath::Ours) => {}
                Ok(Some(fd)) => {
                    e.state = "serving";
                    e.busy = true;
                    let env = e.stored.environment.clone();
                    drop(m);
                    let b = broker.clone();
                    tokio::spawn(async move {
                        serve_read(&b, &path, &env, fd, dev, ino).await;
                        if let Some(e) = b.mounts.lock().get_mut(&path) {
                            e.busy = false;
                        }
                    });
                }
            }
        }
    }
}

/// Refuses an opening: audited once per set of holders, the FIFO closed unwritten.
fn refuse(broker: &Broker, path: &str, hs: &[Holder], why: &str) {
    let key: Vec<(u32, u64)> = hs.iter().map(|h| (h.pid, h.start)).collect();
    let again = {
        let mut m = broker.mounts.lock();
        match m.get_mut(path) {
            Some(e) if e.refused_holders == key => true,
            Some(e) => {
                e.refused_holders = key;
                false
            }
            None => true,
        }
    };
    if again {
        return;
    }
    let pids: Vec<u32> = hs.iter().map(|h| h.pid).collect();
    broker.lock().audit(
        "mount_refused",
        json!({"path": path, "pids": pids, "why": why}),
    );
    broker.mounts.note(path, true, why.to_owned());
    tracing::warn!(path, ?pids, why, "mount read refused");
}

/// Serves one opening of a mount's FIFO (`fd`, open for writing): see the module docs.
async fn serve_read(broker: &Arc<Broker>, path: &str, env: &str, fd: OwnedFd, dev: u64, ino: u64) {
    // Our open succeeds as soon as a reader is *in* its `open`; its descriptor shows in
    // /proc only once that call has returned: look again for a moment before giving up.
    let mut hs = holders(dev, ino);
    let t0 = tokio::time::Instant::now();
    while hs.is_empty() && t0.elapsed() < HOLDER_WAIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
        hs = holders(dev, ino);
    }
    let reader = match hs.as_slice() {
        [] => return,
        [h] if h.read_only => h.clone(),
        [_] => {
            return refuse(
                broker,
                path,
                &hs,
                "the process holding it opened it for writing (only a reader is served)",
            );
        }
        _ => {
            return refuse(
                broker,
                path,
                &hs,
                "more than one process holds it open at once; each read gets nothing (read it one at a time)",
            );
        }
    };
    let Some(r) = identify(&reader) else {
        return refuse(
            broker,
            path,
            &hs,
            "the reader could not be identified (it exited, or its pid was reused)",
        );
    };
    match ask_and_wait(broker, path, env, &r).await {
        Ok(grant_id) => write_once(broker, path, env, fd, &r, &grant_id, dev, ino).await,
        Err(why) => {
            broker.mounts.note(path, true, why);
            drop(fd);
        }
    }
}

/// The grant that serves this reader: a live one, or the one the human's approval creates.
/// `Err`: why nothing is written.
async fn ask_and_wait(
    broker: &Arc<Broker>,
    path: &str,
    env: &str,
    r: &Reader,
) -> Result<String, String> {
    let ask = {
        let inner = broker.lock();
        let variables = inner
            .resolve_variables(env, None)
            .map_err(|e| format!("environment {}: {}", shown(env), e.message))?;
        Ask {
            client: ClientInfo {
                kind: MOUNT_KIND.to_owned(),
                name: path.to_owned(),
                version: String::new(),
                pid: r.holder.pid,
            },
            environment: env.to_owned(),
            variables,
            argv: Some(r.argv.clone()),
            cwd: r.cwd.clone(),
            pass_env: Vec::new(),
            pass_values: BTreeMap::new(),
            stdin: None,
            peer: r.peer.clone(),
            mount: Some(MountAsk {
                path: path.to_owned(),
                flags: reader_flags(r),
            }),
        }
    };
    // A live grant for this mount, argv and cwd, pinned to this executable.
    {
        let mut inner = broker.lock();
        let now = Timestamp::now();
        let hit = inner.grants.values_mut().find(|g| {
            g.covers(&ask, now)
                && matches!((&g.executable, &r.exe), (Some(a), Some(b)) if a.dev == b.dev && a.ino == b.ino && a.sha256 == b.sha256)
        });
        if let Some(g) = hit {
            if let Some(u) = g.uses_left.as_mut() {
                *u = u.saturating_sub(1);
            }
            g.runs += 1;
            return Ok(g.id.clone());
        }
    }
    let pins = super::access::Pins {
        executable: r.exe.clone(),
        inputs: Vec::new(),
        writable: false,
    };
    let id = {
        let mut inner = broker.lock();
        match super::access::find_or_create_request(&mut inner, &ask, pins, None, None) {
            Ok((id, _)) => id,
            Err(e) => return Err(format!("refused: {}", e.message)),
        }
    };
    broker.notify();
    let mut changed = broker.changed.subscribe();
    loop {
        let state = broker
            .lock()
            .requests
            .get(&id)
            .map(|q| q.state.clone())
            .unwrap_or(RequestState::Expired);
        match state {
            RequestState::Approved { grant_id } => {
                let mut inner = broker.lock();
                if let Some(g) = inner.grants.get_mut(&grant_id)
                    && g.live(Timestamp::now())
                {
                    if let Some(u) = g.uses_left.as_mut() {
                        *u = u.saturating_sub(1);
                    }
                    g.runs += 1;
                    return Ok(grant_id);
                }
                return Err(format!("request #{id}: the grant ended before the read"));
            }
            RequestState::Denied { .. } => return Err(format!("request #{id} denied")),
            RequestState::Expired => return Err(format!("request #{id} expired")),
            RequestState::Pending => {}
        }
        // The reader left while waiting: the request is withdrawn (expired, not denied: a
        // denial would be remembered against the next honest read).
        let still = holders_of_reader(path, broker, r);
        if !still {
            let mut inner = broker.lock();
            if let Some(q) = inner.requests.get_mut(&id)
                && q.state == RequestState::Pending
            {
                q.state = RequestState::Expired;
                q.decided = Some(std::time::Instant::now());
            }
            inner.audit("mount_reader_left", json!({"path": path, "request_id": id}));
            drop(inner);
            broker.notify();
            return Err(format!(
                "request #{id}: the reader closed the file before approval"
            ));
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = broker.shutdown.cancelled() => return Err("the broker stopped".to_owned()),
        }
    }
}

/// Whether the reader still holds the FIFO it opened.
fn holders_of_reader(path: &str, broker: &Broker, r: &Reader) -> bool {
    let (dev, ino) = match broker.mounts.lock().get(path) {
        Some(e) => (e.stored.dev, e.stored.ino),
        None => return false,
    };
    holders(dev, ino)
        .iter()
        .any(|h| h.pid == r.holder.pid && h.start == r.holder.start)
}

/// Swaps a fresh FIFO in at `path` (so no one can open the served one by name any more), then
/// checks the holders once more and writes the text in one go. Nothing is written on any doubt.
#[allow(clippy::too_many_arguments)]
async fn write_once(
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
    // The text first: nothing is swapped for a read that cannot be served. (The broker's
    // lock is released before `fail`, which takes it.)
    let text: Result<zeroize::Zeroizing<String>, String> = {
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
        match opened {
            Err(e) => Err(format!(
                "cannot read the values: {}",
                inner.hide_names_in_error(env, &vars, e).message
            )),
            Ok(values) => {
                keyveil_dotenv::write(values.iter().map(|(k, v)| (k.as_str(), v.expose()))).map_err(
                    |e| {
                        // The name as clients see it (an alias where the policy hides names).
                        format!(
                            "cannot write a .env every reader reads the same: {}: {}",
                            inner.shown_name(env, &e.name),
                            e.what
                        )
                    },
                )
            }
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(why) => return fail(why),
    };
    if text.len() > MAX_TEXT {
        return fail(format!("the .env text is over {MAX_TEXT} bytes"));
    }
    // Swap: a fresh FIFO renamed over the served one, if the path still holds it.
    let p = PathBuf::from(path);
    if !matches!(at_path(path, dev, ino), AtPath::Ours) {
        return fail("the FIFO was replaced or removed while the request waited".to_owned());
    }
    let tmp = sibling(&p);
    let new_id = match make_fifo(&tmp) {
        Ok(id) => id,
        Err(e) => return fail(format!("cannot swap the FIFO: {}", e.message)),
    };
    if let Err(e) = std::fs::rename(&tmp, &p) {
        let _ = std::fs::remove_file(&tmp);
        return fail(format!("cannot swap the FIFO: {e}"));
    }
    {
        let mut m = broker.mounts.lock();
        if let Some(e) = m.get_mut(path) {
            e.stored.dev = new_id.0;
            e.stored.ino = new_id.1;
        } else {
            // Unmounted meanwhile: the fresh FIFO goes too.
            let _ = std::fs::remove_file(&p);
            drop(m);
            return fail("unmounted while the request waited".to_owned());
        }
        if let Err(e) = broker.mounts.save(&m) {
            tracing::warn!(error = %e, "cannot write mounts.json");
        }
    }
    // The served FIFO is reachable now only through descriptors already open.
    let hs = holders(dev, ino);
    if hs.as_slice() != std::slice::from_ref(&r.holder) {
        return fail(format!(
            "the file was opened by {} process(es) other than the approved reader",
            hs.iter().filter(|h| **h != r.holder).count()
        ));
    }
    // After the swap the served FIFO must have no name left: a hard link the agent made
    // elsewhere would let it open the FIFO by that name and share the read.
    match rustix::fs::fstat(&fd) {
        Ok(st) if st.st_nlink == 0 => {}
        _ => {
            return fail(
                "the FIFO has another name (a hard link made elsewhere); nothing was written"
                    .to_owned(),
            );
        }
    }
    // A stopped reader leaves the text in the pipe for as long as whoever stopped it likes,
    // for anyone who opens the reader's descriptor through /proc.
    if stopped(r.holder.pid) {
        return fail(format!(
            "the approved reader (pid {}) is stopped or traced; nothing was written",
            r.holder.pid
        ));
    }
    match rustix::io::ioctl_fionread(&fd) {
        Ok(0) => {}
        _ => return fail("something else was already written into the FIFO".to_owned()),
    }
    let cap = rustix::pipe::fcntl_setpipe_size(&fd, text.len().max(4096)).unwrap_or(0);
    if cap < text.len() {
        return fail("the pipe cannot be made large enough to hold the text at once".to_owned());
    }
    let len = text.len();
    let written = rustix::io::write(fd.as_fd(), text.as_bytes());
    drop(text);
    let after = holders(dev, ino);
    drop(fd);
    match written {
        Ok(n) if n == len => {
            let others: Vec<u32> = after
                .iter()
                .filter(|h| **h != r.holder)
                .map(|h| h.pid)
                .collect();
            broker.lock().audit(
                "mount_read",
                json!({
                    "path": path, "grant_id": grant_id, "pid": r.holder.pid,
                    "argv": r.argv, "cwd": r.cwd,
                    "opened_during_write": others,
                }),
            );
            broker.mounts.note(
                path,
                false,
                format!("served pid {} (grant {grant_id})", r.holder.pid),
            );
        }
        Ok(_) => fail("the write was cut short".to_owned()),
        Err(rustix::io::Errno::PIPE) => {
            fail("the reader closed the file before it was written (EPIPE)".to_owned());
        }
        Err(e) => fail(format!("the write failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    /// Opens `path` for writing as the broker does, until a reader holds it (at most 10 s).
    fn writer_when_read(path: &Path, dev: u64, ino: u64) -> OwnedFd {
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(Some(fd)) = open_if_read(path.to_str().unwrap(), dev, ino) {
                return fd;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no reader came");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn holder_of(child: &std::process::Child, dev: u64, ino: u64) -> Holder {
        let pid = child.id();
        let t0 = std::time::Instant::now();
        loop {
            if let Some(h) = holders(dev, ino).into_iter().find(|h| h.pid == pid) {
                return h;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the child never held it"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn holders_are_found_with_how_they_opened_the_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.env");
        let (dev, ino) = make_fifo(&p).unwrap();
        // A reader (`exec 3<`) blocks until a writer opens; one `O_RDWR` (`3<>`) does not.
        let mut reader = std::process::Command::new("sh")
            .args([
                "-c",
                "exec 3< \"$0\"; read -r _ <&3 || true",
                p.to_str().unwrap(),
            ])
            .spawn()
            .unwrap();
        let fd = writer_when_read(&p, dev, ino);
        let h = holder_of(&reader, dev, ino);
        assert!(h.read_only);
        assert_eq!(Some(h.start), start_time(reader.id()));
        drop(fd);
        reader.wait().unwrap();
        let mut rdwr = std::process::Command::new("sh")
            .args(["-c", "exec 3<> \"$0\"; read -r _ <&3", p.to_str().unwrap()])
            .spawn()
            .unwrap();
        let h = holder_of(&rdwr, dev, ino);
        assert!(!h.read_only, "an O_RDWR opener is not a reader");
        rdwr.kill().unwrap();
        rdwr.wait().unwrap();
    }

    #[test]
    fn a_file_put_in_place_of_the_fifo_is_never_opened() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.env");
        let (dev, ino) = make_fifo(&p).unwrap();
        let s = p.to_str().unwrap();
        assert!(
            matches!(open_if_read(s, dev, ino), Ok(None)),
            "no reader yet"
        );
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Missing)));
        std::fs::write(&p, "A=1\n").unwrap();
        assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Replaced)));
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/dev/null", &p).unwrap();
        assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Replaced)));
        // Another FIFO renamed to the path is not ours either. (One made after ours was
        // deleted may reuse its inode number: it is still only a FIFO, whose readers are
        // identified and approved like any.)
        let other = dir.path().join("other");
        make_fifo(&other).unwrap();
        std::fs::rename(&other, &p).unwrap();
        assert!(matches!(open_if_read(s, dev, ino), Err(AtPath::Replaced)));
    }

    #[test]
    fn no_fifo_support_is_told_with_a_hint() {
        use rustix::io::Errno;
        for e in [Errno::PERM, Errno::OPNOTSUPP, Errno::INVAL, Errno::NOSYS] {
            assert!(no_fifos(e));
        }
        assert!(!no_fifos(Errno::EXIST));
        assert!(!no_fifos(Errno::ACCESS));
    }
}
