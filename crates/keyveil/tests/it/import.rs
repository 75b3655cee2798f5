//! `keyveil import`: `.env` files, stdin and the current environment; names only in every
//! report; the plaintext file removed or rewritten only when asked; and an agent's import
//! cannot replace a stored value without the factor.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::*;

/// A value no test shares (generated, not a constant of the source).
fn fresh(tag: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{tag}-{n:x}-Zq")
}

/// `sha=HEX` of each named variable as the granted process sees it.
fn shas_in_run(h: &Home, names: &[&str]) -> String {
    let script: String = names
        .iter()
        .map(|n| {
            format!("printf '{n} sha=%s\\n' \"$(printf %s \"${n}\" | sha256sum | cut -c1-64)\";")
        })
        .collect();
    let o = h.run_approved(
        &["run", "--env", "demo", "--", "sh", "-c", &script],
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

fn assert_nowhere(h: &Home, outputs: &[&std::process::Output], values: &[&str]) {
    let audit = h.audit_text();
    let files = h.all_plain_files();
    for v in values {
        for enc in encodings(v) {
            for o in outputs {
                assert!(!contains(&o.stdout, &enc), "a value reached stdout");
                assert!(!contains(&o.stderr, &enc), "a value reached stderr");
            }
            assert!(!audit.contains(&enc), "a value reached the audit log");
            assert!(
                !contains(&files, &enc),
                "a value reached a file of the home"
            );
        }
    }
}

#[test]
fn a_dotenv_file_is_imported_by_name_and_removed_when_asked() {
    let h = Home::new();
    let work = tempfile::tempdir().unwrap();
    let plain = fresh("plain");
    let quoted = fresh("dq");
    let single = fresh("sq");
    let multi_a = fresh("line1");
    let multi_b = fresh("line2");
    let dollar = format!("pa$$w{}", fresh("x"));
    let file = work.path().join(".env");
    std::fs::write(
        &file,
        format!(
            "# app settings\n\
             export PLAIN={plain}   # trailing comment\n\
             QUOTED=\"{quoted}\\twith tab\"\n\
             SINGLE='{single} $HOME'\n\
             MULTI=\"{multi_a}\n{multi_b}\"\n\
             DOLLAR={dollar}\n\
             EMPTY=\n"
        ),
    )
    .unwrap();
    let f = file.to_string_lossy().into_owned();
    let o = h.run_stdin(
        &["import", "demo", &f, "--passphrase-stdin", "--remove-file"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    insta::assert_snapshot!("import_report", text(&o.stdout).replace(&f, "ENVFILE"));
    insta::assert_snapshot!("import_notes", text(&o.stderr));
    assert!(!file.exists(), "--remove-file must remove the file");
    let shown = h.json(&["env", "show", "demo", "--json"]);
    let names: Vec<&str> = shown["variables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for n in ["PLAIN", "QUOTED", "SINGLE", "MULTI", "DOLLAR"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    assert!(!names.contains(&"EMPTY"));
    let out = shas_in_run(&h, &["PLAIN", "QUOTED", "SINGLE", "MULTI", "DOLLAR"]);
    for (n, v) in [
        ("PLAIN", plain.clone()),
        ("QUOTED", format!("{quoted}\twith tab")),
        ("SINGLE", format!("{single} $HOME")),
        ("MULTI", format!("{multi_a}\n{multi_b}")),
        ("DOLLAR", dollar.clone()),
    ] {
        assert!(
            out.contains(&format!("{n} sha={}", sha256_hex(&v))),
            "{n} was not stored exactly: {out}"
        );
    }
    // Stored with the factor: the card does not flag them as values an agent could have chosen.
    assert_nowhere(
        &h,
        &[&o],
        &[&plain, &quoted, &single, &multi_a, &multi_b, &dollar],
    );
}

#[test]
fn rewrite_keeps_everything_but_the_imported_entries() {
    let h = Home::new();
    let work = tempfile::tempdir().unwrap();
    let a = fresh("a");
    let b = fresh("b");
    let file = work.path().join("app.env");
    std::fs::write(
        &file,
        format!("# keep me\nA={a}\nexport B=\"{b}\nsecond line\"\nPORT= # empty, kept\n"),
    )
    .unwrap();
    let f = file.to_string_lossy().into_owned();
    let o = h.run_stdin(
        &["import", "demo", &f, "--passphrase-stdin", "--rewrite-file"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    insta::assert_snapshot!(
        "import_rewritten_file",
        std::fs::read_to_string(&file).unwrap()
    );
    assert_nowhere(&h, &[&o], &[&a, &b]);
}

#[test]
fn stdin_and_the_current_environment() {
    let h = Home::new();
    let from_stdin = fresh("stdin");
    let o = h.run_stdin(
        &["import", "demo", "--stdin", "--passphrase-stdin"],
        &format!("{PASS}\nFROM_STDIN='{from_stdin}'\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "imported 1 variable into demo: FROM_STDIN\n"
    );
    // From the environment, by name: the value is never on argv.
    let from_env = fresh("env");
    let mut c = h.cmd(&[
        "import",
        "demo",
        "--from-env",
        "FROM_ENV,OTHER_ENV",
        "--passphrase-stdin",
    ]);
    c.env("FROM_ENV", &from_env)
        .env("OTHER_ENV", "other-value-1234")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASS}\n").as_bytes())
        .unwrap();
    let o2 = wait_output(child, CLI_LIMIT);
    assert!(o2.status.success(), "{}", text(&o2.stderr));
    assert_eq!(
        text(&o2.stdout),
        "imported 2 variables into demo: FROM_ENV, OTHER_ENV\n"
    );
    // A name that is not set is refused before anything is stored.
    let o3 = h.run(&["import", "demo", "--from-env", "NOT_SET_ANYWHERE"]);
    assert_eq!(o3.status.code(), Some(2), "{}", text(&o3.stderr));
    assert!(text(&o3.stderr).contains("NOT_SET_ANYWHERE"));
    assert!(text(&o3.stderr).contains("hint:"));
    let out = shas_in_run(&h, &["FROM_STDIN", "FROM_ENV"]);
    assert!(out.contains(&format!("FROM_STDIN sha={}", sha256_hex(&from_stdin))));
    assert!(out.contains(&format!("FROM_ENV sha={}", sha256_hex(&from_env))));
    assert_nowhere(&h, &[&o, &o2, &o3], &[&from_stdin, &from_env]);
}

#[test]
fn a_bad_file_names_the_line_never_the_value() {
    let h = Home::new();
    let work = tempfile::tempdir().unwrap();
    let v = fresh("unclosed");
    let file = work.path().join(".env");
    std::fs::write(&file, format!("OK=1\nBROKEN=\"{v}\n")).unwrap();
    let o = h.run(&["import", "demo", &file.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("line 2") && err.contains("BROKEN"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(!err.contains(&v));
    assert!(file.exists(), "a failed import must not touch the file");
}

/// The agent's way: it writes a `.env` of its choosing and runs `keyveil import` (no terminal,
/// stdin of its own). It must not replace a stored value (e.g. point `API_URL` at its own
/// host) without the human's factor, by any source or flag; nothing else of the import is
/// stored; no value reaches a report, an error or the audit log.
#[test]
fn an_agent_import_cannot_replace_a_stored_value_without_the_factor() {
    let h = Home::new();
    let original = fresh("https://api.example.invalid/orig");
    h.set("demo", "API_URL", &original);
    let evil = fresh("https://attacker.invalid/collect");
    let extra = fresh("extra");
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join(".env");
    let dotenv = format!("NEW_ONE={extra}\nAPI_URL={evil}\n");
    std::fs::write(&file, &dotenv).unwrap();
    let f = file.to_string_lossy().into_owned();
    let mut outs = Vec::new();
    // Plain import: refused, nothing stored (not even the new variable).
    let o = h.run(&["import", "demo", &f]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("API_URL"), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("hint:"));
    outs.push(o);
    // --replace without a factor, from the file, from stdin and from the environment.
    let o = h.run(&["import", "demo", &f, "--replace"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    outs.push(o);
    let o = h.run_stdin(&["import", "demo", "--stdin", "--replace"], &dotenv);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    outs.push(o);
    let mut c = h.cmd(&["import", "demo", "--from-env", "API_URL", "--replace"]);
    c.env("API_URL", &evil)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let o = wait_output(c.spawn().unwrap(), CLI_LIMIT);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    outs.push(o);
    // A guessed passphrase or TOTP code.
    let o = h.run_stdin(
        &["import", "demo", &f, "--replace", "--passphrase-stdin"],
        "guessed passphrase\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    outs.push(o);
    let o = h.run_stdin(
        &["import", "demo", "--stdin", "--replace", "--totp-stdin"],
        &format!("123456\n{dotenv}"),
    );
    assert_ne!(o.status.code(), Some(0), "{}", text(&o.stderr));
    outs.push(o);
    let shown = h.json(&["env", "show", "demo", "--json"]);
    assert!(
        !shown.to_string().contains("NEW_ONE"),
        "a refused import stored part of itself: {shown}"
    );
    // --skip-existing stores only the new one (without the factor: marked as a value an agent
    // could have chosen) and leaves the file alone.
    let o = h.run(&["import", "demo", &f, "--skip-existing"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("NEW_ONE"));
    assert!(text(&o.stdout).contains("kept as stored: API_URL"));
    assert!(file.exists(), "the file was touched without being asked");
    assert!(
        text(&o.stderr).contains("plain text"),
        "{}",
        text(&o.stderr)
    );
    outs.push(o);
    // --remove-file from an agent that could not import everything: the file stays.
    let out = shas_in_run(&h, &["API_URL"]);
    assert!(
        out.contains(&format!("API_URL sha={}", sha256_hex(&original))),
        "the stored value was replaced: {out}"
    );
    let refs: Vec<&std::process::Output> = outs.iter().collect();
    assert_nowhere(&h, &refs, &[&original, &evil, &extra]);
}
