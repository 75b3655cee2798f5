//! Hostile input on the broker's socket: oversized and truncated length prefixes, empty frames,
//! unknown tags, output frames sent as requests, invalid and non-UTF-8 JSON, 100,000 levels of
//! nesting, wrong types, a 4 MiB request, idle connections, and a few hundred pseudo-random
//! frames. Each gets a clear error reply or a closed connection; the broker (same pid) answers
//! `status` afterwards, and nothing it wrote holds the value.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

use crate::harness::*;

const TOKEN: &str = "tok_hostile_Pz4mK9wQr2Lx7Vn";

/// What the broker did with one connection.
#[derive(Debug)]
enum Outcome {
    /// A JSON reply frame.
    Reply(Value),
    /// The connection was closed (or reset) without a reply.
    Closed,
}

fn connect(h: &Home) -> UnixStream {
    let s = UnixStream::connect(h.path().join("run/broker.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len() + 1).unwrap();
    let mut f = len.to_be_bytes().to_vec();
    f.push(tag);
    f.extend_from_slice(payload);
    f
}

/// Sends raw bytes, half-closes, and reads the first reply frame.
fn exchange(h: &Home, raw: &[u8]) -> Outcome {
    let mut s = connect(h);
    // The broker may close before reading everything (an oversized prefix): ignore EPIPE.
    let _ = s.write_all(raw);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("the broker neither replied nor closed within 10 s")
        }
        Err(_) => return Outcome::Closed,
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    assert_eq!(body.first(), Some(&0), "reply frame is not JSON");
    Outcome::Reply(serde_json::from_slice(&body[1..]).unwrap())
}

/// The reply must be an error with a message, or the connection closed.
fn refused(h: &Home, what: &str, raw: &[u8]) -> Outcome {
    let o = exchange(h, raw);
    if let Outcome::Reply(v) = &o {
        assert_eq!(v["kind"], "error", "{what}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
    }
    o
}

fn broker_pid(h: &Home) -> String {
    std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn hostile_frames_get_an_error_or_a_closed_connection_and_the_broker_survives() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let pid = broker_pid(&h);

    // Length prefixes the codec refuses: the connection is closed, nothing is allocated.
    for (what, raw) in [
        ("4 GiB length prefix", vec![0xff, 0xff, 0xff, 0xff, 0, b'{']),
        ("16 MiB + 1 length prefix", {
            let mut v = (16u32 * 1024 * 1024 + 1).to_be_bytes().to_vec();
            v.extend_from_slice(b"\0{}");
            v
        }),
    ] {
        assert!(
            matches!(exchange(&h, &raw), Outcome::Closed),
            "{what}: expected a closed connection"
        );
    }
    // Truncated input: a frame announced longer than what arrives, a partial prefix.
    for (what, raw) in [
        ("truncated frame", {
            let mut v = 1000u32.to_be_bytes().to_vec();
            v.extend_from_slice(b"\0{\"op\":\"status\"");
            v
        }),
        ("partial prefix", vec![0, 0]),
        ("nothing", vec![]),
    ] {
        assert!(matches!(exchange(&h, &raw), Outcome::Closed), "{what}");
    }

    // Frames that decode but are not a request: a clear error reply each.
    let nested_array = "[".repeat(100_000);
    let nested_request = format!(r#"{{"op":"unlock","passphrase":{}}}"#, "[".repeat(100_000));
    let nested_object = r#"{"a":"#.repeat(100_000);
    let big = format!(
        r#"{{"op":"set","environment":"demo","name":"X","value":"{}"}}"#,
        "a".repeat(4 * 1024 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero-length frame", vec![0, 0, 0, 0]),
        ("unknown tag", frame(9, b"{\"op\":\"status\"}")),
        ("stdout frame as request", frame(1, b"{\"op\":\"status\"}")),
        ("stderr frame as request", frame(2, b"hello")),
        ("invalid JSON", frame(0, b"{\"op\":")),
        ("not JSON", frame(0, b"GET / HTTP/1.1\r\n\r\n")),
        ("non-UTF-8", frame(0, &[b'"', 0xff, 0xfe, b'"'])),
        ("empty JSON", frame(0, b"")),
        ("JSON null", frame(0, b"null")),
        ("JSON array", frame(0, b"[1,2,3]")),
        ("unknown op", frame(0, b"{\"op\":\"format_disk\"}")),
        ("op of wrong type", frame(0, b"{\"op\":5}")),
        ("no op", frame(0, b"{\"passphrase\":\"x\"}")),
        (
            "passphrase of wrong type",
            frame(0, b"{\"op\":\"unlock\",\"passphrase\":12345}"),
        ),
        (
            "approve with a string id",
            frame(
                0,
                b"{\"op\":\"approve\",\"id\":\"one\",\"passphrase\":\"x\"}",
            ),
        ),
        (
            "run with argv of wrong type",
            frame(0, b"{\"op\":\"run\",\"argv\":\"rm -rf /\"}"),
        ),
        ("negative number", frame(0, b"{\"op\":\"deny\",\"id\":-1}")),
        ("huge number", frame(0, b"{\"op\":\"deny\",\"id\":1e400}")),
        ("100k nested arrays", frame(0, nested_array.as_bytes())),
        (
            "100k nested in a field",
            frame(0, nested_request.as_bytes()),
        ),
        ("100k nested objects", frame(0, nested_object.as_bytes())),
        ("4 MiB value", frame(0, big.as_bytes())),
    ];
    let mut replies = Vec::new();
    for (what, raw) in &cases {
        match refused(&h, what, raw) {
            Outcome::Reply(v) => replies.push(v.to_string()),
            Outcome::Closed => panic!("{what}: closed without the error reply"),
        }
    }

    // Pseudo-random frames (a fixed LCG, so a failure reproduces): JSON-ish tokens and raw bytes.
    let tokens: [&[u8]; 14] = [
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b"\"op\"",
        b"\"run\"",
        b"\"status\"",
        b"\"unlock\"",
        b"null",
        b"1",
        b"\"\\u0000\"",
        b"\xff",
    ];
    let mut seed: u32 = 0x5eed;
    let mut next = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        seed >> 8
    };
    for i in 0..300 {
        let mut payload = Vec::new();
        for _ in 0..next() % 40 {
            if i % 3 == 0 {
                payload.push(next() as u8);
            } else {
                payload.extend_from_slice(tokens[(next() as usize) % tokens.len()]);
            }
        }
        let tag = if i % 10 == 0 { (next() % 4) as u8 } else { 0 };
        match exchange(&h, &frame(tag, &payload)) {
            Outcome::Reply(v) => {
                // `{"op":"status"}` can come out of the generator: any well-formed reply is fine.
                assert!(v["kind"] == "error" || v["kind"] == "ok", "{v}");
                replies.push(v.to_string());
            }
            Outcome::Closed => {}
        }
    }

    // Idle connections do not starve the others.
    let idle: Vec<UnixStream> = (0..100).map(|_| connect(&h)).collect();
    let status = h.json(&["status", "--json"]);
    drop(idle);

    // Still the same broker, answering, its vault unlocked.
    assert_eq!(broker_pid(&h), pid, "the broker restarted: it crashed");
    assert_eq!(status["pid"].to_string(), pid, "{status}");
    let log = std::fs::read_to_string(h.path().join("broker.log")).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
    for enc in encodings(TOKEN) {
        assert!(!replies.iter().any(|r| r.contains(&enc)));
        assert!(!contains(&h.all_plain_files(), &enc));
    }
    h.ok(&["audit", "verify"]);
}

/// CPU time (user + system, in clock ticks) of a process, from `/proc/PID/stat`.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Issue 21, item 11: with its file descriptor limit reached, the broker's accept loop failed
/// with EMFILE at once, again and again (42 % of a core, `status` timing out). Now it pauses
/// between attempts, and answers again once descriptors are free.
#[test]
fn out_of_file_descriptors_the_broker_backs_off_and_recovers() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let pid = broker_pid(&h);
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = (open_fds + 4).to_string();
    let o = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit (util-linux) is needed");
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Idle connections take the last descriptors; the rest wait in the backlog.
    let held: Vec<UnixStream> = (0..20).map(|_| connect(&h)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(&pid);
    std::thread::sleep(Duration::from_secs(3));
    let spent = cpu_ticks(&pid) - before;
    // 3 s of a spinning loop is about 300 ticks; a paused one a handful.
    assert!(
        spent < 60,
        "the broker spent {spent} ticks of CPU in 3 s while out of descriptors"
    );
    drop(held);
    let t0 = std::time::Instant::now();
    loop {
        let o = h.run(&["status", "--json"]);
        if o.status.success() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the broker did not recover: {}",
            text(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(broker_pid(&h), pid);
}
