//! CI mode (`keyveil ci`, `docs/ci.md`): a real broker started by `ci start` in a fresh home,
//! attacked as the agent of a later step would (its CLI, the raw socket, MCP, the files).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Home, encodings, text};

const RULE: &str = "echo token=$API_TOKEN";

/// A fresh home with a repository (`repo/`: keyveil.toml declaring `ci/API_TOKEN`, the
/// allowlist covering `sh -c RULE` there) and a broker started by `ci start` with the value
/// in the start step's environment. Returns the home, the repository, the value and the
/// public key `ci start` printed.
fn started() -> (Home, PathBuf, String, String) {
    let h = Home::empty();
    let repo = h.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("keyveil.toml"),
        "[environments.ci.variables.API_TOKEN]\ndescription = \"the job's token\"\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("allow.toml"),
        format!("[[allow]]\nenvironment = \"ci\"\nargv = [\"sh\", \"-c\", \"{RULE}\"]\n"),
    )
    .unwrap();
    let value = format!(
        "ci{}{}",
        keyveil_testkit::rand_tag(),
        keyveil_testkit::rand_tag()
    );
    let gh_output = h.path().join("github-output");
    std::fs::write(&gh_output, "").unwrap();
    let o = in_repo(
        &h,
        &repo,
        &["ci", "start", "--policy", "allow.toml", "--json"],
        &[
            ("API_TOKEN", &value),
            ("GITHUB_OUTPUT", gh_output.to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "ci start: {}", text(&o.stderr));
    let out: Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    let key = out["public_key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ed25519:") && key.len() == 8 + 64, "{key}");
    assert_eq!(out["rules"], 1);
    assert_eq!(
        std::fs::read_to_string(&gh_output).unwrap(),
        format!("public_key={key}\n")
    );
    assert!(!contains_any(&o.stdout, &value) && !contains_any(&o.stderr, &value));
    (h, repo, value, key)
}

/// `keyveil ARGS` in `dir` with extra environment variables.
fn in_repo(h: &Home, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = h.cmd(args);
    c.current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().unwrap();
    crate::harness::wait_output(child, Duration::from_secs(30))
}

fn contains_any(hay: &[u8], value: &str) -> bool {
    encodings(value)
        .iter()
        .any(|e| crate::harness::contains(hay, e))
}

/// One request on the broker's socket, as an agent with a shell sends it.
fn raw(h: &Home, req: &Value) -> Value {
    let mut s = UnixStream::connect(h.path().join("run/broker.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = vec![0u8];
    body.extend_from_slice(req.to_string().as_bytes());
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    s.write_all(&len).unwrap();
    s.write_all(&body).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    serde_json::from_slice(&reply[1..]).unwrap()
}

/// Ends the broker (every test does, so none is left behind) and returns the artifact folder.
fn finish(h: &Home, repo: &Path) -> PathBuf {
    let out = h.path().join("artifact");
    let o = in_repo(
        h,
        repo,
        &["ci", "finish", "--out", out.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "ci finish: {}", text(&o.stderr));
    out
}

#[test]
fn a_covered_run_gets_its_value_redacted_and_any_other_is_refused_at_once() {
    let (h, repo, value, _) = started();
    let o = in_repo(
        &h,
        &repo,
        &["run", "--env", "ci", "--", "sh", "-c", RULE],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("token=[REDACTED:API_TOKEN]"),
        "{}",
        text(&o.stdout)
    );
    assert!(!contains_any(&o.stdout, &value));
    let t0 = Instant::now();
    let o = in_repo(
        &h,
        &repo,
        &[
            "run",
            "--env",
            "ci",
            "--",
            "sh",
            "-c",
            "echo other=$API_TOKEN",
        ],
        &[],
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "it waited: {:?}",
        t0.elapsed()
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("no rule of the CI allowlist") && err.contains("hint:"),
        "{err}"
    );
    assert!(!contains_any(&o.stdout, &value) && !contains_any(&o.stderr, &value));
    let status: Value = serde_json::from_str(&h.ok(&["status", "--json"])).unwrap_or(Value::Null);
    assert_eq!(
        status["pending_requests"].as_u64().unwrap_or(0),
        0,
        "{status}"
    );
    let audit = text(&std::fs::read(h.path().join("audit.jsonl")).unwrap());
    assert!(
        audit.contains("\"event\":\"ci_start\"") && audit.contains("\"event\":\"auto_approve\"")
    );
    assert!(audit.contains("\"event\":\"ci_refused\""));
    finish(&h, &repo);
}

#[test]
fn editing_the_allowlist_or_the_manifest_after_start_changes_nothing() {
    let (h, repo, value, _) = started();
    std::fs::write(
        repo.join("allow.toml"),
        "[[allow]]\nenvironment = \"ci\"\nargv = [\"sh\"]\nprefix = true\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("keyveil.toml"),
        "[environments.ci.variables.API_TOKEN]\n[environments.agent.variables.X]\n",
    )
    .unwrap();
    let o = in_repo(
        &h,
        &repo,
        &[
            "run",
            "--env",
            "ci",
            "--",
            "sh",
            "-c",
            "echo other=$API_TOKEN",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let o = in_repo(
        &h,
        &repo,
        &["run", "--env", "ci", "--", "sh", "-c", RULE],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!contains_any(&o.stdout, &value));
    let shown = h.ok(&["policy", "show", "ci"]);
    assert!(!shown.contains("prefix"), "{shown}");
    let o = in_repo(&h, &repo, &["env", "list"], &[]);
    assert!(!text(&o.stdout).contains("agent"), "{}", text(&o.stdout));
    finish(&h, &repo);
}

#[test]
fn raw_frames_that_need_a_factor_or_loosen_policy_are_refused() {
    let (h, repo, _, _) = started();
    let frames = [
        json!({"op": "approve", "request_id": 1, "card": "00".repeat(32), "any_command": false,
            "ttl_seconds": null, "uses": null}),
        json!({"op": "factor_challenge", "client_nonce": "00".repeat(32)}),
        json!({"op": "policy_set", "environment": "ci", "change": {"set": "auto_approve_add",
            "argv": ["sh"], "prefix": true, "cwd": "/", "ttl_seconds": 60}}),
        json!({"op": "policy_set", "environment": "ci", "change": {"set": "factor", "factor": "confirm"}}),
        json!({"op": "var_set", "environment": "ci", "name": "API_TOKEN", "value": "x"}),
        json!({"op": "env_create", "name": "mine", "description": ""}),
        json!({"op": "project_approve", "path": "/x", "sha256": "00".repeat(32)}),
        json!({"op": "lock"}),
        json!({"op": "shutdown"}),
    ];
    for f in &frames {
        let r = raw(&h, f);
        let msg = r["message"].as_str().unwrap_or_default();
        assert!(
            r["status"] == "error" || r.get("error").is_some() || msg.contains("CI mode"),
            "{f} answered {r}"
        );
        assert!(r.to_string().contains("CI mode"), "{f} answered {r}");
    }
    let o = h.run_stdin(
        &["unlock", "--passphrase-stdin"],
        "a passphrase of many words\n",
    );
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("CI mode") && text(&o.stderr).contains("hint:"));
    // Still serving, and its rules unchanged.
    let o = in_repo(
        &h,
        &repo,
        &["run", "--env", "ci", "--", "sh", "-c", RULE],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = in_repo(
        &h,
        &repo,
        &["run", "--env", "ci", "--", "sh", "-c", "true"],
        &[],
    );
    assert_eq!(o.status.code(), Some(3));
    finish(&h, &repo);
}

/// Runs `keyveil mcp` with `frames` on stdin; returns its replies that carry an id.
fn mcp_session(h: &Home, dir: &Path, frames: &[Value]) -> Vec<Value> {
    let mut cmd = h.cmd(&["mcp"]);
    cmd.current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for f in frames {
        writeln!(stdin, "{f}").unwrap();
    }
    let want = frames.iter().filter(|f| f.get("id").is_some()).count();
    let mut replies = Vec::new();
    for line in out.lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("id").is_some() {
            replies.push(v);
        }
        if replies.len() == want {
            break;
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    replies
}

#[test]
fn mcp_request_access_outside_the_rules_is_refused_at_once() {
    let (h, repo, _, _) = started();
    let t0 = Instant::now();
    let replies = mcp_session(
        &h,
        &repo,
        &[
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "agent", "version": "1"}}}),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
                "name": "request_access", "arguments": {"environment": "ci",
                "command": ["sh", "-c", "env"], "reason": "debug"}}}),
        ],
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let r = replies.iter().find(|r| r["id"] == 2).expect("a reply");
    let s = r.to_string();
    assert!(s.contains("no rule of the CI allowlist"), "{s}");
    assert!(
        r["result"]["isError"] == true || r.get("error").is_some(),
        "{s}"
    );
    finish(&h, &repo);
}

#[test]
fn ci_scan_finds_a_value_written_base64_or_hex_and_prints_no_value() {
    let (h, repo, value, key) = started();
    let clean = repo.join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::write(clean.join("report.txt"), "all tests passed\n").unwrap();
    let o = in_repo(&h, &repo, &["ci", "scan", "clean"], &[]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let art = repo.join("dist");
    std::fs::create_dir_all(art.join("logs")).unwrap();
    let enc = encodings(&value);
    std::fs::write(art.join("logs/b64.txt"), format!("token: {}\n", enc[3])).unwrap();
    std::fs::write(art.join("hex.bin"), format!("{}\n", enc[1])).unwrap();
    let o = in_repo(
        &h,
        &repo,
        &["ci", "scan", "dist", "clean", "--public-key", &key],
        &[],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    let out = text(&o.stdout);
    assert!(
        out.contains("b64.txt: API_TOKEN") && out.contains("hex.bin: API_TOKEN"),
        "{out}"
    );
    assert!(text(&o.stderr).contains("hint:"));
    assert!(!contains_any(&o.stdout, &value) && !contains_any(&o.stderr, &value));
    finish(&h, &repo);
}

#[test]
fn finish_writes_a_chain_that_verifies_and_any_tampering_fails() {
    let (h, repo, value, key) = started();
    let o = in_repo(
        &h,
        &repo,
        &["run", "--env", "ci", "--", "sh", "-c", RULE],
        &[],
    );
    assert!(o.status.success());
    let out = finish(&h, &repo);
    // The broker is gone and the artifact holds no value.
    let t0 = Instant::now();
    while h.path().join("run/broker.sock").exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!h.path().join("run/broker.sock").exists());
    let chain = std::fs::read(out.join("audit.jsonl")).unwrap();
    assert!(!contains_any(&chain, &value));
    let verify = |k: &str| h.run(&["ci", "verify", out.to_str().unwrap(), "--public-key", k]);
    let o = verify(&key);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let original = text(&chain);
    let lines: Vec<&str> = original.lines().collect();
    let write = |ls: &[String]| {
        let mut t = ls.join("\n");
        t.push('\n');
        std::fs::write(out.join("audit.jsonl"), t).unwrap();
    };
    let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    // An edited line.
    let mut edited = owned.clone();
    edited[2] = edited[2].replace("\"seq\":3", "\"seq\":3 ");
    write(&edited);
    assert_eq!(verify(&key).status.code(), Some(1));
    // A line cut from the middle, and the last one cut.
    let mut cut = owned.clone();
    cut.remove(3);
    write(&cut);
    assert_eq!(verify(&key).status.code(), Some(1));
    write(&owned[..owned.len() - 1]);
    let o = verify(&key);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("hint:"));
    // The genuine chain under another key.
    write(&owned);
    assert!(verify(&key).status.success());
    let other = format!("ed25519:{}", "ab".repeat(32));
    assert_eq!(verify(&other).status.code(), Some(1));
    // A head edited to match a cut chain.
    write(&owned[..owned.len() - 1]);
    let head_path = out.join("audit-head.json");
    let head: Value = serde_json::from_str(&std::fs::read_to_string(&head_path).unwrap()).unwrap();
    let mut forged = head.clone();
    forged["entries"] = json!(owned.len() - 1);
    forged["head_sha256"] = json!(crate::harness::sha256_hex(&owned[owned.len() - 2]));
    std::fs::write(&head_path, forged.to_string()).unwrap();
    let o = verify(&key);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("signature"), "{}", text(&o.stderr));
}

#[test]
fn ci_start_refuses_a_used_home_a_bad_allowlist_and_a_missing_jwt() {
    let (h, repo, _, _) = started();
    // A second start in the same home.
    let o = in_repo(&h, &repo, &["ci", "start", "--policy", "allow.toml"], &[]);
    assert!(!o.status.success());
    assert!(text(&o.stderr).contains("fresh KEYVEIL_HOME") && text(&o.stderr).contains("hint:"));
    finish(&h, &repo);
    let fresh = Home::empty();
    // An allowlist that would loosen more than rules can: refused, nothing started.
    std::fs::write(
        repo.join("loose.toml"),
        "[[allow]]\nenvironment = \"ci\"\nargv = [\"sh\"]\nfactor = \"confirm\"\n",
    )
    .unwrap();
    let o = in_repo(
        &fresh,
        &repo,
        &["ci", "start", "--policy", "loose.toml"],
        &[],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("unknown key") && err.contains("hint:"),
        "{err}"
    );
    assert!(!fresh.path().join("run/broker.sock").exists());
    let o = in_repo(
        &fresh,
        &repo,
        &[
            "ci",
            "start",
            "--policy",
            "allow.toml",
            "--jwt-env",
            "NO_SUCH_VAR",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("NO_SUCH_VAR") && text(&o.stderr).contains("hint:"));
}

#[test]
fn an_agent_edit_of_the_log_during_the_job_is_caught_at_finish() {
    let (h, repo, _, _) = started();
    let log = h.path().join("audit.jsonl");
    let mut t = std::fs::read_to_string(&log).unwrap();
    t = t.replacen("\"event\":\"init\"", "\"event\":\"inix\"", 1);
    std::fs::write(&log, t).unwrap();
    let out = h.path().join("artifact");
    let o = in_repo(
        &h,
        &repo,
        &["ci", "finish", "--out", out.to_str().unwrap()],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("nothing was signed"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.join("audit-head.json").exists());
    // The broker is still there to be stopped by the job's cleanup.
    let _ = h.run(&["daemon", "stop"]);
    let pid = std::fs::read_to_string(h.path().join("run/broker.pid")).unwrap_or_default();
    if let Ok(pid) = pid.trim().parse::<i32>() {
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
}

/// `ci start` logs in to OpenBao with the job's JWT (from an environment variable of the start
/// step only) for a linked KV source of keyveil.toml; a covered run gets the KV value, redacted;
/// the JWT is in no file, output or artifact; `ci finish` revokes the login's token.
#[test]
fn ci_start_logs_in_with_the_jobs_jwt_and_a_covered_run_gets_the_kv_value() {
    use keyveil_testkit::BaoDev;
    let Some(bao) = BaoDev::start() else { return };
    bao.cli_stdin(
        &["policy", "write", "team-app", "-"],
        "path \"secret/data/team/app\" { capabilities = [\"read\"] }\n",
    );
    let api_key = format!(
        "ci-kv-{}{}",
        keyveil_testkit::rand_tag(),
        keyveil_testkit::rand_tag()
    );
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("API_KEY={api_key}"),
    ]);
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    bao.cli(&["auth", "enable", "jwt"]);
    bao.cli(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys={}", key.public_key_pem()),
        "jwt_supported_algs=EdDSA",
    ]);
    bao.cli(&[
        "write",
        "auth/jwt/role/ci",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=keyveil",
        "token_policies=team-app",
        "token_ttl=10m",
    ]);
    let now = jiff::Timestamp::now().as_second();
    let jwt = crate::openbao::sign_jwt(
        &key,
        &json!({"sub": "repo:team/app:ref:main", "aud": "keyveil", "iat": now, "exp": now + 600}),
    );
    let h = Home::empty();
    let repo = h.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("keyveil.toml"),
        format!(
            "[environments.ci.variables.API_KEY]\nsource = \"openbao-kv\"\naddress = \"{}\"\npath = \"team/app\"\nauth = \"jwt\"\n",
            bao.address
        ),
    )
    .unwrap();
    let rule = "echo key=$API_KEY";
    std::fs::write(
        repo.join("allow.toml"),
        format!("[[allow]]\nenvironment = \"ci\"\nargv = [\"sh\", \"-c\", \"{rule}\"]\n"),
    )
    .unwrap();
    let o = in_repo(
        &h,
        &repo,
        &[
            "ci",
            "start",
            "--policy",
            "allow.toml",
            "--jwt-env",
            "JOB_JWT",
            "--role",
            "ci",
            "--insecure-loopback",
        ],
        &[("JOB_JWT", &jwt)],
    );
    assert!(o.status.success(), "ci start: {}", text(&o.stderr));
    let run = in_repo(
        &h,
        &repo,
        &["run", "--env", "ci", "--", "sh", "-c", rule],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(
        text(&run.stdout).contains("key=[REDACTED:API_KEY]"),
        "{}",
        text(&run.stdout)
    );
    let out = finish(&h, &repo);
    let audit = std::fs::read(out.join("audit.jsonl")).unwrap();
    for hay in [&o.stdout, &o.stderr, &run.stdout, &run.stderr, &audit] {
        assert!(!crate::harness::contains(hay, &jwt) && !contains_any(hay, &api_key));
    }
    assert!(!crate::harness::contains(&h.all_plain_files(), &jwt));
}

/// An agent that stops the job's broker and answers on its socket cannot make a scan with the
/// job's public key say "clean": the answer is not signed by the broker's key.
#[test]
fn a_fake_broker_on_the_socket_cannot_answer_a_signed_scan() {
    let (h, repo, value, key) = started();
    let art = repo.join("dist");
    std::fs::create_dir_all(&art).unwrap();
    std::fs::write(art.join("leak.txt"), &value).unwrap();
    finish(&h, &repo);
    let sock = h.path().join("run/broker.sock");
    let t0 = Instant::now();
    while sock.exists() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fake = std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut len = [0u8; 4];
            if s.read_exact(&mut len).is_err() {
                continue;
            }
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            let _ = s.read_exact(&mut body);
            let reply = json!({"kind": "ok", "data": {"findings": [], "files_scanned": 1,
                "truncated": false, "signature": "00".repeat(64)}});
            let mut out = vec![0u8];
            out.extend_from_slice(reply.to_string().as_bytes());
            let _ = s.write_all(&u32::try_from(out.len()).unwrap().to_be_bytes());
            let _ = s.write_all(&out);
        }
    });
    // Unsigned, the fake's "clean" is believed: that is why the job passes the key.
    let o = in_repo(&h, &repo, &["ci", "scan", "dist"], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = in_repo(
        &h,
        &repo,
        &["ci", "scan", "dist", "--public-key", &key],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stderr).contains("not signed by the job's broker"),
        "{}",
        text(&o.stderr)
    );
    fake.join().unwrap();
}
