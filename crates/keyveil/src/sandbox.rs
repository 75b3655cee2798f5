//! `keyveil agent -- CMD`: runs an agent host (Codex, Claude Code, a shell) in a sandbox that
//! cannot see the processes the broker starts, nor the vault file.
//!
//! Outside the sandbox, a process of the same user can read `/proc/<pid>/environ` of a granted
//! child while it runs (the honest limit of `docs/threat-model.md`). Inside, the agent has:
//!
//! - its own **PID namespace** and a fresh `/proc`: the broker and its children do not exist
//!   there, so there is no `environ`, `mem` or `ptrace` target to reach (nor a pid to signal);
//! - its own **mount namespace**, where `$KEYVEIL_HOME` is an empty read-only tmpfs holding only
//!   `run/` (the broker's socket directory, bound read-only: connecting to a socket needs no
//!   write access to its file system, while binding a rogue broker's socket there does) and
//!   `audit.jsonl` (bound read-only). `vault.kv`, `broker.log` and the rest do not exist. The
//!   `keyveil` executable itself is bound read-only over itself, so the agent cannot trojan the
//!   binary the human runs;
//! - its own **user namespaces**, nested twice: the mounts are made in the first (where the
//!   set-up step is root), the agent runs in a second one created after them. Mounts inherited
//!   from a more privileged user namespace are *locked*, so even a root-in-namespace agent cannot
//!   unmount the fresh `/proc` or the tmpfs to uncover what lies beneath.
//!
//! How it is built, in three steps of the same executable:
//!
//! 1. `keyveil agent -- CMD` (outside): makes sure the broker runs (a broker auto-started from
//!    inside could not bind its socket anyway), checks that user namespaces work, then `exec`s
//!    util-linux `unshare --user --map-root-user --pid --fork --kill-child --mount --mount-proc`
//!    on step 2.
//! 2. `keyveil agent --stage mounts -- CMD` (PID 1 of the new PID namespace, root of the first
//!    user namespace): builds the tmpfs view of `$KEYVEIL_HOME`, then starts step 3 and reaps
//!    every process orphaned into the namespace until step 3 exits; its exit code is the
//!    agent's. When it ends, the kernel kills everything left in the namespace.
//! 3. `keyveil agent --stage drop -- CMD`: enters a second user namespace (mapping the user's own
//!    uid and gid back, so files keep their owner) and mount namespace, then `exec`s CMD.
//!
//! Linux only: elsewhere `keyveil agent` says it is unavailable.

use anyhow::Result;

/// The internal steps of `keyveil agent` inside the namespaces (hidden from `--help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Stage {
    /// PID 1 of the sandbox: mounts, then reaps.
    Mounts,
    /// Enter the agent's own user and mount namespaces, then exec the agent.
    Drop,
}

/// `keyveil agent [--stage S] -- CMD`: returns the exit code (or never returns: `exec`).
pub(crate) fn main(stage: Option<Stage>, command: Vec<String>) -> Result<i32> {
    crate::logging::init_cli();
    imp::main(stage, command)
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Stage;
    use anyhow::{Result, bail};

    pub fn main(_stage: Option<Stage>, _command: Vec<String>) -> Result<i32> {
        bail!(
            "`keyveil agent` needs Linux namespaces and is not available on this system\nhint: run the agent host directly; granted processes stay isolated by the broker, but a same-user process can read their environment while they run (see docs/hardening.md)"
        )
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::OsString;
    use std::os::unix::process::CommandExt;
    use std::path::{Path, PathBuf};

    use anyhow::{Context, Result, anyhow, bail};
    use rustix::fs::{Mode, OFlags, StatVfsMountFlags};
    use rustix::mount::MountFlags;

    use super::Stage;
    use crate::paths::Paths;

    pub(super) fn main(stage: Option<Stage>, command: Vec<String>) -> Result<i32> {
        if command.is_empty() {
            bail!("usage: keyveil agent -- CMD [ARGS..]");
        }
        match stage {
            None => outside(command),
            Some(Stage::Mounts) => mounts_and_reap(command),
            Some(Stage::Drop) => drop_and_exec(command),
        }
    }

    /// Step 1: preflight, broker, then exec `unshare` on step 2.
    fn outside(command: Vec<String>) -> Result<i32> {
        let paths = Paths::resolve()?;
        let unshare = find_in_path("unshare").ok_or_else(|| {
            anyhow!(
                "cannot find `unshare` in PATH\nhint: install util-linux (Debian/Ubuntu: `apt install util-linux`)"
            )
        })?;
        userns_available(&unshare)?;
        // The broker must run outside the sandbox: start it now if it is not running.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(async {
                let reply = crate::client::call(&paths, &keyveil_proto::Request::Status).await?;
                match reply {
                    keyveil_proto::Reply::Ok { .. } => Ok(()),
                    _ => Err(anyhow!("the broker did not answer `status`")),
                }
            })?;
        let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
        let err = std::process::Command::new(unshare)
            .args([
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--mount-proc",
                "--propagation",
                "private",
                "--",
            ])
            .arg(exe)
            .args(["agent", "--stage", "mounts", "--"])
            .args(&command)
            .env("KEYVEIL_HOME", &paths.home)
            .exec();
        Err(anyhow!(err)).context("cannot run `unshare`")
    }

    /// Checks the kernel switches and tries the namespaces once, so a refusal comes with a hint.
    fn userns_available(unshare: &Path) -> Result<()> {
        const HINT: &str = "hint: `keyveil agent` needs unprivileged user namespaces";
        if read_trim("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
            bail!(
                "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)\n{HINT}: `sudo sysctl -w kernel.unprivileged_userns_clone=1`"
            );
        }
        if read_trim("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
            bail!(
                "user namespaces are disabled (user.max_user_namespaces = 0)\n{HINT}: `sudo sysctl -w user.max_user_namespaces=15000`"
            );
        }
        let probe = std::process::Command::new(unshare)
            .args([
                "--user",
                "--map-root-user",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "true",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .context("cannot run `unshare`")?;
        if !probe.status.success() {
            let why = String::from_utf8_lossy(&probe.stderr).trim().to_owned();
            let apparmor = read_trim("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
                .as_deref()
                == Some("1");
            let extra = if apparmor {
                " (AppArmor restricts them here: kernel.apparmor_restrict_unprivileged_userns = 1; allow `unshare` with an AppArmor profile, or set it to 0)"
            } else {
                " (in a container, the runtime's seccomp profile may block them)"
            };
            bail!("cannot create user, PID and mount namespaces: {why}\n{HINT}{extra}");
        }
        Ok(())
    }

    /// Step 2, PID 1 of the sandbox, root of the first user namespace.
    fn mounts_and_reap(command: Vec<String>) -> Result<i32> {
        if rustix::process::getpid().as_raw_nonzero().get() != 1 {
            bail!("`keyveil agent --stage mounts` runs only inside the sandbox it builds");
        }
        let (uid, gid) = (
            outer_id("/proc/self/uid_map")?,
            outer_id("/proc/self/gid_map")?,
        );
        let paths = Paths::resolve()?;
        let home = std::fs::canonicalize(&paths.home)
            .with_context(|| format!("cannot resolve {}", paths.home.display()))?;
        hide_home(&home)?;
        pin_executable()?;
        // Nothing secret lives here, but nothing in the sandbox needs to trace it either.
        let _ =
            rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable);

        let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
        let child = std::process::Command::new(exe)
            .args(["agent", "--stage", "drop", "--"])
            .args(&command)
            .env("KEYVEIL_AGENT_IDS", format!("{uid}:{gid}"))
            .spawn()
            .context("cannot start the agent")?;
        let agent = child.id() as i32;
        // PID 1 inherits every orphan of the namespace: reap them all, return with the agent.
        loop {
            match rustix::process::wait(rustix::process::WaitOptions::empty()) {
                Ok(Some((pid, status))) if pid.as_raw_nonzero().get() == agent => {
                    return Ok(status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|s| 128 + s))
                        .unwrap_or(1));
                }
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e).context("waiting for the agent"),
            }
        }
    }

    /// Replaces `home` with an empty read-only tmpfs holding only `run/` and `audit.jsonl`,
    /// both bound read-only from the real home.
    fn hide_home(home: &Path) -> Result<()> {
        let run = home.join("run");
        let audit = home.join("audit.jsonl");
        // Keep handles on the real directory and file: once the tmpfs covers `home`, their paths
        // lead into the tmpfs, while `/proc/self/fd/N` still leads to the originals.
        let run_fd = rustix::fs::open(
            &run,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("cannot open {}", run.display()))?;
        let run_flags = mount_flags_of(&run)?;
        let audit_fd = match rustix::fs::open(&audit, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        {
            Ok(fd) => Some((fd, mount_flags_of(&audit)?)),
            Err(rustix::io::Errno::NOENT) => None,
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", audit.display())),
        };

        let tmpfs_flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        rustix::mount::mount(
            "keyveil-agent",
            home,
            "tmpfs",
            tmpfs_flags,
            Some(c"mode=0700,size=64k"),
        )
        .with_context(|| format!("cannot mount a tmpfs over {}", home.display()))?;
        std::fs::create_dir(&run).context("cannot create run/ in the sandbox")?;
        bind_read_only(&run_fd, &run, run_flags)?;
        if let Some((fd, flags)) = audit_fd {
            std::fs::write(&audit, b"").context("cannot create audit.jsonl in the sandbox")?;
            bind_read_only(&fd, &audit, flags)?;
        }
        rustix::mount::mount_remount(
            home,
            MountFlags::BIND | MountFlags::RDONLY | tmpfs_flags,
            "",
        )
        .with_context(|| format!("cannot make {} read-only", home.display()))?;
        Ok(())
    }

    /// Binds keyveil's own executable read-only over itself: inside the sandbox the agent cannot
    /// replace or modify the `keyveil` the human runs (a write, or a rename onto a mount point,
    /// fails). It can still put another `keyveil` earlier in a `PATH` it can write.
    fn pin_executable() -> Result<()> {
        let exe = std::env::current_exe().context("cannot find keyveil's own executable")?;
        let fd = rustix::fs::open(&exe, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .with_context(|| format!("cannot open {}", exe.display()))?;
        bind_read_only(&fd, &exe, mount_flags_of(&exe)?)
    }

    fn bind_read_only(src: &rustix::fd::OwnedFd, target: &Path, keep: MountFlags) -> Result<()> {
        use rustix::fd::AsRawFd;
        let src = format!("/proc/self/fd/{}", src.as_raw_fd());
        rustix::mount::mount_bind(src.as_str(), target)
            .with_context(|| format!("cannot bind {} into the sandbox", target.display()))?;
        // A read-only remount must repeat the flags the kernel locked on the original mount
        // (nosuid, nodev, noexec, atime), or it is refused.
        rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY | keep, "")
            .with_context(|| format!("cannot make {} read-only", target.display()))
    }

    /// The mount flags of the file system holding `p`, as `mount(2)` flags.
    fn mount_flags_of(p: &Path) -> Result<MountFlags> {
        let f = rustix::fs::statvfs(p)
            .with_context(|| format!("cannot stat the file system of {}", p.display()))?
            .f_flag;
        let mut m = MountFlags::empty();
        for (s, flag) in [
            (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
            (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
            (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
            (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
        ] {
            if f.contains(s) {
                m |= flag;
            }
        }
        Ok(m)
    }

    /// Step 3: a second user namespace mapping the user's ids back, a second mount namespace
    /// (locking every mount of step 2), then the agent.
    fn drop_and_exec(command: Vec<String>) -> Result<i32> {
        let ids = std::env::var("KEYVEIL_AGENT_IDS").context("KEYVEIL_AGENT_IDS is not set")?;
        let (uid, gid) = ids
            .split_once(':')
            .and_then(|(u, g)| Some((u.parse::<u32>().ok()?, g.parse::<u32>().ok()?)))
            .ok_or_else(|| anyhow!("malformed KEYVEIL_AGENT_IDS"))?;
        crate::harden::enter_user_and_mount_namespaces()
            .context("cannot enter the agent's user and mount namespaces")?;
        // Unprivileged self-mapping: our uid and gid in the parent namespace are 0.
        std::fs::write("/proc/self/setgroups", "deny").context("cannot write setgroups")?;
        std::fs::write("/proc/self/uid_map", format!("{uid} 0 1"))
            .context("cannot write uid_map")?;
        std::fs::write("/proc/self/gid_map", format!("{gid} 0 1"))
            .context("cannot write gid_map")?;
        let mut args = command.into_iter();
        let program = args.next().unwrap_or_default();
        let err = std::process::Command::new(&program)
            .args(args)
            .env_remove("KEYVEIL_AGENT_IDS")
            .exec();
        Err(anyhow!(err)).with_context(|| format!("cannot run {program}"))
    }

    /// The id outside the first user namespace that maps to 0 inside (`0 <outer> 1`).
    fn outer_id(map: &str) -> Result<u32> {
        let text = std::fs::read_to_string(map).with_context(|| format!("cannot read {map}"))?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        match fields.as_slice() {
            ["0", outer, "1"] => outer.parse().with_context(|| format!("malformed {map}")),
            _ => bail!("`keyveil agent --stage mounts` runs only inside the sandbox it builds"),
        }
    }

    fn read_trim(p: &str) -> Option<String> {
        std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
    }

    fn find_in_path(name: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }
}
