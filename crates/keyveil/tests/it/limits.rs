//! Honest limits (issue 21, item 9): what keyveil cannot do is refused up front, with the limit
//! stated and a hint, and bad input loses nothing: a value Linux could never inject is refused
//! at `set` (also over the socket's 16 MiB frame limit, with the same clear error, not a lost
//! connection; the client's own frame check is `client::tests`), more than 4,096 arguments are refused saying so, and a mistyped command refuses
//! the run without ending a standing grant.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::*;

/// One request frame, raw (as an agent with the socket would send it); the first reply.
fn raw_request(h: &Home, req: &Value) -> Value {
    let mut s = UnixStream::connect(h.path().join("run/broker.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = serde_json::to_vec(req).unwrap();
    let mut f = u32::try_from(body.len() + 1)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    f.push(0);
    f.extend_from_slice(&body);
    s.write_all(&f).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut reply).unwrap();
    serde_json::from_slice(&reply[1..]).unwrap()
}

fn names(h: &Home) -> String {
    h.ok(&["env", "show", "demo"])
}

#[test]
fn set_refuses_values_linux_could_never_inject_and_says_the_limit() {
    let h = Home::new();
    // Just under the limit (NAME=value and its NUL in 131072 bytes): stored, and injected.
    let fits = "a".repeat(131_072 - "BIG_OK".len() - 2);
    h.set_unverified("demo", "BIG_OK", &fits);
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--only",
            "BIG_OK",
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            "printf %s \"$BIG_OK\" | wc -c",
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), fits.len().to_string());
    // One byte more: refused by the CLI, before anything is sent, with the limit and a hint.
    let over = "b".repeat(fits.len() + 1);
    let o = h.run_stdin(&["set", "demo", "BIG_NO", "--from-stdin"], &over);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("131072") && err.contains("hint:"), "{err}");
    assert!(!err.contains("bbbbbbbb"));
    assert!(!names(&h).contains("BIG_NO"));
    // The broker refuses it too (a client that skips the check).
    let r = raw_request(
        &h,
        &json!({"op": "var_set", "environment": "demo", "name": "RAW_BIG", "value": over, "sealed_value": null, "factor": null}),
    );
    assert_eq!(r["kind"], "error", "{}", r["kind"]);
    assert!(
        r["message"].as_str().unwrap().contains("131072"),
        "{}",
        r["message"]
    );
    assert!(r["hint"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(!names(&h).contains("RAW_BIG"));
    // Over the socket's 16 MiB frame: the same clear refusal, not a lost connection.
    let huge = "c".repeat(17 * 1024 * 1024);
    let o = h.run_stdin(&["set", "demo", "HUGE", "--from-stdin"], &huge);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("131072") && !err.contains("connection"),
        "{err}"
    );
}

#[test]
fn more_than_4096_arguments_are_refused_saying_the_limit() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_limits_Qm3vX8pLk2Rw");
    let mut args: Vec<String> = ["run", "--env", "demo", "--wait", "1", "--", "echo"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend((0..5000).map(|i| format!("a{i}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = h.run(&args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("5001 arguments") && err.contains("4096") && err.contains("hint:"),
        "{err}"
    );
}

#[test]
fn a_mistyped_command_is_refused_and_the_standing_grant_stays() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_limits_Qm3vX8pLk2Rw");
    let first = h.spawn_run(&["run", "--env", "demo", "--wait", "30", "--", "true"]);
    let id = h.wait_request();
    let a = h.approve(id, &["--any-command", "--ttl", "10m"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let o = wait_output(first, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = h.run(&["run", "--env", "demo", "--wait", "1", "--", "pythn3", "-V"]);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(err.contains("pythn3") && err.contains("not found"), "{err}");
    assert!(!err.contains("was ended"), "{err}");
    let grants = h.json(&["grants", "--json"]);
    assert_eq!(grants.as_array().map(Vec::len), Some(1), "{grants}");
    assert_ne!(grants[0]["revoked"], true, "{grants}");
    let o = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "the grant ended: {}",
        text(&o.stderr)
    );
}

/// `keyveil ARGS` (with `input` on stdin) as root without the capabilities that bypass file
/// permissions, so a directory without search permission stops it as it stops a normal user;
/// the broker it starts inherits that.
fn run_without_dac_override(h: &Home, args: &[&str], input: &str) -> std::process::Output {
    let mut c = std::process::Command::new("setpriv");
    c.args(["--bounding-set", "-dac_override,-dac_read_search", "--"])
        .arg(setsid())
        .arg("-w")
        .arg(bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h.path())
        .env("KEYVEIL_HOME", h.path())
        .env("LANG", "C.UTF-8")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.as_bytes().to_vec();
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    wait_output(child, CLI_LIMIT)
}

#[test]
fn a_working_directory_without_search_permission_is_named_as_the_problem() {
    use std::os::unix::fs::PermissionsExt;
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_limits_Qm3vX8pLk2Rw");
    let outside = tempfile::tempdir().unwrap();
    let locked = outside.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.ok(&["daemon", "stop"]);
    let u = run_without_dac_override(&h, &["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    if !u.status.success() && text(&u.stderr).contains("setpriv") {
        return; // no setpriv: nothing to check
    }
    assert!(u.status.success(), "{}", text(&u.stderr));
    let cwd = locked.to_str().unwrap();
    let o = run_without_dac_override(
        &h,
        &[
            "run", "--env", "demo", "--wait", "1", "--cwd", cwd, "--", "true",
        ],
        "",
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot be entered") && err.contains("search") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains("the command exists"), "{err}");
    h.ok(&["daemon", "stop"]);
}
