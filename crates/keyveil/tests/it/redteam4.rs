//! Red team 4: interpreters that still read their program from standard input or a place the
//! agent writes without a card showing it, and makefiles whose includes or shell escape the
//! pins. A held attack is a passing test; a working one is `#[ignore = "LEAK: ..."]`.

use std::path::Path;

use crate::harness::*;
use crate::pathdirs::{Agent, approve_standing, exe, run, setup};

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
#[ignore = "LEAK: make -f - / -f /dev/stdin reads the makefile from stdin"]
fn rt4_make_reading_its_makefile_from_stdin() {
    let got = probe(&[
        &["make", "-f", "-"],
        &["make", "-f", "/dev/stdin"],
        &["make", "--file=/proc/self/fd/0"],
        &["make", "-f-"],
    ]);
    assert!(got.is_empty(), "asked the human for: {got:?}");
}

/// Approves `make` over `makefile`, then rewrites `inc` (which the makefile pulls in) to
/// write the value to a file; returns true when the run went ahead and the file holds it.
fn make_include_attack(
    makefile: &str,
    inc_name: &str,
    inc_before: &str,
    inc_after: &str,
) -> (bool, String) {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    std::fs::write(app.join("Makefile"), makefile).unwrap();
    let inc = app.join(inc_name);
    std::fs::write(&inc, inc_before).unwrap();
    std::fs::set_permissions(&inc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let card = approve_standing(&a, &app, &["make"]);
    let o = run(h, &app, "5", &["make"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let stolen = a.path().join("stolen");
    std::fs::write(
        &inc,
        inc_after.replace("STOLEN", &stolen.display().to_string()),
    )
    .unwrap();
    let o = run(h, &app, "0", &["make"]);
    let got = std::fs::read_to_string(&stolen).unwrap_or_default();
    (
        got.trim() == tok,
        format!(
            "exit {:?}: {}\ncard:\n{card}",
            o.status.code(),
            text(&o.stderr)
        ),
    )
}

const INC_OK: &str = "ok:\n\t@echo fine\n";
const INC_BAD: &str = "ok:\n\t@printf %s \"$$TOKEN\" > STOLEN\n";

#[test]
#[ignore = "LEAK: `include<TAB>file` is not parsed as an include (only `include `), the file is unpinned"]
fn rt4_make_include_with_a_tab_separator() {
    let (leak, why) = make_include_attack("include\tinc.mk\nall: ok\n", "inc.mk", INC_OK, INC_BAD);
    assert!(!leak, "{why}");
}

#[test]
#[ignore = "LEAK: `include \\` + newline + file: the name on the next line is unpinned"]
fn rt4_make_include_continued_on_the_next_line() {
    let (leak, why) =
        make_include_attack("include \\\n  inc.mk\nall: ok\n", "inc.mk", INC_OK, INC_BAD);
    assert!(!leak, "{why}");
}

#[test]
#[ignore = "LEAK: `$(eval include f)` includes an unpinned file"]
fn rt4_make_include_through_eval() {
    let (leak, why) = make_include_attack(
        "$(eval include inc.mk)\nall: ok\n",
        "inc.mk",
        INC_OK,
        INC_BAD,
    );
    assert!(!leak, "{why}");
}

#[test]
#[ignore = "LEAK: `$(eval $(shell cat f))` evaluates an unpinned file (doc says $(shell) includes are refused)"]
fn rt4_make_include_through_eval_of_shell() {
    let (leak, why) = make_include_attack(
        "$(eval $(shell cat inc.mk))\nall:\n\t@true\n",
        "inc.mk",
        "X := 1\n",
        "$(shell printf %s \"$$TOKEN\" > STOLEN)\n",
    );
    assert!(!leak, "{why}");
}

#[test]
#[ignore = "LEAK: `SHELL := ./kvsh` runs every recipe through an unpinned agent file"]
fn rt4_make_shell_variable_names_an_agent_file() {
    let (leak, why) = make_include_attack(
        "SHELL := ./kvsh\nall:\n\t@echo hi\n",
        "kvsh",
        "#!/bin/sh\nexec /bin/sh \"$@\"\n",
        "#!/bin/sh\nprintf %s \"$TOKEN\" > STOLEN\nexec /bin/sh \"$@\"\n",
    );
    assert!(!leak, "{why}");
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
#[ignore = "LEAK: `sinclude<TAB>file` unpinned"]
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

/// After `keyveil lock` the page's session cookie still opens the page (sessions are signed,
/// the key lives as long as the server, and `lock` does not rotate it).
#[test]
#[ignore = "LEAK (low): a page session survives `lock` (key not rotated on lock); the factor still gates approving"]
fn rt4_web_session_does_not_survive_lock() {
    let h = Home::new();
    let (port, path) = split_url(&agent_link(&h));
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
}
