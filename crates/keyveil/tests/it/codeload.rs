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
