//! Red team of the KV-binding and loopback-owner change (session 12), as a prompt-injected
//! agent with the human's uid and no factor: values of an OpenBao source the agent linked
//! itself through another engine than KV, a listener the agent runs under a uid that is not its
//! own, a squatted IPv6 twin of the human's port, a proxy forwarding to the real server. Each
//! attack is replayed here; see `docs/dynamic-credentials.md`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::*;

/// What a fake server saw: each request head.
type Seen = Arc<Mutex<Vec<String>>>;

/// A fake OpenBao on plain-HTTP loopback run by the agent, bound to `bind`: every request
/// (whatever its path) is answered `answer`. Returns (address, what it saw).
fn agent_bao(bind: &str, answer: Value) -> (String, Seen) {
    let l = TcpListener::bind(bind).unwrap();
    let a = l.local_addr().unwrap();
    let addr = if a.is_ipv6() {
        format!("http://[{}]:{}", a.ip(), a.port())
    } else {
        format!("http://{}:{}", a.ip(), a.port())
    };
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(s);
            let mut head = String::new();
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line
                    .to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_owned())
                {
                    len = v.parse().unwrap_or(0);
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            if head.is_empty() {
                // A connection closed before a byte was sent (refused by the owner check).
                continue;
            }
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            seen2.lock().unwrap().push(head);
            let out = answer.to_string();
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                out.len()
            );
        }
    });
    (addr, seen)
}

/// An answer that serves as a KV v2 read of `fields`, a database role, fresh database
/// credentials whose password is `password`, and a lease renewal.
fn bao_answer(fields: Value, password: &str) -> Value {
    json!({
        "request_id": "0b7e1c2a-0000-4000-8000-000000000001",
        "lease_id": "database/creds/app/agent0lease",
        "lease_duration": 600,
        "renewable": true,
        "data": {
            "data": fields,
            "metadata": {"version": 1},
            "username": "v-agent-app-x",
            "password": password,
        }
    })
}

/// `keyveil run --env demo --wait W -- ARGV`.
fn run_env(h: &Home, wait: &str, argv: &[&str]) -> std::process::Output {
    let mut a = vec!["run", "--env", "demo", "--wait", wait, "--"];
    a.extend_from_slice(argv);
    let mut c = h.cmd(&a);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    wait_output(c.spawn().unwrap(), Duration::from_secs(60))
}

/// The newest request (the last listed).
fn newest_request(h: &Home) -> Value {
    h.json(&["requests", "--json"])
        .as_array()
        .and_then(|a| a.last().cloned())
        .expect("no request")
}

/// `keyveil dynamic add demo API_BASE_URL --engine openbao-database --address ADDR --role app
/// EXTRA --admin-stdin`, with `stdin` (the factor first where `EXTRA` asks for it).
fn add_db(h: &Home, addr: &str, extra: &[&str], stdin: &str) -> std::process::Output {
    let mut a = vec![
        "dynamic",
        "add",
        "demo",
        "API_BASE_URL",
        "--engine",
        "openbao-database",
        "--address",
        addr,
        "--role",
        "app",
    ];
    a.extend_from_slice(extra);
    a.push("--admin-stdin");
    h.run_stdin(&a, stdin)
}

/// The agent cannot link a KV secret of its own server unquoted any more, so it adds the
/// variable through the OpenBao *database* engine instead, without the factor: with output
/// `password` (the default without `connect_url`) the variable's value is the `password` its
/// server answers, any string, under any name (`API_BASE_URL`), minted per grant so no card
/// can quote it. It was added, flagged only `new-variable`, and the approved run got the
/// agent's collector URL. Now output `password` needs the factor; output `url` (with
/// `--connect-url`) stays open to the agent, its value a database URL keyveil builds.
#[test]
fn agent_linked_bao_database_password_needs_the_factor() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    let tag = keyveil_testkit::rand_tag();
    let url = format!("http://127.0.0.1:9/collect-{tag}");
    let (addr, _seen) = agent_bao("127.0.0.1:0", bao_answer(json!({}), &url));
    let own_token = format!("agent-own-{tag}\n");
    for extra in [
        &[][..],
        &[
            "--output",
            "password",
            "--connect-url",
            "postgresql://127.0.0.1:5432/x",
        ][..],
    ] {
        let o = add_db(&h, &addr, extra, &own_token);
        assert!(!o.status.success(), "{extra:?}: added without the factor");
        let err = text(&o.stderr);
        assert!(
            err.contains("factor") && err.contains("output `password`") && err.contains("hint:"),
            "{err}"
        );
    }
    let shown = h.json(&["env", "show", "demo", "--json"]);
    assert!(
        shown["variables"].as_array().is_none_or(|v| v.is_empty()),
        "{shown}"
    );
    // Output `url`: the agent may still add it; the run gets a database URL, not its string.
    let o = add_db(
        &h,
        &addr,
        &["--connect-url", "postgresql://127.0.0.1:5432/x"],
        &own_token,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let script =
        "case \"$API_BASE_URL\" in postgresql://*) echo shape=db;; *) echo shape=other;; esac";
    let o = run_env(&h, "0", &["sh", "-c", script]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let r = newest_request(&h);
    assert!(
        h.approve(r["id"].as_u64().unwrap(), &["--ttl", "10m"])
            .status
            .success()
    );
    let o = run_env(&h, "5", &["sh", "-c", script]);
    let out = text(&o.stdout);
    assert!(out.contains("shape=db"), "{out}\n{}", text(&o.stderr));
    assert!(!out.contains(&sha256_hex(&url)));
    // The human, with the factor, may add output `password`.
    let o = add_db(
        &h,
        &addr,
        &["--output", "password", "--passphrase-stdin"],
        &format!("{PASS}\n{own_token}"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// The test process's effective uid, from /proc (no extra dependency).
fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// A fake OpenBao KV server in python, started under `wrapper` (a command prefix), answering
/// every GET with `fields` and appending each request's token header to `log`. Returns the
/// child and its port.
fn python_bao(
    wrapper: &[&str],
    dir: &std::path::Path,
    fields: &Value,
) -> (std::process::Child, u16) {
    let port_file = dir.join("port");
    let log = dir.join("seen");
    let server = r#"
import http.server, json, os, sys
body = json.dumps({"data": {"data": json.loads(sys.argv[3]), "metadata": {"version": 1}}}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        open(sys.argv[2], "a").write(str(self.headers.get("X-Vault-Token")) + "\n")
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
"#;
    let mut c = std::process::Command::new(wrapper[0]);
    c.args(&wrapper[1..])
        .args(["/usr/bin/python3", "-c", server])
        .arg(&port_file)
        .arg(&log)
        .arg(fields.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = c.spawn().expect("start the server");
    let t0 = Instant::now();
    while !port_file.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the server never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, port)
}

/// The owner check trusted a plain-HTTP loopback listener of any uid but the broker's. The
/// agent needs no other user's help to hold one: in a user namespace of its own, in the host's
/// network namespace, it runs its server under one of its subordinate uids (`/etc/subuid`,
/// mapped by the setuid `newuidmap`, as rootless containers do). The kernel's table then
/// listed the agent's listener under that other uid, and the human's stored token (an
/// environment linked with the factor, `insecure-loopback` off) went to the agent. Fixed: a
/// listener of a subordinate uid of the broker's user counts as the user's own. Replayed as
/// root (taking uid 100000 directly, as `newuidmap` and a `setuid` in the namespace would for
/// the agent, the range listed for the broker's user); skipped without root or python3.
#[test]
#[allow(clippy::print_stderr)]
fn a_listener_under_the_agents_subordinate_uid_is_not_another_user() {
    if euid() != 0 || !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("skipped: a listener under another uid needs root and /usr/bin/python3");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    // The agent's server under uid 100000: what `unshare --map-auto` then `setuid` inside the
    // namespace gives a user whose /etc/subuid range starts there (root takes it directly).
    let (mut child, port) = python_bao(
        &[
            "setpriv",
            "--reuid=100000",
            "--regid=100000",
            "--clear-groups",
        ],
        dir.path(),
        &json!({"API_KEY": "agent-served"}),
    );
    let h = Home::new();
    // The broker's user (root here) may map 100000..165536, by number as `newuidmap` reads it.
    std::fs::write(
        h.path().join("subuid"),
        format!("{}:100000:65536\n", euid()),
    )
    .unwrap();
    let human_token = format!("human-stored-token-{}", keyveil_testkit::rand_tag());
    let o = h.run_stdin(
        &[
            "env",
            "link",
            "demo",
            "--openbao",
            &format!("http://127.0.0.1:{port}"),
            "--kv-path",
            "team/app",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n{human_token}\n"),
    );
    let _ = child.kill();
    let _ = child.wait();
    let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap_or_default();
    assert!(
        !seen.contains(&human_token),
        "the human's token went to the agent's listener (link: {})",
        o.status
    );
    assert!(!o.status.success(), "linked to the agent's listener");
    let err = text(&o.stderr);
    assert!(
        err.contains("subordinate uids") && err.contains("insecure-loopback"),
        "{err}"
    );
    assert!(!err.contains(&human_token));
}

/// The agent holds the human's port under other loopback spellings: another 127.x address,
/// `localhost`, IPv6 `::1`. With `insecure-loopback` off, a listener of the broker's own user
/// gets nothing, whatever address reaches it: the human's token (given with the factor) is
/// never sent, and nothing is linked.
#[test]
fn loopback_spellings_all_meet_the_owner_check() {
    let mut binds = vec![("127.0.0.2:0", None), ("127.0.0.1:0", Some("localhost"))];
    if TcpListener::bind("[::1]:0").is_ok() {
        binds.push(("[::1]:0", None));
    }
    for (bind, host) in binds {
        let h = Home::new();
        let (mut addr, seen) = agent_bao(bind, bao_answer(json!({"API_KEY": "agent"}), "x"));
        if let Some(host) = host {
            let port = addr.rsplit(':').next().unwrap().to_owned();
            addr = format!("http://{host}:{port}");
        }
        let human_token = format!("human-stored-token-{}", keyveil_testkit::rand_tag());
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
            &format!("{PASS}\n{human_token}\n"),
        );
        assert!(
            !o.status.success(),
            "{addr}: linked to the agent's listener"
        );
        let err = text(&o.stderr);
        assert!(err.contains("your own user"), "{addr}: {err}");
        assert!(!err.contains(&human_token));
        let heads = seen.lock().unwrap().join("\n");
        assert!(
            heads.is_empty(),
            "{addr}: the agent's listener was sent a request"
        );
    }
}

/// A fake PostgreSQL server of the agent's on `l`: asks each client for its password in clear
/// (`AuthenticationCleartextPassword`, which libpq and tokio-postgres answer unprompted by TLS)
/// and records what it is sent.
fn agent_postgres(l: TcpListener) -> Seen {
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let read_msg = |s: &mut std::net::TcpStream, typed: bool| -> Option<Vec<u8>> {
                let mut t = [0u8; 1];
                if typed {
                    s.read_exact(&mut t).ok()?;
                }
                let mut len = [0u8; 4];
                s.read_exact(&mut len).ok()?;
                let n = (u32::from_be_bytes(len) as usize).checked_sub(4)?;
                let mut body = vec![0u8; n.min(1 << 16)];
                s.read_exact(&mut body).ok()?;
                Some(body)
            };
            let Some(mut first) = read_msg(&mut s, false) else {
                continue;
            };
            // An SSLRequest: "no", then the startup message.
            if first.len() == 4 && first[..] == 80_877_103u32.to_be_bytes() {
                let _ = s.write_all(b"N");
                let Some(next) = read_msg(&mut s, false) else {
                    continue;
                };
                first = next;
            }
            let _ = first;
            // AuthenticationCleartextPassword.
            let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]);
            if let Some(pw) = read_msg(&mut s, true) {
                seen2.lock().unwrap().push(
                    String::from_utf8_lossy(&pw)
                        .trim_end_matches('\0')
                        .to_owned(),
                );
            }
        }
    });
    seen
}

/// The owner check guarded OpenBao only. The `postgres` engine's admin URL (its password the
/// human's database superuser's) goes over plain TCP to `127.0.0.1:5432` at `dynamic add` and
/// at every mint; while PostgreSQL is down (or restarting) the agent listened on that port,
/// asked for the password in clear, and tokio-postgres sent it (no TLS to PostgreSQL yet).
/// Fixed: a loopback PostgreSQL connection meets the same owner check before a byte is sent.
#[test]
fn postgres_admin_password_never_goes_to_a_squatted_loopback_port() {
    let h = Home::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = agent_postgres(l);
    let admin_pw = format!("adm{}", keyveil_testkit::rand_tag());
    let o = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "DATABASE_URL",
            "--engine",
            "postgres",
            "--template",
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{role}}",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\npostgresql://postgres:{admin_pw}@127.0.0.1:{port}/app\n"),
    );
    let got = seen.lock().unwrap().clone();
    let err = text(&o.stderr);
    assert!(!err.contains(&admin_pw));
    assert!(
        !got.iter().any(|p| p.contains(&admin_pw)),
        "the admin password went to the agent's listener"
    );
    assert!(!o.status.success(), "added against the agent's listener");
    assert!(
        err.contains("your own user")
            && err.contains("admin password was not sent")
            && err.contains("hint:")
            && err.contains("insecure-loopback"),
        "{err}"
    );
}

/// As for PostgreSQL, the `redis` engine's admin URL goes over plain TCP to a loopback port;
/// the client sent `AUTH` (or `HELLO … AUTH`) with the password in clear as its first command,
/// to whoever held the port. Fixed: the same owner check runs before the first command.
#[test]
fn redis_admin_password_never_goes_to_a_squatted_loopback_port() {
    let h = Home::new();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            seen2
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            let _ = s.write_all(b"-ERR no\r\n");
        }
    });
    let admin_pw = format!("adm{}", keyveil_testkit::rand_tag());
    let o = h.run_stdin(
        &[
            "dynamic",
            "add",
            "demo",
            "REDIS_URL",
            "--engine",
            "redis",
            "--template",
            "~app:* +get",
            "--admin-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\nredis://default:{admin_pw}@127.0.0.1:{port}\n"),
    );
    let err = text(&o.stderr);
    assert!(!err.contains(&admin_pw));
    let got = seen.lock().unwrap().clone();
    assert!(
        !got.iter().any(|p| p.contains(&admin_pw)),
        "the admin password went to the agent's listener"
    );
    assert!(!o.status.success(), "added against the agent's listener");
    assert!(
        err.contains("your own user") && err.contains("insecure-loopback"),
        "{err}"
    );
}

/// `insecure-loopback` is one environment's: the agent cannot use the human's opt-in for `demo`
/// (a dev server of the human's) to link its own listener into another environment, nor move
/// a `demo` link there; each environment's links meet its own policy.
#[test]
fn insecure_loopback_of_one_environment_does_not_cover_another() {
    let h = Home::new();
    h.allow_insecure_loopback("demo");
    h.ok(&["env", "create", "other", "--description", "no opt-in"]);
    let (addr, seen) = agent_bao("127.0.0.1:0", bao_answer(json!({"API_KEY": "agent"}), "x"));
    let link = |env: &str| {
        h.run_stdin(
            &[
                "env",
                "link",
                env,
                "--openbao",
                &addr,
                "--kv-path",
                "agent/app",
                "--admin-stdin",
            ],
            "agent-own-token-zz\n",
        )
    };
    assert!(link("demo").status.success());
    let before = seen.lock().unwrap().len();
    let o = link("other");
    assert!(
        !o.status.success(),
        "linked under another environment's opt-in"
    );
    assert!(
        text(&o.stderr).contains("your own user"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "a request reached the listener"
    );
    let shown = h.json(&["env", "show", "other", "--json"]);
    assert!(
        shown["variables"].as_array().is_none_or(|v| v.is_empty()),
        "{shown}"
    );
}
