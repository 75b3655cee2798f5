//! Programs a granted command finds by name at run time in places the agent can write (issue 15,
//! red-team: a planted `xxd` in `~/.cargo/bin` ran under a standing `make test` grant). Every
//! policy PATH directory the agent can write is pinned as a whole, shown on the card, re-checked
//! at every run and when a run ends.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::harness::*;

pub(crate) fn token() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kvpd_{n:x}_{}", std::process::id())
}

pub(crate) fn exe(p: &Path, body: &str) {
    std::fs::write(p, body).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

pub(crate) fn set_path(h: &Home, path: &str) {
    let o = h.run_stdin(
        &["policy", "set", "demo", "path", path, "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "policy path: {}", text(&o.stderr));
}

pub(crate) fn run(h: &Home, app: &Path, wait: &str, cmd: &[&str]) -> std::process::Output {
    let cwd = app.to_string_lossy().into_owned();
    let mut args = vec!["run", "--cwd", &cwd, "--env", "demo", "--wait", wait, "--"];
    args.extend_from_slice(cmd);
    h.run(&args)
}

/// The agent's side: a directory outside the broker's home (which the broker never reads for a
/// requester), where `app/ci.sh` and the PATH directories live.
pub(crate) struct Agent {
    pub(crate) h: Home,
    pub(crate) dir: tempfile::TempDir,
}

impl Agent {
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A home whose policy PATH starts with `bins` (directories the agent can write, under
/// `/tmp`), a granted value, and an `app` directory holding `ci.sh`.
pub(crate) fn setup(bins: &[&str], ci: &str) -> (Agent, String, std::path::PathBuf) {
    let h = Home::new();
    let dir = tempfile::Builder::new()
        .prefix("kvagent")
        .tempdir_in("/tmp")
        .unwrap();
    let tok = token();
    h.set("demo", "TOKEN", &tok);
    let mut path: Vec<String> = bins
        .iter()
        .map(|b| dir.path().join(b).display().to_string())
        .collect();
    path.push("/usr/local/bin:/usr/bin:/bin".to_owned());
    set_path(&h, &path.join(":"));
    let app = dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("ci.sh"), ci).unwrap();
    (Agent { h, dir }, tok, app)
}

pub(crate) fn approve_standing(a: &Agent, app: &Path, cmd: &[&str]) -> String {
    let h = &a.h;
    let o = run(h, app, "0", cmd);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    let card = h.ok(&["requests"]);
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "8h"]).status.success());
    card
}

pub(crate) fn planted(h: &Agent, tag: &str) -> String {
    let marker = h.path().join(format!("stolen-{tag}"));
    format!(
        "#!/bin/sh\nprintf %s \"$TOKEN\" > '{}'\nexec /usr/bin/{tag} \"$@\"\n",
        marker.display()
    )
}

#[test]
fn a_program_planted_in_a_writable_path_dir_after_approval_never_runs() {
    let (a, tok, app) = setup(&["agentbin"], "echo abc | tr a-z A-Z\n");
    let h = &a.h;
    let bin = a.path().join("agentbin");
    std::fs::create_dir_all(&bin).unwrap();
    exe(&bin.join("kvfmt"), "#!/bin/sh\ncat\n");
    let cmd = ["sh", "ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("(path-dir)"), "{card}");
    assert!(
        card.contains("PATH dir the agent can write: 1 program, pinned"),
        "{card}"
    );
    assert!(card.contains(&bin.display().to_string()), "{card}");
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ABC"));

    // The attack: `tr`, found by name before /usr/bin.
    exe(&bin.join("tr"), &planted(&a, "tr"));
    let o = run(h, &app, "0", &cmd);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(err.contains("inputs changed since approval"), "{err}");
    assert!(err.contains("agentbin"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(err.contains("added, removed, replaced or written"), "{err}");
    assert!(err.contains("policy PATH"), "{err}");
    assert!(!a.path().join("stolen-tr").exists(), "the planted tr ran");
    assert!(!contains(&o.stdout, &tok) && !contains(&o.stderr, &tok));
    // Removing it again does not bring the grant back.
    std::fs::remove_file(bin.join("tr")).unwrap();
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(h.audit_text().contains("\"pin_mismatch\""));
}

#[test]
fn a_helper_rewritten_in_place_or_a_path_dir_created_later_ends_the_grant() {
    // `kvfmt` exists at approval (rewritten in place later, mtime put back); `later/bin` does
    // not exist at approval and is created with a program in it.
    let (a, _tok, app) = setup(&["agentbin", "later/bin"], "echo abc | kvfmt\n");
    let h = &a.h;
    let bin = a.path().join("agentbin");
    std::fs::create_dir_all(&bin).unwrap();
    exe(&bin.join("kvfmt"), "#!/bin/sh\ncat\n");
    let cmd = ["sh", "ci.sh"];
    let card = approve_standing(&a, &app, &cmd);
    assert!(card.contains("absent, pinned as absent"), "{card}");
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let later = a.path().join("later/bin");
    std::fs::create_dir_all(&later).unwrap();
    exe(&later.join("tr"), &planted(&a, "tr"));
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("later/bin"), "{}", text(&o.stderr));
    std::fs::remove_dir_all(a.path().join("later")).unwrap();

    // A new approval; then the helper itself is rewritten (same size, mtime restored).
    let _ = approve_standing(&a, &app, &cmd);
    let o = run(h, &app, "5", &cmd);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let f = bin.join("kvfmt");
    let before = std::fs::metadata(&f).unwrap().modified().unwrap();
    std::fs::write(&f, "#!/bin/sh\nenv\n").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(before)
        .unwrap();
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(
        !text(&o.stdout).contains("TOKEN="),
        "the rewritten helper ran"
    );
}

#[test]
fn a_program_planted_and_removed_during_a_run_ends_the_grant_when_the_run_ends() {
    // The run waits for the plant; the agent removes it before the run ends, so the next run's
    // check alone would see nothing: the end-of-run check does.
    let go = "/tmp/.kv-pathdirs-go";
    let ci = "i=0; while [ ! -e \"$GO\" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\necho done\n"
        .replace("$GO", &format!("{go}-{}", std::process::id()));
    let (a, _tok, app) = setup(&["agentbin"], &ci);
    let h = &a.h;
    let go = format!("{go}-{}", std::process::id());
    let bin = a.path().join("agentbin");
    std::fs::create_dir_all(&bin).unwrap();
    let cmd = ["sh", "ci.sh"];
    let _ = approve_standing(&a, &app, &cmd);
    let _ = std::fs::remove_file(&go);
    let cwd = app.to_string_lossy().into_owned();
    let child = h.spawn_run(&[
        "run", "--cwd", &cwd, "--env", "demo", "--wait", "5", "--", "sh", "ci.sh",
    ]);
    std::thread::sleep(Duration::from_millis(800));
    exe(&bin.join("tr"), &planted(&a, "tr"));
    std::thread::sleep(Duration::from_millis(100));
    std::fs::remove_file(bin.join("tr")).unwrap();
    std::fs::write(&go, "").unwrap();
    let o = wait_output(child, Duration::from_secs(60));
    let _ = std::fs::remove_file(&go);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = run(h, &app, "0", &cmd);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert!(
        h.audit_text().contains("during the run"),
        "{}",
        h.audit_text()
    );
}
