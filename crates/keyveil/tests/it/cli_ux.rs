//! The command line's daily comforts: completions and man pages generated from the clap
//! definitions, examples in `--help`, the `--` hint, `approve` without an id.

use std::time::Duration;

use crate::harness::*;

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    let h = Home::empty();
    for (shell, marker) in [
        ("bash", "complete -F _keyveil"),
        ("zsh", "#compdef keyveil"),
        ("fish", "complete -c keyveil"),
    ] {
        let out = h.ok(&["completions", shell]);
        assert!(out.contains(marker), "{shell}: {out}");
        for sub in ["approve", "import", "run", "completions"] {
            assert!(out.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let o = h.run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_pages_come_from_the_clap_definitions() {
    let h = Home::empty();
    let page = h.ok(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH keyveil 1"),
        "{page}"
    );
    assert!(page.contains(".TH keyveil 1"));
    assert!(page.contains("import"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("man1");
    let out = h.ok(&["man", "--dir", &d.to_string_lossy()]);
    assert!(out.starts_with("wrote "), "{out}");
    for name in [
        "keyveil.1",
        "keyveil-run.1",
        "keyveil-env-show.1",
        "keyveil-import.1",
    ] {
        let p = d.join(name);
        let text = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{name} missing"));
        assert!(text.contains(".TH"), "{name}");
    }
    // The examples of --help are in the page too.
    let run = std::fs::read_to_string(d.join("keyveil-run.1")).unwrap();
    assert!(
        run.contains("keyveil run \\-\\-env demo \\-\\- ./deploy.sh"),
        "{run}"
    );
}

#[test]
fn main_commands_show_examples_in_help() {
    let h = Home::empty();
    for cmd in [
        vec!["run", "--help"],
        vec!["approve", "--help"],
        vec!["set", "--help"],
        vec!["env", "--help"],
        vec!["setup", "--help"],
        vec!["import", "--help"],
    ] {
        let out = h.ok(&cmd);
        assert!(out.contains("Examples:\n  keyveil "), "{cmd:?}: {out}");
    }
}

#[test]
fn a_command_without_double_dash_gets_a_hint_with_the_fixed_line() {
    let h = Home::empty();
    let o = h.run(&["run", "--env", "demo", "echo", "hi"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("run_without_double_dash", text(&o.stderr));
    // Nothing was asked of a broker: the line never parsed.
    assert_eq!(
        std::fs::read_dir(h.path()).unwrap().count(),
        0,
        "a broker was started"
    );
}

#[test]
fn approve_without_an_id_takes_the_only_pending_request() {
    let h = Home::new();
    h.set("demo", "API_TOKEN", "tok_only-pending-Zq81");
    // None pending: said so, with a way forward.
    let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no request is pending"));
    assert!(text(&o.stderr).contains("hint:"));
    // Exactly one: approved without naming it.
    let child = h.spawn_run(&["run", "--env", "demo", "--", "echo", "one"]);
    let first = h.wait_request();
    let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains(&format!("approved request #{first}")),
        "{}",
        text(&o.stdout)
    );
    let out = wait_output(child, Duration::from_secs(30));
    assert!(text(&out.stdout).contains("one"));
    // Several: refused, each listed, nothing approved.
    let mut runs = Vec::new();
    for word in ["two", "three"] {
        runs.push(h.spawn_run(&["run", "--env", "demo", "--wait", "30", "--", "echo", word]));
        let t0 = std::time::Instant::now();
        while h
            .json(&["requests", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["argv"][1] != word)
        {
            assert!(t0.elapsed() < Duration::from_secs(20));
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    let o = h.run_stdin(&["approve", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("2 requests are pending"), "{err}");
    assert!(
        err.contains("\"echo\" \"two\"") && err.contains("\"echo\" \"three\""),
        "{err}"
    );
    assert!(err.contains("hint: `keyveil approve ID`"), "{err}");
    assert_eq!(h.json(&["requests", "--json"]).as_array().unwrap().len(), 2);
    for r in runs {
        let _ = std::process::Command::new("kill")
            .arg(r.id().to_string())
            .status();
        let _ = wait_output(r, Duration::from_secs(30));
    }
}

/// `scripts/test.sh` checks what it needs before building: each missing tool is named with how
/// to get it, and the check fails (here: a PATH holding only the shell's basics).
#[test]
fn the_test_script_names_each_missing_prerequisite_and_how_to_get_it() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bare = tempfile::tempdir().unwrap();
    for t in ["bash", "dirname", "id", "sh"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(t))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{t} not found"));
        std::os::unix::fs::symlink(found, bare.path().join(t)).unwrap();
    }
    let o = std::process::Command::new(bare.path().join("bash"))
        .arg(repo.join("scripts/prereqs.sh"))
        .arg("--check")
        .env_clear()
        .env("PATH", bare.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o.stdout);
    for name in [
        "cargo",
        "setsid",
        "sha256sum",
        "python3 with venv",
        "node and npm",
    ] {
        assert!(out.contains(&format!("missing: {name}")), "{name}: {out}");
    }
    assert_eq!(
        out.matches("missing: ").count(),
        out.matches("  get it: ").count() - out.matches("optional, not found").count(),
        "{out}"
    );
    assert!(out.contains("hint: "), "{out}");
}

/// `deny` of a request that does not exist says how to see the ones that do, as `approve` does.
#[test]
fn deny_of_an_unknown_request_says_how_to_list_them() {
    let h = Home::new();
    let o = h.run(&["deny", "99"]);
    assert_eq!(o.status.code(), Some(1));
    insta::assert_snapshot!("deny_unknown_request", text(&o.stderr));
}

/// `set` into an environment that does not exist refuses before it asks for anything: the
/// value and the factor are never prompted for (here, without a terminal, a prompt would fail
/// with "cannot read from the terminal" instead), and the hint names the command that creates it.
#[test]
fn set_into_a_missing_environment_refuses_before_any_prompt() {
    let h = Home::new();
    let o = h.run(&["set", "staging", "API_TOKEN"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    insta::assert_snapshot!("set_missing_environment", text(&o.stderr));
    // Piped in too: nothing is read as a value, nothing is stored, nothing is created.
    let o = h.run_stdin(
        &[
            "set",
            "staging",
            "API_TOKEN",
            "--from-stdin",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\nfixture-value-not-a-secret-1"),
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("hint: create it with `keyveil env create staging`"),
        "{}",
        text(&o.stderr)
    );
    // `--web` too: refused before a page is started or a link printed.
    let o = h.run(&["set", "staging", "API_TOKEN", "--web"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("hint: create it with `keyveil env create staging`"),
        "{}",
        text(&o.stderr)
    );
    assert!(!text(&o.stdout).contains("http://"), "{}", text(&o.stdout));
    let envs = h.json(&["env", "list", "--json"]);
    assert_eq!(envs.as_array().map(Vec::len), Some(1), "{envs}");
    assert!(!h.audit_text().contains("staging"));
}

/// `set` while the vault is locked: refused before any prompt, with a hint for the human at
/// the terminal (the broker's own hint speaks to an agent).
#[test]
fn set_while_locked_tells_the_human_to_unlock() {
    let h = Home::new();
    h.ok(&["lock"]);
    let o = h.run(&["set", "demo", "API_TOKEN"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    insta::assert_snapshot!("set_while_locked", text(&o.stderr));
    // A second lock changes nothing and says so (no audit warning: nothing was to be recorded).
    let o = h.run(&["lock"]);
    assert!(o.status.success());
    assert_eq!(
        text(&o.stdout).trim(),
        "the vault was already locked (no value is in the broker's memory)"
    );
    assert_eq!(text(&o.stderr), "");
}

/// A passphrase under the length rule is refused right after it is read, with the rule and a
/// hint; nothing is created (from stdin: no terminal to ask again on).
#[test]
fn a_short_passphrase_at_init_is_refused_at_once_with_the_rule() {
    let h = Home::empty();
    let o = h.run_stdin(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        "seven77\n",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    insta::assert_snapshot!("init_short_passphrase", text(&o.stderr));
    assert!(!h.path().join("vault.kv").exists());
}

/// A value that is not text is refused with what to do instead; nothing is stored.
#[test]
fn a_value_that_is_not_utf8_is_refused_with_a_way_forward() {
    let h = Home::new();
    let mut c = h.cmd(&["set", "demo", "BLOB", "--from-stdin"]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"fixture-\xff\xfe-not-text").unwrap();
    }
    let o = wait_output(child, CLI_LIMIT);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    insta::assert_snapshot!("set_value_not_utf8", text(&o.stderr));
    assert!(!h.ok(&["env", "show", "demo"]).contains("BLOB"));
}
