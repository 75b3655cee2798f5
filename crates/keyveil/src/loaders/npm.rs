//! npm: `.npmrc` files (their code-running keys quoted) and the defaults npm reads.

use super::*;

// ---------------------------------------------------------------------------------------------
// npm, pnpm, yarn

/// npmrc keys that run a program, load code, or send tokens elsewhere (npm-config(7)).
const NPMRC_CODE_KEYS: &[&str] = &[
    "script-shell",
    "shell",
    "node-options",
    "git",
    "editor",
    "browser",
    "viewer",
    "prefix",
    "globalconfig",
    "userconfig",
    "registry",
    "proxy",
    "https-proxy",
    "cafile",
    "ca",
    "init-module",
    "ignore-scripts",
    "yarn-path",
    "yarnpath",
    "plugins",
    "unsafeHttpWhitelist",
    "httpproxy",
    "httpsproxy",
    "npmregistryserver",
    "pnpmfile",
    "global-pnpmfile",
];

pub(super) fn npmrc_detail(text: &str) -> Option<String> {
    let shown: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let (k, v) = l.split_once('=').or_else(|| l.split_once(':'))?;
            let k = k.trim().trim_matches('"');
            let last = k.rsplit(':').next().unwrap_or(k).to_ascii_lowercase();
            NPMRC_CODE_KEYS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&last))
                .then(|| format!("{k}={}", v.trim()))
        })
        .collect();
    (!shown.is_empty()).then(|| format!("runs or redirects: {}", shown.join("; ")))
}

pub(super) fn npm(cx: &Ctx<'_>, _: &str, out: &mut Pins) {
    for d in up(cx.cwd) {
        for (role, name) in [
            ("npmrc", ".npmrc"),
            ("yarnrc", ".yarnrc"),
            ("yarnrc", ".yarnrc.yml"),
        ] {
            out.add_text(role, &d.join(name), npmrc_detail);
        }
    }
    for (role, name) in [
        ("npmrc", ".npmrc"),
        ("yarnrc", ".yarnrc"),
        ("yarnrc", ".yarnrc.yml"),
        ("npmrc", ".config/pnpm/rc"),
    ] {
        if let Some(p) = home_file(cx, name) {
            out.add_text(role, &p, npmrc_detail);
        }
    }
    // Global and builtin config near the executable ($PREFIX/etc/npmrc, npm's own `npmrc`).
    let mut globals = vec![PathBuf::from("/etc/npmrc")];
    for d in cx.exe.ancestors().skip(1).take(5) {
        globals.push(d.join("etc/npmrc"));
        globals.push(d.join("npmrc"));
    }
    for p in globals {
        out.add_text("npmrc", &p, npmrc_detail);
    }
    out.add("pnpmfile", &cx.cwd.join(".pnpmfile.cjs"), None);
    out.add("pnpm-workspace", &cx.cwd.join("pnpm-workspace.yaml"), None);
    // npm-run-script(1): a script runs with `node_modules/.bin` of the package and of every
    // parent first on PATH; a program planted there shadows `tr`, `sed`, `node`... Each is
    // pinned like an agent-writable PATH directory (absent ones as absent).
    for d in up(cx.cwd) {
        out.add_dir(
            crate::pin::path_dirs::ROLE,
            &d.join("node_modules/.bin"),
            "npm puts it first on PATH",
        );
    }
    npm_defaults(cx, out);
}

/// npm's default scripts (npm-run-script(1), package.json(5)): with no `start` script, `npm
/// start` (and `restart`) runs `node server.js`; with no `install`/`preinstall` script and a
/// `binding.gyp`, `npm install` runs `node-gyp rebuild`. The file that then runs is pinned and
/// the card says so.
fn npm_defaults(cx: &Ctx<'_>, out: &mut Pins) {
    let cmd = cx
        .argv
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    let pj = read_for_requester(&cx.cwd.join("package.json")).unwrap_or_default();
    let json = serde_json::from_str::<serde_json::Value>(pj.trim_start_matches('\u{feff}')).ok();
    let has = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get("scripts"))
            .and_then(|x| x.get(name))
            .is_some()
    };
    match cmd {
        Some("start" | "restart") if !has("start") => {
            out.add(
                "npm-default-start",
                &cx.cwd.join("server.js"),
                Some("no start script: npm runs `node server.js`".to_owned()),
            );
        }
        Some("install" | "i" | "ci" | "add" | "rebuild")
            if !has("install") && !has("preinstall") =>
        {
            out.add(
                "npm-default-install",
                &cx.cwd.join("binding.gyp"),
                Some("no install script: npm runs `node-gyp rebuild` with this file".to_owned()),
            );
        }
        _ => {}
    }
}
