//! The local web approval page, attacked the way an agent with a shell and curl would: no or
//! replayed link, no session, wrong Host (DNS rebinding), wrong Origin, no CSRF token, wrong
//! factor. Only the human's factor with every check passed lets the pending run go ahead.
//!
//! The HTTP client is a few lines over `std::net::TcpStream` (HTTP/1.1, `Connection: close`),
//! so each request says exactly which headers it sends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::*;

const TOKEN: &str = "tok_web_Zq8vN3kLp2XwR7yB";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'";

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The page's port and a one-time login path, from `keyveil approve --web --print`.
struct Page {
    port: u16,
}

impl Page {
    fn link(h: &Home) -> (Page, String) {
        let out = h.ok(&["approve", "--web", "--print"]);
        let url = out.trim();
        let rest = url
            .strip_prefix("http://127.0.0.1:")
            .unwrap_or_else(|| panic!("unexpected url {url:?}"));
        let (port, path) = rest.split_once('/').unwrap();
        (
            Page {
                port: port.parse().unwrap(),
            },
            format!("/{path}"),
        )
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends one request with exactly these headers (plus Content-Length for a body).
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        parse(&buf)
    }

    /// A GET as a browser on this page would send it.
    fn get(&self, path: &str, cookie: Option<&str>) -> Resp {
        let host = self.host();
        let mut h = vec![("Host", host.as_str())];
        if let Some(c) = cookie {
            h.push(("Cookie", c));
        }
        self.raw("GET", path, &h, "")
    }

    /// A POST as this page's own form would send it.
    fn post(&self, path: &str, cookie: &str, body: &str) -> Resp {
        let (host, origin) = (self.host(), self.origin());
        self.raw(
            "POST",
            path,
            &[("Host", &host), ("Origin", &origin), ("Cookie", cookie)],
            body,
        )
    }

    /// Logs in with a fresh link; returns the `Cookie` header value.
    fn login(h: &Home) -> (Page, String) {
        let (page, path) = Page::link(h);
        let r = page.get(&path, None);
        assert_eq!(r.status, 303, "{}", r.body);
        assert_eq!(r.header("location"), Some("/"));
        let set = r.header("set-cookie").unwrap().to_owned();
        assert!(set.contains("HttpOnly"), "{set}");
        assert!(set.contains("SameSite=Strict"), "{set}");
        assert!(set.contains("Path=/"), "{set}");
        let cookie = set.split(';').next().unwrap().trim().to_owned();
        (page, cookie)
    }

    fn csrf(&self, cookie: &str) -> String {
        let r = self.get("/", Some(cookie));
        assert_eq!(r.status, 200, "{}", r.body);
        let at = r
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &r.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

fn parse(buf: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

fn run_args(cmd: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--env", "demo", "--wait", "60", "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(cmd.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pending_ids(h: &Home) -> Vec<u64> {
    h.json(&["requests", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_u64())
        .collect()
}

#[test]
fn links_are_one_time_and_every_route_needs_the_session() {
    let h = Home::new();
    let (page, path) = Page::link(&h);
    // No token, a wrong token, a malformed token: refused.
    assert_eq!(page.get("/login", None).status, 403);
    assert_eq!(
        page.get(&format!("/login?token={}", "0".repeat(64)), None)
            .status,
        403
    );
    assert_eq!(page.get("/login?token=../../etc", None).status, 403);
    // The real one works once.
    let first = page.get(&path, None);
    assert_eq!(first.status, 303);
    let cookie = first
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let replay = page.get(&path, None);
    assert_eq!(
        replay.status, 403,
        "a replayed link must not open a session"
    );
    assert!(replay.header("set-cookie").is_none());
    // No session, or a made-up one: 401 everywhere that matters.
    for p in ["/", "/requests", "/events"] {
        assert_eq!(page.get(p, None).status, 401, "{p}");
        assert_eq!(
            page.get(
                p,
                Some(&format!(
                    "keyveil_session_{}={}",
                    page.port,
                    "ab".repeat(32)
                ))
            )
            .status,
            401,
            "{p}"
        );
    }
    let host = page.host();
    let origin = page.origin();
    let no_cookie = page.raw(
        "POST",
        "/approve",
        &[("Host", &host), ("Origin", &origin)],
        "request_id=1&factor=x&csrf=y",
    );
    assert_eq!(no_cookie.status, 401);
    // The session works.
    let ok = page.get("/", Some(&cookie));
    assert_eq!(ok.status, 200);
    assert!(ok.body.contains("No pending requests"), "{}", ok.body);
}

#[test]
fn wrong_host_origin_or_csrf_is_refused() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let child = h.spawn_run(&strs(&run_args(&["sh", "-c", "echo ok-$API_TOKEN"])));
    let id = h.wait_request();
    let (page, cookie) = Page::login(&h);
    let csrf = page.csrf(&cookie);
    let ids = id.to_string();
    let body = form(&[
        ("request_id", &ids),
        ("factor", PASS),
        ("duration", "once"),
        ("csrf", &csrf),
    ]);
    let port = page.port;
    let (host, origin) = (page.host(), page.origin());

    // DNS rebinding: the browser sends the attacker's name as Host, with our cookie... or not.
    for bad_host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1.evil.example:{port}"),
    ] {
        let r = page.raw("GET", "/", &[("Host", &bad_host), ("Cookie", &cookie)], "");
        assert_eq!(r.status, 403, "GET with Host {bad_host}");
        let r = page.raw(
            "POST",
            "/approve",
            &[
                ("Host", &bad_host),
                ("Origin", &origin),
                ("Cookie", &cookie),
            ],
            &body,
        );
        assert_eq!(r.status, 403, "POST with Host {bad_host}");
    }
    let r = page.raw("GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(r.status, 403, "no Host at all");

    // Another origin (a web page the human has open, or another server on 127.0.0.1).
    for bad_origin in [
        "http://evil.example".to_owned(),
        "null".to_owned(),
        format!("http://127.0.0.1:{}", port.wrapping_add(1)),
        format!("https://127.0.0.1:{port}"),
    ] {
        let r = page.raw(
            "POST",
            "/approve",
            &[
                ("Host", &host),
                ("Origin", &bad_origin),
                ("Cookie", &cookie),
            ],
            &body,
        );
        assert_eq!(r.status, 403, "POST with Origin {bad_origin}");
        let r = page.raw(
            "GET",
            "/requests",
            &[
                ("Host", &host),
                ("Origin", &bad_origin),
                ("Cookie", &cookie),
            ],
            "",
        );
        assert_eq!(r.status, 403, "GET with Origin {bad_origin}");
    }
    // A POST must say where it comes from: no Origin and no Referer is refused, a foreign
    // Referer too; fetch metadata from another site is refused.
    let r = page.raw(
        "POST",
        "/approve",
        &[("Host", &host), ("Cookie", &cookie)],
        &body,
    );
    assert_eq!(r.status, 403, "POST without Origin or Referer");
    let r = page.raw(
        "POST",
        "/approve",
        &[
            ("Host", &host),
            ("Referer", "http://evil.example/"),
            ("Cookie", &cookie),
        ],
        &body,
    );
    assert_eq!(r.status, 403, "POST with a foreign Referer");
    let r = page.raw(
        "POST",
        "/approve",
        &[
            ("Host", &host),
            ("Origin", &origin),
            ("Sec-Fetch-Site", "same-site"),
            ("Cookie", &cookie),
        ],
        &body,
    );
    assert_eq!(r.status, 403, "POST started by another port of 127.0.0.1");

    // CSRF token: missing, wrong, another session's.
    let no_csrf = form(&[("request_id", &ids), ("factor", PASS), ("duration", "once")]);
    assert_eq!(page.post("/approve", &cookie, &no_csrf).status, 403);
    let wrong = form(&[
        ("request_id", &ids),
        ("factor", PASS),
        ("duration", "once"),
        ("csrf", &"f".repeat(64)),
    ]);
    assert_eq!(page.post("/approve", &cookie, &wrong).status, 403);
    let (page2, cookie2) = Page::login(&h);
    assert_eq!(page2.port, page.port, "one server per broker");
    let other = page.csrf(&cookie2);
    assert_ne!(other, csrf);
    assert_eq!(
        page.post(
            "/approve",
            &cookie,
            &form(&[
                ("request_id", &ids),
                ("factor", PASS),
                ("duration", "once"),
                ("csrf", &other),
            ])
        )
        .status,
        403
    );
    assert_eq!(
        page.post("/deny", &cookie, &form(&[("request_id", &ids)]))
            .status,
        403
    );

    // None of that approved or denied anything.
    assert_eq!(pending_ids(&h), vec![id]);
    assert!(!h.audit_text().contains("\"approve\""));

    // Every response, refusals included, carries the hardening headers and no CORS.
    for r in [
        page.get("/", Some(&cookie)),
        page.get("/", None),
        page.raw("GET", "/", &[("Host", "evil.example")], ""),
        page.get("/static/app.js", None),
        page.raw(
            "OPTIONS",
            "/approve",
            &[("Host", &host), ("Origin", &origin)],
            "",
        ),
    ] {
        assert_eq!(r.header("content-security-policy"), Some(CSP));
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(r.header("referrer-policy").is_some());
        assert!(
            !r.headers
                .iter()
                .any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-")),
            "CORS header in {:?}",
            r.headers
        );
    }
    let page_html = page.get("/", Some(&cookie)).body;
    assert!(!page_html.contains("<script>"), "no inline script");
    for handler in ["onclick=", "onload=", "onsubmit=", "onerror="] {
        assert!(!page_html.contains(handler), "no inline event handler");
    }

    // Wrong factor: refused, audited, still pending.
    let bad = form(&[
        ("request_id", &ids),
        ("factor", "not the passphrase"),
        ("duration", "once"),
        ("csrf", &csrf),
    ]);
    let r = page.post("/approve", &cookie, &bad);
    assert_eq!(r.status, 303);
    let shown = page.get("/", Some(&cookie)).body;
    assert!(shown.contains("wrong passphrase"), "{shown}");
    assert!(
        !shown.contains("not the passphrase"),
        "the factor is never echoed"
    );
    assert!(h.audit_text().contains("factor_failed"));
    assert_eq!(pending_ids(&h), vec![id]);

    // The human: right factor, every check passed. The run goes ahead.
    let r = page.post("/approve", &cookie, &body);
    assert_eq!(r.status, 303);
    let shown = page.get("/", Some(&cookie)).body;
    assert!(
        shown.contains(&format!("Approved request #{id}")),
        "{shown}"
    );
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "ok-[REDACTED:API_TOKEN]");
    // Neither the factor nor the value is anywhere keyveil wrote in plain text.
    let files = h.all_plain_files();
    assert!(!contains(&files, PASS) && !contains(&files, TOKEN));
    assert!(h.audit_text().contains("web_login"));
}

#[test]
fn deny_from_the_page_and_live_events() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let (page, cookie) = Page::login(&h);
    // Subscribe to events before the request exists.
    let mut s = TcpStream::connect(("127.0.0.1", page.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n",
        page.host()
    )
    .unwrap();
    let child = h.spawn_run(&strs(&run_args(&["true"])));
    let id = h.wait_request();
    let mut seen = String::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while !seen.contains("event: changed") && t0.elapsed() < Duration::from_secs(10) {
        if let Ok(n) = s.read(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    assert!(seen.contains("event: changed"), "no change event: {seen}");
    // The fragment the script fetches lists the request.
    let frag = page.get("/requests", Some(&cookie));
    assert_eq!(frag.status, 200);
    assert!(frag.body.contains(&format!("data-request-id=\"{id}\"")));

    let csrf = page.csrf(&cookie);
    let ids = id.to_string();
    let r = page.post(
        "/deny",
        &cookie,
        &form(&[("request_id", &ids), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303);
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(3), "denied: {}", text(&o.stderr));
    assert!(
        page.get("/", Some(&cookie))
            .body
            .contains(&format!("Denied request #{id}"))
    );
}

/// Issue 21, item 8: an agent that posts wrong factors to the page (it can get a link over the
/// socket) or guesses TOTP codes from its shell must not lock the human out. The guesses are
/// counted and audited, TOTP guessing is locked, but the human's passphrase typed into the page
/// is still judged and, when right, approves (it used to be refused for 60 s, doubling to 17 h).
#[test]
fn wrong_factors_from_the_agent_never_refuse_the_humans_passphrase() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let secret = enroll(&h);
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "factor",
            "totp",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let child = h.spawn_run(&strs(&run_args(&["true"])));
    let id = h.wait_request();
    let ids = id.to_string();
    // The agent's TOTP guesses from a shell: six wrong codes lock TOTP.
    let valid: Vec<String> = (-1..=1).map(|o| totp_code(&secret, o)).collect();
    let guess = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|g| !valid.contains(g))
        .unwrap();
    let mut last = String::new();
    for _ in 0..6 {
        let o = h.run_stdin(&["approve", &ids, "--totp-stdin"], &format!("{guess}\n"));
        assert!(!o.status.success());
        last = text(&o.stderr);
    }
    assert!(
        last.contains("locked after"),
        "TOTP guessing was not limited: {last}"
    );
    assert!(
        last.contains("passphrase"),
        "the lock does not say the passphrase still works: {last}"
    );
    // The agent's wrong factors through the page.
    let (page, cookie) = Page::login(&h);
    let csrf = page.csrf(&cookie);
    for i in 0..5 {
        let guess = format!("guess number {i}");
        let r = page.post(
            "/approve",
            &cookie,
            &form(&[("request_id", &ids), ("factor", &guess), ("csrf", &csrf)]),
        );
        assert_eq!(r.status, 303);
    }
    assert_eq!(pending_ids(&h), vec![id]);
    // The human's passphrase, typed into the page, approves.
    let r = page.post(
        "/approve",
        &cookie,
        &form(&[("request_id", &ids), ("factor", PASS), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303);
    let shown = page.get("/", Some(&cookie)).body;
    assert!(
        shown.contains(&format!("Approved request #{id}")),
        "the human's right passphrase was refused: {shown}"
    );
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let audit = h.audit_text();
    assert!(audit.matches("factor_failed").count() >= 5, "{audit}");
    assert!(!audit.contains("guess number") && !audit.contains(PASS));
}

#[test]
fn agent_supplied_text_is_escaped_and_made_visible() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let argv = [
        "printf",
        "<script>alert(1)</script>",
        "\"><img src=x onerror=alert(1)>",
        "safe\u{202e}txt.exe",
        "\u{1b}[2J\u{1b}[1;1Hlooks clean",
        "zero\u{200b}width",
    ];
    let mut args = run_args(&argv);
    args.splice(
        5..5,
        ["--reason".to_owned(), "<b>trust me</b>\u{202e}".to_owned()],
    );
    let child = h.spawn_run(&strs(&args));
    let _id = h.wait_request();
    let (page, cookie) = Page::login(&h);
    let html = page.get("/", Some(&cookie)).body;
    for raw in [
        "<script>alert",
        "<img",
        "<b>trust",
        "\u{202e}",
        "\u{1b}",
        "\u{200b}",
    ] {
        assert!(!html.contains(raw), "raw {raw:?} on the page");
    }
    assert!(
        html.contains("\\u{202e}"),
        "bidi override shown as an escape"
    );
    assert!(
        html.contains("\\u{1b}[2J"),
        "ANSI escape shown as an escape"
    );
    assert!(
        html.contains("\\u{200b}"),
        "zero-width space shown as an escape"
    );
    assert!(html.contains("script&#62;alert") || html.contains("script&gt;alert"));
    assert!(html.contains("The requester says (unverified)"));
    // One argv element per line, in order, none truncated.
    let at = |needle: &str| {
        html.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing"))
    };
    assert!(at("printf") < at("alert(1)") && at("alert(1)") < at("looks clean"));
    assert_eq!(html.matches("class=\"arg\"").count(), argv.len());
    let _ = h.ok(&["deny", &pending_ids(&h)[0].to_string()]);
    let _ = wait_output(child, Duration::from_secs(30));
}

#[test]
fn a_totp_code_typed_in_the_page_approves_once() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let secret = enroll(&h);
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "factor",
            "totp",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));

    let child = h.spawn_run(&strs(&run_args(&["sh", "-c", "echo ok-$API_TOKEN"])));
    let id = h.wait_request();
    let (page, cookie) = Page::login(&h);
    let csrf = page.csrf(&cookie);
    let ids = id.to_string();
    let code = totp_code(&secret, 1);
    let r = page.post(
        "/approve",
        &cookie,
        &form(&[("request_id", &ids), ("factor", &code), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303);
    let shown = page.get("/", Some(&cookie)).body;
    assert!(
        shown.contains(&format!("Approved request #{id}")),
        "{shown}"
    );
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "ok-[REDACTED:API_TOKEN]");

    // The same code again, for a new request: a replay, refused.
    let child = h.spawn_run(&strs(&run_args(&["sh", "-c", "echo again-$API_TOKEN"])));
    let id2 = h.wait_request();
    let ids2 = id2.to_string();
    let r = page.post(
        "/approve",
        &cookie,
        &form(&[("request_id", &ids2), ("factor", &code), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303);
    let shown = page.get("/", Some(&cookie)).body;
    assert!(
        !shown.contains(&format!("Approved request #{id2}")),
        "{shown}"
    );
    assert!(shown.contains("flash-err"), "{shown}");
    assert_eq!(pending_ids(&h), vec![id2]);
    let _ = h.ok(&["deny", &ids2]);
    let _ = wait_output(child, Duration::from_secs(30));
}

/// Issue 17, item 9: the page lists live grants, each with a revoke button; revoking needs the
/// session and its CSRF token (like deny, it only takes access away), ends the grant and stops
/// what runs under it.
#[test]
fn the_page_lists_live_grants_and_revokes_one() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let child = h.spawn_run(&strs(&run_args(&["sleep", "60"])));
    let id = h.wait_request();
    let a = h.approve(id, &["--ttl", "30m"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    // Revoked before the CLI starts its run, the run would ask again instead of being stopped.
    h.wait_live_runs(1);
    let gid = h.json(&["grants", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (page, cookie) = Page::login(&h);
    let r = page.get("/", Some(&cookie));
    assert_eq!(r.status, 200);
    assert!(
        r.body.contains(&format!("data-grant-id=\"{gid}\"")),
        "{}",
        r.body
    );
    assert!(
        r.body.contains("&#34;sleep&#34; &#34;60&#34;"),
        "{}",
        r.body
    );
    let csrf = page.csrf(&cookie);
    // Without the CSRF token, or from another origin: refused, the grant stays.
    let r = page.post("/revoke", &cookie, &form(&[("grant_id", &gid)]));
    assert_eq!(r.status, 403);
    let host = page.host();
    let r = page.raw(
        "POST",
        "/revoke",
        &[
            ("Host", &host),
            ("Origin", "http://evil.example"),
            ("Cookie", &cookie),
        ],
        &form(&[("grant_id", &gid), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 403);
    assert_eq!(
        h.json(&["grants", "--json"]).as_array().map(Vec::len),
        Some(1)
    );
    let r = page.post(
        "/revoke",
        &cookie,
        &form(&[("grant_id", &gid), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let after = page.get("/", Some(&cookie)).body;
    assert!(after.contains(&format!("Revoked grant {gid}")), "{after}");
    assert!(after.contains("No live grants."), "{after}");
    let o = wait_output(child, Duration::from_secs(30));
    assert!(
        !o.status.success(),
        "the run under the revoked grant went on"
    );
}

/// The broker's peak resident memory (`VmHWM`), in KiB.
fn peak_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// An agent that floods the page with wrong passphrases at once cannot run the broker out of
/// memory: each guess costs one Argon2id derivation (19 MiB in tests, 64 MiB by default), and
/// only a few run together. The human's passphrase, sent after the flood, is still judged.
#[test]
fn parallel_wrong_passphrases_cannot_exhaust_the_brokers_memory() {
    const GUESSES: usize = 24;
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let child = h.spawn_run(&strs(&run_args(&["true"])));
    let id = h.wait_request();
    let ids = id.to_string();
    let (page, cookie) = Page::login(&h);
    let csrf = page.csrf(&cookie);
    let pid: i32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = peak_kib(pid);
    std::thread::scope(|s| {
        for i in 0..GUESSES {
            let (page, cookie, csrf, ids) = (&page, &cookie, &csrf, &ids);
            s.spawn(move || {
                let guess = format!("parallel guess {i}");
                let r = page.post(
                    "/approve",
                    cookie,
                    &form(&[("request_id", ids), ("factor", &guess), ("csrf", csrf)]),
                );
                assert_eq!(r.status, 303);
            });
        }
    });
    let grown = peak_kib(pid).saturating_sub(before);
    // Unbounded, 24 derivations at once would add about 24 × 19 MiB = 456 MiB; at most four run
    // together, on threads that reuse their Argon2id memory (measured: +19 MiB; 240 MiB before).
    assert!(
        grown < 8 * 19_456,
        "the broker's peak memory grew by {grown} KiB under {GUESSES} parallel guesses"
    );
    assert_eq!(pending_ids(&h), vec![id]);
    let r = page.post(
        "/approve",
        &cookie,
        &form(&[("request_id", &ids), ("factor", PASS), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303);
    let out = wait_output(child, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The value of the first `name="NAME" value="..."` field on a page.
fn field(body: &str, name: &str) -> String {
    let key = format!("name=\"{name}\" value=\"");
    let at = body.find(&key).unwrap_or_else(|| panic!("no {name} field"));
    let rest = &body[at + key.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Issue 17, item 7: with hidden names, a page session alone (which the agent can open with its
/// own link) shows aliases; a wrong factor, no session or a forged cookie reveal nothing; the
/// human's factor opens a new session whose cards and grants name the variables (escaped as
/// everything else), and approving from it still binds the card the broker sent (aliases).
#[test]
fn hidden_names_on_the_page_need_a_session_opened_by_the_factor() {
    const REAL: &str = "PAYROLL_BANK_TOKEN";
    let h = Home::new();
    h.set("demo", REAL, TOKEN);
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
    let alias = h.json(&["env", "show", "demo", "--json"])["variables"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    // A live grant (for the grants view), then a pending request.
    let first = h.spawn_run(&strs(&run_args(&["echo", "one"])));
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "30m"]).status.success());
    assert!(wait_output(first, Duration::from_secs(30)).status.success());
    let child = h.spawn_run(&strs(&run_args(&["echo", "two"])));
    let id = h.wait_request();

    // The agent's view: its own link and session, the fragment, a wrong factor.
    let (page, cookie) = Page::login(&h);
    let body = page.get("/", Some(&cookie)).body;
    assert!(body.contains(&alias) && !body.contains(REAL), "{body}");
    assert!(
        body.contains("action=\"/reveal\""),
        "no reveal form: {body}"
    );
    let csrf = page.csrf(&cookie);
    for wrong in ["a guessed passphrase", "123456"] {
        let r = page.post(
            "/reveal",
            &cookie,
            &form(&[("factor", wrong), ("csrf", &csrf)]),
        );
        assert_eq!(r.status, 303);
        assert!(
            r.header("set-cookie").is_none(),
            "a wrong factor got a cookie"
        );
        let body = page.get("/", Some(&cookie)).body;
        assert!(!body.contains(REAL) && body.contains("flash-err"), "{body}");
    }
    // No session, a forged cookie, no CSRF token: refused before any factor is checked.
    let r = page.raw(
        "POST",
        "/reveal",
        &[("Host", &page.host()), ("Origin", &page.origin())],
        &form(&[("factor", PASS)]),
    );
    assert_eq!(r.status, 401);
    // A forged cookie: the session's own with its last hex digit changed.
    let last = if cookie.ends_with('0') { "1" } else { "0" };
    let forged = format!("{}{last}", &cookie[..cookie.len() - 1]);
    assert_eq!(page.get("/", Some(&forged)).status, 401);
    let r = page.post(
        "/reveal",
        &forged,
        &form(&[("factor", PASS), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 401);
    let r = page.post("/reveal", &cookie, &form(&[("factor", PASS)]));
    assert_eq!(r.status, 403);

    // The human's factor: a new session that names the variables.
    let r = page.post(
        "/reveal",
        &cookie,
        &form(&[("factor", PASS), ("csrf", &csrf)]),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.header("set-cookie").expect("a new session").to_owned();
    let human = set.split(';').next().unwrap().trim().to_owned();
    assert_ne!(human, cookie);
    let body = page.get("/", Some(&human)).body;
    assert!(body.contains("Real variable names are shown"), "{body}");
    assert!(
        body.contains(&format!("<code class=\"var\">{REAL}</code>")),
        "the card does not name the variable: {body}"
    );
    assert!(
        body.contains(&format!("· {REAL} ·")),
        "the grant does not name the variable: {body}"
    );
    assert!(!body.contains("action=\"/reveal\""));
    assert!(page.get("/requests", Some(&human)).body.contains(REAL));
    // The old cookie (the agent's) still shows aliases; so does every client of the socket.
    let body = page.get("/", Some(&cookie)).body;
    assert!(!body.contains(REAL), "{body}");
    assert!(!page.get("/requests", Some(&cookie)).body.contains(REAL));
    for args in [["requests", "--json"], ["grants", "--json"]] {
        assert!(!h.ok(&args).contains(REAL));
    }
    // Approving from the revealed page binds the card the broker sent.
    let body = page.get("/", Some(&human)).body;
    let (card, csrf2) = (field(&body, "card"), field(&body, "csrf"));
    let ids = id.to_string();
    let r = page.post(
        "/approve",
        &human,
        &form(&[
            ("request_id", &ids),
            ("card", &card),
            ("factor", PASS),
            ("csrf", &csrf2),
        ]),
    );
    assert_eq!(r.status, 303);
    let shown = page.get("/", Some(&human)).body;
    assert!(
        shown.contains(&format!("Approved request #{id}")),
        "{shown}"
    );
    assert!(wait_output(child, Duration::from_secs(30)).status.success());
    // Locking ends the revealed session with every other.
    h.ok(&["lock"]);
    assert_eq!(page.get("/", Some(&human)).status, 401);
    let audit = h.audit_text();
    assert!(audit.contains("\"web_reveal\""));
}

/// Issue 17, item 5 on the page: while the vault is locked, the page cannot unlock it (the
/// passphrase goes only to a broker the CLI starts itself). It says which asks wait and sends the
/// human to `keyveil approve ID` (one passphrase entry unlocks and approves, `locked.rs`); a
/// passphrase posted to it unlocks and grants nothing.
#[test]
fn a_locked_vault_sends_the_page_to_the_terminal() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    h.ok(&["lock"]);
    let mut child = h.spawn_run(&strs(&run_args(&["true"])));
    let t0 = Instant::now();
    let id = loop {
        let s = h.json(&["status", "--json"]);
        if let Some(id) = s["locked_asks"][0]["id"].as_u64() {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no ask: {s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (page, cookie) = Page::login(&h);
    let r = page.get("/", Some(&cookie));
    assert_eq!(r.status, 200);
    assert!(r.body.contains("The vault is locked"), "{}", r.body);
    assert!(
        r.body.contains(&format!("keyveil approve {id}")),
        "{}",
        r.body
    );
    assert!(
        !r.body.contains("name=\"factor\""),
        "a factor field: {}",
        r.body
    );
    // A passphrase posted anyway (by hand, or by an old form) unlocks and grants nothing.
    let csrf = "0".repeat(64);
    let ids = id.to_string();
    let r = page.post(
        "/approve",
        &cookie,
        &form(&[("request_id", &ids), ("factor", PASS), ("csrf", &csrf)]),
    );
    assert!(r.status == 303 || r.status == 403, "{}", r.status);
    let s = h.json(&["status", "--json"]);
    assert_eq!(s["locked"], true, "{s}");
    assert_eq!(s["live_grants"], 0, "{s}");
    let _ = child.kill();
    let _ = child.wait();
}
