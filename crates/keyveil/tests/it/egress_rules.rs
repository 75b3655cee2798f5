//! Issue 18's remaining rules of the egress proxy (`docs/egress.md`): a request through an
//! intercepted tunnel must name the tunnel's host **and port**; an `egress_request` entry lists
//! only the variables swapped into that request; and the run's end, a revoke and `lock` close
//! every proxy session at once, even one a process outside the run holds (a descriptor the run
//! passed it). Every test searches what the agent can read for the value and its forms.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use super::egress::{Seen, https_api};
use super::harness::*;

/// A value made at test time, shaped like an API key (public prefix `sk-proj-`).
fn fresh_value() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).unwrap();
    format!("sk-proj-{}", hex::encode(b))
}

fn policy(h: &Home, args: &[&str]) {
    let mut all = vec!["policy", "set", "demo"];
    all.extend_from_slice(args);
    all.push("--passphrase-stdin");
    let o = h.run_stdin(&all, &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// The `egress_request` and `egress_blocked` entries of the home's audit log, parsed.
fn egress_entries(h: &Home, event: &str) -> Vec<serde_json::Value> {
    h.audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == event)
        .collect()
}

/// Nothing the agent can read (the run's output, the audit, every file of the home: logs,
/// the runs' private files) holds a form of any of `values`; the audit holds no placeholder.
fn nowhere(h: &Home, out: &[&[u8]], values: &[&str], placeholders: &[&str]) {
    let files = h.all_plain_files();
    let audit = h.audit_text();
    for v in values {
        for enc in encodings(v) {
            assert!(!contains(&files, &enc), "a form of a value is in the home");
            for o in out {
                assert!(
                    !contains(o, &enc),
                    "a form of a value is in the run's output"
                );
            }
        }
    }
    for p in placeholders {
        assert!(
            !p.is_empty() && !audit.contains(p),
            "a placeholder is in the audit"
        );
    }
}

fn requests_to(seen: &Seen, path: &str) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|h| h.contains(&format!(" {path} ")) || h.contains(&format!(" {path}?")))
        .cloned()
        .collect()
}

/// A binding names `host[:port]` (443 when none): a request through the tunnel to
/// `localhost:A` that names `localhost:B` in `Host` or `:authority` (B another bound port, or
/// one bound to nothing) or `localhost` alone (port 443) is blocked before any upstream sees
/// it and is reported; the same request naming `localhost:A` goes through.
#[test]
fn the_host_rule_compares_the_port_too() {
    let value = fresh_value();
    let (a, a_ca, a_seen) = https_api();
    let (b, b_ca, b_seen) = https_api();
    let unbound = TcpListener::bind("127.0.0.1:0").unwrap();
    let u = unbound.local_addr().unwrap().port();
    let h = Home::new();
    h.set("demo", "API_TOKEN", &value);
    let roots = h.path().join("test-roots.pem");
    std::fs::write(&roots, format!("{a_ca}{b_ca}")).unwrap();
    policy(&h, &["egress-roots", roots.to_str().unwrap()]);
    let (a_dest, b_dest) = (format!("localhost:{a}"), format!("localhost:{b}"));
    policy(&h, &["bind", "API_TOKEN", &a_dest, &b_dest]);

    let work = tempfile::tempdir_in("/tmp").unwrap();
    let c = r#"curl -sS --max-time 20 -H "Authorization: Bearer $API_TOKEN""#;
    let script = format!(
        r#"printf '%s' "$API_TOKEN" > ph.txt
{c} -H "Host: localhost:{b}" https://localhost:{a}/other-bound-port > 1.txt 2>&1
{c} --http2 -H "Host: localhost:{b}" https://localhost:{a}/other-bound-port-h2 > 2.txt 2>&1
{c} -H "Host: localhost:{u}" https://localhost:{a}/unbound-port > 3.txt 2>&1
{c} -H "Host: localhost" https://localhost:{a}/default-port > 4.txt 2>&1
{c} -H "Host: localhost:{a}" https://localhost:{a}/same-port > 5.txt 2>&1
{c} https://localhost:{b}/plain > 6.txt 2>&1
echo done"#
    );
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
            "sh",
            "-c",
            &script,
        ],
        Duration::from_secs(90),
    );
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(out.contains("done"), "stdout: {out}\nstderr: {err}");
    let read = |f: &str| std::fs::read_to_string(work.path().join(f)).unwrap_or_default();
    let placeholder = read("ph.txt");
    assert_eq!(placeholder.len(), value.len());

    // Another port, over HTTP/1.1 and HTTP/2 (`:authority`), bound or not, and no port at all
    // (443): blocked, and neither API saw the request.
    for (f, path) in [
        ("1.txt", "/other-bound-port"),
        ("2.txt", "/other-bound-port-h2"),
        ("3.txt", "/unbound-port"),
        ("4.txt", "/default-port"),
    ] {
        let got = read(f);
        assert!(got.contains("keyveil: blocked"), "{f}: {got}");
        assert!(got.contains("(host and port)"), "{f}: {got}");
        assert!(requests_to(&a_seen, path).is_empty(), "{path} reached A");
        assert!(requests_to(&b_seen, path).is_empty(), "{path} reached B");
    }
    // The tunnel's own host and port, named explicitly or by curl itself: the value arrives.
    assert!(read("5.txt").contains(&format!("ECHO:Bearer {placeholder}")));
    assert!(read("6.txt").contains(&format!("ECHO:Bearer {placeholder}")));
    for (seen, path) in [(&a_seen, "/same-port"), (&b_seen, "/plain")] {
        let heads = requests_to(seen, path);
        assert_eq!(heads.len(), 1, "{path}");
        assert!(heads[0].contains(&format!("Bearer {value}")), "{path}");
    }
    // Reported to the human and audited (variable and destination; never the placeholder).
    assert!(
        err.contains("API_TOKEN") && err.contains(&format!("https://localhost:{a}")),
        "{err}"
    );
    let blocked = egress_entries(&h, "egress_blocked");
    assert!(
        blocked.iter().any(|e| e["variable"] == "API_TOKEN"
            && e["destination"] == format!("https://localhost:{a}")
            && e["why"] == "Host is not the bound host and port"),
        "{blocked:?}"
    );
    assert_eq!(egress_entries(&h, "egress_request").len(), 2);
    nowhere(&h, &[&o.stdout, &o.stderr], &[&value], &[&placeholder]);
    drop(unbound);
}

/// Two variables bound to the same host: each request's `egress_request` entry lists the
/// variables whose placeholder was swapped into that request (request line, header, Basic
/// credential, body), not every variable bound to the host.
#[test]
fn an_egress_request_entry_lists_only_the_variables_swapped_into_that_request() {
    let value = fresh_value();
    let other = fresh_value();
    let (api, ca, api_seen) = https_api();
    let h = Home::new();
    h.set("demo", "API_TOKEN", &value);
    h.set("demo", "OTHER_TOKEN", &other);
    let roots = h.path().join("test-roots.pem");
    std::fs::write(&roots, &ca).unwrap();
    policy(&h, &["egress-roots", roots.to_str().unwrap()]);
    let dest = format!("localhost:{api}");
    // Bound for the URL and bodies too: the requests below put the key in each part.
    policy(&h, &["bind", "API_TOKEN", &dest, "--url", "--body"]);
    policy(&h, &["bind", "OTHER_TOKEN", &dest, "--url", "--body"]);

    let work = tempfile::tempdir_in("/tmp").unwrap();
    let c = "curl -sS --max-time 20";
    let u = format!("https://localhost:{api}");
    let script = format!(
        r#"printf '%s\n%s\n' "$API_TOKEN" "$OTHER_TOKEN" > ph.txt
{c} -H "Authorization: Bearer $API_TOKEN" {u}/header-api > 1.txt 2>&1
{c} -H "Content-Type: application/json" -d "{{\"key\": \"$OTHER_TOKEN\"}}" {u}/body-other > 2.txt 2>&1
{c} {u}/none > 3.txt 2>&1
{c} -u "me:$API_TOKEN" -H "X-Other: $OTHER_TOKEN" {u}/basic-and-header > 4.txt 2>&1
{c} "{u}/query-other?k=$OTHER_TOKEN" > 5.txt 2>&1
{c} --http2 -H "Content-Type: application/x-www-form-urlencoded" -d "k=$API_TOKEN" {u}/form-api-h2 > 6.txt 2>&1
echo done"#
    );
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        Duration::from_secs(90),
    );
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert!(out.contains("done"), "stdout: {out}\nstderr: {err}");
    let ph = std::fs::read_to_string(work.path().join("ph.txt")).unwrap();
    let mut ph = ph.lines();
    let (p_api, p_other) = (ph.next().unwrap().to_owned(), ph.next().unwrap().to_owned());
    assert_eq!(
        api_seen.lock().unwrap().len(),
        6,
        "every request reached the API"
    );
    // The API got the values where the child put the placeholders.
    assert!(requests_to(&api_seen, "/body-other")[0].contains(&other));
    assert!(requests_to(&api_seen, "/form-api-h2")[0].ends_with(&format!("k={value}")));

    let entries = egress_entries(&h, "egress_request");
    assert_eq!(entries.len(), 6, "{entries:?}");
    let vars = |path: &str| -> Vec<String> {
        let e = entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no entry for {path}: {entries:?}"));
        assert_eq!(e["status"], 200, "{e}");
        let mut v: Vec<String> = e["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(vars("/header-api"), ["API_TOKEN"]);
    assert_eq!(vars("/body-other"), ["OTHER_TOKEN"]);
    assert!(vars("/none").is_empty());
    assert_eq!(vars("/basic-and-header"), ["API_TOKEN", "OTHER_TOKEN"]);
    assert_eq!(vars("/query-other"), ["OTHER_TOKEN"]);
    assert_eq!(vars("/form-api-h2"), ["API_TOKEN"]);
    nowhere(
        &h,
        &[&o.stdout, &o.stderr],
        &[&value, &other],
        &[&p_api, &p_other],
    );
}

/// The child's side of [`sessions_close_at_once_even_held_outside_the_run`]: three
/// connections to the run's proxy (idle, a tunnel to an unbound host, an intercepted tunnel
/// to the bound API), their descriptors passed to the holder outside the run, then the child
/// waits for `go` (or for ever) and exits.
const CHILD: &str = r#"
import os, socket, sys, time
p = os.environ["HTTPS_PROXY"].removeprefix("http://").split(":")
def proxy():
    return socket.create_connection((p[0], int(p[1])), timeout=20)
def tunnel(target):
    s = proxy()
    s.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
    r = b""
    while b"\r\n\r\n" not in r:
        c = s.recv(1)
        if not c:
            raise SystemExit("the proxy closed the CONNECT")
        r += c
    assert b" 200" in r.split(b"\r\n")[0], r
    return s
idle = proxy()
plain = tunnel("127.0.0.1:@SINK@")
bound = tunnel("localhost:@API@")
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.connect(sys.argv[1])
socket.send_fds(u, [b"idle tunnel bound"], [idle.fileno(), plain.fileno(), bound.fileno()])
u.close()
print("passed", flush=True)
while not os.path.exists("go"):
    time.sleep(0.05)
"#;

/// The holder outside the run: takes the three descriptors, says `GOT`, then reports each
/// one's end (`EOF NAME`) as it comes.
const HOLDER: &str = r#"
import os, select, socket, sys
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(sys.argv[1])
l.listen(1)
c, _ = l.accept()
msg, fds, _, _ = socket.recv_fds(c, 100, 3)
names = msg.decode().split()
socks = {socket.socket(fileno=fd): n for fd, n in zip(fds, names)}
out = open(sys.argv[2], "a", buffering=1)
out.write("GOT %d\n" % len(socks))
while socks:
    r, _, _ = select.select(list(socks), [], [], 60)
    if not r:
        break
    for s in r:
        if not s.recv(4096):
            out.write("EOF %s\n" % socks.pop(s))
            s.close()
"#;

/// The holder's process, killed when the test ends (passing or not).
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (at most `limit`) until `file` holds every line of `want`.
fn wait_lines(file: &Path, want: &[&str], limit: Duration, what: &str) {
    let t0 = Instant::now();
    loop {
        let got = std::fs::read_to_string(file).unwrap_or_default();
        if want.iter().all(|w| got.lines().any(|l| l == *w)) {
            return;
        }
        assert!(t0.elapsed() < limit, "{what}: {got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The run's end, a revoke and `lock` each close every session of the run's proxy at once:
/// an idle connection, a tunnel to an unbound host and an intercepted tunnel to the bound
/// API, even while a process outside the run (which the proxy would refuse) holds them, since
/// the run passed it their descriptors. Before the event the sessions are open.
#[test]
fn sessions_close_at_once_even_held_outside_the_run() {
    let value = fresh_value();
    let (api, ca, api_seen) = https_api();
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    // The unbound host keeps its connections open and reads what comes.
    std::thread::spawn(move || {
        for mut s in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut b = [0u8; 1024];
                while matches!(s.read(&mut b), Ok(n) if n > 0) {}
            });
        }
    });
    let h = super::egress::bound_home(api, &ca, &value);
    // The script lies outside the home (keyveil never reads its own home for a requester).
    let scripts = tempfile::tempdir_in("/tmp").unwrap();
    let child = scripts.path().join("child.py");
    std::fs::write(
        &child,
        CHILD
            .replace("@SINK@", &sink_port.to_string())
            .replace("@API@", &api.to_string()),
    )
    .unwrap();
    let mut outputs = Vec::new();
    for (round, event) in ["run end", "revoke", "lock"].iter().enumerate() {
        let work = tempfile::tempdir_in("/tmp").unwrap();
        let sock = work.path().join("holder.sock");
        let report = work.path().join("holder.txt");
        let holder = Holder(
            std::process::Command::new("python3")
                .args(["-c", HOLDER])
                .arg(&sock)
                .arg(&report)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = Instant::now();
        while !sock.exists() {
            assert!(t0.elapsed() < Duration::from_secs(20), "no holder socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        let run = h.spawn_run(&[
            "run",
            "--env",
            "demo",
            "--only",
            "API_TOKEN",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "python3",
            child.to_str().unwrap(),
            sock.to_str().unwrap(),
            &round.to_string(),
        ]);
        let mut run = run;
        let t0 = Instant::now();
        let id = loop {
            let list = h.json(&["requests", "--json"]);
            if let Some(id) = list
                .as_array()
                .and_then(|a| a.last())
                .and_then(|r| r["id"].as_u64())
            {
                break id;
            }
            if run.try_wait().unwrap().is_some() {
                let o = wait_output(run, Duration::from_secs(5));
                panic!(
                    "{event}: the run ended unasked: {} {}",
                    text(&o.stdout),
                    text(&o.stderr)
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{event}: no request appeared"
            );
            std::thread::sleep(Duration::from_millis(30));
        };
        assert!(h.approve(id, &[]).status.success());
        wait_lines(
            &report,
            &["GOT 3"],
            Duration::from_secs(60),
            "no descriptors",
        );
        // Held outside the run, the sessions are open (the child has not ended yet).
        let before = std::fs::read_to_string(&report).unwrap();
        assert!(!before.contains("EOF"), "{event}: closed early: {before}");
        match *event {
            "run end" => std::fs::write(work.path().join("go"), b"").unwrap(),
            "revoke" => {
                h.ok(&["revoke", "--all"]);
            }
            _ => {
                h.ok(&["lock"]);
            }
        }
        wait_lines(
            &report,
            &["EOF idle", "EOF tunnel", "EOF bound"],
            Duration::from_secs(10),
            &format!("{event}: a session outlived it"),
        );
        let o = wait_output(run, Duration::from_secs(30));
        assert!(text(&o.stdout).contains("passed"), "{}", text(&o.stderr));
        outputs.push(o);
        drop(holder);
        if *event == "run end" {
            h.ok(&["revoke", "--all"]);
        }
    }
    // The bound API saw no request: the intercepted tunnels were never used.
    assert!(api_seen.lock().unwrap().is_empty());
    let out: Vec<&[u8]> = outputs
        .iter()
        .flat_map(|o| [o.stdout.as_slice(), o.stderr.as_slice()])
        .collect();
    nowhere(&h, &out, &[&value], &[]);
}
