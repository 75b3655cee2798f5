//! What a grant binds beyond its script (issue 15, after red team s14): one more attack of each
//! class the red team found, as a same-uid agent with the source in hand. Each gets a standing
//! grant for a harmless command, then rewrites a file the run reads as code (after approval, or
//! while the approved run sleeps). Values are generated and never printed: the planted code
//! writes the value to a marker file the test looks in.

use std::path::Path;
use std::time::Duration;

use crate::harness::*;
use crate::pathdirs::{approve_standing, exe, run, setup};
use crate::redteam_s14::{spawn, stealer, stolen, userns};

/// A `#!` chain two scripts deep (`ci.sh` → `tools/outer` → `tools/inner` → `/bin/sh`; the
/// kernel follows four): the second interpreter, rewritten after approval, never runs; the
/// card names it.
#[test]
fn s15_a_two_level_shebang_chain_rewritten_after_approval_never_runs() {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let tools = app.join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    let (outer, inner) = (tools.join("outer"), tools.join("inner"));
    exe(&inner, "#!/bin/sh\nexec /bin/sh \"$@\"\n");
    exe(
        &outer,
        &format!("#!{}\nexec /bin/sh \"$@\"\n", inner.display()),
    );
    exe(
        &app.join("ci.sh"),
        &format!("#!{}\necho approved-step\n", outer.display()),
    );
    let cmd = ["./ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(
        card.contains("tools/inner") && card.contains("tools/outer"),
        "the card does not show the #! chain: {card}"
    );
    let o = run(h, &app, "5", &cmd);
    assert!(
        text(&o.stdout).contains("approved-step"),
        "{}",
        text(&o.stderr)
    );
    let marker = a.path().join("stolen-inner");
    exe(
        &inner,
        &format!("#!/bin/sh\n{}exec /bin/sh \"$@\"\n", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        !stolen(&marker, &tok),
        "the rewritten second #! interpreter ran with the value"
    );
}

/// `./ci.sh` (`#!/bin/bash`, no interpreter on the argv) sources an extensionless sibling
/// (`. ./common`) after a pause; the agent writes a stealer into `common` while the run
/// sleeps. The run sources the sealed copy.
#[test]
fn s15_a_file_an_executable_script_sources_rewritten_during_a_run_never_runs() {
    if !userns() {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    exe(&app.join("ci.sh"), "#!/bin/bash\nsleep 2\n. ./common\n");
    std::fs::write(app.join("common"), "echo approved-lib\n").unwrap();
    let cmd = ["./ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-common");
    let child = spawn(h, &app, &cmd);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(
        app.join("common"),
        format!("{}echo approved-lib\n", stealer(&marker)),
    )
    .unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        text(&o.stdout).contains("approved-lib"),
        "the approved script did not run: {}",
        text(&o.stderr)
    );
    assert!(
        !stolen(&marker, &tok),
        "a sourced file rewritten during the run executed with the value"
    );
}

/// `python3 check.py` imports a module of a package beside it (`from pkg import mod`) after a
/// pause; `pkg/mod.py` is rewritten while the run sleeps. The run imports the sealed copy.
#[test]
fn s15_a_package_module_rewritten_during_a_run_never_runs() {
    if !userns() || !Path::new("/usr/bin/python3").exists() {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("check.py"),
        "import time\ntime.sleep(2)\nfrom pkg import mod\nprint(mod.ok())\n",
    )
    .unwrap();
    std::fs::create_dir_all(app.join("pkg")).unwrap();
    std::fs::write(app.join("pkg/__init__.py"), "").unwrap();
    std::fs::write(
        app.join("pkg/mod.py"),
        "def ok():\n    return 'approved-step'\n",
    )
    .unwrap();
    let cmd = ["/usr/bin/python3", "-B", "check.py"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-pkg");
    let child = spawn(h, &app, &cmd);
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(
        app.join("pkg/mod.py"),
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
        "a package module rewritten during the run executed with the value"
    );
}

/// An executable script over 16 MiB run by its `#!` line (`./install.sh`: the executable is
/// pinned by content, whatever its size), written in place while it sleeps. The run reads the
/// copy streamed from the checked descriptor.
#[test]
fn s15_an_oversized_executable_script_rewritten_during_a_run_never_runs_the_rewrite() {
    if !userns() {
        return;
    }
    let payload = "#".repeat(80) + "\n";
    let tail = payload.repeat((17 << 20) / payload.len());
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let script = app.join("install.sh");
    exe(
        &script,
        &format!("#!/bin/bash\nsleep 4\necho approved-step\nexit 0\n{tail}"),
    );
    let cmd = ["./install.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-install");
    let child = spawn(h, &app, &cmd);
    // Past the copy (a debug build hashes 17 MiB slowly; a write during it refuses the run).
    std::thread::sleep(Duration::from_millis(2500));
    std::fs::write(
        &script,
        format!(
            "#!/bin/bash\nsleep 4\n{}echo approved-step\nexit 0\n{tail}",
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
        "a line written into an oversized executable script during its run executed with the value"
    );
}

/// `./check.py` (`#!/usr/bin/env python3`: no interpreter on the argv, so no tool's loader
/// sees Python) imports its sibling; the sibling rewritten after approval never runs: the
/// script's directory is `sys.path[0]`, pinned from the `#!` line.
#[test]
fn s15_a_module_of_a_shebang_python_script_rewritten_after_approval_never_runs() {
    if !Path::new("/usr/bin/python3").exists() {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    exe(
        &app.join("check.py"),
        "#!/usr/bin/env python3\nimport helper\nprint(helper.ok())\n",
    );
    std::fs::write(
        app.join("helper.py"),
        "def ok():\n    return 'approved-step'\n",
    )
    .unwrap();
    let cmd = ["./check.py"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "5", &cmd);
    assert!(
        text(&o.stdout).contains("approved-step"),
        "{}",
        text(&o.stderr)
    );
    let marker = a.path().join("stolen-shebang-py");
    std::fs::write(
        app.join("helper.py"),
        format!(
            "import os\nopen('{}', 'w').write(os.environ.get('TOKEN', ''))\ndef ok():\n    return 'approved-step'\n",
            marker.display()
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    assert!(
        !stolen(&marker, &tok),
        "a module of a #! Python script rewritten after approval ran with the value"
    );
}
