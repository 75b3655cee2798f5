//! Red team, session 10c: the card matcher by who asks (G19: `Inner::peer_holds_values`,
//! `AccessReq::masked`) and request coalescing.
//!
//! The attacker is the coding agent: same uid, the CLI, the socket, files. Values are made at
//! runtime and never printed.

use std::time::Duration;

use crate::harness::{Home, text};

/// A value whose guessability the matcher misjudges (G19 known limit: a URL whose only unknown
/// is a 4-digit password counts as 80 bits or more by its length and classes).
fn url(p: u16) -> String {
    format!("postgres://app:{p:04}@db.internal.example:5432/app")
}

/// The holder's pending request, found by id in `requests --json`.
fn asks_of(h: &Home, id: u64) -> u64 {
    h.json(&["requests", "--json"])
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"].as_u64() == Some(id)).cloned())
        .and_then(|r| r["asks"].as_u64())
        .unwrap_or(0)
}

/// A granted child (an approved `npm test` that runs a tool with the value on its command
/// line) asks `keyveil run -- echo $DATABASE_URL`: a holder, so its card masks the value. The
/// agent's own asks are shown as given (nothing masked, nothing confirmed), but identical asks
/// are merged (`coalesce`, which compares the raw argv and does not look at `masked`): the
/// agent sends the holder's ask again with each candidate in place of `[REDACTED:...]`, and
/// the one candidate that is the value is merged into the holder's request (its `asks` goes
/// up, no new request appears), while every other one makes a request of its own (or, once the
/// origin's three open requests wait, is refused). That singles out the value among planted
/// guesses from a view the agent reads without a factor.
#[test]
fn s10c_an_agents_ask_identical_to_a_holders_masked_ask_is_not_merged_into_it() {
    let h = Home::new();
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from(b[0] % 6);
    h.set("demo", "DATABASE_URL", &url(n));
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    // The holder and the agent both start `keyveil run` from python3 (a test runner, an
    // agent tool): both requests count for the origin `python3`.
    let py = "import subprocess, sys; subprocess.run(sys.argv[1:])";
    let kv = crate::harness::bin();
    let kv = kv.to_str().unwrap();
    let (mut outer, holder) = h.granted_ask(&format!(
        r#"KEYVEIL_HOME='{}' python3 -c '{py}' '{kv}' run --env demo --wait 60 --cwd '{wd}' -- echo "$DATABASE_URL" >/dev/null 2>&1"#,
        h.path().display()
    ));
    let before = asks_of(&h, holder);
    assert_eq!(before, 1, "the holder's request is not pending as expected");
    // The agent: the same ask, one candidate at a time, from its own shell.
    let mut merged = Vec::new();
    for k in 0..6u16 {
        let guess = url(k);
        let mut c = std::process::Command::new("python3")
            .args(["-c", py, kv])
            .args([
                "run", "--env", "demo", "--wait", "60", "--cwd", &wd, "--", "echo", &guess,
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", h.path())
            .env("KEYVEIL_HOME", h.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let _ = c.kill();
        let _ = c.wait();
        let now = asks_of(&h, holder);
        if now > before + merged.len() as u64 {
            merged.push(k);
        }
        // Keep the origin below its cap of open requests: deny the agent's own.
        for r in h
            .json(&["requests", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let id = r["id"].as_u64().unwrap_or(0);
            if id != holder && id > holder {
                h.run(&["deny", &id.to_string()]);
            }
        }
    }
    for r in h
        .json(&["requests", "--json"])
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if let Some(id) = r["id"].as_u64() {
            h.run(&["deny", &id.to_string()]);
        }
    }
    let _ = outer.kill();
    let _ = outer.wait();
    let right = merged.len() == 1 && merged[0] == n;
    assert!(
        merged.is_empty(),
        "{} of 6 candidate asks were merged into the holder's masked request; the one singled \
         out is {} (never printed)",
        merged.len(),
        if right { "the value" } else { "not the value" }
    );
}

/// The same merge, after the human denied the holder's masked request: an identical ask within
/// the denial's memory is refused with "the user denied this request (#N)", any other ask makes
/// a request of its own. The agent's candidate that gets the refusal is the value.
#[test]
fn s10c_an_agents_ask_identical_to_a_denied_masked_ask_is_not_refused_as_it() {
    let h = Home::new();
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from(b[0] % 4);
    h.set("demo", "DATABASE_URL", &url(n));
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let py = "import subprocess, sys; subprocess.run(sys.argv[1:])";
    let kv = crate::harness::bin();
    let kv = kv.to_str().unwrap();
    let (mut outer, holder) = h.granted_ask(&format!(
        r#"KEYVEIL_HOME='{}' python3 -c '{py}' '{kv}' run --env demo --wait 60 --cwd '{wd}' -- echo "$DATABASE_URL" >/dev/null 2>&1"#,
        h.path().display()
    ));
    assert!(h.run(&["deny", &holder.to_string()]).status.success());
    let mut refused = Vec::new();
    for k in 0..4u16 {
        let guess = url(k);
        let c = std::process::Command::new("python3")
            .args(["-c", py, kv])
            .args([
                "run", "--env", "demo", "--wait", "2", "--cwd", &wd, "--", "echo", &guess,
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", h.path())
            .env("KEYVEIL_HOME", h.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let o = crate::harness::wait_output(c, Duration::from_secs(30));
        if text(&o.stderr).contains(&format!("denied this request (#{holder})")) {
            refused.push(k);
        }
        for r in h
            .json(&["requests", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(id) = r["id"].as_u64() {
                h.run(&["deny", &id.to_string()]);
            }
        }
    }
    let _ = outer.kill();
    let _ = outer.wait();
    let right = refused.len() == 1 && refused[0] == n;
    assert!(
        refused.is_empty(),
        "{} of 4 candidate asks were refused as the holder's denied request; the one singled \
         out is {} (never printed)",
        refused.len(),
        if right { "the value" } else { "not the value" }
    );
}

/// The last argument of a live process whose command line holds the token `marker`: what the
/// agent reads in `/proc` of the ask its daemon started (the value, in these tests).
fn arg_after(marker: &str) -> Option<String> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if let Some(i) = args.iter().position(|a| a == marker)
            && let Some(v) = args.get(i + 1)
        {
            return Some(v.clone());
        }
    }
    None
}

/// Request `id` of a `requests --json` listing (`Null` when it is not there).
fn card_of(list: &[u8], id: u64) -> serde_json::Value {
    serde_json::from_slice::<serde_json::Value>(list)
        .ok()
        .and_then(|l| {
            l.as_array()
                .and_then(|a| a.iter().find(|r| r["id"].as_u64() == Some(id)).cloned())
        })
        .unwrap_or_default()
}

/// The value `marker` precedes on a live process's command line, within 30 s.
fn wait_arg_after(marker: &str) -> String {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = arg_after(marker) {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no process with {marker} on its command line"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// The agent's tmux server (started before, outside every run) on socket `sock`; `false` when
/// tmux is not installed or cannot start.
fn agents_tmux(h: &Home, sock: &str) -> bool {
    std::process::Command::new("tmux")
        .args(["-S", sock, "new-session", "-d", "-s", "agent", "sleep 60"])
        .env("KEYVEIL_HOME", h.path())
        .status()
        .is_ok_and(|s| s.success())
}

/// A granted child that has another daemon start its ask: an approved script runs
/// `tmux new-window "keyveil run -- tool $VALUE"` while the agent's own tmux server (started
/// before, outside every run) is the one that answers. The server starts the ask as its child,
/// outside the run's tree, so the broker places it as holding nothing. A value keyveil made at
/// random (`keyveil generate`) is masked in every requester's strings (no planted guess finds
/// it, so masking it confirms nothing): the card, `requests --json` and the audit name it.
/// Was a LEAK (its argv shown as given, value included).
#[test]
fn s10c_a_granted_childs_ask_started_by_an_outside_tmux_server_is_masked() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let sock = h.path().join("agent-tmux.sock");
    let sock_s = sock.to_str().unwrap().to_owned();
    if !agents_tmux(&h, &sock_s) {
        // No tmux here: nothing to replay.
        return;
    }
    let kv = crate::harness::bin();
    let (mut outer, id) = h.granted_ask(&format!(
        r#"tmux -S '{sock_s}' new-window -d "KEYVEIL_HOME='{}' '{}' run --env demo --wait 30 -- echo s10c-tmux-marker $API_TOKEN"; sleep 20"#,
        h.path().display(),
        kv.display()
    ));
    // What the agent reads of the ask's process: the value (the limit the docs state).
    let value = wait_arg_after("s10c-tmux-marker");
    let list = h.run(&["requests", "--json"]).stdout;
    let audit = h.audit_text();
    let _ = std::process::Command::new("tmux")
        .args(["-S", &sock_s, "kill-server"])
        .status();
    let _ = outer.kill();
    let _ = outer.wait();
    assert!(value.len() >= 32, "the value was not read back");
    let card = card_of(&list, id);
    assert!(
        card["argv"]
            .as_array()
            .is_some_and(|a| a.iter().any(|w| w == "[REDACTED:API_TOKEN]")),
        "the daemon's ask is not listed with the value masked"
    );
    assert!(
        !crate::harness::contains(&list, &value),
        "requests --json shows the value of a granted child's ask started by tmux"
    );
    assert!(
        !crate::harness::contains(audit.as_bytes(), &value),
        "the audit shows the value of a granted child's ask started by tmux"
    );
}

/// As above with a value a human typed (`keyveil set`): the broker cannot tell the daemon's
/// ask from the agent's own, and masking a typed value there would confirm planted guesses of
/// it (`redteam_s9.rs`), so its argv is shown as given.
#[test]
#[ignore = "LIMIT (docs/threat-model.md, the card matcher row: a value a human typed, put by a \
            granted child on the command line of an ask a daemon outside the run starts, is \
            shown): store values with `keyveil generate`; approve commands that hand values to \
            other daemons only when you trust them"]
fn s10c_a_typed_value_in_an_ask_started_by_an_outside_tmux_server_is_masked() {
    let h = Home::new();
    let value = format!("fixture-tmux-{}", {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).unwrap();
        hex::encode(b)
    });
    h.set("demo", "API_TOKEN", &value);
    let sock = h.path().join("agent-tmux.sock");
    let sock_s = sock.to_str().unwrap().to_owned();
    if !agents_tmux(&h, &sock_s) {
        // No tmux here: nothing to replay.
        return;
    }
    let kv = crate::harness::bin();
    let (mut outer, _id) = h.granted_ask(&format!(
        r#"tmux -S '{sock_s}' new-window -d "KEYVEIL_HOME='{}' '{}' run --env demo --wait 30 -- echo $API_TOKEN"; sleep 20"#,
        h.path().display(),
        kv.display()
    ));
    let list = h.run(&["requests", "--json"]).stdout;
    let audit = h.audit_text();
    let _ = std::process::Command::new("tmux")
        .args(["-S", &sock_s, "kill-server"])
        .status();
    let _ = outer.kill();
    let _ = outer.wait();
    assert!(
        !crate::harness::contains(&list, &value),
        "requests --json shows the value of a granted child's ask started by tmux"
    );
    assert!(
        !crate::harness::contains(audit.as_bytes(), &value),
        "the audit shows the value of a granted child's ask started by tmux"
    );
}

/// Through a real run: the command prints the value as zero-padded decimal bytes
/// (`printf '%03d '` of each byte). The relayed output is searched for 4 value bytes in a row
/// among its 1-to-3-digit tokens.
#[test]
fn s10c_a_run_printing_zero_padded_decimal_bytes_shows_no_value() {
    let h = Home::new();
    let value = {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).unwrap();
        format!("fixture-dec-{}", hex::encode(b))
    };
    h.set("demo", "API_TOKEN", &value);
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--",
            "perl",
            "-e",
            r#"print join(" ", map { sprintf "%03d", $_ } unpack("C*", $ENV{API_TOKEN})), "\n""#,
        ],
        Duration::from_secs(30),
    );
    let out = text(&o.stdout);
    let bytes: Vec<u8> = out
        .split(|c: char| !c.is_ascii_digit())
        .filter(|t| (1..=3).contains(&t.len()))
        .filter_map(|t| t.parse::<u8>().ok())
        .collect();
    let leaked = value
        .as_bytes()
        .windows(4)
        .any(|w| bytes.windows(4).any(|b| b == w));
    assert!(!out.is_empty(), "the run printed nothing");
    assert!(
        !leaked,
        "4 value bytes in a row decode from the run's output"
    );
}

/// The grant of a holder's masked request: the human approves a granted child's
/// `keyveil run -- echo $DATABASE_URL` (the card masks the value; a 10-minute grant for that
/// argv). The agent then runs the same command with each candidate in place of the mask: a
/// run the grant covers starts at once with no request, any other makes a request. The
/// candidate that runs without a request is the value (and its run holds it).
#[test]
fn s10c_a_holders_grant_does_not_cover_an_agents_identical_ask() {
    let h = Home::new();
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from(b[0] % 4);
    h.set("demo", "DATABASE_URL", &url(n));
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let py = "import subprocess, sys; subprocess.run(sys.argv[1:])";
    let kv = crate::harness::bin();
    let kv = kv.to_str().unwrap();
    let (mut outer, holder) = h.granted_ask(&format!(
        r#"KEYVEIL_HOME='{}' python3 -c '{py}' '{kv}' run --env demo --wait 60 --cwd '{wd}' -- echo "$DATABASE_URL" >/dev/null 2>&1; sleep 30"#,
        h.path().display()
    ));
    let a = h.approve(holder, &["--ttl", "10m"]);
    assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
    let mut ran = Vec::new();
    for k in 0..4u16 {
        let guess = url(k);
        let c = std::process::Command::new("python3")
            .args(["-c", py, kv])
            .args([
                "run", "--env", "demo", "--wait", "2", "--cwd", &wd, "--", "echo", &guess,
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", h.path())
            .env("KEYVEIL_HOME", h.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let o = crate::harness::wait_output(c, Duration::from_secs(30));
        // A run that started printed its argument (redacted or not); a waiting one nothing.
        if !o.stdout.is_empty() {
            ran.push(k);
        }
        for r in h
            .json(&["requests", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if let Some(id) = r["id"].as_u64() {
                h.run(&["deny", &id.to_string()]);
            }
        }
    }
    let _ = outer.kill();
    let _ = outer.wait();
    let right = ran.len() == 1 && ran[0] == n;
    assert!(
        ran.is_empty(),
        "{} of 4 candidate runs started under the holder's grant without a request; the one \
         singled out is {} (never printed)",
        ran.len(),
        if right { "the value" } else { "not the value" }
    );
}

/// The flags of an agent's own request after the human approved (or denied) a holder's masked
/// one: `first-time` is left off a command approved before and `denied-before` put on one
/// denied recently, by raw argv. The agent's candidate request that lacks `first-time` (or
/// carries `denied-before`) would be the value. Each flag is checked on every candidate.
#[test]
fn s10c_an_agents_flags_do_not_recall_a_holders_approved_or_denied_argv() {
    let h = Home::new();
    let mut b = [0u8; 1];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from(b[0] % 3);
    h.set("demo", "DATABASE_URL", &url(n));
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let py = "import subprocess, sys; subprocess.run(sys.argv[1:])";
    let kv = crate::harness::bin();
    let kv = kv.to_str().unwrap();
    let mut singled = Vec::new();
    for (flag, approve) in [("first-time", true), ("denied-before", false)] {
        let (mut outer, holder) = h.granted_ask(&format!(
            r#"KEYVEIL_HOME='{}' python3 -c '{py}' '{kv}' run --env demo --wait 60 --cwd '{wd}' -- echo "$DATABASE_URL" {flag} >/dev/null 2>&1; sleep 30"#,
            h.path().display()
        ));
        if approve {
            assert!(h.approve(holder, &["--ttl", "10m"]).status.success());
        } else {
            assert!(h.run(&["deny", &holder.to_string()]).status.success());
        }
        let mut with_flag = Vec::new();
        for k in 0..3u16 {
            let guess = url(k);
            let mut c = std::process::Command::new("python3")
                .args(["-c", py, kv])
                .args([
                    "run", "--env", "demo", "--wait", "60", "--cwd", &wd, "--", "echo",
                ])
                .args([guess.as_str(), flag])
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", h.path())
                .env("KEYVEIL_HOME", h.path())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let id = h.wait_request();
            let list = h.json(&["requests", "--json"]);
            let card = list
                .as_array()
                .and_then(|a| a.iter().find(|r| r["id"].as_u64() == Some(id)).cloned())
                .unwrap_or_default();
            let has = card["risk"]
                .as_array()
                .is_some_and(|a| a.iter().any(|f| f.as_str() == Some(flag)));
            if has {
                with_flag.push(k);
            }
            h.run(&["deny", &id.to_string()]);
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = outer.kill();
        let _ = outer.wait();
        // Every candidate must carry the same answer.
        if !(with_flag.is_empty() || with_flag.len() == 3) {
            singled.push((flag, with_flag.len(), with_flag.contains(&n)));
        }
    }
    assert!(
        singled.is_empty(),
        "flags told candidates apart: {:?} (flag, candidates with it, whether the value has it; \
         never the value)",
        singled
    );
}

/// The agent's own daemon, started outside every run: it runs each line written to a FIFO in
/// the home (as a job queue, `at`, `systemd-run --user` or an editor server would). Returns it
/// (its own process group, to be ended with [`end_daemon`]) and the FIFO's path.
fn agents_daemon(h: &Home) -> (std::process::Child, String) {
    use std::os::unix::process::CommandExt as _;
    let fifo = h.path().join("agent-queue");
    let fifo_s = fifo.to_str().unwrap().to_owned();
    let st = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(st.success(), "mkfifo failed");
    let d = std::process::Command::new("sh")
        .args([
            "-c",
            r#"while :; do while IFS= read -r l; do sh -c "$l" & done < "$0"; done"#,
            &fifo_s,
        ])
        .env("KEYVEIL_HOME", h.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    (d, fifo_s)
}

/// Ends the daemon of [`agents_daemon`] and everything it started.
fn end_daemon(d: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", d.id())])
        .status();
    let _ = d.wait();
}

/// The same class through the agent's own daemon (a FIFO job queue it started before), and in
/// every string of the card: a granted child makes a directory named by the value and queues
/// `keyveil run --reason "rotate $VALUE" --cwd DIR/$VALUE -- tool $VALUE`. The daemon's ask
/// descends from no run; its argv, reason and cwd each hold a value keyveil made at random.
/// `requests --json` and the audit mask all three; the card still names what is masked.
#[test]
fn s10c_an_ask_queued_to_an_agents_daemon_masks_argv_reason_and_cwd() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let (mut daemon, fifo) = agents_daemon(&h);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let (mut outer, id) = h.granted_ask(&format!(
        r#"mkdir -p '{wd}'/"$API_TOKEN"; echo "KV run --env demo --wait 30 --reason \"rotate $API_TOKEN\" --cwd '{wd}'/$API_TOKEN -- echo s10c-queue-marker $API_TOKEN" > '{fifo}'; sleep 20"#
    ));
    let value = wait_arg_after("s10c-queue-marker");
    let list = h.run(&["requests", "--json"]).stdout;
    let audit = h.audit_text();
    end_daemon(&mut daemon);
    let _ = outer.kill();
    let _ = outer.wait();
    assert!(value.len() >= 32, "the value was not read back");
    let card = card_of(&list, id);
    assert!(
        card["reason"]
            .as_str()
            .is_some_and(|r| r.contains("[REDACTED:API_TOKEN]"))
            && card["cwd"]
                .as_str()
                .is_some_and(|c| c.ends_with("[REDACTED:API_TOKEN]")),
        "the daemon's ask is not listed with its reason and cwd masked"
    );
    assert!(
        !crate::harness::contains(&list, &value),
        "requests --json shows the value of an ask the agent's daemon started"
    );
    assert!(
        !crate::harness::contains(audit.as_bytes(), &value),
        "the audit shows the value of an ask the agent's daemon started"
    );
}

/// After the human approves such an ask (the card showed the value masked), its grant and its
/// run are listed too: `grants --json`, `status --json` (live runs' argv), `logs` of a
/// background run the daemon started with `keyveil start`, and the audit of the approval and
/// the run. None shows the value.
#[test]
fn s10c_an_approved_ask_of_an_agents_daemon_shows_no_value_in_grants_runs_or_logs() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let (mut daemon, fifo) = agents_daemon(&h);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let (mut outer, id) = h.granted_ask(&format!(
        r#"echo "KV start --env demo --wait 30 --cwd '{wd}' -- sh -c 'sleep 20' s10c-start-marker $API_TOKEN > '{wd}/run-id'" > '{fifo}'; sleep 25"#
    ));
    let value = wait_arg_after("s10c-start-marker");
    let a = h.approve(id, &[]);
    assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
    // The daemon's background run, by the id `start` printed.
    let t0 = std::time::Instant::now();
    let run_id = loop {
        let r = std::fs::read_to_string(work.path().join("run-id")).unwrap_or_default();
        if let Some(r) = r.split_whitespace().find(|w| w.starts_with("r-")) {
            break r.to_owned();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break String::new();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let grants = h.run(&["grants", "--json"]).stdout;
    let status = h.run(&["status", "--json"]).stdout;
    let logs = h.run(&["logs", &run_id]);
    let audit = h.audit_text();
    end_daemon(&mut daemon);
    let _ = h.run(&["revoke", "--all"]);
    let _ = outer.kill();
    let _ = outer.wait();
    assert!(value.len() >= 32, "the value was not read back");
    assert!(
        !run_id.is_empty(),
        "the daemon's background run never started"
    );
    assert!(
        text(&status).contains("s10c-start-marker") && text(&grants).contains("s10c-start-marker"),
        "the daemon's grant or run is not listed"
    );
    for (what, shown) in [
        ("grants --json", &grants),
        ("status --json", &status),
        ("logs", &logs.stdout),
        ("logs (stderr)", &logs.stderr),
        ("the audit", &audit.as_bytes().to_vec()),
    ] {
        assert!(
            !crate::harness::contains(shown, &value),
            "{what} shows the value of a run the agent's daemon started"
        );
    }
}
