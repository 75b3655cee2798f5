//! Process hardening: the one module of keyveil allowed `unsafe` code.
//!
//! What it does and why:
//! - [`harden_broker`]: the broker holds the decrypted data key and values. It makes itself
//!   non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`: a same-user process can then neither ptrace it
//!   nor read `/proc/<pid>/mem` or `environ`) and sets `RLIMIT_CORE` to 0 (no core file with
//!   secrets in it). Both are safe calls through `rustix`. It then locks its memory
//!   (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`) so the data key and decrypted values
//!   are never written to swap, when that is safe: only with an unlimited `RLIMIT_MEMLOCK` or
//!   `CAP_IPC_LOCK`. Under a finite limit (8 MiB on most desktops) `MCL_FUTURE` would make later
//!   allocations fail once the limit is reached, so the broker logs a warning and runs unlocked.
//! - [`prepare_child`]: a run's reaper (a child of the broker, `reap.rs`) and the granted
//!   command (a child of the reaper) get `PR_SET_PDEATHSIG(SIGKILL)` set between `fork` and
//!   `exec`, so neither keeps running with secrets if its parent dies (even by `kill -9`).
//!   Registering code to run between `fork` and `exec` is `unsafe` in Rust
//!   (`CommandExt::pre_exec`): the closure may only call async-signal-safe functions. Ours calls
//!   `prctl`, `getppid` and `fcntl` (raw syscalls via rustix, no allocation, no locks).
//! - [`adopt_inherited_fd`]: the reaper takes ownership of the report pipe it inherited
//!   (`OwnedFd::from_raw_fd` is `unsafe`).
//!
//! - [`limit_allocator_arenas`] and [`release_free_memory`]: glibc's allocator keeps freed
//!   memory in per-thread arenas (up to 8 per core) and rarely gives it back, so a broker that
//!   served a burst of runs stayed at many times its idle size. The broker caps the arenas at two
//!   (`mallopt(M_ARENA_MAX, 2)`, before its runtime starts any thread) and, a few seconds after
//!   a burst of work, asks glibc to return free pages to the kernel (`malloc_trim(0)`). Both are
//!   glibc functions called through FFI (`unsafe`); they take plain integers and touch no
//!   memory of ours. Other C libraries: no-ops.
//!
//! Linux only; on other systems these are no-ops with a log line (macOS support is planned:
//! `PT_DENY_ATTACH` and `kqueue` parent-death watching).
#![allow(unsafe_code)]

/// Makes the current process non-dumpable and disables core dumps.
///
/// Errors are returned, not ignored: the broker refuses to start without them on Linux.
#[cfg(target_os = "linux")]
pub(crate) fn harden_broker() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    lock_memory();
    Ok(())
}

/// Locks every current and future page of the broker in RAM (keeps the key out of swap), when
/// the memory-lock limit allows it; otherwise logs why not. Never fails the broker's start.
#[cfg(target_os = "linux")]
fn lock_memory() {
    use rustix::io::Errno;
    use rustix::mm::{MlockAllFlags, mlockall};
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Memlock).current;
    let cap_ipc_lock = rustix::thread::capabilities(None)
        .map(|c| {
            c.effective
                .contains(rustix::thread::CapabilitySet::IPC_LOCK)
        })
        .unwrap_or(false);
    if let Some(bytes) = limit
        && !cap_ipc_lock
    {
        tracing::warn!(
            limit_kib = bytes / 1024,
            "broker memory is not locked (values could reach swap): RLIMIT_MEMLOCK is finite, and \
             locking all future memory under it would make later allocations fail; raise it \
             (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`) to lock the broker's memory"
        );
        return;
    }
    // MCL_ONFAULT (Linux 4.4+) locks pages as they are touched instead of populating every
    // mapping (thread stacks, allocator arenas) at once; older kernels answer EINVAL.
    let all = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
    let locked = match mlockall(all | MlockAllFlags::ONFAULT) {
        Err(Errno::INVAL) => mlockall(all),
        other => other,
    };
    match locked {
        Ok(()) => tracing::info!("broker memory locked (mlockall)"),
        Err(e) => tracing::warn!(
            error = %e,
            "broker memory is not locked (values could reach swap): mlockall failed"
        ),
    }
}

/// Makes the human's CLI non-dumpable and core-less before it reads a factor: it then holds the
/// passphrase and derives the vault's factor key, and a same-user process must not ptrace it or
/// read its memory meanwhile (where Yama's `ptrace_scope` is 0, any same-user process could otherwise
/// attach). A failure is ignored: the CLI still works, as it did before.
#[cfg(target_os = "linux")]
pub(crate) fn harden_cli() {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let _ = set_dumpable_behavior(DumpableBehavior::NotDumpable);
    let _ = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    );
}

/// Non-Linux: nothing to do yet.
#[cfg(not(target_os = "linux"))]
pub fn harden_cli() {}

/// Non-Linux: nothing to do yet.
#[cfg(not(target_os = "linux"))]
pub fn harden_broker() -> std::io::Result<()> {
    tracing::warn!("process hardening (non-dumpable broker) is not implemented on this OS");
    Ok(())
}

/// Prepares a child of the broker or of a run's reaper: killed with SIGKILL when its parent
/// dies, and each descriptor of `keep_fds` (the verified executable, the reaper's report pipe)
/// stays open across `exec`, so the child can execute `/proc/self/fd/N` or write to it.
#[cfg(target_os = "linux")]
pub(crate) fn prepare_child(cmd: &mut std::process::Command, keep_fds: Vec<i32>) {
    use std::os::unix::process::CommandExt;
    let parent_pid = std::process::id();
    // SAFETY: the closure runs in the forked child before exec; it only makes raw system calls
    // (prctl, getppid, fcntl) through rustix, which neither allocate nor take locks, so it is
    // async-signal-safe (iterating the moved `Vec` reads memory, it does not allocate). Each
    // descriptor of `keep_fds` is one the parent holds open until the spawn returns, so
    // borrowing it in the child is valid.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)?;
            // The parent may have died between fork and prctl: then we were reparented already.
            let parent = rustix::process::getppid().map(|p| p.as_raw_nonzero().get());
            if parent != Some(parent_pid as i32) {
                return Err(std::io::Error::other(
                    "the parent exited before the child started",
                ));
            }
            for &fd in &keep_fds {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
}

/// Non-Linux: not available yet.
#[cfg(not(target_os = "linux"))]
pub fn prepare_child(_cmd: &mut std::process::Command, _keep_fds: Vec<i32>) {}

/// Takes ownership of a descriptor this process inherited from its parent and was told about
/// on its command line (the run reaper's report pipe, see `reap.rs`), and marks it
/// close-on-exec so it reaches no further program. `None` when `fd` is not an open descriptor
/// or is one of the standard streams.
#[cfg(target_os = "linux")]
pub(crate) fn adopt_inherited_fd(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd <= 2 {
        return None;
    }
    // SAFETY: borrowing only to ask the kernel whether `fd` is open; an invalid number makes
    // `fcntl` fail with EBADF, it touches no memory.
    let open = rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(fd) }).is_ok();
    if !open {
        return None;
    }
    // SAFETY: `fd` is open (checked above) and no other part of this process knows about it:
    // the reaper was started with it left open for exactly this call, which is made once, at
    // start, before any other descriptor is created; from here the `OwnedFd` is its only owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC).ok()?;
    Some(owned)
}

/// Puts a spawned broker in its own process group so a terminal's Ctrl-C does not reach it.
pub(crate) fn detach(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

/// Moves the calling process into a new user namespace and a new mount namespace (the last
/// step of `keyveil agent`'s sandbox, see `sandbox.rs`). The kernel refuses a new user
/// namespace to a multi-threaded process, so call it before any thread exists.
#[cfg(target_os = "linux")]
pub(crate) fn enter_user_and_mount_namespaces() -> std::io::Result<()> {
    use rustix::thread::{UnshareFlags, unshare_unsafe};
    // SAFETY: `unshare` is unsafe only because `UnshareFlags::FILES` would give this thread a
    // descriptor table of its own while other threads keep using descriptors it no longer sees.
    // We pass NEWUSER and NEWNS only, which change no state the Rust runtime relies on.
    unsafe { unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS) }.map_err(Into::into)
}

/// glibc's `mallopt` parameter for the maximum number of arenas (`malloc.h`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const M_ARENA_MAX: std::ffi::c_int = -8;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
unsafe extern "C" {
    fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    fn malloc_trim(pad: usize) -> std::ffi::c_int;
}

/// Caps glibc's allocator at two arenas, so memory freed by one thread is reused by the others
/// instead of each worker thread keeping its own high-water mark. Call before any thread is
/// started (the broker's runtime). Returns whether glibc accepted it; a no-op elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn limit_allocator_arenas() -> bool {
    // SAFETY: `mallopt` only changes an allocator tunable; it takes two integers and reads or
    // writes no memory we own. Called before other threads exist.
    unsafe { mallopt(M_ARENA_MAX, 2) == 1 }
}

/// Non-glibc: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn limit_allocator_arenas() -> bool {
    false
}

/// Returns the allocator's free memory to the kernel (glibc `malloc_trim(0)`: the top of each
/// heap and whole free pages inside them). Takes a few milliseconds on a large heap; call it off
/// the broker's lock. Returns whether any memory was released; `false` elsewhere.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn release_free_memory() -> bool {
    // SAFETY: `malloc_trim` walks the allocator's own free lists under the allocator's locks; it
    // takes an integer and touches no memory we own.
    unsafe { malloc_trim(0) == 1 }
}

/// Non-glibc: nothing to release.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() -> bool {
    false
}
