//! Red team, session 9: the card value matcher (`broker/card_redact.rs`), the run's re-ask,
//! held approvals and the sweep's git reader.
//!
//! The attacker is the coding agent: same uid, the CLI, the socket, files. Values are made at
//! runtime and never printed.

use std::time::Duration;

use crate::harness::{Home, contains, encodings, text};

/// `n` bytes from the OS as lowercase hex.
fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// A run's egress proxy audits each request to a bound host (`egress_request`: its path) and
/// each placeholder it blocks (`egress_blocked`: the destination the child named). Those entries
/// went to the log through `Inner::audit_batch`, which hid real names but skipped the card
/// redactor every other entry goes through: an approved command holding a second, unbound
/// variable that builds a URL from it (`curl https://api/v1/users/$USER_ID_TOKEN`) wrote that
/// value into `audit.jsonl`, which the agent reads without a factor.
#[test]
fn s9_egress_audit_entries_never_hold_a_value() {
    let bound = format!("sk-proj-{}", random_hex(24));
    let other = format!("fixture-other-{}", random_hex(16));
    let (api, ca_pem, _seen) = crate::egress::https_api();
    let h = crate::egress::bound_home(api, &ca_pem, &bound);
    h.set("demo", "OTHER_TOKEN", &other);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    // The approved command: the bound token as a header, the other variable in the path; and a
    // placeholder sent to a host named after the other value (blocked, audited by destination).
    let script = format!(
        r#"curl -sS --max-time 20 -H "Authorization: Bearer $API_TOKEN" "https://localhost:{api}/v1/items/$OTHER_TOKEN" > a.txt 2>&1
curl -sS --max-time 5 -H "Authorization: Bearer $API_TOKEN" "https://$OTHER_TOKEN.localhost:{api}/x" > b.txt 2>&1
echo done"#
    );
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        Duration::from_secs(90),
    );
    assert!(text(&o.stdout).contains("done"), "{}", text(&o.stderr));
    // Every entry of the run is written before its end; give the writer a moment anyway.
    std::thread::sleep(Duration::from_millis(300));
    let audit = h.audit_text();
    assert!(
        audit.contains("\"egress_request\""),
        "the request to the bound host was audited"
    );
    for enc in encodings(&other) {
        assert!(
            !contains(audit.as_bytes(), &enc),
            "the audit log holds OTHER_TOKEN's value (an egress entry)"
        );
    }
    assert!(
        audit.contains("[REDACTED:OTHER_TOKEN]"),
        "the egress entry shows where the value was, by name"
    );
}

/// The card matcher masked whole values only when "no agent can guess" them, judged by length
/// and character classes alone (`card_redact::guessable`: 16 bytes at 6.5 bits each pass). A
/// connection URL whose only unknown is a short password passes as 300 bits, yet the agent
/// knows everything around the password (the compose file, the code's config): it writes
/// every candidate URL, 10,000 of them in one request, and the card masked the one that is
/// the value. Held: a request from a process that descends from no run or mount reader holds
/// no value, and its strings are shown as given (`AccessReq::masked`).
#[test]
fn s9_the_card_matcher_confirms_a_url_whose_only_unknown_is_a_short_password() {
    let h = Home::new();
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from_le_bytes(b) % 10_000;
    let url = |p: u16| format!("postgres://app:{p:04}@db.internal.example:5432/app");
    h.set("demo", "DATABASE_URL", &url(n));
    let all: Vec<String> = (0..10_000).map(url).collect();
    let words: Vec<String> = all.chunks(2_500).map(|c| c.join(" ")).collect();
    let mut args = vec!["run", "--env", "demo", "--", "echo"];
    args.extend(words.iter().map(String::as_str));
    let mut c = h.spawn_run(&args);
    let id = h.wait_request();
    let list = h.json(&["requests", "--json"]);
    h.run(&["deny", &id.to_string()]);
    let _ = c.kill();
    let _ = c.wait();
    let card = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"].as_u64() == Some(id))
        .cloned()
        .unwrap_or_default();
    let shown: Vec<String> = card["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .skip(1)
                .flat_map(|w| w.as_str().unwrap_or_default().split(' '))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let masked: Vec<usize> = shown
        .iter()
        .enumerate()
        .filter(|(_, w)| w.contains("[REDACTED"))
        .map(|(i, _)| i)
        .collect();
    let right = masked.len() == 1 && masked[0] == usize::from(n);
    assert!(
        masked.is_empty() || masked.len() == all.len(),
        "the card masked {} of {} candidate URLs; the one it singled out is {} (never printed)",
        masked.len(),
        all.len(),
        if right { "the value" } else { "not the value" }
    );
}

/// The card, the grant listing and the audit mask a value that a run's argv carries (a
/// granted child that asks `keyveil run` with a value on the command line: `card_values.rs`),
/// but two more listings show a run's argv: `status` (its live runs) and `logs` (a background
/// run's header). Both gave it as the requester did, and the agent reads both without a
/// factor, as soon as the human approved the masked card.
#[test]
fn s9_status_and_logs_never_show_a_value_on_a_runs_argv() {
    let h = Home::new();
    let value = format!("fixture-run-argv-{}", random_hex(16));
    h.set("demo", "API_TOKEN", &value);
    // A granted child puts the value on the argv of a background run it starts.
    let (child, id) = h.granted_ask(
        r#"KV start --env demo --wait 30 -- sh -c "sleep 5" sh "$API_TOKEN" > started.txt"#,
    );
    let o = h.approve(id, &["--ttl", "10m"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = crate::harness::wait_output(child, Duration::from_secs(30));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let run = std::fs::read_to_string(h.path().join("started.txt"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    assert!(run.starts_with("r-"), "{run}");
    h.wait_live_runs(1);
    let views = [
        ("status --json", h.run(&["status", "--json"]).stdout),
        (
            "logs (raw socket)",
            crate::oracle::raw(&h, &serde_json::json!({"op": "logs", "run_id": run}))
                .to_string()
                .into_bytes(),
        ),
        ("grants --json", h.run(&["grants", "--json"]).stdout),
    ];
    let _ = h.run(&["stop", &run]);
    for (where_, b) in &views {
        for enc in encodings(&value) {
            assert!(
                !contains(b, &enc),
                "{where_} shows the value on the run's argv"
            );
        }
    }
    let status = text(&views[0].1);
    assert!(status.contains("[REDACTED:API_TOKEN]"), "{status}");
}

/// Before a repository's objects are read, every entry of its git directory and of each object
/// directory an alternates file names is checked (`sweep/git_check.rs::refusal`): up to two
/// million entries, with no deadline, and a symbolic link is judged by what it leads to (one
/// `stat` that follows it). The agent makes that `stat` slow: a chain of 38 links, each
/// target some 800 `d/..` components long, costs the kernel milliseconds per `stat` (the chain
/// may even end in a loop). 600 links to it, in a folder an alternates file names under 16
/// spellings, held one sweep with `--max-seconds 2` for about a minute; 125,000 links (two
/// million entries) for hours of the broker's CPU. The sweep checks its deadline only between
/// repositories.
#[test]
fn s9_planted_slow_links_do_not_hold_a_sweep_past_its_deadline() {
    use std::os::unix::fs::symlink;
    let h = Home::new();
    h.set(
        "demo",
        "API_KEY",
        &format!("fixture-sweep-{}", random_hex(16)),
    );
    // The chain: c0 a file, c(k) -> d/../d/../.../c(k-1).
    let chain = h.path().join("chain");
    std::fs::create_dir_all(chain.join("d")).unwrap();
    std::fs::write(chain.join("c0"), "").unwrap();
    for k in 1..=38 {
        let target = format!("{}c{}", "d/../".repeat(800), k - 1);
        symlink(&target, chain.join(format!("c{k}"))).unwrap();
    }
    let head = chain.join("c38");
    let big = h.path().join("big");
    std::fs::create_dir_all(big.join("d")).unwrap();
    for i in 0..600 {
        symlink(&head, big.join(format!("l{i}"))).unwrap();
    }
    let proj = h.path().join("proj");
    let git = proj.join("r/.git");
    std::fs::create_dir_all(git.join("refs/heads")).unwrap();
    std::fs::create_dir_all(git.join("objects/info")).unwrap();
    std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    let spellings: Vec<String> = (0..16)
        .map(|k| format!("{}{}", big.display(), "/d/..".repeat(k)))
        .collect();
    std::fs::write(
        git.join("objects/info/alternates"),
        spellings.join("\n") + "\n",
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let o = h.run_stdin(
        &[
            "sweep",
            "--passphrase-stdin",
            "--max-seconds",
            "2",
            proj.to_str().unwrap(),
        ],
        &format!("{}\n", crate::harness::PASS),
    );
    let took = t0.elapsed();
    assert!(
        o.status.code().is_some_and(|c| c != 2),
        "the sweep ran: {}",
        text(&o.stderr)
    );
    assert!(
        took < Duration::from_secs(15),
        "a 2 s sweep took {took:?} over one planted repository"
    );
    // The repository that was not checked in time is named, and the report is incomplete.
    let out = text(&o.stdout);
    assert!(out.contains("incomplete"), "{out}");
}

/// A request's client name is the requester's (any raw frame sets it, and a granted child that
/// speaks the protocol may name itself after what it holds): its card masks a value there, the
/// grant listing showed it as given. (Here a granted child sends the raw frame.)
#[test]
fn s9_a_grants_client_name_is_shown_as_its_card_showed_it() {
    let h = Home::new();
    let value = format!("fixture-client-name-{}", random_hex(16));
    h.set("demo", "API_TOKEN", &value);
    let sock = h.path().join("run/broker.sock");
    let (mut c, id) = h.granted_ask(&format!(r#"python3 -c '{RAW_ASK}' '{}'"#, sock.display()));
    let card = text(&h.run(&["requests", "--json"]).stdout);
    assert!(card.contains("[REDACTED:API_TOKEN]"), "{card}");
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let grants = h.run(&["grants", "--json"]).stdout;
    assert!(
        text(&grants).contains("\"request_id\""),
        "the grant is listed"
    );
    for enc in encodings(&value) {
        assert!(
            !contains(&grants, &enc),
            "`grants` shows the value as the client's name"
        );
    }
    assert!(text(&grants).contains("[REDACTED:API_TOKEN]"));
    let _ = c.kill();
    let _ = c.wait();
}

/// Python for a granted child: a raw `request_access` frame whose client name is
/// `$API_TOKEN`, sent to the socket named by `argv[1]`; waits for the reply.
const RAW_ASK: &str = r#"import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
p = json.dumps({"op": "request_access", "client": {"kind": "mcp", "name": os.environ["API_TOKEN"], "version": "1", "pid": os.getpid()}, "environment": "demo", "variables": None, "argv": ["true"], "pass_env": [], "cwd": "/tmp", "ttl_seconds": None, "reason": "check"}).encode()
s.sendall(struct.pack(">I", len(p) + 1) + b"\0" + p)
s.recv(65536)
"#;

/// After each run the write-side scan reported, to the requester, every file changed under the
/// run's cwd during the run that held a form of a granted value, by path, matched by the
/// run's own redactor: 12-byte fragments of random-looking values included. The agent writes
/// the files itself while any approved run lasts (the command need not read them: here
/// `sleep`): one candidate per next character after an 11-byte known part, and the report
/// named the file that held the right one, a character-by-character reader. Held: the scan
/// matches whole values only (`runner::scan_redactor`), so no candidate is named.
#[test]
fn s9_the_write_side_scan_reads_a_value_with_a_known_part_through_any_run() {
    let h = Home::new();
    let known = "acme_live_key_";
    const ALPHA: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rb = [0u8; 32];
    getrandom::fill(&mut rb).unwrap();
    let tail: String = rb
        .iter()
        .map(|x| ALPHA[usize::from(*x) % ALPHA.len()] as char)
        .collect();
    let value = format!("{known}{tail}");
    h.set("demo", "ACME_KEY", &value);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let c = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--cwd",
        work.path().to_str().unwrap(),
        "--",
        "sleep",
        "3",
    ]);
    let id = h.wait_request();
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    h.wait_live_runs(1);
    // While it runs: one file per candidate for the character after the known part.
    let last11 = &known[known.len() - 11..];
    for &b in ALPHA {
        let ch = b as char;
        std::fs::write(
            work.path().join(format!("cand_{ch}.txt")),
            format!("{last11}{ch}\n"),
        )
        .unwrap();
    }
    // The scan ran: a file holding the whole value is reported (by design).
    std::fs::write(work.path().join("control.txt"), format!("x {value} y\n")).unwrap();
    let o = crate::harness::wait_output(c, Duration::from_secs(30));
    let err = text(&o.stderr);
    assert!(
        err.contains("control.txt"),
        "the write-side scan reported nothing"
    );
    let named: Vec<char> = ALPHA
        .iter()
        .map(|&b| b as char)
        .filter(|ch| err.contains(&format!("cand_{ch}.txt")))
        .collect();
    let right = named.len() == 1 && tail.starts_with(named[0]);
    assert!(
        named.is_empty() || named.len() == ALPHA.len(),
        "the run's report named {} of 62 candidate files; the one it singled out is {} (never printed)",
        named.len(),
        if right {
            "the next character"
        } else {
            "not it"
        }
    );
}

/// The slow-link chain of the test above, made in `dir`: `c0` a folder, `c(k)` a link to
/// `d/../` 800 times and `c(k-1)`. Returns the head (`c38`): each path resolution through it
/// costs the kernel milliseconds.
fn slow_chain(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("d")).unwrap();
    std::fs::create_dir_all(dir.join("c0")).unwrap();
    for k in 1..=38 {
        let target = format!("{}c{}", "d/../".repeat(800), k - 1);
        std::os::unix::fs::symlink(&target, dir.join(format!("c{k}"))).unwrap();
    }
    dir.join("c38")
}

/// Repositories found before the deadline are then told apart by their git directories
/// (`sweep/git.rs::discover`: `git_dir` and `canonicalize` of each), with no deadline: a
/// `.git` file naming a path through a slow chain of links costs tens of milliseconds there,
/// and the agent plants as many as the search finds in time (a folder and a file each): 1,500
/// held a 20 s sweep for over two minutes (a default 600 s sweep, hours).
#[test]
fn s9_planted_git_links_do_not_hold_a_sweep_past_its_deadline() {
    let h = Home::new();
    h.set(
        "demo",
        "API_KEY",
        &format!("fixture-sweep-{}", random_hex(16)),
    );
    let head = slow_chain(&h.path().join("chain"));
    let proj = h.path().join("proj");
    for r in 0..1500 {
        let d = proj.join(format!("r{r}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(".git"), format!("gitdir: {}\n", head.display())).unwrap();
    }
    let t0 = std::time::Instant::now();
    let o = h.run_stdin(
        &[
            "sweep",
            "--passphrase-stdin",
            "--max-seconds",
            "20",
            proj.to_str().unwrap(),
        ],
        &format!("{}\n", crate::harness::PASS),
    );
    let took = t0.elapsed();
    assert!(
        o.status.code().is_some_and(|c| c != 2),
        "the sweep ran: {}",
        text(&o.stderr)
    );
    assert!(
        took < Duration::from_secs(35),
        "a 20 s sweep took {took:?} over 1,500 planted repositories"
    );
}

/// A run's result names the files it wrote a value into (the write-side scan), and the hosts
/// it sent a placeholder to, for the requester's terminal: paths and hosts a granted child
/// chose, which may hold another value (`mkdir "$CACHE_KEY"`, as cards' argv may). Held: the
/// report reaches the requester masked.
#[test]
fn s9_a_runs_write_leak_paths_never_show_a_value() {
    let h = Home::new();
    let a = format!("fixture-leaked-{}", random_hex(16));
    let b = format!("fixture-dirname-{}", random_hex(16));
    h.set("demo", "API_TOKEN", &a);
    h.set("demo", "CACHE_KEY", &b);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            r#"mkdir -p "$CACHE_KEY" && printf '%s\n' "$API_TOKEN" > "$CACHE_KEY/token.txt"; echo done"#,
        ],
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert!(text(&o.stdout).contains("done"), "{err}");
    assert!(
        err.contains("token.txt"),
        "the leak was reported: {}",
        err.lines().count()
    );
    for enc in encodings(&b) {
        assert!(
            !contains(&o.stderr, &enc),
            "the run's leak report shows CACHE_KEY's value in a path"
        );
    }
    assert!(err.contains("[REDACTED:CACHE_KEY]"));
}

/// The same class with whole values: a value short or plain enough to guess (a human-chosen
/// 12-character password) is planted whole, one candidate per file, in the run's cwd, its
/// `$HOME` and its private TMPDIR (`$TMPDIR` of the run, found through `/proc`). Naming the file
/// that holds it answers a dictionary of guesses one run at a time. Held: a guessable value is
/// not matched by the scan, so no candidate is named anywhere, while a value nobody can guess
/// (another variable, written the same way) is.
#[test]
fn s9_the_write_side_scan_names_no_planted_guess_of_a_guessable_value() {
    let h = Home::new();
    let mut rb = [0u8; 2];
    getrandom::fill(&mut rb).unwrap();
    let n = u16::from_le_bytes(rb) % 200;
    let guess = |k: u16| format!("Summer2024!{k:03}");
    h.set("demo", "DB_PASSWORD", &guess(n));
    let control = format!("fixture-control-{}", random_hex(16));
    h.set("demo", "API_TOKEN", &control);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    // The command prints its TMPDIR (a path, no value) and waits while the agent plants.
    let c = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--cwd",
        work.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "echo \"$TMPDIR\" > tmpdir.txt; sleep 4",
    ]);
    let id = h.wait_request();
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    h.wait_live_runs(1);
    let t0 = std::time::Instant::now();
    let tmpdir = loop {
        if let Ok(t) = std::fs::read_to_string(work.path().join("tmpdir.txt"))
            && t.ends_with('\n')
        {
            break std::path::PathBuf::from(t.trim());
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no TMPDIR");
        std::thread::sleep(Duration::from_millis(50));
    };
    for k in 0..200u16 {
        let body = format!("password = {}\n", guess(k));
        std::fs::write(work.path().join(format!("cand_{k:03}.txt")), &body).unwrap();
        std::fs::write(tmpdir.join(format!("cand_{k:03}.txt")), &body).unwrap();
    }
    std::fs::write(work.path().join("control.txt"), format!("{control}\n")).unwrap();
    let o = crate::harness::wait_output(c, Duration::from_secs(30));
    let err = text(&o.stderr);
    assert!(
        err.contains("control.txt"),
        "the write-side scan reported nothing"
    );
    let named = (0..200u16)
        .filter(|k| err.contains(&format!("cand_{k:03}.txt")))
        .count();
    assert_eq!(
        named, 0,
        "the run's report named {named} of 200 planted candidates (the value is one of them)"
    );
    assert!(
        !err.contains("DB_PASSWORD"),
        "the report says whether DB_PASSWORD was found"
    );
}

/// What the scan is for still works: a run that writes a value nobody can guess into a file,
/// as it is or encoded (base64 in a second file, a JSON string in a third), is reported by
/// variable and path, and the audit's `run_end` holds the variable and no path. A 20-byte
/// slice of the value the run writes (a fragment) is not reported: that is what `keyveil sweep`
/// (the human's factor) finds.
#[test]
fn s9_a_run_that_writes_a_whole_value_is_still_reported_by_path() {
    let h = Home::new();
    let value = format!("fixture-written-{}", random_hex(20));
    h.set("demo", "API_TOKEN", &value);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--cwd",
            work.path().to_str().unwrap(),
            "--",
            "sh",
            "-c",
            r#"printf 'token=%s\n' "$API_TOKEN" > plain.env
printf '%s' "$API_TOKEN" | base64 > enc.b64
printf '{"token": "%s"}\n' "$API_TOKEN" > conf.json
printf '%s\n' "$API_TOKEN" | cut -c3-22 > slice.txt
echo done"#,
        ],
        Duration::from_secs(60),
    );
    let err = text(&o.stderr);
    assert!(text(&o.stdout).contains("done"), "{err}");
    for f in ["plain.env", "enc.b64", "conf.json"] {
        assert!(err.contains(f), "{f} was not reported");
    }
    assert!(err.contains("API_TOKEN"));
    assert!(
        !err.contains("slice.txt"),
        "a fragment was reported by path"
    );
    for enc in encodings(&value) {
        assert!(!contains(&o.stderr, &enc), "the report holds the value");
    }
    let audit = h.audit_text();
    let end = audit
        .lines()
        .find(|l| l.contains("\"run_end\""))
        .unwrap_or_default()
        .to_owned();
    assert!(end.contains("API_TOKEN"), "run_end names the variable");
    assert!(!end.contains("plain.env"), "run_end names a path");
}

/// The card matcher's oracle through every other view of an agent's own request: 2,000
/// candidate URLs on a `keyveil run` the human approves, then what the agent reads without a
/// factor: the card, the audit log (`request`, `run_start`), `grants --json` and
/// `status --json` while the run lives. Each view masks none of them (or all): the
/// requester descends from no run, its strings are its own.
#[test]
fn s9_no_view_of_an_agents_own_request_singles_out_a_planted_candidate() {
    let h = Home::new();
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    let n = u16::from_le_bytes(b) % 2_000;
    let url = |p: u16| format!("postgres://app:{p:04}@db.internal.example:5432/app");
    h.set("demo", "DATABASE_URL", &url(n));
    let all: Vec<String> = (0..2_000).map(url).collect();
    let words = all.join(" ");
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let c = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--cwd",
        work.path().to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "sleep 3",
        "sh",
        &words,
    ]);
    let id = h.wait_request();
    let card = h.run(&["requests", "--json"]).stdout;
    let o = h.approve(id, &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    h.wait_live_runs(1);
    let views = [
        ("requests --json", card),
        ("grants --json", h.run(&["grants", "--json"]).stdout),
        ("status --json", h.run(&["status", "--json"]).stdout),
        ("audit.jsonl", h.audit_text().into_bytes()),
    ];
    let _ = crate::harness::wait_output(c, Duration::from_secs(30));
    for (where_, v) in &views {
        let t = text(v);
        let masked = t.matches("[REDACTED:DATABASE_URL]").count();
        let shown = (0..2_000u16)
            .filter(|k| t.contains(&format!(":{k:04}@db.internal")))
            .count();
        assert!(
            masked == 0 && shown == 2_000,
            "{where_}: {masked} masked, {shown} of 2000 candidates shown as given"
        );
    }
}

/// A requester the broker cannot place is refused, whatever it asks: a process connects and
/// exits, and its child (holding the connection, not a descendant of any run) sends a request
/// with candidates. Masking them would be the oracle; showing them could show a value a
/// granted child handed over the same way. The refusal says what to do, and depends on no
/// value (a candidate list without the value gets the same answer).
#[test]
fn s9_a_request_over_a_connection_whose_process_exited_is_refused() {
    let h = Home::new();
    let value = format!("fixture-unsure-{}", random_hex(16));
    h.set("demo", "API_TOKEN", &value);
    let sock = h.path().join("run/broker.sock");
    // The child writes the reply to a file after its parent exited.
    let reply = |argv: &[&str]| -> serde_json::Value {
        let out = h.path().join(format!("reply-{}", random_hex(4)));
        let script = format!(
            r#"import json, os, socket, struct, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
if os.fork() != 0:
    os._exit(0)
time.sleep(0.5)
p = json.dumps({{"op": "request_access", "client": {{"kind": "mcp", "name": "x", "version": "1", "pid": os.getpid()}}, "environment": "demo", "variables": None, "argv": sys.argv[2:], "pass_env": [], "cwd": "/tmp", "ttl_seconds": None, "reason": "check"}}).encode()
s.sendall(struct.pack(">I", len(p) + 1) + b"\0" + p)
n = struct.unpack(">I", s.recv(4))[0]
b = b""
while len(b) < n:
    b += s.recv(n - len(b))
open("{}.tmp", "wb").write(b[1:])
os.rename("{}.tmp", "{}")
"#,
            out.display(),
            out.display(),
            out.display()
        );
        let st = std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .arg(&sock)
            .args(argv)
            .status()
            .unwrap();
        assert!(st.success());
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(b) = std::fs::read(&out) {
                return serde_json::from_slice(&b).unwrap();
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no reply");
            std::thread::sleep(Duration::from_millis(30));
        }
    };
    let with = reply(&["echo", "decoy-one", &value]);
    let without = reply(&["echo", "decoy-one", "decoy-two"]);
    for r in [&with, &without] {
        assert_eq!(r["kind"], "error", "{r}");
        let m = r.to_string();
        assert!(m.contains("cannot tell which process"), "{m}");
        assert!(m.contains("hint"), "{m}");
    }
    assert_eq!(with, without, "the refusal depends on a value");
    let list = h.json(&["requests", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
}
