//! Issue 13, item 1: requester-chosen bytes are never matched against values.
//!
//! The attack: an agent puts candidate strings (fragments of a guessed value) in the argv and
//! reason of a request, denies its own request (no factor needed), and reads the request back
//! (audit, `requests`, `access_status`) to see which candidates were marked as a value. These
//! tests perform it over the raw socket and the CLI, and check that a fragment of a stored value
//! and a same-length string that is not one are stored and shown alike, verbatim.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;

use serde_json::{Value, json};

use crate::harness::{Home, text};

/// One raw exchange: a JSON request frame (4-byte big-endian length, tag 0, JSON), then reply
/// frames until a final one (output frames are skipped). Returns the final JSON reply.
pub fn raw(h: &Home, req: &Value) -> Value {
    let mut s = UnixStream::connect(h.path().join("run/broker.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let payload = serde_json::to_vec(req).unwrap();
    let mut f = u32::try_from(payload.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    f.push(0);
    f.extend_from_slice(&payload);
    s.write_all(&f).unwrap();
    loop {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        if body.first() != Some(&0) {
            continue;
        }
        let v: Value = serde_json::from_slice(&body[1..]).unwrap();
        let done = match v["kind"].as_str() {
            Some("pending") => v["final"] == true,
            Some("started") => false,
            _ => true,
        };
        if done {
            return v;
        }
    }
}

/// A claimed client, as a raw requester would send it.
pub fn client(name: &str) -> Value {
    json!({"kind": "mcp", "name": name, "version": "1", "pid": 1})
}

/// `request_access` over the raw socket; returns the request id and the reply.
fn request_access(h: &Home, env: &str, argv: &[String], reason: &str) -> (u64, Value) {
    let r = raw(
        h,
        &json!({"op": "request_access", "client": client("prober"), "environment": env,
                "variables": null, "argv": argv, "pass_env": [], "cwd": "/tmp",
                "ttl_seconds": null, "reason": reason}),
    );
    assert_eq!(r["kind"], "ok", "{r}");
    (r["data"]["request_id"].as_u64().unwrap(), r)
}

/// `run` over the raw socket without waiting: a pending request; returns its id and the reply.
fn run_pending(h: &Home, env: &str, argv: &[String], reason: &str) -> (u64, Value) {
    let r = raw(
        h,
        &json!({"op": "run", "client": client("prober"), "environment": env,
                "variables": null, "argv": argv, "cwd": "/tmp", "env": [], "pass_env": [],
                "stdin": null, "timeout_seconds": 5, "reason": reason, "ttl_seconds": null,
                "wait_seconds": 0, "output": {"mode": "collect", "cap_bytes": 1024}}),
    );
    assert_eq!(r["kind"], "pending", "{r}");
    (r["request_id"].as_u64().unwrap(), r)
}

fn deny(h: &Home, id: u64) -> Value {
    let r = raw(h, &json!({"op": "deny", "request_id": id, "reason": null}));
    assert_eq!(r["kind"], "ok", "{r}");
    r
}

fn pending_requests(h: &Home) -> Vec<Value> {
    let r = raw(h, &json!({"op": "requests"}));
    assert_eq!(r["kind"], "ok", "{r}");
    r["data"]["requests"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn access_status(h: &Home, id: u64) -> Value {
    let r = raw(h, &json!({"op": "access_status", "request_id": id}));
    assert_eq!(r["kind"], "ok", "{r}");
    r["data"].clone()
}

/// The audit entries over the raw socket (what MCP `audit_log` reads).
fn audit_entries(h: &Home) -> Vec<Value> {
    let r = raw(h, &json!({"op": "audit", "limit": 10_000}));
    assert_eq!(r["kind"], "ok", "{r}");
    match &r["data"] {
        Value::Array(a) => a.clone(),
        other => other["entries"].as_array().cloned().unwrap_or_default(),
    }
}

/// The `request` audit entry of a request id.
fn request_entry(entries: &[Value], id: u64) -> Value {
    entries
        .iter()
        .find(|e| e["event"] == "request" && e["request_id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no request entry for #{id} in {entries:?}"))
}

/// A value's forms an agent would try: fragments (12 bytes and longer), the whole, hex, base64.
fn probes(value: &str) -> Vec<String> {
    use base64::Engine as _;
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        value[..12].to_owned(),
        value[4..20].to_owned(),
        value[value.len() - 12..].to_owned(),
        value.to_owned(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(value),
    ]
}

/// Random alphanumeric text from /dev/urandom (the tests' values: never a real secret).
pub fn random_alnum(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b.iter()
        .map(|x| char::from(A[usize::from(*x) % A.len()]))
        .collect()
}

/// Replaces each candidate by a placeholder of its position, in every string of a JSON value,
/// and drops what differs between any two requests (ids, times, the chain).
fn normalise(v: &Value, candidates: &[String]) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            // Longest first, so a candidate inside another is not replaced piecemeal.
            let mut order: Vec<(usize, &String)> = candidates.iter().enumerate().collect();
            order.sort_by_key(|(_, c)| std::cmp::Reverse(c.len()));
            for (i, c) in order {
                if !c.is_empty() {
                    out = out.replace(c.as_str(), &format!("<candidate {i}>"));
                }
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| normalise(x, candidates)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "id" | "request_id"
                            | "seq"
                            | "ts"
                            | "prev"
                            | "mac"
                            | "created_at"
                            | "expires_at"
                            | "hint"
                    )
                })
                .map(|(k, x)| {
                    // `burst` counts requests, not their content: the second of a pair may
                    // cross the threshold the first did not.
                    if k == "risk" {
                        let flags: Vec<Value> = x
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|f| *f != "burst")
                            .cloned()
                            .collect();
                        (k.clone(), Value::Array(flags))
                    } else {
                        (k.clone(), normalise(x, candidates))
                    }
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Everything a requester can read about one request, before and after its denial.
struct View {
    /// The replies to the submission and to the denial.
    replies: Value,
    listed: Value,
    status: Value,
    entry: Value,
}

/// Submits argv (and the same candidates in the reason) the way `via` says, reads the request
/// back, denies it, reads it again.
fn probe(h: &Home, env: &str, argv: &[String], via_run: bool) -> View {
    let reason = format!("because {}", argv[1..].join(" "));
    let (id, submitted) = if via_run {
        run_pending(h, env, argv, &reason)
    } else {
        request_access(h, env, argv, &reason)
    };
    let listed = pending_requests(h)
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or(Value::Null);
    let pending = access_status(h, id);
    let denial = deny(h, id);
    let denied = access_status(h, id);
    let entry = request_entry(&audit_entries(h), id);
    View {
        replies: json!([submitted, denial]),
        listed,
        status: json!([pending, denied]),
        entry,
    }
}

fn assert_verbatim(view: &View, argv: &[String]) {
    for (what, v) in [("requests", &view.listed), ("audit entry", &view.entry)] {
        let shown: Vec<String> = v["argv"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no argv in {v}"))
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(shown, argv, "{what} does not hold argv as given: {v}");
        let reason = v["reason"].as_str().unwrap_or_default();
        for c in &argv[1..] {
            assert!(reason.contains(c.as_str()), "{what}: reason altered: {v}");
        }
        assert!(!v.to_string().contains("REDACTED"), "{what}: {v}");
    }
}

/// A string of the same length as `s` none of whose 12-byte windows occurs in `value` or in
/// its hex or base64 forms (so the redactor would mark nothing in it).
fn decoy(s: &str, value: &str) -> String {
    use base64::Engine as _;
    let hex: String = value.bytes().map(|b| format!("{b:02x}")).collect();
    let forms = [
        value.to_owned(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(value),
    ];
    loop {
        let d = random_alnum(s.len());
        let w = d.len().min(12);
        let clean = (0..=d.len() - w).all(|i| forms.iter().all(|f| !f.contains(&d[i..i + w])));
        if clean {
            return d;
        }
    }
}

#[test]
fn requester_strings_are_stored_as_given_and_never_say_what_matches_a_value() {
    let h = Home::new();
    let value = random_alnum(40);
    h.set("demo", "API_TOKEN", &value);
    // The whole value is masked on cards and in the audit where it is not guessable (G19):
    // confirming a whole guess of 80 bits or more tells nothing. Its parts and encodings are
    // never matched.
    let frags: Vec<String> = probes(&value).into_iter().filter(|p| p != &value).collect();
    let decoys: Vec<String> = frags.iter().map(|f| decoy(f, &value)).collect();
    let mut argv_frag = vec!["echo".to_owned()];
    argv_frag.extend(frags.iter().cloned());
    let mut argv_decoy = vec!["echo".to_owned()];
    argv_decoy.extend(decoys.iter().cloned());

    // Raw socket, both ops an agent can use without a grant (a different program for each: a
    // denied argv is remembered and refused for a while).
    for (via_run, prog) in [(false, "echo"), (true, "printf")] {
        let with = |argv: &[String]| {
            let mut a = argv.to_vec();
            a[0] = prog.to_owned();
            a
        };
        let (argv_frag, argv_decoy) = (with(&argv_frag), with(&argv_decoy));
        let a = probe(&h, "demo", &argv_frag, via_run);
        let b = probe(&h, "demo", &argv_decoy, via_run);
        assert_verbatim(&a, &argv_frag);
        assert_verbatim(&b, &argv_decoy);
        for (x, y, what) in [
            (&a.replies, &b.replies, "replies"),
            (&a.listed, &b.listed, "requests"),
            (&a.status, &b.status, "access_status"),
            (&a.entry, &b.entry, "audit entry"),
        ] {
            assert_eq!(
                normalise(x, &frags),
                normalise(y, &decoys),
                "{what} differs between a fragment of a value and a decoy (run: {via_run})"
            );
        }
    }

    // The CLI: `keyveil run --wait 0` (pending, exit 5), `deny`, then `requests --json` and
    // `audit --json`, as a shell-wielding agent would read them.
    let mut args = vec!["run", "--env", "demo", "--wait", "0", "--reason"];
    let reason = format!("try {}", frags[0]);
    args.push(&reason);
    args.push("--");
    let cli_argv: Vec<&str> = argv_frag.iter().map(String::as_str).collect();
    args.extend(&cli_argv);
    let o = h.run(&args);
    assert!(!o.status.success(), "ran without a grant");
    let listed = h.ok(&["requests", "--json"]);
    for f in &frags {
        assert!(listed.contains(f.as_str()), "`requests --json` lost {f}");
    }
    let id = h.wait_request();
    h.ok(&["deny", &id.to_string()]);
    let audit = h.ok(&["audit", "--json", "--limit", "1000"]);
    let line = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "request" && e["request_id"] == id)
        .unwrap_or_else(|| panic!("no request entry for #{id}: {audit}"));
    assert_eq!(line["argv"], json!(argv_frag), "{line}");
    assert_eq!(line["reason"], json!(reason), "{line}");
    let human = h.ok(&["audit", "--limit", "1000"]);
    assert!(!human.contains("REDACTED"), "{human}");
    assert!(!audit.contains("REDACTED"), "{audit}");
    assert!(!h.audit_text().contains("REDACTED"));
}

/// For random values and random candidate lists, everything a requester can read about its
/// request (listing, `access_status`, the audit entry) is the same, candidate text aside,
/// whether the candidates are fragments of a stored value or same-length strings that are not.
/// One broker serves every case (each case adds an environment), so it stays cheap for CI.
#[test]
fn nothing_a_requester_reads_depends_on_whether_a_candidate_is_a_value() {
    use proptest::test_runner::{Config, TestRunner};
    let h = Home::new();
    let n = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        "[A-Za-z0-9_-]{12,48}",
        proptest::collection::vec((0usize..48, 12usize..49), 1..5),
        any::<bool>(),
    );
    let result = runner.run(&strategy, |(value, picks, via_run)| {
        n.set(n.get() + 1);
        let env = format!("p{}", n.get());
        h.ok(&["env", "create", &env]);
        h.set(&env, "SECRET", &value);
        // Candidates: fragments of at least 12 bytes (what the redactor would mark); decoys of
        // the same lengths that are no fragment of it.
        let mut frags: Vec<String> = picks
            .iter()
            .map(|(start, len)| {
                let s = start % (value.len() - 11);
                let l = (*len).min(value.len() - s).max(12);
                value[s..s + l].to_owned()
            })
            .collect();
        // Not the whole value: it is masked on cards and in the audit where it is not guessable
        // (G19; a whole guess of 80 bits or more tells nothing). Parts are never matched.
        frags.retain(|f| f != &value);
        proptest::prop_assume!(!frags.is_empty());
        frags.sort();
        frags.dedup();
        let decoys: Vec<String> = frags.iter().map(|f| decoy(f, &value)).collect();
        let mut argv_frag = vec!["true".to_owned()];
        argv_frag.extend(frags.iter().cloned());
        let mut argv_decoy = vec!["true".to_owned()];
        argv_decoy.extend(decoys.iter().cloned());
        let a = probe(&h, &env, &argv_frag, via_run);
        let b = probe(&h, &env, &argv_decoy, via_run);
        prop_assert_eq!(
            normalise(&a.replies, &frags),
            normalise(&b.replies, &decoys)
        );
        prop_assert_eq!(normalise(&a.listed, &frags), normalise(&b.listed, &decoys));
        prop_assert_eq!(normalise(&a.status, &frags), normalise(&b.status, &decoys));
        prop_assert_eq!(normalise(&a.entry, &frags), normalise(&b.entry, &decoys));
        prop_assert!(
            !a.entry.to_string().contains("REDACTED"),
            "{}",
            text(a.entry.to_string().as_bytes())
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
