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
fn stealer(marker: &Path) -> String {
    format!("printf %s \"$TOKEN\" > '{}'\n", marker.display())
}

/// Whether the marker holds the granted value (the leak), without printing it.
fn stolen(marker: &Path, tok: &str) -> bool {
    std::fs::read(marker).is_ok_and(|b| contains(&b, tok))
}

/// Whether this kernel lets an unprivileged process make a user namespace (sealing needs one).
fn userns() -> bool {
    std::process::Command::new("unshare")
        .args(["-U", "-m", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the run `cmd` in `app` under the standing grant (waiting at most 5 s for approval).
fn spawn(h: &Home, app: &Path, cmd: &[&str]) -> std::process::Child {
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
#[test]
#[ignore = "LEAK: a `#!` interpreter that is a script in the working tree is neither pinned nor \
            sealed; rewritten after approval it runs with the whole value under the standing \
            grant (1 of 1 runs)"]
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
#[test]
#[ignore = "LEAK: a nested `#!` interpreter script is read by path during the run, unsealed; a \
            line written into it mid-run runs with the whole value (1 of 1 runs)"]
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
#[test]
#[ignore = "LEAK: a file the approved script sources (`. ./lib.sh`) is neither pinned nor \
            sealed; rewritten after approval it runs with the whole value under the standing \
            grant (1 of 1 runs)"]
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
/// Held in every try measured (0 of 12 runs, 6 with a probe printing the cwd's path and the
/// script's device: one run's cwd was the twin's name, and its `ci.sh` was still the sealed
/// tmpfs copy): the directory the bind lands in was the run's cwd each time. Kept as a test: a
/// run that does read the unsealed twin fails it.
#[test]
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
