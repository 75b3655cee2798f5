//! `keyveil approve --watch` at a terminal (issue 17, item 9): one key answers (no Enter), `8`
//! approves for 8 hours, and the factor is still asked at a hidden prompt on the terminal. The
//! terminal is a pty of the test's own (`script`), never the developer's.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The watcher on a pty of its own: `script` runs it as the session leader of a new terminal.
struct Watcher {
    child: std::process::Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl Watcher {
    fn start(h: &Home) -> Watcher {
        Watcher::on_pty(h, "approve --watch")
    }

    /// `keyveil ARGS` (words without quoting) on a pty of its own.
    fn on_pty(h: &Home, args: &str) -> Watcher {
        let mut child = Command::new(setsid())
            .arg("-w")
            .arg("script")
            .args(["-qfec", &format!("{} {args}", bin().display()), "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", h.path())
            .env("KEYVEIL_HOME", h.path())
            .env("LANG", "C.UTF-8")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("script (util-linux) runs");
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut r = child.stdout.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 4096];
            while let Ok(n) = r.read(&mut b) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&b[..n]);
            }
        });
        Watcher { child, out }
    }

    fn wait_for(&self, what: &str) {
        let t0 = Instant::now();
        while !contains(&self.out.lock().unwrap(), what) {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the watcher never showed {what:?}: {}",
                text(&self.out.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_in(&mut self, s: &str) {
        let w = self.child.stdin.as_mut().unwrap();
        w.write_all(s.as_bytes()).unwrap();
        w.flush().unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn one_key_approves_for_eight_hours_and_the_factor_stays_hidden() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "kvwatch_fake_Zq81mN4pV7");
    let run = h.spawn_run(&["run", "--env", "demo", "--wait", "60", "--", "true"]);
    let id = h.wait_request();
    let mut w = Watcher::start(&h);
    w.wait_for("[8] hours");
    // One key, no Enter.
    w.type_in("8");
    w.wait_for("Vault passphrase");
    w.type_in(&format!("{PASS}\n"));
    w.wait_for(&format!("approved #{id}: grant"));
    let o = wait_output(run, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let grants = h.json(&["grants", "--json"]);
    let g = &grants[0];
    let created: jiff::Timestamp = g["created_at"].as_str().unwrap().parse().unwrap();
    let expires: jiff::Timestamp = g["expires_at"].as_str().unwrap().parse().unwrap();
    let secs = expires.duration_since(created).as_secs();
    assert!(
        (8 * 3600 - 60..=8 * 3600 + 60).contains(&secs),
        "grant of {secs} s: {grants}"
    );
    // The passphrase was typed at a prompt that does not echo.
    assert!(!contains(&w.out.lock().unwrap(), PASS));
}

#[test]
fn a_key_that_means_nothing_skips_and_ctrl_c_stops_without_approving() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "kvwatch_fake_Zq81mN4pV7");
    let run = h.spawn_run(&["run", "--env", "demo", "--wait", "20", "--", "true"]);
    let id = h.wait_request();
    let mut w = Watcher::start(&h);
    w.wait_for("[8] hours");
    w.type_in("x");
    w.wait_for(&format!("skipped #{id}"));
    // A second request: Ctrl-C at its prompt (a key in raw mode) stops the watcher.
    let run2 = h.spawn_run(&["run", "--env", "demo", "--wait", "20", "--", "false"]);
    w.wait_for(&format!("request #{}", id + 1));
    std::thread::sleep(Duration::from_millis(300));
    w.type_in("\u{3}");
    w.wait_for("stopped watching");
    assert_eq!(h.json(&["grants", "--json"]), serde_json::json!([]));
    drop(w);
    for r in [run, run2] {
        let o = wait_output(r, Duration::from_secs(40));
        assert!(!o.status.success());
    }
}

/// `set --web` at a terminal says when the value typed on the page was stored (issue 17,
/// item 9), without ever showing it.
#[test]
fn set_web_at_a_terminal_confirms_when_the_value_is_stored() {
    let h = Home::new();
    let w = Watcher::on_pty(&h, "set demo DB_PASSWORD --web");
    w.wait_for("waiting for the value");
    let shown = text(&w.out.lock().unwrap());
    let url = shown
        .split_whitespace()
        .find(|t| t.starts_with("http://127.0.0.1:"))
        .unwrap()
        .to_owned();
    let rest = url.strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    let port: u16 = port.parse().unwrap();
    let (status, head, _) = crate::setup::http(port, "GET", &format!("/{path}"), &[], "");
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().split(';').next().unwrap().to_owned())
        .unwrap();
    let (_, _, form) = crate::setup::http(port, "GET", "/set", &[("Cookie", &cookie)], "");
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let origin = format!("http://127.0.0.1:{port}");
    let value = "page-typed-value-Kq7Wm2Zx";
    let (s, _, body) = crate::setup::http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}&value={value}"),
    );
    assert_eq!(s, 200, "{body}");
    w.wait_for("stored: demo/DB_PASSWORD has its value");
    assert!(!contains(&w.out.lock().unwrap(), value));
}

/// Issue 17, item 4: six digits typed at `keyveil approve ID`'s hidden prompt are a TOTP code
/// where the policy takes one (it once answered "wrong passphrase"); and, item 7, with hidden
/// names the same terminal then shows `ALIAS = REAL_NAME` and a yes typed there approves.
#[test]
fn a_totp_code_typed_at_the_prompt_approves_and_hidden_names_are_shown_there() {
    const REAL: &str = "PAYROLL_BANK_TOKEN";
    let h = Home::new();
    h.set("demo", REAL, "kvwatch_fake_Zq81mN4pV7");
    let secret = enroll(&h);
    for change in [["factor", "totp"], ["hide-names", "on"]] {
        let mut args = vec!["policy", "set", "demo"];
        args.extend_from_slice(&change);
        args.push("--passphrase-stdin");
        let o = h.run_stdin(&args, &format!("{PASS}\n"));
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    let alias = h.json(&["env", "show", "demo", "--json"])["variables"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let run = h.spawn_run(&[
        "run", "--env", "demo", "--only", &alias, "--wait", "60", "--", "true",
    ]);
    let id = h.wait_request();
    let mut w = Watcher::on_pty(&h, &format!("approve {id}"));
    w.wait_for("to approve: ");
    w.type_in(&format!("{}\n", totp_code(&secret, 1)));
    w.wait_for(&format!("{alias} = {REAL}"));
    w.wait_for("as shown? [y/N]");
    w.type_in("y\n");
    w.wait_for(&format!("approved request #{id}"));
    let o = wait_output(run, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// Issue 17, item 4: at enrolment, a mistyped first code asks again at the terminal (it once
/// ended the enrolment), and the right code then enrols.
#[test]
fn a_wrong_first_code_at_enrolment_asks_again() {
    let h = Home::new();
    let mut w = Watcher::on_pty(&h, "factor enroll totp");
    w.wait_for("assphrase");
    w.type_in(&format!("{PASS}\n"));
    w.wait_for("Code shown by the app: ");
    let shown = text(&w.out.lock().unwrap());
    let secret = shown
        .split("secret=")
        .nth(1)
        .expect("an otpauth URI")
        .split(['&', '\r', '\n'])
        .next()
        .unwrap()
        .to_owned();
    // A code 50 steps (25 minutes) away: not one the broker takes now.
    w.type_in(&format!("{}\n", totp_code(&secret, 50)));
    w.wait_for("try again with the code the app shows now");
    w.type_in(&format!("{}\n", totp_code(&secret, 0)));
    w.wait_for("TOTP enrolled");
    let shown = h.json(&["policy", "show", "demo", "--json"]);
    assert_eq!(shown["totp_enrolled"], true, "{shown}");
}

/// `keyveil init` at a terminal refuses a passphrase under the length rule right after the
/// first entry, says the rule, and asks again (the repeat prompt comes only for one that passes).
#[test]
fn init_at_a_terminal_refuses_a_short_passphrase_at_once_and_asks_again() {
    let h = Home::empty();
    let mut w = Watcher::on_pty(&h, "init --kdf-memory-kib 19456");
    w.wait_for("New vault passphrase");
    w.type_in("seven77\n");
    w.wait_for("too short: a vault passphrase has at least 8 characters; try again");
    // Asked again for a new one, not for the short one repeated.
    assert!(!contains(&w.out.lock().unwrap(), "Repeat passphrase"));
    let t0 = Instant::now();
    while text(&w.out.lock().unwrap())
        .matches("New vault passphrase")
        .count()
        < 2
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "not asked again");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!h.path().join("vault.kv").exists());
    w.type_in(&format!("{PASS}\n"));
    w.wait_for("Repeat passphrase");
    w.type_in(&format!("{PASS}\n"));
    w.wait_for("created vault");
    assert!(h.path().join("vault.kv").exists());
    assert!(!contains(&w.out.lock().unwrap(), PASS));
}

/// Two different entries at `keyveil init`: refused with a way forward, nothing created.
#[test]
fn init_at_a_terminal_with_two_different_entries_says_what_to_do() {
    let h = Home::empty();
    let mut w = Watcher::on_pty(&h, "init --kdf-memory-kib 19456");
    w.wait_for("New vault passphrase");
    w.type_in(&format!("{PASS}\n"));
    w.wait_for("Repeat passphrase");
    w.type_in("fixture-other-passphrase-1\n");
    w.wait_for("the passphrases differ; nothing was created");
    w.wait_for("hint: run `keyveil init` again and type the same passphrase at both prompts");
    assert!(!h.path().join("vault.kv").exists());
}
