//! What a prefix grant (`approve --prefix`) or an auto-approve rule with `--prefix` covers
//! beyond the approved argv: an allowlist, not a blocklist.
//!
//! Extra tokens after the approved prefix may be positional, non-option arguments only: no token
//! that starts with `-` and no token with `=` (`make test SHELL=…`, `VAR=value` overrides, and
//! `--opt=value` forms all change what a tool executes). The one exception is a per-tool table
//! of options known to change nothing a tool executes ([`SAFE_OPTIONS`]). A blocklist of
//! code-executing options cannot be complete: `make -f X.mk`, `npm test --script-shell=…`,
//! `git … -c core.fsmonitor=…` each ran arbitrary code under a prefix grant that a blocklist
//! allowed.
//!
//! Deny rules are the opposite: they match any longer argv ([`deny_covers`]), so an option can
//! never take a command out of a deny rule.

/// Options that change nothing a tool executes, per tool (the basename of `argv[0]`, or the
/// module of `python -m MODULE`). Anything not listed is refused as an extra.
pub(crate) const SAFE_OPTIONS: &[(&str, &[&str])] = &[
    (
        "cargo",
        &[
            "-q",
            "--quiet",
            "-v",
            "--verbose",
            "--release",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
            "--doc",
            "--workspace",
            "--all-targets",
            "--locked",
            "--offline",
            "--frozen",
            "--no-run",
        ],
    ),
    (
        "pytest",
        &[
            "-q",
            "-v",
            "-vv",
            "-x",
            "--exitfirst",
            "--lf",
            "--ff",
            "--tb=short",
            "--tb=line",
            "--tb=no",
            "-ra",
        ],
    ),
    (
        "make",
        &["-s", "--silent", "-k", "--keep-going", "-n", "--dry-run"],
    ),
    ("go", &["-v", "-race", "-short", "-cover", "-count=1"]),
    (
        "git",
        &[
            "--short",
            "-s",
            "--porcelain",
            "--oneline",
            "--stat",
            "--no-color",
        ],
    ),
    ("npm", &["--silent", "-s"]),
    ("pnpm", &["--silent", "-s"]),
    ("yarn", &["--silent", "-s"]),
];

/// The tool a prefix names, for [`SAFE_OPTIONS`]: `python3 -m pytest` → `pytest`, else the
/// basename of `argv[0]` without a version suffix (`python3.12` → `python`).
fn tool_of(prefix: &[String]) -> String {
    let base = |s: &str| {
        s.rsplit('/')
            .next()
            .unwrap_or(s)
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
            .to_owned()
    };
    let first = prefix.first().map(|s| base(s)).unwrap_or_default();
    if first == "python"
        && let Some(i) = prefix.iter().position(|t| t == "-m")
        && let Some(m) = prefix.get(i + 1)
    {
        return m.clone();
    }
    first
}

/// Subcommands whose positional arguments are themselves a command or code to run: a prefix
/// that ends in one of them (or stops before it, so that an extra names it) covers nothing
/// longer. `git submodule foreach CMD`, `git bisect run CMD`, `npm exec PKG`, `cargo run`, ...
const RUNS_ITS_ARGUMENTS: &[(&str, &[&str])] = &[
    ("git", &["foreach", "run", "exec", "-c"]),
    ("npm", &["exec", "x", "run", "run-script", "explore"]),
    ("pnpm", &["exec", "dlx", "run"]),
    ("yarn", &["exec", "dlx", "run", "node"]),
    ("npx", &[]),
    ("cargo", &["run", "script", "install"]),
    ("go", &["run", "generate", "tool", "install", "get"]),
    ("python", &["-c", "-m"]),
    ("uv", &["run", "tool"]),
    ("poetry", &["run"]),
    ("pipx", &["run"]),
    ("make", &[]),
    ("xargs", &[]),
    ("env", &[]),
    ("sudo", &[]),
    ("nohup", &[]),
    ("timeout", &[]),
    ("nice", &[]),
    ("find", &[]),
];

/// Tools whose every positional argument may be code or a command to run: no prefix of them
/// covers extra tokens at all.
/// Interpreters and test runners are here: their positionals name code (`python3 evil.py`,
/// `python3 -m unittest discover /any/dir`, `pytest /any/dir`, `mocha x.js`, `prove t/`), and a
/// prefix grant covers only the code the human was shown. So are wrappers, whose positionals
/// are the command they run.
const ALL_ARGUMENTS_RUN: &[&str] = &[
    "npx", "xargs", "env", "sudo", "doas", "nohup", "timeout", "nice", "find", "sh", "bash", "zsh",
    "dash", "ksh", "ash", "mksh", "yash", "fish", "node", "nodejs", "deno", "bun", "perl", "ruby",
    "php", "python", "pypy", "lua", "luajit", "Rscript", "runpy", "pdb", "cProfile", "profile",
    "timeit", "coverage", "tox", "nox", "ts-node", "tsx", "stdbuf", "ionice", "chrt", "taskset",
    "setsid", "time", "flock", "unbuffer", "chronic", "watch", "parallel", "strace", "ltrace",
    "valgrind", "gdb",
];

/// Test runners: their positionals name the tests (code) to run. An extra positional is
/// allowed only as a path inside the granted working directory (relative, no `..`, no `~`),
/// never `discover /any/dir` or `pytest /tmp/x`; for `go`, a package path must start with `./`
/// (`example.com/x` is fetched and built).
const TEST_RUNNERS: &[&str] = &[
    "unittest", "pytest", "py.test", "nose", "nose2", "trial", "doctest", "go", "jest", "mocha",
    "vitest", "ava", "tap", "prove", "rspec", "bats", "phpunit", "cargo",
];

/// Whether a positional extra of test runner `tool` stays inside the working directory.
fn inside_cwd(tool: &str, token: &str) -> bool {
    let p = std::path::Path::new(token);
    let plain = !token.starts_with('/')
        && !token.starts_with('~')
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    match tool {
        "go" => plain && (token == "." || token.starts_with("./")),
        _ => plain,
    }
}

/// Whether one extra token is allowed after `prefix`.
fn allowed_extra(tool: &str, token: &str) -> bool {
    // Shell syntax in an argument is for a shell somewhere down the line, never a plain
    // positional (`git submodule foreach 'env > f'`).
    if token
        .chars()
        .any(|c| c.is_whitespace() || "|&;<>()$`\\\"'*?[]{}!#~".contains(c))
    {
        return false;
    }
    let runs = RUNS_ITS_ARGUMENTS
        .iter()
        .find(|(t, _)| *t == tool)
        .is_some_and(|(_, subs)| subs.contains(&token));
    if runs {
        return false;
    }
    let option_like = token.starts_with('-') || token.contains('=');
    if !option_like {
        return !token.is_empty() && (!TEST_RUNNERS.contains(&tool) || inside_cwd(tool, token));
    }
    let safe = SAFE_OPTIONS
        .iter()
        .find(|(t, _)| *t == tool)
        .map(|(_, opts)| *opts)
        .unwrap_or_default();
    // `make -j4`, `make -j 4` (the number is positional).
    let jobs = tool == "make"
        && token
            .strip_prefix("-j")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
    safe.contains(&token) || jobs
}

/// Whether `argv` is `prefix` followed only by allowed extras (positional arguments, or options
/// of the tool's [`SAFE_OPTIONS`]). Tokens are compared as bytes, without normalisation.
pub(crate) fn allowlist_covers(prefix: &[String], argv: &[String]) -> bool {
    let Some(extras) = argv
        .get(..prefix.len())
        .filter(|head| *head == prefix)
        .and_then(|_| argv.get(prefix.len()..))
    else {
        return false;
    };
    let tool = tool_of(prefix);
    if extras.is_empty() {
        return true;
    }
    // A prefix that already names a subcommand running its arguments, or a tool whose every
    // argument may run, covers nothing longer.
    let runs_args = RUNS_ITS_ARGUMENTS
        .iter()
        .find(|(t, _)| *t == tool)
        .is_some_and(|(_, subs)| prefix.iter().skip(1).any(|p| subs.contains(&p.as_str())));
    if runs_args || ALL_ARGUMENTS_RUN.contains(&tool.as_str()) {
        return false;
    }
    extras.iter().all(|t| allowed_extra(&tool, t))
}

/// Whether a deny rule's argv `rule` covers `argv`: equal, or (with `prefix`) any longer argv
/// that starts with it, whatever the extra tokens are.
pub(crate) fn deny_covers(rule: &[String], prefix: bool, argv: &[String]) -> bool {
    if prefix {
        argv.get(..rule.len()) == Some(rule)
    } else {
        rule == argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn extras_are_positional_unless_a_tool_names_an_option_safe() {
        let make = v(&["make", "test"]);
        assert!(allowlist_covers(&make, &v(&["make", "test"])));
        assert!(allowlist_covers(&make, &v(&["make", "test", "unit"])));
        assert!(allowlist_covers(&make, &v(&["make", "test", "-j4", "-s"])));
        for bad in [
            &["make", "test", "-f", "X.mk"][..],
            &["make", "test", "-fX.mk"],
            &["make", "test", "SHELL=/tmp/evil"],
            &["make", "test", "--eval=x"],
            &["make", "test", "-C", "/tmp"],
        ] {
            assert!(!allowlist_covers(&make, &v(bad)), "{bad:?}");
        }
        let npm = v(&["npm", "test"]);
        assert!(!allowlist_covers(
            &npm,
            &v(&["npm", "test", "--script-shell=/tmp/x"])
        ));
        assert!(!allowlist_covers(
            &npm,
            &v(&["npm", "test", "--", "--require=evil.js"])
        ));
        assert!(allowlist_covers(&npm, &v(&["npm", "test", "--silent"])));
        let git = v(&["git", "fetch"]);
        assert!(allowlist_covers(&git, &v(&["git", "fetch", "origin"])));
        assert!(!allowlist_covers(
            &git,
            &v(&["git", "fetch", "--upload-pack=touch /tmp/x"])
        ));
        assert!(!allowlist_covers(&git, &v(&["git", "fetchx"])));
        let ssh = v(&["ssh", "host"]);
        assert!(!allowlist_covers(
            &ssh,
            &v(&["ssh", "host", "-oProxyCommand=sh"])
        ));
        let cargo = v(&["cargo", "test"]);
        assert!(allowlist_covers(
            &cargo,
            &v(&["cargo", "test", "--release", "name"])
        ));
        assert!(!allowlist_covers(
            &cargo,
            &v(&["cargo", "test", "--config", "x"])
        ));
        let pytest = v(&["python3", "-m", "pytest"]);
        assert!(allowlist_covers(
            &pytest,
            &v(&["python3", "-m", "pytest", "-q", "tests/a.py"])
        ));
        assert!(!allowlist_covers(
            &pytest,
            &v(&["python3", "-m", "pytest", "-p", "evil"])
        ));
        // Test runners: positionals only inside the working directory (red-team 3, finding 12).
        let ut = v(&["python3", "-m", "unittest"]);
        for extra in [
            &["discover", "/tmp/evil"][..],
            &["discover", "-s", "/tmp/evil"],
            &["../other/test_x.py"],
            &["~/evil"],
        ] {
            let mut a = ut.clone();
            a.extend(extra.iter().map(|s| s.to_string()));
            assert!(!allowlist_covers(&ut, &a), "{a:?}");
        }
        assert!(allowlist_covers(
            &ut,
            &v(&["python3", "-m", "unittest", "tests.test_a"])
        ));
        assert!(!allowlist_covers(
            &pytest,
            &v(&["python3", "-m", "pytest", "/tmp/evil"])
        ));
        let py = v(&["python3"]);
        assert!(!allowlist_covers(&py, &v(&["python3", "evil.py"])));
        let app = v(&["python3", "app.py"]);
        assert!(!allowlist_covers(&app, &v(&["python3", "app.py", "x"])));
        let go = v(&["go", "test"]);
        assert!(allowlist_covers(&go, &v(&["go", "test", "./..."])));
        assert!(!allowlist_covers(
            &go,
            &v(&["go", "test", "example.com/evil"])
        ));
        assert!(!allowlist_covers(&go, &v(&["go", "test", "/tmp/evil"])));
        let mocha = v(&["npx", "mocha"]);
        assert!(!allowlist_covers(
            &mocha,
            &v(&["npx", "mocha", "/tmp/x.js"])
        ));
        // A shorter argv, or another head, is never covered.
        assert!(!allowlist_covers(&make, &v(&["make"])));
        assert!(!allowlist_covers(&make, &v(&["sh", "-c", "make test"])));
    }

    #[test]
    fn subcommands_that_run_their_arguments_extend_nothing() {
        let sub = v(&["git", "submodule"]);
        assert!(!allowlist_covers(
            &sub,
            &v(&["git", "submodule", "foreach", "env"])
        ));
        assert!(!allowlist_covers(
            &sub,
            &v(&["git", "submodule", "foreach", "env > /tmp/f"])
        ));
        assert!(allowlist_covers(&sub, &v(&["git", "submodule", "status"])));
        let bisect = v(&["git", "bisect", "run"]);
        assert!(!allowlist_covers(
            &bisect,
            &v(&["git", "bisect", "run", "evil"])
        ));
        let npm = v(&["npm"]);
        assert!(!allowlist_covers(&npm, &v(&["npm", "exec", "evil-pkg"])));
        let cargo = v(&["cargo"]);
        assert!(!allowlist_covers(&cargo, &v(&["cargo", "run"])));
        for tool in ["npx", "xargs", "env", "sh", "node"] {
            assert!(
                !allowlist_covers(&v(&[tool]), &v(&[tool, "anything"])),
                "{tool}"
            );
        }
        // Shell syntax is never a plain positional.
        let make = v(&["make", "test"]);
        assert!(!allowlist_covers(&make, &v(&["make", "test", "a;b"])));
        assert!(!allowlist_covers(&make, &v(&["make", "test", "$(x)"])));
    }

    #[test]
    fn deny_rules_cover_every_longer_argv() {
        let rule = v(&["git", "push"]);
        assert!(deny_covers(
            &rule,
            true,
            &v(&["git", "push", "--upload-pack=x"])
        ));
        assert!(deny_covers(&rule, true, &v(&["git", "push"])));
        assert!(!deny_covers(&rule, true, &v(&["git", "pull"])));
        assert!(!deny_covers(&rule, false, &v(&["git", "push", "origin"])));
    }
}
