//! Configuration a known tool executes code from, read as the tool reads it (issue 15, red-team
//! round): git's config syntax in full (a continued value was shown cut short on the card), and
//! version managers' selector files and hooks.

#![allow(clippy::print_stderr)] // says why a test skips

use std::path::Path;

use crate::harness::*;
use crate::pathdirs::{Agent, approve_standing, exe, run, setup};

fn git_init(a: &Agent, app: &Path) {
    let o = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(app)
        .env("HOME", a.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn a_continued_git_config_value_is_shown_whole_and_its_include_is_pinned() {
    if which("git").is_none() {
        eprintln!("SKIPPED: git is not installed");
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    git_init(&a, &app);
    std::fs::write(app.join("README"), "x\n").unwrap();
    // What the red team used: a quoted value continued onto the next line, so a line-based
    // reader showed `less ` only. And an include whose path is itself continued.
    let cfg = app.join(".git/config");
    let mut t = std::fs::read_to_string(&cfg).unwrap();
    t.push_str("[core]\n\tpager = \"less \\\n; printenv TOKEN > /dev/null\"\n");
    t.push_str("[include]\n\tpath = \"ex\\\ntra.cfg\" ; a comment\n");
    std::fs::write(&cfg, t).unwrap();
    std::fs::write(app.join(".git/extra.cfg"), "[user]\n\tname = x\n").unwrap();
    let cmd = ["git", "status", "--short"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(
        card.contains("core.pager=\\\"less ; printenv TOKEN > /dev/null\\\"")
            || card.contains("core.pager=\"less ; printenv TOKEN > /dev/null\""),
        "{card}"
    );
    assert!(card.contains("extra.cfg (git-config)"), "{card}");
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("README"));
    // The included file, reached only through the continued path, is rewritten: the grant ends.
    let hook = a.path().join("evil.sh");
    exe(&hook, "#!/bin/sh\nexit 0\n");
    std::fs::write(
        app.join(".git/extra.cfg"),
        format!("[core]\n\tfsmonitor = {}\n", hook.display()),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("extra.cfg"), "{err}");
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
}

pub(crate) fn which(name: &str) -> Option<std::path::PathBuf> {
    ["/usr/local/bin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The machine's pyenv root (`~/.pyenv` of the user running the tests) and its global version.
fn real_pyenv() -> Option<(std::path::PathBuf, String)> {
    let home = std::env::var_os("HOME")?;
    let root = Path::new(&home).join(".pyenv");
    let v = std::fs::read_to_string(root.join("version")).ok()?;
    let v = v.split_whitespace().next()?.to_owned();
    (root.join("libexec/pyenv").is_file() && root.join("versions").join(&v).is_dir())
        .then_some((root, v))
}

/// A pyenv root of the agent's own, running the machine's pyenv and interpreter (symlinked,
/// never changed), with a shim as `pyenv rehash` writes it.
fn agent_pyenv(a: &Agent, real: &Path, version: &str) -> std::path::PathBuf {
    let root = a.path().join(".pyenv");
    std::fs::create_dir_all(root.join("shims")).unwrap();
    std::fs::create_dir_all(root.join("versions")).unwrap();
    std::os::unix::fs::symlink(real.join("libexec"), root.join("libexec")).unwrap();
    std::os::unix::fs::symlink(
        real.join("versions").join(version),
        root.join("versions").join(version),
    )
    .unwrap();
    std::fs::write(root.join("version"), format!("{version}\n")).unwrap();
    exe(
        &root.join("shims/python3"),
        &format!(
            "#!/usr/bin/env bash\nset -e\nprogram=\"${{0##*/}}\"\nexport PYENV_ROOT=\"{r}\"\nexec \"{r}/libexec/pyenv\" exec \"$program\" \"$@\"\n",
            r = root.display()
        ),
    );
    root
}

#[test]
fn a_pyenv_exec_hook_or_version_file_planted_after_approval_never_runs() {
    let Some((real, version)) = real_pyenv() else {
        eprintln!("SKIPPED: no pyenv install with a global version in ~/.pyenv");
        return;
    };
    // `make test`-like: a script that finds python3 by name, through the pyenv shims.
    let (a, tok, app) = setup(&[".pyenv/shims"], "python3 -c 'print(\"py-\" + \"ok\")'\n");
    let h = &a.h;
    let root = agent_pyenv(&a, &real, &version);
    let cmd = ["sh", "ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("(version-manager-hooks)"), "{card}");
    assert!(
        card.contains("pyenv hooks, run before the program"),
        "{card}"
    );
    assert!(card.contains("(toolchain-dir)"), "{card}");
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("py-ok"), "{}", text(&o.stdout));

    // The red-team attack: an exec hook, sourced by `pyenv exec` before the pinned script.
    let marker = a.path().join("stolen-hook");
    std::fs::create_dir_all(root.join("pyenv.d/exec")).unwrap();
    std::fs::write(
        root.join("pyenv.d/exec/zz.bash"),
        format!("printf %s \"$TOKEN\" > '{}'\n", marker.display()),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("pyenv.d"), "{err}");
    assert!(!marker.exists(), "the planted pyenv hook ran");
    std::fs::remove_dir_all(root.join("pyenv.d")).unwrap();

    // A new case of the class: the selector file that picks the interpreter, planted in the
    // working directory after approval (`system`, or a version the agent built).
    let _ = approve_standing(&a, &app, &cmd);
    std::fs::write(app.join(".python-version"), "system\n").unwrap();
    let o = run(h, &app, "0", &cmd);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains(".python-version"), "{err}");
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
}

#[test]
fn a_rust_toolchain_file_planted_after_approval_ends_a_grant_that_runs_cargo_by_name() {
    let Some(home) = std::env::var_os("HOME") else {
        return;
    };
    let rustup = Path::new(&home).join(".cargo/bin/rustup");
    if !rustup.is_file() {
        eprintln!("SKIPPED: rustup is not installed in ~/.cargo/bin");
        return;
    }
    // rustup's proxies, as ~/.cargo/bin holds them: `cargo` is rustup under another name.
    let (a, _tok, app) = setup(&["cargobin"], "cargo --version || true\necho ran\n");
    let h = &a.h;
    let bin = a.path().join("cargobin");
    std::fs::create_dir_all(&bin).unwrap();
    for n in ["rustup", "cargo"] {
        std::os::unix::fs::symlink(&rustup, bin.join(n)).unwrap();
    }
    let cmd = ["sh", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ran"));
    // A `path` toolchain of the agent's, chosen by a file in the working directory.
    std::fs::write(
        app.join("rust-toolchain.toml"),
        format!(
            "[toolchain]\npath = \"{}\"\n",
            a.path().join("evil-tc").display()
        ),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("rust-toolchain.toml"), "{err}");
    assert!(!text(&o.stdout).contains("ran"));
}
