//! Red team of `keyveil sweep` (issue 19), second round (code reading): the watch's stream,
//! padded replies, planted git blobs and names, the scrub's choice of files, symbolic links in
//! watched folders. Each attack plants a guess that matches and one that does not, and checks
//! that nothing the agent can observe tells them apart (or that nothing is done it must not).

use std::io::{BufRead as _, Read as _, Write as _};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;
use crate::redteam19::{audit, git, mark, next_batch, rand_value, start_watch, sweep};

/// The agent at the socket path: relays every connection to the real broker and records the
/// length and arrival time of each frame the broker sends, per connection.
pub(crate) struct FrameSpy {
    frames: std::sync::Arc<std::sync::Mutex<Vec<(usize, Instant, usize)>>>,
}

impl FrameSpy {
    pub(crate) fn start(h: &Home) -> FrameSpy {
        use std::os::unix::net::{UnixListener, UnixStream};
        let sock = h.path().join("run/broker.sock");
        let real = h.path().join("run/real.sock");
        std::fs::rename(&sock, &real).unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let f2 = frames.clone();
        std::thread::spawn(move || {
            for (conn, client) in listener.incoming().enumerate() {
                let Ok(mut client) = client else { return };
                let Ok(mut broker) = UnixStream::connect(&real) else {
                    continue;
                };
                let (mut c2, mut b2) = (client.try_clone().unwrap(), broker.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client, &mut broker);
                });
                let rec = f2.clone();
                std::thread::spawn(move || {
                    loop {
                        let mut len = [0u8; 4];
                        if b2.read_exact(&mut len).is_err() {
                            break;
                        }
                        let n = u32::from_be_bytes(len) as usize;
                        let mut body = vec![0u8; n];
                        if b2.read_exact(&mut body).is_err() {
                            break;
                        }
                        rec.lock().unwrap().push((conn, Instant::now(), n));
                        if c2.write_all(&len).is_err() || c2.write_all(&body).is_err() {
                            break;
                        }
                    }
                    // The broker went away: so does the relay, for the client too.
                    let _ = c2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        FrameSpy { frames }
    }

    /// Frames of the connection that got the most, with their arrival times.
    fn busiest(&self) -> Vec<(Instant, usize)> {
        let all = self.frames.lock().unwrap().clone();
        let mut by: std::collections::BTreeMap<usize, Vec<(Instant, usize)>> = Default::default();
        for (c, t, n) in all {
            by.entry(c).or_default().push((t, n));
        }
        by.into_values().max_by_key(Vec::len).unwrap_or_default()
    }

    /// Lengths of every frame, in order, per connection.
    pub(crate) fn lengths(&self) -> Vec<Vec<usize>> {
        let all = self.frames.lock().unwrap().clone();
        let mut by: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
        for (c, _, n) in all {
            by.entry(c).or_default().push(n);
        }
        by.into_values().collect()
    }
}

/// The agent relays the watching CLI's connection and plants a wrong guess, then the right
/// one: the broker sends the same stream either way (a frame of one size every tick, found or
/// not), so neither the relay nor the CLI's wake-ups tell a hit from a miss.
#[test]
fn a_watch_sends_the_same_frames_whether_a_planted_guess_matched_or_not() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let dir = h.path().join(".claude/projects/-w-app");
    std::fs::create_dir_all(&dir).unwrap();
    let spy = FrameSpy::start(&h);
    let (child, rx) = start_watch(&h);
    // Idle, then a miss, then a hit, each given a second.
    std::thread::sleep(Duration::from_secs(1));
    let idle = spy.busiest().len();
    std::fs::write(dir.join("miss.jsonl"), "{\"content\":\"sk_live_nope\"}\n").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(dir.join("hit.jsonl"), format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    let b = next_batch(&rx);
    assert_eq!(b["report"]["findings"][0]["variable"], "API_KEY", "{b}");
    std::thread::sleep(Duration::from_secs(1));
    let frames = spy.busiest();
    let _ = h.cmd(&["daemon", "stop"]).output();
    let _ = wait_output(child, Duration::from_secs(20));
    assert!(idle >= 3, "no frames while nothing happened: {idle}");
    let sizes: std::collections::BTreeSet<usize> = frames.iter().map(|(_, n)| *n).collect();
    assert_eq!(sizes.len(), 1, "frames of different sizes: {sizes:?}");
    // About one frame a quarter second over the whole watch: none more for the hit.
    let span = frames.last().unwrap().0 - frames[0].0;
    let most = (span.as_millis() / 250) as usize + 3;
    assert!(frames.len() <= most, "{} frames in {span:?}", frames.len());
    assert!(frames.len() >= 8, "{} frames in {span:?}", frames.len());
}

/// A plain sweep of a planted wrong guess and of the right one, through the agent's relay: the
/// sealed replies have the same length (padded to a fixed bucket).
#[test]
fn a_sealed_sweep_reply_is_the_same_length_for_a_hit_and_a_miss() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("guess.txt"), "sk_not_it_0123456789abcdef\n").unwrap();
    let spy = FrameSpy::start(&h);
    let o = sweep(&h, &["--no-home", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let miss = spy.lengths();
    std::fs::write(proj.join("guess.txt"), format!("{v}\n")).unwrap();
    let o = sweep(&h, &["--no-home", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let all = spy.lengths();
    let hit = &all[miss.len()..];
    assert_eq!(miss, hit, "the reply's length tells a hit from a miss");
}

/// Guess k planted in k git blobs, and in the names of k files: the mark and the incident the
/// agent reads count them once, as `recent`, as for copies in k fresh files.
#[test]
fn a_contain_counts_planted_git_blobs_and_file_names_once() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    let repo = proj.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    for i in 0..3 {
        std::fs::write(repo.join(format!("g{i}.txt")), format!("{i} {v}\n")).unwrap();
        git(&repo, &["add", "."]);
        git(&repo, &["commit", "-q", "-m", "guess"]);
        std::fs::remove_file(repo.join(format!("g{i}.txt"))).unwrap();
        git(&repo, &["commit", "-qam", "gone"]);
    }
    for i in 0..2 {
        let d = proj.join(format!("n{i}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{v}.txt")), "nothing\n").unwrap();
    }
    let o = sweep(
        &h,
        &["--contain", "--no-home", "--json", proj.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = out["report"]["findings"].as_array().unwrap();
    assert!(
        f.iter().filter(|x| x["location"]["type"] == "git").count() >= 3,
        "{out}"
    );
    assert!(f.iter().all(|x| x["recent"] == true), "{out}");
    let m = mark(&h, "API_KEY");
    assert_eq!(m["copies"], 1, "{m}");
    assert_eq!(m["kinds"], json!(["recent"]), "{m}");
    let incident = audit(&h)
        .into_iter()
        .find(|e| e["event"] == "incident")
        .unwrap();
    let s = incident.to_string();
    assert!(
        s.contains("\"recent\"") && !s.contains("git-history"),
        "{s}"
    );
}

/// `--scrub-transcripts` rewrites the hosts' transcripts only: a value in a host's
/// configuration or credential file (`~/.claude.json`, `~/.claude/settings.json`,
/// `~/.codex/auth.json`, `~/.gemini/settings.json`) is left byte for byte, with a note.
#[test]
fn scrub_never_rewrites_a_hosts_configuration_or_credential_file() {
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let transcript = h.path().join(".claude/projects/-w-app/s.jsonl");
    let configs = [
        h.path().join(".claude.json"),
        h.path().join(".claude/settings.json"),
        h.path().join(".codex/auth.json"),
        h.path().join(".gemini/settings.json"),
    ];
    std::fs::create_dir_all(transcript.parent().unwrap()).unwrap();
    std::fs::write(&transcript, format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    let mut before = Vec::new();
    for c in &configs {
        std::fs::create_dir_all(c.parent().unwrap()).unwrap();
        let body = format!("{{\"env\":{{\"API_KEY\":\"{v}\"}},\"theme\":\"dark\"}}\n");
        std::fs::write(c, &body).unwrap();
        before.push(body);
    }
    crate::redteam19::contain_then_rotate(&h, "demo", "API_KEY");
    let empty = h.path().join("empty");
    let o = sweep(
        &h,
        &[
            "--contain",
            "--scrub-transcripts",
            "--json",
            empty.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        !std::fs::read_to_string(&transcript).unwrap().contains(&v),
        "the transcript was not rewritten: {out}"
    );
    for (c, b) in configs.iter().zip(&before) {
        assert_eq!(
            &std::fs::read_to_string(c).unwrap(),
            b,
            "{} was rewritten",
            c.display()
        );
    }
    let notes = out["scrub_notes"].to_string();
    assert!(
        notes.contains(".claude.json") && notes.contains("not a host transcript"),
        "{out}"
    );
    assert_eq!(out["scrubbed"].as_array().unwrap().len(), 1, "{out}");
}

/// A link in a watched host folder (to a folder outside it, or to `/`) is never followed: a
/// value written through it is not read, and a host folder that is itself a link is named as
/// not watched.
#[test]
fn a_watch_never_follows_a_symbolic_link() {
    let h = Home::new();
    let v = rand_value("sk_");
    let w = rand_value("tok_");
    h.set("demo", "API_KEY", &v);
    h.set("demo", "OTHER", &w);
    let dir = h.path().join(".claude/projects/-w-app");
    std::fs::create_dir_all(&dir).unwrap();
    let outside = h.path().join("outside");
    std::fs::create_dir_all(outside.join("deep")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
    std::os::unix::fs::symlink("/", h.path().join(".claude/root")).unwrap();
    std::os::unix::fs::symlink(&outside, h.path().join(".gemini")).unwrap();
    let mut c = h.cmd(&["sweep", "--watch", "--json", "--passphrase-stdin"]);
    c.current_dir(h.path())
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
    let mut hello = String::new();
    while !hello.contains(".gemini") {
        hello.push_str(&rx.recv_timeout(Duration::from_secs(30)).expect("no hello"));
    }
    assert!(hello.contains("symbolic link"), "{hello}");
    assert!(!hello.contains("watching /\""), "{hello}");
    // Through the links: not read.
    std::fs::write(outside.join("deep/x.jsonl"), format!("{{\"c\":\"{v}\"}}\n")).unwrap();
    std::fs::write(outside.join("y.jsonl"), format!("{{\"c\":\"{v}\"}}\n")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    // A barrier: the other value in a real transcript.
    std::fs::write(dir.join("s.jsonl"), format!("{{\"c\":\"{w}\"}}\n")).unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("OTHER")) {
        seen.push(next_batch_line(&rx));
    }
    assert!(
        !seen.iter().any(|l| l.contains("API_KEY")),
        "a value written through a link was read: {seen:?}"
    );
    let _ = h.cmd(&["daemon", "stop"]).output();
    let _ = wait_output(child, Duration::from_secs(20));
}

fn next_batch_line(rx: &std::sync::mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no batch in 10 s")
}

/// Measures (run by hand with `--ignored --nocapture`; figures in `docs/benchmarks.md`) the
/// broker's CPU time over 10 s of an idle watch, now that it sends a frame every 250 ms.
#[test]
#[ignore = "a measurement, run by hand: see docs/benchmarks.md (Sweep)"]
#[allow(clippy::print_stderr)]
fn measure_an_idle_watch() {
    let h = Home::new();
    h.set("demo", "API_KEY", &rand_value("sk_"));
    std::fs::create_dir_all(h.path().join(".claude/projects/-w")).unwrap();
    let pid = std::fs::read_to_string(h.path().join("run/broker.pid")).unwrap();
    let pid = pid.trim();
    let cpu = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = cpu();
    std::thread::sleep(Duration::from_secs(10));
    let base = cpu() - before;
    let (child, _rx) = start_watch(&h);
    let before = cpu();
    std::thread::sleep(Duration::from_secs(10));
    let watching = cpu() - before;
    eprintln!(
        "broker CPU over 10 s: {base} ticks without a watch, {watching} ticks with an idle watch (100 ticks = 1 s)"
    );
    let _ = h.cmd(&["daemon", "stop"]).output();
    let _ = wait_output(child, Duration::from_secs(20));
}
