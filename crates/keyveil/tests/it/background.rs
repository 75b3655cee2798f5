//! Issue 13, item 6b: what `logs` returns is redacted as one stream.
//!
//! A background run's stdout and stderr are each redacted on their own relay; the ring that
//! `logs` reads joins them. A child that prints a value (and its hex and base64 forms) in
//! 8-byte pieces alternating between stdout and stderr has no fragment long enough to be marked
//! on either stream, yet the pieces meet in the ring: the ring is redacted again as one stream.

use std::time::{Duration, Instant};

use crate::harness::*;
use crate::oracle::{random_alnum, raw};

#[test]
fn background_logs_are_redacted_as_one_stream_across_stdout_and_stderr() {
    let h = Home::new();
    let value = random_alnum(40);
    h.set("demo", "API_TOKEN", &value);
    // The value, its hex and its base64 forms, twice, in 8-byte pieces: even pieces on stdout,
    // odd ones on stderr, with a pause so each is read on its own.
    let script = r#"v="$API_TOKEN"
s="$v$(printf %s "$v" | od -An -tx1 | tr -d ' \n')$(printf %s "$v" | base64 -w0)"
s="$s$s"
i=0
while [ -n "$s" ]; do
  p=$(printf %s "$s" | cut -c1-8); s=$(printf %s "$s" | cut -c9-)
  if [ $((i % 2)) = 0 ]; then printf %s "$p"; else printf %s "$p" >&2; fi
  i=$((i + 1)); sleep 0.02
done
printf 'done\n'"#;
    let child = h.spawn_run(&[
        "start", "--env", "demo", "--wait", "30", "--", "sh", "-c", script,
    ]);
    let id = h.wait_request();
    let o = h.approve(id, &["--ttl", "10m"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run = text(&o.stdout).trim().to_owned();
    assert!(run.starts_with("r-"), "{run}");

    // Until it has ended (every held byte is flushed then).
    let t0 = Instant::now();
    let out = loop {
        let o = h.run(&["logs", &run]);
        if text(&o.stderr).contains("ended") {
            break text(&o.stdout);
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "run did not end");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(out.contains("done"), "{out}");
    for enc in encodings(&value) {
        assert!(
            !out.contains(&enc),
            "`logs` holds a form of the value: {out}"
        );
    }
    assert!(out.contains("[REDACTED:API_TOKEN]"), "{out}");
    // Read over the raw socket in 7-byte steps and joined, as an agent following the log would.
    let mut joined = String::new();
    let mut from = 0u64;
    loop {
        let r = raw(
            &h,
            &serde_json::json!({"op": "logs", "run_id": run, "from": from, "max_bytes": 7}),
        );
        assert_eq!(r["kind"], "ok", "{r}");
        let v = &r["data"];
        let piece = v["output"].as_str().unwrap_or_default();
        if piece.is_empty() {
            break;
        }
        joined.push_str(piece);
        from = v["next"].as_u64().unwrap();
    }
    for enc in encodings(&value) {
        assert!(!joined.contains(&enc), "joined `logs` reads hold the value");
    }
}
