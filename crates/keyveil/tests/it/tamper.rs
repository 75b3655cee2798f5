//! Tampering with files the agent can write: the audit log and the vault.

use crate::harness::*;

const VALUE: &str = "val_9KxQ2mZr7TnB4vLc8PwY";

fn audited_home() -> Home {
    let h = Home::new();
    h.set("demo", "API_TOKEN", VALUE);
    h.ok(&["env", "create", "other"]);
    h.ok(&["generate", "other", "GEN_KEY"]);
    h
}

#[test]
fn the_audit_log_never_holds_a_value_and_verifies() {
    let h = audited_home();
    let audit = h.audit_text();
    assert!(audit.lines().count() >= 5, "{audit}");
    for enc in encodings(VALUE) {
        assert!(!audit.contains(&enc));
    }
    assert!(!audit.contains(PASS));
    let out = h.ok(&["audit", "verify"]);
    assert!(out.contains("audit log OK"), "{out}");
    let listing = h.ok(&["audit"]);
    assert!(listing.contains("var_set") && !listing.contains(VALUE));
}

#[test]
fn editing_a_line_is_detected_and_named() {
    let h = audited_home();
    let p = h.path().join("audit.jsonl");
    let text0 = std::fs::read_to_string(&p).unwrap();
    let edited = text0.replacen("\"other\"", "\"0ther\"", 1);
    assert_ne!(edited, text0);
    let line = text0.lines().position(|l| l.contains("\"other\"")).unwrap() + 1;
    std::fs::write(&p, edited).unwrap();
    let o = h.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    let e = text(&o.stderr);
    assert!(
        e.contains(&format!("line {line}")),
        "expected line {line} named: {e}"
    );
}

#[test]
fn deleting_a_line_is_detected_and_named() {
    let h = audited_home();
    let p = h.path().join("audit.jsonl");
    let text0 = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = text0.lines().collect();
    lines.remove(1);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let o = h.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("line 2"), "{}", text(&o.stderr));
}

#[test]
fn a_flipped_vault_byte_is_a_clear_error_and_nothing_is_overwritten() {
    let h = audited_home();
    h.ok(&["daemon", "stop"]);
    let p = h.path().join("vault.kv");
    let mut bytes = std::fs::read(&p).unwrap();
    let i = bytes.len() - 10;
    bytes[i] ^= 0x01;
    std::fs::write(&p, &bytes).unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let e = text(&o.stderr).to_lowercase();
    assert!(
        e.contains("corrupt") || e.contains("tamper") || e.contains("damaged"),
        "{e}"
    );
    assert!(!e.contains(VALUE.to_lowercase().as_str()));
    assert_eq!(
        std::fs::read(&p).unwrap(),
        bytes,
        "the damaged vault was overwritten"
    );
    // A header byte too.
    let mut bytes2 = bytes.clone();
    bytes2[i] ^= 0x01; // restore
    bytes2[12] ^= 0x40;
    std::fs::write(&p, &bytes2).unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert_ne!(o.status.code(), Some(0));
}

#[test]
fn a_forged_last_audit_line_cannot_lock_the_human_out() {
    let h = audited_home();
    h.ok(&["lock"]);
    let p = h.path().join("audit.jsonl");
    let t = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, t.replacen("\"lock\"", "\"l0ck\"", 1)).unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let fresh = h.audit_text();
    assert!(
        fresh.lines().next().unwrap().contains("audit_quarantined"),
        "{fresh}"
    );
    let moved: Vec<_> = std::fs::read_dir(h.path())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("audit.jsonl.bad-")
        })
        .collect();
    assert_eq!(moved.len(), 1, "the tampered log is kept as evidence");
    // The new log verifies, but verify says an earlier one was moved aside (the forged line
    // was the sealed one: one entry the seal vouched for is missing).
    let v = h.run(&["audit", "verify"]);
    let out = text(&v.stdout);
    assert_eq!(v.status.code(), Some(3), "{out}{}", text(&v.stderr));
    assert!(
        out.contains("moved aside") && out.contains("1 entries"),
        "{out}"
    );
}

/// Issue 21, item 7: the agent cuts the last two lines of the log (what it did) and appends a
/// line of garbage, so the next unlock cannot continue the log and moves it aside. That used to
/// reset the sealed checkpoint silently: `audit verify` then said "audit log OK: 2 entries".
/// Now unlock says it, and verify reports the moved file and what the seal knew is missing.
#[test]
fn a_cut_log_ended_with_garbage_cannot_be_laundered_by_the_quarantine() {
    let h = audited_home();
    h.ok(&["lock"]);
    let p = h.path().join("audit.jsonl");
    let t = std::fs::read_to_string(&p).unwrap();
    let sealed = t.lines().count();
    let mut lines: Vec<&str> = t.lines().collect();
    lines.truncate(sealed - 2);
    std::fs::write(
        &p,
        lines.join("\n") + "\n{\"seq\":999,\"event\":\"noise\"}\n",
    )
    .unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("moved aside") && err.contains("MISSING") && err.contains("2 entries"),
        "unlock did not say the log was moved aside: {err}"
    );
    let v = h.run(&["audit", "verify"]);
    let out = text(&v.stdout);
    assert_eq!(
        v.status.code(),
        Some(3),
        "the laundered log verified: {out}"
    );
    assert!(!out.contains("audit log OK"), "{out}");
    assert!(
        out.contains("audit.jsonl.bad-")
            && out.contains(&format!("vouched for {sealed} entries"))
            && out.contains(&format!("lines {}-{sealed}", sealed - 1)),
        "{out}"
    );
}

#[test]
fn cutting_entries_off_the_end_is_detected_by_the_sealed_checkpoint() {
    let h = audited_home();
    h.ok(&["audit", "verify"]);
    // Locking seals the log's end into the vault.
    h.ok(&["lock"]);
    let p = h.path().join("audit.jsonl");
    let t = std::fs::read_to_string(&p).unwrap();
    let mut lines: Vec<&str> = t.lines().collect();
    lines.truncate(lines.len() - 2);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = h.run(&["audit", "verify"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a truncated log verified: {}",
        text(&o.stdout)
    );
    assert!(
        text(&o.stderr).to_lowercase().contains("checkpoint"),
        "{}",
        text(&o.stderr)
    );
    assert!(h.audit_text().contains("audit_seal_mismatch"));
}

#[test]
fn a_failed_save_changes_nothing_in_memory_either() {
    let h = audited_home();
    let p = h.path().join("vault.kv");
    let old = std::fs::read(&p).unwrap();
    h.set("demo", "SECOND", "second-value-0123456789");
    // Put the older file back behind the broker's back: its next save must refuse.
    std::fs::write(&p, &old).unwrap();
    let o = h.run_stdin(
        &["set", "demo", "THIRD", "--from-stdin"],
        "third-value-0123456789\n",
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("nothing was written"),
        "{}",
        text(&o.stderr)
    );
    let shown = h.ok(&["env", "show", "demo"]);
    assert!(
        !shown.contains("THIRD"),
        "the refused change is still served from memory: {shown}"
    );
    assert_eq!(
        std::fs::read(&p).unwrap(),
        old,
        "the replaced file was overwritten"
    );
}

/// A value made at test time.
fn fresh_value() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    format!(
        "av_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

#[test]
fn moving_the_audit_log_aside_while_the_broker_runs_refuses_grants_and_runs() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let marker = h.path().join("ran");
    let script = format!("touch {}; echo \"v=$API_TOKEN\"", marker.display());
    let run = |wait: &str| {
        h.run(&[
            "run", "--env", "demo", "--wait", wait, "--", "sh", "-c", &script,
        ])
    };
    // A standing grant; the run works.
    assert_eq!(run("1").status.code(), Some(5));
    let id = h.wait_request();
    assert!(h.approve(id, &["--ttl", "5m"]).status.success());
    let ok = run("5");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    // A second request, still pending when the log goes.
    let pending = h.run(&["run", "--env", "demo", "--wait", "1", "--", "true"]);
    assert_eq!(pending.status.code(), Some(5));
    let pending_id = h.wait_request();

    let log = h.path().join("audit.jsonl");
    let aside = h.path().join("elsewhere.jsonl");
    std::fs::rename(&log, &aside).unwrap();

    // The run under the live grant is refused, with what happened and what to do.
    let refused = run("5");
    let err = text(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{err}");
    assert!(!marker.exists(), "the command ran with the audit log gone");
    assert!(
        err.contains("audit log") && err.contains("moved away or deleted"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("keyveil unlock"),
        "{err}"
    );
    // So is approving the pending request.
    let a = h.approve(pending_id, &[]);
    let aerr = text(&a.stderr);
    assert_ne!(a.status.code(), Some(0), "{aerr}");
    assert!(aerr.contains("audit log"), "{aerr}");
    // `audit verify` reports it.
    let v = h.run(&["audit", "verify"]);
    let verr = text(&v.stderr);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v.stdout));
    assert!(verr.contains("moved away or deleted"), "{verr}");
    // The moved file closes its chain with the notice, and nothing was written at the path.
    assert!(!log.exists());
    let moved = std::fs::read_to_string(&aside).unwrap();
    let last = moved.lines().last().unwrap();
    assert!(
        last.contains("audit.path_changed") && last.contains("\"missing\""),
        "{last}"
    );
    for out in [&refused.stdout, &refused.stderr, &a.stderr, &v.stderr] {
        for enc in encodings(&value) {
            assert!(!contains(out, &enc), "an error shows the value");
        }
    }

    // Moved back: the grant works again and the log verifies, notice included.
    std::fs::rename(&aside, &log).unwrap();
    let ok = run("5");
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(marker.exists());
    let out = h.ok(&["audit", "verify"]);
    assert!(out.contains("audit log OK"), "{out}");

    // Replaced by an identical copy: still another file, still refused.
    std::fs::remove_file(&marker).unwrap();
    std::fs::copy(&log, h.path().join("copy")).unwrap();
    std::fs::rename(h.path().join("copy"), &log).unwrap();
    let refused = run("5");
    let err = text(&refused.stderr);
    assert_ne!(refused.status.code(), Some(0), "{err}");
    assert!(err.contains("another file was put in its place"), "{err}");
    assert!(!marker.exists());

    // Lock and unlock start a new log at the path; verify reports the break.
    h.ok(&["lock"]);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = h.run(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v.stdout));
    assert!(
        text(&v.stderr).to_lowercase().contains("checkpoint"),
        "{}",
        text(&v.stderr)
    );
    let files = h.all_plain_files();
    for enc in encodings(&value) {
        assert!(!contains(&files, &enc));
    }
}

/// Issue 13, item 6a: with the broker unlocked, the agent moves `vault.kv` aside and runs
/// `init` with a passphrase of its own. Refused while the broker runs unlocked, and nothing is
/// created; the human's vault, moved back, still opens with the human's passphrase.
#[test]
fn init_over_a_vault_moved_aside_while_unlocked_is_refused_and_creates_nothing() {
    let h = Home::new();
    let value = fresh_value();
    h.set("demo", "API_TOKEN", &value);
    let vault = h.path().join("vault.kv");
    let aside = h.path().join("elsewhere.kv");
    std::fs::rename(&vault, &aside).unwrap();
    let audit_before = h.audit_text();

    let o = h.run_stdin(
        &["init", "--passphrase-stdin", "--kdf-memory-kib", "19456"],
        "the agents own passphrase\n",
    );
    let err = text(&o.stderr);
    assert_ne!(
        o.status.code(),
        Some(0),
        "init succeeded: {}",
        text(&o.stdout)
    );
    assert!(
        err.contains("unlocked") && err.contains("nothing was created"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("move it back") && err.contains("keyveil lock"),
        "{err}"
    );
    assert!(!vault.exists(), "init created a vault");
    assert_eq!(h.audit_text(), audit_before, "the audit log changed");

    // Moved back, the human's vault is the one served, and it still opens with their passphrase.
    std::fs::rename(&aside, &vault).unwrap();
    h.ok(&["lock"]);
    let u = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(u.status.success(), "{}", text(&u.stderr));
    let shown = h.ok(&["env", "show", "demo"]);
    assert!(shown.contains("API_TOKEN"), "{shown}");
    let v = h.ok(&["audit", "verify"]);
    assert!(v.contains("audit log OK"), "{v}");
}

/// A log replaced while the broker runs (an editor or `sed -i` writes a new file): `lock` says
/// what happened and what to do, not "is the disk full?"; the check itself is unchanged (the
/// replaced file gets no entry, and `audit verify` still fails on the edit).
#[test]
fn lock_after_the_audit_log_was_replaced_says_so_not_disk_full() {
    let h = audited_home();
    let p = h.path().join("audit.jsonl");
    let edited = std::fs::read_to_string(&p)
        .unwrap()
        .replacen("\"other\"", "\"0ther\"", 1);
    let tmp = h.path().join("audit.jsonl.edit");
    std::fs::write(&tmp, &edited).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    let o = h.run(&["lock"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(!err.contains("disk full"), "{err}");
    assert!(
        err.contains("is no longer the file keyveil was writing to")
            && err.contains("another file was put in its place")
            && err.contains("hint: after `keyveil unlock`, `keyveil audit verify`"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&p).unwrap(),
        edited,
        "the replaced log was written to"
    );
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_ne!(h.run(&["audit", "verify"]).status.code(), Some(0));
}

/// A line edited in place (same file) is found at unlock against the vault's seal: unlock warns,
/// and so does the next lock, naming the line, without "is the disk full?".
#[test]
fn a_log_that_does_not_verify_is_named_at_unlock_and_at_lock() {
    let h = audited_home();
    h.ok(&["lock"]);
    let p = h.path().join("audit.jsonl");
    let t = std::fs::read_to_string(&p).unwrap();
    let line = t.lines().position(|l| l.contains("\"other\"")).unwrap() + 1;
    let edited = t.replacen("\"other\"", "\"0ther\"", 1);
    let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    std::io::Write::write_all(&mut f, edited.as_bytes()).unwrap();
    drop(f);
    let o = h.run_stdin(&["unlock", "--passphrase-stdin"], &format!("{PASS}\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("does not verify against the checkpoint the vault sealed")
            && err.contains(&format!("line {line}"))
            && err.contains("hint: `keyveil audit verify`"),
        "{err}"
    );
    let o = h.run(&["lock"]);
    assert!(o.status.success());
    let err = text(&o.stderr);
    assert!(!err.contains("disk full"), "{err}");
    assert!(
        err.contains("does not verify against the checkpoint the vault sealed")
            && err.contains("keyveil audit verify"),
        "{err}"
    );
}
