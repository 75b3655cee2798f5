//! The shared approval-attack corpus (`tests/cases/approval-attack-cases.jsonl`), replayed
//! through the real broker with the CLI as the requester: each case's workspace, requester
//! environment, prior grant and later file changes are set up as the case says, and the outcome
//! must be what its `checks` ask (escaped and flagged, refused, or a new approval required).
//! The web page's HTML checks live in `web.rs`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::harness::*;

const CASES: &str = include_str!("../../../../tests/cases/approval-attack-cases.jsonl");

/// Fake values (the corpus's own markers expect these prefixes).
fn secret(name: &str) -> String {
    match name {
        "NPM_TOKEN" => "npm_FAKE0000000000000000000000000000kv01".into(),
        "GH_TOKEN" => "ghs_FAKE00000000000000000000000000000kv02".into(),
        other => format!("{}_FAKE000000000000000000000000kv03", other.to_lowercase()),
    }
}

struct Ws {
    home: Home,
    root: tempfile::TempDir,
}

impl Ws {
    fn new(case: &Value) -> Ws {
        let root = tempfile::Builder::new()
            .prefix("kva")
            .tempdir_in("/tmp")
            .unwrap();
        for d in ["app/.cache", "home/.local/bin", "outside"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let attack = &case["attack"];
        // Setup commands run as the verifier runs them: in the root, HOME at root/home.
        for cmd in strs(&attack["setup"]) {
            let o = std::process::Command::new("sh")
                .args(["-c", &cmd])
                .current_dir(root.path())
                .env("HOME", root.path().join("home"))
                .output()
                .unwrap();
            assert!(o.status.success(), "setup {cmd:?}: {}", text(&o.stderr));
        }
        for f in attack["files"].as_array().cloned().unwrap_or_default() {
            write_file(&root.path().join(f["path"].as_str().unwrap()), &f);
        }
        for l in attack["symlinks"].as_array().cloned().unwrap_or_default() {
            let p = root.path().join(l["path"].as_str().unwrap());
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(l["target"].as_str().unwrap(), &p).unwrap();
        }
        // The human's PATH has ~/.local/bin, as many do; it becomes the policy PATH at init.
        // Their HOME (the granted children's) is the workspace's home/, as in the verifier.
        let home = Home::empty();
        let path = format!(
            "{}:{}",
            root.path().join("home/.local/bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let o = home
            .cmd(&["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"])
            .env("PATH", &path)
            .env("HOME", root.path().join("home"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{PASS}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        home.ok(&["env", "create", "prod"]);
        for v in ["NPM_TOKEN", "GH_TOKEN", "STRIPE_KEY"] {
            home.set("prod", v, &secret(v));
        }
        Ws { home, root }
    }

    fn cwd(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    /// `keyveil run` as the requester: the attack's environment on top of the harness's.
    fn run(&self, spec: &Value, env: &BTreeMap<String, String>, wait: &str) -> Output {
        let mut args: Vec<String> = vec![
            "run".into(),
            "--env".into(),
            spec["environment"].as_str().unwrap_or("prod").into(),
        ];
        if let Some(vars) = spec["variables"].as_array() {
            args.push("--only".into());
            args.push(
                vars.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        if let Some(r) = spec["reason"].as_str() {
            args.push("--reason".into());
            args.push(r.into());
        }
        if let Some(p) = spec["pass_env"].as_array() {
            args.push("--pass-env".into());
            args.push(
                p.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        args.push("--cwd".into());
        args.push(
            self.cwd(spec["cwd"].as_str().unwrap_or("app"))
                .to_string_lossy()
                .into_owned(),
        );
        args.push("--wait".into());
        args.push(wait.into());
        args.push("--".into());
        for a in spec["command"].as_array().unwrap() {
            args.push(a.as_str().unwrap().into());
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = self.home.cmd(&refs);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn pending(&self) -> Vec<Value> {
        self.home
            .json(&["requests", "--json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Creates and approves the prior grant the case describes.
    fn prior_grant(&self, case: &Value) {
        let g = &case["attack"]["prior_grant"];
        if g.is_null() {
            return;
        }
        let mut spec = case["attack"]["run"].clone();
        spec["command"] = g["command"].clone();
        spec["cwd"] = g
            .get("cwd")
            .or_else(|| g.get("cwd_prefix"))
            .cloned()
            .unwrap_or(Value::from("app"));
        spec["reason"] = Value::Null;
        let o = self.run(&spec, &BTreeMap::new(), "0");
        assert_eq!(
            o.status.code(),
            Some(5),
            "prior request: {}",
            text(&o.stderr)
        );
        let id = self.home.wait_request();
        let mut extra = vec![
            "--ttl".to_string(),
            g["ttl"].as_str().unwrap_or("8h").to_string(),
        ];
        if g["matcher"] == "prefix" {
            extra.push("--prefix".into());
        }
        if g.get("cwd_prefix").is_some() {
            extra.push("--subdirs".into());
        }
        if let Some(u) = g["uses"].as_u64() {
            extra.push("--uses".into());
            extra.push(u.to_string());
        }
        let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        let a = self.home.approve(id, &refs);
        assert!(a.status.success(), "prior approval: {}", text(&a.stderr));
    }

    /// The agent's own moves before the attack: first values it stores without the factor
    /// (`agent_set`), and a request the human denies (`denied_first`).
    fn agent_moves(&self, case: &Value) {
        for v in case["attack"]["agent_set"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            self.home.set_unverified(
                v["environment"].as_str().unwrap(),
                v["name"].as_str().unwrap(),
                v["value"].as_str().unwrap(),
            );
        }
        let d = &case["attack"]["denied_first"];
        if d.is_null() {
            return;
        }
        let mut spec = case["attack"]["run"].clone();
        spec["command"] = d["command"].clone();
        spec["reason"] = Value::Null;
        let o = self.run(&spec, &BTreeMap::new(), "0");
        assert_eq!(
            o.status.code(),
            Some(5),
            "denied_first: {}",
            text(&o.stderr)
        );
        let id = self.home.wait_request();
        self.home.ok(&["deny", &id.to_string()]);
    }

    fn after_request(&self, case: &Value) {
        for op in case["attack"]["after_request"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            assert_eq!(op["op"], "write_file");
            // A new inode and new content, as an editor or an agent would leave it.
            let p = self.root.path().join(op["path"].as_str().unwrap());
            std::fs::remove_file(&p).unwrap();
            write_file(&p, &op);
        }
    }
}

fn write_file(p: &Path, f: &Value) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, f["content"].as_str().unwrap_or("")).unwrap();
    if let Some(m) = f["mode"].as_str() {
        let mode = u32::from_str_radix(m, 8).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn attack_env(case: &Value) -> BTreeMap<String, String> {
    case["attack"]["env"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn all_output(o: &Output) -> String {
    format!("{}{}", text(&o.stdout), text(&o.stderr))
}

/// No `MECH-...PAYLOAD`-style marker of the attack ran, and no value leaked.
fn assert_no_payload(id: &str, out: &str) {
    for bad in [
        "MECH-BIDI-PAYLOAD",
        "MECH-ZW-PAYLOAD",
        "MECH-HOMOGLYPH",
        "MECH-CHAIN-SECOND",
        "MECH-PATH-HIJACK",
        "MECH-TOOL-REPLACED",
        "MECH-SCRIPT-REWRITTEN",
        "MECH-OUTSIDE-CWD",
        "MECH-LD-PRELOAD",
        "MECH-BASH-ENV",
        "MECH-PREFIX-EXTRA",
        "MECH-SUBDIR-SCRIPT",
        // Code loaded from configuration the agent wrote (issue 15 item 2).
        "MECH-PTH-PAYLOAD",
        "MECH-FSMONITOR-PAYLOAD",
        "MECH-GIT-CONFIG-REWRITTEN",
        "MECH-NPMRC-PAYLOAD",
        "MECH-NPMRC-REWRITTEN",
        "MECH-MAKE-INCLUDE",
        "MECH-CARGO-CONFIG",
        "MECH-PROFILE-PAYLOAD",
    ] {
        assert!(!out.contains(bad), "{id}: the attack's payload ran ({bad})");
    }
    for v in ["NPM_TOKEN", "GH_TOKEN", "STRIPE_KEY"] {
        assert!(!out.contains(&secret(v)), "{id}: a value leaked");
    }
}

fn check_display(id: &str, ws: &Ws, checks: &Value, fallback: &str) {
    let card = ws.home.ok(&["requests"]);
    let shown = format!("{card}\n{fallback}");
    for raw in strs(&checks["display_must_not_contain_raw"]) {
        assert!(
            !shown.contains(&raw),
            "{id}: the display holds a raw {:?}",
            raw.escape_unicode().to_string()
        );
    }
    for want in strs(&checks["display_must_contain"]) {
        assert!(
            shown.contains(&want),
            "{id}: the display lacks {want:?}:\n{shown}"
        );
    }
}

fn check_flags(id: &str, ws: &Ws, checks: &Value, argv: &Value) {
    let want = strs(&checks["risk_flags"]);
    if want.is_empty() {
        return;
    }
    let reqs = ws.pending();
    let r = reqs.iter().find(|r| &r["argv"] == argv).unwrap_or_else(|| {
        panic!("{id}: no pending request for the attack's argv; pending: {reqs:?}")
    });
    let have = strs(&r["risk"]);
    for f in want {
        assert!(have.contains(&f), "{id}: risk flag {f} missing in {have:?}");
    }
}

#[allow(clippy::print_stderr)] // says why a case skips
fn replay(case: &Value) {
    let id = case["id"].as_str().unwrap();
    let checks = &case["checks"];
    let outcome = checks["outcome"].as_str().unwrap();
    // Tools a case's mechanics need: without them the case cannot be replayed.
    let mech = &case["mechanics"];
    let checks_list = mech
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![mech.clone()]);
    let missing: Vec<String> = checks_list
        .iter()
        .flat_map(|c| strs(&c["needs"]))
        .filter(|t| !tool_installed(t))
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED {id}: {} not installed", missing.join(", "));
        return;
    }
    let ws = Ws::new(case);
    let env = attack_env(case);
    if outcome == "rate-limit" {
        return flood(&ws, case);
    }
    // The ld-preload case: build the agent's library as its mechanics do, so the attack is real.
    if id.contains("ld-preload") {
        let app = ws.cwd("app");
        let ok = std::process::Command::new("cc")
            .args([
                "-shared",
                "-fPIC",
                "-o",
                ".cache/libtelemetry.so",
                ".cache/telemetry.c",
            ])
            .current_dir(&app)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "{id}: cannot build the preload library (cc)");
    }
    ws.prior_grant(case);
    ws.agent_moves(case);
    ws.after_request(case);
    let spec = &case["attack"]["run"];
    let o = ws.run(spec, &env, "1");
    let out = all_output(&o);
    assert_no_payload(id, &out);
    match outcome {
        "show-escaped-and-flag" | "show-escaped" | "show-and-flag" => {
            if o.status.code() == Some(5) {
                check_display(id, &ws, checks, "");
                check_flags(id, &ws, checks, &spec["command"]);
                let names = strs(&checks["post_run_report_must_name"]);
                if !names.is_empty() {
                    // Approve and run it: the post-run scan must name every variable it wrote.
                    let rid = ws.home.wait_request();
                    assert!(ws.home.approve(rid, &[]).status.success());
                    let o2 = ws.run(spec, &env, "5");
                    let err = text(&o2.stderr);
                    assert_no_payload(id, &all_output(&o2));
                    for n in names {
                        assert!(
                            err.contains(&format!("wrote the value of {n} into")),
                            "{id}: {n} not reported: {err}"
                        );
                    }
                    assert!(err.contains("state.json"), "{err}");
                    let audit = ws.home.audit_text();
                    assert!(
                        audit.contains("\"write_leaks\":[{"),
                        "{id}: write leaks not audited"
                    );
                }
            } else {
                // Refused before any request (e.g. a look-alike name that is on no policy
                // PATH): the error must show the escaped name and nothing ran.
                assert_ne!(o.status.code(), Some(0), "{id}: ran without approval");
                check_display(
                    id,
                    &ws,
                    &serde_json::json!({"display_must_contain": checks["display_must_contain"], "display_must_not_contain_raw": checks["display_must_not_contain_raw"]}),
                    &text(&o.stderr),
                );
            }
        }
        "require-new-approval" => {
            let code = o.status.code();
            assert!(
                code == Some(5) || code == Some(3),
                "{id}: expected a new approval or a refusal, got {code:?}: {out}"
            );
            if let Some(want) = checks["reason_contains"].as_str() {
                assert!(
                    out.contains(want),
                    "{id}: the refusal does not say {want:?}: {out}"
                );
            }
            if code == Some(5) {
                check_display(id, &ws, checks, "");
                check_flags(id, &ws, checks, &spec["command"]);
            }
        }
        "refuse" => {
            assert_eq!(o.status.code(), Some(3), "{id}: expected a refusal: {out}");
            let want = checks["reason_contains"].as_str().unwrap_or("");
            assert!(
                out.contains(want),
                "{id}: the refusal does not say {want:?}: {out}"
            );
        }
        "strip-or-refuse" => {
            // Approve the attack's request and run it: the injected variable (or planted
            // configuration) must not reach it, and the approved command itself must still work.
            if o.status.code() == Some(5) {
                check_display(id, &ws, checks, "");
                let rid = ws.home.wait_request();
                assert!(ws.home.approve(rid, &[]).status.success());
                let o2 = ws.run(spec, &env, "30");
                let out2 = all_output(&o2);
                assert_no_payload(id, &out2);
                if let Some(want) = checks["must_run"].as_str() {
                    assert!(
                        out2.contains(want),
                        "{id}: the approved command did not run ({want:?}): {out2}"
                    );
                }
            }
            for name in strs(&checks["child_env_must_not_contain"]) {
                assert_child_env_lacks(&ws, &env, &name);
            }
        }
        other => panic!("{id}: unknown outcome {other}"),
    }
}

fn tool_installed(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Runs `env` under a grant with the attack's requester environment: the name must be absent.
fn assert_child_env_lacks(ws: &Ws, env: &BTreeMap<String, String>, name: &str) {
    let spec = serde_json::json!({"environment": "prod", "variables": ["NPM_TOKEN"], "command": ["env"], "cwd": "app"});
    let o = ws.run(&spec, env, "0");
    assert_eq!(o.status.code(), Some(5));
    let rid = ws.home.wait_request();
    assert!(ws.home.approve(rid, &[]).status.success());
    let o = ws.run(&spec, env, "5");
    let out = text(&o.stdout);
    assert!(out.contains("NPM_TOKEN=[REDACTED:NPM_TOKEN]"), "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with(&format!("{name}="))),
        "{name} reached the child: {out}"
    );
}

fn flood(ws: &Ws, case: &Value) {
    let seq = case["attack"]["sequence"].as_array().unwrap();
    let mut refused = 0;
    for spec in seq {
        let o = ws.run(spec, &BTreeMap::new(), "0");
        match o.status.code() {
            Some(5) => {}
            Some(3) => refused += 1,
            other => panic!("flood: unexpected exit {other:?}: {}", text(&o.stderr)),
        }
    }
    let pending = ws.pending();
    let max = case["checks"]["max_open_requests_per_client"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        pending.len() <= max,
        "{} open requests from one client",
        pending.len()
    );
    // Identical asks were merged and counted; the outlier stands alone, flagged.
    let merged = pending
        .iter()
        .find(|r| r["argv"] == serde_json::json!(["npm", "test"]))
        .unwrap();
    assert!(merged["asks"].as_u64().unwrap() >= 30, "{merged}");
    assert!(
        strs(&merged["risk"]).contains(&"burst".to_string()),
        "{merged}"
    );
    let outlier = pending.iter().find(|r| r["argv"][0] == "sh").unwrap();
    for f in ["burst", "shell-c", "network", "variable-reference"] {
        assert!(
            strs(&outlier["risk"]).contains(&f.to_string()),
            "outlier lacks {f}: {outlier}"
        );
    }
    // More distinct asks: the open-request cap refuses with "wait".
    for i in 0..3 {
        let spec = serde_json::json!({"environment": "prod", "variables": ["NPM_TOKEN"], "command": ["echo", format!("distinct {i}")], "cwd": "app"});
        let o = ws.run(&spec, &BTreeMap::new(), "0");
        if o.status.code() == Some(3) {
            assert!(text(&o.stderr).contains("wait"), "{}", text(&o.stderr));
            refused += 1;
        }
    }
    assert!(refused >= 1, "the open-request cap never refused");
    assert!(ws.pending().len() <= max);
}

#[test]
fn every_approval_attack_case_is_defended() {
    let cases: Vec<Value> = CASES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 15);
    for c in &cases {
        if c["kind"] == "approval-ui-injection" {
            continue; // HTML checks: web.rs
        }
        replay(c);
    }
}
