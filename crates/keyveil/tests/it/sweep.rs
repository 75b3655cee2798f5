//! `keyveil sweep` (issue 19): copies of values found by variable and place, never by value;
//! the sweep is an oracle, so it answers only the human's factor, and only to the CLI that
//! proved it; `--contain` revokes, kills, destroys dynamic credentials at the source, marks the
//! variable compromised and records an incident.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::custody::{keep, relay};
use crate::harness::*;

fn rand_value(tag: &str) -> String {
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    format!(
        "{tag}{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn sweep(h: &Home, args: &[&str]) -> Output {
    let mut a = vec!["sweep", "--passphrase-stdin"];
    a.extend_from_slice(args);
    h.run_stdin(&a, &format!("{PASS}\n"))
}

fn raw(h: &Home, req: &Value) -> Value {
    let mut s = UnixStream::connect(h.path().join("run/broker.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(req.to_string().as_bytes());
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    serde_json::from_slice(&reply[1..]).unwrap()
}

fn git(repo: &Path, args: &[&str]) {
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

/// No form of `value` in `hay`.
fn assert_absent(hay: &[u8], value: &str, what: &str) {
    for form in encodings(value) {
        assert!(!contains(hay, &form), "{what} holds a form of the value");
    }
}

#[test]
fn a_sweep_without_the_factor_is_refused_on_the_socket_and_at_the_cli() {
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    // The agent plants candidates and asks which one holds the value.
    std::fs::write(proj.join("candidate-1.txt"), "not it").unwrap();
    std::fs::write(proj.join("candidate-2.txt"), &v).unwrap();
    let roots = json!([proj.to_string_lossy()]);
    // Raw socket, no factor.
    let r = raw(&h, &json!({"op": "sweep", "roots": roots, "home": null}));
    assert_eq!(r["kind"], "error", "{r}");
    assert_eq!(r["code"], "denied", "{r}");
    // Raw socket, a forged proof.
    let forged = json!({"op": "sweep", "roots": roots, "contain": true, "factor": {
        "broker_nonce": "00".repeat(32), "proof": "11".repeat(32), "kind": "passphrase"}});
    let r2 = raw(&h, &forged);
    assert_eq!(r2["kind"], "error", "{r2}");
    for reply in [&r, &r2] {
        let s = reply.to_string();
        assert!(!s.contains("candidate"), "a refusal names a place: {s}");
        assert_absent(s.as_bytes(), &v, "a refusal");
    }
    // The CLI with no terminal and no factor on stdin: refused, exit 2, nothing swept.
    let o = h.run(&["sweep", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains("candidate"));
    // A wrong passphrase: refused before anything is sent.
    let o = h.run_stdin(
        &["sweep", "--passphrase-stdin", proj.to_str().unwrap()],
        "wrong passphrase here\n",
    );
    assert_ne!(o.status.code(), Some(0));
    assert_ne!(o.status.code(), Some(1));
    assert!(!text(&o.stdout).contains("candidate"));
    // Nothing was contained, nothing marked.
    let show = h.json(&["env", "show", "demo", "--json"]);
    assert!(show["variables"][0]["compromised"].is_null(), "{show}");
    let audit = h.audit_text();
    assert!(!audit.contains("\"sweep\""), "a refused sweep ran");
    assert!(!audit.contains("candidate"));
    assert_absent(audit.as_bytes(), &v, "the audit log");
}

#[test]
fn findings_name_the_variable_and_place_never_the_value_and_a_relay_learns_nothing() {
    let h = Home::new();
    let v = rand_value("ghp_");
    let other = rand_value("db_");
    h.set("demo", "API_KEY", &v);
    h.set("demo", "DB_PASSWORD", &other);
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    // In a .env, base64'd; in a shell history of $HOME; in a Claude Code transcript; and in a
    // git repository only in an old commit.
    let b64 = encodings(&v)[3].clone();
    std::fs::write(proj.join(".env"), format!("X=1\nTOKEN_B64={b64}\n")).unwrap();
    std::fs::write(
        h.path().join(".bash_history"),
        format!("ls\nexport DB_PASSWORD={other}\n"),
    )
    .unwrap();
    let t = h.path().join(".claude/projects/-w-app");
    std::fs::create_dir_all(&t).unwrap();
    std::fs::write(
        t.join("0d1c.jsonl"),
        format!(
            "{{\"type\":\"user\",\"message\":{{\"role\":\"user\",\"content\":\"key is {v}\"}}}}\n"
        ),
    )
    .unwrap();
    let repo = proj.join("app");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("settings.py"), format!("PASSWORD = '{other}'\n")).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "settings"]);
    std::fs::write(repo.join("settings.py"), "PASSWORD = os.environ['P']\n").unwrap();
    git(&repo, &["commit", "-qam", "use env"]);

    // The agent sits at the socket path and relays.
    let agent = relay(&h, keep, keep);
    let o = sweep(&h, &["--json", proj.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = out["report"]["findings"].as_array().unwrap();
    let has = |var: &str, kind: &str, needle: &str| {
        assert!(
            f.iter().any(|x| x["environment"] == "demo"
                && x["variable"] == var
                && x["kind"] == kind
                && x["location"].to_string().contains(needle)),
            "{var} not found as {kind} at {needle}: {out}"
        );
    };
    has("API_KEY", "dotenv", "/proj/.env");
    has("API_KEY", "claude-code", "0d1c.jsonl");
    has("DB_PASSWORD", "shell-history", ".bash_history");
    has("DB_PASSWORD", "git-history", "settings.py");
    let hist = f.iter().find(|x| x["kind"] == "shell-history").unwrap();
    assert_eq!(hist["location"]["lines"], json!([2]));
    let seen = agent.seen();
    agent.restore(&h);
    // The relay saw the request, but not one place or name of what was found.
    for place in [".bash_history", "0d1c.jsonl", "settings.py", "DB_PASSWORD"] {
        assert!(!contains(&seen, place), "the relay learned {place}");
    }
    // Human-readable: the same places, by name.
    let o2 = sweep(&h, &[proj.to_str().unwrap()]);
    assert_eq!(o2.status.code(), Some(1));
    let human = text(&o2.stdout);
    assert!(
        human.contains("demo/API_KEY") && human.contains("demo/DB_PASSWORD"),
        "{human}"
    );
    assert!(human.contains(".bash_history line 2"), "{human}");
    // Nothing keyveil printed or wrote holds a value; the audit says how many, not where.
    for o in [&o, &o2] {
        for s in [&v, &other] {
            assert_absent(&o.stdout, s, "stdout");
            assert_absent(&o.stderr, s, "stderr");
        }
    }
    let files = h.all_plain_files();
    let audit = h.audit_text();
    assert!(audit.contains("\"sweep\""), "{audit}");
    assert!(
        !audit.contains("bash_history") && !audit.contains("0d1c"),
        "{audit}"
    );
    // (The planted files themselves hold the values; the audit log must not.)
    assert_absent(audit.as_bytes(), &v, "the audit log");
    assert_absent(audit.as_bytes(), &other, "the audit log");
    drop(files);

    // A clean directory, without $HOME: nothing found, exit 0.
    let clean = h.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::write(clean.join("notes.txt"), "nothing secret\n").unwrap();
    let o3 = sweep(&h, &["--no-home", clean.to_str().unwrap()]);
    assert_eq!(o3.status.code(), Some(0), "{}", text(&o3.stdout));
    // A path that does not exist: exit 2.
    let o4 = sweep(&h, &["/nonexistent/keyveil-sweep"]);
    assert_eq!(o4.status.code(), Some(2));
}

#[test]
fn contain_revokes_kills_marks_and_records_an_incident() {
    let h = Home::new();
    let v = rand_value("tok_");
    h.set("demo", "API_KEY", &v);
    h.set("demo", "UNRELATED", &rand_value("u_"));
    // A long run holds the value under a grant.
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", "API_KEY", "--", "sleep", "120",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let t0 = Instant::now();
    // The run is live (its grant alone is not enough: the run starts a moment after it).
    while h.json(&["status", "--json"])["live_runs"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("notes.md"), format!("the key: {v}\n")).unwrap();
    let o = sweep(
        &h,
        &["--contain", "--no-home", "--json", proj.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let c = &out["contained"];
    assert_eq!(c.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(c[0]["variable"], "API_KEY");
    assert_eq!(c[0]["grants_revoked"], 1);
    assert_eq!(c[0]["runs_stopped"], 1);
    assert_eq!(c[0]["marked"], true);
    // The run is gone and no grant is left.
    let run = wait_output(child, Duration::from_secs(20));
    assert_ne!(run.status.code(), Some(0));
    assert_eq!(h.json(&["grants", "--json"]), json!([]));
    // The listing says it is compromised: when, what kind of place, how many; not where.
    let show = h.json(&["env", "show", "demo", "--json"]);
    let vars = show["variables"].as_array().unwrap();
    let key = vars.iter().find(|x| x["name"] == "API_KEY").unwrap();
    assert_eq!(key["compromised"]["copies"], 1, "{show}");
    assert_eq!(
        key["compromised"]["kinds"],
        json!(["recent"]),
        "a copy in a file written just now counts as `recent`"
    );
    assert!(key["compromised"]["found_at"].is_string());
    assert!(!show.to_string().contains("notes.md"));
    let unrelated = vars.iter().find(|x| x["name"] == "UNRELATED").unwrap();
    assert!(unrelated["compromised"].is_null());
    let text_show = h.ok(&["env", "show", "demo"]);
    assert!(text_show.contains("COMPROMISED"), "{text_show}");
    // The audit log: an incident naming the variable, the revocation; no place, no value.
    let audit = h.audit_text();
    assert!(
        audit.contains("\"incident\"") && audit.contains("API_KEY"),
        "{audit}"
    );
    assert!(!audit.contains("notes.md"));
    assert_absent(audit.as_bytes(), &v, "the audit log");
    assert_absent(&o.stdout, &v, "stdout");
    // A new request for it carries the flag on its card.
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", "API_KEY", "--wait", "1", "--", "true",
    ]);
    let _ = h.wait_request();
    let reqs = h.json(&["requests", "--json"]);
    assert!(reqs.to_string().contains("compromised-value"), "{reqs}");
    let _ = wait_output(child, Duration::from_secs(20));
    // Rotating the value spends the mark.
    h.set("demo", "API_KEY", &rand_value("tok2_"));
    let show = h.json(&["env", "show", "demo", "--json"]);
    let key = show["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "API_KEY")
        .unwrap()
        .clone();
    assert!(key["compromised"].is_null(), "{show}");
}

fn psql_admin(sql: &str) -> Option<Output> {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-XAtqc",
            sql,
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
}

#[test]
fn contain_destroys_a_leaked_dynamic_postgres_credential_at_its_source() {
    if psql_admin("select 1").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)"
        );
        return;
    }
    let h = Home::new();
    let table = format!("kv_sweep_{}", &rand_value("")[..10]);
    psql_admin(&format!("create table {table} (x int)")).unwrap();
    let add = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "DATABASE_URL",
            "--engine",
            "postgres",
            "--template",
            &format!("GRANT SELECT ON TABLE {table} TO {{{{role}}}}"),
            "--output",
            "url",
            "--admin-stdin",
        ],
        "postgresql://postgres:AdminPw-sweep-never-shown@127.0.0.1:5432/test\n",
    );
    assert!(add.status.success(), "{}", text(&add.stderr));
    let out = text(&add.stdout);
    let i = out.find("users named ").unwrap() + "users named ".len();
    let prefix = out[i..].split('*').next().unwrap().to_owned();
    let roles = || {
        psql_admin(&format!(
            "select rolname from pg_roles where starts_with(rolname, '{prefix}')"
        ))
        .map(|o| text(&o.stdout).lines().count())
        .unwrap_or(0)
    };
    // A granted run leaks its minted URL into a project file (the write-side scan reports it;
    // the file stays).
    let proj = h.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let leak = proj.join("debug.log");
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "DATABASE_URL",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        &format!("printf 'url=%s\\n' \"$DATABASE_URL\" > {}", leak.display()),
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let _ = wait_output(child, Duration::from_secs(60));
    assert!(leak.exists());
    assert_eq!(roles(), 1, "the grant's role exists while the grant lives");
    let minted = std::fs::read_to_string(&leak).unwrap();
    let o = sweep(
        &h,
        &["--contain", "--no-home", "--json", proj.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &out["report"]["findings"];
    assert!(
        f.as_array()
            .unwrap()
            .iter()
            .any(|x| x["variable"] == "DATABASE_URL"
                && x["credential"] == "minted"
                && x["location"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("debug.log"))),
        "{out}"
    );
    let c = &out["contained"][0];
    assert_eq!(c["dynamic"], true, "{out}");
    assert_eq!(c["grants_revoked"], 1, "{out}");
    // Destroyed at the source within seconds.
    let t0 = Instant::now();
    while roles() != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the leaked role still exists"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_absent(
        &o.stdout,
        minted.trim().trim_start_matches("url="),
        "stdout",
    );
    assert_absent(&o.stdout, "AdminPw-sweep-never-shown", "stdout");
    let _ = psql_admin(&format!("drop table {table}"));
}

#[test]
fn scrub_transcripts_rewrites_host_transcripts_to_the_marker_and_nothing_else() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Home::new();
    let v = rand_value("sk_live_");
    h.set("demo", "API_KEY", &v);
    let claude = h.path().join(".claude/projects/-w-app/7a.jsonl");
    std::fs::create_dir_all(claude.parent().unwrap()).unwrap();
    let lines = format!(
        "{{\"type\":\"user\",\"message\":{{\"content\":\"my key is {v}\"}}}}\n{{\"type\":\"assistant\",\"message\":{{\"content\":\"ok\"}}}}\n"
    );
    std::fs::write(&claude, &lines).unwrap();
    std::fs::set_permissions(&claude, std::fs::Permissions::from_mode(0o600)).unwrap();
    let codex = h.path().join(".codex/sessions/2026/12/06/rollout-x.jsonl");
    std::fs::create_dir_all(codex.parent().unwrap()).unwrap();
    std::fs::write(&codex, format!("{{\"text\":\"{v}\"}}\n")).unwrap();
    let history = h.path().join(".bash_history");
    std::fs::write(&history, format!("export API_KEY={v}\n")).unwrap();
    // Without --contain the flag is refused.
    let o = sweep(&h, &["--scrub-transcripts", "--no-home", "/tmp"]);
    assert_eq!(o.status.code(), Some(2));
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let scrub = || {
        sweep(
            &h,
            &[
                "--contain",
                "--scrub-transcripts",
                "--json",
                empty.to_str().unwrap(),
            ],
        )
    };
    // A current value's copies are left, with a note saying to rotate first.
    let o = scrub();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["scrubbed"].as_array().unwrap().len(), 0, "{out}");
    assert_eq!(std::fs::read_to_string(&claude).unwrap(), lines);
    let notes = out["scrub_notes"].to_string();
    assert!(
        notes.contains("demo/API_KEY") && notes.contains("keyveil set demo API_KEY"),
        "{out}"
    );
    // Rotated: the value found is a former value, and the next scrub rewrites its copies.
    std::thread::sleep(Duration::from_millis(20));
    let new = crate::redteam19::rand_value("rotated_");
    h.set("demo", "API_KEY", &new);
    let o = scrub();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let out: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out["scrubbed"].as_array().unwrap().len(), 2, "{out}");
    // A former value is not contained again: the new value carries no mark.
    assert_eq!(out["contained"].as_array().map_or(0, Vec::len), 0, "{out}");
    assert!(
        out["report"]["findings"]
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|f| f["credential"] == "former")),
        "{out}"
    );
    let env = h.ok(&["env", "show", "demo", "--json"]);
    assert!(!env.contains("found_at"), "the new value is marked: {env}");
    let after = std::fs::read_to_string(&claude).unwrap();
    assert!(!after.contains(&v));
    assert!(after.contains("[REDACTED:demo/API_KEY]"), "{after}");
    for l in after.lines() {
        serde_json::from_str::<Value>(l).expect("still JSON lines");
    }
    assert_eq!(after.lines().count(), 2);
    assert_eq!(
        std::fs::metadata(&claude).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!std::fs::read_to_string(&codex).unwrap().contains(&v));
    // Not a transcript: left for the human.
    assert!(std::fs::read_to_string(&history).unwrap().contains(&v));
    assert!(
        !std::fs::read_dir(claude.parent().unwrap())
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("keyveil-scrub"))
    );
    assert!(h.audit_text().contains("\"sweep_scrub\""));
    assert_absent(&o.stdout, &v, "stdout");
}

#[test]
fn watch_reports_and_contains_a_value_pasted_into_a_transcript_within_a_second() {
    use std::io::BufRead as _;
    use std::process::Stdio;
    let h = Home::new();
    let v = rand_value("sk_");
    h.set("demo", "API_KEY", &v);
    // A guessable value: the agent could plant candidates and watch for the containment.
    let pin = format!("pin-{}", &rand_value("")[..6]);
    h.set("demo", "PIN", &pin);
    let dir = h.path().join(".claude/projects/-w-app");
    std::fs::create_dir_all(&dir).unwrap();
    let transcript = dir.join("s1.jsonl");
    // A value already there before the watch is a sweep's business, not the watch's.
    std::fs::write(&transcript, format!("{{\"old\":\"{v}\"}}\n")).unwrap();
    // Without the factor: refused.
    let o = h.run(&["sweep", "--watch"]);
    assert_eq!(o.status.code(), Some(2));
    // Watch $HOME's host folders (the harness's HOME is the keyveil home).
    let mut c = h.cmd(&[
        "sweep",
        "--watch",
        "--contain",
        "--json",
        "--passphrase-stdin",
    ]);
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
    let hello: Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(30)).unwrap()).unwrap();
    assert!(
        hello["report"]["notes"].to_string().contains(".claude"),
        "{hello}"
    );
    // The human pastes a key into a prompt.
    let t0 = Instant::now();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&transcript)
        .unwrap();
    writeln!(
        f,
        "{{\"type\":\"user\",\"message\":{{\"content\":\"here: {v}\"}}}}"
    )
    .unwrap();
    drop(f);
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no finding within 10 s");
    let latency = t0.elapsed();
    let got: Value = serde_json::from_str(&line).unwrap();
    let f = &got["report"]["findings"][0];
    assert_eq!(f["variable"], "API_KEY", "{got}");
    assert_eq!(f["kind"], "claude-code");
    assert!(
        f["location"]["path"]
            .as_str()
            .unwrap()
            .ends_with("s1.jsonl")
    );
    assert_eq!(got["contained"][0]["marked"], true, "{got}");
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    assert_absent(line.as_bytes(), &v, "the watch's output");
    // The guessable one is reported to the human, not contained: nothing the agent can read
    // changes.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&transcript)
        .unwrap();
    writeln!(
        f,
        "{{\"type\":\"user\",\"message\":{{\"content\":\"pin {pin}\"}}}}"
    )
    .unwrap();
    drop(f);
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no finding within 10 s");
    let got: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(got["report"]["findings"][0]["variable"], "PIN", "{got}");
    assert_eq!(got["contained"], json!([]), "{got}");
    assert!(
        got["report"]["notes"].to_string().contains("guessable"),
        "{got}"
    );
    let show = h.json(&["env", "show", "demo", "--json"]);
    let p = show["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "PIN")
        .unwrap()
        .clone();
    assert!(p["compromised"].is_null(), "{show}");
    // The broker stopping ends the watch; the CLI says a value was found (exit 1).
    let _ = h.cmd(&["daemon", "stop"]).output();
    let o = wait_output(child, Duration::from_secs(20));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_absent(&o.stderr, &v, "stderr");
}
