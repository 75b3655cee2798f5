//! Red team of `keyveil sweep` (issue 19), as the agent: same uid, a shell, `/proc`, the audit
//! log, listings, every file it can write. A sweep is an oracle over files the agent can plant
//! ("does this file hold a value?"); each test plants a candidate that holds the value and one
//! that does not, and checks that nothing the agent can observe tells them apart.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

pub(crate) fn rand_value(tag: &str) -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    format!(
        "{tag}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

pub(crate) fn sweep(h: &Home, args: &[&str]) -> std::process::Output {
    let mut a = vec!["sweep", "--passphrase-stdin"];
    a.extend_from_slice(args);
    h.run_stdin(&a, &format!("{PASS}\n"))
}

/// What a human does before a scrub can rewrite a value's copies: `sweep --contain` (in an empty
/// folder, `$HOME` included) finds and marks `ENV/NAME`, then a new value is stored. Returns the
/// new value; the old one is from then on a former value the scrub may rewrite.
pub(crate) fn contain_then_rotate(h: &Home, env: &str, name: &str) -> String {
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = sweep(h, &["--contain", "--json", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    // `rotated_at` must come after the mark's `found_at`.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let new = rand_value("rotated_");
    h.set(env, name, &new);
    new
}

/// The audit entries, parsed.
pub(crate) fn audit(h: &Home) -> Vec<Value> {
    h.audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An audit entry without what differs between two runs of the same thing (time, chain).
fn shape(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(m) = e.as_object_mut() {
        for k in ["at", "time", "ts", "mac", "prev", "seq", "elapsed_ms", "id"] {
            m.remove(k);
        }
        if let Some(f) = m.get_mut("fields").and_then(Value::as_object_mut) {
            f.remove("elapsed_ms");
        }
    }
    e
}

pub(crate) fn git(repo: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", text(&o.stderr));
}

/// A plain sweep (no `--contain`) the human runs over the agent's planted candidates: the
/// audit entry it leaves is the same whether a candidate held the value or not.
#[test]
fn the_audit_of_a_sweep_says_nothing_about_what_it_found() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(
        proj.join("guess.txt"),
        "sk_not_the_value_0123456789abcdef\n",
    )
    .unwrap();
    let o = sweep(&h, &["--no-home", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let miss: Vec<Value> = audit(&h)
        .into_iter()
        .filter(|e| e["event"] == "sweep")
        .collect();
    // The agent's next guess is right, in three files.
    for i in 0..3 {
        std::fs::write(proj.join(format!("guess{i}.txt")), format!("{v}\n")).unwrap();
    }
    let o = sweep(&h, &["--no-home", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let hit: Vec<Value> = audit(&h)
        .into_iter()
        .filter(|e| e["event"] == "sweep")
        .collect();
    assert_eq!(miss.len(), 1);
    assert_eq!(hit.len(), 2);
    assert_eq!(
        shape(&hit[0]),
        shape(&hit[1]),
        "the audit tells a hit from a miss"
    );
    let s = hit[1].to_string();
    assert!(!s.contains("copies") && !s.contains("variables"), "{s}");
}

/// A `git` that logs its arguments (what `/proc/PID/cmdline` would show the agent) and runs
/// the real one: given to the broker every way it once took one (`KEYVEIL_GIT`, first on its
/// `PATH`), to show it is never run.
fn git_logger(h: &Home) -> (std::path::PathBuf, String) {
    let real = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    let bin = h.path().join("wrap-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = h.path().join("git-argv.log");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec '{real}' \"$@\"\n",
        log.display()
    );
    let w = bin.join("git");
    std::fs::write(&w, script).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&w, std::fs::Permissions::from_mode(0o755)).unwrap();
    (log, w.display().to_string())
}

/// The agent plants candidate blobs in a repository and watches `/proc` for the broker's git
/// processes: there are none, hit or miss (objects are read in process), and the hit is still
/// found and placed at both commits.
#[test]
fn a_sweep_runs_no_git_whatever_it_finds() {
    let h = Home::new();
    let v = rand_value("ghp_");
    h.set("demo", "TOKEN", &v);
    let (log, wrapper) = git_logger(&h);
    // The broker restarted with the wrapper as its git.
    h.ok(&["daemon", "stop"]);
    let mut c = h.cmd(&["unlock", "--passphrase-stdin"]);
    let wrap_dir = std::path::Path::new(&wrapper).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        wrap_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.env("KEYVEIL_GIT", &wrapper)
        .env("PATH", &path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let o = wait_output(child, CLI_LIMIT);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let repo = h.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("candidate.txt"), "ghp_wrong_guess_000000000000\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "guess"]);
    std::fs::remove_file(repo.join("candidate.txt")).unwrap();
    git(&repo, &["commit", "-qam", "gone"]);
    let _ = std::fs::remove_file(&log);
    let o = sweep(&h, &["--no-home", repo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let miss = std::fs::read_to_string(&log).unwrap_or_default();
    // The right guess, committed and deleted the same way.
    std::fs::write(repo.join("candidate.txt"), format!("{v}\n")).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "guess"]);
    std::fs::remove_file(repo.join("candidate.txt")).unwrap();
    git(&repo, &["commit", "-qam", "gone"]);
    let _ = std::fs::remove_file(&log);
    let o = sweep(&h, &["--no-home", "--json", repo.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let found = &out["report"]["findings"][0]["location"];
    assert_eq!(found["type"], "git", "{out}");
    assert_eq!(found["commits"].as_array().unwrap().len(), 2, "{out}");
    let hit = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(miss.is_empty(), "the broker ran git: {miss}");
    assert!(hit.is_empty(), "the broker ran git: {hit}");
}

/// Starts `keyveil sweep --watch --contain --json` (HOME: the harness home) and returns the
/// child and a channel of its output lines, after its first (hello) line.
pub(crate) fn start_watch(h: &Home) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut c = h.cmd(&[
        "sweep",
        "--watch",
        "--contain",
        "--json",
        "--passphrase-stdin",
    ]);
    // Started in a project folder: a watch does not take the current directory (a recursive
    // inotify watch on all of it, often the whole home), only the host folders.
    let cwd = h.path().join("some-project");
    std::fs::create_dir_all(&cwd).unwrap();
    c.current_dir(&cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let hello = rx.recv_timeout(Duration::from_secs(30)).expect("no hello");
    assert!(hello.contains("watching"), "{hello}");
    assert!(!hello.contains("some-project"), "{hello}");
    (child, rx)
}

pub(crate) fn next_batch(rx: &std::sync::mpsc::Receiver<String>) -> Value {
    serde_json::from_str(
        &rx.recv_timeout(Duration::from_secs(10))
            .expect("no batch in 10 s"),
    )
    .unwrap()
}

pub(crate) fn mark(h: &Home, var: &str) -> Value {
    let show = h.json(&["env", "show", "demo", "--json"]);
    show["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == var)
        .unwrap()["compromised"]
        .clone()
}

/// The watch runs without limit while the human leaves it on: every planted guess the agent
/// writes into a transcript folder is read. Nothing the agent can read answers one: no audit
/// entry per batch (for a guessable PIN neither), and a long value, once contained, is never
/// contained again (a second containment would answer a 12-byte fragment guess, and the next,
/// one character at a time).
#[test]
fn a_watch_answers_no_planted_guess_through_the_audit_or_a_second_containment() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let pin = format!("pin-{}", &rand_value("")[..4]);
    h.set("demo", "PIN", &pin);
    let dir = h.path().join(".claude/projects/-w-app");
    std::fs::create_dir_all(&dir).unwrap();
    let (child, rx) = start_watch(&h);
    let plant = |name: &str, body: &str| {
        std::fs::write(dir.join(name), format!("{{\"content\":\"{body}\"}}\n")).unwrap();
    };
    let before = audit(&h).len();
    // Guesses of the PIN, right and wrong: reported to the human only.
    plant("g1.jsonl", "pin-zzzz");
    plant("g2.jsonl", &pin);
    let b = next_batch(&rx);
    assert_eq!(b["report"]["findings"][0]["variable"], "PIN", "{b}");
    assert_eq!(b["contained"], json!([]));
    // Give the broker time to write whatever it would (the next batch is a barrier).
    plant("g3.jsonl", "nothing here");
    plant("first.jsonl", &v);
    let b = next_batch(&rx);
    assert_eq!(b["contained"][0]["variable"], "API_KEY", "{b}");
    let after_first = audit(&h);
    let new: Vec<&Value> = after_first[before..].iter().collect();
    assert!(
        new.iter()
            .all(|e| e["event"] == "incident" || e["event"] == "revoke"),
        "audit entries an agent can count per batch: {new:?}"
    );
    let m1 = mark(&h, "API_KEY");
    assert_eq!(m1["copies"], 1, "{m1}");
    assert_eq!(m1["kinds"], json!(["recent"]), "{m1}");
    // Now a fragment guess (the first 12 bytes of the value, as a truncated print would be).
    plant("frag.jsonl", &v[..12]);
    let b = next_batch(&rx);
    assert_eq!(b["report"]["findings"][0]["variable"], "API_KEY", "{b}");
    assert_eq!(b["contained"], json!([]), "contained twice: {b}");
    plant("again.jsonl", &v);
    let b = next_batch(&rx);
    assert_eq!(b["contained"], json!([]), "contained twice: {b}");
    assert_eq!(audit(&h).len(), after_first.len(), "the audit grew");
    assert_eq!(mark(&h, "API_KEY"), m1, "the mark changed");
    let _ = h.cmd(&["daemon", "stop"]).output();
    let o = wait_output(child, Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains(&v) && !text(&o.stdout).contains(&pin));
}

/// A host makes a new project folder and writes its transcript at once (before an inotify
/// watch on the folder exists), or saves a whole JSON file beside and renames it over the old
/// one with the value in its middle: the watch reports both.
#[test]
fn a_watch_reads_transcripts_in_new_folders_and_files_replaced_whole() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let w = rand_value("tok_");
    h.set("demo", "OTHER", &w);
    std::fs::create_dir_all(h.path().join(".claude/projects")).unwrap();
    let gem = h.path().join(".gemini/tmp/abc/chats");
    std::fs::create_dir_all(&gem).unwrap();
    let chat = gem.join("session-1.json");
    let filler = "x".repeat(2 << 20);
    std::fs::write(
        &chat,
        format!("{{\"messages\":[{{\"text\":\"hello\"}}],\"pad\":\"{filler}\"}}"),
    )
    .unwrap();
    let (child, rx) = start_watch(&h);
    // mkdir -p and write in one go.
    let deep = h.path().join(".claude/projects/-new-proj/sub");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("s.jsonl"), format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|b: &Value| b.to_string().contains("API_KEY"))
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "missed: {seen:?}");
        seen.push(next_batch(&rx));
    }
    // The whole chat rewritten beside and renamed over, the value before the padding.
    let tmp = gem.join(".session-1.json.tmp");
    std::fs::write(
        &tmp,
        format!(
            "{{\"messages\":[{{\"text\":\"hello\"}},{{\"text\":\"{w}\"}}],\"pad\":\"{filler}\"}}"
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, &chat).unwrap();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while !seen.iter().any(|b: &Value| b.to_string().contains("OTHER")) {
        assert!(t0.elapsed() < Duration::from_secs(10), "missed: {seen:?}");
        seen.push(next_batch(&rx));
    }
    let _ = h.cmd(&["daemon", "stop"]).output();
    let _ = wait_output(child, Duration::from_secs(20));
}

/// `sweep --contain` over planted candidates: the mark and the incident (which the agent reads)
/// count copies in files changed in the last day once, as the kind `recent`, so the number and
/// kinds of planted files that matched (guess k in k files, or in the k-th kind of place) do
/// not say which guess was right.
#[test]
fn a_contain_tells_the_agent_one_bit_not_which_of_its_planted_files_matched() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    for (i, name) in ["a.txt", ".env", "x.bak", ".netrc"].iter().enumerate() {
        let d = proj.join(format!("d{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), format!("{v}\n")).unwrap();
    }
    let o = sweep(
        &h,
        &["--contain", "--no-home", "--json", proj.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    // The human's sealed report: every copy, with its kind.
    assert_eq!(
        out["report"]["findings"].as_array().unwrap().len(),
        4,
        "{out}"
    );
    let m = mark(&h, "API_KEY");
    assert_eq!(m["copies"], 1, "{m}");
    assert_eq!(m["kinds"], json!(["recent"]), "{m}");
    let incident = audit(&h)
        .into_iter()
        .find(|e| e["event"] == "incident")
        .unwrap();
    let s = incident.to_string();
    assert!(s.contains("\"recent\"") && !s.contains("dotenv"), "{s}");
}

/// On a terminal a sweep draws a progress line (files, bytes, git objects, time) and erases it;
/// what reaches the terminal holds no value. Without a terminal it is quiet (the other tests).
#[test]
fn a_sweep_on_a_terminal_shows_progress_and_no_value() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    // Enough to read for a few progress frames even in a debug build.
    let line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod\n";
    let chunk = line.repeat((1 << 20) / line.len());
    for i in 0..48 {
        std::fs::write(proj.join(format!("f{i}.log")), &chunk).unwrap();
    }
    std::fs::write(proj.join("leak.txt"), format!("{v}\n")).unwrap();
    let cmdline = format!(
        "'{}' sweep --passphrase-stdin --no-home '{}'",
        bin().display(),
        proj.display()
    );
    let mut c = Command::new(setsid());
    c.args(["-w", "script", "-qfec", &cmdline, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h.path())
        .env("KEYVEIL_HOME", h.path())
        .env("LANG", "C.UTF-8")
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{PASS}\n").as_bytes()).unwrap();
    let o = wait_output(child, CLI_LIMIT);
    drop(stdin);
    let shown = text(&o.stdout);
    assert!(shown.contains("sweeping ["), "no progress line: {shown}");
    assert!(
        shown.contains("\r\x1b[K"),
        "the progress line is not erased: {shown}"
    );
    assert!(
        shown.contains("demo/API_KEY") && shown.contains("leak.txt"),
        "{shown}"
    );
    for form in encodings(&v) {
        assert!(
            !shown.contains(&form),
            "the terminal shows a form of the value"
        );
    }
}

/// A planted file whose name holds terminal controls (ESC, the 8-bit CSI U+009B, a bidi
/// override) and the value: neither the report nor `--json` sends one to the terminal, and the
/// JSON still names the file exactly.
#[test]
fn planted_names_with_terminal_controls_reach_the_terminal_escaped() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let name = "x\u{1b}[2J\u{9b}31m\u{202e}txt.exe";
    std::fs::write(proj.join(name), format!("{v}\n")).unwrap();
    for args in [vec!["--json"], vec![]] {
        let mut a = vec!["--no-home"];
        a.extend(args.iter().copied());
        a.push(proj.to_str().unwrap());
        let o = sweep(&h, &a);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
        for c in text(&o.stdout).chars().chain(text(&o.stderr).chars()) {
            assert!(
                c == '\n'
                    || !(c.is_control()
                        || keyveil_proto::display::is_bidi_control(c)
                        || keyveil_proto::display::is_invisible(c)),
                "a control character {:#x} reaches the terminal: {}",
                c as u32,
                text(&o.stdout)
            );
        }
        let out = text(&o.stdout);
        assert!(
            !out.contains('\u{9b}') && !out.contains('\u{202e}'),
            "{out}"
        );
        if args.contains(&"--json") {
            let j: Value = serde_json::from_str(&out).unwrap();
            let p = j["report"]["findings"][0]["location"]["path"]
                .as_str()
                .unwrap();
            assert!(p.ends_with(name), "{p}");
        }
    }
}
