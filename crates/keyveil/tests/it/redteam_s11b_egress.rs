//! Red team, session 11b, of issue 18's headers-only default (`docs/egress.md`, "Where in a
//! request the value goes"): with `API_TOKEN` bound to the API for headers only, the approved
//! child (written by the agent, holding the placeholder) tries to get the value into the URL
//! (raw, percent-encoded, absolute-form), a request trailer or a GET body, to have it swapped
//! from a placeholder split over two headers, to read it back from informational (103),
//! switching (101), 304 and empty encoded answers, and from a non-credential header the API
//! echoes, whole or in `Range` pieces.
//!
//! What the child gets back is kept XOR-masked and hex-encoded (neither the output redactor nor
//! the write-side scan knows that encoding); the test unmasks it and looks for the value.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use super::egress::{
    Seen, authorization, bound_home, fresh_value, read_chunked, read_head, tls_server,
};
use super::harness::*;
use super::redteam_s11_egress::{header, holds_value, range};

/// An HTTPS API on 127.0.0.1 (leaf for `localhost`, HTTP/1.1, one request per connection) that
/// records each request (head and body) and answers: `/note` with the Authorization and
/// `X-Note` headers it got (honouring `Range`), `/early` with a 103 whose `Link` echoes the
/// key, `/ws` with a 101 and the key in the switched bytes, `/nm` with a 304 and `/emptygz`
/// with an empty gzip answer, each echoing the key in a header; anything else with `ok`.
fn api() -> (u16, String, Seen) {
    let (ca_pem, config) = tls_server(&[]);
    let config = Arc::new(config);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (config, seen) = (config.clone(), seen2.clone());
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let head = read_head(&mut tls);
                if head.is_empty() {
                    return;
                }
                let body = if header(&head, "transfer-encoding").contains("chunked") {
                    read_chunked(&mut tls)
                } else {
                    let len: usize = header(&head, "content-length").parse().unwrap_or(0);
                    let mut body = vec![0u8; len];
                    let _ = tls.read_exact(&mut body);
                    body
                };
                seen.lock()
                    .unwrap()
                    .push(format!("{head}{}", String::from_utf8_lossy(&body)));
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let auth = authorization(&head);
                let mut out = Vec::new();
                match path.as_str() {
                    "/note" => {
                        let mut data =
                            format!("ECHO:{auth}|NOTE:{}", header(&head, "x-note")).into_bytes();
                        let mut status = "200 OK";
                        if let Some(part) = range(&data, &header(&head, "range")) {
                            status = "206 Partial Content";
                            data = part;
                        }
                        let _ = write!(
                            out,
                            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            data.len()
                        );
                        out.extend_from_slice(&data);
                    }
                    "/upper" => {
                        let data = format!("ECHO:{}", auth.to_uppercase());
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{data}",
                            data.len()
                        );
                    }
                    "/early" => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 103 Early Hints\r\nLink: <{auth}>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        );
                    }
                    "/ws" => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nECHO:{auth}"
                        );
                    }
                    "/nm" => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 304 Not Modified\r\nContent-Encoding: gzip\r\nX-Echo: {auth}\r\nConnection: close\r\n\r\n"
                        );
                    }
                    "/emptygz" => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\nX-Echo: {auth}\r\nConnection: close\r\n\r\n"
                        );
                    }
                    _ => {
                        out.extend_from_slice(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        );
                    }
                }
                let _ = tls.write_all(&out);
                let _ = tls.flush();
                tls.conn.send_close_notify();
                let _ = tls.flush();
            });
        }
    });
    (port, ca_pem, seen)
}

/// The approved child: each attempt on its own connection through the run's proxy, what it
/// gets back (raw bytes) kept in `NAME.x`, masked.
const CHILD: &str = r#"
import os, socket, ssl
p = os.environ["HTTPS_PROXY"].removeprefix("http://").split(":")
ph = os.environ["API_TOKEN"]
api = "localhost:@API@"
open("ph.txt", "w").write(ph)

def keep(name, data):
    open(name + ".x", "w").write(bytes(b ^ 0x55 for b in data).hex())

def attempt(name, req):
    try:
        s = socket.create_connection((p[0], int(p[1])), timeout=15)
        s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (api, api)).encode())
        r = b""
        while b"\r\n\r\n" not in r:
            c = s.recv(1)
            if not c:
                break
            r += c
        ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
        ctx.set_alpn_protocols(["http/1.1"])
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.sendall(req.encode())
        out = b""
        try:
            while True:
                c = t.recv(4096)
                if not c:
                    break
                out += c
        except Exception:
            pass
        keep(name, out)
        print(name, out.split(b"\r\n")[0].decode(errors="replace"), flush=True)
    except Exception as e:
        print(name, "error", type(e).__name__, flush=True)

auth = "Authorization: Bearer " + ph + "\r\n"
host = "Host: " + api + "\r\n"
close = "Connection: close\r\n\r\n"
# The URL: raw in the query, its first byte percent-encoded, and in an absolute-form target.
attempt("url", "GET /u?k=" + ph + " HTTP/1.1\r\n" + host + auth + close)
attempt("pct", "GET /pct?k=%%%02X" % ord(ph[0]) + ph[1:] + " HTTP/1.1\r\n" + host + auth + close)
attempt("absform", "GET https://" + api + "/a/" + ph + " HTTP/1.1\r\n" + host + auth + close)
# The placeholder split over two headers.
half = len(ph) // 2
attempt("split", "GET /split HTTP/1.1\r\n" + host + "X-A: " + ph[:half] + "\r\nX-B: " + ph[half:] + "\r\n" + close)
# A request trailer declared in `Trailer:`, and a body in a GET.
attempt("trailer", "POST /trailer HTTP/1.1\r\n" + host + auth + "Transfer-Encoding: chunked\r\nTrailer: X-K\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\nX-K: " + ph + "\r\n\r\n")
attempt("getbody", "GET /getbody HTTP/1.1\r\n" + host + auth + "Content-Length: %d\r\n" % len(ph) + close + ph)
# Echoes in a 103's headers, after a 101, in a 304 and an empty gzip answer's headers.
for n in ["early", "ws", "nm", "emptygz"]:
    extra = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: Upgrade\r\n\r\n" if n == "ws" else close
    attempt(n, "GET /" + n + " HTTP/1.1\r\n" + host + auth + extra)
# A non-credential header the API echoes: whole, then in two Range pieces cut inside the value.
attempt("note", "GET /note HTTP/1.1\r\n" + host + auth + "X-Note: " + ph + "\r\n" + close)
# The same header carrying an HTTP Basic credential around the placeholder: the proxy's
# Basic swap would base64-encode the value into it, and the echo would come back encoded.
import base64
attempt("basicnote", "GET /note HTTP/1.1\r\n" + host + "X-Note: Basic " + base64.b64encode(("u:" + ph).encode()).decode() + "\r\n" + close)
cut = len("ECHO:Bearer ") + half
attempt("note0", "GET /note HTTP/1.1\r\n" + host + auth + "Range: bytes=0-%d\r\n" % (cut - 1) + close)
attempt("note1", "GET /note HTTP/1.1\r\n" + host + auth + "Range: bytes=%d-\r\n" % cut + close)
# An API that echoes the key upper-cased.
attempt("upper", "GET /upper HTTP/1.1\r\n" + host + auth + close)
# HTTP/2 from the child (curl): the placeholder in `:path`, and in a header the API echoes.
import subprocess
def curl(name, path, *args):
    r = subprocess.run(["curl", "-s", "--http2", "--suppress-connect-headers", "--cacert", os.environ["SSL_CERT_FILE"], "-D", "-", "-H", "Authorization: Bearer " + ph, *args, "https://" + api + path], capture_output=True, timeout=20)
    keep(name, r.stdout)
    print(name, r.stdout.split(b"\r\n")[0].decode(errors="replace"), flush=True)
curl("h2path", "/h2/" + ph)
curl("h2note", "/note", "-H", "X-Note: " + ph)
# The port rule: `:authority` naming another port of the bound host (HTTP/2), and `Host`
# naming the bound port with a leading zero (HTTP/1.1: the same port, numerically).
curl("h2port", "/h2port", "-H", "Host: localhost:1")
attempt("zeroport", "GET /zeroport HTTP/1.1\r\nHost: localhost:0@API@\r\n" + auth + close)
print("done", flush=True)
"#;

struct Outcome {
    h: Home,
    value: String,
    placeholder: String,
    api_seen: Seen,
    out: String,
    err: String,
    work: tempfile::TempDir,
}

impl Outcome {
    /// What the child got back for attempt `name`, unmasked.
    fn got(&self, name: &str) -> Vec<u8> {
        let t =
            std::fs::read_to_string(self.work.path().join(format!("{name}.x"))).unwrap_or_default();
        hex::decode(t.trim())
            .unwrap_or_default()
            .into_iter()
            .map(|b| b ^ 0x55)
            .collect()
    }

    /// The status line the child printed for attempt `name`.
    fn line(&self, name: &str) -> String {
        self.out
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_owned()
    }

    /// The API's recorded requests whose request line starts with `line_start`.
    fn at(&self, line_start: &str) -> Vec<String> {
        self.api_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.starts_with(line_start))
            .cloned()
            .collect()
    }
}

/// One run of [`CHILD`] with `API_TOKEN` bound to the API for headers only (the default).
fn attack() -> Outcome {
    let value = fresh_value();
    let (api, ca_pem, api_seen) = api();
    let h = bound_home(api, &ca_pem, &value);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let script = CHILD.replace("@API@", &api.to_string());
    std::fs::write(work.path().join("child.py"), script).unwrap();
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--only",
            "API_TOKEN",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "python3",
            "child.py",
        ],
        Duration::from_secs(90),
    );
    let placeholder = std::fs::read_to_string(work.path().join("ph.txt")).unwrap_or_default();
    assert_eq!(placeholder.len(), value.len(), "{}", text(&o.stderr));
    assert_ne!(placeholder, value);
    let out = text(&o.stdout);
    assert!(out.contains("done"), "{out}\n{}", text(&o.stderr));
    Outcome {
        h,
        value,
        placeholder,
        api_seen,
        out,
        err: text(&o.stderr),
        work,
    }
}

/// The placeholder in the query is refused (403) and reported, in an absolute-form target too;
/// with its first byte percent-encoded it is not swapped (the API gets a placeholder, worth
/// nothing). No request line the API got holds the value.
#[test]
fn a_placeholder_in_the_url_of_a_headers_only_binding_never_becomes_the_value() {
    let o = attack();
    for r in o.api_seen.lock().unwrap().iter() {
        let line = r.lines().next().unwrap_or_default();
        assert!(!holds_value(line.as_bytes(), &o.value), "value in a URL");
    }
    assert!(o.line("url").contains(" 403"), "{}", o.out);
    assert!(o.line("absform").contains(" 403"), "{}", o.out);
    assert!(o.at("GET /u?").is_empty() && o.at("GET /a/").is_empty());
    assert_eq!(o.at("GET /pct").len(), 1, "{}", o.out);
    assert!(
        o.h.audit_text()
            .contains("sent in a URL; its binding covers headers only"),
        "not reported"
    );
}

/// A placeholder split over two headers is two strings that are not the placeholder: nothing
/// is swapped (and the halves put together at the host are the placeholder, not the value).
#[test]
fn a_placeholder_split_over_two_headers_is_not_swapped() {
    let o = attack();
    let split = o.at("GET /split");
    assert_eq!(split.len(), 1, "{}", o.out);
    let half = o.placeholder.len() / 2;
    assert_eq!(header(&split[0], "x-a"), o.placeholder[..half]);
    assert!(!holds_value(split[0].as_bytes(), &o.value));
    assert!(!holds_value(split[0].as_bytes(), &o.value[..half]));
}

/// Under headers only, a request trailer declared in `Trailer:` and a GET's body carrying the
/// placeholder are cut off and reported; the API never gets the value in a body or trailer.
#[test]
fn a_placeholder_in_a_request_trailer_or_a_get_body_of_a_headers_only_binding_is_blocked() {
    let o = attack();
    for r in o.api_seen.lock().unwrap().iter() {
        let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(!holds_value(body.as_bytes(), &o.value), "value in a body");
    }
    let audit = o.h.audit_text();
    assert!(
        audit.contains("sent in a trailer; its binding covers headers only (bind with --body)"),
        "trailer not reported: {}",
        o.out
    );
    assert!(
        audit.contains("sent in a body; its binding covers headers only (bind with --body)"),
        "GET body not reported: {}",
        o.out
    );
    assert!(!contains(audit.as_bytes(), &o.value));
    assert!(!contains(o.err.as_bytes(), &o.value));
}

/// Echoes in a 103's `Link`, in the bytes after a 101, and in the headers of a 304 or of an
/// empty gzip answer (no body to refuse): none reaches the child as the value.
#[test]
fn an_echo_in_1xx_101_304_or_an_empty_encoded_answer_does_not_reach_the_child() {
    let o = attack();
    for n in ["early", "ws", "nm", "emptygz"] {
        assert_eq!(o.at(&format!("GET /{n}")).len(), 1, "{n}: {}", o.out);
        assert!(
            !holds_value(&o.got(n), &o.value),
            "{n}: the child got the value ({})",
            o.line(n)
        );
    }
    // The headers of the 304 and the empty answer came back with the placeholder.
    for n in ["nm", "emptygz"] {
        assert!(contains(&o.got(n), &o.placeholder), "{n}: {}", o.line(n));
    }
}

/// By design (`docs/egress.md`): "headers" means every request header, not only credential
/// headers, so a placeholder in `X-Note` (or `Cookie`, `User-Agent`, `Referer`) becomes the
/// value at the bound host. An echo of it, whole, comes back as the placeholder.
#[test]
fn a_non_credential_header_gets_the_value_and_its_whole_echo_is_swapped_back() {
    let o = attack();
    let note = o.at("GET /note");
    assert!(
        note.iter().any(|r| header(r, "x-note") == o.value.as_str()),
        "the X-Note header was not swapped: {}",
        o.out
    );
    let got = o.got("note");
    assert!(!holds_value(&got, &o.value));
    assert!(contains(&got, &format!("NOTE:{}", o.placeholder)));
}

/// An API that echoes the key (an error page quoting the Authorization header) and honours
/// `Range`: two reads cut inside the value each carry a part of it, which the response swap
/// (whole value only) passes.
#[test]
#[ignore = "LIMIT (docs/egress.md, \"With --body or --url, ...\": a header the host echoes is the same case): under the default headers-only binding, an echo of the Authorization header read in two Range pieces cut inside the value reaches the child in two parts that the response swap does not recognise"]
fn an_echoed_header_cannot_be_read_back_in_range_pieces() {
    let o = attack();
    let bodies: Vec<u8> = [o.got("note0"), o.got("note1")]
        .iter()
        .flat_map(|r| {
            let i = r
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(r.len(), |i| i + 4);
            r[i..].to_vec()
        })
        .collect();
    assert!(
        !holds_value(&bodies, &o.value),
        "two Range reads of an echoed header give the child the value ({} / {})",
        o.line("note0"),
        o.line("note1")
    );
}

/// An HTTP/2 child (curl) puts the placeholder in `:path` (refused, 403, like HTTP/1.1's
/// request line) and in a header the API echoes (swapped in, echoed back as the placeholder).
#[test]
fn an_http2_child_gets_the_same_rules_for_path_and_headers() {
    let o = attack();
    assert!(
        o.line("h2path").starts_with("h2path HTTP/2 403"),
        "{}",
        o.out
    );
    assert!(o.at("GET /h2/").is_empty(), "{}", o.out);
    assert!(
        o.line("h2note").starts_with("h2note HTTP/2 200"),
        "{}",
        o.out
    );
    let got = o.got("h2note");
    assert!(!holds_value(&got, &o.value));
    assert!(contains(&got, &format!("NOTE:{}", o.placeholder)));
}

/// An API that echoes the key in another case (upper-cased here; a key in one case, as hex
/// keys are, comes back whole): the response swap looks for the value's exact bytes.
#[test]
#[ignore = "LIMIT (docs/egress.md: the response swap matches the whole value, byte for byte): an API that echoes the Authorization header upper-cased hands the child the value in upper case (its lower-case hex part recovered exactly by lower-casing)"]
fn an_echo_in_another_case_does_not_hand_the_value_to_the_child() {
    let o = attack();
    assert_eq!(o.at("GET /upper").len(), 1, "{}", o.out);
    assert!(
        !contains(&o.got("upper"), &o.value.to_uppercase()),
        "the upper-cased echo gives the child the value"
    );
}

/// The port rule: an HTTP/2 `:authority` naming another port of the bound host is refused;
/// `Host` with the bound port written with a leading zero names the same port and passes (not
/// another service). The `egress_request` entries list only what was swapped: none for the
/// split placeholder, `API_TOKEN` for the request whose Authorization carried it.
#[test]
fn the_port_rule_holds_over_http2_and_entries_list_only_swapped_variables() {
    let o = attack();
    assert!(
        o.line("h2port").starts_with("h2port HTTP/2 403"),
        "{}",
        o.out
    );
    assert!(o.at("GET /h2port").is_empty(), "{}", o.out);
    let zero = o.at("GET /zeroport");
    assert!(zero.len() <= 1, "{}", o.out);
    let entries: Vec<serde_json::Value> =
        o.h.audit_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["event"] == "egress_request")
            .collect();
    let vars = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| e["variables"].clone())
    };
    assert_eq!(vars("/split"), Some(serde_json::json!([])), "{entries:?}");
    assert_eq!(vars("/pct"), Some(serde_json::json!(["API_TOKEN"])));
}

/// A Basic credential around the placeholder in a header other than `Authorization`
/// (`X-Note: Basic base64(u:PLACEHOLDER)`), which the API echoes: the proxy swaps inside Basic
/// credentials of `Authorization` only, so the API gets the placeholder and the echo carries no
/// base64 form of the value (which the response swap would not recognise).
#[test]
fn a_basic_credential_in_an_echoed_non_authorization_header_is_not_swapped() {
    use base64::Engine as _;
    let o = attack();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(format!("u:{s}"));
    let seen = o.at("GET /note");
    assert!(
        seen.iter()
            .any(|r| header(r, "x-note") == format!("Basic {}", b64(&o.placeholder))),
        "{}",
        o.out
    );
    for r in &seen {
        assert!(
            !contains(r.as_bytes(), &b64(&o.value)),
            "the API got the value in base64"
        );
    }
    assert!(
        !contains(&o.got("basicnote"), &b64(&o.value)),
        "the child got the value in base64 from the echo"
    );
}
