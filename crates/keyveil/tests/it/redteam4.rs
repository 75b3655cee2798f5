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

/// Forms probed one by one below are reported in this table when run with `--nocapture`.
fn probe(forms: &[&[&str]]) -> Vec<String> {
    let (a, _tok, app) = stdin_setup();
    asked(&a, &app, forms)
}

#[test]
#[ignore = "LEAK: non-listed interpreters (awk/gawk -f -, tclsh, busybox sh, irb, jshell) read their program from stdin and are asked, card shows no program"]
fn rt4_unlisted_interpreters_reading_stdin() {
    let got = probe(&[
        &["awk", "-f", "-"],
        &["gawk", "-f", "/dev/stdin"],
        &["tclsh"],
        &["busybox", "sh"],
        &["irb"],
        &["jshell"],
    ]);
    assert!(got.is_empty(), "asked the human for: {got:?}");
}

#[test]
#[ignore = "LEAK: python3 -m code / -m pdb, lua -i, node inspect read program text (or debugger commands) from stdin; card shows only the argv"]
fn rt4_interactive_modes_reading_stdin() {
    let got = probe(&[
        &["python3", "-m", "code"],
        &["python3", "-m", "pdb", "check.py"],
        &["lua", "-i", "check.lua"],
        &["node", "inspect", "check.js"],
    ]);
    assert!(got.is_empty(), "asked the human for: {got:?}");
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
enum MakeOutcome {
    Refused(String),
    Ran { leaked: bool, why: String },
}

impl MakeOutcome {
    fn assert_held(&self) {
        if let MakeOutcome::Ran { leaked: true, why } = self {
            panic!("the value reached the agent: {why}");
        }
    }

    fn assert_refused(&self, mentions: &str) {
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

const INC_OK: &str = "ok:\n\t@echo fine\n";
const INC_BAD: &str = "ok:\n\t@printf %s \"$$TOKEN\" > STOLEN\n";

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

const KVSH_OK: &str = "#!/bin/sh\nexec /bin/sh \"$@\"\n";
const KVSH_BAD: &str = "#!/bin/sh\nprintf %s \"$TOKEN\" > STOLEN\nexec /bin/sh \"$@\"\n";

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

#[test]
#[ignore = "LEAK (documented limit, threat-model: a script a recipe runs by path is not pinned)"]
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
