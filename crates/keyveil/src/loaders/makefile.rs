//! Reading a makefile as GNU make does, as far as what it loads and runs goes, failing closed.
//!
//! Make's own reader (`read.c`) joins a line ending in an odd number of backslashes with the
//! next one, recognises `include`, `-include` and `sinclude` followed by any blank (space or tab)
//! or nothing, and evaluates functions wherever they appear, recipes included. keyveil reads
//! the same logical lines and returns the include names as written, and refuses (the request is
//! never asked) every construct whose effect only make could tell: `$(eval ...)` and
//! `$(guile ...)`, `load`, and assignments of `SHELL`, `.SHELLFLAGS`, `MAKEFILES` or the
//! `MAKEFLAGS` family that would run or read anything but a system shell and harmless flags.
//! Names that need expansion are left to the caller (`make_expand_include`).

/// Directories whose programs a makefile may name as `SHELL` (written by root only on a sane
/// system; the policy PATH pins cover what a shell finds by name).
const SYSTEM_DIRS: &[&str] = &[
    "/bin/",
    "/usr/bin/",
    "/sbin/",
    "/usr/sbin/",
    "/usr/local/bin/",
];

/// What make's reader takes for a blank between words (its `MAP_SPACE`: space, tab, and the
/// other `isspace` characters, vertical tab, form feed, carriage return).
const BLANKS: [char; 5] = [' ', '\t', '\x0b', '\x0c', '\r'];

/// Variables that decide which program runs a recipe or which makefiles are read.
pub(super) const CONTROL_VARS: &[&str] = &[
    "SHELL",
    ".SHELLFLAGS",
    "MAKEFILES",
    "MAKEFLAGS",
    "GNUMAKEFLAGS",
    "MFLAGS",
    "MAKESHELL",
];

/// What a makefile's text makes make read, or why keyveil cannot tell.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Parsed {
    /// Include names as written (`$` not expanded), in file order.
    pub(super) includes: Vec<String>,
    /// The first construct keyveil refuses, in words, when there is one.
    pub(super) refused: Option<String>,
    /// The text names `.SECONDEXPANSION` (then a prerequisite's `$$(eval ...)` runs).
    pub(super) second_expansion: bool,
    /// A function only make can tell behind `$$` (`$$(eval ...)`): harmless shell text in a
    /// recipe, make's own code in a prerequisite under `.SECONDEXPANSION`.
    pub(super) deferred_function: Option<String>,
}

/// The logical lines of `text`: a line ending in an odd number of backslashes is joined to the
/// next with one space (the backslash, the newline and the next line's leading blanks go), as
/// make does; a trailing CR is dropped. Recipe and comment lines are joined the same way.
pub(super) fn logical_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let piece = match &cur {
            Some(_) => line.trim_start_matches([' ', '\t']),
            None => line,
        };
        let trailing = piece.bytes().rev().take_while(|b| *b == b'\\').count();
        let acc = cur.get_or_insert_with(String::new);
        if trailing % 2 == 1 {
            let body = piece.get(..piece.len() - 1).unwrap_or("");
            acc.push_str(body.trim_end_matches([' ', '\t']));
            acc.push(' ');
        } else {
            acc.push_str(piece);
            out.extend(cur.take());
        }
    }
    out.extend(cur.take());
    out
}

/// `line` up to its first unescaped `#` (make's comment rule for makefile lines).
fn uncommented(line: &str) -> &str {
    let b = line.as_bytes();
    let mut i = 0;
    while let Some(c) = b.get(i) {
        if *c == b'\\' {
            i += 2;
            continue;
        }
        if *c == b'#' {
            return line.get(..i).unwrap_or("");
        }
        i += 1;
    }
    line
}

/// Whether `s` starts with a make assignment operator (after blanks).
fn starts_with_assignment(s: &str) -> Option<(&'static str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    [":::=", "::=", ":=", "?=", "+=", "!=", "="]
        .iter()
        .find_map(|op| s.strip_prefix(op).map(|rest| (*op, rest)))
}

/// Reads `text` (one makefile) as make would for loading: see the module documentation.
pub(super) fn parse(text: &str) -> Parsed {
    let mut p = Parsed {
        second_expansion: text.contains(".SECONDEXPANSION"),
        ..Parsed::default()
    };
    // A recipe line starts with a tab after a rule; a tab line before any rule, or any line
    // when the recipe prefix changes, is makefile text.
    let custom_prefix = text.contains(".RECIPEPREFIX");
    let mut rule_seen = false;
    for line in logical_lines(text) {
        if let Some(why) = refused_function(&line, false) {
            p.refused.get_or_insert(why);
        }
        let recipe = rule_seen && !custom_prefix && line.starts_with('\t');
        if let Some(why) = refused_function(&line, true) {
            // Behind `$$` outside a recipe, `.SECONDEXPANSION` (which a computed target can
            // name) would evaluate it: refused. In a recipe it is shell text, refused only
            // with `.SECONDEXPANSION` named (see `make`).
            if recipe {
                p.deferred_function.get_or_insert(why);
            } else {
                p.refused.get_or_insert(format!(
                    "{why} (behind `$$` outside a recipe, which `.SECONDEXPANSION` evaluates)"
                ));
            }
        }
        if !line.starts_with('\t') && is_rule(&line) {
            rule_seen = true;
        }
        if let Some(why) = refused_assignment(&line) {
            p.refused.get_or_insert(why);
        }
        if let Some(why) = computed_name(&line) {
            p.refused.get_or_insert(why);
        }
        let l = uncommented(&line).trim_start_matches(BLANKS);
        let word_end = l.find(BLANKS).unwrap_or(l.len());
        let (word, rest) = l.split_at(word_end);
        if starts_with_assignment(rest).is_some() {
            // `include = x` assigns a variable named `include` (make tries assignments first).
            continue;
        }
        match word {
            "include" | "-include" | "sinclude" => {
                for name in uncommented(rest).split(BLANKS).filter(|n| !n.is_empty()) {
                    if name.starts_with('~') || name.contains('\\') {
                        // make expands `~` to a home directory and joins `a\ b` into one name.
                        p.refused.get_or_insert_with(|| {
                            format!(
                                "a makefile includes {name:?}: make expands a leading `~` to a \
                                 home directory and reads `\\ ` as a blank inside a name; name \
                                 the file by a plain relative or absolute path"
                            )
                        });
                    }
                    p.includes.push(name.to_owned());
                }
            }
            "load" | "-load" => {
                p.refused.get_or_insert_with(|| {
                    format!(
                        "a makefile `{word}`s a shared object into make ({}); keyveil does not pin \
                         code make loads into itself",
                        rest.trim()
                    )
                });
            }
            _ => {}
        }
    }
    p
}

/// `$(eval ...)` or `$(guile ...)` (or with braces, or through `$(call eval,...)`, which
/// invokes the built-in) anywhere in `line`, a `$` that make expands (not `$$`, which a recipe
/// passes to the shell as `$`); with `deferred`, behind an even number of `$` instead (what a
/// second expansion evaluates).
fn refused_function(line: &str, deferred: bool) -> Option<String> {
    let b = line.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c != b'(' && *c != b'{' {
            continue;
        }
        let dollars = b
            .get(..i)
            .unwrap_or_default()
            .iter()
            .rev()
            .take_while(|x| **x == b'$')
            .count();
        if dollars == 0 || (dollars % 2 == 0) != deferred {
            continue;
        }
        let after = line.get(i + 1..).unwrap_or("");
        let called = after
            .strip_prefix("call")
            .filter(|r| r.starts_with(BLANKS))
            .map(|r| r.trim_start_matches(BLANKS));
        if called.is_some_and(|r| r.starts_with('$')) {
            // `$(call $(V),...)` with `V := eval` invokes the built-in.
            return Some(
                "a makefile uses `$(call ...)` with a function name make computes: it could \
                 be `$(eval ...)`; only make can tell what it evaluates"
                    .to_owned(),
            );
        }
        let after = called.unwrap_or(after);
        for f in ["eval", "guile"] {
            if after
                .strip_prefix(f)
                .is_some_and(|r| r.starts_with(BLANKS) || r.starts_with([',', ')', '}']))
            {
                return Some(format!(
                    "a makefile uses `$({f} ...)`: only make can tell what it evaluates (an \
                     include, a rule, a variable that runs code)"
                ));
            }
        }
    }
    None
}

/// Whether `line` (not a recipe line) is a rule: a `:` outside `$(...)` that is not part of
/// an assignment operator (`:=`, `::=`, `:::=`).
fn is_rule(line: &str) -> bool {
    let l = uncommented(line);
    let b = l.as_bytes();
    let mut depth = 0usize;
    for (i, c) in b.iter().enumerate() {
        match c {
            b'(' | b'{' => depth += 1,
            b')' | b'}' => depth = depth.saturating_sub(1),
            b'=' if depth == 0 => return false,
            b':' if depth == 0 => {
                let rest = l.get(i..).unwrap_or("");
                return !(rest.starts_with(":=")
                    || rest.starts_with("::=")
                    || rest.starts_with(":::="));
            }
            _ => {}
        }
    }
    false
}

/// An assignment in `line` (a makefile line, not a recipe's shell words) whose variable name
/// holds a `$`: make computes the name (`SHE$()LL := ./x` sets `SHELL`), so keyveil cannot
/// tell which variable it sets.
fn computed_name(line: &str) -> Option<String> {
    let l = uncommented(line);
    // The first `=` outside `$(...)`/`${...}`.
    let b = l.as_bytes();
    let mut depth = 0usize;
    let mut eq = None;
    for (i, c) in b.iter().enumerate() {
        match c {
            b'(' | b'{' if i > 0 && b.get(i - 1) == Some(&b'$') || depth > 0 => depth += 1,
            b')' | b'}' if depth > 0 => depth -= 1,
            b'=' if depth == 0 => {
                eq = Some(i);
                break;
            }
            _ => {}
        }
    }
    let lhs = l.get(..eq?)?.trim_end_matches([':', '?', '+', '!']);
    // A target-specific assignment: the name follows the rule's `:`.
    let name = lhs.rsplit(':').next().unwrap_or(lhs);
    let mut words: Vec<&str> = name.split(BLANKS).filter(|w| !w.is_empty()).collect();
    while words
        .first()
        .is_some_and(|w| matches!(*w, "override" | "export" | "private" | "define"))
    {
        words.remove(0);
    }
    // A name with its references taken out is one word of name characters (not a recipe's
    // `$(CC) -DX=1` or `env $(N)=v cmd`).
    let joined = words.join(" ");
    if !joined.contains('$') {
        return None;
    }
    let mut bare = String::new();
    let mut d = 0usize;
    let jb = joined.as_bytes();
    let mut i = 0;
    while let Some(c) = jb.get(i) {
        if *c == b'$' && d == 0 {
            match jb.get(i + 1) {
                Some(b'(' | b'{') => {
                    d = 1;
                    i += 2;
                }
                _ => i += 2,
            }
            continue;
        }
        if d > 0 {
            match c {
                b'(' | b'{' => d += 1,
                b')' | b'}' => d -= 1,
                _ => {}
            }
        } else {
            bare.push(char::from(*c));
        }
        i += 1;
    }
    if bare
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.'))
    {
        Some(format!(
            "a makefile assigns a variable whose name make computes ({}): it could be SHELL, \
             MAKEFLAGS or another that decides what runs; spell the name out",
            joined.trim()
        ))
    } else {
        None
    }
}

/// An assignment of a [`CONTROL_VARS`] variable anywhere in `line` (plain, `override`,
/// `export`, target-specific, or a `NAME=value` argument of a sub-make in a recipe), or a
/// `define` of one, whose value keyveil does not accept.
fn refused_assignment(line: &str) -> Option<String> {
    let mut words = line
        .split_whitespace()
        .skip_while(|w| matches!(*w, "override" | "export" | "private"));
    if words.next() == Some("define")
        && let Some(n) = words.next()
        && (CONTROL_VARS.contains(&n.trim_end_matches(['=', ':', '?', '+', '!']))
            || n.contains('$'))
    {
        return Some(format!(
            "a makefile defines {n} with `define`; keyveil accepts SHELL and the like only as \
             a one-line assignment of a system shell or plain flags, and no name make computes"
        ));
    }
    for name in CONTROL_VARS {
        let mut from = 0;
        while let Some(i) = line
            .get(from..)
            .and_then(|r| r.find(name))
            .map(|i| i + from)
        {
            from = i + name.len();
            let before = i
                .checked_sub(1)
                .and_then(|j| line.as_bytes().get(j))
                .copied();
            if before.is_some_and(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'$' | b'(' | b'{' | b'-')
            }) {
                continue;
            }
            let after = line.get(from..).unwrap_or("");
            if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                continue;
            }
            let Some((_, value)) = starts_with_assignment(after) else {
                continue;
            };
            if let Err(why) = control_value_ok(name, uncommented(value)) {
                return Some(why);
            }
        }
    }
    None
}

/// Whether `value` is one keyveil accepts for the control variable `name` (see
/// [`CONTROL_VARS`]); `Err` says why not.
pub(super) fn control_value_ok(name: &str, value: &str) -> Result<(), String> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let refuse = |what: &str| {
        Err(format!(
            "a makefile or make argument sets {name} to {:?}: {what}",
            value.trim()
        ))
    };
    if words.iter().any(|w| w.contains(['$', '`'])) {
        return refuse("only make can expand it");
    }
    match name {
        "SHELL" | "MAKESHELL" => {
            let Some((prog, flags)) = words.split_first() else {
                return refuse("an empty shell");
            };
            if !SYSTEM_DIRS.iter().any(|d| prog.starts_with(d)) || prog.contains("/..") {
                return refuse(
                    "every recipe would run through a program outside the system directories \
                     (/bin, /usr/bin, /usr/local/bin), which keyveil does not pin",
                );
            }
            // `/usr/bin/env bash`: a plain name, found on the recipes' PATH (pinned).
            let flags = match flags.split_first() {
                Some((n, rest))
                    if prog.ends_with("/env") && !n.starts_with('-') && !n.contains(['/', '=']) =>
                {
                    rest
                }
                _ => flags,
            };
            shell_flags_ok(flags).or_else(|w| refuse(&w))
        }
        ".SHELLFLAGS" => shell_flags_ok(&words).or_else(|w| refuse(&w)),
        "MAKEFILES" => {
            if words.is_empty() {
                Ok(())
            } else {
                refuse("make would read those makefiles too, unpinned")
            }
        }
        _ => {
            for w in &words {
                if !make_flag_ok(w) {
                    return refuse(&format!(
                        "{w:?} is not a flag keyveil knows to load nothing (allowed: -s, -r, -R, \
                         -k, -w, -j N, -O, --no-print-directory, --silent and the like)"
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Shell flags that read no file: option clusters of letters that neither read startup files
/// (`-i`, `-l`) nor commands from standard input (`-s`), `-o NAME`/`-O NAME` with a plain
/// name, `--posix`, `--norc`, `--noprofile`, and `-c`.
fn shell_flags_ok(flags: &[&str]) -> Result<(), String> {
    let mut after_o = false;
    for f in flags {
        if after_o {
            after_o = false;
            if f.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') && !f.is_empty() {
                continue;
            }
        }
        if matches!(*f, "--posix" | "--norc" | "--noprofile") {
            continue;
        }
        let cluster = f.strip_prefix('-').or_else(|| f.strip_prefix('+'));
        match cluster {
            Some(c)
                if !c.is_empty() && c.bytes().all(|b| b"abcefhkmnoptuvxBCEHPTO".contains(&b)) =>
            {
                after_o = c.ends_with(['o', 'O']);
            }
            _ => {
                return Err(format!(
                    "{f:?} is not a shell flag keyveil knows to read nothing (startup files, \
                     scripts and standard input are refused)"
                ));
            }
        }
    }
    Ok(())
}

/// A `MAKEFLAGS` word that makes make read or run nothing more: short-flag clusters of
/// `s r R k w S B e i n q t`, `-j[N]`, `-O[TYPE]`, and the long forms of the same.
fn make_flag_ok(w: &str) -> bool {
    if w.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    const LONG: &[&str] = &[
        "--no-print-directory",
        "--print-directory",
        "--silent",
        "--quiet",
        "--no-builtin-rules",
        "--no-builtin-variables",
        "--warn-undefined-variables",
        "--keep-going",
        "--no-keep-going",
        "--stop",
        "--environment-overrides",
        "--ignore-errors",
        "--always-make",
        "--just-print",
        "--dry-run",
        "--question",
        "--touch",
        "--no-silent",
    ];
    if let Some(l) = w.strip_prefix("--") {
        let name = l.split('=').next().unwrap_or(l);
        return LONG.contains(&w)
            || (matches!(name, "jobs" | "output-sync" | "load-average")
                && l.split_once('=').is_none_or(|(_, v)| {
                    v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.')
                }));
    }
    // A bare cluster (`MAKEFLAGS += rs`) is read as flags too.
    let c = w.strip_prefix('-').unwrap_or(w);
    if let Some(n) = c.strip_prefix('j').or_else(|| c.strip_prefix('l')) {
        return n.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    }
    if let Some(t) = c.strip_prefix('O') {
        return t.bytes().all(|b| b.is_ascii_lowercase());
    }
    !c.is_empty() && c.bytes().all(|b| b"srRkwSBeinqt".contains(&b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_spelling_of_include_is_found() {
        for (mk, want) in [
            ("include a.mk\n", vec!["a.mk"]),
            ("include\ta.mk\n", vec!["a.mk"]),
            ("  -include\t a.mk b.mk # c.mk\n", vec!["a.mk", "b.mk"]),
            ("sinclude\ta.mk\n", vec!["a.mk"]),
            ("include \\\n  a.mk\n", vec!["a.mk"]),
            ("include\\\n\ta.mk \\\n b.mk\n", vec!["a.mk", "b.mk"]),
            ("\tinclude a.mk\r\n", vec!["a.mk"]),
            ("# a comment \\\ninclude a.mk\n", vec![]),
            ("include = a.mk\n", vec![]),
            ("includes a.mk\n", vec![]),
            ("include\x0ba.mk\n", vec!["a.mk"]),
            ("include\x0ca.mk\rb.mk\n", vec!["a.mk", "b.mk"]),
        ] {
            assert_eq!(parse(mk).includes, want, "{mk:?}");
            assert_eq!(parse(mk).refused, None, "{mk:?}");
        }
    }

    #[test]
    fn what_only_make_can_tell_is_refused() {
        for mk in [
            "$(eval include a.mk)\n",
            "${eval include a.mk}\n",
            "$(eval $(shell cat a.mk))\n",
            "all:\n\t@echo $(eval include x)\n",
            "x := $(guile (display 1))\n",
            "load ./ext.so\n",
            "-load\text.so\n",
            "SHELL := ./kvsh\n",
            "SHELL=kvsh\n",
            "override SHELL = /tmp/sh\n",
            "export SHELL\t:= $(CURDIR)/sh\n",
            "all: SHELL := ./sh\n",
            "SHELL := /bin/bash ./evil.sh\n",
            "SHELL := /bin/bash -l\n",
            "SHELL := /usr/bin/../../tmp/sh\n",
            ".SHELLFLAGS := -c 'source ./x;'\n",
            ".SHELLFLAGS = --rcfile x -ic\n",
            "MAKEFILES = extra.mk\n",
            "MAKEFLAGS += -f other.mk\n",
            "MAKEFLAGS += --eval=include\\ x\n",
            "MAKEFLAGS += -I inc\n",
            "define SHELL\n./x\nendef\n",
            "all:\n\t$(MAKE) SHELL=./x all\n",
            "SHELL \\\n := ./x\n",
            "$(call eval,include x.mk)\n",
            "$(call\teval, include x.mk)\n",
            "V := eval\n$(call $(V),include x.mk)\n",
            "$(call ${V}al,include x.mk)\n",
            "$(eval\x0cinclude x.mk)\n",
            "$(eval\rinclude x.mk)\n",
            "SHE$()LL := ./kvsh\n",
            "export SH$(subst x,,xE)LL = ./kvsh\n",
            "all: SH$(E)ELL := ./kvsh\n",
            "define SH$()ELL\n./x\nendef\n",
            "include ~/x.mk\n",
            "include a\\ b.mk\n",
        ] {
            assert!(parse(mk).refused.is_some(), "{mk:?} was accepted");
        }
    }

    #[test]
    fn eval_behind_dollars_is_noted_for_second_expansion() {
        for mk in [
            ".SECONDEXPANSION:\nall: $$(eval include x.mk)\n",
            "S := .SECONDEX$()PANSION\n$(S):\nall: $$(eval include x.mk)\n",
            "\tX = $$(eval include x.mk)\nall: $(X)\n",
            ".RECIPEPREFIX = >\nall:\n\tX = $$(eval include x.mk)\n",
        ] {
            assert!(parse(mk).refused.is_some(), "{mk:?}");
        }
        let p = parse("all:\n\techo $$(eval echo hi)\n");
        assert!(p.deferred_function.is_some() && p.refused.is_none());
        let p = parse("X := 1\nall: a\n\techo $$(eval echo hi)\n");
        assert!(p.deferred_function.is_some() && p.refused.is_none());
        assert!(!parse("all:\n\techo hi\n").second_expansion);
    }

    #[test]
    fn common_harmless_forms_are_accepted() {
        for mk in [
            "SHELL := /bin/bash\n",
            "SHELL = /usr/bin/env bash\n",
            "SHELL := /bin/bash -eu -o pipefail\n",
            ".SHELLFLAGS := -eu -o pipefail -c\n",
            "MAKEFLAGS += --no-print-directory -rR\n",
            "MAKEFLAGS += -j4 --output-sync=target\n",
            "all:\n\techo $$(eval echo hi)\n",
            "EVAL = 1\nall:\n\t@echo $(EVAL) $(MYSHELL)\n",
            "all:\n\tMYSHELL=x true\n",
            "$(OBJS): CFLAGS += -O2\n",
            "$(info CC=$(CC))\n",
            "all:\n\t$(CC) -DX=1 -o $@ $(SRC)\n",
            "all:\n\tenv $(N)=v true\n",
            "X := $(if a,b=c)\n",
        ] {
            assert_eq!(parse(mk).refused, None, "{mk:?}");
        }
    }
}
