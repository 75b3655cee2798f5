//! The approval flow through the CLI: no grant, no process; scope; expiry; factor.

use std::time::Duration;

use crate::harness::*;

const TOKEN: &str = "tok_Zq8vN3kLp2XwR7yB5mHcT1dF";

fn probe_cmd(marker: &std::path::Path) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!(
            "touch {}; printf 'sha=%s\\n' \"$(printf %s \"$API_TOKEN\" | sha256sum | cut -d' ' -f1)\"; echo \"raw=$API_TOKEN\"",
            marker.display()
        ),
    ]
}

fn run_args(cmd: &[String], wait: &str) -> Vec<String> {
    let mut v: Vec<String> = ["run", "--env", "demo", "--wait", wait, "--"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend_from_slice(cmd);
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn approved_run_gets_the_value_and_output_is_redacted() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let marker = h.path().join("ran");
    let cmd = probe_cmd(&marker);
    let child = h.spawn_run(&strs(&run_args(&cmd, "30")));
    let id = h.wait_request();
    assert!(!marker.exists(), "the command ran before approval");
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", text(&o.stderr));
    assert!(out.contains(&format!("sha={}", sha256_hex(TOKEN))), "{out}");
    assert!(out.contains("raw=[REDACTED:API_TOKEN]"), "{out}");
    assert!(marker.exists());
    // The pending notice told the user what to do.
    assert!(text(&o.stderr).contains(&format!("keyveil approve {id}")));
    // Nothing keyveil wrote in plain text holds the value or its encodings.
    let files = h.all_plain_files();
    for enc in encodings(TOKEN) {
        assert!(
            !contains(&files, &enc),
            "a plain file holds an encoding of the value"
        );
        assert!(!contains(&o.stdout, &enc) && !contains(&o.stderr, &enc));
    }
    // Once-grants are used up: the same command asks again.
    let again = h.run(&strs(&run_args(&cmd, "1")));
    assert_eq!(again.status.code(), Some(5), "{}", text(&again.stderr));
}

#[test]
fn no_grant_no_process_and_a_grant_covers_only_its_argv() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let marker = h.path().join("ran");
    let cmd = probe_cmd(&marker);
    // No approval: times out with exit 5, command never started.
    let o = h.run(&strs(&run_args(&cmd, "1")));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(!marker.exists());
    // Approve it for 5 minutes, many uses.
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let ok = h.run(&strs(&run_args(&cmd, "5")));
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    // Another argv is not covered: `sh -c env`, or the same with one more argument.
    let env_dump = vec!["sh".to_string(), "-c".to_string(), "env".to_string()];
    let o = h.run(&strs(&run_args(&env_dump, "1")));
    assert_eq!(o.status.code(), Some(5));
    assert!(!contains(&o.stdout, TOKEN));
    let mut longer = cmd.clone();
    longer.push("extra".into());
    assert_eq!(h.run(&strs(&run_args(&longer, "1"))).status.code(), Some(5));
    // Another working directory is not covered either.
    let other = tempfile::tempdir().unwrap();
    let mut args = run_args(&cmd, "1");
    args.insert(1, other.path().to_string_lossy().into_owned());
    args.insert(1, "--cwd".into());
    assert_eq!(h.run(&strs(&args)).status.code(), Some(5));
}

#[test]
fn expired_grants_are_refused() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let cmd = vec!["true".to_string()];
    let _ = h.run(&strs(&run_args(&cmd, "0")));
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "1s"]).status.success());
    std::thread::sleep(Duration::from_millis(1500));
    let o = h.run(&strs(&run_args(&cmd, "0")));
    assert_eq!(
        o.status.code(),
        Some(5),
        "an expired grant served a run: {}",
        text(&o.stderr)
    );
    assert!(h.audit_text().contains("\"expired\""));
}

#[test]
fn a_wrong_passphrase_is_refused_by_the_cli_and_never_locks_the_human_out() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let _ = h.run(&strs(&run_args(&["true".to_string()], "0")));
    let id = h.wait_request();
    let ids = id.to_string();
    for _ in 0..6 {
        let o = h.run_stdin(
            &["approve", &ids, "--passphrase-stdin"],
            "not the passphrase\n",
        );
        assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains("wrong passphrase") && err.contains("nothing was sent"),
            "{err}"
        );
        assert!(!err.contains("not the passphrase"));
    }
    // Typos cost the human nothing: the passphrase is checked against the vault file by the
    // CLI (offline, as anyone holding the file could), and the right one still approves.
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let audit = h.audit_text();
    assert!(!audit.contains("\"factor_locked\""), "{audit}");
    assert!(!audit.contains("not the passphrase") && !audit.contains(PASS));
}

#[test]
fn revoke_kills_a_live_run_and_timeout_kills_too() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        "sleep 30 & sleep 30; echo survived".to_string(),
    ];
    let child = h.spawn_run(&strs(&run_args(&cmd, "30")));
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    h.wait_live_runs(1);
    let grants = h.json(&["grants", "--json"]);
    let gid = grants[0]["id"].as_str().unwrap().to_owned();
    h.ok(&["revoke", &gid]);
    let o = wait_output(child, Duration::from_secs(10));
    assert_ne!(o.status.code(), Some(0));
    assert!(!text(&o.stdout).contains("survived"));
    assert!(text(&o.stderr).contains("revoked"), "{}", text(&o.stderr));

    // Timeout: --timeout 1 on a sleeping command.
    let cmd = vec!["sleep".to_string(), "20".to_string()];
    let mut args = run_args(&cmd, "30");
    args.insert(1, "1".into());
    args.insert(1, "--timeout".into());
    let o = h.run_approved(&strs(&args), Duration::from_secs(15));
    assert_eq!(o.status.code(), Some(128 + 15), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("timed out"));
}

#[test]
fn bad_input_gets_clear_errors() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let o = h.run(&["run", "--env", "nope", "--wait", "0", "--", "true"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains("no environment named 'nope'") && e.contains("hint: environments: demo"),
        "{e}"
    );
    let o = h.run_stdin(&["set", "demo", "1BAD-NAME", "--from-stdin"], "value-value");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("invalid variable name"),
        "{}",
        text(&o.stderr)
    );
    let o = h.run(&["run", "--env", "demo", "--wait", "0", "--"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "empty command must be a usage error"
    );
    let o = h.run(&[
        "run", "--env", "demo", "--only", "MISSING", "--wait", "0", "--", "true",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("has no variable 'MISSING'"));
    // Binary output passes through unchanged (and is still redacted).
    let cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        "printf '\\000\\377\\376%s\\001' \"$API_TOKEN\"".to_string(),
    ];
    let o = h.run_approved(&strs(&run_args(&cmd, "30")), Duration::from_secs(15));
    let mut want = vec![0u8, 0xff, 0xfe];
    want.extend_from_slice(b"[REDACTED:API_TOKEN]");
    want.push(1);
    assert_eq!(o.stdout, want);
    // Short values warn.
    let o = h.run_stdin(&["set", "demo", "PIN", "--from-stdin"], "4821\n");
    assert!(o.status.success());
    assert!(text(&o.stderr).contains("shorter than 8 bytes"));
}

#[test]
fn a_second_broker_on_the_same_home_is_refused() {
    let h = Home::new();
    let o = h.run(&["daemon", "--foreground"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("another keyveil broker is already running"),
        "{}",
        text(&o.stderr)
    );
    // The first one still answers.
    assert_eq!(h.json(&["status", "--json"])["running"], true);
}

#[test]
fn lock_revokes_and_unlock_needs_the_passphrase() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    h.ok(&["lock"]);
    let o = h.run(&["env", "list"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(text(&o.stderr).contains("keyveil unlock"));
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], "wrong one\n");
    assert_eq!(o.status.code(), Some(3));
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(h.ok(&["env", "list"]).contains("API_TOKEN"));
}

#[test]
fn two_racing_approvals_make_one_grant() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let o = h.run(&strs(&run_args(&["true".to_string()], "0")));
    assert_eq!(o.status.code(), Some(5));
    let id = h.wait_request();
    let ids = id.to_string();
    let spawn = || {
        let mut c = h.cmd(&["approve", &ids, "--passphrase-stdin"]);
        c.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{PASS}\n").as_bytes())
            .unwrap();
        child
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(
        ok,
        1,
        "exactly one approval wins: {} / {}",
        text(&a.stderr),
        text(&b.stderr)
    );
    let loser = if a.status.success() { &b } else { &a };
    assert!(
        text(&loser.stderr).contains("no longer pending"),
        "{}",
        text(&loser.stderr)
    );
    assert_eq!(h.json(&["grants", "--json"]).as_array().unwrap().len(), 1);
}

#[test]
fn code_loading_variable_names_cannot_be_stored() {
    let h = Home::new();
    for name in [
        "BASH_ENV",
        "LD_PRELOAD",
        "PATH",
        "NODE_OPTIONS",
        "PYTHONSTARTUP",
        "GIT_SSH_COMMAND",
    ] {
        let o = h.run_stdin(
            &["set", "demo", name, "--from-stdin"],
            "/tmp/evil-payload.sh\n",
        );
        assert_eq!(o.status.code(), Some(3), "{name}: {}", text(&o.stderr));
        assert!(text(&o.stderr).contains("refused"), "{}", text(&o.stderr));
        let o = h.run(&["generate", "demo", name]);
        assert_eq!(o.status.code(), Some(3), "{name}");
    }
    assert!(!h.ok(&["env", "show", "demo"]).contains("BASH_ENV"));
}

#[test]
fn an_empty_passphrase_on_stdin_is_a_usage_error_not_a_wrong_factor() {
    let h = Home::new();
    let o = h.run_stdin(&["approve", "1", "--passphrase-stdin"], "");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("nothing was read from stdin"));
    assert!(
        !h.audit_text().contains("factor_failed"),
        "an empty read must not cost an attempt"
    );
}

#[test]
fn a_run_gets_a_private_tmpdir_that_is_scanned_and_removed() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    // A program that dumps its environment into a temporary file and leaves it behind.
    let script = "printf 'tmp=%s\\n' \"$TMPDIR\"; \
                  [ \"$TMP\" = \"$TMPDIR\" ] && [ \"$TEMP\" = \"$TMPDIR\" ] && echo same; \
                  printf 'token=%s\\n' \"$API_TOKEN\" > \"$TMPDIR/debug-dump.txt\"; \
                  mkdir \"$TMPDIR/cache\" && printf %s \"$API_TOKEN\" | base64 > \"$TMPDIR/cache/b64\"";
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "sh", "-c", script],
        Duration::from_secs(30),
    );
    let (out, err) = (text(&o.stdout), text(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "{err}");
    let tmp = out
        .lines()
        .find_map(|l| l.strip_prefix("tmp="))
        .expect("the run printed its TMPDIR")
        .to_owned();
    // Its own directory under the keyveil home, not /tmp, named by all four variables.
    assert!(
        tmp.starts_with(h.path().join("tmp").to_str().unwrap()),
        "{tmp}"
    );
    assert!(out.contains("same"), "{out}");
    // Both files were found (raw and base64), reported by name, and the directory is gone.
    assert!(err.contains("wrote the value of API_TOKEN into"), "{err}");
    assert!(
        err.contains("debug-dump.txt") && err.contains("b64"),
        "{err}"
    );
    assert!(
        !std::path::Path::new(&tmp).exists(),
        "the private TMPDIR outlived the run"
    );
    assert!(!out.contains(TOKEN) && !err.contains(TOKEN));
    let audit = h.audit_text();
    assert!(audit.contains("debug-dump.txt") && !audit.contains(TOKEN));
}

#[test]
fn revoking_a_used_up_grant_says_so() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    assert!(
        h.run_approved(
            &["run", "--env", "demo", "--", "true"],
            Duration::from_secs(30)
        )
        .status
        .success()
    );
    let audit = h.audit_text();
    let gid = audit
        .split("\"grant_id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the approval is audited with its grant id")
        .to_owned();
    let out = h.ok(&["revoke", &gid]);
    assert!(
        out.contains(&format!(
            "revoked grant {gid} (it had already ended on its own: used up or expired)"
        )),
        "{out}"
    );
    // Once more: nothing to revoke, and it says so instead of "revoked 0 grants".
    let out = h.ok(&["revoke", &gid]);
    assert!(
        out.contains(&format!("grant {gid} was already revoked; nothing changed")),
        "{out}"
    );
}

#[test]
fn a_run_without_its_private_tmpdir_is_refused() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    // Something else sits where the run directories go.
    std::fs::write(h.path().join("tmp"), b"not a directory").unwrap();
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "true"],
        Duration::from_secs(30),
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("private TMPDIR") && err.contains("hint:"),
        "{err}"
    );
    assert!(!err.contains(TOKEN));
}

#[test]
fn a_process_that_leaves_its_run_is_killed() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    // `setsid` takes the sleep out of the run's process group and session: revoking the grant
    // (a signal to that group) could not reach it, and it holds the value in its environment.
    let script = "setsid sleep 37 >/dev/null 2>&1 </dev/null & echo \"escaped=$!\"";
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "sh", "-c", script],
        Duration::from_secs(30),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let pid: u32 = out
        .lines()
        .find_map(|l| l.strip_prefix("escaped="))
        .and_then(|p| p.trim().parse().ok())
        .expect("the script printed the escaped pid");
    let alive = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    let t0 = std::time::Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the escaped process {pid} is still running"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_leftover_run_tmpdir_is_removed_when_the_broker_starts() {
    let h = Home::new();
    // What a run killed with its broker (`kill -9`) would leave behind.
    let left = h.path().join("tmp/r-leftover/cache");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("dump"), TOKEN).unwrap();
    h.ok(&["daemon", "stop"]);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        !h.path().join("tmp/r-leftover").exists(),
        "the leftover TMPDIR survived a broker start"
    );
}

#[test]
fn a_run_that_replaces_its_tmpdir_with_a_link_is_reported() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let elsewhere = tempfile::tempdir().unwrap();
    let script = format!(
        "mv \"$TMPDIR\" {0}/moved && ln -s {0}/moved \"$TMPDIR\" && printf %s \"$API_TOKEN\" > {0}/moved/f",
        elsewhere.path().display()
    );
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "sh", "-c", &script],
        Duration::from_secs(30),
    );
    let err = text(&o.stderr);
    assert!(err.contains("tmpdir-replaced"), "{err}");
    assert!(!err.contains(TOKEN));
    // The link the run left in its place is gone; the moved directory is the user's to look
    // at (named in the warning).
    let links: Vec<_> = std::fs::read_dir(h.path().join("tmp"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
        .map(|e| e.path())
        .collect();
    assert!(links.is_empty(), "{links:?}");
}

#[test]
fn a_run_that_swaps_its_tmpdir_for_another_directory_is_reported() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let elsewhere = tempfile::tempdir().unwrap();
    // The real TMPDIR (with the value) goes elsewhere; an empty look-alike takes its place.
    let script = format!(
        "printf %s \"$API_TOKEN\" > \"$TMPDIR/f\" && mv \"$TMPDIR\" {0}/moved && mkdir -m 700 \"$TMPDIR\"",
        elsewhere.path().display()
    );
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "sh", "-c", &script],
        Duration::from_secs(30),
    );
    let err = text(&o.stderr);
    assert!(err.contains("tmpdir-replaced"), "{err}");
    assert!(!err.contains(TOKEN));
}
