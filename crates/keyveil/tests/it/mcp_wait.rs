//! While a headless agent waits for the human: the desktop notification (through a fake
//! `notify-send` that records its argv), the pending reply's instructions, the approval-page
//! link sent by URL elicitation only to clients that declared URL mode, and `run` as an MCP
//! task. Raw JSON-RPC over `keyveil mcp`'s stdio; the agent chooses the command and reason.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// Longest wait for one message.
const BOUND: Duration = Duration::from_secs(60);

fn random_value() -> String {
    let mut b = [0u8; 16];
    getrandom_bytes(&mut b);
    format!(
        "wv_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn getrandom_bytes(b: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(b)
        .unwrap();
}

/// A running `keyveil mcp` spoken to in raw JSON-RPC; every line it wrote is kept.
struct Raw {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Vec<u8>>,
    seen: Vec<Vec<u8>>,
    /// Server-to-client requests seen so far.
    server_requests: Vec<Value>,
    next_id: i64,
}

impl Raw {
    fn start(h: &Home, capabilities: Value) -> Raw {
        let mut r = Raw::bare(h);
        let init = r.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": capabilities,
                   "clientInfo": {"name": "wait-test", "version": "1"}}),
        );
        assert!(init.get("result").is_some(), "{init}");
        r.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        r
    }

    /// A server spoken to without a handshake (2026-07-28: `_meta` in each request).
    fn bare(h: &Home) -> Raw {
        let mut cmd = h.cmd(&["mcp"]);
        cmd.current_dir(h.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            loop {
                let mut line = Vec::new();
                match out.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(line).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Raw {
            child,
            stdin: Some(stdin),
            lines,
            seen: Vec::new(),
            server_requests: Vec::new(),
            next_id: 0,
        }
    }

    fn send(&mut self, v: &Value) {
        let s = self.stdin.as_mut().unwrap();
        s.write_all(format!("{v}\n").as_bytes()).unwrap();
        s.flush().unwrap();
    }

    /// The next message, or `None` after `limit`.
    fn next(&mut self, limit: Duration) -> Option<Value> {
        match self.lines.recv_timeout(limit) {
            Ok(line) => {
                let v: Value = serde_json::from_slice(&line).unwrap();
                self.seen.push(line);
                if v.get("method").is_some() && v.get("id").is_some() {
                    self.server_requests.push(v.clone());
                }
                Some(v)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("keyveil mcp exited"),
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let t0 = Instant::now();
        loop {
            let left = BOUND.saturating_sub(t0.elapsed());
            let Some(m) = self.next(left) else {
                panic!("no reply to {method} within {BOUND:?}");
            };
            if m.get("id") == Some(&json!(id)) && m.get("method").is_none() {
                return m;
            }
        }
    }

    /// Reads messages for `limit`, answering nothing.
    fn drain(&mut self, limit: Duration) {
        let t0 = Instant::now();
        while let Some(left) = limit.checked_sub(t0.elapsed()) {
            if self.next(left).is_none() {
                return;
            }
        }
    }

    fn elicitations(&self) -> Vec<Value> {
        self.server_requests
            .iter()
            .filter(|m| m["method"] == "elicitation/create")
            .cloned()
            .collect()
    }

    fn all_output(&self) -> Vec<u8> {
        self.seen.concat()
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn home_with_value() -> (Home, String) {
    let h = Home::new();
    let value = random_value();
    h.set("demo", "API_TOKEN", &value);
    (h, value)
}

fn assert_no_value(out: &[u8], value: &str, what: &str) {
    for enc in encodings(value) {
        assert!(!contains(out, &enc), "{what}: the value is in it");
    }
}

/// The approval link's shape: `http://127.0.0.1:PORT/login?token=<64 hex>` and nothing else.
fn assert_login_link(url: &str) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a loopback link: {url}"));
    let (port, query) = rest.split_once("/login?token=").expect(url);
    assert!(port.parse::<u16>().is_ok(), "{url}");
    assert!(
        query.len() == 64 && query.chars().all(|c| c.is_ascii_hexdigit()),
        "{url}"
    );
}

#[test]
fn the_pending_reply_says_what_to_call_next_and_what_approves() {
    let (h, value) = home_with_value();
    let mut m = Raw::start(&h, json!({}));
    let r = m.request(
        "tools/call",
        json!({"name": "run", "arguments": {"environment": "demo",
               "command": ["sh", "-c", "echo $API_TOKEN"], "wait_seconds": 0}}),
    );
    let s = &r["result"]["structuredContent"];
    assert_eq!(s["status"], "pending_approval", "{r}");
    let id = s["request_id"].as_u64().unwrap();
    let w = &s["waiting"];
    assert_eq!(w["approve_command"], format!("keyveil approve {id}"));
    assert_eq!(w["next_tool"], "run");
    assert_eq!(w["wait_seconds"], 50);
    assert_eq!(w["approval_link_sent"], false);
    let text = r["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains(&format!("`keyveil approve {id}`")), "{text}");
    assert!(text.contains("exactly the same arguments"), "{text}");
    assert!(
        text.contains(&format!("access_status with {{\"request_id\": {id}}}")),
        "{text}"
    );
    // request_access points at access_status.
    let r = m.request(
        "tools/call",
        json!({"name": "request_access", "arguments": {"environment": "demo", "reason": "deploy"}}),
    );
    let s = &r["result"]["structuredContent"];
    let id = s["request_id"].as_u64().unwrap();
    assert_eq!(s["waiting"]["next_tool"], "access_status", "{r}");
    assert_eq!(s["waiting"]["next_arguments"], json!({"request_id": id}));
    // A client that did not declare URL elicitation is never sent one.
    m.drain(Duration::from_millis(500));
    assert!(m.server_requests.is_empty(), "{:?}", m.server_requests);
    assert_no_value(&m.all_output(), &value, "the MCP stream");
}

#[test]
fn url_mode_clients_get_the_approval_link_once_and_nothing_else() {
    let (h, value) = home_with_value();
    let reason = "ignore this\n\u{1b}[2Jfactor: hunter2 <b>approve</b> \u{202e}";
    let mut m = Raw::start(&h, json!({"elicitation": {"url": {}}}));
    let args = json!({"environment": "demo", "wait_seconds": 0, "reason": reason,
                      "command": ["sh", "-c", "echo $API_TOKEN; echo \u{1b}]8;;http://evil/\u{7}"]});
    let r = m.request("tools/call", json!({"name": "run", "arguments": args}));
    let s = &r["result"]["structuredContent"];
    let id = s["request_id"].as_u64().unwrap();
    assert_eq!(s["waiting"]["approval_link_sent"], true, "{r}");
    // The same request again: no second link.
    let again = m.request("tools/call", json!({"name": "run", "arguments": args}));
    assert_eq!(again["result"]["structuredContent"]["request_id"], id);
    m.drain(Duration::from_millis(500));
    let e = m.elicitations();
    assert_eq!(e.len(), 1, "{e:?}");
    let p = &e[0]["params"];
    assert_eq!(p["mode"], "url", "{p}");
    assert_eq!(p["elicitationId"], format!("keyveil-approve-{id}"));
    assert_login_link(p["url"].as_str().unwrap());
    let msg = p["message"].as_str().unwrap();
    assert!(msg.contains(&format!("keyveil approve {id}")), "{msg}");
    // Nothing the agent chose reaches the human through the elicitation.
    for agent in ["hunter2", "ignore this", "evil", "<b>", "echo"] {
        assert!(!p.to_string().contains(agent), "{agent} in {p}");
    }
    // Decline the elicitation: the request is still pending, nothing was approved.
    let eid = e[0]["id"].clone();
    m.send(&json!({"jsonrpc": "2.0", "id": eid, "result": {"action": "decline"}}));
    let st = m.request(
        "tools/call",
        json!({"name": "access_status", "arguments": {"request_id": id}}),
    );
    assert_eq!(
        st["result"]["structuredContent"]["status"], "pending",
        "{st}"
    );
    // Opening the link (what the host or the agent could do with it) approves nothing.
    let url = p["url"].as_str().unwrap().to_owned();
    let o = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output();
    if let Ok(o) = o {
        assert_eq!(
            text(&o.stdout),
            "303",
            "the link opens a session, nothing more"
        );
    }
    let st = m.request(
        "tools/call",
        json!({"name": "access_status", "arguments": {"request_id": id}}),
    );
    assert_eq!(
        st["result"]["structuredContent"]["status"], "pending",
        "{st}"
    );
    assert_no_value(&m.all_output(), &value, "the MCP stream");
}

#[test]
fn a_task_waits_for_the_approval_and_returns_the_redacted_result() {
    let (h, value) = home_with_value();
    let mut m = Raw::start(
        &h,
        json!({"elicitation": {"url": {}}, "extensions": {"io.modelcontextprotocol/tasks": {}}}),
    );
    // No `wait_seconds: 0`: a call that asks not to wait is answered at once, never as a task.
    let r = m.request(
        "tools/call",
        json!({"name": "run", "arguments": {"environment": "demo",
               "command": ["sh", "-c", "echo token=$API_TOKEN"]}}),
    );
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    let task_id = r["result"]["taskId"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned();
    // It waits for the approval, with the link as task input (not a request of its own).
    let t0 = Instant::now();
    let waiting = loop {
        let g = m.request("tasks/get", json!({"taskId": task_id}));
        if g["result"]["status"] == "input_required" {
            break g;
        }
        assert!(t0.elapsed() < BOUND, "never input_required: {g}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let g = &waiting["result"];
    let id = h.wait_request();
    assert!(
        g["statusMessage"]
            .as_str()
            .unwrap()
            .contains(&format!("keyveil approve {id}")),
        "{g}"
    );
    let input = &g["inputRequests"][format!("approve-{id}")];
    assert_eq!(input["params"]["mode"], "url", "{g}");
    assert_login_link(input["params"]["url"].as_str().unwrap());
    assert!(
        m.elicitations().is_empty(),
        "no direct elicitation in a task"
    );
    // The human approves in their terminal; the task completes with the redacted output.
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let t0 = Instant::now();
    let done = loop {
        let g = m.request("tasks/get", json!({"taskId": task_id}));
        if g["result"]["status"] == "completed" {
            break g;
        }
        assert!(t0.elapsed() < BOUND, "never completed: {g}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = done["result"]["result"]["structuredContent"].clone();
    assert_eq!(out["stdout"], "token=[REDACTED:API_TOKEN]\n", "{done}");
    assert_no_value(&m.all_output(), &value, "the MCP stream");
}

#[test]
fn a_client_without_tasks_gets_a_plain_result() {
    let (h, _value) = home_with_value();
    let mut m = Raw::start(&h, json!({}));
    let r = m.request(
        "tools/call",
        json!({"name": "run", "arguments": {"environment": "demo", "wait_seconds": 0,
               "command": ["true"]}}),
    );
    assert!(r["result"].get("taskId").is_none(), "{r}");
    assert_eq!(
        r["result"]["structuredContent"]["status"],
        "pending_approval"
    );
    let g = m.request("tasks/get", json!({"taskId": "x"}));
    assert!(g.get("error").is_some(), "{g}");
}

#[test]
fn the_desktop_notification_escapes_agent_text_and_holds_no_value() {
    let h = Home::empty();
    // A fake notify-send that records its argv, one per line, NUL-separated.
    let bin = h.path().join("fakebin");
    std::fs::create_dir(&bin).unwrap();
    let log = h.path().join("notified");
    let script = bin.join("notify-send");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let with_desktop = |args: &[&str]| {
        let mut c = h.cmd(args);
        c.env("PATH", &path)
            .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    // The broker starts from this command, with the fake on its PATH and a "desktop".
    let mut init = with_desktop(&["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"]);
    init.stdin(Stdio::piped());
    let mut child = init.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let o = wait_output(child, CLI_LIMIT);
    assert!(o.status.success(), "{}", text(&o.stderr));
    h.ok(&["env", "create", "demo"]);
    let value = random_value();
    h.set("demo", "API_TOKEN", &value);
    let fake_line = "x\nkeyveil: request #1 approved <b>ok</b> \u{1b}[2J\u{202e}\u{200b}";
    let reason = "routine\r\n\nApprove with `keyveil approve 999` <a href=x>now</a>\u{2028}";
    let run = h.spawn_run(&[
        "run", "--env", "demo", "--reason", reason, "--", "sh", "-c", fake_line,
    ]);
    let id = h.wait_request();
    let t0 = Instant::now();
    let args = loop {
        if let Ok(b) = std::fs::read(&log)
            && b.iter().filter(|c| **c == 0).count() >= 5
        {
            break b;
        }
        assert!(t0.elapsed() < BOUND, "no notification was shown");
        std::thread::sleep(Duration::from_millis(50));
    };
    let fields: Vec<String> = args
        .split(|c| *c == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let (title, body) = (&fields[3], &fields[4]);
    assert_eq!(fields[2], "--", "{fields:?}");
    assert_eq!(title, &format!("keyveil: request #{id} waits for approval"));
    assert!(
        !body
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}' || c == '\u{200b}' || c == '\u{2028}'),
        "{body:?}"
    );
    assert!(!body.contains('<') && !body.contains('>'), "{body}");
    assert!(body.contains("&lt;b&gt;ok&lt;/b&gt;"), "{body}");
    assert!(body.contains("(unverified)"), "{body}");
    assert!(
        body.ends_with(&format!(
            "Approve with `keyveil approve {id}` (or `keyveil approve --web`); check the command on the card there first."
        )),
        "{body}"
    );
    assert_no_value(&args, &value, "the notification");
    h.ok(&["deny", &id.to_string()]);
    let o = wait_output(run, CLI_LIMIT);
    assert!(!o.status.success());
}

#[test]
fn a_cancelled_task_stops_waiting_and_an_approval_afterwards_runs_nothing() {
    let (h, _value) = home_with_value();
    let marker = h.path().join("ran");
    let mut m = Raw::start(
        &h,
        json!({"extensions": {"io.modelcontextprotocol/tasks": {}}}),
    );
    let r = m.request(
        "tools/call",
        json!({"name": "run", "arguments": {"environment": "demo",
               "command": ["touch", marker.to_str().unwrap()]}}),
    );
    let task_id = r["result"]["taskId"].as_str().unwrap().to_owned();
    let id = h.wait_request();
    let c = m.request("tasks/cancel", json!({"taskId": task_id}));
    assert!(c.get("result").is_some(), "{c}");
    let t0 = Instant::now();
    loop {
        let g = m.request("tasks/get", json!({"taskId": task_id}));
        if g["result"]["status"] == "cancelled" {
            break;
        }
        assert!(t0.elapsed() < BOUND, "never cancelled: {g}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The human approves afterwards: the cancelled task runs nothing.
    let _ = h.approve(id, &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!marker.exists(), "a cancelled task ran its command");
}

fn meta_2026(capabilities: Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "wait-2026", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    })
}

#[test]
fn a_2026_url_client_gets_the_link_as_input_required_once_and_others_never() {
    let (h, value) = home_with_value();
    let mut m = Raw::bare(&h);
    // No URL mode declared: the plain pending reply.
    let plain = m.request(
        "tools/call",
        json!({"_meta": meta_2026(json!({})), "name": "run",
               "arguments": {"environment": "demo", "command": ["true"], "wait_seconds": 0}}),
    );
    assert_eq!(plain["result"]["resultType"], "complete", "{plain}");
    assert_eq!(
        plain["result"]["structuredContent"]["status"],
        "pending_approval"
    );
    assert_eq!(
        plain["result"]["structuredContent"]["waiting"]["approval_link_sent"],
        false
    );
    // URL mode declared: the first call does not wait and asks for the link to be shown.
    let args = json!({"environment": "demo", "wait_seconds": 40, "reason": "<b>factor: x</b>\n",
                      "command": ["sh", "-c", "echo $API_TOKEN # \u{1b}[2J"]});
    let url = meta_2026(json!({"elicitation": {"url": {}}}));
    let t0 = Instant::now();
    let first = m.request(
        "tools/call",
        json!({"_meta": url, "name": "run", "arguments": args}),
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the first call waited"
    );
    let res = &first["result"];
    assert_eq!(res["resultType"], "input_required", "{first}");
    let (key, ask) = res["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    let id: u64 = key.strip_prefix("approve-").unwrap().parse().unwrap();
    assert_eq!(ask["method"], "elicitation/create", "{ask}");
    assert_eq!(ask["params"]["mode"], "url");
    assert_login_link(ask["params"]["url"].as_str().unwrap());
    for agent in ["factor", "<b>", "echo", "\u{1b}"] {
        assert!(!ask.to_string().contains(agent), "{agent} in {ask}");
    }
    // The client retries with its answer: the call waits as asked (0 here) and is pending,
    // with the link noted as sent; a later call for the same request gets no second link.
    let mut retry_args = args.clone();
    retry_args["wait_seconds"] = json!(0);
    let retry = m.request(
        "tools/call",
        json!({"_meta": url, "name": "run", "arguments": retry_args,
               "inputResponses": {key: {"action": "decline"}},
               "requestState": res["requestState"]}),
    );
    let s = &retry["result"]["structuredContent"];
    assert_eq!(retry["result"]["resultType"], "complete", "{retry}");
    assert_eq!(s["request_id"], id);
    assert_eq!(s["waiting"]["approval_link_sent"], true);
    // Once the link went out, a plain call waits as the model asked (no busy polling).
    let mut wait_args = args.clone();
    wait_args["wait_seconds"] = json!(2);
    let t0 = Instant::now();
    let again = m.request(
        "tools/call",
        json!({"_meta": url, "name": "run", "arguments": wait_args}),
    );
    assert_eq!(again["result"]["resultType"], "complete", "{again}");
    assert_eq!(again["result"]["structuredContent"]["request_id"], id);
    assert!(t0.elapsed() >= Duration::from_secs(2), "it did not wait");
    assert!(m.server_requests.is_empty(), "{:?}", m.server_requests);
    assert_no_value(&m.all_output(), &value, "the MCP stream");
}

/// A run asked while the vault is locked waits as a request that only `keyveil approve N` at the
/// terminal can approve (one passphrase entry unlocks and approves): the reply says the vault is
/// locked, offers no approval page, and a URL-mode client is sent no page link (the page cannot
/// act while the vault is locked).
#[test]
fn a_run_asked_while_locked_names_the_lock_and_offers_no_page_link() {
    let (h, value) = home_with_value();
    h.ok(&["lock"]);
    let mut m = Raw::start(&h, json!({"elicitation": {"url": {}}}));
    let args = json!({"environment": "demo", "wait_seconds": 1,
                      "command": ["sh", "-c", "echo $API_TOKEN"]});
    let r = m.request("tools/call", json!({"name": "run", "arguments": args}));
    let s = &r["result"]["structuredContent"];
    assert_eq!(s["status"], "pending_approval", "{r}");
    let id = s["request_id"].as_u64().unwrap();
    assert_eq!(s["waiting"]["vault_locked"], true, "{r}");
    assert_eq!(s["waiting"]["approval_link_sent"], false, "{r}");
    let hint = s["hint"].as_str().unwrap();
    assert!(hint.contains("vault is locked"), "{hint}");
    assert!(hint.contains(&format!("keyveil approve {id}")), "{hint}");
    assert!(!hint.contains("--web"), "{hint}");
    m.drain(Duration::from_millis(500));
    assert!(m.elicitations().is_empty(), "{:?}", m.elicitations());
    assert_no_value(&m.all_output(), &value, "the MCP stream");
}
