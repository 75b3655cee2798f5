//! Hostile JSON into `keyveil mcp`, spoken as raw JSON-RPC over the child's stdio.
//!
//! The tool cases are generated from `tools/list`, so a new tool is covered without editing
//! this file: for every tool, arguments that are `null`, not an object, missing each required
//! field, carrying an unknown field, a wrong type for each property, a several-MiB string, 100,000
//! levels of nesting, huge and out-of-range numbers, lone surrogates and invalid UTF-8, plus
//! pseudo-random arguments from a fixed-seed generator (the seed and case number are in every
//! failure message, so a failure reproduces). Each must get a tool error (`isError: true`) whose
//! text names the problem, or a JSON-RPC error, within a bounded wait; afterwards the server
//! still answers. The frame cases do the same for malformed JSON-RPC messages.
//!
//! Throughout: the server never panics (its stderr has no "panicked"), never exits, and a value
//! stored in the vault appears nowhere in what it wrote.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// Longest one exchange may take before it counts as a hang. Every call below either fails
/// validation or reaches the broker with `wait_seconds` 0, so a healthy answer takes
/// milliseconds; the bound only has to be far below "forever" and above a loaded machine.
const BOUND: Duration = Duration::from_secs(45);

/// Seed of the generator (a failure message names it with the case number).
const SEED: u64 = 0x6b65_7976_6569_6c21;

/// A string longer than any argument may be (5 MiB).
const HUGE: usize = 5 * 1024 * 1024;

/// Levels of nesting in the deep cases.
const DEEP: usize = 100_000;

/// A random value for the vault, made at test time (never a literal in the source).
fn random_value() -> String {
    let mut b = [0u8; 18];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("hv_{hex}")
}

/// xorshift64*: small, fixed-seed, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A running `keyveil mcp` and what it wrote.
struct Mcp {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Vec<u8>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    /// Every line the server wrote on stdout.
    seen: Vec<Vec<u8>>,
    next_id: i64,
}

impl Mcp {
    fn start(h: &Home) -> Mcp {
        let mut cmd = h.cmd(&["mcp"]);
        cmd.current_dir(h.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
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
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&stderr);
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut m = Mcp {
            child,
            stdin: Some(stdin),
            lines,
            stderr,
            seen: Vec::new(),
            next_id: 1_000_000,
        };
        let init = m.request(
            "initialize",
            r#"{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"hostile-test","version":"1"}}"#,
            "initialize",
        );
        assert!(init.get("result").is_some(), "initialize: {init}");
        m.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        m
    }

    fn id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Writes one line (the newline is added).
    fn send(&mut self, raw: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        if let Err(e) = stdin
            .write_all(raw)
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
        {
            panic!(
                "cannot write to keyveil mcp ({e}); it exited? stderr:\n{}",
                self.stderr_text()
            );
        }
    }

    /// Waits for the reply with `id`, skipping notifications and other replies.
    fn wait_for(&mut self, id: &Value, what: &str) -> Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.lines.recv_timeout(left) {
                Ok(l) => l,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{what}: no reply to id {id} within {BOUND:?} (a hang). stderr:\n{}",
                    self.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{what}: keyveil mcp closed stdout (it exited: {:?}). stderr:\n{}",
                    self.child.try_wait(),
                    self.stderr_text()
                ),
            };
            let msg: Value = serde_json::from_slice(&line).unwrap_or_else(|e| {
                panic!(
                    "{what}: the server wrote a line that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&line[..line.len().min(300)])
                )
            });
            self.seen.push(line);
            if msg.get("id") == Some(id)
                && (msg.get("result").is_some() || msg.get("error").is_some())
            {
                return msg;
            }
        }
    }

    /// Waits for an error reply without an id (or with `id: null`), skipping other lines.
    fn wait_for_error_without_id(&mut self, what: &str) -> Value {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!(
                    "{what}: no error reply within {BOUND:?} (a hang). stderr:\n{}",
                    self.stderr_text()
                );
            };
            let msg: Value = serde_json::from_slice(&line).unwrap();
            self.seen.push(line);
            if msg.get("error").is_some() && msg.get("id").is_none_or(Value::is_null) {
                return msg;
            }
        }
    }

    /// Sends a request whose `params` are raw JSON text; returns the reply.
    fn request(&mut self, method: &str, params: &str, what: &str) -> Value {
        let id = self.id();
        let frame =
            format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.send(frame.as_bytes());
        self.wait_for(&json!(id), what)
    }

    /// `tools/call` with raw `arguments` text.
    fn call_raw(&mut self, tool: &str, arguments: &[u8], what: &str) -> Value {
        let id = self.id();
        let mut frame = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":"#
        )
        .into_bytes();
        frame.extend_from_slice(arguments);
        frame.extend_from_slice(b"}}");
        self.send(&frame);
        self.wait_for(&json!(id), what)
    }

    fn call(&mut self, tool: &str, arguments: &Value, what: &str) -> Value {
        self.call_raw(tool, arguments.to_string().as_bytes(), what)
    }

    /// The server is alive and answers both a ping and a real tool call.
    fn still_answers(&mut self, what: &str) {
        let r = self.request("ping", "{}", what);
        assert!(r.get("result").is_some(), "{what}: ping after it: {r}");
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{what}: keyveil mcp exited ({status})");
        }
    }

    fn still_works(&mut self, what: &str) {
        self.still_answers(what);
        let r = self.call(
            "describe_environment",
            &json!({"environment": "demo"}),
            what,
        );
        let t = result_text(&r);
        assert!(
            r["result"]["isError"] != json!(true) && t.contains("API_TOKEN"),
            "{what}: a normal call afterwards failed: {r}"
        );
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Closes stdin; the server must exit on its own, cleanly and without a panic.
    fn finish(mut self, value: &str) {
        drop(self.stdin.take());
        let t0 = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                t0.elapsed() < BOUND,
                "keyveil mcp did not exit after stdin closed"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads drain.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let err = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        assert!(!err.contains("panicked"), "keyveil mcp panicked:\n{err}");
        assert!(status.success(), "keyveil mcp exited with {status}:\n{err}");
        let out: Vec<u8> = self.seen.concat();
        for enc in encodings(value) {
            assert!(!contains(&out, &enc), "the value crossed the MCP channel");
            assert!(!err.contains(&enc), "the value is in the server's stderr");
        }
    }
}

impl Drop for Mcp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of a tool result, or the message of a JSON-RPC error.
fn result_text(r: &Value) -> String {
    if let Some(m) = r["error"]["message"].as_str() {
        return m.to_owned();
    }
    r["result"]["content"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The reply must refuse: a JSON-RPC error, or a tool result with `isError: true`; its message
/// must mention one of `names` (when given). Returns the message.
fn refused(r: &Value, what: &str, names: &[&str]) -> String {
    let text = result_text(r);
    let is_error = r.get("error").is_some() || r["result"]["isError"] == json!(true);
    assert!(is_error, "{what}: accepted instead of refused: {}", clip(r));
    assert!(
        !text.trim().is_empty(),
        "{what}: an error without a message"
    );
    assert!(
        names.is_empty() || names.iter().any(|n| text.contains(n)),
        "{what}: the error does not name {names:?}: {text}"
    );
    assert!(
        text.len() < 64 * 1024,
        "{what}: the error message is {} bytes (it echoes the input?)",
        text.len()
    );
    text
}

/// The reply is a JSON-RPC error or a tool result (either is fine for input the schema allows).
fn answered(r: &Value, what: &str) {
    assert!(
        r.get("error").is_some() || r.get("result").is_some(),
        "{what}: {}",
        clip(r)
    );
    if r.get("result").is_some() && r["result"]["isError"] == json!(true) {
        assert!(
            !result_text(r).trim().is_empty(),
            "{what}: an error without a message"
        );
    }
}

fn clip(v: &Value) -> String {
    let s = v.to_string();
    s.chars().take(600).collect()
}

/// The JSON types a property schema allows (`integer` is reported as `integer`; `null` only
/// when listed). Empty when the schema does not say.
fn allowed_types(schema: &Value, root: &Value) -> Vec<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or_default();
        let target = root["$defs"]
            .get(name)
            .or_else(|| root["definitions"].get(name));
        return target.map(|t| allowed_types(t, root)).unwrap_or_default();
    }
    let mut out = Vec::new();
    match &schema["type"] {
        Value::String(t) => out.push(t.clone()),
        Value::Array(ts) => out.extend(ts.iter().filter_map(|t| t.as_str().map(str::to_owned))),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema[key].as_array() {
            for b in branches {
                out.extend(allowed_types(b, root));
            }
        }
    }
    if let Some(vals) = schema["enum"].as_array() {
        for v in vals {
            out.push(type_name(v).to_owned());
        }
    }
    if let Some(v) = schema.get("const") {
        out.push(type_name(v).to_owned());
    }
    // `"default": null` (an optional argument): an explicit null means "the default".
    if schema.get("default") == Some(&Value::Null) {
        out.push("null".to_owned());
    }
    out.sort();
    out.dedup();
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Whether `v`'s JSON type is one the schema allows.
fn type_allowed(v: &Value, allowed: &[String]) -> bool {
    let t = type_name(v);
    allowed
        .iter()
        .any(|a| a == t || (a == "number" && t == "integer"))
}

/// A schema-valid value for a required property: "demo" for strings, `["demo"]` for arrays,
/// the minimum (or 0) for integers. "demo" is an environment name that exists and a command
/// that does not, so no call below waits for an approval or runs anything.
fn base_value(schema: &Value, root: &Value) -> Value {
    let types = allowed_types(schema, root);
    let has = |t: &str| types.iter().any(|x| x == t);
    if let Some(v) = schema["enum"].as_array().and_then(|v| v.first()) {
        return v.clone();
    }
    if has("string") {
        json!("demo")
    } else if has("array") {
        json!(["demo"])
    } else if has("integer") || has("number") {
        json!(schema["minimum"].as_u64().unwrap_or(0))
    } else if has("boolean") {
        json!(false)
    } else {
        json!({})
    }
}

/// One tool as `tools/list` shows it.
struct ToolSpec {
    name: String,
    schema: Value,
    props: Vec<(String, Value)>,
    required: Vec<String>,
}

impl ToolSpec {
    /// Required fields with valid values, plus every optional integer with a declared minimum
    /// at that minimum (so `wait_seconds` is 0: nothing waits for an approval).
    fn base(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        for (name, schema) in &self.props {
            let types = allowed_types(schema, &self.schema);
            if self.required.contains(name) {
                m.insert(name.clone(), base_value(schema, &self.schema));
            } else if types.iter().any(|t| t == "integer")
                && let Some(min) = schema["minimum"].as_u64()
            {
                m.insert(name.clone(), json!(min));
            }
        }
        m
    }

    /// `base` as JSON text with `prop` set to raw JSON text.
    fn with_raw(&self, prop: &str, raw: &[u8]) -> Vec<u8> {
        let mut m = self.base();
        m.remove(prop);
        let mut s = Value::Object(m).to_string().into_bytes();
        s.pop(); // the closing brace
        if s.len() > 1 {
            s.push(b',');
        }
        s.extend_from_slice(format!("{}:", json!(prop)).as_bytes());
        s.extend_from_slice(raw);
        s.push(b'}');
        s
    }
}

fn tools(m: &mut Mcp) -> Vec<ToolSpec> {
    let r = m.request("tools/list", "{}", "tools/list");
    let list = r["result"]["tools"].as_array().expect("tools").clone();
    assert!(list.len() >= 10, "tools/list: {r}");
    list.iter()
        .map(|t| {
            let schema = t["inputSchema"].clone();
            let props = schema["properties"]
                .as_object()
                .map(|p| p.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default();
            let required = schema["required"]
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            ToolSpec {
                name: t["name"].as_str().unwrap().to_owned(),
                schema,
                props,
                required,
            }
        })
        .collect()
}

/// Random JSON text, sometimes not JSON at all: the generator's alphabet of trouble.
fn random_json(rng: &mut Rng, depth: usize) -> Vec<u8> {
    const SCALARS: [&str; 24] = [
        "null",
        "true",
        "false",
        "0",
        "-1",
        "-0",
        "1.5",
        "1e400",
        "-1e400",
        "18446744073709551616",
        "-9223372036854775809",
        "9007199254740993",
        "123456789012345678901234567890",
        "\"\"",
        "\" \"",
        "\"demo\"",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"\\udfff\\ud800\"",
        "\"\\u202e\\u200bdemo\"",
        "\"../../etc/passwd\"",
        "\"$(id)`id`;id\"",
        "\"\\\\\\\"\"",
        "\"#7\"",
    ];
    match rng.below(if depth > 3 { 2 } else { 6 }) {
        0 | 1 => rng.pick(&SCALARS).as_bytes().to_vec(),
        2 => {
            // A string with random bytes, some invalid UTF-8 and control characters.
            let mut s = vec![b'"'];
            for _ in 0..rng.below(12) {
                match rng.below(5) {
                    0 => s.push(0xff),
                    1 => s.extend_from_slice(b"\\u0007"),
                    2 => s.extend_from_slice("é✓".as_bytes()),
                    3 => s.push(b'\t'),
                    _ => s.push(b'a' + rng.below(26) as u8),
                }
            }
            s.push(b'"');
            s
        }
        3 => {
            let mut s = vec![b'['];
            for i in 0..rng.below(4) {
                if i > 0 {
                    s.push(b',');
                }
                s.extend(random_json(rng, depth + 1));
            }
            s.push(b']');
            s
        }
        4 => {
            let mut s = vec![b'{'];
            for i in 0..rng.below(4) {
                if i > 0 {
                    s.push(b',');
                }
                s.extend_from_slice(format!("\"k{}\":", rng.below(5)).as_bytes());
                s.extend(random_json(rng, depth + 1));
            }
            s.push(b'}');
            s
        }
        _ => {
            // Broken JSON.
            let junk: [&[u8]; 6] = [b"{", b"[1,", b"\"open", b"tru", b"{\"a\" 1}", b"01"];
            rng.pick(&junk).to_vec()
        }
    }
}

fn nested(open: &str, close: &str, inner: &str) -> Vec<u8> {
    let mut s = open.repeat(DEEP);
    s.push_str(inner);
    s.push_str(&close.repeat(DEEP));
    s.into_bytes()
}

#[test]
fn every_tool_refuses_hostile_arguments_with_a_clear_error() {
    let h = Home::new();
    let value = random_value();
    h.set("demo", "API_TOKEN", &value);
    let mut m = Mcp::start(&h);
    let specs = tools(&mut m);
    let mut rng = Rng(SEED);
    let mut cases = 0usize;

    for t in &specs {
        let tool = t.name.as_str();
        let what = |case: &str| format!("{tool}: {case}");

        // The base call is schema-valid: it gets an answer (success or a clear error).
        let base = Value::Object(t.base());
        let r = m.call(tool, &base, &what("base arguments"));
        answered(&r, &what("base arguments"));

        // Arguments that are not an object.
        for raw in [
            "[]",
            "[1,2]",
            "\"run\"",
            "42",
            "true",
            "[{\"environment\":\"demo\"}]",
        ] {
            let r = m.call_raw(tool, raw.as_bytes(), &what(&format!("arguments {raw}")));
            refused(&r, &what(&format!("arguments {raw}")), &["arguments"]);
            cases += 1;
        }
        // null and {}: fine for a tool without required fields, else "missing field".
        for raw in ["null", "{}"] {
            let r = m.call_raw(tool, raw.as_bytes(), &what(&format!("arguments {raw}")));
            if t.required.is_empty() {
                answered(&r, &what(raw));
            } else {
                let names: Vec<&str> = t.required.iter().map(String::as_str).collect();
                refused(&r, &what(&format!("arguments {raw}")), &names);
            }
            cases += 1;
        }
        // Each required field missing.
        for req in &t.required {
            let mut a = t.base();
            a.remove(req);
            let r = m.call(tool, &Value::Object(a), &what(&format!("without {req}")));
            refused(&r, &what(&format!("without {req}")), &[req]);
            cases += 1;
        }
        // An unknown field (a misspelt `variables` must not silently widen a request).
        let mut a = t.base();
        a.insert("zz_not_a_field".into(), json!(1));
        let r = m.call(tool, &Value::Object(a), &what("unknown field"));
        refused(&r, &what("unknown field"), &["zz_not_a_field"]);
        cases += 1;

        for (prop, schema) in &t.props {
            let mut allowed = allowed_types(schema, &t.schema);
            if !allowed.is_empty() && !t.required.contains(prop) {
                // An optional argument given as null means "not given".
                allowed.push("null".to_owned());
            }
            let case = |c: &str| what(&format!("{prop} = {c}"));
            // Wrong types.
            if !allowed.is_empty() {
                for wrong in [
                    json!(12345),
                    json!(-1),
                    json!(1.5),
                    json!(true),
                    json!("not a number"),
                    json!([1, {"a": null}]),
                    json!({"a": "b"}),
                    Value::Null,
                ] {
                    if type_allowed(&wrong, &allowed) {
                        continue;
                    }
                    let mut a = t.base();
                    a.insert(prop.clone(), wrong.clone());
                    let c = case(&wrong.to_string());
                    let r = m.call(tool, &Value::Object(a), &c);
                    refused(&r, &c, &[prop]);
                    cases += 1;
                }
            }
            // Raw values that are not valid JSON numbers or strings for any Rust type: each
            // must still get a reply to its id.
            for raw in [
                &b"1e400"[..],
                b"-1e400",
                b"18446744073709551616",
                b"\"\\ud800\"",
                b"\"\\udc00x\"",
                b"\"\xff\xfe\"",
                b"\"\\u00\"",
            ] {
                let c = case(&String::from_utf8_lossy(raw));
                let r = m.call_raw(tool, &t.with_raw(prop, raw), &c);
                answered(&r, &c);
                let text = result_text(&r);
                assert!(
                    r.get("error").is_some() || r["result"]["isError"] == json!(true),
                    "{c}: accepted: {text}"
                );
                cases += 1;
            }
            // 100,000 levels of nesting in the property.
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let c = case(&format!("{DEEP} levels of {open}"));
                let r = m.call_raw(tool, &t.with_raw(prop, &nested(open, close, "1")), &c);
                refused(&r, &c, &[]);
                cases += 1;
            }
            // Several MiB of text, where a string (or list of strings) goes.
            if allowed.iter().any(|x| x == "string" || x == "array") {
                let big = "A".repeat(HUGE);
                let v = if allowed.iter().any(|x| x == "string") {
                    json!(big)
                } else {
                    json!([big])
                };
                let mut a = t.base();
                a.insert(prop.clone(), v);
                let c = case("a 5 MiB string");
                let r = m.call(tool, &Value::Object(a), &c);
                refused(&r, &c, &[prop]);
                cases += 1;
            }
        }

        // Pseudo-random arguments: a random subset of the properties (and strangers) with
        // random values. Any answer is fine; a hang, a panic or silence is not.
        for i in 0..25 {
            let mut raw = vec![b'{'];
            let mut n = 0;
            for (prop, _) in &t.props {
                if rng.below(2) == 0 {
                    continue;
                }
                if n > 0 {
                    raw.push(b',');
                }
                raw.extend_from_slice(format!("{}:", json!(prop)).as_bytes());
                raw.extend(random_json(&mut rng, 0));
                n += 1;
            }
            if rng.below(4) == 0 {
                if n > 0 {
                    raw.push(b',');
                }
                raw.extend_from_slice(b"\"stranger\":");
                raw.extend(random_json(&mut rng, 0));
            }
            raw.push(b'}');
            let c = what(&format!(
                "random case {i} (seed {SEED:#x}): {}",
                String::from_utf8_lossy(&raw)
            ));
            let r = m.call_raw(tool, &raw, &c);
            answered(&r, &c);
            cases += 1;
        }
        m.still_works(&what("after its cases"));
    }
    assert!(cases > 300, "only {cases} cases ran");

    // An unknown tool is a JSON-RPC error naming the tools.
    let r = m.call("no_such_tool", &json!({}), "unknown tool");
    refused(&r, "unknown tool", &["run"]);
    m.still_works("end");
    m.finish(&value);
    for enc in encodings(&value) {
        assert!(!contains(&h.all_plain_files(), &enc));
    }
    h.ok(&["audit", "verify"]);
}

/// What a malformed frame must get.
enum Expect {
    /// A JSON-RPC error reply to this id.
    ErrorFor(Value),
    /// Nothing to correlate a reply with (no id, or not a request): a reply with a null id or
    /// none at all; the next request is still answered.
    NoIdNeeded,
    /// A JSON-RPC invalid-request error whose id is absent or null (the request's id cannot be
    /// carried, or there is none to carry).
    ErrorWithoutId,
}

#[test]
fn malformed_json_rpc_frames_get_an_error_or_nothing_and_the_server_keeps_answering() {
    let h = Home::new();
    let value = random_value();
    h.set("demo", "API_TOKEN", &value);
    let mut m = Mcp::start(&h);

    let deep_params = {
        let mut s = br#"{"jsonrpc":"2.0","id":901,"method":"tools/call","params":"#.to_vec();
        s.extend(nested("[", "]", ""));
        s.push(b'}');
        s
    };
    let deep_args = {
        let mut s =
            br#"{"jsonrpc":"2.0","id":902,"method":"tools/call","params":{"name":"run","arguments":"#
                .to_vec();
        s.extend(nested("{\"a\":", "}", "1"));
        s.extend_from_slice(b"}}");
        s
    };
    let oversized = {
        // Over the 16 MiB line limit, with the id up front.
        let mut s =
            br#"{"jsonrpc":"2.0","id":903,"method":"tools/call","params":{"name":"run","arguments":{"reason":""#
                .to_vec();
        s.extend(std::iter::repeat_n(b'x', 17 * 1024 * 1024));
        s.extend_from_slice(br#""}}}"#);
        s
    };
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("empty line", b"".to_vec(), Expect::NoIdNeeded),
        ("spaces", b"   \t ".to_vec(), Expect::NoIdNeeded),
        ("not JSON", b"GET / HTTP/1.1".to_vec(), Expect::NoIdNeeded),
        ("open brace", b"{".to_vec(), Expect::NoIdNeeded),
        ("null", b"null".to_vec(), Expect::NoIdNeeded),
        ("number", b"42".to_vec(), Expect::NoIdNeeded),
        // Issue 21, item 12: batches and ids beyond 64 bits got no answer at all.
        ("empty batch", b"[]".to_vec(), Expect::ErrorWithoutId),
        (
            "batch of one",
            br#"[{"jsonrpc":"2.0","id":800,"method":"ping"}]"#.to_vec(),
            Expect::ErrorFor(json!(800)),
        ),
        (
            "batch of two",
            br#"[{"jsonrpc":"2.0","id":801,"method":"ping"},{"jsonrpc":"2.0","id":"b-802","method":"tools/list"}]"#.to_vec(),
            Expect::ErrorFor(json!("b-802")),
        ),
        ("batch of garbage", b"[1,2,3]".to_vec(), Expect::ErrorWithoutId),
        (
            "an id of 2^64",
            br#"{"jsonrpc":"2.0","id":18446744073709551616,"method":"ping"}"#.to_vec(),
            Expect::ErrorWithoutId,
        ),
        (
            "an id of 2^63",
            br#"{"jsonrpc":"2.0","id":9223372036854775808,"method":"tools/list"}"#.to_vec(),
            Expect::ErrorWithoutId,
        ),
        ("object without anything", b"{}".to_vec(), Expect::NoIdNeeded),
        (
            "non-UTF-8 bytes",
            b"{\"jsonrpc\":\"2.0\",\"id\":\xff}".to_vec(),
            Expect::NoIdNeeded,
        ),
        (
            "notification of an unknown method",
            br#"{"jsonrpc":"2.0","method":"no/such/notification"}"#.to_vec(),
            Expect::NoIdNeeded,
        ),
        (
            "a response nobody asked for",
            br#"{"jsonrpc":"2.0","id":"stray","result":{}}"#.to_vec(),
            Expect::NoIdNeeded,
        ),
        (
            "unknown method",
            br#"{"jsonrpc":"2.0","id":101,"method":"no/such/method","params":{}}"#.to_vec(),
            Expect::ErrorFor(json!(101)),
        ),
        (
            "wrong jsonrpc version",
            br#"{"jsonrpc":"1.0","id":102,"method":"ping"}"#.to_vec(),
            Expect::ErrorFor(json!(102)),
        ),
        (
            "method of wrong type",
            br#"{"jsonrpc":"2.0","id":103,"method":5}"#.to_vec(),
            Expect::ErrorFor(json!(103)),
        ),
        (
            "tools/call without params",
            br#"{"jsonrpc":"2.0","id":104,"method":"tools/call"}"#.to_vec(),
            Expect::ErrorFor(json!(104)),
        ),
        (
            "params as a string",
            br#"{"jsonrpc":"2.0","id":105,"method":"tools/call","params":"run"}"#.to_vec(),
            Expect::ErrorFor(json!(105)),
        ),
        (
            "tool name of wrong type",
            br#"{"jsonrpc":"2.0","id":106,"method":"tools/call","params":{"name":["run"]}}"#
                .to_vec(),
            Expect::ErrorFor(json!(106)),
        ),
        (
            "string id, truncated frame",
            br#"{"jsonrpc":"2.0","id":"s-107","method":"tools/list","params":{"#.to_vec(),
            Expect::ErrorFor(json!("s-107")),
        ),
        (
            "huge number in params",
            br#"{"jsonrpc":"2.0","id":108,"method":"tools/call","params":{"name":"run","arguments":{"timeout_seconds":1e400}}}"#
                .to_vec(),
            Expect::ErrorFor(json!(108)),
        ),
        (
            "lone surrogate in params",
            br#"{"jsonrpc":"2.0","id":109,"method":"tools/call","params":{"name":"\ud800"}}"#
                .to_vec(),
            Expect::ErrorFor(json!(109)),
        ),
        (
            "invalid UTF-8 in a string",
            b"{\"jsonrpc\":\"2.0\",\"id\":110,\"method\":\"tools/call\",\"params\":{\"name\":\"r\xffn\"}}"
                .to_vec(),
            Expect::ErrorFor(json!(110)),
        ),
        (
            "duplicate id member",
            br#"{"jsonrpc":"2.0","id":111,"id":112,"method":"ping"}"#.to_vec(),
            Expect::NoIdNeeded,
        ),
        ("100k nested params", deep_params, Expect::ErrorFor(json!(901))),
        ("100k nested arguments", deep_args, Expect::ErrorFor(json!(902))),
        ("a 17 MiB line", oversized, Expect::ErrorFor(json!(903))),
    ];
    for (what, raw, expect) in cases {
        m.send(&raw);
        match expect {
            Expect::ErrorFor(id) => {
                let r = m.wait_for(&id, what);
                let msg = r["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    r["error"]["code"].is_i64() && !msg.is_empty(),
                    "{what}: expected a JSON-RPC error: {}",
                    clip(&r)
                );
                assert!(msg.len() < 4096, "{what}: a {} byte error", msg.len());
            }
            Expect::ErrorWithoutId => {
                let r = m.wait_for_error_without_id(what);
                let msg = r["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    r["error"]["code"] == json!(-32600) && !msg.is_empty(),
                    "{what}: expected an invalid-request error: {}",
                    clip(&r)
                );
            }
            Expect::NoIdNeeded => {}
        }
        m.still_answers(what);
    }

    // Pseudo-random frames: JSON-RPC-ish tokens and raw bytes (fixed seed).
    let tokens: [&[u8]; 16] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"\"jsonrpc\"",
        b"\"2.0\"",
        b"\"id\"",
        b"\"method\"",
        b"\"tools/call\"",
        b"\"params\"",
        b"null",
        b"7",
        b"\"\\ud800\"",
        b"\xff",
    ];
    let mut rng = Rng(SEED ^ 0xf7a3);
    for i in 0..300 {
        let mut raw = Vec::new();
        for _ in 0..rng.below(30) {
            if i % 3 == 0 {
                let b = rng.next() as u8;
                raw.push(if b == b'\n' { b' ' } else { b });
            } else {
                raw.extend_from_slice(tokens[rng.below(tokens.len())]);
            }
        }
        m.send(&raw);
        if i % 10 == 9 {
            m.still_answers(&format!("random frame {i} (seed {:#x})", SEED ^ 0xf7a3));
        }
    }
    m.still_works("after the frames");
    m.finish(&value);
    h.ok(&["audit", "verify"]);
}

/// The card matcher's oracle through MCP (`redteam_s9.rs`): `request_access` from `keyveil mcp`
/// (the agent's own process) with 2,000 candidate URLs, one of them the value. The card the
/// agent reads back masks none of them: the requester descends from no run, its strings are its
/// own and shown as given.
#[test]
fn an_mcp_request_with_planted_candidates_singles_none_out() {
    let h = Home::new();
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from_le_bytes(b) % 2_000;
    let url = |p: u16| format!("postgres://app:{p:04}@db.internal.example:5432/app");
    h.set("demo", "DATABASE_URL", &url(n));
    let mut command = vec!["echo".to_owned()];
    command.extend((0..2_000).map(url));
    let mut m = Mcp::start(&h);
    let r = m.call(
        "request_access",
        &json!({"environment": "demo", "command": command, "reason": "check"}),
        "request_access with candidates",
    );
    assert!(r["result"]["isError"] != json!(true), "{r}");
    let cards = text(&h.run(&["requests", "--json"]).stdout);
    let masked = cards.matches("[REDACTED:DATABASE_URL]").count();
    let shown = (0..2_000u16)
        .filter(|k| cards.contains(&format!(":{k:04}@db.internal")))
        .count();
    assert!(
        masked == 0 && shown == 2_000,
        "the card: {masked} masked, {shown} of 2000 candidates shown as given"
    );
}
