//! make: the makefile, its includes and the directories it puts on `PATH` (the `make` row of
//! [`super::TABLE`]); the makefile syntax itself is read by [`super::makefile`].

use super::*;

/// `(directory make runs in, makefiles named on argv)`: `-C DIR`/`--directory=DIR` applied in
/// order, `-f FILE`/`-fFILE`/`--file=FILE`/`--makefile=FILE`, in clusters (`-sf FILE`) and by
/// unambiguous prefix (`--fil=FILE`), as make's `getopt_long` reads them.
pub(super) fn make_args(argv: &[String], cwd: &Path) -> (PathBuf, Vec<String>) {
    let m = make_argv::argv(argv);
    let mut dir = cwd.to_path_buf();
    for d in &m.dir {
        dir = dir.join(d);
    }
    (dir, m.files)
}

/// The value of `var` when the makefile `text` sets it once, to words without `$` (`DEPS =
/// a.d b.d`, `DEPS := a.d`); `None` for anything only make can evaluate.
pub(super) fn make_literal_var(text: &str, var: &str) -> Option<Vec<String>> {
    let mut found = None;
    for l in makefile::logical_lines(text) {
        let l = l.as_str();
        let l = l.trim_start();
        let l = l.strip_prefix("override ").unwrap_or(l).trim_start();
        let l = l.strip_prefix("export ").unwrap_or(l).trim_start();
        let Some(rest) = l.strip_prefix(var) else {
            continue;
        };
        let rest = rest.trim_start();
        let value = ["::=", ":=", "?=", "+=", "!=", "="]
            .iter()
            .find_map(|op| rest.strip_prefix(op).map(|v| (*op, v)));
        let Some((op, value)) = value else { continue };
        let value = value.split('#').next().unwrap_or("");
        if found.is_some() || op == "+=" || op == "!=" || value.contains(['$', '\\']) {
            return None;
        }
        found = Some(value.split_whitespace().map(str::to_owned).collect());
    }
    found
}

/// What an include name with a `$` stands for, when keyveil can tell without make: a variable
/// the makefile sets to literal words, or `$(wildcard PATTERN)`. `Err` otherwise (the command
/// is refused: what make would read cannot be pinned).
pub(super) fn make_expand_include(name: &str, text: &str) -> Result<Vec<String>, String> {
    let inner = name
        .strip_prefix("$(")
        .and_then(|n| n.strip_suffix(')'))
        .or_else(|| name.strip_prefix("${").and_then(|n| n.strip_suffix('}')));
    if let Some(inner) = inner {
        if let Some(pat) = inner.strip_prefix("wildcard ") {
            if !pat.contains('$') {
                return Ok(pat.split_whitespace().map(str::to_owned).collect());
            }
        } else if inner
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && let Some(words) = make_literal_var(text, inner)
        {
            return Ok(words);
        }
    }
    Err(format!(
        "a make include whose name only make can expand ({name}); name the files, or include \
         a wildcard (`-include build/*.d`), which keyveil pins with its directory"
    ))
}

/// Directories a makefile puts on `PATH` (GNU make §5.3.2: recipes run with the exported
/// `PATH`, so a program planted in such a directory shadows the ones the recipe names): every
/// assignment to `PATH` in make syntax (`export PATH := $(CURDIR)/tools:$(PATH)`, target-specific,
/// `override`, `+=`, `define`, `$(eval ...)`) or in a recipe (`PATH=tools:$$PATH tr`). Entries
/// are literal paths, relative ones resolved against make's directory, or start with
/// `$(CURDIR)`, `$(PWD)`, `$(shell pwd)` or `$(abspath .)`; `$(PATH)`, `$$PATH` stand for the
/// policy PATH (pinned already). `Err` for anything else: only make could tell the directory.
pub(super) fn make_path_dirs(text: &str, dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for line in makefile::logical_lines(text) {
        let l = line.split('#').next().unwrap_or("");
        let bytes = l.as_bytes();
        let mut from = 0;
        while let Some(i) = l.get(from..).and_then(|r| r.find("PATH")).map(|i| i + from) {
            from = i + 4;
            let before = i.checked_sub(1).and_then(|j| bytes.get(j)).copied();
            // `PATH` as a whole name (not `MANPATH`, `$(PATH)`, `$$PATH`, `PATH_X`).
            if before.is_some_and(|b| {
                b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'(' || b == b'{'
            }) {
                continue;
            }
            let rest = l.get(i + 4..).unwrap_or("");
            if rest.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let r = rest.trim_start();
            if l.trim_start().starts_with("define") {
                return Err("a makefile defines PATH with `define`".to_owned());
            }
            let Some(value) = ["::=", ":=", "?=", "+=", "!=", "="]
                .iter()
                .find_map(|op| r.strip_prefix(op).map(|v| (op, v)))
                .and_then(|(op, v)| (*op != "!=").then_some(v).or(Some("$(shell)")))
            else {
                continue;
            };
            // `$(shell pwd)` holds a space: the same as `$(CURDIR)` for a recipe's PATH.
            let value = value
                .replace("$(shell pwd)", "$(CURDIR)")
                .replace("$$(pwd)", "$(CURDIR)");
            let value = value
                .trim()
                .split(|c: char| c.is_whitespace() || c == ';')
                .next()
                .unwrap_or("")
                .trim_matches(['"', '\'']);
            // The `)` that closes `$(eval ...)` is not part of the value.
            let mut value = value;
            while value.matches(')').count() > value.matches('(').count()
                && let Some(v) = value.strip_suffix(')')
            {
                value = v;
            }
            for part in value.split(':').filter(|p| !p.is_empty()) {
                if matches!(
                    part,
                    "$(PATH)" | "${PATH}" | "$$PATH" | "$${PATH}" | "$(value PATH)"
                ) {
                    continue;
                }
                let resolved = [
                    "$(CURDIR)",
                    "${CURDIR}",
                    "$(PWD)",
                    "${PWD}",
                    "$$PWD",
                    "$${PWD}",
                    "$(shell pwd)",
                    "$(abspath .)",
                    "$$(pwd)",
                ]
                .iter()
                .find_map(|v| part.strip_prefix(v))
                .map(|r| dir.join(r.trim_start_matches('/')));
                let d = match resolved {
                    Some(d) => d,
                    None if !part.contains('$') => dir.join(part),
                    None => {
                        return Err(format!(
                            "a makefile puts a directory only make can expand on PATH ({part})"
                        ));
                    }
                };
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// `-I DIR`, `-IDIR`, `--include-dir=DIR` from make's argv, relative to `dir`: the directory
/// make runs in after its `-C` options (make changes directory before it searches them).
pub(super) fn make_include_dirs(argv: &[String], dir: &Path) -> Vec<PathBuf> {
    make_argv::argv(argv)
        .incdirs
        .iter()
        .map(|d| dir.join(d))
        .collect()
}

/// Refuses a makefile name `name` (as make names it, relative to `dir`) that make's built-in
/// rule `%: %.sh` (`cat $< >$@`) would remake from `NAME.sh` before reading it again: a
/// makefile, an include (present or not) or a default makefile name. Re-derived at every run,
/// so a `.sh` planted after approval ends the grant.
fn make_remade_by_builtin(name: &str, dir: &Path, out: &mut Pins) {
    // `%.out: %` (`cp $< $@`) makes `NAME.out` from `NAME` the same way.
    if let Some(stem) = name.strip_suffix(".out")
        && std::fs::symlink_metadata(dir.join(stem)).is_ok()
    {
        out.unpinnable(
            &dir.join(stem),
            &format!(
                "make's built-in rule `%.out: %` would rewrite {name} from {stem} and read it \
                 as a makefile; rename the makefile"
            ),
        );
    }
    let sh = dir.join(format!("{name}.sh"));
    if std::fs::symlink_metadata(&sh).is_ok() {
        out.unpinnable(
            &sh,
            &format!(
                "make's built-in rule `%: %.sh` would rewrite {name} from {name}.sh and read it \
                 as a makefile; remove {name}.sh or rename it"
            ),
        );
    }
}

/// A makefile name make would read from something other than a regular file keyveil can pin:
/// `-` (standard input), or a path under `/dev`, `/proc` or `/sys`.
pub(super) fn make_pseudo_file(name: &str, at: &Path) -> bool {
    name == "-"
        || ["/dev/", "/proc/", "/sys/"]
            .iter()
            .any(|p| at.to_string_lossy().starts_with(p))
}

/// Whether `name` matches a shell wildcard `pat` (`*`, `?`, `[a-z]`, `[!x]`).
pub(super) fn wildcard(pat: &[u8], name: &[u8]) -> bool {
    match (pat.split_first(), name.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            wildcard(rest, name) || name.split_first().is_some_and(|(_, n)| wildcard(pat, n))
        }
        (Some((b'[', rest)), Some((c, n))) => match rest.iter().skip(1).position(|x| *x == b']') {
            Some(e) => {
                let class = rest.get(..e + 1).unwrap_or_default();
                let (neg, class) = match class.split_first() {
                    Some((b'!' | b'^', cl)) => (true, cl),
                    _ => (false, class),
                };
                let mut hit = false;
                let mut i = 0;
                while let Some(a) = class.get(i) {
                    if class.get(i + 1) == Some(&b'-')
                        && let Some(b) = class.get(i + 2)
                    {
                        hit |= (a..=b).contains(&c);
                        i += 3;
                    } else {
                        hit |= a == c;
                        i += 1;
                    }
                }
                hit != neg && wildcard(rest.get(e + 2..).unwrap_or_default(), n)
            }
            None => false,
        },
        (Some((p, rest)), Some((c, n))) => (*p == b'?' || p == c) && wildcard(rest, n),
        _ => false,
    }
}

/// The files an include name stands for (GNU make §3.3): a wildcard is expanded in its
/// directory, which is pinned by fingerprint (a file planted later that matches is a change);
/// a relative name not in make's directory is searched in the `-I` directories, in order.
pub(super) fn make_include_files(
    name: &str,
    dir: &Path,
    incdirs: &[PathBuf],
    out: &mut Pins,
) -> Vec<PathBuf> {
    let p = dir.join(name);
    if name.contains(['*', '?', '[']) {
        let (Some(parent), Some(pat)) = (p.parent(), p.file_name()) else {
            return Vec::new();
        };
        if parent.to_string_lossy().contains(['*', '?', '[']) {
            out.unpinnable(&p, "a make include whose directory is a wildcard");
            return Vec::new();
        }
        out.add_dir(
            "make-include-dir",
            parent,
            "directory a make include wildcard reads",
        );
        let pat = pat.as_encoded_bytes().to_vec();
        let mut v: Vec<PathBuf> = std::fs::read_dir(parent)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter(|e| wildcard(&pat, e.file_name().as_encoded_bytes()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        return v;
    }
    if p.exists() || Path::new(name).is_absolute() {
        return vec![p];
    }
    incdirs
        .iter()
        .map(|d| d.join(name))
        .find(|c| c.exists())
        .into_iter()
        .collect()
}

pub(super) fn make(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    let (dir, files) = make_args(cx.argv, cx.cwd);
    let incdirs = make_include_dirs(cx.argv, &dir);
    if let Some(why) = make_argv::argv(cx.argv).refused {
        out.unpinnable(cx.cwd, &why);
    }
    for f in &files {
        if make_pseudo_file(f, &dir.join(f)) {
            out.unpinnable(
                &dir.join(f),
                "make would read its makefile from standard input or a device; name a makefile \
                 in a regular file",
            );
        }
    }
    let mut queue: Vec<PathBuf> = if files.is_empty() {
        // make takes the first name that exists, whatever it is (a FIFO or a link to a device
        // is read too; `add_text` refuses what is no regular file).
        for n in ["GNUmakefile", "makefile", "Makefile"] {
            make_remade_by_builtin(n, &dir, out);
        }
        ["GNUmakefile", "makefile", "Makefile"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .into_iter()
            .collect()
    } else {
        for f in &files {
            make_remade_by_builtin(f, &dir, out);
        }
        files.iter().map(|f| dir.join(f)).collect()
    };
    let mut n = 0;
    let mut role = "makefile";
    let mut second_expansion = false;
    let mut deferred: Option<(PathBuf, String)> = None;
    while !queue.is_empty() && n < MAX_FILES {
        let p = queue.remove(0);
        n += 1;
        if let Some(t) = out.add_text(role, &p, |_| None) {
            let parsed = makefile::parse(&t);
            if let Some(why) = parsed.refused {
                out.unpinnable(&p, &why);
            }
            second_expansion |= parsed.second_expansion;
            if let Some(why) = parsed.deferred_function {
                deferred.get_or_insert((p.clone(), why));
            }
            for i in parsed.includes {
                let names = if i.contains('$') {
                    match make_expand_include(&i, &t) {
                        Ok(names) => names,
                        Err(why) => {
                            out.unpinnable(&dir.join(&i), &why);
                            continue;
                        }
                    }
                } else {
                    vec![i]
                };
                for n in names {
                    make_remade_by_builtin(&n, &dir, out);
                    if make_pseudo_file(&n, &dir.join(&n)) {
                        out.unpinnable(
                            &dir.join(&n),
                            "a makefile includes standard input or a device; include regular \
                             files",
                        );
                        continue;
                    }
                    queue.extend(make_include_files(&n, &dir, &incdirs, out));
                }
            }
            match make_path_dirs(&t, &dir) {
                Ok(dirs) => {
                    for d in dirs {
                        out.add_dir(
                            crate::pin::path_dirs::ROLE,
                            &d,
                            "a makefile puts it on PATH",
                        );
                    }
                }
                Err(why) => out.unpinnable(&p, &why),
            }
        }
        if n >= files.len().max(1) {
            role = "makefile-include";
        }
    }
    // Under `.SECONDEXPANSION` (in any makefile make reads), `$$(eval ...)` in a prerequisite
    // list is evaluated by make.
    if second_expansion && let Some((p, why)) = deferred {
        out.unpinnable(
            &p,
            &format!("{why} (behind `$$`, which `.SECONDEXPANSION` evaluates a second time)"),
        );
    }
}
