//! Red team of issue 20's first slice (remote OpenBao, logins, `env link`), as a prompt-injected
//! agent with the human's uid and no factor: a KV server of the agent's own (a new variable
//! needs no factor) naming code-loading variables or hidden names, values it chose passed off as
//! trusted, client-certificate paths swapped for a FIFO or a device, the stored CA, repointing a
//! linked environment. Each attack is replayed here; see `docs/dynamic-credentials.md`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// The agent's own token for its own server (obviously fake).
const AGENT_TOKEN: &str = "agent-own-fake-token-zz";

/// What the fake server saw: each request head.
type Seen = Arc<Mutex<Vec<String>>>;

/// A fake KV v2 server on loopback plain HTTP (allowed: loopback), run by the agent: every GET
/// answers `fields` as the secret's data. Returns (address, what it saw).
fn agent_kv_server(fields: Value) -> (String, Seen) {
    agent_kv_server_live(Arc::new(Mutex::new(fields)))
}

/// As [`agent_kv_server`], answering whatever `fields` holds at each request: the agent changes
/// its values whenever it likes.
fn agent_kv_server_live(fields: Arc<Mutex<Value>>) -> (String, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://127.0.0.1:{}", l.local_addr().unwrap().port());
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            seen2.lock().unwrap().push(head);
            let now = fields.lock().unwrap().clone();
            let body = json!({"data": {"data": now, "metadata": {"version": 1}}}).to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, seen)
}

/// `keyveil env link ENV --openbao ADDR --kv-path agent/app`, as the agent (no factor).
fn link(h: &Home, env: &str, addr: &str) -> std::process::Output {
    h.run_stdin(
        &[
            "env",
            "link",
            env,
            "--openbao",
            addr,
            "--kv-path",
            "agent/app",
            "--admin-stdin",
        ],
        &format!("{AGENT_TOKEN}\n"),
    )
}

fn names(h: &Home, env: &str) -> Vec<String> {
    h.json(&["env", "show", env, "--json"])["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A KV secret of the agent's server names BASH_ENV, NODE_OPTIONS, MAKEFLAGS: `set` refuses
/// such names (they make a granted command run code their value names), and so must `env link`
/// and `dynamic add`; a run never gets them, nor any OpenBao token.
#[test]
fn kv_fields_named_like_code_loaders_are_never_variables() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let (addr, seen) = agent_kv_server(json!({
        "BASH_ENV": "/tmp/agent-hook.sh",
        "NODE_OPTIONS": "--require /tmp/agent-hook.js",
        "MAKEFLAGS": "-f /tmp/agent.mk",
        "GREETING": "hello-from-kv",
    }));
    let o = link(&h, "demo", &addr);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(names(&h, "demo"), vec!["GREETING".to_owned()]);
    for (var, key) in [("BASH_ENV", "BASH_ENV"), ("NODE_OPTIONS", "NODE_OPTIONS")] {
        let o = h.run_stdin(
            &[
                "dynamic",
                "add",
                "demo",
                var,
                "--engine",
                "openbao-kv",
                "--address",
                &addr,
                "--kv-path",
                "agent/app",
                "--kv-key",
                key,
                "--admin-stdin",
            ],
            &format!("{AGENT_TOKEN}\n"),
        );
        assert!(!o.status.success(), "{var} was added");
        assert!(
            text(&o.stderr).contains("load or run other code"),
            "{}",
            text(&o.stderr)
        );
    }
    assert_eq!(names(&h, "demo"), vec!["GREETING".to_owned()]);
    // The run gets the KV value, and no OpenBao token in its environment.
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--only",
            "GREETING",
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            "env; printf 'sha=%s\\n' \"$(printf %s \"$GREETING\" | sha256sum | cut -d' ' -f1)\"",
        ],
        Duration::from_secs(60),
    );
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("sha={}", sha256_hex("hello-from-kv"))),
        "{out}\n{}",
        text(&o.stderr)
    );
    for bad in [
        "VAULT_TOKEN",
        "BAO_TOKEN",
        AGENT_TOKEN,
        "BASH_ENV=/tmp",
        "NODE_OPTIONS",
    ] {
        assert!(!out.contains(bad), "{bad} reached the child");
    }
    // The token went only in the header, to the address the variable names.
    let heads = seen.lock().unwrap().join("\n");
    assert!(
        heads.contains("x-vault-token: agent-own") || heads.contains("X-Vault-Token: agent-own"),
        "{heads}"
    );
}

/// A KV-backed variable the agent linked to its own server without the factor holds values the
/// agent chose: the approval card must say it was stored without the factor (like `set`), not
/// "by whom is not recorded", and must not pass it off as the human's.
#[test]
fn kv_linked_without_the_factor_is_flagged_on_the_card() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    h.set("demo", "API_KEY", "kv_fake_Hn7tQ2wE9rY4uI1oP6aS");
    let (addr, _seen) = agent_kv_server(json!({"API_BASE_URL": "http://127.0.0.1:9/collect"}));
    let o = link(&h, "demo", &addr);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut c = h.cmd(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "0",
        "--",
        "printenv",
        "API_BASE_URL",
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let o = wait_output(c.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let list = h.json(&["requests", "--json"]);
    let r = &list[0];
    let nv = r["new_variables"].as_array().unwrap();
    let e = nv
        .iter()
        .find(|v| v["variable"] == "API_BASE_URL")
        .unwrap_or_else(|| panic!("the linked variable is not flagged new: {r}"));
    assert_eq!(e["stored"], "without the factor", "{r}");
    assert!(
        r["risk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "new-variable"),
        "{r}"
    );
}

/// The value of a KV variable on the agent's server is quoted on the card (escaped like every
/// card string), its digest bound into the grant, as a value `set` without the factor is: the
/// human sees the base URL the approved command will get.
#[test]
fn kv_value_from_the_agents_server_is_quoted_and_bound() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let tag = keyveil_testkit::rand_tag();
    // A redirecting value with a terminal escape in it: the card must show it escaped.
    let url = format!("http://127.0.0.1:9/collect-{tag}\u{1b}[2K");
    let (addr, _seen) = agent_kv_server(json!({ "API_BASE_URL": url }));
    assert!(link(&h, "demo", &addr).status.success());
    let o = ask_now(&h, &["sh", "-c", SHA_BASE_URL]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let r = &h.json(&["requests", "--json"])[0];
    assert!(
        r["risk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "agent-chosen-value"),
        "the card does not quote the agent's KV value: {r}"
    );
    let c = chosen(r, "API_BASE_URL");
    assert_eq!(c["origin"], "kv-without-factor", "{r}");
    assert_eq!(c["value"], url.as_str(), "{r}");
    // Named by a digest keyed by the broker's secret: no offline search of the value.
    let digest = c["digest"].as_str().unwrap_or_default();
    assert_eq!(digest.len(), 64, "{r}");
    assert_ne!(digest, sha256_hex(&url).as_str(), "{r}");
    // The human's card: the value quoted, its escape shown as text, not sent to the terminal.
    let card = h.ok(&["requests"]);
    assert!(card.contains(&format!("collect-{tag}")), "{card}");
    assert!(card.contains("linked"), "{card}");
    assert!(!card.contains('\u{1b}'), "a raw escape reached the card");
    // Approved, the run gets exactly the value the card quoted.
    let id = r["id"].as_u64().unwrap();
    assert!(h.approve(id, &["--ttl", "10m"]).status.success());
    let o = run_granted(&h, &["sh", "-c", SHA_BASE_URL]);
    assert!(
        text(&o.stdout).contains(&format!("sha={}", sha256_hex(&url))),
        "{}\n{}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

/// Prints the digest of `$API_BASE_URL` (its value would be redacted from the output).
const SHA_BASE_URL: &str =
    "printf 'sha=%s\\n' \"$(printf %s \"$API_BASE_URL\" | sha256sum | cut -d' ' -f1)\"";

/// `keyveil run --env demo --wait 0 -- ARGV`: asks and returns at once (exit 5 when a request
/// waits).
fn ask_now(h: &Home, argv: &[&str]) -> std::process::Output {
    let mut a = vec!["run", "--env", "demo", "--wait", "0", "--"];
    a.extend_from_slice(argv);
    let mut c = h.cmd(&a);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(60))
}

/// `keyveil run --env demo --wait 5 -- ARGV`, under a live grant.
fn run_granted(h: &Home, argv: &[&str]) -> std::process::Output {
    let mut a = vec!["run", "--env", "demo", "--wait", "5", "--"];
    a.extend_from_slice(argv);
    let mut c = h.cmd(&a);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(60))
}

/// The request's quoted value of vault variable `var`.
fn chosen(r: &Value, var: &str) -> Value {
    r["chosen_values"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["variable"] == var))
        .cloned()
        .unwrap_or_else(|| panic!("{var} is not quoted on the card: {r}"))
}

/// The newest request (the last listed).
fn newest_request(h: &Home) -> Value {
    h.json(&["requests", "--json"])
        .as_array()
        .and_then(|a| a.last().cloned())
        .expect("no request")
}

/// A run ended because a KV value linked without the factor changed: refused with words that
/// say so, the value never reached the command, the grant ended, and a new ask quotes the
/// new value.
fn assert_ended_by_change(h: &Home, o: &std::process::Output, new_value: &str) {
    let err = text(&o.stderr);
    assert!(!o.status.success(), "the run went ahead: {err}");
    assert!(
        err.contains("changed since approval")
            && err.contains("linked without the factor")
            && err.contains("was ended"),
        "{err}"
    );
    assert!(
        !text(&o.stdout).contains(&sha256_hex(new_value)),
        "the unapproved value reached the command"
    );
    assert!(h.audit_text().contains("value_changed"));
    let again = ask_now(h, &["sh", "-c", SHA_BASE_URL]);
    assert_eq!(again.status.code(), Some(5), "{}", text(&again.stderr));
    let r = newest_request(h);
    assert_eq!(chosen(&r, "API_BASE_URL")["value"], new_value, "{r}");
}

/// The agent's server answers one base URL while the human reads the card, another once the
/// request is approved: the run is refused and the grant ended (the value the human approved
/// is not the one the run would get).
#[test]
fn kv_value_changed_between_card_and_run_ends_the_grant() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let tag = keyveil_testkit::rand_tag();
    let shown = format!("https://api.example.test/v1-{tag}");
    let swapped = format!("http://127.0.0.1:9/collect-{tag}");
    let fields = Arc::new(Mutex::new(json!({ "API_BASE_URL": shown })));
    let (addr, _seen) = agent_kv_server_live(fields.clone());
    assert!(link(&h, "demo", &addr).status.success());
    let o = ask_now(&h, &["sh", "-c", SHA_BASE_URL]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let r = newest_request(&h);
    assert_eq!(chosen(&r, "API_BASE_URL")["value"], shown.as_str(), "{r}");
    *fields.lock().unwrap() = json!({ "API_BASE_URL": swapped });
    assert!(
        h.approve(r["id"].as_u64().unwrap(), &["--ttl", "10m"])
            .status
            .success()
    );
    let o = run_granted(&h, &["sh", "-c", SHA_BASE_URL]);
    assert_ended_by_change(&h, &o, &swapped);
}

/// A standing grant: the first run gets the value the card quoted; the agent's server then
/// answers another; the next run is refused and the grant ended.
#[test]
fn kv_value_changed_between_two_runs_of_a_standing_grant_ends_it() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let tag = keyveil_testkit::rand_tag();
    let shown = format!("https://api.example.test/v1-{tag}");
    let swapped = format!("http://127.0.0.1:9/collect-{tag}");
    let fields = Arc::new(Mutex::new(json!({ "API_BASE_URL": shown })));
    let (addr, _seen) = agent_kv_server_live(fields.clone());
    assert!(link(&h, "demo", &addr).status.success());
    assert_eq!(
        ask_now(&h, &["sh", "-c", SHA_BASE_URL]).status.code(),
        Some(5)
    );
    let r = newest_request(&h);
    assert!(
        h.approve(r["id"].as_u64().unwrap(), &["--ttl", "10m"])
            .status
            .success()
    );
    let first = run_granted(&h, &["sh", "-c", SHA_BASE_URL]);
    assert!(
        text(&first.stdout).contains(&format!("sha={}", sha256_hex(&shown))),
        "{}",
        text(&first.stderr)
    );
    *fields.lock().unwrap() = json!({ "API_BASE_URL": swapped });
    let second = run_granted(&h, &["sh", "-c", SHA_BASE_URL]);
    assert_ended_by_change(&h, &second, &swapped);
}

/// The same through the MCP `run` tool (the agent's own surface): its ask quotes the KV value,
/// and a value changed after the approval is refused there too, the grant ended.
#[test]
fn mcp_run_quotes_and_binds_the_agents_kv_value() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let tag = keyveil_testkit::rand_tag();
    let shown = format!("https://api.example.test/v1-{tag}");
    let swapped = format!("http://127.0.0.1:9/collect-{tag}");
    let fields = Arc::new(Mutex::new(json!({ "API_BASE_URL": shown })));
    let (addr, _seen) = agent_kv_server_live(fields.clone());
    assert!(link(&h, "demo", &addr).status.success());
    let mut m = McpLine::start(&h);
    let args = json!({"environment": "demo", "wait_seconds": 0,
                      "command": ["sh", "-c", SHA_BASE_URL]});
    let first = m.call("run", &args);
    assert_eq!(
        first["result"]["structuredContent"]["status"], "pending_approval",
        "{first}"
    );
    let r = newest_request(&h);
    let c = chosen(&r, "API_BASE_URL");
    assert_eq!(c["value"], shown.as_str(), "{r}");
    assert_eq!(c["origin"], "kv-without-factor", "{r}");
    assert!(
        h.approve(r["id"].as_u64().unwrap(), &["--ttl", "10m"])
            .status
            .success()
    );
    let ok = m.call("run", &args);
    assert!(
        ok.to_string().contains(&sha256_hex(&shown)),
        "the approved run did not get the quoted value: {ok}"
    );
    *fields.lock().unwrap() = json!({ "API_BASE_URL": swapped });
    let refused = m.call("run", &args);
    let t = refused.to_string();
    assert!(
        refused["result"]["isError"] == json!(true) || refused.get("error").is_some(),
        "{t}"
    );
    assert!(
        t.contains("changed since approval") && t.contains("linked without the factor"),
        "{t}"
    );
    assert!(!t.contains(&sha256_hex(&swapped)), "{t}");
    assert!(h.audit_text().contains("value_changed"));
}

/// The human links with the factor: the link's values are the human's (not quoted on any
/// card, not flagged new), and a value rotated in OpenBao is what the next run of a standing
/// grant gets.
#[test]
fn kv_linked_with_the_factor_is_neither_quoted_nor_bound() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let first = format!(
        "https://api.example.test/v1-{}",
        keyveil_testkit::rand_tag()
    );
    let rotated = format!(
        "https://api.example.test/v2-{}",
        keyveil_testkit::rand_tag()
    );
    let fields = Arc::new(Mutex::new(json!({ "API_BASE_URL": first })));
    let (addr, _seen) = agent_kv_server_live(fields.clone());
    let o = h.run_stdin(
        &[
            "env",
            "link",
            "demo",
            "--openbao",
            &addr,
            "--kv-path",
            "agent/app",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{AGENT_TOKEN}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        ask_now(&h, &["sh", "-c", SHA_BASE_URL]).status.code(),
        Some(5)
    );
    let list = h.ok(&["requests", "--json"]);
    assert!(
        !list.contains(&first),
        "a value linked with the factor is shown"
    );
    let r = newest_request(&h);
    assert!(
        r.get("chosen_values")
            .is_none_or(|c| c.as_array().is_none_or(Vec::is_empty)),
        "{r}"
    );
    assert!(
        !r["risk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "new-variable" || f == "agent-chosen-value"),
        "{r}"
    );
    assert!(
        h.approve(r["id"].as_u64().unwrap(), &["--ttl", "10m"])
            .status
            .success()
    );
    let a = run_granted(&h, &["sh", "-c", SHA_BASE_URL]);
    assert!(
        text(&a.stdout).contains(&sha256_hex(&first)),
        "{}",
        text(&a.stderr)
    );
    *fields.lock().unwrap() = json!({ "API_BASE_URL": rotated });
    let b = run_granted(&h, &["sh", "-c", SHA_BASE_URL]);
    assert!(
        text(&b.stdout).contains(&sha256_hex(&rotated)),
        "{}",
        text(&b.stderr)
    );
    // A wrong passphrase links nothing.
    let bad = h.run_stdin(
        &[
            "env",
            "link",
            "other",
            "--openbao",
            &addr,
            "--kv-path",
            "agent/app",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("not-the-passphrase\n{AGENT_TOKEN}\n"),
    );
    assert!(!bad.status.success());
}

/// A minimal MCP client over `keyveil mcp`'s stdio (JSON lines).
pub(crate) struct McpLine {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    next_id: i64,
}

impl McpLine {
    pub(crate) fn start(h: &Home) -> McpLine {
        use std::io::BufRead;
        let mut cmd = h.cmd(&["mcp"]);
        cmd.current_dir(h.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines() {
                let Ok(l) = l else { return };
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut m = McpLine {
            child,
            stdin,
            lines,
            next_id: 0,
        };
        let init = m.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "redteam20", "version": "1"}}),
        );
        assert!(init.get("result").is_some(), "{init}");
        m.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        m
    }

    fn send(&mut self, v: &Value) {
        self.stdin.write_all(format!("{v}\n").as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let t0 = Instant::now();
        loop {
            let left = Duration::from_secs(60).saturating_sub(t0.elapsed());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no reply to {method}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("id") == Some(&json!(id)) && v.get("method").is_none() {
                return v;
            }
        }
    }

    pub(crate) fn call(&mut self, tool: &str, arguments: &Value) -> Value {
        self.request("tools/call", json!({"name": tool, "arguments": arguments}))
    }
}

impl Drop for McpLine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where names are hidden, linking a KV secret whose fields guess hidden names must answer the
/// same whether a guess exists or not (no oracle), and add nothing without the factor.
#[test]
fn kv_link_is_no_oracle_for_hidden_names() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    h.set("demo", "STRIPE_LIVE_SECRET", "kv_fake_Hn7tQ2wE9rY4uI1oP6aS");
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "hide-names",
            "on",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let before = h.ok(&["env", "show", "demo", "--json"]);
    let (hit, _) = agent_kv_server(json!({"STRIPE_LIVE_SECRET": "x", "ZZ_GUESS_A": "y"}));
    let (miss, _) = agent_kv_server(json!({"ZZ_GUESS_B": "x", "ZZ_GUESS_C": "y"}));
    let a = link(&h, "demo", &hit);
    let b = link(&h, "demo", &miss);
    assert!(!a.status.success() && !b.status.success());
    assert_eq!(a.status.code(), b.status.code());
    let (ea, eb) = (text(&a.stderr), text(&b.stderr));
    assert_eq!(ea, eb, "the answers differ: an oracle for hidden names");
    assert!(ea.contains("hidden"), "{ea}");
    assert_eq!(
        h.ok(&["env", "show", "demo", "--json"]),
        before,
        "something was added"
    );
}

/// The agent declares a variable whose client certificate "file" is a FIFO (or /dev/zero):
/// the broker reads it at each connection. It must refuse at once, not block a broker thread
/// until a writer comes (two such calls froze the whole broker: no `lock`, no timers).
#[test]
fn client_cert_fifo_or_device_does_not_hang_the_broker() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("client.pem");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let fifo = fifo.to_str().unwrap().to_owned();
    let add = |var: &str, cert: &str| {
        let mut c = h.cmd(&[
            "dynamic",
            "add",
            "demo",
            var,
            "--engine",
            "openbao-kv",
            "--address",
            "https://127.0.0.1:1",
            "--kv-path",
            "a",
            "--client-cert",
            cert,
            "--client-key",
            cert,
            "--admin-stdin",
            "--no-check",
        ]);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut ch = c.spawn().unwrap();
        ch.stdin
            .take()
            .unwrap()
            .write_all(format!("{AGENT_TOKEN}\n").as_bytes())
            .unwrap();
        ch
    };
    let t0 = Instant::now();
    let kids = [
        add("ONE", &fifo),
        add("TWO", &fifo),
        add("THREE", "/dev/zero"),
    ];
    for k in kids {
        let o = wait_output(k, Duration::from_secs(30));
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("regular file") || text(&o.stderr).contains("/dev"),
            "{}",
            text(&o.stderr)
        );
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the broker blocked on the FIFO"
    );
    assert!(names(&h, "demo").is_empty());
    // The broker still answers, and locks.
    assert!(h.run(&["status", "--json"]).status.success());
    assert!(h.run(&["lock"]).status.success());
}

/// The CA given with --ca-file is stored sealed in the vault (not its path, not in clear):
/// replacing the file afterwards changes nothing, and no plain file under the home holds it.
#[test]
fn ca_file_is_stored_sealed_not_by_path() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = p.self_signed(&key).unwrap().pem();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ca.pem");
    std::fs::write(&f, &ca).unwrap();
    let o = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "CA_VAR",
            "--engine",
            "openbao-kv",
            "--address",
            "https://127.0.0.1:1",
            "--kv-path",
            "a",
            "--ca-file",
            f.to_str().unwrap(),
            "--admin-stdin",
            "--no-check",
        ],
        &format!("{AGENT_TOKEN}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A line of the certificate's base64 body.
    let body_line = ca.lines().nth(2).unwrap();
    let vault = std::fs::read(h.path().join("vault.kv")).unwrap_or_default();
    assert!(
        !contains(&vault, body_line),
        "the CA is in clear in the vault file"
    );
    assert!(!contains(&h.all_plain_files(), body_line));
    assert!(
        !contains(&h.all_plain_files(), f.to_str().unwrap()),
        "the CA's path is kept"
    );
    for args in [
        vec!["env", "show", "demo", "--json"],
        vec!["status", "--json"],
    ] {
        let o = h.run(&args);
        assert!(!text(&o.stdout).contains(body_line));
    }
}

/// The agent re-links an environment the human linked, or re-adds one of its variables, to a
/// server of its own: each replaces a variable with a source, so each needs the factor (raw
/// `dynamic add` without it is refused), and the server it names is never contacted for the
/// variables it would replace.
#[test]
fn agent_cannot_repoint_a_linked_environment() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let (human, _) = agent_kv_server(json!({"API_KEY": "kv_fake_Hn7tQ2wE9rY4uI1oP6aS"}));
    assert!(link(&h, "demo", &human).status.success());
    let (evil, _) = agent_kv_server(json!({"API_KEY": "agent-chosen"}));
    let a = link(&h, "demo", &evil);
    assert!(!a.status.success());
    assert!(
        text(&a.stderr).contains("factor") || text(&a.stderr).contains("passphrase"),
        "{}",
        text(&a.stderr)
    );
    let b = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "API_KEY",
            "--engine",
            "openbao-kv",
            "--address",
            &evil,
            "--kv-path",
            "agent/app",
            "--admin-stdin",
        ],
        &format!("{AGENT_TOKEN}\n"),
    );
    assert!(!b.status.success());
    let show = h.json(&["env", "show", "demo", "--json"]);
    assert!(!show.to_string().contains(&evil), "{show}");
}

/// A CI job (or a human) gives the login JWT with `--admin-env VAR`: never argv. A broker
/// started by that very CLI call inherits the CLI's environment: it must not keep VAR, and the
/// notifier the broker runs for each request (`notify-send`, found on the PATH it inherited:
/// here the agent's own script first) gets only its desktop variables. (The broker that call
/// starts is locked and `unlock` replaces it; the check holds for both.)
#[test]
fn admin_env_secret_is_not_handed_to_the_brokers_children() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    h.set("demo", "API_KEY", "kv_fake_Hn7tQ2wE9rY4uI1oP6aS");
    h.ok(&["daemon", "stop"]);
    let bin = tempfile::tempdir().unwrap();
    let spy = bin.path().join("notify-send");
    let seen = bin.path().join("seen.env");
    std::fs::write(
        &spy,
        format!(
            "#!/bin/sh\nenv > {}.tmp && mv {0}.tmp {0}\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&spy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let jwt = format!("fake-ci-login-jwt-{}", keyveil_testkit::rand_tag());
    let other = format!("fake-shell-only-{}", keyveil_testkit::rand_tag());
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let desktop = |c: &mut std::process::Command| {
        c.env("PATH", &path)
            .env("DISPLAY", ":99")
            .env("CI_FAKE_JWT", &jwt)
            .env("SHELL_ONLY_VALUE", &other)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    };
    let mut c = h.cmd(&[
        "dynamic",
        "add",
        "demo",
        "CI_KV",
        "--engine",
        "openbao-kv",
        "--address",
        "http://127.0.0.1:1",
        "--kv-path",
        "a",
        "--auth",
        "jwt",
        "--auth-role",
        "ci",
        "--admin-env",
        "CI_FAKE_JWT",
        "--no-check",
    ]);
    desktop(&mut c);
    let a = wait_output(c.spawn().unwrap(), Duration::from_secs(60));
    assert!(text(&a.stderr).contains("locked"), "{}", text(&a.stderr));
    // The human unlocks from the same kind of shell (the broker is replaced), the agent asks.
    let mut u = h.cmd(&["unlock", "--passphrase-stdin"]);
    desktop(&mut u);
    u.stdin(Stdio::piped());
    let mut uc = u.spawn().unwrap();
    uc.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let uo = wait_output(uc, Duration::from_secs(60));
    assert!(uo.status.success(), "{}", text(&uo.stderr));
    let mut r = h.cmd(&["run", "--env", "demo", "--wait", "0", "--", "true"]);
    r.stdout(Stdio::piped()).stderr(Stdio::piped());
    let ro = wait_output(r.spawn().unwrap(), Duration::from_secs(60));
    assert_eq!(ro.status.code(), Some(5), "{}", text(&ro.stderr));
    let t0 = Instant::now();
    while !seen.exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let env = std::fs::read_to_string(&seen).unwrap_or_default();
    assert!(env.contains("DISPLAY"), "the notifier did not run: {env:?}");
    assert!(
        !env.contains(&jwt),
        "the --admin-env secret reached a child of the broker"
    );
    assert!(
        !env.contains(&other),
        "the broker's whole environment reached the notifier"
    );
}

/// The docs advise a local `bao proxy` on plain HTTP loopback. Any process of the user's uid
/// (the agent) can listen on that port while the proxy is down (or after killing it). The
/// broker reads who holds the server side of each such connection before sending anything: a
/// listener of its own user gets nothing unless the human allowed it for the environment (with
/// the factor, shown in `policy show`); the agent cannot allow it.
#[test]
fn stored_token_never_goes_to_a_squatted_loopback_port() {
    let h = Home::new();
    let (addr, seen) = agent_kv_server(json!({"API_KEY": "kv_fake_Hn7tQ2wE9rY4uI1oP6aS"}));
    // The human links an environment to "the proxy" (here already the agent's listener).
    let human_token = format!("human-stored-token-{}", keyveil_testkit::rand_tag());
    let add = |h: &Home| {
        h.run_stdin(
            &[
                "dynamic",
                "add",
                "demo",
                "API_KEY",
                "--engine",
                "openbao-kv",
                "--address",
                &addr,
                "--kv-path",
                "agent/app",
                "--kv-key",
                "API_KEY",
                "--admin-stdin",
            ],
            &format!("{human_token}\n"),
        )
    };
    let o = add(&h);
    assert!(!o.status.success(), "linked to a squatted port");
    let err = text(&o.stderr);
    assert!(
        err.contains("your own user") && err.contains("insecure-loopback"),
        "{err}"
    );
    assert!(!err.contains(&human_token));
    let heads = seen.lock().unwrap().join("\n");
    assert!(
        !heads.contains(&human_token),
        "the stored token went to the port's listener"
    );
    assert!(names(&h, "demo").is_empty());
    // The agent cannot allow it (no factor), over the CLI.
    let mut c = h.cmd(&["policy", "set", "demo", "insecure-loopback", "on"]);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    assert!(
        !wait_output(c.spawn().unwrap(), Duration::from_secs(30))
            .status
            .success()
    );
    let shown = h.ok(&["policy", "show", "demo"]);
    assert!(shown.contains("insecure loopback: off"), "{shown}");
    // The human can, with the factor; `policy show` says so.
    h.allow_insecure_loopback("demo");
    let shown = h.ok(&["policy", "show", "demo"]);
    assert!(shown.contains("insecure loopback: on"), "{shown}");
    assert_eq!(
        h.json(&["policy", "show", "demo", "--json"])["policy"]["insecure_loopback"],
        true
    );
}

/// An honest proxy run as another user (a service account): the broker verifies the listener
/// is not of its own user and sends the request with no setting. Needs root to start the
/// "proxy" as another user (skipped otherwise).
#[test]
#[allow(clippy::print_stderr)]
fn a_loopback_proxy_of_another_user_is_trusted_without_a_setting() {
    if rustix_free_euid() != 0 || !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: starting a listener as another user needs root and /usr/bin/python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let server = r#"
import http.server, json, sys
body = json.dumps({"data": {"data": {"API_KEY": "proxy-served"}, "metadata": {"version": 1}}}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
"#;
    let mut child = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            server,
            port_file.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setpriv");
    let t0 = Instant::now();
    while !port_file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the proxy never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = std::fs::read_to_string(&port_file).unwrap();
    let addr = format!("http://127.0.0.1:{}", port.trim());
    let h = Home::new();
    let o = h.run_stdin(
        &[
            "env",
            "link",
            "demo",
            "--openbao",
            &addr,
            "--kv-path",
            "team/app",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{AGENT_TOKEN}\n"),
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(names(&h, "demo"), vec!["API_KEY".to_owned()]);
}

/// The test process's effective uid, from /proc (no extra dependency).
fn rustix_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}
