//! Red team, session 14: script sealing (`reap/seal.rs`) as a same-uid agent with the source in
//! hand. Each attack gets a standing grant for a harmless script, then tries to make the run
//! execute lines it wrote while the grant stands. Values are generated; the tests look for the
//! value in a marker file the planted code writes, never print it. A held attack is a passing
//! test; one that works is `#[ignore = "LEAK: ..."]` and fails when run with `--ignored`.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use crate::pathdirs::{approve_standing, exe, run, setup};

/// What the agent's planted code does with the value: writes it to a file the agent reads.
pub(crate) fn stealer(marker: &Path) -> String {
    format!("printf %s \"$TOKEN\" > '{}'\n", marker.display())
}

/// Whether the marker holds the granted value (the leak), without printing it.
pub(crate) fn stolen(marker: &Path, tok: &str) -> bool {
    std::fs::read(marker).is_ok_and(|b| contains(&b, tok))
}

/// Whether this kernel lets an unprivileged process make a user namespace (sealing needs one).
pub(crate) fn userns() -> bool {
    std::process::Command::new("unshare")
        .args(["-U", "-m", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the run `cmd` in `app` under the standing grant (waiting at most 5 s for approval).
pub(crate) fn spawn(h: &Home, app: &Path, cmd: &[&str]) -> std::process::Child {
    let cwd = app.to_string_lossy().into_owned();
    let mut args = vec!["run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--"];
    args.extend_from_slice(cmd);
    h.spawn_run(&args)
}

/// The human approves `./ci.sh`, whose `#!` line names a project-local interpreter that is
/// itself a script (`tools/runner`, `#!/bin/sh`, which runs its argument: a nested `#!` the
/// kernel follows, `binfmt_script`). The card pins `ci.sh` (its `#!` line included); nothing
/// pins or seals `tools/runner`, the program the kernel actually runs. After approval the agent
/// rewrites `tools/runner`; the next run under the standing grant runs it with the value.
///
/// Root cause: `pin::sealed_files` and the pins know the executable and its script operand;
/// the interpreter a `#!` line names is never read (no `#!` parsing in `pin/`), so neither the
/// broker's check nor the run's end sees it change.
/// Held since: every interpreter of the `#!` chain is pinned (`pin/shebang.rs`), shown on the
/// card, and the rewrite ends the grant before the run.
#[test]
fn s14_a_script_interpreter_named_by_the_shebang_rewritten_after_approval_never_runs() {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let tools = app.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let runner = tools.join("runner");
    exe(&runner, "#!/bin/sh\nexec /bin/sh \"$@\"\n");
    exe(
        &app.join("ci.sh"),
        &format!("#!{}\necho approved-step\n", runner.display()),
    );
    let cmd = ["./ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("approved-step"), "{card}");

    let marker = a.path().join("stolen-runner");
    exe(
        &runner,
        &format!("#!/bin/sh\n{}exec /bin/sh \"$@\"\n", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        !stolen(&marker, &tok),
        "the rewritten #! interpreter ran with the value (exit {:?})",
        o.status.code()
    );
}

/// The same nested `#!`, rewritten in place *during* a run: `tools/runner` is a shell script
/// that sleeps and then runs its argument, read by the shell as it goes; sealing covers
/// `ci.sh` only, so the line the agent writes into `runner` while the run sleeps runs with the
/// value.
/// Held since: an interpreter that is a script is sealed for the run like the script.
#[test]
fn s14_a_nested_shebang_interpreter_rewritten_during_a_run_never_runs_the_rewrite() {
    if !userns() {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let tools = app.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let runner = tools.join("runner");
    let original = "#!/bin/bash\nsleep 2\n. \"$1\"\n";
    exe(&runner, original);
    exe(
        &app.join("ci.sh"),
        &format!("#!{}\necho approved-step\n", runner.display()),
    );
    let cmd = ["./ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-nested");
    let child = spawn(h, &app, &cmd);
    std::thread::sleep(Duration::from_millis(1000));
    // The same inode, the first lines unchanged: bash reads on at the same offset.
    std::fs::write(
        &runner,
        format!("#!/bin/bash\nsleep 2\n{}. \"$1\"\n", stealer(&marker)),
    )
    .unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    std::fs::write(&runner, original).unwrap();
    assert!(
        !contains(&o.stdout, &tok) && !contains(&o.stderr, &tok),
        "the run printed the value: {}",
        text(&o.stderr).replace(&tok, "<VALUE>")
    );
    assert!(
        !stolen(&marker, &tok),
        "a line written into the #! interpreter during the run executed with the value"
    );
}

/// The human approves `bash ci.sh`, which sources its sibling `lib.sh` (`. ./lib.sh`, the
/// usual shape of a project's scripts). The agent rewrites `lib.sh` after approval: is the
/// file a script reads pinned? And if it is pinned, it is not sealed: written in place during a
/// run (after the source line started, bash reads the sourced file as it goes too) it runs.
/// Held since: the script's directory is pinned by the content of the files it may source and
/// those are sealed (`pin/sealdirs.rs`).
#[test]
fn s14_a_file_the_script_sources_rewritten_after_approval_never_runs() {
    let (a, tok, app) = setup(&[], ". ./lib.sh\n");
    let h = &a.h;
    std::fs::write(app.join("lib.sh"), "echo approved-lib\n").unwrap();
    let cmd = ["bash", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "5", &cmd);
    assert!(
        text(&o.stdout).contains("approved-lib"),
        "{}",
        text(&o.stderr)
    );
    let marker = a.path().join("stolen-lib");
    std::fs::write(
        app.join("lib.sh"),
        format!("{}echo approved-lib\n", stealer(&marker)),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        !stolen(&marker, &tok),
        "the rewritten sourced file ran with the value (exit {:?})",
        o.status.code()
    );
}

/// The agent keeps exchanging the approved working directory with a twin holding the same
/// `ci.sh` (`renameat2(RENAME_EXCHANGE)` in a loop: both names exist at every instant, every
/// check reads the pinned bytes). The run's cwd is taken when the broker spawns the reaper, by
/// path; the reaper then binds its sealed copy over `<cwd path>/ci.sh` as that path resolves a
/// few milliseconds later. When the two land in different directories (about half the runs),
/// `bash ci.sh` opens `ci.sh` relative to a cwd whose file is not the sealed one, and a line
/// the agent writes into both real files while the run sleeps runs with the value. Not the
/// stated rename window (a name replaced between the check and the interpreter's `open`): the
/// bind is never dropped, the directory is chosen before the check.
///
/// Held in every try the red team measured (0 of 12 runs, 6 with a probe printing the cwd's
/// path and the script's device), but the fresh-clone CI run of `81a4754` (2 cores, the whole
/// suite in parallel) saw it work in 1 of 2 tries: the bind is made by the script's path, the
/// run's cwd is a directory inode, and an exchange between the two can leave the run reading
/// `ci.sh` in the directory the bind did not land in. Fix (not made): after sealing, the reaper
/// re-opens its cwd and each sealed path relative to it and checks they are the sealed copies
/// (device of the tmpfs), or binds through a descriptor of the cwd it will run in.
#[test]
#[ignore = "LEAK: a cwd exchanged with a twin directory (RENAME_EXCHANGE in a loop) can make the run             read the unsealed twin's ci.sh: the value reached a line written mid-run (1 of 2             tries in CI under load; 0 of 12 on an idle machine)"]
fn s14_a_cwd_exchanged_with_a_twin_directory_never_runs_an_unsealed_script() {
    if !userns() || !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    let original = "sleep 2\necho approved-step\n";
    let mut leaked = 0;
    let mut tries = 0;
    for _ in 0..3 {
        tries += 1;
        let (a, tok, app) = setup(&[], original);
        let h = &a.h;
        let twin = a.path().join("twin");
        std::fs::create_dir_all(&twin).unwrap();
        std::fs::write(twin.join("ci.sh"), original).unwrap();
        let cmd = ["bash", "ci.sh"];
        let _ = approve_standing(&a, &app, &cmd);
        let stop = a.path().join("stop-swapping");
        let swapper = std::process::Command::new("python3")
            .arg("-c")
            .arg(
                "import ctypes,os,sys\n\
                 libc=ctypes.CDLL(None,use_errno=True)\n\
                 a,b,stop=(s.encode() for s in sys.argv[1:4])\n\
                 n=0\n\
                 while not os.path.exists(stop):\n\
                 \x20   for _ in range(200):\n\
                 \x20       libc.renameat2(-100,a,-100,b,2)\n\
                 \x20       n+=1\n\
                 if n%2: libc.renameat2(-100,a,-100,b,2)\n",
            )
            .arg(&app)
            .arg(&twin)
            .arg(&stop)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let marker = a.path().join("stolen-cwd");
        let child = spawn(h, &app, &cmd);
        std::thread::sleep(Duration::from_millis(1000));
        std::fs::write(&stop, "").unwrap();
        let _ = crate::harness::wait_output(swapper, Duration::from_secs(10));
        let evil = format!("sleep 2\n{}echo approved-step\n", stealer(&marker));
        for d in [&app, &twin] {
            std::fs::write(d.join("ci.sh"), &evil).unwrap();
        }
        let o = wait_output(child, Duration::from_secs(60));
        assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
        if stolen(&marker, &tok) {
            leaked += 1;
            break;
        }
    }
    assert_eq!(
        leaked, 0,
        "a line written into an unsealed twin of the approved script ran with the value \
         ({leaked} of {tries} runs)"
    );
}

// ---------------------------------------------------------------------------------------------
// The card matcher and values keyveil made at random

/// The value `marker` precedes on a live process's command line, within 30 s (the test's way
/// to know the value; the agent's way is the card).
fn wait_arg_after(marker: &str) -> String {
    let t0 = std::time::Instant::now();
    loop {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
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
                return v.clone();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no process with {marker} on its command line"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// The agent's own daemon, started outside every run: it runs each line written to a FIFO in
/// the home (a job queue, `at`, an editor server). Returns it and the FIFO's path.
fn agents_daemon(h: &Home) -> (std::process::Child, String) {
    use std::os::unix::process::CommandExt as _;
    let fifo = h.path().join("agent-queue-s14");
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

fn end_daemon(d: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", d.id())])
        .status();
    let _ = d.wait();
}

/// A granted child hands its daemon (outside every run) an ask that passes a configuration
/// string through (`--pass-env CFG`), the way s10c's daemons put a value in argv: `CFG` is 170
/// characters the agent knows (a config template) followed by a value keyveil generated. The
/// card shows a pass-through value's first 200 characters and a digest of the whole of it.
///
/// Was a LEAK: the clip was taken when the ask arrived, the whole-value matcher ran on the
/// clipped text afterwards, so the value was no longer whole there and its first 30 characters
/// were shown as given; the two left out were found offline from the card's unkeyed SHA-256
/// (3,844 candidates). Now the broker keeps the whole value, masks it first and clips after
/// (`broker/state/shown.rs`), and the digest is keyed by a secret of the broker: the offline
/// search finds nothing.
#[test]
fn s14_a_generated_value_across_the_clip_of_a_pass_through_value_is_not_shown() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let (mut daemon, fifo) = agents_daemon(&h);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let prefix = "x".repeat(170);
    let (mut outer, _id) = h.granted_ask(&format!(
        r#"echo "CFG={prefix}$API_TOKEN KV run --env demo --wait 30 --cwd '{wd}' --pass-env CFG -- true s14-pass-marker $API_TOKEN" > '{fifo}'; sleep 20"#
    ));
    let value = wait_arg_after("s14-pass-marker");
    // The daemon's request: the one whose card passes CFG through.
    let t0 = std::time::Instant::now();
    let card = loop {
        let list = h.json(&["requests", "--json"]);
        if let Some(c) = list.as_array().and_then(|a| {
            a.iter()
                .find(|r| r["chosen_values"].as_array().is_some_and(|c| !c.is_empty()))
                .cloned()
        }) {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no daemon ask");
        std::thread::sleep(Duration::from_millis(50));
    };
    let human = h.ok(&["requests"]);
    end_daemon(&mut daemon);
    let _ = outer.kill();
    let _ = outer.wait();
    assert_eq!(value.len(), 32, "the value was not read back");
    let cv = &card["chosen_values"][0];
    let shown = cv["value"].as_str().unwrap_or_default().to_owned();
    let digest = cv["digest"].as_str().unwrap_or_default().to_owned();
    assert!(
        card.get("sha256").is_none() && cv.get("sha256").is_none(),
        "{card}"
    );
    // What the agent does: the shown part, completed offline against the shown digest.
    let part = shown.strip_prefix(&prefix).unwrap_or_default().to_owned();
    let alnum: Vec<char> = ('A'..='Z').chain('a'..='z').chain('0'..='9').collect();
    let mut recovered = String::new();
    if part.len() < 32 {
        'search: for a in &alnum {
            for b in &alnum {
                let cand = format!("{prefix}{part}{a}{b}");
                if sha256_hex(&cand) == digest {
                    recovered = format!("{part}{a}{b}");
                    break 'search;
                }
            }
        }
    }
    assert_ne!(
        digest,
        sha256_hex(&format!("{prefix}{value}")),
        "unkeyed digest"
    );
    let run = longest_run(&value, &format!("{card}{human}"));
    assert!(
        run < 12 && recovered != value,
        "the card shows {run} characters of the generated value in a row; recovered whole \
         from the card's digest: {}",
        recovered == value
    );
    // Masked whole, and shown whole (the marker fits in the 200 characters).
    assert_eq!(shown, format!("{prefix}[REDACTED:API_TOKEN]"), "{card}");
}

/// The longest run of consecutive characters of `value` (12 and more) found in `shown`; 0
/// when none.
fn longest_run(value: &str, shown: &str) -> usize {
    (12..=value.len())
        .rev()
        .find(|&n| {
            value
                .as_bytes()
                .windows(n)
                .any(|w| contains(shown.as_bytes(), std::str::from_utf8(w).unwrap()))
        })
        .unwrap_or(0)
}

/// The generated `API_TOKEN`'s value, as the test learns it (an approved run writes it where
/// the test reads it; an agent would need a partial leak).
fn generated_value(h: &Home, wd: &str) -> String {
    let file = std::path::Path::new(wd).join("v");
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--wait",
            "30",
            "--cwd",
            wd,
            "--",
            "sh",
            "-c",
            &format!("printf %s \"$API_TOKEN\" > '{}'", file.display()),
        ],
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let value = std::fs::read_to_string(&file).unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(value.len(), 32);
    value
}

/// The same class through standard input: 1,990 characters the agent knows, then a generated
/// value (an MCP `run` whose stdin a granted child's output fed). The card shows 2,000
/// characters of stdin: the value straddles the clip. Masked first, the marker is what
/// straddles it, and the clip ends before the marker; the digest is keyed.
#[test]
fn s14_a_generated_value_across_the_clip_of_standard_input_is_not_shown() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let value = generated_value(&h, &wd);
    let prefix = "x".repeat(1990);
    let input = format!("{prefix}{value}");
    let mut m = crate::redteam20::McpLine::start(&h);
    let r = m.call(
        "run",
        &serde_json::json!({"environment": "demo", "wait_seconds": 0, "cwd": wd,
                            "command": ["cat"], "stdin": input}),
    );
    assert!(!contains(r.to_string().as_bytes(), &value), "{r}");
    let list = h.json(&["requests", "--json"]);
    let card = list
        .as_array()
        .and_then(|a| a.iter().find(|c| !c["stdin"].is_null()).cloned())
        .unwrap_or_else(|| panic!("no card with standard input: {list} (mcp: {r})"));
    let human = h.ok(&["requests"]);
    let stdin = &card["stdin"];
    assert_eq!(stdin["text"].as_str(), Some(prefix.as_str()), "{card}");
    assert_eq!(stdin["clipped"], true, "{card}");
    assert_eq!(stdin["bytes"], 2022, "{card}");
    let digest = stdin["digest"].as_str().unwrap_or_default();
    assert_eq!(digest.len(), 64, "{card}");
    assert_ne!(digest, sha256_hex(&input), "unkeyed digest");
    let run = longest_run(&value, &format!("{card}{human}"));
    assert_eq!(
        run, 0,
        "the card shows {run} characters of the value in a row"
    );
    assert!(!contains(h.audit_text().as_bytes(), &value[..12]), "audit");
}

/// The same class in a value stored without the factor (the agent's own `set`, with a
/// generated value it holds, or a granted child's): 185 known characters, then the value,
/// across the 200-character clip of the card's quote of it.
#[test]
fn s14_a_generated_value_across_the_clip_of_a_value_stored_without_the_factor_is_not_shown() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let value = generated_value(&h, &wd);
    let prefix = "y".repeat(185);
    h.set_unverified("demo", "CFG", &format!("{prefix}{value}"));
    let o = h.run(&[
        "run", "--env", "demo", "--wait", "0", "--cwd", &wd, "--", "printenv", "CFG",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let list = h.json(&["requests", "--json"]);
    let card = list
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|c| c["argv"] == serde_json::json!(["printenv", "CFG"]))
                .cloned()
        })
        .unwrap_or_else(|| panic!("no card: {list}"));
    let human = h.ok(&["requests"]);
    let cv = card["chosen_values"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["variable"] == "CFG").cloned())
        .unwrap_or_else(|| panic!("CFG not quoted: {card}"));
    assert_eq!(cv["origin"], "stored-without-factor", "{card}");
    assert_eq!(cv["value"].as_str(), Some(prefix.as_str()), "{card}");
    assert_eq!(cv["clipped"], true, "{card}");
    let digest = cv["digest"].as_str().unwrap_or_default();
    assert_ne!(
        digest,
        sha256_hex(&format!("{prefix}{value}")),
        "unkeyed digest"
    );
    let run = longest_run(&value, &format!("{card}{human}"));
    assert_eq!(
        run, 0,
        "the card shows {run} characters of the value in a row"
    );
}

/// Control: the same daemon ask with the generated value whole inside the first 200
/// characters: the card masks it in the pass-through value (the card's digest is of a string
/// holding 190 random bits: no search).
#[test]
fn s14_a_generated_value_inside_a_pass_through_value_is_masked() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let (mut daemon, fifo) = agents_daemon(&h);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let (mut outer, _id) = h.granted_ask(&format!(
        r#"echo "CFG=token=$API_TOKEN KV run --env demo --wait 30 --cwd '{wd}' --pass-env CFG -- true s14-pass-marker2 $API_TOKEN" > '{fifo}'; sleep 20"#
    ));
    let value = wait_arg_after("s14-pass-marker2");
    let t0 = std::time::Instant::now();
    let list = loop {
        let raw = h.run(&["requests", "--json"]).stdout;
        if text(&raw).contains("token=") {
            break raw;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no daemon ask");
        std::thread::sleep(Duration::from_millis(50));
    };
    end_daemon(&mut daemon);
    let _ = outer.kill();
    let _ = outer.wait();
    assert_eq!(value.len(), 32, "the value was not read back");
    assert!(
        text(&list).contains("token=[REDACTED:API_TOKEN]"),
        "the pass-through value is not masked"
    );
    assert!(!contains(&list, &value), "requests --json shows the value");
}

// ---------------------------------------------------------------------------------------------
// More sealing: sizes, imports, other names of the same file

/// A script over the 16 MiB sealing limit (a self-extracting installer: a few lines of shell,
/// then a payload after `exit`) is pinned by identity, not content, and not copied: the run
/// reads it by path. Written in place while the approved run sleeps (the same first line, a
/// stealer after it), it runs the new line with the value; the run's end sees the write and
/// ends the grant, after that run.
/// Held since: a file over 16 MiB is checked by identity and streamed into the run's tmpfs
/// from the checked descriptor (`reap/seal.rs`).
#[test]
fn s14_an_oversized_script_rewritten_during_a_run_never_runs_the_rewrite() {
    if !userns() {
        return;
    }
    let payload = "#".repeat(80) + "\n";
    let tail = payload.repeat((17 << 20) / payload.len());
    let original = format!("sleep 2\necho approved-step\nexit 0\n{tail}");
    let (a, tok, app) = setup(&[], &original);
    let h = &a.h;
    let cmd = ["bash", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-big");
    let child = spawn(h, &app, &cmd);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(
        app.join("ci.sh"),
        format!(
            "sleep 2\n{}echo approved-step\nexit 0\n{tail}",
            stealer(&marker)
        ),
    )
    .unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        text(&o.stdout).contains("approved-step"),
        "the approved script did not run: {}",
        text(&o.stderr)
    );
    assert!(
        !stolen(&marker, &tok),
        "a line written into an oversized approved script during its run executed with the value"
    );
}

/// `python3 check.py` that imports its sibling module after a pause (`time.sleep(2); import
/// helper`): the sibling is pinned (`sys.path[0]`'s fingerprint) but not sealed, so a
/// `helper.py` rewritten while the run sleeps is the one imported, with the value in
/// `os.environ`. The run's end sees the directory changed and ends the grant, after that run.
/// Held since: `sys.path[0]`'s importable files are sealed (`pin/sealdirs.rs`).
#[test]
fn s14_a_module_rewritten_during_a_run_before_its_import_never_runs() {
    if !userns() || !std::path::Path::new("/usr/bin/python3").exists() {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("check.py"),
        "import time\ntime.sleep(2)\nimport helper\nprint(helper.ok())\n",
    )
    .unwrap();
    std::fs::write(
        app.join("helper.py"),
        "def ok():\n    return 'approved-step'\n",
    )
    .unwrap();
    let cmd = ["/usr/bin/python3", "check.py"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-import");
    let child = spawn(h, &app, &cmd);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(
        app.join("helper.py"),
        format!(
            "import os\nopen('{}', 'w').write(os.environ.get('TOKEN', ''))\ndef ok():\n    return 'approved-step'\n",
            marker.display()
        ),
    )
    .unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        text(&o.stdout).contains("approved-step"),
        "the approved script did not run: {}",
        text(&o.stderr)
    );
    assert!(
        !stolen(&marker, &tok),
        "a module rewritten during the run before its import executed with the value"
    );
}

/// The agent holds other ways to the approved script's inode, made before the run: a hard link
/// in another directory and a descriptor opened for writing. During the run it writes the
/// stealer through both (the same inode the run's path names outside its namespace). The run
/// reads its sealed copy: held.
#[test]
fn s14_a_script_written_through_a_hard_link_and_an_open_descriptor_never_runs_the_write() {
    if !userns() {
        return;
    }
    let original = "sleep 2\necho approved-step\n";
    let (a, tok, app) = setup(&[], original);
    let h = &a.h;
    let cmd = ["bash", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let other = a.path().join("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::hard_link(app.join("ci.sh"), other.join("same.sh")).unwrap();
    let mut fd = std::fs::OpenOptions::new()
        .write(true)
        .open(app.join("ci.sh"))
        .unwrap();
    let marker = a.path().join("stolen-link");
    let child = spawn(h, &app, &cmd);
    std::thread::sleep(Duration::from_millis(1000));
    let evil = format!("sleep 2\n{}echo approved-step\n", stealer(&marker));
    {
        use std::io::{Seek as _, Write as _};
        fd.seek(std::io::SeekFrom::Start(0)).unwrap();
        fd.write_all(evil.as_bytes()).unwrap();
    }
    std::fs::write(other.join("same.sh"), &evil).unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        text(&o.stdout).contains("approved-step"),
        "the approved script did not run: {}",
        text(&o.stderr)
    );
    assert!(
        !stolen(&marker, &tok),
        "a write through a hard link or an early descriptor ran with the value"
    );
}

/// The matcher of values made at random runs on the agent's own asks too (a daemon may have
/// started them): it masks a candidate that is the whole value. The design says that answers no
/// planted guess, "since no agent can plant a right guess of ≥ 80 random bits whatever it
/// knows". But the agent can know most of such a value: the clip above showed 30 of 32
/// characters (closed since: masked whole, clipped after), a value a granted child writes in part reaches a card (`docs/threat-model.md`),
/// and a dump line under 12 bytes stays visible (`docs/redaction.md` §5). With all but one
/// character known, one ask of its own holding the 62 candidates in its argv, and the card
/// masks the right one: the whole value, without any digest.
///
/// Kept as a stated LIMIT (`docs/threat-model.md`, "Honest limits", the card-matcher row on
/// values made at random): the masking must stay (`redteam_s10c.rs`), and any visible reaction
/// to a match is the same oracle. Its precondition is a partial leak (the clip above is closed);
/// a match is made loud instead: see the next test.
#[test]
#[ignore = "LIMIT: the at-random matcher masks the right candidate among the agent's own planted \
            guesses once all but one character is known from a partial leak; a match flags the \
            card value-outside-custody, is audited and listed by `keyveil status` \
            (docs/threat-model.md, Honest limits, card matcher and values made at random)"]
fn s14_the_agents_own_ask_does_not_single_out_a_candidate_of_a_generated_value() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    // The test's own knowledge of the value (an approved run writes it where the test reads it);
    // the agent has 31 of its 32 characters from a partial leak.
    let file = work.path().join("v");
    let o = h.run_approved(
        &[
            "run",
            "--env",
            "demo",
            "--wait",
            "30",
            "--cwd",
            &wd,
            "--",
            "sh",
            "-c",
            &format!("printf %s \"$API_TOKEN\" > '{}'", file.display()),
        ],
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let value = std::fs::read_to_string(&file).unwrap();
    assert_eq!(value.len(), 32);
    let known = &value[..31];
    let cands: Vec<String> = ('A'..='Z')
        .chain('a'..='z')
        .chain('0'..='9')
        .map(|c| format!("{known}{c}"))
        .collect();
    let mut args = vec![
        "run", "--env", "demo", "--wait", "30", "--cwd", &wd, "--", "true",
    ];
    args.extend(cands.iter().map(String::as_str));
    let mut ask = h.spawn_run(&args);
    let id = h.wait_request();
    let list = h.json(&["requests", "--json"]);
    let _ = ask.kill();
    let _ = ask.wait();
    let argv: Vec<String> = list
        .as_array()
        .and_then(|a| a.iter().find(|r| r["id"].as_u64() == Some(id)).cloned())
        .and_then(|r| r["argv"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|w| w.as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(argv.len(), 63, "the agent's ask is not listed");
    let singled: Vec<&String> = argv
        .iter()
        .skip(1)
        .zip(&cands)
        .filter(|(shown, _)| shown.contains("[REDACTED:"))
        .map(|(_, c)| c)
        .collect();
    assert!(
        singled.is_empty(),
        "the card singled out {} candidate(s); the value among them: {}",
        singled.len(),
        singled.iter().any(|c| **c == value)
    );
}

/// The agent's own ask holding a value keyveil made at random (it learned it somewhere: the
/// LIMIT above needs all but a guess of it): the card masks it, as ever, and the match is loud:
/// the card carries `value-outside-custody` (JSON and the human's card), the audit an entry
/// naming the variable, and `keyveil status` lists the variable until it is rotated. None of
/// them names the value.
#[test]
fn s14_a_generated_value_in_the_agents_own_ask_is_flagged_audited_and_listed_in_status() {
    let h = Home::new();
    h.ok(&["generate", "demo", "API_TOKEN"]);
    let work = tempfile::tempdir_in("/tmp").unwrap();
    let wd = work.path().to_str().unwrap().to_owned();
    let value = generated_value(&h, &wd);
    let status0 = h.ok(&["status"]);
    assert!(!status0.contains("API_TOKEN"), "{status0}");
    let o = h.run(&[
        "run", "--env", "demo", "--wait", "0", "--cwd", &wd, "--", "true", &value,
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let list = h.json(&["requests", "--json"]);
    let card = list
        .as_array()
        .and_then(|a| a.iter().find(|c| c["argv"][0] == "true").cloned())
        .unwrap_or_else(|| panic!("no card: {list}"));
    assert_eq!(card["argv"][1], "[REDACTED:API_TOKEN]", "{card}");
    assert!(
        card["risk"]
            .as_array()
            .is_some_and(|r| r.iter().any(|f| f == "value-outside-custody")),
        "{card}"
    );
    let human = h.ok(&["requests"]);
    assert!(human.contains("value-outside-custody"), "{human}");
    let audit = h.audit_text_with("value_outside_custody");
    assert!(audit.contains("API_TOKEN"), "{audit}");
    let status = h.ok(&["status"]);
    assert!(
        status.contains("API_TOKEN") && status.contains("rotate it"),
        "{status}"
    );
    let sj = h.json(&["status", "--json"]);
    assert_eq!(
        sj["values_outside_custody"][0]["variable"], "API_TOKEN",
        "{sj}"
    );
    let all = format!("{list}{human}{audit}{status}{sj}{}", h.audit_text());
    assert_eq!(longest_run(&value, &all), 0, "a surface names the value");
    // Rotated: no longer listed.
    let o = h.run_stdin(
        &["generate", "demo", "API_TOKEN", "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "rotate: {}", text(&o.stderr));
    let status = h.ok(&["status"]);
    assert!(!status.contains("API_TOKEN"), "{status}");
}
