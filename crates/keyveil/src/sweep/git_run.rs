//! How git is run under the broker on a repository the agent can write: which `git`
//! ([`git_program`]: never one from a folder the agent can write), with which environment and
//! configuration ([`git`]), killed by a [`Watchdog`], and only after the repository's git
//! directory was checked for named pipes and devices where git reads ([`refusal`]). See the
//! module docs of [`super::git`].

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use std::collections::BTreeSet;

/// A git command that has written nothing this long after it started is killed: a planted
/// named pipe (a config `include.path`, an alternates file) blocks git before its first output.
pub(super) const FIRST_OUTPUT: Duration = Duration::from_secs(20);
/// Most entries of a git directory examined before git is run on it ([`refusal`]).
pub(super) const MAX_CHECKED: u64 = 2_000_000;

/// Environment variable (read from the broker's own environment) naming the `git` a sweep
/// runs, as an absolute path: the human's choice, taken as given.
pub(crate) const GIT_ENV: &str = "KEYVEIL_GIT";

/// The `git` a sweep runs: [`GIT_ENV`] when set, else the first `git` on the broker's `PATH`
/// that lies, links resolved, in a folder the agent cannot write
/// ([`crate::path_dirs::agent_writable`]: a `git` the agent put in `~/.local/bin` or another
/// folder of the user's on `PATH` would run under the broker). Errors say why none is usable.
pub(super) fn git_program() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(g) = std::env::var_os(GIT_ENV).filter(|g| !g.is_empty()) {
        let g = PathBuf::from(g);
        return if g.is_absolute() {
            Ok(g)
        } else {
            Err(std::io::Error::other(format!(
                "{GIT_ENV} is not an absolute path\nhint: set it to git's full path, or unset it, and restart the broker"
            )))
        };
    }
    let root = Path::new("/");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path).filter(|d| d.is_absolute()) {
        let cand = d.join("git");
        let Ok(real) = std::fs::canonicalize(&cand) else {
            continue;
        };
        let executable = std::fs::metadata(&real)
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        let folders = [Some(d.as_path()), real.parent()];
        if executable
            && folders
                .iter()
                .flatten()
                .all(|f| !crate::path_dirs::agent_writable(f, root, None))
        {
            return Ok(cand);
        }
    }
    Err(std::io::Error::other(format!(
        "no git on the broker's PATH outside folders the agent can write (a git there would run under the broker)\nhint: install git system-wide (/usr/bin/git), or start the broker with {GIT_ENV} set to git's full path"
    )))
}

/// `git` with the environment and configuration described in the module docs.
pub(super) fn git(repo: &Path) -> std::io::Result<Command> {
    let mut c = Command::new(git_program()?);
    // git finds remote helpers (`git-remote-NAME`) on `PATH`: only folders the agent cannot
    // write stay on it.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let safe: Vec<PathBuf> = std::env::split_paths(&path)
        .filter(|d| d.is_absolute() && !crate::path_dirs::agent_writable(d, Path::new("/"), None))
        .collect();
    c.env_clear()
        .env("PATH", std::env::join_paths(safe).unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        // A partial clone would fetch a missing object from its promisor remote, running the
        // transport the repository's own config names (`core.sshCommand`): never.
        .env("GIT_NO_LAZY_FETCH", "1")
        .env("LC_ALL", "C");
    // The repository's config is the agent's to write: nothing it names is ever run (hooks,
    // file-system monitor, a signature checker for `log.showSignature`, a transport).
    for setting in [
        "core.fsmonitor=false",
        "core.hooksPath=/dev/null",
        "log.showSignature=false",
        "gpg.program=false",
        "gpg.ssh.program=false",
        "gpg.x509.program=false",
        "protocol.allow=never",
        // A repository's own `protocol.NAME.allow=always` beats `protocol.allow=never`: a git
        // older than 2.44 ignores `GIT_NO_LAZY_FETCH` and would fetch through it.
        "protocol.ext.allow=never",
        "protocol.file.allow=never",
        "protocol.ssh.allow=never",
        "protocol.git.allow=never",
        "protocol.http.allow=never",
        "protocol.https.allow=never",
        "protocol.ftp.allow=never",
        "protocol.ftps.allow=never",
        "core.sshCommand=false",
        "core.pager=cat",
    ] {
        c.arg("-c").arg(setting);
    }
    c.arg("-C")
        .arg(repo)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: the [`Watchdog`] kills git and anything it started at once.
        .process_group(0);
    Ok(c)
}

/// Kills a git process group at the sweep's deadline, or when it has written nothing
/// [`FIRST_OUTPUT`] after it started (a named pipe the agent planted where git reads its
/// configuration or objects blocks git in `open`, and the sweep's reads with it).
///
/// [`Watchdog::disarm`] must be called before the child is waited for: until then its process
/// group id cannot name another process.
pub(super) struct Watchdog {
    /// (disarmed, fired), and the condition the thread waits on.
    state: Arc<(Mutex<(bool, bool)>, Condvar)>,
    /// Set by the reader once git has written something.
    started: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Watches the process group of `child` (made its leader by [`git`]) until `deadline`.
    pub(super) fn arm(child: &std::process::Child, deadline: Instant) -> Watchdog {
        let state = Arc::new((Mutex::new((false, false)), Condvar::new()));
        let started = Arc::new(AtomicBool::new(false));
        let pgid = i32::try_from(child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        let (st, go) = (Arc::clone(&state), Arc::clone(&started));
        let first = Instant::now() + FIRST_OUTPUT;
        let thread = std::thread::Builder::new()
            .name("sweep-git-watchdog".into())
            .spawn(move || {
                let (lock, cv) = &*st;
                let Ok(mut g) = lock.lock() else { return };
                loop {
                    if g.0 {
                        return;
                    }
                    let now = Instant::now();
                    let due = if go.load(Ordering::Relaxed) {
                        deadline
                    } else {
                        deadline.min(first)
                    };
                    if now >= due {
                        break;
                    }
                    match cv.wait_timeout(g, due - now) {
                        Ok((ng, _)) => g = ng,
                        Err(_) => return,
                    }
                }
                // Still armed (the child is not reaped: its group id is its own).
                if let Some(p) = pgid {
                    let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
                }
                g.1 = true;
            })
            .ok();
        Watchdog {
            state,
            started,
            thread,
        }
    }

    /// Git wrote something: from now on only the deadline kills it.
    pub(super) fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Stops watching; returns whether the process group was killed.
    pub(super) fn disarm(mut self) -> bool {
        let (lock, cv) = &*self.state;
        if let Ok(mut g) = lock.lock() {
            g.0 = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        lock.lock().map(|g| g.1).unwrap_or(false)
    }
}

/// Why git must not be run on the repository whose git directory is `dir`, if it must not: an
/// entry git may open (its `config`, `HEAD`, a ref, `objects/info/alternates`, an object, ...)
/// that is not a regular file or a directory (a named pipe would block git, a device would
/// feed it without end), here or in an object directory an alternates file names. Symbolic
/// links are judged by what they point to, and not descended into.
pub(super) fn refusal(dir: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut checked = 0u64;
    let mut dirs = vec![dir.to_path_buf()];
    let mut seen_alt = BTreeSet::new();
    let mut stack: Vec<(PathBuf, u32)> = Vec::new();
    while let Some(top) = dirs.pop() {
        stack.push((top, 0));
        while let Some((d, depth)) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                checked += 1;
                if checked > MAX_CHECKED {
                    return Some(format!(
                        "more than {MAX_CHECKED} entries in its git directory"
                    ));
                }
                let Ok(t) = e.file_type() else { continue };
                let p = e.path();
                let t = if t.is_symlink() {
                    match std::fs::metadata(&p) {
                        Ok(m) => m.file_type(),
                        Err(_) => continue, // dangling: git finds nothing there
                    }
                } else {
                    t
                };
                if t.is_fifo() || t.is_socket() || t.is_block_device() || t.is_char_device() {
                    let rel = p.strip_prefix(dir).unwrap_or(&p).display().to_string();
                    return Some(format!(
                        "{rel} is not a regular file (a named pipe or device would block or feed git)"
                    ));
                }
                if t.is_dir() && !e.file_type().is_ok_and(|t| t.is_symlink()) && depth < 16 {
                    stack.push((p.clone(), depth + 1));
                }
                // Read without blocking: a file checked above may be a named pipe by now.
                let read = |p: &Path| {
                    read_small(p).map_err(|_| {
                        format!(
                            "{} changed while it was checked",
                            p.strip_prefix(dir).unwrap_or(p).display()
                        )
                    })
                };
                // A linked worktree's common directory is read by git too.
                if depth == 0 && e.file_name() == "commondir" && t.is_file() {
                    let text = match read(&p) {
                        Ok(t) => t,
                        Err(why) => return Some(why),
                    };
                    let c = d.join(text.trim());
                    if seen_alt.len() < 16 && seen_alt.insert(c.clone()) {
                        dirs.push(c);
                    }
                }
                // The object directories an alternates file names are read by git too.
                if e.file_name() == "alternates" && t.is_file() {
                    let text = match read(&p) {
                        Ok(t) => t,
                        Err(why) => return Some(why),
                    };
                    for line in text.lines().take(64) {
                        let l = line.trim();
                        if l.is_empty() || l.starts_with('#') {
                            continue;
                        }
                        let objects = d.parent().map_or_else(|| d.clone(), Path::to_path_buf);
                        let alt = if Path::new(l).is_absolute() {
                            PathBuf::from(l)
                        } else {
                            objects.join(l)
                        };
                        if seen_alt.len() < 16 && seen_alt.insert(alt.clone()) {
                            dirs.push(alt);
                        }
                    }
                }
            }
        }
    }
    None
}

/// The text of a small file git reads (`commondir`, an alternates file, a `.git` file), at
/// most 64 KiB, opened without blocking and read only if it is a regular file (links followed,
/// as git does). The agent can swap a file checked a moment before for a named pipe: a plain
/// read would then wait for a writer, and the sweep with it, for good. Errors: absent
/// (`NotFound`), not a regular file (`InvalidInput`), or unreadable.
pub(super) fn read_small(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    f.take(64 << 10).read_to_string(&mut text)?;
    Ok(text)
}
