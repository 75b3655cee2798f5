//! A throwaway keyveil home with its broker, and helpers to drive the CLI.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest a CLI command of a test may take before it is killed and the test fails.
pub const CLI_LIMIT: Duration = Duration::from_secs(120);

/// The test passphrase (not a secret of anything real).
pub const PASS: &str = "correct horse battery staple";

pub struct Home {
    pub dir: tempfile::TempDir,
}

/// `setsid` (util-linux), found on the test's own PATH (a test may give the CLI another PATH).
pub fn setsid() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("setsid"))
        .find(|p| p.is_file())
        .expect("setsid (util-linux) is needed to keep test processes off the terminal")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keyveil"))
}

impl Home {
    /// A fresh home, not initialised.
    pub fn empty() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("kv")
            .tempdir_in("/tmp")
            .unwrap();
        Home { dir }
    }

    /// A fresh home with an unlocked vault and environment `demo`.
    pub fn new() -> Home {
        let h = Home::empty();
        let o = h.run_stdin(
            &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
            &format!("{PASS}\n"),
        );
        assert!(o.status.success(), "init failed: {}", text(&o.stderr));
        h.ok(&["env", "create", "demo", "--description", "test env"]);
        h
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Mounts made from now on are served as on a kernel without fanotify (no count of the
    /// FIFO's openings, debug builds only): for the replays of the layers behind that count.
    pub fn without_open_count(&self) {
        std::fs::write(self.path().join("no-open-count"), "").unwrap();
    }

    /// `keyveil ARGS` for this home: a clean environment, stdin on /dev/null, and in a session
    /// of its own (`setsid`), so it has no controlling terminal: nothing a test starts can ever
    /// prompt on the developer's terminal (a prompt fails with "no terminal", as in CI).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(setsid());
        c.arg("-w")
            .arg(bin())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path())
            .env("KEYVEIL_HOME", self.path())
            // The broker's subordinate uid ranges (debug builds only): `/etc/subuid` of a
            // machine under test stays out of it; a test writes `subuid` in the home.
            .env("KEYVEIL_TEST_SUBUID", self.path().join("subuid"))
            // Debug builds serve without the count of a FIFO's openings while this file
            // exists ([`Home::without_open_count`]).
            .env(
                "KEYVEIL_TEST_NO_OPEN_COUNT",
                self.path().join("no-open-count"),
            )
            // Debug builds take the user's inotify watch limit from this file while it exists
            // (the write-side scan's watches of working directories, `tree_watches.rs`).
            .env("KEYVEIL_TEST_WATCH_LIMIT", self.path().join("watch-limit"))
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null());
        c
    }

    /// Runs to the end (at most [`CLI_LIMIT`], then it is killed and the test fails).
    pub fn run(&self, args: &[&str]) -> Output {
        let mut c = self.cmd(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        wait_output(c.spawn().unwrap(), CLI_LIMIT)
    }

    /// Runs with `input` on stdin (at most [`CLI_LIMIT`]).
    pub fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut c = self.cmd(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.as_bytes().to_vec();
        // Written from a thread: a CLI that stops reading must not block the test.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        wait_output(child, CLI_LIMIT)
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "keyveil {args:?} failed ({:?}): {}",
            o.status.code(),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Stores a value as the human does: with the factor (a value stored without it counts as
    /// one the agent may have chosen, and approval cards show it).
    pub fn set(&self, env: &str, var: &str, value: &str) {
        let o = self.run_stdin(
            &["set", env, var, "--from-stdin", "--passphrase-stdin"],
            &format!("{PASS}\n{value}"),
        );
        assert!(o.status.success(), "set failed: {}", text(&o.stderr));
    }

    /// Stores a first value without the factor, as an agent can (`keyveil set --from-stdin`).
    pub fn set_unverified(&self, env: &str, var: &str, value: &str) {
        let o = self.run_stdin(&["set", env, var, "--from-stdin"], value);
        assert!(o.status.success(), "set failed: {}", text(&o.stderr));
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Starts `keyveil run` in the background.
    pub fn spawn_run(&self, args: &[&str]) -> Child {
        let mut c = self.cmd(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c.spawn().unwrap()
    }

    /// Waits until a pending request exists and returns its id.
    pub fn wait_request(&self) -> u64 {
        let t0 = Instant::now();
        loop {
            let list = self.json(&["requests", "--json"]);
            if let Some(id) = list
                .as_array()
                .and_then(|a| a.last())
                .and_then(|r| r["id"].as_u64())
            {
                return id;
            }
            // Generous: the request comes from a process the test started, which can take
            // long to get going when the suite runs on two busy cores.
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no request appeared in 60 s"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// A granted child that asks for something itself: `keyveil run --env demo -- sh -c
    /// SCRIPT` is started in the home and approved (a 10-minute grant), and SCRIPT runs with
    /// the values;
    /// `KV` in it is replaced by this home's `keyveil` (`KEYVEIL_HOME=... /path/keyveil`).
    /// Returns the outer run and the id of the next request that appears (the child's).
    /// Only a request from a process that descends from a run (or a mount reader that was
    /// written values) has its strings masked where shown: the test process cannot play one.
    // The outer run is returned to the caller, which waits for it.
    #[allow(clippy::zombie_processes)]
    pub fn granted_ask(&self, script: &str) -> (Child, u64) {
        let kv = format!(
            "KEYVEIL_HOME='{}' '{}'",
            self.path().display(),
            bin().display()
        );
        let script = script.replace("KV ", &format!("{kv} "));
        let home = self.path().to_str().unwrap();
        let c = self.spawn_run(&[
            "run", "--env", "demo", "--wait", "60", "--cwd", home, "--", "sh", "-c", &script,
        ]);
        let outer = self.wait_request();
        let a = self.approve(outer, &["--ttl", "10m"]);
        assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
        let t0 = Instant::now();
        loop {
            let list = self.json(&["requests", "--json"]);
            if let Some(id) = list.as_array().and_then(|a| {
                a.iter()
                    .filter_map(|r| r["id"].as_u64())
                    .find(|&i| i > outer)
            }) {
                return (c, id);
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the granted child's request never appeared"
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// `keyveil run ARGS` in the background, approved (passphrase) once its request appears,
    /// and its output once it ends (within `limit`).
    pub fn run_approved(&self, args: &[&str], limit: Duration) -> Output {
        let child = self.spawn_run(args);
        let id = self.wait_request();
        let a = self.approve(id, &[]);
        assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
        wait_output(child, limit)
    }

    /// Waits (at most 10 s) until the broker reports `n` live runs: an approved `run` starts its
    /// process only after the CLI sees the approval.
    pub fn wait_live_runs(&self, n: u64) {
        let t0 = std::time::Instant::now();
        while self.json(&["status", "--json"])["live_runs"].as_u64() != Some(n) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{n} live runs never showed in status"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `keyveil approve ID --passphrase-stdin EXTRA`: the passphrase, then a yes (asked only
    /// where names are hidden, after they are shown; otherwise never read).
    pub fn approve(&self, id: u64, extra: &[&str]) -> Output {
        let ids = id.to_string();
        let mut args = vec!["approve", ids.as_str(), "--passphrase-stdin"];
        args.extend_from_slice(extra);
        self.run_stdin(&args, &format!("{PASS}\ny\n"))
    }

    /// The human allows environment `env`'s OpenBao variables to use plain HTTP to a loopback
    /// port of their own user (the tests' servers run as the test's user), with the factor.
    pub fn allow_insecure_loopback(&self, env: &str) {
        let o = self.run_stdin(
            &[
                "policy",
                "set",
                env,
                "insecure-loopback",
                "on",
                "--passphrase-stdin",
            ],
            &format!("{PASS}\n"),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }

    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.path().join("audit.jsonl")).unwrap_or_default()
    }

    /// The audit log once it holds `needle`, waiting up to 20 s: entries written by the broker's
    /// background tasks (the egress proxy's refusals and blocks go through a channel to the
    /// audit writer) may land just after the event the test saw. Returns the log as it is
    /// then, with or without the needle (the caller's assertion says what was missing).
    pub fn audit_text_with(&self, needle: &str) -> String {
        let t0 = std::time::Instant::now();
        loop {
            let text = self.audit_text();
            if text.contains(needle) || t0.elapsed() > std::time::Duration::from_secs(20) {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Every file under the home, concatenated (vault excluded: it is ciphertext).
    pub fn all_plain_files(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for e in walk(self.path()) {
            if e.file_name().is_some_and(|n| n == "vault.kv") {
                continue;
            }
            if let Ok(b) = std::fs::read(&e) {
                out.extend_from_slice(&b);
            }
        }
        out
    }
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.cmd(&["daemon", "stop"]).output();
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for a child with a deadline.
pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("child {pid} did not finish within {limit:?}");
        }
    }
}

/// Hex SHA-256 of a string, via the system's sha256sum (so the test does not share code with
/// the thing it checks).
pub fn sha256_hex(s: &str) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    text(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The value and the encodings keyveil's redactor knows, for leak searches.
pub fn encodings(value: &str) -> Vec<String> {
    use std::fmt::Write as _;
    let mut hex = String::new();
    for b in value.as_bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    let b64 = base64_std(value.as_bytes());
    vec![
        value.to_owned(),
        hex.clone(),
        hex.to_uppercase(),
        b64.trim_end_matches('=').to_owned(),
    ]
}

fn base64_std(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// An RFC 6238 code computed by Python's standard library (independent of keyveil's code).
pub fn totp_code(secret_b32: &str, step_offset: i64) -> String {
    let py = "import hmac,hashlib,base64,struct,time,sys\n\
s=sys.argv[1]; k=base64.b32decode(s+'='*(-len(s)%8))\n\
c=int(time.time())//30+int(sys.argv[2])\n\
h=hmac.new(k,struct.pack('>Q',c),hashlib.sha1).digest(); o=h[-1]&15\n\
print('%06d'%((struct.unpack('>I',h[o:o+4])[0]&0x7fffffff)%1000000))";
    // The system's interpreter where there is one: a version manager's shim (pyenv) consults
    // files and state outside the test's control.
    let python = ["/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("python3");
    let mut last = None;
    for _ in 0..3 {
        let o = Command::new(python)
            .args(["-c", py, secret_b32, &step_offset.to_string()])
            .output()
            .unwrap();
        if o.status.success() {
            return text(&o.stdout).trim().to_owned();
        }
        last = Some(o);
    }
    let o = last.unwrap();
    panic!(
        "{python} could not compute a TOTP code ({:?}): {}",
        o.status.code(),
        text(&o.stderr)
    );
}

/// Enrols TOTP through the CLI (confirming with the current code); returns the base32 seed.
pub fn enroll(h: &Home) -> String {
    let o = h.run_stdin(
        &[
            "factor",
            "enroll",
            "totp",
            "--passphrase-stdin",
            "--no-confirm",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let uri = out
        .lines()
        .find(|l| l.starts_with("otpauth://totp/"))
        .expect("an otpauth URI")
        .to_owned();
    let secret = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    // Confirm with the code of the current step.
    h.ok(&["factor", "confirm", &totp_code(&secret, 0)]);
    secret
}

/// Whether process `pid` still runs any thread. A zombie leader whose other threads still run
/// (its main thread called `pthread_exit`) is alive: it still holds its environment.
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')));
    !zombie
        || std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().any(|e| e.file_name() != *pid.to_string()))
            .unwrap_or(false)
}

/// Live processes whose environment holds `NAME=needle`, with their command lines. Every
/// thread's view is read (`/proc/PID/task/TID/environ`): a process whose leader thread exited
/// shows an empty `/proc/PID/environ` while its other threads still hold the value.
pub fn holders_of(needle: &str) -> Vec<(i32, String)> {
    let want = format!("={needle}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let holds = tasks.flatten().any(|t| {
            std::fs::read(t.path().join("environ")).is_ok_and(|env| contains(&env, &want))
        });
        if holds && alive(pid) {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push((pid, text(&cmd).replace('\0', " ")));
        }
    }
    out
}
