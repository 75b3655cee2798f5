//! Process hardening: the one module of keyveil allowed `unsafe` code.
//!
//! What it does and why:
//! - [`harden_broker`]: the broker holds the decrypted data key and values. It makes itself
//!   non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`: a same-user process can then neither ptrace it
//!   nor read `/proc/<pid>/mem` or `environ`) and sets `RLIMIT_CORE` to 0 (no core file with
//!   secrets in it). Both are safe calls through `rustix`.
//! - [`die_with_broker`]: a granted child gets `PR_SET_PDEATHSIG(SIGKILL)` set between `fork`
//!   and `exec`, so no child keeps running with secrets if the broker dies (even by `kill -9`).
//!   Registering code to run between `fork` and `exec` is `unsafe` in Rust
//!   (`CommandExt::pre_exec`): the closure may only call async-signal-safe functions. Ours calls
//!   `prctl` and `getppid` (raw syscalls via rustix, no allocation, no locks).
//!
//! Linux only; on other systems these are no-ops with a log line (macOS support is planned:
//! `PT_DENY_ATTACH` and `kqueue` parent-death watching).
#![allow(unsafe_code)]

/// Makes the current process non-dumpable and disables core dumps.
///
/// Errors are returned, not ignored: the broker refuses to start without them on Linux.
#[cfg(target_os = "linux")]
pub fn harden_broker() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    Ok(())
}

/// Non-Linux: nothing to do yet.
#[cfg(not(target_os = "linux"))]
pub fn harden_broker() -> std::io::Result<()> {
    tracing::warn!("process hardening (non-dumpable broker) is not implemented on this OS");
    Ok(())
}

/// Arranges for a spawned child to be killed with SIGKILL when the broker (its parent) dies.
#[cfg(target_os = "linux")]
pub fn die_with_broker(cmd: &mut tokio::process::Command) {
    let broker_pid = std::process::id();
    // SAFETY: the closure runs in the forked child before exec; it only makes two raw system
    // calls (prctl, getppid) through rustix, which neither allocate nor take locks, so it is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)?;
            // The broker may have died between fork and prctl: then we were reparented already.
            let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
            if parent != Some(broker_pid as i32) {
                return Err(std::io::Error::other(
                    "broker exited before the child started",
                ));
            }
            Ok(())
        });
    }
}

/// Non-Linux: not available yet.
#[cfg(not(target_os = "linux"))]
pub fn die_with_broker(_cmd: &mut tokio::process::Command) {}

/// Puts a spawned broker in its own process group so a terminal's Ctrl-C does not reach it.
pub fn detach(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}
