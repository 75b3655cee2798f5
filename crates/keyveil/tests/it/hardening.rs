//! Same-user memory attacks on the broker: reading `/proc/<broker>/mem`, `environ` and `maps`,
//! `ptrace`-attaching (Python ctypes and `gdb -p`), and core dumps.
//!
//! The attacker must be an *ordinary* process of the broker's user. These tests often run as
//! root, and root holds `CAP_SYS_PTRACE`, which bypasses `PR_SET_DUMPABLE` entirely (see
//! [`root_still_reads_the_broker`]). So when the test runs as root, the broker *and* the attacker
//! run as `nobody` (uid 65534) in a home under `/tmp`: same uid, no capabilities, which is the
//! agent's situation. Each attack is first run against a control process of the same user
//! (a plain `sleep` with a marker in its environment) and must succeed there, so a failure
//! against the broker shows the broker's hardening, not a broken attack.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// The unprivileged uid/gid used when the tests run as root (`nobody`/`nogroup` on Debian).
const NOBODY: u32 = 65534;

/// Run by the attacker: tries each read and a ptrace attach on `pid`, reports JSON.
const ATTACK_PY: &str = r#"
import ctypes, json, os, sys
pid, marker = int(sys.argv[1]), sys.argv[2].encode()
out = {}
def attempt(name, f):
    try:
        out[name] = {"ok": True, "found": bool(f())}
    except OSError as e:
        out[name] = {"ok": False, "errno": e.errno, "error": os.strerror(e.errno)}
def environ():
    with open(f"/proc/{pid}/environ", "rb") as f:
        return marker in f.read()
def maps():
    with open(f"/proc/{pid}/maps") as f:
        return len(f.read()) > 0
def mem():
    # Opening is where a non-dumpable target is refused; then scan every readable mapping.
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        with open(f"/proc/{pid}/maps") as f:
            regions = f.read().splitlines()
        for line in regions:
            addr, perms = line.split()[:2]
            if "r" not in perms:
                continue
            lo, hi = (int(x, 16) for x in addr.split("-"))
            if hi - lo > (256 << 20):
                continue
            try:
                data = os.pread(fd, hi - lo, lo)
            except OSError:
                continue
            if marker in data:
                return True
        return False
    finally:
        os.close(fd)
def ptrace():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    PTRACE_ATTACH, PTRACE_DETACH, WALL = 16, 17, 0x40000000
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    os.waitpid(pid, WALL)
    libc.ptrace(PTRACE_DETACH, pid, None, None)
    return True
attempt("environ", environ)
attempt("maps", maps)
attempt("mem", mem)
attempt("ptrace", ptrace)
print(json.dumps(out))
"#;

/// A keyveil home whose broker and attacker run as an unprivileged user: `nobody` when the
/// tests run as root, else the current user.
struct Unprivileged {
    dir: tempfile::TempDir,
    bin: PathBuf,
    home: PathBuf,
    ids: Option<(u32, u32)>,
}

impl Unprivileged {
    fn new() -> Unprivileged {
        let dir = tempfile::Builder::new()
            .prefix("kvh")
            .tempdir_in("/tmp")
            .unwrap();
        let root = rustix::process::getuid().is_root();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let bin = if root {
            // The build directory is under /root (0700): give nobody a copy it can execute.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let b = dir.path().join("keyveil");
            std::fs::copy(bin(), &b).unwrap();
            std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
            b
        } else {
            bin()
        };
        std::fs::write(dir.path().join("attack.py"), ATTACK_PY).unwrap();
        std::fs::set_permissions(
            dir.path().join("attack.py"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        Unprivileged {
            dir,
            bin,
            home,
            ids: root.then_some((NOBODY, NOBODY)),
        }
    }

    /// `program args` as the unprivileged user, with a plain environment.
    fn cmd(&self, program: &Path, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        c.args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("HOME", &self.home)
            .env("KEYVEIL_HOME", &self.home)
            .env("LANG", "C.UTF-8")
            .current_dir(&self.home)
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            // std drops supplementary groups when a root parent sets a uid.
            c.uid(uid).gid(gid);
        }
        c
    }

    fn keyveil(&self, args: &[&str], stdin: &str) -> Output {
        let mut c = self.cmd(&self.bin, args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "keyveil {args:?} failed: {}",
            text(&o.stderr)
        );
        o
    }

    fn broker_pid(&self) -> u32 {
        let f = self.home.join("run/broker.pid");
        let t0 = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&f)
                && let Ok(p) = s.trim().parse()
            {
                return p;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no broker.pid");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the attack script against `pid` as the unprivileged user.
    fn attack(&self, pid: u32, marker: &str) -> Value {
        let py = python();
        let script = self.dir.path().join("attack.py");
        let o = self
            .cmd(&py, &[script.to_str().unwrap(), &pid.to_string(), marker])
            .output()
            .unwrap();
        assert!(o.status.success(), "attack script: {}", text(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// `gdb -p pid` as the unprivileged user; true when gdb attached.
    fn gdb_attaches(&self, pid: u32) -> Option<bool> {
        let gdb = which("gdb")?;
        let o = self
            .cmd(
                &gdb,
                &["-nx", "-batch", "-p", &pid.to_string(), "-ex", "info proc"],
            )
            .output()
            .unwrap();
        let all = format!("{}{}", text(&o.stdout), text(&o.stderr));
        Some(!all.contains("ptrace: Operation not permitted") && all.contains("process "))
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.cmd(&self.bin, &["daemon", "stop"]).output();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
}

/// A Python the unprivileged user can run (not a shim under /root).
fn python() -> PathBuf {
    which("python3").expect("python3 in /usr/bin")
}

/// A value unique to this test process.
fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("kv{tag}{}x{nanos}", std::process::id())
}

fn refused(report: &Value, what: &str) {
    assert_eq!(
        report[what]["ok"],
        Value::Bool(false),
        "{what} of the broker succeeded: {report}"
    );
    // EACCES (13) or EPERM (1): refused by the kernel, not "no such file".
    let errno = report[what]["errno"].as_i64().unwrap();
    assert!(
        errno == 13 || errno == 1,
        "{what}: unexpected errno {report}"
    );
}

fn proc_field(pid: u32, file: &str, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_same_user_process_cannot_read_or_trace_the_broker() {
    let u = Unprivileged::new();
    let value = marker("secret");
    let pass = format!("{PASS}\n");
    u.keyveil(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        &pass,
    );
    u.keyveil(&["env", "create", "demo"], "");
    u.keyveil(&["set", "demo", "API_TOKEN", "--from-stdin"], &value);
    let broker = u.broker_pid();

    // Control: the same attacks on an ordinary process of the same user all succeed, and find
    // the marker in its environment and its memory.
    let ctl_marker = marker("control");
    let mut ctl = u.cmd(Path::new("/bin/sleep"), &["60"]);
    ctl.env("KV_CONTROL", &ctl_marker);
    let mut ctl = ctl.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let r = u.attack(ctl.id(), &ctl_marker);
    for what in ["environ", "maps", "mem", "ptrace"] {
        assert_eq!(r[what]["ok"], Value::Bool(true), "control {what}: {r}");
    }
    assert_eq!(r["environ"]["found"], Value::Bool(true), "{r}");
    assert_eq!(r["mem"]["found"], Value::Bool(true), "{r}");
    let gdb_ctl = u.gdb_attaches(ctl.id());
    let _ = ctl.kill();
    let _ = ctl.wait();
    if let Some(attached) = gdb_ctl {
        assert!(attached, "gdb could not attach to the control process");
    }

    // The broker: every attempt is refused by the kernel.
    let r = u.attack(broker, &value);
    for what in ["environ", "maps", "mem", "ptrace"] {
        refused(&r, what);
    }
    if let Some(attached) = u.gdb_attaches(broker) {
        assert!(!attached, "gdb attached to the broker");
    }
    // Non-dumpable makes the kernel hand the broker's /proc files to root.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(format!("/proc/{broker}/environ"))
        .unwrap()
        .uid();
    assert_eq!(owner, 0, "/proc/{broker}/environ should be root-owned");

    // No core dumps: RLIMIT_CORE is 0, soft and hard (the broker cannot raise it again).
    let core = proc_field(broker, "limits", "Max core file size");
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], &["0", "0"], "{core}");

    // Memory locking: done when RLIMIT_MEMLOCK is unlimited, otherwise a logged warning.
    let memlock = proc_field(broker, "limits", "Max locked memory");
    if memlock.contains("unlimited") {
        let vmlck = proc_field(broker, "status", "VmLck:");
        assert_ne!(vmlck.split_whitespace().nth(1), Some("0"), "{vmlck}");
    } else {
        let log = std::fs::read_to_string(u.home.join("broker.log")).unwrap();
        assert!(log.contains("broker memory is not locked"), "{log}");
    }
    // And the value never reached the broker's log.
    let log = std::fs::read_to_string(u.home.join("broker.log")).unwrap();
    assert!(!log.contains(&value));
}

/// The honest limit: root (`CAP_SYS_PTRACE`) reads an unlocked broker's memory, value included.
/// Checked so the documentation's claim stays true; skipped when not root.
#[test]
fn root_still_reads_the_broker() {
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    if !rustix::process::getuid().is_root() || eff & CAP_SYS_PTRACE == 0 {
        return;
    }
    let h = Home::new();
    let value = marker("rootview");
    // Sent in plain (no factor), as this test was written against.
    h.set_unverified("demo", "API_TOKEN", &value);
    let pid: u32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let o = Command::new(python())
        .arg("-c")
        .arg(ATTACK_PY)
        .arg(pid.to_string())
        .arg(&value)
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["mem"]["ok"], Value::Bool(true), "{r}");
    // Root reads the memory; whether the plain value is still in freed memory when it looks
    // depends on the allocator (freed memory is trimmed after bursts), so either route counts:
    // `/proc/PID/mem` or ptrace.
    assert!(
        r["mem"]["found"] == Value::Bool(true) || r["ptrace"]["found"] == Value::Bool(true),
        "root did not find the value in the broker's memory: {r}"
    );
    // Root's broker has CAP_IPC_LOCK: its memory is locked (never swapped).
    let vmlck = proc_field(pid, "status", "VmLck:");
    assert_ne!(vmlck.split_whitespace().nth(1), Some("0"), "{vmlck}");
}

/// Values are sealed in the broker's memory (`keyveil_vault::SealedValue`): a broker that has
/// just unlocked the vault, and run nothing, holds no value in plain text. Root (which can read
/// any memory, see `root_still_reads_the_broker`) scans it: the description of an environment,
/// a plain string of the same vault, is found (so the scan reads the broker's heap), the value and
/// the TOTP seed are not. Runs open values for their spawn and redactor, so after a run this no longer holds.
#[test]
fn after_unlock_a_value_is_sealed_in_the_brokers_memory() {
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_PTRACE: u64 = 1 << 19;
    if !rustix::process::getuid().is_root() || eff & CAP_SYS_PTRACE == 0 {
        return;
    }
    let h = Home::new();
    let value = marker("sealedvalue");
    h.set("demo", "API_TOKEN", &value);
    let described = marker("plaindescription");
    h.ok(&["env", "create", "other", "--description", &described]);
    // The TOTP seed is sealed the same way.
    let seed = enroll(&h);
    // A fresh broker that got the value only by decrypting the vault.
    h.ok(&["daemon", "stop"]);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(h.ok(&["env", "show", "demo"]).contains("API_TOKEN"));
    let pid: u32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let scan = |needle: &str| -> Value {
        let o = Command::new(python())
            .arg("-c")
            .arg(ATTACK_PY)
            .arg(pid.to_string())
            .arg(needle)
            .output()
            .unwrap();
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["mem"]["ok"], Value::Bool(true), "{r}");
        r
    };
    let control = scan(&described);
    assert_eq!(
        control["mem"]["found"],
        Value::Bool(true),
        "the scan did not find a plain string of the vault: {control}"
    );
    let r = scan(&value);
    assert_eq!(
        r["mem"]["found"],
        Value::Bool(false),
        "the value is in the broker's memory in plain text: {r}"
    );
    let r = scan(&seed);
    assert_eq!(
        r["mem"]["found"],
        Value::Bool(false),
        "the TOTP seed is in the broker's memory in plain text: {r}"
    );
}
