//! The output path of a granted run (child pipe → redactor → frames → CLI → its stdout): big
//! outputs, values split across reads and writes, stdout/stderr kept apart, and a reader that
//! stops early. Only `[REDACTED:NAME]` may ever arrive.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::*;

const MARK: &str = "[REDACTED:API_TOKEN]";

/// A throwaway value, different on every run of the tests.
fn fresh_value() -> String {
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    format!("kvout_{}", &sha256_hex(&seed)[..32])
}

/// Emits, on stdout (`o`) or stderr (`e`), for each item of the plan: `filler` bytes of dotted
/// lines, then the value followed by a newline. `split` > 0 writes the value in two parts,
/// flushing and pausing between them, so the broker reads the halves separately.
const EMITTER: &str = r#"
import json, os, sys, time
v = os.environ["API_TOKEN"].encode()
line = b"." * 63 + b"\n"
for stream, filler, split in json.loads(sys.argv[1]):
    out = sys.stdout.buffer if stream == "o" else sys.stderr.buffer
    body = (line * (filler // 64 + 1))[:filler]
    if split:
        out.write(body + v[:split]); out.flush(); time.sleep(0.02)
        out.write(v[split:] + b"\n")
    else:
        out.write(body + v + b"\n")
    out.flush()
"#;

/// What the emitter's stream `which` must look like after redaction.
fn expected(plan: &[(&str, usize, usize)], which: &str) -> Vec<u8> {
    let line = format!("{}\n", ".".repeat(63));
    let mut out = Vec::new();
    for &(stream, filler, _) in plan {
        if stream != which {
            continue;
        }
        let body = line.repeat(filler / 64 + 1);
        out.extend_from_slice(&body.as_bytes()[..filler]);
        out.extend_from_slice(MARK.as_bytes());
        out.push(b'\n');
    }
    out
}

fn assert_clean(bytes: &[u8], value: &str) {
    for enc in encodings(value) {
        assert!(
            !contains(bytes, &enc),
            "an encoding of the value got through"
        );
    }
}

#[test]
fn big_outputs_with_values_split_across_reads_arrive_redacted_and_exact() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    // Values straddling the old 64 KiB and the new 1 MiB read sizes, values written in two
    // parts with a pause between them, and several MiB on both streams.
    let mut plan: Vec<(&str, usize, usize)> = vec![
        ("o", 65_536 - 20, 0),
        ("e", 1000, 7),
        ("o", 1024 * 1024 - 65_536, 0),
        ("o", 3 * 1024 * 1024, 1),
        ("e", 2 * 1024 * 1024 + 5, 20),
        ("o", 0, 19),
        ("o", 0, 0),
    ];
    for i in 0..40 {
        plan.push((if i % 3 == 0 { "e" } else { "o" }, 97 * i, i % 37));
    }
    plan.push(("o", 1024 * 1024 + 333, 30));
    let plan_json = serde_json::to_string(&plan).unwrap();
    let o = h.run_approved(
        &[
            "run", "--env", "demo", "--wait", "30", "--", "python3", "-c", EMITTER, &plan_json,
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(0), "the run failed");
    assert_clean(&o.stdout, &value);
    assert_clean(&o.stderr, &value);
    // Exactly the child's bytes, each value replaced, nothing lost, repeated or mixed up
    // between the streams (the stderr notice about the pending request comes first).
    assert!(
        o.stdout == expected(&plan, "o"),
        "stdout differs from the redacted child output"
    );
    let want_err = expected(&plan, "e");
    assert!(
        o.stderr.ends_with(&want_err),
        "stderr does not end with the child's redacted stderr"
    );
    let notice = &o.stderr[..o.stderr.len() - want_err.len()];
    assert!(
        text(notice).starts_with("keyveil: request #"),
        "{}",
        text(notice)
    );
}

#[test]
fn a_reader_that_stops_early_gets_only_markers_and_the_run_ends() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    // Endless output full of the value: only the reader stopping can end it.
    let mut child = h
        .cmd(&[
            "run",
            "--env",
            "demo",
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            "yes \"$API_TOKEN\"",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = h.wait_request();
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let mut got = vec![0u8; 3 * 1024 * 1024];
    let mut stdout = child.stdout.take().unwrap();
    stdout.read_exact(&mut got).unwrap();
    drop(stdout);
    assert_clean(&got, &value);
    let line = format!("{MARK}\n");
    assert!(
        got.chunks(line.len())
            .all(|c| line.as_bytes().starts_with(c)),
        "something other than whole marker lines arrived"
    );
    // The CLI ends (status 141) on the closed pipe, the broker ends the run and stays usable.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the CLI did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let t0 = Instant::now();
    loop {
        let st = h.json(&["status", "--json"]);
        if st["live_runs"] == 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run is still live: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            "echo \"v=$API_TOKEN\"",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(text(&o.stdout), format!("v={MARK}\n"));
    // Both runs were audited to their end.
    assert_eq!(h.audit_text().matches("\"run_end\"").count(), 2);
}

#[test]
fn a_background_run_gets_values_split_across_writes_redacted() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let plan: Vec<(&str, usize, usize)> = vec![("o", 10, 9), ("e", 100, 1), ("o", 70_000, 25)];
    let plan_json = serde_json::to_string(&plan).unwrap();
    let child = h.spawn_run(&[
        "start", "--env", "demo", "--wait", "30", "--", "python3", "-c", EMITTER, &plan_json,
    ]);
    let id = h.wait_request();
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run = text(&o.stdout).trim().to_owned();
    let t0 = Instant::now();
    let logs = loop {
        let o = h.run(&["logs", &run]);
        if text(&o.stderr).contains("ended") {
            break o.stdout;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_clean(&logs, &value);
    assert_eq!(
        logs.windows(MARK.len())
            .filter(|w| *w == MARK.as_bytes())
            .count(),
        3
    );
    let want = expected(&plan, "o").len() + expected(&plan, "e").len();
    assert_eq!(logs.len(), want);
}

#[test]
fn revoking_a_run_whose_reader_stalled_still_kills_it() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    // The CLI's stdout is a pipe nobody reads: it fills, the CLI blocks, the broker's socket
    // fills and its write of the next frame waits.
    let mut child = h
        .cmd(&[
            "run",
            "--env",
            "demo",
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            "yes \"$API_TOKEN\"",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let t0 = Instant::now();
    let pgid = loop {
        let st = h.json(&["status", "--json"]);
        if let Some(p) = st["runs"][0]["pgid"].as_i64() {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no live run: {st}");
        std::thread::sleep(Duration::from_millis(20));
    };
    // States of the live processes of the run's group.
    let group_states = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let st = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let f: Vec<&str> = st
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                (f.first() != Some(&"Z") && f.get(2) == Some(&pgid.to_string().as_str()))
                    .then(|| f[0].to_owned())
            })
            .collect()
    };
    let group_alive = || !group_states().is_empty();
    // Wait until the back pressure reached the child: the broker has nothing left to redact
    // (its CPU time stands still; pipes, channel and socket are full, the relay waits in a
    // write) and `yes` sleeps in its write.
    let broker = h.json(&["status", "--json"])["pid"].as_u64().unwrap();
    let broker_ticks = || -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{broker}/stat")).unwrap();
        let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let t0 = Instant::now();
    loop {
        let before = broker_ticks();
        std::thread::sleep(Duration::from_millis(300));
        let st = group_states();
        if broker_ticks() <= before + 1 && !st.is_empty() && st.iter().all(|s| s == "S") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never stalled"
        );
    }
    let grants = h.json(&["grants", "--json"]);
    let gid = grants[0]["id"].as_str().unwrap().to_owned();
    // The group dies although nobody reads the output (SIGTERM, SIGKILL after 2 s).
    assert!(
        group_alive(),
        "the process group {pgid} is not found before the revocation"
    );
    h.ok(&["revoke", &gid]);
    let t0 = Instant::now();
    while group_alive() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the revoked run's process group is still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Reading now: only markers, then the run ends as revoked.
    let mut stdout = child.stdout.take().unwrap();
    let mut got = Vec::new();
    stdout.read_to_end(&mut got).unwrap();
    assert!(!child.wait().unwrap().success());
    assert_clean(&got, &value);
    assert!(got.starts_with(format!("{MARK}\n").as_bytes()));
}

/// A client that stays connected but never reads again must not keep a revoked run from
/// ending: the group is killed, and the run must also end on the broker's side (live-run
/// bookkeeping, the write-side scan, the `run_end` audit record), not wait for the client.
#[test]
fn a_revoked_run_whose_reader_stalled_ends_without_the_reader() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let mut child = h
        .cmd(&[
            "run",
            "--env",
            "demo",
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            "yes \"$API_TOKEN\"",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let t0 = Instant::now();
    let pgid = loop {
        let st = h.json(&["status", "--json"]);
        if let Some(p) = st["runs"][0]["pgid"].as_i64() {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no live run: {st}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let group_states = || -> Vec<String> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let st = std::fs::read_to_string(e.path().join("stat")).ok()?;
                let f: Vec<&str> = st
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                (f.first() != Some(&"Z") && f.get(2) == Some(&pgid.to_string().as_str()))
                    .then(|| f[0].to_owned())
            })
            .collect()
    };
    let broker = h.json(&["status", "--json"])["pid"].as_u64().unwrap();
    let broker_ticks = || -> u64 {
        let st = std::fs::read_to_string(format!("/proc/{broker}/stat")).unwrap();
        let f: Vec<&str> = st.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let t0 = Instant::now();
    loop {
        let before = broker_ticks();
        std::thread::sleep(Duration::from_millis(300));
        let st = group_states();
        if broker_ticks() <= before + 1 && !st.is_empty() && st.iter().all(|s| s == "S") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run never stalled"
        );
    }
    let gid = h.json(&["grants", "--json"])[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.ok(&["revoke", &gid]);
    // The client keeps its end open and never reads. Within a generous bound (kill grace
    // + slack) the broker must have finished the run.
    let t0 = Instant::now();
    loop {
        let st = h.json(&["status", "--json"]);
        let ended = st["live_runs"] == 0 && h.audit_text().contains("\"run_end\"");
        if ended {
            break;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a revoked run is still live on the broker 15 s later because its client stopped \
                 reading (no run_end audit, no write-side scan): {st}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `keyveil run ... | head -c 10`: the reader closing early ends the CLI quietly with the
/// conventional 128 + SIGPIPE status (like `cat`), not with an error message, and the broker
/// ends the run.
#[test]
fn a_reader_that_closes_early_ends_the_cli_quietly_with_status_141() {
    use std::os::unix::process::ExitStatusExt;
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let mut child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "yes \"$API_TOKEN\"",
    ]);
    let id = h.wait_request();
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let mut stdout = child.stdout.take().unwrap();
    let mut got = [0u8; 10];
    stdout.read_exact(&mut got).unwrap();
    assert_eq!(&got, &MARK.as_bytes()[..10]);
    drop(stdout);
    let out = wait_output(child, Duration::from_secs(20));
    assert_eq!(
        out.status.code(),
        Some(141),
        "status {:?} (signal {:?}), stderr: {}",
        out.status,
        out.status.signal(),
        text(&out.stderr)
    );
    // Only the approval notice, nothing about the pipe.
    let err = text(&out.stderr);
    assert!(
        err.lines()
            .all(|l| l.starts_with("keyveil: request #") || l.starts_with("hint: ")),
        "unexpected stderr: {err}"
    );
    assert!(!err.contains("error"), "{err}");
    let t0 = Instant::now();
    loop {
        let st = h.json(&["status", "--json"]);
        if st["live_runs"] == 0 && h.audit_text().contains("\"run_end\"") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run is still live: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads `child`'s stdout on a thread; the bytes so far are in the returned buffer.
fn collect_stdout(child: &mut std::process::Child) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let g = got.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        while let Ok(n) = out.read(&mut b) {
            if n == 0 {
                break;
            }
            g.lock().unwrap().extend_from_slice(&b[..n]);
        }
    });
    got
}

/// Issue 17, item 8: a program that prints a line without its newline and then sleeps has the
/// line shown while it sleeps (the relay flushes what the redactor holds after 200 ms of
/// quiet), not when it ends.
#[test]
fn a_quiet_programs_last_line_is_shown_while_it_still_runs() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", &fresh_value());
    let mut child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "printf 'started with %.3s' \"$API_TOKEN\"; sleep 60; echo e",
    ]);
    let got = collect_stdout(&mut child);
    let id = h.wait_request();
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let t0 = Instant::now();
    // The program sleeps 60 s: the line can only arrive now through the flush. Its last three
    // bytes are the start of the value (`kvo`, the fixed start of every test value here),
    // which the redactor holds back as a possible match and a pause may show.
    while !contains(&got.lock().unwrap(), "started with kvo") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the quiet line was held back: {:?}",
            text(&got.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended early");
    let _ = child.kill();
    let _ = child.wait();
}

/// The attack on that flush: the value printed three bytes at a time with pauses longer than
/// the relay's 200 ms, so every piece is flushed on its own. No four bytes of it in a row ever
/// arrive (in one piece all of it would be masked).
#[test]
fn a_value_printed_in_pieces_between_pauses_stays_unreadable() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let program = r#"
import os, sys, time
v = os.environ["API_TOKEN"]
for sep in ["", " ", "\n"]:
    for i in range(0, len(v), 3):
        sys.stdout.write(v[i:i + 3] + sep); sys.stdout.flush(); time.sleep(0.3)
    sys.stdout.write("|"); sys.stdout.flush(); time.sleep(0.3)
print("end")
"#;
    let o = h.run_approved(
        &[
            "run", "--env", "demo", "--wait", "30", "--", "python3", "-c", program,
        ],
        Duration::from_secs(90),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.ends_with("end\n"), "{out}");
    let v = value.as_bytes();
    for w in v.windows(4) {
        assert!(
            !contains(&o.stdout, std::str::from_utf8(w).unwrap()),
            "4 bytes of the value in a row arrived: {out}"
        );
    }
}

/// The same attack in the decoding pass's forms (issue 15): every character of the value
/// written as its own escape (ten-digit decimal reference, `%uXXXX`, `\x{..}`, a plain
/// character and a zero width space), one per write, with pauses longer than the relay's 200 ms.
/// No four encoded characters in a row ever arrive.
#[test]
fn a_value_printed_one_escape_per_pause_stays_unreadable() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let program = r#"
import os, sys, time
v = os.environ["API_TOKEN"]
forms = [lambda c: "&#%010d;" % ord(c), lambda c: "%%u%04X" % ord(c),
         lambda c: "\\x{%x}" % ord(c), lambda c: c + "\u200b"]
for i, c in enumerate(v):
    sys.stdout.write(forms[i % 4](c)); sys.stdout.flush(); time.sleep(0.25)
print("end")
"#;
    let o = h.run_approved(
        &[
            "run", "--env", "demo", "--wait", "30", "--", "python3", "-c", program,
        ],
        Duration::from_secs(90),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.ends_with("end\n"), "{out}");
    let enc: Vec<String> = value
        .chars()
        .enumerate()
        .map(|(i, c)| match i % 4 {
            0 => format!("&#{:010};", c as u32),
            1 => format!("%u{:04X}", c as u32),
            2 => format!("\\x{{{:x}}}", c as u32),
            _ => format!("{c}\u{200b}"),
        })
        .collect();
    for w in enc.windows(4) {
        let run = w.concat();
        assert!(
            !out.contains(&run),
            "4 encoded characters in a row arrived: {out}"
        );
    }
}

/// Issue 15 §7 through the real broker: a granted child prints its value as base-2 digits and
/// as byte dumps with offsets (`xxd -b`, `od -b`, `od -tu1`, Python's `format(b, '08b')`);
/// what reaches the requester holds no two bytes of the value in a row in any of those radixes.
#[test]
fn a_value_printed_in_bits_or_byte_dumps_arrives_redacted() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let script = r#"printf '%s' "$API_TOKEN" | xxd -b
printf '%s' "$API_TOKEN" | od -b
printf '%s' "$API_TOKEN" | od -tu1
python3 -c 'import os; print(" ".join(format(b, "08b") for b in os.environ["API_TOKEN"].encode()))'
python3 -c 'import os; print("".join(format(b, "08b") for b in os.environ["API_TOKEN"].encode()))'
echo done"#;
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "sh", "-c", script],
        Duration::from_secs(60),
    );
    let out = text(&o.stdout);
    assert!(out.contains("done"), "{}", text(&o.stderr));
    assert!(out.contains("[REDACTED:API_TOKEN]"), "the forms were found");
    let bytes = value.as_bytes();
    for pair in bytes.windows(2) {
        let bin = format!("{:08b} {:08b}", pair[0], pair[1]);
        let joined = format!("{:08b}{:08b}", pair[0], pair[1]);
        let oct = format!("{:03o} {:03o}", pair[0], pair[1]);
        for form in [bin, joined, oct] {
            assert!(
                !out.contains(&form),
                "two bytes of the value in a row got through in a dump form"
            );
        }
    }
    // Decimal bytes are short: four in a row, in `od -tu1`'s right-aligned columns.
    for quad in bytes.windows(4) {
        let dec = quad
            .iter()
            .map(|b| format!("{b:>3}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            !out.contains(&dec),
            "four bytes of the value in decimal got through"
        );
    }
    assert_clean(&o.stdout, &value);
}
