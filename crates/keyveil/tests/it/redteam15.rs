//! Red team for issue 15's fixes: code that reaches an approved run through standard input
//! while the card calls it data, and makefile constructs that still load an unpinned file or
//! run an agent-chosen shell. A held attack is a passing test; a working one is
//! `#[ignore = "LEAK: ..."]`.

use std::path::Path;

use crate::harness::*;
use crate::pathdirs::{exe, run, setup};
use crate::redteam4::{INC_BAD, INC_OK, KVSH_BAD, KVSH_OK, MakeOutcome, raw_run};

fn have(p: &str) -> bool {
    ["/usr/bin/", "/bin/", "/usr/local/bin/"]
        .iter()
        .any(|d| Path::new(&format!("{d}{p}")).is_file())
}

// ---------------------------------------------------------------------------------------------
// Standard input the card called data. Before this round the card said PROGRAM TEXT only for a
// listed interpreter named by argv[0], so an interpreter under a wrapper, under another name,
// or started by a tool read the requester's code from a card that said "which the command
// reads". Now only known data filters are called data.

/// Each form gets stdin the command reads as code; the broker must either refuse it or show it
/// as PROGRAM TEXT with the `stdin-program` flag.
#[test]
fn rt15_code_on_stdin_is_program_text_whatever_runs_it() {
    let (a, _tok, app) = setup(&[], "eval \"$(cat)\"\n");
    let h = &a.h;
    if have("tclsh") {
        std::os::unix::fs::symlink("/usr/bin/tclsh", app.join("t")).unwrap();
    }
    let mut forms: Vec<Vec<&str>> = vec![
        vec!["git", "-c", "alias.x=!sh", "x"],
        vec!["find", ".", "-maxdepth", "0", "-exec", "sh", ";"],
        vec!["script", "-qc", "sh", "/dev/null"],
        vec!["fakeroot"],
        vec!["bash", "ci.sh"],
        vec!["nohup", "busybox", "sh"],
    ];
    if have("tclsh") {
        forms.push(vec!["timeout", "9", "tclsh"]);
        forms.push(vec!["nice", "-n", "1", "tclsh"]);
        forms.push(vec!["stdbuf", "-o0", "tclsh"]);
        forms.push(vec!["./t"]);
    }
    if have("vim.basic") {
        forms.push(vec!["vim.basic", "-es"]);
    }
    let mut data = Vec::new();
    for argv in &forms {
        let r = raw_run(&a, &app, argv, Some("echo ok\n"), 0);
        if r["kind"] != "pending" {
            assert_eq!(r["kind"], "error", "{argv:?}: {r}");
            continue;
        }
        let card = h.ok(&["requests"]);
        if !(card.contains("PROGRAM TEXT") && card.contains("stdin-program")) {
            data.push(format!("{argv:?}"));
        }
        let id = h.wait_request();
        h.ok(&["deny", &id.to_string()]);
    }
    assert!(data.is_empty(), "stdin shown as data for: {data:?}");
}

/// The replay: a Tcl program through `timeout`, approved from a card that (before) said data;
/// the grant runs exactly those bytes, and the card now names them program text.
#[test]
fn rt15_wrapped_interpreter_reading_stdin_is_shown_as_program_text() {
    if !have("tclsh") {
        return;
    }
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let stolen = a.path().join("stolen");
    let prog = format!(
        "set f [open {} w]; puts -nonewline $f $env(TOKEN); close $f\n",
        stolen.display()
    );
    let argv = ["timeout", "9", "tclsh"];
    let r = raw_run(&a, &app, &argv, Some(&prog), 0);
    assert_eq!(r["kind"], "pending", "{r}");
    let card = h.ok(&["requests"]);
    assert!(
        card.contains("PROGRAM TEXT") && card.contains("stdin-program"),
        "the card calls a Tcl program data: {card}"
    );
    let id = h.wait_request();
    h.ok(&["deny", &id.to_string()]);
    assert!(!stolen.exists());
    assert!(!card.contains(&tok));
}

/// Control: a data filter is still called data.
#[test]
fn rt15_data_filters_stay_data() {
    let (a, _tok, app) = setup(&[], "");
    let h = &a.h;
    for argv in [&["sha256sum"][..], &["grep", "-c", "x"], &["sort", "-u"]] {
        let r = raw_run(&a, &app, argv, Some("x\n"), 0);
        assert_eq!(r["kind"], "pending", "{argv:?}: {r}");
        let card = h.ok(&["requests"]);
        assert!(
            card.contains("standard input, supplied") && !card.contains("PROGRAM TEXT"),
            "{argv:?}: {card}"
        );
        let id = h.wait_request();
        h.ok(&["deny", &id.to_string()]);
    }
}

// ---------------------------------------------------------------------------------------------
// make.

/// Writes `files` under the working directory (mode 755, parents made), asks for `make ARGS`;
/// when asked (not refused), approves it standing and runs it, then writes `evil` (path,
/// text; `STOLEN` replaced) and runs again. `Ran.leaked`: the value reached the agent's file
/// in any run.
fn make_case(files: &[(&str, &str)], args: &[&str], evil: (&str, &str)) -> MakeOutcome {
    let (a, tok, app) = setup(&[], "");
    let h = &a.h;
    let stolen = a.path().join("stolen");
    let put = |name: &str, body: &str| {
        let p = app.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        exe(&p, &body.replace("STOLEN", &stolen.display().to_string()));
    };
    for (n, b) in files {
        put(n, b);
    }
    let mut cmd = vec!["make"];
    cmd.extend_from_slice(args);
    let o = run(h, &app, "0", &cmd);
    if o.status.code() != Some(5) {
        return MakeOutcome::Refused(text(&o.stderr));
    }
    let id = h.wait_request();
    let card = h.ok(&["requests"]);
    assert!(h.approve(id, &["--ttl", "8h"]).status.success());
    let first = run(h, &app, "5", &cmd);
    put(evil.0, evil.1);
    let o = run(h, &app, "0", &cmd);
    let got = std::fs::read_to_string(&stolen).unwrap_or_default();
    MakeOutcome::Ran {
        leaked: got.trim() == tok,
        why: format!(
            "first run exit {:?}: {}\nsecond exit {:?}: {}\ncard:\n{card}",
            first.status.code(),
            text(&first.stderr),
            o.status.code(),
            text(&o.stderr)
        ),
    }
}

/// `$(call eval,...)` invokes the built-in `eval` (GNU make §8.8): an include no pin saw.
#[test]
fn rt15_make_eval_through_call() {
    let o = make_case(
        &[
            ("Makefile", "$(call eval,include inc.mk)\nall: ok\n"),
            ("inc.mk", INC_OK),
        ],
        &[],
        ("inc.mk", INC_BAD),
    );
    o.assert_held();
    o.assert_refused("$(eval");
}

/// `$(call $(V),...)` with `V := eval`: the function name is computed.
#[test]
fn rt15_make_eval_through_call_of_a_computed_name() {
    let o = make_case(
        &[
            (
                "Makefile",
                "V := ev\n$(call $(V)al,include inc.mk)\nall: ok\n",
            ),
            ("inc.mk", INC_OK),
        ],
        &[],
        ("inc.mk", INC_BAD),
    );
    o.assert_held();
    o.assert_refused("$(call");
}

/// make takes a form feed, vertical tab or carriage return for a blank: `$(eval<FF>...)` is
/// eval, `include<VT>inc.mk` an include.
#[test]
fn rt15_make_other_blanks() {
    let o = make_case(
        &[
            ("Makefile", "$(eval\x0cinclude inc.mk)\nall: ok\n"),
            ("inc.mk", INC_OK),
        ],
        &[],
        ("inc.mk", INC_BAD),
    );
    o.assert_held();
    o.assert_refused("$(eval");
    let o = make_case(
        &[
            ("Makefile", "include\x0binc.mk\nall: ok\n"),
            ("inc.mk", INC_OK),
        ],
        &[],
        ("inc.mk", INC_BAD),
    );
    o.assert_held();
    assert!(matches!(o, MakeOutcome::Ran { .. }), "{o:?}");
}

/// A computed variable name: `SHE$()LL := ./kvsh` sets SHELL.
#[test]
fn rt15_make_computed_shell_name() {
    for mk in [
        "SHE$()LL := ./kvsh\nall:\n\t@true\n",
        "all: SH$(subst x,,xE)LL = ./kvsh\nall:\n\t@true\n",
        "define SH$()ELL\n./kvsh\nendef\nall:\n\t@true\n",
    ] {
        let o = make_case(
            &[("Makefile", mk), ("kvsh", KVSH_OK)],
            &[],
            ("kvsh", KVSH_BAD),
        );
        o.assert_held();
        o.assert_refused("computes");
    }
}

/// Under `.SECONDEXPANSION`, `$$(eval ...)` in a prerequisite list is make's eval.
#[test]
fn rt15_make_eval_in_second_expansion() {
    let o = make_case(
        &[
            (
                "Makefile",
                ".SECONDEXPANSION:\nall: $$(eval include inc.mk) ok\nok:\n\t@echo fine\n",
            ),
            ("inc.mk", "X := 1\n"),
        ],
        &[],
        ("inc.mk", "$(shell printf %s \"$$TOKEN\" > STOLEN)\n"),
    );
    o.assert_held();
    o.assert_refused(".SECONDEXPANSION");
}

/// `.SECONDEXPANSION` named by a computed target (`$(S):` with `S := .SECONDEX$()PANSION`).
#[test]
fn rt15_make_eval_in_second_expansion_named_by_a_computed_target() {
    let o = make_case(
        &[
            (
                "Makefile",
                "S := .SECONDEX$()PANSION\n$(S):\nall: $$(eval include inc.mk) ok\nok:\n\t@echo fine\n",
            ),
            ("inc.mk", "X := 1\n"),
        ],
        &[],
        ("inc.mk", "$(shell printf %s \"$$TOKEN\" > STOLEN)\n"),
    );
    o.assert_held();
    o.assert_refused("$(eval");
}

/// make expands `~` in an include name and joins `a\ b` into one name.
#[test]
fn rt15_make_include_names_make_rewrites() {
    let o = make_case(
        &[
            ("Makefile", "include inc\\ x.mk\nall: ok\n"),
            ("inc x.mk", INC_OK),
        ],
        &[],
        ("inc x.mk", INC_BAD),
    );
    o.assert_held();
    o.assert_refused("home directory");
    let o = make_case(
        &[("Makefile", "-include ~/inc.mk\nall:\n\t@true\n")],
        &[],
        ("inc.mk", INC_BAD),
    );
    o.assert_held();
    o.assert_refused("home directory");
}

/// `make -C sub -I inc` searches `sub/inc` (make changes directory first).
#[test]
fn rt15_make_include_dir_after_dash_c() {
    let o = make_case(
        &[
            ("sub/Makefile", "include x.mk\nall: ok\n"),
            ("sub/inc/x.mk", INC_OK),
        ],
        &["-C", "sub", "-I", "inc"],
        ("sub/inc/x.mk", INC_BAD),
    );
    o.assert_held();
    assert!(matches!(o, MakeOutcome::Ran { .. }), "{o:?}");
}

/// make's built-in rule `%: %.sh` (`cat $< >$@`) remakes a makefile from `NAME.sh` and reads
/// it again: `Makefile.sh` newer than the pinned Makefile runs in the first approved run.
#[test]
fn rt15_make_builtin_rule_remakes_a_makefile() {
    let o = make_case(
        &[
            ("Makefile", "all:\n\t@echo fine\n"),
            ("Makefile.sh", "all:\n\t@printf %s \"$$TOKEN\" > STOLEN\n"),
        ],
        &[],
        ("Makefile.sh", "all:\n\t@printf %s \"$$TOKEN\" > STOLEN\n"),
    );
    o.assert_held();
    o.assert_refused("%.sh");
}

/// The same rule behind an optional include: `local.mk.sh` planted after approval is made
/// into `local.mk` and read; keyveil re-derives the pins at each run and refuses it.
#[test]
fn rt15_make_builtin_rule_remakes_an_optional_include() {
    let o = make_case(
        &[(
            "Makefile",
            "-include local.mk\nall: ok\nok:\n\t@echo fine\n",
        )],
        &[],
        (
            "local.mk.sh",
            "ok2:\n\t@true\n$(shell printf %s \"$$TOKEN\" > STOLEN)\n",
        ),
    );
    o.assert_held();
}

/// The same with `%.out: %` (`cp $< $@`): `-include local.out` is made from `local`.
#[test]
fn rt15_make_builtin_copy_rule_remakes_an_optional_include() {
    let o = make_case(
        &[(
            "Makefile",
            "-include local.out\nall: ok\nok:\n\t@echo fine\n",
        )],
        &[],
        (
            "local",
            "ok2:\n\t@true\n$(shell printf %s \"$$TOKEN\" > STOLEN)\n",
        ),
    );
    o.assert_held();
}

/// Control: an optional include absent at approval and created after ends the grant.
#[test]
fn rt15_make_optional_include_created_after_approval() {
    let o = make_case(
        &[(
            "Makefile",
            "-include local.mk\nall: ok\nok:\n\t@echo fine\n",
        )],
        &[],
        ("local.mk", "$(shell printf %s \"$$TOKEN\" > STOLEN)\n"),
    );
    o.assert_held();
}

/// make reads the first default makefile that exists, a FIFO too: a `GNUmakefile` FIFO the
/// agent feeds while the card pinned `Makefile`.
#[test]
fn rt15_make_default_makefile_that_is_a_fifo() {
    let (a, _tok, app) = setup(&[], "");
    std::fs::write(app.join("Makefile"), "all:\n\t@echo fine\n").unwrap();
    let st = std::process::Command::new("mkfifo")
        .arg(app.join("GNUmakefile"))
        .status()
        .unwrap();
    assert!(st.success());
    let o = run(&a.h, &app, "0", &["make"]);
    assert_ne!(
        o.status.code(),
        Some(5),
        "asked the human with Makefile pinned"
    );
    assert!(
        a.h.json(&["requests", "--json"])
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    let err = text(&o.stderr);
    assert!(
        err.contains("GNUmakefile") && err.contains("hint:"),
        "{err}"
    );
}

/// Program text longer than the card shows (2,000 characters) is refused before any card: a
/// clipped PROGRAM TEXT card would have the human approve code no one read. The same length of
/// data for a known data filter still becomes a request (its card says it is clipped).
#[test]
fn rt15_program_text_longer_than_the_card_is_refused() {
    let (a, _tok, app) = setup(&[], "");
    let h = &a.h;
    // A harmless first screen, the payload past what the card shows.
    let long = format!(
        "{}\necho payload-past-the-card\n",
        "# padding\n".repeat(250)
    );
    assert!(long.chars().count() > 2000);
    let r = raw_run(&a, &app, &["sh", "-s"], Some(&long), 0);
    assert_eq!(r["kind"], "error", "{r}");
    let r = raw_run(&a, &app, &["timeout", "9", "sh"], Some(&long), 0);
    assert_eq!(r["kind"], "error", "{r}");
    let msg = r.to_string();
    assert!(msg.contains("card shows at most 2000"), "{msg}");
    assert!(msg.contains("hint"), "{msg}");
    assert!(!h.ok(&["requests"]).contains("payload-past-the-card"));
    // Data for a known data filter: asked, shown clipped.
    let r = raw_run(&a, &app, &["wc", "-l"], Some(&long), 0);
    assert_eq!(r["kind"], "pending", "{r}");
    let card = h.ok(&["requests"]);
    assert!(card.contains("clipped"), "{card}");
    assert!(!card.contains("PROGRAM TEXT"), "{card}");
}
