//! The project manifest (`keyveil.toml`, `docs/manifest.md`) through the real broker:
//! `keyveil project apply` creates what it declares and pins its digest with the factor; an
//! agent's edit to the file (a source pointing to its own server, a rename, a reorder) ends the
//! environment's grants and refuses its runs and approvals until the human applies it again;
//! the agent cannot move the pin without the factor (raw socket, MCP, CLI).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::custody::raw;
use crate::harness::*;

/// The manifest the team committed: environment `app` with a value the teammate types and one
/// left awaiting.
pub(crate) const MANIFEST: &str = r#"version = 1

[environments.app]
description = "the app, locally"

[environments.app.variables.API_TOKEN]
description = "the API's token"

[environments.app.variables.LATER]
source = "local"
"#;

/// Writes `text` as `repo/keyveil.toml` under the home; returns its path.
pub(crate) fn write_manifest(h: &Home, text: &str) -> PathBuf {
    let dir = h.path().join("repo");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("keyveil.toml");
    std::fs::write(&p, text).unwrap();
    p.canonicalize().unwrap()
}

/// `keyveil project apply PATH` with the passphrase and `values` (one per line) on stdin.
pub(crate) fn apply(h: &Home, p: &Path, values: &[&str]) -> std::process::Output {
    let mut input = format!("{PASS}\n");
    for v in values {
        input.push_str(v);
        input.push('\n');
    }
    h.run_stdin(
        &[
            "project",
            "apply",
            p.to_str().unwrap(),
            "--passphrase-stdin",
            "--values-stdin",
        ],
        &input,
    )
}

/// The pins as `project status --json` shows them, by environment.
pub(crate) fn pins(h: &Home) -> Vec<(String, String)> {
    h.json(&["project", "status", "--json"])["pins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["environment"].as_str().unwrap().to_owned(),
                p["sha256"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Live grants of environment `env`.
pub(crate) fn live_grants(h: &Home, env: &str) -> usize {
    h.json(&["grants", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["environment"] == env)
        .count()
}

/// A home with `MANIFEST` applied (API_TOKEN typed as `value`); returns the manifest's path.
pub(crate) fn applied(h: &Home, value: &str) -> PathBuf {
    let p = write_manifest(h, MANIFEST);
    let o = apply(h, &p, &[value, ""]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    p
}

/// A run of `app` approved for 10 minutes (a grant that outlives it); its stdout.
pub(crate) fn granted_run(h: &Home) -> String {
    let child = h.spawn_run(&[
        "run",
        "--env",
        "app",
        "--",
        "sh",
        "-c",
        "test -n \"$API_TOKEN\" && echo injected",
    ]);
    let id = h.wait_request();
    let a = h.approve(id, &["--ttl", "10m"]);
    assert!(a.status.success(), "approve: {}", text(&a.stderr));
    let o = wait_output(child, Duration::from_secs(60));
    assert!(o.status.success(), "run: {}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn apply_creates_environments_and_names_and_pins_the_digest() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let p = write_manifest(&h, MANIFEST);
    let o = apply(&h, &p, &[&value, ""]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    let out = text(&o.stdout);
    // The plan names the environment, the names and their sources; never the value.
    assert!(out.contains("environment app: create"), "{out}");
    assert!(out.contains("API_TOKEN") && out.contains("LATER"), "{out}");
    assert!(!contains(&o.stdout, &value) && !contains(&o.stderr, &value));
    let env = h.json(&["env", "show", "app", "--json"]);
    let vars = env["variables"].as_array().unwrap();
    let set = |n: &str| {
        vars.iter()
            .find(|v| v["name"] == n)
            .unwrap_or_else(|| panic!("{n} missing: {env}"))["set"]
            .clone()
    };
    assert_eq!(set("API_TOKEN"), json!(true));
    assert_eq!(set("LATER"), json!(false));
    let digest = keyveil_testkit_sha(&p);
    assert_eq!(pins(&h), vec![("app".to_owned(), digest.clone())]);
    let audit = h.audit_text();
    assert!(
        audit.contains("project_apply") && audit.contains(&digest),
        "{audit}"
    );
    // The value reaches a granted run.
    assert!(granted_run(&h).contains("injected"));
    // Status: the file is unchanged and nothing is missing.
    let s = h.run(&["project", "status", p.to_str().unwrap()]);
    assert!(s.status.success(), "{}{}", text(&s.stdout), text(&s.stderr));
    assert!(text(&s.stdout).contains("unchanged"), "{}", text(&s.stdout));
}

/// SHA-256 of a file's bytes, hex.
pub(crate) fn keyveil_testkit_sha(p: &Path) -> String {
    sha256_hex(&std::fs::read_to_string(p).unwrap())
}

#[test]
fn an_agent_edit_ends_grants_and_refuses_runs_until_the_human_applies_it() {
    let h = Home::new();
    let value = format!("tok-{}", keyveil_testkit::rand_tag());
    let p = applied(&h, &value);
    granted_run(&h);
    assert_eq!(live_grants(&h, "app"), 1);
    let approved = pins(&h);
    // The agent adds a source pointing to its own server.
    let evil = format!(
        "{MANIFEST}\n[environments.app.variables.EXTRA]\nsource = \"openbao-kv\"\naddress = \"http://127.0.0.1:9\"\npath = \"agent/owned\"\n"
    );
    std::fs::write(&p, &evil).unwrap();
    let o = h.run(&["run", "--env", "app", "--", "true"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("keyveil.toml changed since approved: run `keyveil project apply`"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(live_grants(&h, "app"), 0, "the grant outlived the edit");
    let audit = h.audit_text();
    assert!(audit.contains("manifest_changed"), "{audit}");
    assert!(audit.contains("manifest changed since approved"), "{audit}");
    // Renames and reorders are changes too; so is a deleted file.
    let renamed = MANIFEST.replace("LATER", "LATER2");
    let reordered = MANIFEST.replace(
        "[environments.app.variables.API_TOKEN]\ndescription = \"the API's token\"\n\n[environments.app.variables.LATER]\nsource = \"local\"\n",
        "[environments.app.variables.LATER]\nsource = \"local\"\n\n[environments.app.variables.API_TOKEN]\ndescription = \"the API's token\"\n",
    );
    assert_ne!(reordered, MANIFEST);
    for edit in [renamed.as_str(), reordered.as_str()] {
        std::fs::write(&p, edit).unwrap();
        let o = h.run(&["run", "--env", "app", "--", "true"]);
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("changed since approved"),
            "{}",
            text(&o.stderr)
        );
    }
    std::fs::remove_file(&p).unwrap();
    let o = h.run(&["run", "--env", "app", "--", "true"]);
    assert!(
        text(&o.stderr).contains("changed since approved"),
        "{}",
        text(&o.stderr)
    );
    // Without the factor the agent cannot apply it (no terminal, no passphrase).
    std::fs::write(&p, &evil).unwrap();
    let o = h.run(&["project", "apply", p.to_str().unwrap(), "--values-stdin"]);
    assert!(!o.status.success(), "{}", text(&o.stdout));
    let o = h.run_stdin(
        &[
            "project",
            "apply",
            p.to_str().unwrap(),
            "--passphrase-stdin",
        ],
        "not the passphrase at all\n",
    );
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert_eq!(pins(&h), approved, "the pin moved without the factor");
    assert!(live_grants(&h, "app") == 0);
    // The human restores the file and applies it: runs are approved again.
    std::fs::write(&p, MANIFEST).unwrap();
    let o = apply(&h, &p, &[]);
    assert!(o.status.success(), "re-apply: {}", text(&o.stderr));
    assert!(granted_run(&h).contains("injected"));
}

#[test]
fn a_pending_request_cannot_be_approved_after_the_manifest_changed() {
    let h = Home::new();
    let p = applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    let child = h.spawn_run(&["run", "--env", "app", "--wait", "30", "--", "true"]);
    let id = h.wait_request();
    std::fs::write(&p, MANIFEST.replace("the app", "the agent's app")).unwrap();
    let a = h.approve(id, &[]);
    assert!(!a.status.success(), "approved after the edit");
    assert!(
        text(&a.stderr).contains("changed since approved"),
        "{}",
        text(&a.stderr)
    );
    assert_eq!(live_grants(&h, "app"), 0);
    // The waiting run is refused, saying why.
    let o = wait_output(child, Duration::from_secs(30));
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("keyveil.toml changed since approved"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn the_raw_socket_cannot_move_the_pin_without_the_factor() {
    let h = Home::new();
    let p = applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    let approved = pins(&h);
    std::fs::write(&p, MANIFEST.replace("API_TOKEN", "API_TOKEN_X")).unwrap();
    let now = keyveil_testkit_sha(&p);
    let path = p.to_str().unwrap();
    // No proof; a forged proof; a proof-shaped "confirm".
    let forged = json!({"challenge": "00".repeat(32), "key": 0, "proof": "11".repeat(32)});
    for req in [
        json!({"op": "project_approve", "path": path, "sha256": now}),
        json!({"op": "project_approve", "path": path, "sha256": now, "factor": forged}),
        json!({"op": "project_approve", "path": path, "sha256": now, "confirm": true}),
    ] {
        let r = raw(&h, &req);
        assert_eq!(r["kind"], "error", "{req} -> {r}");
    }
    assert_eq!(pins(&h), approved);
    let o = h.run(&["run", "--env", "app", "--", "true"]);
    assert!(text(&o.stderr).contains("changed since approved"));
}

/// Runs `keyveil mcp` with `frames` (JSON-RPC lines) on stdin; returns its replies by id.
fn mcp_session(h: &Home, frames: &[Value]) -> Vec<Value> {
    let mut cmd = h.cmd(&["mcp"]);
    cmd.current_dir(h.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    for f in frames {
        writeln!(stdin, "{f}").unwrap();
    }
    let want = frames.iter().filter(|f| f.get("id").is_some()).count();
    let mut replies = Vec::new();
    for line in out.lines() {
        let Ok(line) = line else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("id").is_some() {
            replies.push(v);
        }
        if replies.len() == want {
            break;
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    replies
}

#[test]
fn mcp_has_no_way_to_apply_a_manifest() {
    let h = Home::new();
    let p = applied(&h, &format!("tok-{}", keyveil_testkit::rand_tag()));
    let approved = pins(&h);
    std::fs::write(&p, MANIFEST.replace("LATER", "AGENT")).unwrap();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "agent", "version": "1"}}});
    let call = |id: u64, name: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {
            "name": name, "arguments": {"path": p.to_str().unwrap(), "environment": "app"}}})
    };
    let replies = mcp_session(
        &h,
        &[
            init,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}),
            call(3, "project_apply"),
            call(4, "project_approve"),
            json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {
                "name": "request_access", "arguments": {"environment": "app",
                "command": ["true"], "reason": "after the edit"}}}),
        ],
    );
    let list = replies.iter().find(|r| r["id"] == 2).expect("tools/list");
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"run"), "{names:?}");
    for n in &names {
        assert!(
            !n.contains("project") && !n.contains("manifest") && !n.contains("approve"),
            "an MCP tool could move the pin: {n}"
        );
    }
    for id in [3, 4] {
        let r = replies.iter().find(|r| r["id"] == id).expect("a reply");
        assert!(
            r.get("error").is_some() || r["result"]["isError"] == json!(true),
            "{r}"
        );
    }
    // The agent's own request for the environment is refused, saying why.
    let r = replies.iter().find(|r| r["id"] == 5).expect("a reply");
    assert!(
        r.to_string()
            .contains("keyveil.toml changed since approved: run `keyveil project apply`"),
        "{r}"
    );
    assert_eq!(pins(&h), approved);
}

#[test]
fn bad_toml_gives_its_line_and_a_hint_and_changes_nothing() {
    let h = Home::new();
    let p = write_manifest(
        &h,
        "[environments.app]\n\n[environments.app.variables.A]\nsourse = \"local\"\n",
    );
    let o = apply(&h, &p, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stdout));
    let err = text(&o.stderr);
    assert!(err.contains("line 4") && err.contains("sourse"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    std::fs::write(&p, "[environments.app\n").unwrap();
    let o = apply(&h, &p, &[]);
    let err = text(&o.stderr);
    assert!(
        err.contains("line 1") && err.contains("not valid TOML"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let envs = h.json(&["env", "list", "--json"]);
    assert_eq!(envs.as_array().unwrap().len(), 1, "{envs}");
    assert!(pins(&h).is_empty());
}

#[test]
fn apply_links_an_openbao_kv_source_and_its_value_reaches_the_run() {
    let Some(bao) = keyveil_testkit::BaoDev::start() else {
        return;
    };
    let value = format!("kv-{}", keyveil_testkit::rand_tag());
    bao.cli(&[
        "kv",
        "put",
        "secret/team/app",
        &format!("DATABASE_URL={value}"),
    ]);
    let h = Home::new();
    // The test's server is plain HTTP on loopback: the human allows that for `app` first.
    h.ok(&["env", "create", "app"]);
    h.allow_insecure_loopback("app");
    let p = write_manifest(
        &h,
        &format!(
            "{MANIFEST}\n[environments.app.variables.DATABASE_URL]\nsource = \"openbao-kv\"\naddress = \"{}\"\npath = \"team/app\"\n",
            bao.address
        ),
    );
    let local = format!("tok-{}", keyveil_testkit::rand_tag());
    // Plan order: API_TOKEN's value, LATER left awaiting, the OpenBao token.
    let o = apply(&h, &p, &[&local, "", &bao.token]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("openbao-kv address="),
        "{}",
        text(&o.stdout)
    );
    for secret in [&value, &local, &bao.token] {
        assert!(!contains(&o.stdout, secret) && !contains(&o.stderr, secret));
    }
    let child = h.spawn_run(&[
        "run",
        "--env",
        "app",
        "--",
        "sh",
        "-c",
        "printf %s \"$DATABASE_URL\" | sha256sum",
    ]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());
    let out = wait_output(child, Duration::from_secs(60));
    assert!(
        text(&out.stdout).contains(&sha256_hex(&value)),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    // An agent pointing the declared source at its own server is an edit: refused.
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace(&bao.address, "http://127.0.0.1:9"),
    )
    .unwrap();
    let o = h.run(&["run", "--env", "app", "--", "true"]);
    assert!(
        text(&o.stderr).contains("changed since approved"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_removed_and_recreated_environment_stays_pinned() {
    let h = Home::new();
    let p = write_manifest(&h, "[environments.app.variables.LATER]\n");
    let o = apply(&h, &p, &[""]);
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    // No value is stored, so removing it needs no factor: the agent removes and recreates it
    // after editing the manifest.
    std::fs::write(&p, "[environments.app.variables.AGENT]\n").unwrap();
    h.ok(&["env", "rm", "app"]);
    h.ok(&["env", "create", "app"]);
    let o = h.run(&["run", "--env", "app", "--", "true"]);
    assert!(
        text(&o.stderr).contains("changed since approved"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_totp_code_pins_only_environments_whose_approvals_accept_totp() {
    let h = Home::new();
    let secret = enroll(&h);
    h.ok(&["env", "create", "app"]);
    let o = h.run_stdin(
        &[
            "policy",
            "set",
            "app",
            "factor",
            "totp",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let p = write_manifest(&h, MANIFEST);
    let path = p.to_str().unwrap();
    let local = format!("tok-{}", keyveil_testkit::rand_tag());
    let o = h.run_stdin(
        &["project", "apply", path, "--totp-stdin", "--values-stdin"],
        &format!("{}\n{local}\n\n", totp_code(&secret, 1)),
    );
    assert!(o.status.success(), "apply: {}", text(&o.stderr));
    assert_eq!(pins(&h), vec![("app".to_owned(), keyveil_testkit_sha(&p))]);
    // `demo` needs the passphrase for its approvals: a TOTP code cannot pin it.
    let both = format!("{MANIFEST}\n[environments.demo.variables.OTHER]\n");
    std::fs::write(&p, &both).unwrap();
    let o = h.run_stdin(
        &["project", "apply", path, "--totp-stdin", "--values-stdin"],
        &format!("{}\n\n", totp_code(&secret, -1)),
    );
    assert!(!o.status.success(), "{}", text(&o.stdout));
    assert_eq!(pins(&h), vec![("app".to_owned(), sha256_hex(MANIFEST))]);
}
