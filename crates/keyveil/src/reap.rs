//! The per-run reaper: the process the broker really starts for a granted command (Linux).
//!
//! A run is tracked by what it is, the tree of processes below one reaper, not by a process
//! group the command can leave (`setpgid` into another group of the session, `setsid`, a
//! daemon's double fork). The broker starts `/proc/self/exe --keyveil-run-reaper FD PROGRAM
//! ARGV0 ARGS...` with the run's environment; the reaper makes itself non-dumpable and a
//! *child subreaper* (`PR_SET_CHILD_SUBREAPER`), then starts the command as its child. Every
//! process the command starts stays a descendant of the reaper whatever it does: when its
//! parent exits it is re-parented to the reaper, not to init. A process cannot choose its
//! parent, so the tree cannot be left while the reaper lives.
//!
//! Ending the run is ending the tree: every descendant is found by one pass over
//! `/proc/*/stat` (parent pids), pinned with a pidfd, checked to still be below the reaper,
//! and signalled; passes repeat until no descendant is left (a process killed in one pass may
//! have forked just before; its children are re-parented to the reaper and found by the next).
//! - The command (the leader) exits: the rest of the tree is killed (SIGKILL), nothing outlives
//!   its run.
//! - SIGTERM, SIGINT or SIGHUP (the broker revoking, timing out or stopping the run): SIGTERM
//!   to every descendant, SIGKILL to whatever is left after [`KILL_GRACE`].
//! - SIGUSR1: SIGKILL to every descendant now.
//!
//! The reaper then writes one report line on the pipe it inherited (`exit=N` or `signal=S`
//! for the leader, `killed=K` processes it signalled that are gone, `left=L` it could not
//! kill within its bound) and exits with the leader's code (128 + signal when the leader was
//! killed). The broker reads the line after the reaper's exit; no line means the reaper was
//! killed (it is a process of the same user: the agent can `kill -9` it), and the broker asks
//! the supervisor to kill what was re-parented to it (`supervise.rs`). The reaper is idle
//! while the command runs: it blocks in `waitid` and in a signal wait, nothing polls.

#[cfg(target_os = "linux")]
pub(crate) mod seal;
pub(crate) mod tree;

/// The first argument that makes `keyveil` a run reaper (see the module docs).
pub(crate) const FLAG: &str = "--keyveil-run-reaper";

/// The only argument that makes `keyveil` a probe of user namespaces: it exits 0 when the
/// kernel let it enter a new user and mount namespace (what [`seal`] needs), 1 when it refused.
/// `keyveil doctor` starts it, so the probe runs single-threaded, as the reaper does.
pub(crate) const USERNS_PROBE_FLAG: &str = "--keyveil-userns-probe";

/// Grace period between SIGTERM and SIGKILL when a run is stopped (by its reaper, and by the
/// broker's `RunHandle` where there is no reaper).
pub(crate) const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the reaper and exits when the process was started as one; returns otherwise.
pub(crate) fn maybe_run() {
    let mut args = std::env::args_os();
    match args.nth(1) {
        Some(a) if a == FLAG => std::process::exit(imp::main(args.collect())),
        Some(a) if a == USERNS_PROBE_FLAG && args.next().is_none() => {
            #[cfg(target_os = "linux")]
            let entered = crate::harden::enter_user_and_mount_namespaces().is_ok();
            #[cfg(not(target_os = "linux"))]
            let entered = false;
            std::process::exit(if entered { 0 } else { 1 })
        }
        _ => {}
    }
}

/// What a run's reaper reported when it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Report {
    /// The leader's exit code, when it exited.
    pub(crate) exit: Option<i32>,
    /// The signal that killed the leader, when one did.
    pub(crate) signal: Option<i32>,
    /// Processes of the run the reaper signalled and that are gone.
    pub(crate) killed: u32,
    /// Processes of the run still alive when the reaper gave up (its bound is 3 s).
    pub(crate) left: u32,
}

impl Report {
    /// The report line (see the module docs).
    pub(crate) fn line(&self) -> String {
        let status = match (self.exit, self.signal) {
            (_, Some(s)) => format!("signal={s}"),
            (Some(c), None) => format!("exit={c}"),
            (None, None) => "exit=127".to_owned(),
        };
        format!("{status} killed={} left={}\n", self.killed, self.left)
    }

    /// Parses a report line; `None` when it is not one (a reaper killed mid-write).
    pub(crate) fn parse(line: &str) -> Option<Report> {
        let line = line.strip_suffix('\n')?;
        let mut r = Report::default();
        for field in line.split(' ') {
            let (k, v) = field.split_once('=')?;
            match k {
                "exit" => r.exit = Some(v.parse().ok()?),
                "signal" => r.signal = Some(v.parse().ok()?),
                "killed" => r.killed = v.parse().ok()?,
                "left" => r.left = v.parse().ok()?,
                _ => return None,
            }
        }
        (r.exit.is_some() || r.signal.is_some()).then_some(r)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(crate) fn main(_args: Vec<std::ffi::OsString>) -> i32 {
        127
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::collections::HashSet;
    use std::ffi::OsString;
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use rustix::process::{Pid, PidfdFlags, Signal, WaitOptions};

    use super::Report;

    /// Longest the reaper tries to empty its tree once it has to (then it reports `left`).
    const KILL_BOUND: Duration = Duration::from_secs(3);

    /// `args`: report fd, the files to seal (`--keyveil-seal PATH SHA256`, `seal.rs`),
    /// program, argv0, arguments.
    pub(crate) fn main(args: Vec<OsString>) -> i32 {
        let _ =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);
        let report_fd = args
            .first()
            .and_then(|a| a.to_str())
            .and_then(|a| a.parse::<i32>().ok())
            .and_then(crate::harden::adopt_inherited_fd);
        let (sealed, args) =
            super::seal::split_args(args.get(1..).unwrap_or_default()).unwrap_or_default();
        let (Some(report_fd), Some(program), Some(argv0)) = (report_fd, args.first(), args.get(1))
        else {
            eprintln_safe("keyveil: the run reaper was started without its arguments");
            return 127;
        };
        let mut report = std::fs::File::from(report_fd);
        if rustix::process::set_child_subreaper(Some(rustix::process::getpid())).is_err() {
            eprintln_safe("keyveil: cannot become the run's subreaper; nothing was started");
            return 127;
        }
        // Before any thread exists (a user namespace needs a single-threaded process).
        if let Err(e) = super::seal::seal(&sealed) {
            eprintln_safe(&format!("keyveil: {e}"));
            let _ = report.write_all(Report::default().line().as_bytes());
            return 127;
        }
        let killed: Arc<Mutex<HashSet<i32>>> = Arc::default();
        // Handlers before the command exists: a revocation that comes at once is not lost.
        let Some(signals) = Signals::install() else {
            eprintln_safe("keyveil: cannot install the run reaper's signal handlers");
            return 127;
        };
        let mut cmd = std::process::Command::new(program);
        cmd.arg0(argv0).args(args.iter().skip(2));
        crate::harden::prepare_child(&mut cmd, Vec::new());
        let leader = match cmd.spawn() {
            Ok(c) => c.id() as i32,
            Err(e) => {
                eprintln_safe(&format!(
                    "keyveil: cannot start \"{}\": {e}",
                    keyveil_proto::display::visible(&argv0.to_string_lossy())
                ));
                let _ = report.write_all(Report::default().line().as_bytes());
                return 127;
            }
        };
        drop(cmd);
        let k = killed.clone();
        std::thread::spawn(move || signals.serve(k));

        let status = loop {
            match rustix::process::wait(WaitOptions::empty()) {
                Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == leader => {
                    break Some(status);
                }
                // A descendant re-parented to us exited: reaped.
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                // No child at all: cannot happen while the leader is ours.
                Err(_) => break None,
            }
        };
        let left = if no_child_left() {
            0
        } else {
            kill_tree(Signal::KILL, &killed, true)
        };
        let mut r = Report {
            exit: status.map_or(Some(127), |s| s.exit_status()),
            signal: status.and_then(|s| s.terminating_signal()),
            killed: 0,
            left,
        };
        r.killed = killed.lock().map(|k| k.len()).unwrap_or(0) as u32;
        let _ = report.write_all(r.line().as_bytes());
        match (r.exit, r.signal) {
            (_, Some(s)) => 128 + s,
            (Some(c), None) => c,
            (None, None) => 1,
        }
    }

    /// Whether nothing of the run is left, without a pass over `/proc`: reaps the zombies
    /// among our children and answers true only when `waitpid(-1, WNOHANG)` says `ECHILD`.
    ///
    /// Sound because we are the run's subreaper (`PR_SET_CHILD_SUBREAPER`): every descendant
    /// whose parent dies is re-parented to us, so while any process of the run lives, some
    /// process of it is our child (a zombie leader whose other threads still run is not
    /// waitable, so it keeps the answer false). With no child at all, no process is left that
    /// could start another one below us. Any other answer (a live or stopped child, an error)
    /// is false, and the caller walks `/proc` as before.
    fn no_child_left() -> bool {
        loop {
            match rustix::process::wait(WaitOptions::NOHANG) {
                // A zombie reaped: look again.
                Ok(Some(_)) | Err(rustix::io::Errno::INTR) => {}
                Err(rustix::io::Errno::CHILD) => return true,
                Ok(None) | Err(_) => return false,
            }
        }
    }

    /// Writes a line to stderr (the run's stderr pipe: the broker redacts and relays it).
    fn eprintln_safe(msg: &str) {
        let _ = writeln!(std::io::stderr(), "{msg}");
    }

    /// The reaper's signal handlers, served on a thread of their own.
    struct Signals {
        rt: tokio::runtime::Runtime,
        stop: [tokio::signal::unix::Signal; 3],
        now: tokio::signal::unix::Signal,
    }

    impl Signals {
        fn install() -> Option<Signals> {
            use tokio::signal::unix::{SignalKind, signal};
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let (stop, now) = rt
                .block_on(async {
                    Ok::<_, std::io::Error>((
                        [
                            signal(SignalKind::terminate())?,
                            signal(SignalKind::interrupt())?,
                            signal(SignalKind::hangup())?,
                        ],
                        signal(SignalKind::user_defined1())?,
                    ))
                })
                .ok()?;
            Some(Signals { rt, stop, now })
        }

        /// SIGTERM/SIGINT/SIGHUP: SIGTERM to the tree, SIGKILL after the grace period;
        /// SIGUSR1: SIGKILL now. Each kill of the tree runs on a thread of its own.
        fn serve(self, killed: Arc<Mutex<HashSet<i32>>>) {
            let Signals { rt, stop, mut now } = self;
            let [mut term, mut int, mut hup] = stop;
            rt.block_on(async move {
                let mut grace_started = false;
                loop {
                    let kill_now = tokio::select! {
                        _ = term.recv() => false,
                        _ = int.recv() => false,
                        _ = hup.recv() => false,
                        _ = now.recv() => true,
                    };
                    let k = killed.clone();
                    if kill_now {
                        std::thread::spawn(move || kill_tree(Signal::KILL, &k, true));
                    } else if !grace_started {
                        grace_started = true;
                        std::thread::spawn(move || {
                            kill_tree(Signal::TERM, &k, false);
                            std::thread::sleep(super::KILL_GRACE);
                            kill_tree(Signal::KILL, &k, true);
                        });
                    }
                }
            });
        }
    }

    /// Signals every descendant of this process with `sig`; with `until_gone`, repeats (and
    /// reaps) until none is left or [`KILL_BOUND`] has passed. Returns how many descendants
    /// are still alive at the end. Pids signalled are added to `killed` (and removed again if
    /// they are found alive at the end).
    pub(crate) fn kill_tree(sig: Signal, killed: &Mutex<HashSet<i32>>, until_gone: bool) -> u32 {
        let me = std::process::id() as i32;
        let deadline = Instant::now() + KILL_BOUND;
        loop {
            let tree = super::tree::descendants(me);
            if tree.is_empty() {
                return 0;
            }
            if until_gone && Instant::now() > deadline {
                if let Ok(mut k) = killed.lock() {
                    for pid in &tree {
                        k.remove(pid);
                    }
                }
                return u32::try_from(tree.len()).unwrap_or(u32::MAX);
            }
            let mut members: HashSet<i32> = tree.iter().copied().collect();
            members.insert(me);
            for &pid in &tree {
                let Some(p) = Pid::from_raw(pid) else {
                    continue;
                };
                // Pin the process, then check it is still below us: a pid reused meanwhile by
                // an unrelated process is never signalled.
                let Ok(fd) = rustix::process::pidfd_open(p, PidfdFlags::empty()) else {
                    continue;
                };
                if super::tree::stat(pid).is_some_and(|st| members.contains(&st.ppid))
                    && rustix::process::pidfd_send_signal(&fd, sig).is_ok()
                    && let Ok(mut k) = killed.lock()
                {
                    k.insert(pid);
                }
            }
            if !until_gone {
                return 0;
            }
            // SIGKILL takes effect asynchronously: give it a moment before the next pass.
            // (Our own children that died stay zombies, which the pass does not count; a
            // zombie leader whose other threads still run is counted, see `tree`.)
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn report_lines_round_trip_and_a_cut_line_is_refused() {
        let r = Report {
            exit: Some(3),
            signal: None,
            killed: 52,
            left: 0,
        };
        assert_eq!(r.line(), "exit=3 killed=52 left=0\n");
        assert_eq!(Report::parse(&r.line()), Some(r));
        let s = Report {
            exit: None,
            signal: Some(15),
            killed: 1,
            left: 2,
        };
        assert_eq!(Report::parse(&s.line()), Some(s));
        assert_eq!(Report::parse("exit=3 killed=5"), None);
        assert_eq!(Report::parse(""), None);
        assert_eq!(Report::parse("killed=1 left=0\n"), None);
        assert_eq!(Report::parse("exit=x killed=1 left=0\n"), None);
    }
}
