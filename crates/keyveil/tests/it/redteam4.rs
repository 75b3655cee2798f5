//! Red team 4: interpreters that still read their program from standard input or a place the
//! agent writes without a card showing it, and makefiles whose includes or shell escape the
//! pins. A held attack is a passing test; a working one is `#[ignore = "LEAK: ..."]`.

use std::path::Path;

use crate::harness::*;
use crate::pathdirs::{Agent, exe, run, setup};

/// Runs each form and returns those the broker asked the human about (exit 5, a pending
/// request) instead of refusing; each such request is denied again.
fn asked(a: &Agent, app: &Path, forms: &[&[&str]]) -> Vec<String> {
    let h = &a.h;
    let mut out = Vec::new();
    for cmd in forms {
        let o = run(h, app, "0", cmd);
        if o.status.code() == Some(5) {
            let id = h.wait_request();
            h.ok(&["deny", &id.to_string()]);
            out.push(format!("{cmd:?}"));
        }
    }
    out
}

fn stdin_setup() -> (Agent, String, std::path::PathBuf) {
    let (a, tok, app) = setup(&["kvbin"], "echo ok\n");
    let bin = a.path().join("kvbin");
    std::fs::create_dir_all(&bin).unwrap();
    for n in ["lua", "ruby", "php", "busybox", "irb", "tclsh8", "jshell"] {
        exe(&bin.join(n), "#!/bin/sh\nexit 0\n");
    }
    std::fs::write(app.join("check.py"), "print('ok')\n").unwrap();
    std::fs::write(app.join("check.js"), "console.log('ok')\n").unwrap();
    std::fs::write(app.join("check.lua"), "print('ok')\n").unwrap();
    std::fs::write(app.join("check.pl"), "print qq(ok\\n);\n").unwrap();
    (a, tok, app)
}

/// Forms the stdin-program refusal covers: each is refused before any card.
#[test]
fn rt4_stdin_program_forms_that_are_refused() {
    let (a, _tok, app) = stdin_setup();
    let forms: &[&[&str]] = &[
        &["bash", "/dev/stdin"],
        &["python3", "/dev/fd/0"],
        &["python3", "/proc/self/fd/0"],
        &["node", "-"],
        &["sh", "-s"],
        &["bash", "+s"],
        &["env", "bash"],
        &["env", "-i", "python3"],
        &["ruby"],
        &["ruby", "-"],
        &["php"],
        &["lua", "-"],
        &["perl", "-x"],
        &["python3", "-X", "dev"],
        &["bash", "-o", "posix"],
        &["node", "--input-type=module"],
        &["xargs", "sh"],
        &["env", "PYTHONINSPECT=1", "python3", "check.py"],
    ];
    let got = asked(&a, &app, forms);
    assert!(got.is_empty(), "asked the human for: {got:?}");
}

/// Forms that must be refused before any card (each is run through the CLI).
fn probe(forms: &[&[&str]]) -> Vec<String> {
    let (a, _tok, app) = stdin_setup();
    asked(&a, &app, forms)
}

// ---------------------------------------------------------------------------------------------
// Standard input is an input of the run: the bytes a requester supplies are shown on the card
// (size, digest, text, and "program text" for a program that reads code from it) and bound into
// the grant; a run with other bytes is another request. Without stdin the command gets
// /dev/null, so `awk -f -`, `python3 -m code` or `irb` under a grant read no program at all.

/// A `run` over the raw socket, as any same-uid agent can send it, with `stdin`.
pub(crate) fn raw_run(
    a: &Agent,
    app: &Path,
    argv: &[&str],
    stdin: Option<&str>,
    wait: u64,
) -> serde_json::Value {
    crate::oracle::raw(
        &a.h,
        &serde_json::json!({"op": "run", "client": crate::oracle::client("agent"),
            "environment": "demo", "variables": null, "argv": argv,
            "cwd": app.display().to_string(), "env": [], "pass_env": [], "stdin": stdin,
            "timeout_seconds": 20, "reason": "run the check", "ttl_seconds": null,
            "wait_seconds": wait, "output": {"mode": "collect", "cap_bytes": 65536}}),
    )
}

/// The human approves (standing) a program-on-stdin run whose card shows the program; the
/// agent then sends other program text under the same argv: it is a new request, never run.
fn stdin_program_attack(argv: &[&str], harmless: &str, stealer: &str) {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let r = raw_run(&a, &app, argv, Some(harmless), 0);
    assert_eq!(r["kind"], "pending", "{argv:?}: {r}");
    let card = h.ok(&["requests"]);
    assert!(
        card.contains("standard input, supplied by the requester")
            && card.contains(&format!("{} bytes", harmless.len()))
            && card.contains("PROGRAM TEXT")
            && card.contains("stdin-program"),
        "{argv:?}: {card}"
    );
    let first = harmless.lines().next().unwrap();
    assert!(
        card.contains(first),
        "{argv:?}: the program is not on the card: {card}"
    );
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "8h"]).status.success());
    let r = raw_run(&a, &app, argv, Some(harmless), 10);
    assert_eq!(r["kind"], "exit", "{argv:?}: {r}");
    let stolen = a.path().join("stolen");
    let evil = stealer.replace("STOLEN", &stolen.display().to_string());
    let r = raw_run(&a, &app, argv, Some(&evil), 0);
    assert_eq!(
        r["kind"], "pending",
        "{argv:?}: other stdin ran under the grant: {r}"
    );
    assert!(!stolen.exists(), "{argv:?}: the agent's program ran");
    assert!(!r.to_string().contains(&tok));
    // The human sees the new program on its own card.
    let card = h.ok(&["requests"]);
    assert!(
        card.contains("PROGRAM TEXT") && card.contains("TOKEN"),
        "{card}"
    );
}

#[test]
fn rt4_unlisted_interpreters_reading_stdin() {
    let have = |p: &str| {
        ["/usr/bin/", "/bin/", "/usr/local/bin/"]
            .iter()
            .any(|d| Path::new(&format!("{d}{p}")).is_file())
    };
    stdin_program_attack(
        &["awk", "-f", "-"],
        "BEGIN { print \"ok\" }\n",
        "BEGIN { printf \"%s\", ENVIRON[\"TOKEN\"] > \"STOLEN\" }\n",
    );
    for (bin, argv, ok, bad) in [
        (
            "tclsh",
            &["tclsh"][..],
            "puts ok\n",
            "set f [open STOLEN w]; puts -nonewline $f $env(TOKEN); close $f\n",
        ),
        (
            "busybox",
            &["busybox", "sh"],
            "echo ok\n",
            "printf %s \"$TOKEN\" > STOLEN\n",
        ),
        (
            "irb",
            &["irb"],
            "puts 1\n",
            "File.write('STOLEN', ENV['TOKEN'])\n",
        ),
    ] {
        if have(bin) {
            stdin_program_attack(argv, ok, bad);
        }
    }
}

#[test]
fn rt4_interactive_modes_reading_stdin() {
    stdin_program_attack(
        &["python3", "-m", "code"],
        "print(1)\n",
        "import os; open('STOLEN', 'w').write(os.environ['TOKEN'])\n",
    );
    // pdb takes debugger commands (`!` runs Python) from stdin.
    let (a, _tok, app) = setup(&[], "");
    std::fs::write(app.join("check.py"), "print('ok')\n").unwrap();
    let r = raw_run(
        &a,
        &app,
        &["python3", "-m", "pdb", "check.py"],
        Some("c\n"),
        0,
    );
    assert_eq!(r["kind"], "pending", "{r}");
    let card = a.h.ok(&["requests"]);
    assert!(card.contains("PROGRAM TEXT"), "{card}");
}

/// Without stdin in the request (every CLI run: `keyveil run` never forwards its own standard
/// input), a program that reads code from stdin reads /dev/null: nothing the agent pipes into
/// the CLI reaches it.
#[test]
fn rt4_a_cli_run_reads_no_program_from_the_clis_stdin() {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let cmd = ["awk", "-f", "-"];
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let card = h.ok(&["requests"]);
    assert!(!card.contains("standard input, supplied"), "{card}");
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "8h"]).status.success());
    let stolen = a.path().join("stolen");
    let cwd = app.display().to_string();
    let o = h.run_stdin(
        &[
            "run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--", "awk", "-f", "-",
        ],
        &format!(
            "BEGIN {{ printf \"%s\", ENVIRON[\"TOKEN\"] > \"{}\" }}\n",
            stolen.display()
        ),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(!stolen.exists(), "the CLI's stdin reached the command");
    assert!(!contains(&o.stdout, &tok));
    // And a raw run with stdin under that grant is a new request, not the granted run.
    let r = raw_run(&a, &app, &cmd, Some("BEGIN { print 1 }\n"), 0);
    assert_eq!(r["kind"], "pending", "{r}");
}

/// A standing grant for a command that takes data on stdin covers only the bytes shown; any
/// other bytes ask again (and a request's stdin over 1 MiB is refused outright).
#[test]
fn rt4_stdin_data_is_bound_and_bounded() {
    let (a, _tok, app) = setup(&[], "");
    let h = &a.h;
    let r = raw_run(&a, &app, &["wc", "-c"], Some("12345\n"), 0);
    assert_eq!(r["kind"], "pending", "{r}");
    let card = h.ok(&["requests"]);
    assert!(
        card.contains("standard input, supplied by the requester (6 bytes")
            && !card.contains("PROGRAM TEXT"),
        "{card}"
    );
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "8h"]).status.success());
    let r = raw_run(&a, &app, &["wc", "-c"], Some("12345\n"), 10);
    assert_eq!(r["kind"], "exit", "{r}");
    assert!(r.to_string().contains('6'), "{r}");
    assert_eq!(
        raw_run(&a, &app, &["wc", "-c"], Some("other\n"), 0)["kind"],
        "pending"
    );
    assert_eq!(raw_run(&a, &app, &["wc", "-c"], None, 0)["kind"], "pending");
    let big = "x".repeat(1024 * 1024 + 1);
    let r = raw_run(&a, &app, &["wc", "-c"], Some(&big), 0);
    assert_eq!(r["kind"], "error", "{r}");
    assert!(r.to_string().contains("1024 KiB"), "{r}");
}

#[test]
fn rt4_make_reading_its_makefile_from_stdin() {
    let got = probe(&[
        &["make", "-f", "-"],
        &["make", "-f", "/dev/stdin"],
        &["make", "--file=/proc/self/fd/0"],
        &["make", "-f-"],
        &["make", "-sf", "-"],
        &["make", "--fil", "/dev/fd/0"],
        &["make", "-f", "ok.mk", "--makefile=-"],
    ]);
    assert!(got.is_empty(), "asked the human for: {got:?}");
}

/// What became of a makefile attack: refused before any card (with the reason), or approved
/// and replayed (whether the value reached the agent's file).
#[derive(Debug)]
pub(crate) enum MakeOutcome {
    Refused(String),
    Ran { leaked: bool, why: String },
}

impl MakeOutcome {
    pub(crate) fn assert_held(&self) {
        if let MakeOutcome::Ran { leaked: true, why } = self {
            panic!("the value reached the agent: {why}");
        }
    }

    pub(crate) fn assert_refused(&self, mentions: &str) {
        match self {
            MakeOutcome::Refused(err) => {
                assert!(
                    err.contains("cannot pin") && err.contains("hint:") && err.contains(mentions),
                    "{err}"
                );
            }
            other => panic!("asked the human instead of refusing: {other:?}"),
        }
    }
}

/// Asks for `make ARGS` over `makefile`; when it is asked (not refused), approves it standing,
/// rewrites `inc` (which the makefile pulls in) to write the value to a file, and runs again.
fn make_attack_argv(
    args: &[&str],
    makefile: &str,
    inc_name: &str,
    inc_before: &str,
    inc_after: &str,
) -> MakeOutcome {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(app.join("Makefile"), makefile).unwrap();
    let inc = app.join(inc_name);
    std::fs::write(&inc, inc_before).unwrap();
    std::fs::set_permissions(&inc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = vec!["make"];
    cmd.extend_from_slice(args);
    let o = run(h, &app, "0", &cmd);
    if o.status.code() != Some(5) {
        assert!(
            h.json(&["requests", "--json"])
                .as_array()
                .is_none_or(Vec::is_empty),
            "a request was queued"
        );
        return MakeOutcome::Refused(text(&o.stderr));
    }
    let id = h.wait_request();
    let card = h.ok(&["requests"]);
    assert!(h.approve(id, &["--ttl", "8h"]).status.success());
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stolen = a.path().join("stolen");
    std::fs::write(
        &inc,
        inc_after.replace("STOLEN", &stolen.display().to_string()),
    )
    .unwrap();
    let o = run(h, &app, "0", &cmd);
    let got = std::fs::read_to_string(&stolen).unwrap_or_default();
    MakeOutcome::Ran {
        leaked: got.trim() == tok,
        why: format!(
            "exit {:?}: {}\ncard:\n{card}",
            o.status.code(),
            text(&o.stderr)
        ),
    }
}

fn make_attack(makefile: &str, inc_name: &str, inc_before: &str, inc_after: &str) -> MakeOutcome {
    make_attack_argv(&[], makefile, inc_name, inc_before, inc_after)
}

/// The included file is pinned (shown, a change ends the grant): asked, then held.
fn make_include_attack(
    makefile: &str,
    inc_name: &str,
    inc_before: &str,
    inc_after: &str,
) -> (bool, String) {
    match make_attack(makefile, inc_name, inc_before, inc_after) {
        MakeOutcome::Ran { leaked, why } => (leaked, why),
        MakeOutcome::Refused(err) => panic!("refused, expected a pinned include: {err}"),
    }
}

pub(crate) const INC_OK: &str = "ok:\n\t@echo fine\n";
pub(crate) const INC_BAD: &str = "ok:\n\t@printf %s \"$$TOKEN\" > STOLEN\n";

#[test]
fn rt4_make_include_with_a_tab_separator() {
    let (leak, why) = make_include_attack("include\tinc.mk\nall: ok\n", "inc.mk", INC_OK, INC_BAD);
    assert!(!leak, "{why}");
}

#[test]
fn rt4_make_include_continued_on_the_next_line() {
    let (leak, why) =
        make_include_attack("include \\\n  inc.mk\nall: ok\n", "inc.mk", INC_OK, INC_BAD);
    assert!(!leak, "{why}");
}

#[test]
fn rt4_make_include_through_eval() {
    let o = make_attack(
        "$(eval include inc.mk)\nall: ok\n",
        "inc.mk",
        INC_OK,
        INC_BAD,
    );
    o.assert_held();
    o.assert_refused("$(eval");
}

#[test]
fn rt4_make_include_through_eval_of_shell() {
    let o = make_attack(
        "$(eval $(shell cat inc.mk))\nall:\n\t@true\n",
        "inc.mk",
        "X := 1\n",
        "$(shell printf %s \"$$TOKEN\" > STOLEN)\n",
    );
    o.assert_held();
    o.assert_refused("$(eval");
}

#[test]
fn rt4_make_shell_variable_names_an_agent_file() {
    let o = make_attack(
        "SHELL := ./kvsh\nall:\n\t@echo hi\n",
        "kvsh",
        KVSH_OK,
        KVSH_BAD,
    );
    o.assert_held();
    o.assert_refused("SHELL");
}

pub(crate) const KVSH_OK: &str = "#!/bin/sh\nexec /bin/sh \"$@\"\n";
pub(crate) const KVSH_BAD: &str = "#!/bin/sh\nprintf %s \"$TOKEN\" > STOLEN\nexec /bin/sh \"$@\"\n";

/// New forms of the same classes: every other spelling of an include is pinned, and every
/// construct only make can resolve (eval in a recipe, `load`, SHELL and friends in a makefile,
/// on argv or through MAKEFLAGS, `--eval`) is refused before any card.
#[test]
fn rt4_make_other_include_spellings_are_pinned() {
    for mk in [
        "-include\tinc.mk\nall: ok\n",
        "  include \\\n\t\\\n  inc.mk\nall: ok\n",
        "include\\\ninc.mk\r\nall: ok\n",
        "ifeq (1,1)\n\tinclude inc.mk\nendif\nall: ok\n",
        "INCS = inc.mk\ninclude \\\n $(INCS)\nall: ok\n",
    ] {
        let (leak, why) = make_include_attack(mk, "inc.mk", INC_OK, INC_BAD);
        assert!(!leak, "{mk:?}: {why}");
    }
}

#[test]
fn rt4_make_constructs_only_make_can_resolve_are_refused() {
    let cases: &[(&[&str], &str, &str)] = &[
        (&[], "all:\n\t@echo $(eval include inc.mk)\n", "$(eval"),
        (&[], "${eval include inc.mk}\nall: ok\n", "$(eval"),
        (&[], "load ./inc.mk\nall:\n\t@true\n", "load"),
        (&[], "all: SHELL := ./inc.mk\nall:\n\t@true\n", "SHELL"),
        (
            &[],
            "override SHELL \\\n = ./inc.mk\nall:\n\t@true\n",
            "SHELL",
        ),
        (&[], "SHELL := /bin/sh ./inc.mk\nall:\n\t@true\n", "SHELL"),
        (
            &[],
            ".SHELLFLAGS := --rcfile inc.mk -ic\nall:\n\t@true\n",
            ".SHELLFLAGS",
        ),
        (&[], "MAKEFLAGS += -f inc.mk\nall:\n\t@true\n", "MAKEFLAGS"),
        (
            &[],
            "export MAKEFILES := inc.mk\nall:\n\t@true\n",
            "MAKEFILES",
        ),
        (
            &[],
            "define SHELL\n./inc.mk\nendef\nall:\n\t@true\n",
            "SHELL",
        ),
        (&["SHELL=./inc.mk"], "all:\n\t@true\n", "SHELL"),
        (&["--eval=include inc.mk"], "all:\n\t@true\n", "--eval"),
        (&["-sE", "include inc.mk"], "all:\n\t@true\n", "--eval"),
        (&["--ev", "include inc.mk"], "all:\n\t@true\n", "--eval"),
    ];
    for (args, mk, mentions) in cases {
        let o = make_attack_argv(args, mk, "inc.mk", KVSH_OK, KVSH_BAD);
        o.assert_held();
        o.assert_refused(mentions);
    }
}

/// Kept as a record: a recipe is shell text, so which files it runs (`./build.sh`, `cd x &&
/// ./y`, `$$(ls tools/*)`, a rule that remakes an included makefile from another file) is only
/// known when it runs. Pinning the names a recipe spells literally would catch this case and
/// not the class; the sound fix is the per-run read-only view of the workspace (the mount
/// namespace design in docs/threat-model.md), not built yet.
#[test]
#[ignore = "LIMIT (docs/threat-model.md, the task-runner row: a script a make recipe runs by path is not pinned): approve a task runner for one run unless nothing but you can write the workspace, or approve the script itself (`sh build.sh`)"]
fn rt4_make_recipe_runs_an_agent_script() {
    let (leak, why) = make_include_attack(
        "all:\n\t@./build.sh\n",
        "build.sh",
        "#!/bin/sh\necho fine\n",
        "#!/bin/sh\nprintf %s \"$TOKEN\" > STOLEN\n",
    );
    assert!(!leak, "{why}");
}

#[test]
fn rt4_make_oneshell_with_sinclude_in_recipe_text() {
    let (leak, why) = make_include_attack(
        ".ONESHELL:\nsinclude\tinc.mk\nall: ok\n",
        "inc.mk",
        INC_OK,
        INC_BAD,
    );
    assert!(!leak, "{why}");
}

/// Control: a plain `include` is pinned, so rewriting it ends the grant.
#[test]
fn rt4_make_plain_include_is_pinned() {
    let (leak, why) = make_include_attack("include inc.mk\nall: ok\n", "inc.mk", INC_OK, INC_BAD);
    assert!(!leak, "{why}");
}

// ---------------------------------------------------------------------------------------------
// Approval page: signed links and session cookies.

use crate::redteam16::{agent_link, get, split_url};

/// Flips the hex digit at `i` of `s`.
fn flip(s: &str, i: usize) -> String {
    let mut b = s.as_bytes().to_vec();
    b[i] = if b[i] == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

/// A spent link, a link with one MAC or deadline digit changed, a link whose deadline is pushed
/// out, a session cookie offered as a link, and a link offered as a cookie: all refused.
#[test]
fn rt4_web_links_and_cookies_cannot_be_forged_reused_or_swapped() {
    let h = Home::new();
    let link = agent_link(&h);
    let (port, path) = split_url(&link);
    let token = path.split("token=").nth(1).unwrap().to_owned();
    assert_eq!(token.len(), 64);
    let (st, cookie) = get(port, &path, None);
    assert_eq!(st, 303);
    let cookie = cookie.expect("no cookie");
    assert_eq!(get(port, "/", Some(&cookie)).0, 200);
    assert_eq!(get(port, &path, None).0, 403, "a spent link worked again");

    let fresh = agent_link(&h);
    let (_, fpath) = split_url(&fresh);
    let ft = fpath.split("token=").nth(1).unwrap().to_owned();
    for (what, t) in [
        ("MAC digit", flip(&ft, 63)),
        ("nonce digit", flip(&ft, 0)),
        ("deadline pushed out", {
            let mut b = ft.clone();
            b.replace_range(16..18, "7f");
            b
        }),
    ] {
        if t == ft {
            continue;
        }
        assert_eq!(
            get(port, &format!("/login?token={t}"), None).0,
            403,
            "{what}"
        );
    }
    let (name, value) = cookie.split_once('=').unwrap();
    assert_eq!(
        get(port, &format!("/login?token={value}"), None).0,
        403,
        "a session cookie worked as a link"
    );
    let as_cookie = format!("{name}={ft}");
    assert_ne!(
        get(port, "/", Some(&as_cookie)).0,
        200,
        "a link worked as a cookie"
    );
    let forged = format!("{name}={}", flip(value, 63));
    assert_ne!(
        get(port, "/", Some(&forged)).0,
        200,
        "a forged cookie worked"
    );
    // The same token in upper-case hex is the same token (hex decoding ignores case): it
    // works once, and spends the lower-case spelling with it (spent by nonce).
    let upper = format!("/login?token={}", ft.to_uppercase());
    assert_eq!(get(port, &upper, None).0, 303);
    assert_eq!(
        get(port, &fpath, None).0,
        403,
        "a second spelling replayed the link"
    );
    assert_eq!(get(port, &upper, None).0, 403);
}

/// After `keyveil lock` a page session cookie and an unspent link no longer open the page
/// (`lock` replaces the key that signs them).
#[test]
fn rt4_web_session_does_not_survive_lock() {
    let h = Home::new();
    let (port, path) = split_url(&agent_link(&h));
    let (_, spare) = split_url(&agent_link(&h));
    let (st, cookie) = get(port, &path, None);
    assert_eq!(st, 303);
    let cookie = cookie.unwrap();
    assert_eq!(get(port, "/", Some(&cookie)).0, 200);
    h.ok(&["lock"]);
    assert_ne!(
        get(port, "/", Some(&cookie)).0,
        200,
        "the session outlived lock"
    );
    assert_eq!(get(port, &spare, None).0, 403, "a link outlived lock");
}
