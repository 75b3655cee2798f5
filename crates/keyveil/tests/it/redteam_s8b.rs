//! Red team (issue 17 follow-up): hidden names shown to the human and card redaction (G8, G19).
//!
//! The attacker is the coding agent: same uid, the CLI, the socket. Values are made at runtime.

use std::time::Duration;

use crate::harness::{Home, contains, text};

/// `n` random characters of `[A-Za-z0-9]` from the OS.
fn random_alnum(n: usize) -> String {
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter()
        .map(|x| ALPHA[usize::from(*x) % ALPHA.len()] as char)
        .collect()
}

/// The argv of the last pending card, as the agent reads it with `keyveil requests --json`.
fn last_card_argv(h: &Home) -> (u64, Vec<String>) {
    let id = h.wait_request();
    let list = h.json(&["requests", "--json"]);
    let card = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_u64() == Some(id))
        .unwrap()
        .clone();
    let argv = card["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_owned())
        .collect();
    (id, argv)
}

/// Which words of `argv` (the command's own words, after the program) a card masks.
fn masked_words(argv: &[String]) -> Vec<usize> {
    argv.iter()
        .skip(1)
        .enumerate()
        .filter(|(_, w)| w.contains("[REDACTED"))
        .map(|(i, _)| i)
        .collect()
}

/// The card redactor matches any 12-byte fragment of a random-looking value, and the agent
/// chooses a run's argv and reads its card back: a value with a known part (a vendor's fixed
/// token prefix, a PEM body's standard start) is read one character at a time, 62 candidates
/// per request (each the last 11 known bytes and one more), the one the card masks being the
/// next character. The issue 19 sweep oracle, again, through cards.
#[test]
fn the_card_redactor_is_no_oracle_for_a_value_with_a_known_part() {
    let h = Home::new();
    let known = "acme_live_key_";
    let value = format!("{known}{}", random_alnum(30));
    h.set("demo", "ACME_KEY", &value);
    let alphabet: Vec<char> = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        .chars()
        .collect();
    let mut learned = known.to_owned();
    let mut rounds_that_told = 0;
    for _ in 0..3 {
        let tail = learned[learned.len() - 11..].to_owned();
        let candidates: Vec<String> = alphabet.iter().map(|c| format!("{tail}{c}")).collect();
        let mut args = vec!["run", "--env", "demo", "--", "echo"];
        args.extend(candidates.iter().map(String::as_str));
        let mut c = h.spawn_run(&args);
        let (id, argv) = last_card_argv(&h);
        h.run(&["deny", &id.to_string()]);
        let _ = c.kill();
        let _ = c.wait();
        // No answer (nothing masked, or every candidate masked alike) is what must hold.
        let masked = masked_words(&argv);
        if masked.len() != 1 {
            break;
        }
        rounds_that_told += 1;
        learned.push(alphabet[masked[0]]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let right = learned.len() > known.len() && value.starts_with(&learned);
    assert!(
        rounds_that_told == 0,
        "{rounds_that_told} of 3 requests singled out one candidate; the agent's reading is {} (never printed)",
        if right { "right" } else { "wrong" }
    );
}

/// A structured value's secret leaves are atoms of their own (`"password": "…"` in a JSON
/// value, the password of a URL, `KEY=…` lines), however short or guessable, while the
/// guessability check of the card redactor looks at the whole value only: every 4-digit PIN
/// as a word of one request, and the card masks the right one.
#[test]
fn the_card_redactor_is_no_oracle_for_a_short_leaf_of_a_structured_value() {
    let h = Home::new();
    // Four random digits, drawn from random text until four are found (one 64-character draw
    // holds fewer than four about once in a hundred runs).
    let pin: String = std::iter::repeat_with(|| random_alnum(64))
        .flat_map(|s| s.into_bytes())
        .filter(u8::is_ascii_digit)
        .take(4)
        .map(char::from)
        .collect();
    assert_eq!(pin.len(), 4);
    let value = format!(
        "{{\"api_key\":\"{}\",\"password\":\"{pin}\"}}",
        random_alnum(32)
    );
    h.set("demo", "APP_CONFIG", &value);
    // Every PIN, 2,500 space-separated words per argument.
    let all: Vec<String> = (0..10_000).map(|n| format!("{n:04}")).collect();
    let words: Vec<String> = all.chunks(2_500).map(|c| c.join(" ")).collect();
    let mut args = vec!["run", "--env", "demo", "--", "echo"];
    args.extend(words.iter().map(String::as_str));
    let mut c = h.spawn_run(&args);
    let (id, argv) = last_card_argv(&h);
    h.run(&["deny", &id.to_string()]);
    let _ = c.kill();
    let _ = c.wait();
    let shown: Vec<&str> = argv.iter().skip(1).flat_map(|w| w.split(' ')).collect();
    let masked: Vec<usize> = shown
        .iter()
        .enumerate()
        .filter(|(_, w)| w.contains("[REDACTED"))
        .map(|(i, _)| i)
        .collect();
    let right = masked.len() == 1 && all.get(masked[0]) == Some(&pin);
    assert!(
        masked.is_empty() || masked.len() == all.len(),
        "the card masked {} of {} candidates; the one it singled out is {} (never printed)",
        masked.len(),
        all.len(),
        if right { "the PIN" } else { "not the PIN" }
    );
}

/// A grant listing shows a grant's argv and cwd redacted, but not the path of its pinned
/// executable (or inputs): a granted child that runs `keyveil run` with a program under a
/// directory named after a value gets a card the human sees masked, and once approved, the
/// agent reads the value in `keyveil grants --json`.
#[test]
fn a_grants_listing_redacts_the_pinned_executable_path() {
    let h = Home::new();
    let token = random_alnum(32);
    h.set("demo", "API_TOKEN", &token);
    // The granted child makes a directory named after the value and asks for a run of a
    // program in it.
    let (mut c, id) = h.granted_ask(
        r#"d=$(mktemp -d) && mkdir "$d/$API_TOKEN" && cp /bin/sleep "$d/$API_TOKEN/sleep" && KV run --env demo --wait 60 -- "$d/$API_TOKEN/sleep" 30"#,
    );
    let cards = h.run(&["requests", "--json"]).stdout;
    assert!(!contains(&cards, &token), "the card shows the value");
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
    h.wait_live_runs(2);
    let listing = h.run(&["grants", "--json"]).stdout;
    let audit = h.audit_text();
    let _ = c.kill();
    let _ = c.wait();
    let mut leaks = Vec::new();
    if contains(&listing, &token) {
        leaks.push("`keyveil grants --json`".to_owned());
    }
    for line in audit.lines().filter(|l| l.contains(&token)) {
        let kind: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        leaks.push(format!("audit entry {}", kind["event"]));
    }
    assert!(leaks.is_empty(), "the value is shown by: {leaks:?}");
}

/// The desktop notification for a new request quoted its argv and reason unredacted, and the
/// notifier's command line (`notify-send … BODY`) is readable in `/proc` by the agent: a
/// granted child's `keyveil run -- tool VALUE` put the value there while the card masked it.
#[test]
fn the_desktop_notification_of_a_request_holds_no_value() {
    use std::io::Write;
    use std::process::Stdio;
    let h = Home::empty();
    // A fake notify-send that records its argv (what `/proc/PID/cmdline` shows the agent).
    let bin = h.path().join("fakebin");
    std::fs::create_dir(&bin).unwrap();
    let log = h.path().join("notified");
    let script = bin.join("notify-send");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut init = h.cmd(&["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"]);
    init.env("PATH", &path)
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = init.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", crate::harness::PASS).as_bytes())
        .unwrap();
    let o = crate::harness::wait_output(child, crate::harness::CLI_LIMIT);
    assert!(o.status.success(), "{}", text(&o.stderr));
    h.ok(&["env", "create", "demo"]);
    let token = random_alnum(32);
    h.set("demo", "API_TOKEN", &token);
    // The granted child asks for a run with the value in argv and reason.
    let (mut c, id) = h.granted_ask(
        r#"KV run --env demo --wait 60 --reason "deploy $API_TOKEN" -- echo "$API_TOKEN""#,
    );
    let t0 = std::time::Instant::now();
    // The first notification is the granted child's own request's; wait for the second.
    let args = loop {
        if let Ok(b) = std::fs::read(&log)
            && (String::from_utf8_lossy(&b).contains("[REDACTED:API_TOKEN]")
                || contains(&b, &token))
        {
            break b;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no notification was shown"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    h.run(&["deny", &id.to_string()]);
    let _ = c.kill();
    let _ = c.wait();
    assert!(
        !contains(&args, &token),
        "the notifier's command line shows the value"
    );
    assert!(
        String::from_utf8_lossy(&args).contains("[REDACTED:API_TOKEN]"),
        "the notification says a value was masked"
    );
}
