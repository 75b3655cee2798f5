//! The inputs a command will execute: task runners' scripts, interpreters' script operands,
//! through wrappers (`env`, `nice`, `npx`, ...).

use std::path::Path;

use super::files::{odd_kind, pin_input, pin_input_text, readable_for_requester, unpinnable};
use super::operand::{Interp, interp, operand};
use super::wrappers::wrapped;
use super::{InputPin, UNPINNABLE, resolve};

/// The package script a package manager's argv runs (`npm run NAME`, `npm test`, `yarn NAME`),
/// if any.
fn npm_script(argv: &[String]) -> Option<String> {
    let args: Vec<&str> = argv
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    match args.as_slice() {
        ["run" | "run-script" | "rum" | "urn", name, ..] => Some((*name).to_owned()),
        [
            cmd @ ("test" | "t" | "tst" | "start" | "stop" | "restart"),
            ..,
        ] => Some(match *cmd {
            "t" | "tst" => "test".to_owned(),
            c => c.to_owned(),
        }),
        [name, ..]
            if argv.first().is_some_and(|p| {
                p.ends_with("yarn") || p.ends_with("pnpm") || p.ends_with("bun")
            }) =>
        {
            Some((*name).to_owned())
        }
        _ => None,
    }
}

/// Fingerprints the inputs that decide what the command executes: the task runner's file or the
/// script operand, and the configuration each known tool executes code from
/// ([`crate::loaders`]; `home` is the child's HOME, the vault's), and the directories of
/// `search_path` (the child's PATH) the agent can write ([`crate::pin::path_dirs`]).
pub(crate) fn inputs(
    argv: &[String],
    cwd: &Path,
    exe: &Path,
    home: Option<&Path>,
    search_path: &str,
) -> Vec<InputPin> {
    inputs_at(argv, cwd, exe, home, search_path, 0)
}

/// Most wrappers followed in one argv (`nice timeout 5 env sh x.sh`).
const MAX_WRAPPERS: u32 = 8;

/// A command whose inputs are found: its argv, working directory, resolved executable, the
/// child's HOME and PATH.
struct Cmd<'a> {
    argv: &'a [String],
    cwd: &'a Path,
    exe: &'a Path,
    home: Option<&'a Path>,
    search_path: &'a str,
}

/// [`inputs`] of a command `depth` wrappers deep.
fn inputs_at(
    argv: &[String],
    cwd: &Path,
    exe: &Path,
    home: Option<&Path>,
    search_path: &str,
    depth: u32,
) -> Vec<InputPin> {
    let cmd = Cmd {
        argv,
        cwd,
        exe,
        home,
        search_path,
    };
    let (arg0, family) = names(argv, exe);
    let is = |names: &[&str]| names.contains(&family.as_str()) || names.contains(&arg0.as_str());
    let mut out = runner_inputs(&is, argv, cwd);
    // Interpreters with a script operand: options are skipped with their arguments.
    if let Some(kind) = interp(&is) {
        out.extend(interpreter_inputs(kind, argv, cwd, exe));
    }
    out.extend(wrapper_inputs(&cmd, &is, &arg0, depth));
    // An executable script: the interpreters its `#!` line leads to, each pinned.
    for p in super::shebang::chain(exe, cwd) {
        if !out.iter().any(|q| q.path == p.path && q.role == p.role) {
            out.push(p);
        }
    }
    merge_loader_inputs(&mut out, &cmd, &family, &arg0);
    out
}

/// The names a command goes by: its `argv[0]`'s base name, and its family (the executable's or
/// else `argv[0]`'s base name without a version suffix: `python3.12` is `python`).
fn names(argv: &[String], exe: &Path) -> (String, String) {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let arg0 = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
        .unwrap_or_default();
    let family: String = [name.as_str(), arg0.as_str()]
        .iter()
        .map(|n| {
            n.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.')
                .to_owned()
        })
        .find(|n| !n.is_empty())
        .unwrap_or_default();
    (arg0, family)
}

/// The files a task runner the command is (`is` tells) executes: `package.json`, a deno task's
/// config, a justfile, `Cargo.toml` and `build.rs`, pytest/tox/nox configuration.
fn runner_inputs(is: &dyn Fn(&[&str]) -> bool, argv: &[String], cwd: &Path) -> Vec<InputPin> {
    let mut out = Vec::new();
    if is(&["npm", "yarn", "pnpm", "bun", "npx"]) {
        out.extend(package_json(argv, cwd));
    }
    if is(&["deno"]) && argv.get(1).is_some_and(|a| a == "task") {
        deno_task(argv, cwd, &mut out);
    }
    if is(&["just"]) {
        for n in ["justfile", "Justfile", ".justfile"] {
            out.extend(pin_input("justfile", &cwd.join(n), None));
        }
    }
    if is(&["cargo"]) {
        out.extend(pin_input("cargo", &cwd.join("Cargo.toml"), None));
        out.extend(pin_input("cargo", &cwd.join("build.rs"), None));
    }
    if is(&["pytest", "tox", "nox"]) {
        for n in [
            "conftest.py",
            "pytest.ini",
            "pyproject.toml",
            "tox.ini",
            "noxfile.py",
            "setup.cfg",
        ] {
            out.extend(pin_input("pytest-config", &cwd.join(n), None));
        }
    }
    out
}

/// The pin of `cwd`'s `package.json` for a package manager's argv, its detail naming what the
/// script run (and its lifecycle hooks) runs, read from the very bytes pinned.
fn package_json(argv: &[String], cwd: &Path) -> Option<InputPin> {
    let pj = cwd.join("package.json");
    let detail = |text: &str| {
        let s = npm_script(argv)?;
        // npm strips a byte order mark before parsing.
        let json =
            serde_json::from_str::<serde_json::Value>(text.trim_start_matches('\u{feff}')).ok();
        if json.is_none() {
            return Some(format!(
                "package.json does not parse as JSON: keyveil cannot show what {s:?} runs"
            ));
        }
        let script = |name: &str| {
            json.as_ref()
                .and_then(|v| v.get("scripts"))
                .and_then(|x| x.get(name))
                .and_then(|x| x.as_str().map(str::to_owned))
        };
        let mut d = match script(&s) {
            Some(text) => format!("script {s:?} runs: {text}"),
            None => format!("script {s:?} is not defined in package.json"),
        };
        // Lifecycle scripts npm runs around it (npm-scripts(7): pre<name>, post<name>).
        for hook in [format!("pre{s}"), format!("post{s}")] {
            if let Some(text) = script(&hook) {
                d.push_str(&format!("; {hook:?} runs: {text}"));
            }
        }
        Some(d)
    };
    pin_input_text("package.json", &pj, detail).map(|(p, _)| p)
}

/// The inputs of an interpreter's argv: its script operand and the files its options load,
/// pinned; a refusal marker when what it runs cannot be told or comes from standard input.
fn interpreter_inputs(kind: Interp, argv: &[String], cwd: &Path, exe: &Path) -> Vec<InputPin> {
    let mut out = Vec::new();
    let o = operand(kind, argv);
    let here = o
        .chdir
        .as_ref()
        .map_or_else(|| cwd.to_path_buf(), |d| cwd.join(d));
    if let Some(why) = o.unpinnable {
        out.push(unpinnable(exe, why));
    }
    if o.from_stdin {
        out.push(unpinnable(
            exe,
            "it reads program text from standard input, which the requester writes and \
             no card shows; put the program in a file and name it (`python3 check.py`), \
             or pass it inline (`-c`/`-e`), which the card shows",
        ));
    }
    if let Some(op) = o.script.and_then(|i| argv.get(i)) {
        let pinned = pin_operand("script", &here, op, kind == Interp::Python);
        // A shell script's directory: the files it may source (`. ./lib.sh`).
        let dir = pinned
            .as_ref()
            .filter(|p| kind == Interp::Shell && p.role == "script")
            .and_then(|p| super::sealdirs::script_dir(Path::new(&p.path)));
        out.extend(pinned);
        out.extend(dir);
    }
    for f in &o.files {
        out.extend(pin_operand("script-option", &here, f, false));
    }
    out
}

/// Wrappers (`env`, `nice`, `xargs`, ...): what they run is pinned as if it were run itself
/// (its executable and its inputs, `depth + 1` wrappers deep); a refusal marker when what
/// runs cannot be told or wrappers nest deeper than [`MAX_WRAPPERS`].
fn wrapper_inputs(
    cmd: &Cmd<'_>,
    is: &dyn Fn(&[&str]) -> bool,
    arg0: &str,
    depth: u32,
) -> Vec<InputPin> {
    let mut out = Vec::new();
    let w = match wrapped(is, cmd.argv) {
        Ok(None) => return out,
        Err(why) => {
            out.push(unpinnable(cmd.exe, why));
            return out;
        }
        Ok(Some(_)) if depth >= MAX_WRAPPERS => {
            out.push(unpinnable(
                cmd.exe,
                "wrappers nested too deep for keyveil to follow",
            ));
            return out;
        }
        Ok(Some(w)) => w,
    };
    let here = w
        .chdir
        .as_ref()
        .map_or_else(|| cmd.cwd.to_path_buf(), |d| cmd.cwd.join(d));
    let first = w.argv.first().map(String::as_str).unwrap_or("");
    let Ok(inner) = resolve(first, cmd.search_path, &here) else {
        return out;
    };
    let inner_is_interp = {
        let base = inner
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let fam = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        let b0 = first.rsplit('/').next().unwrap_or(first);
        interp(&|names: &[&str]| names.contains(&fam) || names.contains(&b0)).is_some()
    };
    if inner_is_interp && is(&["xargs"]) {
        out.push(unpinnable(
            cmd.exe,
            "xargs adds arguments from its input: keyveil cannot tell which script runs",
        ));
    }
    out.extend(pin_input(
        "wrapped-executable",
        &inner,
        Some(format!("run by {arg0}")),
    ));
    out.extend(inputs_at(
        &w.argv,
        &here,
        &inner,
        cmd.home,
        cmd.search_path,
        depth + 1,
    ));
    out
}

/// Adds to `out` the configuration each known tool executes code from
/// ([`crate::loaders`]) and the writable directories of PATH ([`crate::pin::path_dirs`]), each
/// unless `out` pins its path already (a refusal marker is never merged away).
fn merge_loader_inputs(out: &mut Vec<InputPin>, cmd: &Cmd<'_>, family: &str, arg0: &str) {
    let cx = crate::loaders::Ctx {
        argv: cmd.argv,
        cwd: cmd.cwd,
        exe: cmd.exe,
        home: cmd.home,
    };
    let mut dirs = crate::pin::path_dirs::path_pins(cmd.search_path, cmd.cwd, cmd.home);
    dirs.extend(crate::loaders::manager_inputs(cmd.search_path, &cx));
    for p in crate::loaders::inputs(family, arg0, &cx)
        .into_iter()
        .chain(dirs)
    {
        // A refusal marker is never merged away by a pin of the same path.
        if !out.iter().any(|q| q.path == p.path && q.role == p.role)
            && (p.role == UNPINNABLE || !out.iter().any(|q| q.path == p.path))
        {
            out.push(p);
        }
    }
}

/// `deno task [OPTIONS] [NAME]` (docs.deno.com, "deno task"): the task's command line comes
/// from `deno.json`/`deno.jsonc` (found in the working directory or a parent, or named by
/// `--config`/`-c`), or from a `package.json` script. Each candidate is pinned, the named task
/// quoted on the card from the bytes pinned. `--cwd DIR` moves the search.
fn deno_task(argv: &[String], cwd: &Path, out: &mut Vec<InputPin>) {
    let mut config = None;
    let mut dir = cwd.to_path_buf();
    let mut name = None;
    let mut i = 2;
    while let Some(a) = argv.get(i) {
        let next = argv.get(i + 1);
        match a.as_str() {
            "-c" | "--config" => {
                config = next.cloned();
                i += 1;
            }
            "--cwd" => {
                if let Some(d) = next {
                    dir = cwd.join(d);
                }
                i += 1;
            }
            "-f" | "--filter" => i += 1,
            _ => {
                if let Some(c) = a.strip_prefix("--config=") {
                    config = Some(c.to_owned());
                } else if let Some(d) = a.strip_prefix("--cwd=") {
                    dir = cwd.join(d);
                } else if !a.starts_with('-') && name.is_none() {
                    name = Some(a.clone());
                }
            }
        }
        i += 1;
    }
    let show = |text: &str| {
        let n = name.as_deref()?;
        // deno.jsonc takes comments and trailing commas.
        let v: Option<serde_json::Value> = jsonc_parser::cst::CstRootNode::parse(
            text.trim_start_matches('\u{feff}'),
            &jsonc_parser::ParseOptions::default(),
        )
        .ok()
        .and_then(|r| r.value())
        .and_then(|v| v.to_serde_value());
        let Some(v) = v else {
            return Some(format!(
                "does not parse as JSON: keyveil cannot show what task {n:?} runs"
            ));
        };
        let task = v
            .get("tasks")
            .and_then(|t| t.get(n))
            .or_else(|| v.get("scripts").and_then(|t| t.get(n)))?;
        Some(match task {
            serde_json::Value::String(cmd) => format!("task {n:?} runs: {cmd}"),
            other => format!("task {n:?} runs: {other}"),
        })
    };
    if let Some(c) = config {
        out.extend(pin_input_text("deno-config", &cwd.join(c), show).map(|(p, _)| p));
        return;
    }
    for d in dir.ancestors() {
        for f in ["deno.json", "deno.jsonc", "package.json"] {
            out.extend(pin_input_text("deno-config", &d.join(f), show).map(|(p, _)| p));
        }
    }
}

/// Pins a script operand (or a file an interpreter option names) as `role`, failing closed: an
/// operand that exists but is no regular file (a FIFO, a socket, a device, `/dev/stdin`,
/// `/proc/self/fd/N`) or lies in the broker's home gives an [`UNPINNABLE`] marker; one that
/// does not exist is left to the run-time re-derivation (creating it ends the grant).
fn pin_operand(role: &str, cwd: &Path, op: &str, python: bool) -> Option<InputPin> {
    let given = cwd.join(op);
    let lexical_pseudo = ["/dev/", "/proc/", "/sys/"]
        .iter()
        .any(|p| given.to_string_lossy().starts_with(p));
    let m = match std::fs::metadata(&given) {
        Ok(m) => m,
        // Missing, or a dangling link: nothing runs it now; the run-time check sees it appear.
        Err(_) if !lexical_pseudo => return None,
        Err(_) => return Some(unpinnable(&given, "a file of /dev, /proc or /sys")),
    };
    if let Some(k) = odd_kind(&m) {
        return Some(unpinnable(&given, k));
    }
    if m.is_dir() {
        // `python3 DIR` runs `DIR/__main__.py`.
        return if python {
            pin_operand(role, &given, "__main__.py", false)
        } else {
            None
        };
    }
    let canon = std::fs::canonicalize(&given).ok()?;
    if lexical_pseudo || !readable_for_requester(&canon) {
        return Some(unpinnable(
            &given,
            "it lies in /dev, /proc, /sys or keyveil's own home, which keyveil never reads for a requester",
        ));
    }
    pin_input(role, &canon, None)
}
