//! `keyveil setup` and `doctor` on configs that already hold other servers, comments and odd
//! formatting (HOME is a temp dir); a host's stripped environment finding the broker;
//! background runs (`start`, `logs`, `stop`, killed by revocation); the one-variable value page
//! (`keyveil set ENV VAR --web`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `keyveil` with HOME at the home, no KEYVEIL_HOME (as a user with the default data
/// directory), in `cwd`.
fn setup_cmd(h: &Home, cwd: &Path, args: &[&str]) -> Output {
    let mut c = h.cmd(args);
    c.env_remove("KEYVEIL_HOME").current_dir(cwd);
    c.output().unwrap()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn backups(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".keyveil-backup-"))
        .collect();
    v.sort();
    v
}

#[test]
fn setup_codex_keeps_comments_other_servers_and_odd_formatting() {
    let h = Home::empty();
    let dir = h.path().join(".codex");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    let old = "# Codex config, hand-written\nmodel   =   \"o3\"    # pinned\napproval_policy = 'on-request'\n\n[mcp_servers.github]\ncommand = \"gh-mcp\"   # keep this comment\nargs = [ \"--stdio\" ,\"--x\" ]\nenv = { TOKEN_FILE = \"~/.gh\" }\n\n[profiles.fast]\nmodel = \"o4-mini\"\n";
    std::fs::write(&file, old).unwrap();

    let o = setup_cmd(&h, h.path(), &["setup", "codex"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("added [mcp_servers.keyveil]"), "{out}");
    assert!(out.contains("backup:"), "{out}");
    let new = read(&file);
    // Every original byte is still there, in order; the entry joins the other servers.
    let exe = std::fs::canonicalize(bin()).unwrap();
    let entry = format!(
        "[mcp_servers.keyveil]\ncommand = \"{}\"\nargs = [\"mcp\"]\ntool_timeout_sec = 180\n\n",
        exe.display()
    );
    let at = old.find("[profiles.fast]").unwrap();
    assert_eq!(new, format!("{}{entry}{}", &old[..at], &old[at..]));
    let b = backups(&dir);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(read(&dir.join(&b[0])), old);

    // Idempotent: nothing changes, no new backup.
    let o = setup_cmd(&h, h.path(), &["setup", "codex"]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout).contains("already set up"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(read(&file), new);
    assert_eq!(backups(&dir).len(), 1);
}

#[test]
fn setup_codex_updates_a_stale_entry_in_place_and_keeps_its_extra_keys() {
    let h = Home::empty();
    let dir = h.path().join(".codex");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        "[mcp_servers.keyveil] # mine\ncommand = \"keyveil\"\nargs = [\"mcp\"]\nstartup_timeout_sec = 20\n\n[mcp_servers.other]\ncommand = \"o\"\n",
    )
    .unwrap();
    // With KEYVEIL_HOME set, the entry passes it (hosts give servers a short environment).
    let o = h.cmd(&["setup", "codex"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let new = read(&file);
    let exe = std::fs::canonicalize(bin()).unwrap();
    assert!(new.starts_with("[mcp_servers.keyveil] # mine\n"), "{new}");
    assert!(
        new.contains(&format!("command = \"{}\"", exe.display())),
        "{new}"
    );
    assert!(new.contains("startup_timeout_sec = 20"), "{new}");
    assert!(new.contains("tool_timeout_sec = 180"), "{new}");
    assert!(
        new.contains(&format!("KEYVEIL_HOME = \"{}\"", h.path().display())),
        "{new}"
    );
    assert!(
        new.contains("[mcp_servers.other]\ncommand = \"o\"\n"),
        "{new}"
    );
    assert_eq!(new.matches("[mcp_servers.keyveil]").count(), 1);
}

#[test]
fn setup_json_hosts_keep_other_entries_comments_and_formatting() {
    let h = Home::empty();
    let proj = h.path().join("proj");
    std::fs::create_dir_all(proj.join(".gemini")).unwrap();
    std::fs::create_dir_all(proj.join(".vscode")).unwrap();
    let exe = std::fs::canonicalize(bin()).unwrap();

    // Claude Code user scope: a large strict-JSON file with unrelated state, tabs, compact bits.
    let claude = h.path().join(".claude.json");
    let old_claude = "{\n\t\"numStartups\": 42,\n\t\"projects\": {\"/w\": {\"allowedTools\": [], \"history\": [{\"display\": \"hi\"}]}},\n\t\"mcpServers\": {\n\t\t\"github\": {\"type\": \"stdio\", \"command\": \"gh\", \"args\": []}\n\t},\n\t\"zzz\": null\n}\n";
    std::fs::write(&claude, old_claude).unwrap();
    let o = setup_cmd(&h, &proj, &["setup", "claude"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let new = read(&claude);
    for kept in [
        "\t\"numStartups\": 42,\n",
        "\t\"projects\": {\"/w\": {\"allowedTools\": [], \"history\": [{\"display\": \"hi\"}]}},\n",
        "\t\t\"github\": {\"type\": \"stdio\", \"command\": \"gh\", \"args\": []}",
        "\t\"zzz\": null\n}\n",
    ] {
        assert!(new.contains(kept), "lost {kept:?} in\n{new}");
    }
    assert!(new.find("numStartups") < new.find("projects"));
    assert!(new.find("github") < new.find("\"keyveil\""));
    assert!(new.find("\"keyveil\"") < new.find("zzz"));
    assert!(
        new.contains(&format!("\"command\": \"{}\"", exe.display())),
        "{new}"
    );
    assert!(new.contains("\"type\": \"stdio\""));

    // Gemini project settings: JSONC with comments, trailing commas and a stale keyveil entry
    // holding a key of the user's own.
    let gemini = proj.join(".gemini/settings.json");
    let old_gemini = "// project settings\n{\n  \"theme\": \"GitHub\", // dark is too dark\n  \"mcpServers\": {\n    /* ours */\n    \"keyveil\": { \"command\": \"keyveil\", \"args\": [\"mcp\"], \"trust\": false, },\n  },\n}\n";
    std::fs::write(&gemini, old_gemini).unwrap();
    let o = setup_cmd(&h, &proj, &["setup", "gemini", "--project"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let new = read(&gemini);
    for kept in [
        "// project settings\n",
        "\"theme\": \"GitHub\", // dark is too dark\n",
        "/* ours */",
        "\"trust\": false",
    ] {
        assert!(new.contains(kept), "lost {kept:?} in\n{new}");
    }
    assert!(new.contains("\"timeout\": 180000"), "{new}");
    assert!(!new.contains("\"command\": \"keyveil\""), "{new}");
    assert_eq!(new.matches("\"keyveil\"").count(), 1, "{new}");

    // VS Code and Cursor project files, created from nothing.
    for (host, rel, key) in [
        ("vscode", ".vscode/mcp.json", "\"servers\""),
        ("cursor", ".cursor/mcp.json", "\"mcpServers\""),
    ] {
        let o = setup_cmd(&h, &proj, &["setup", host, "--project"]);
        assert!(o.status.success(), "{host}: {}", text(&o.stderr));
        assert!(text(&o.stdout).contains("created"), "{}", text(&o.stdout));
        let t = read(&proj.join(rel));
        assert!(t.contains(key), "{t}");
        assert!(t.contains("\"args\": [\"mcp\"]"), "{t}");
    }
    assert!(read(&proj.join(".vscode/mcp.json")).contains("\"type\": \"stdio\""));

    // All idempotent.
    for args in [
        &["setup", "claude"][..],
        &["setup", "gemini", "--project"],
        &["setup", "vscode", "--project"],
        &["setup", "cursor", "--project"],
    ] {
        let before = (read(&claude), read(&gemini));
        let o = setup_cmd(&h, &proj, args);
        assert!(
            text(&o.stdout).contains("already set up"),
            "{args:?}: {}",
            text(&o.stdout)
        );
        assert_eq!((read(&claude), read(&gemini)), before);
    }
}

#[test]
fn setup_refuses_a_config_it_cannot_parse_and_changes_nothing() {
    let h = Home::empty();
    let cases: [(&str, &str, &str); 4] = [
        (
            "claude",
            ".claude.json",
            "{ \"mcpServers\": { \"a\": 1 }, oops }\n",
        ),
        ("cursor", ".cursor/mcp.json", "{ \"mcpServers\": [1, 2] }\n"),
        ("codex", ".codex/config.toml", "[mcp_servers\ncommand = 1\n"),
        (
            "gemini",
            ".gemini/settings.json",
            "[\"not\", \"an\", \"object\"]\n",
        ),
    ];
    for (host, rel, body) in cases {
        let file = h.path().join(rel);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, body).unwrap();
        let o = setup_cmd(&h, h.path(), &["setup", host]);
        assert_eq!(o.status.code(), Some(1), "{host}");
        let err = text(&o.stderr);
        assert!(err.contains("nothing was changed"), "{host}: {err}");
        assert!(err.contains("hint:"), "{host}: {err}");
        assert_eq!(read(&file), body, "{host}");
        assert!(backups(file.parent().unwrap()).is_empty(), "{host}");
    }
    // `--print` writes nothing either.
    let o = setup_cmd(&h, h.path(), &["setup", "vscode", "--project", "--print"]);
    assert!(o.status.success());
    assert!(
        text(&o.stdout).contains("\"servers\""),
        "{}",
        text(&o.stdout)
    );
    assert!(!h.path().join(".vscode").exists());
}

#[test]
fn doctor_says_what_to_fix_and_passes_once_set_up() {
    let h = Home::new();
    let proj = h.path().join("p");
    std::fs::create_dir_all(&proj).unwrap();
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let doctor = || {
        let mut c = h.cmd(&["doctor"]);
        c.env("PATH", &path).current_dir(&proj);
        c.output().unwrap()
    };
    let o = doctor();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("ok   broker reachable"), "{out}");
    assert!(out.contains("ok   vault exists and is unlocked"), "{out}");
    assert!(out.contains("FAIL no agent host is set up"), "{out}");
    assert!(out.contains("hint: run `keyveil setup codex`"), "{out}");

    // A host config that starts another program fails with the fix.
    std::fs::create_dir_all(proj.join(".cursor")).unwrap();
    std::fs::write(
        proj.join(".cursor/mcp.json"),
        "{\"mcpServers\": {\"keyveil\": {\"command\": \"/bin/true\", \"args\": [\"mcp\"]}}}",
    )
    .unwrap();
    let out = text(&doctor().stdout);
    assert!(out.contains("is not this binary"), "{out}");
    assert!(
        out.contains("hint: run `keyveil setup cursor --project`"),
        "{out}"
    );

    let o = h
        .cmd(&["setup", "cursor", "--project"])
        .current_dir(&proj)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = doctor();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("all checks passed"), "{out}");

    h.ok(&["lock"]);
    let o = doctor();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("FAIL the vault is locked"), "{out}");
    assert!(out.contains("hint: run `keyveil unlock`"), "{out}");
}

/// Codex passes MCP servers a short whitelist (HOME, PATH, LANG, USER, ...): no KEYVEIL_HOME,
/// no XDG_*. The broker's socket must still be found from HOME alone.
#[test]
fn a_run_with_a_host_whitelist_environment_finds_the_broker() {
    let h = Home::empty();
    let bare = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.args(args)
            .env_clear()
            .env("HOME", h.path())
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LANG", "C.UTF-8")
            .env("USER", "someone")
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    struct Stop<'a>(&'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = Command::new(bin())
                .arg("daemon")
                .arg("stop")
                .env_clear()
                .env("HOME", self.0)
                .output();
        }
    }
    let _stop = Stop(h.path());
    let with_stdin = |args: &[&str], input: &str| {
        let mut child = bare(args).spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let o = with_stdin(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        h.path().join(".local/share/keyveil/vault.kv").exists(),
        "the default data directory is under HOME"
    );
    assert!(
        bare(&["env", "create", "demo"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let value = "whitelist-value-Q7mZ2kLp9";
    assert!(
        with_stdin(&["set", "demo", "API_TOKEN", "--from-stdin"], value)
            .status
            .success()
    );

    let child = bare(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "echo token=$API_TOKEN",
    ])
    .spawn()
    .unwrap();
    let t0 = Instant::now();
    let id = loop {
        let o = bare(&["requests", "--json"]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if let Some(id) = v
            .as_array()
            .and_then(|a| a.last())
            .and_then(|r| r["id"].as_u64())
        {
            break id;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no request");
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = with_stdin(
        &["approve", &id.to_string(), "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "token=[REDACTED:API_TOKEN]\n");
    assert!(!contains(&o.stdout, value) && !contains(&o.stderr, value));
}

// ---------------------------------------------------------------------------------------------
// Background runs

fn logs(h: &Home, id: &str, from: u64) -> String {
    h.ok(&["logs", id, "--from", &from.to_string()])
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts a background run and approves it; returns the run id.
fn start_approved(h: &Home, script: &str) -> String {
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
    run
}

#[test]
fn background_run_logs_incrementally_redacted_and_stops() {
    let h = Home::new();
    let value = "bg-secret-value-Zk3Qp8Lm";
    h.set("demo", "API_TOKEN", value);
    let run = start_approved(
        &h,
        "echo token=$API_TOKEN; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done",
    );
    wait_for("output", || logs(&h, &run, 0).contains("tick 3"));
    let first = logs(&h, &run, 0);
    assert!(
        first.starts_with("token=[REDACTED:API_TOKEN]\ntick 1\n"),
        "{first}"
    );
    // Incremental: from an offset, only what follows.
    let offset = "token=[REDACTED:API_TOKEN]\n".len() as u64;
    assert!(logs(&h, &run, offset).starts_with("tick 1\n"));
    let st = h.json(&["status", "--json"]);
    assert_eq!(st["live_runs"], 1, "{st}");

    let out = h.ok(&["stop", &run]);
    assert!(out.contains("stopped"), "{out}");
    let st = h.json(&["status", "--json"]);
    assert_eq!(st["live_runs"], 0, "{st}");
    let o = h.run(&["logs", &run]);
    assert!(
        text(&o.stderr).contains("ended: exit code 143, stopped"),
        "{}",
        text(&o.stderr)
    );
    // Nothing keyveil wrote holds the value.
    for enc in encodings(value) {
        assert!(!contains(&h.all_plain_files(), &enc), "{enc} in a file");
    }
    let o = h.run(&["logs", "r-000000000000"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no background run"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn revoking_the_grant_kills_a_background_run() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "bg-revoke-value-Xy7Wq2");
    let pidfile = h.path().join("child.pid");
    let run = start_approved(
        &h,
        &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
    );
    wait_for("the grandchild", || pidfile.exists());
    let grandchild: i32 = read(&pidfile).trim().parse().unwrap();
    let grants = h.json(&["grants", "--json"]);
    let gid = grants[0]["id"].as_str().unwrap().to_owned();
    h.ok(&["revoke", &gid]);
    wait_for("the run to end", || {
        h.run(&["logs", &run])
            .stderr
            .windows(5)
            .any(|w| w == b"ended")
    });
    let o = h.run(&["logs", &run]);
    assert!(
        text(&o.stderr).contains("its grant ended"),
        "{}",
        text(&o.stderr)
    );
    // The whole process group went, not only the shell.
    wait_for("the grandchild to die", || {
        std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
            .map_or(true, |st| st.contains(") Z "))
    });
}

// ---------------------------------------------------------------------------------------------
// The one-variable value page

fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
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
    let t = text(&buf);
    let (head, body) = t.split_once("\r\n\r\n").unwrap_or((&t, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

#[test]
fn the_value_page_stores_one_declared_variable_once_and_nothing_else() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "already-there-value-1");
    let o = h.run(&["set", "demo", "API_TOKEN", "--web"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a set variable is never replaced from the page"
    );
    assert!(
        text(&o.stderr).contains("already has a value"),
        "{}",
        text(&o.stderr)
    );

    let url = h.ok(&["set", "demo", "DB_PASSWORD", "--web"]);
    let rest = url.trim().strip_prefix("http://127.0.0.1:").unwrap();
    let (port, path) = rest.split_once('/').unwrap();
    let port: u16 = port.parse().unwrap();
    let path = format!("/{path}");
    let (status, head, _) = http(port, "GET", &path, &[], "");
    assert_eq!(status, 303, "{head}");
    let cookie_line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    let cookie = cookie_line
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    // The link is spent.
    assert_eq!(http(port, "GET", &path, &[], "").0, 403);
    // The value session opens nothing else.
    assert_eq!(http(port, "GET", "/", &[("Cookie", &cookie)], "").0, 401);
    let (status, _, form) = http(port, "GET", "/set", &[("Cookie", &cookie)], "");
    assert_eq!(status, 200);
    assert!(form.contains("DB_PASSWORD"), "{form}");
    let csrf = form
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    let origin = format!("http://127.0.0.1:{port}");
    let value = "page-typed-value-Vb6Nm1Qz";
    // No CSRF token, or no Origin: refused.
    let (s, _, _) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("value={value}"),
    );
    assert_eq!(s, 403);
    let (s, _, _) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&value={value}"),
    );
    assert_eq!(s, 403);
    let (s, _, body) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}&value={value}"),
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("Stored demo/DB_PASSWORD"), "{body}");
    assert!(!body.contains(value), "the page echoed the value");
    // The session is spent.
    let (s, _, _) = http(
        port,
        "POST",
        "/set",
        &[("Cookie", &cookie), ("Origin", &origin)],
        &format!("csrf={csrf}&value=other-value-123456"),
    );
    assert_eq!(s, 401);
    let env = h.json(&["env", "show", "demo", "--json"]);
    let var = env["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DB_PASSWORD")
        .unwrap()
        .clone();
    assert_eq!(var["set"], true, "{env}");
    // The value really is the one typed (a run sees it), and no file keyveil wrote holds it.
    // The run compares digests: argv is stored as given (never matched against values, G12),
    // so a value typed on argv would reach the audit.
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(value.as_bytes()))
    };
    let script = format!(
        "test \"$(printf %s \"$DB_PASSWORD\" | sha256sum | cut -c1-64)\" = {digest} && echo same"
    );
    let child = h.spawn_run(&["run", "--env", "demo", "--", "sh", "-c", &script]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let o = wait_output(child, Duration::from_secs(30));
    assert_eq!(text(&o.stdout), "same\n", "{}", text(&o.stderr));
    for enc in encodings(value) {
        assert!(!contains(&h.all_plain_files(), &enc), "{enc} in a file");
    }
}
