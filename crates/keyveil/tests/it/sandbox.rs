//! `keyveil agent -- CMD`: the agent sandbox. While a granted process started by the broker is
//! live (and its environment readable from outside, the documented limit), an agent inside the
//! sandbox finds the value in no `/proc/*/environ`, cannot read the vault, cannot write the
//! audit log, cannot unmount its way out, and still reaches the broker.

use std::time::{Duration, Instant};

use crate::harness::*;

const TOKEN: &str = "tok_sandbox_Hq7rW2mXv9Lp4ZcN";

/// What the agent does inside the sandbox; `$1` is the keyveil binary.
const PROBE: &str = r#"
echo "procs=$(ls /proc | grep -c '^[0-9]')"
echo "--- environs"
for e in /proc/[0-9]*/environ; do tr '\0' '\n' < "$e" 2>/dev/null; done
echo "--- end"
echo "vault=$(cat "$KEYVEIL_HOME/vault.kv" 2>&1 | head -c 300 | tr '\n' ' ')"
echo "home=$(ls -A "$KEYVEIL_HOME" | tr '\n' ' ')"
"$1" status --json >/dev/null 2>&1 && echo status=ok || echo status=failed
umount /proc 2>/dev/null && echo umount_proc=ok || echo umount_proc=refused
unshare -r -m sh -c 'umount /proc' 2>/dev/null && echo nested_umount_proc=ok || echo nested_umount_proc=refused
unshare -r -m sh -c "umount $KEYVEIL_HOME" 2>/dev/null && echo nested_umount_home=ok || echo nested_umount_home=refused
(echo forged >> "$KEYVEIL_HOME/audit.jsonl") 2>/dev/null && echo audit_write=ok || echo audit_write=refused
test -s "$KEYVEIL_HOME/audit.jsonl" && echo audit_read=ok || echo audit_read=failed
(: > "$KEYVEIL_HOME/run/broker.sock.rogue") 2>/dev/null && echo run_write=ok || echo run_write=refused
(: >> "$1") 2>/dev/null && echo exe_write=ok || echo exe_write=refused
(cp /bin/true "$1.new" && mv -f "$1.new" "$1") 2>/dev/null && echo exe_replace=ok || echo exe_replace=refused
rm -f "$1.new"
exit 7
"#;

fn userns_available() -> bool {
    std::process::Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--mount",
            "--mount-proc",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Pids (outside) whose environment holds `needle`.
fn pids_with_env_value(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && contains(&env, needle)
        {
            out.push(pid);
        }
    }
    out
}

#[test]
fn inside_the_sandbox_a_live_granted_run_is_invisible() {
    if !userns_available() {
        // Nothing to test where the kernel refuses user namespaces (the refusal itself is
        // covered by the next test).
        return;
    }
    let h = Home::new();
    h.set("demo", "API_TOKEN", TOKEN);
    let run = h.spawn_run(&["run", "--env", "demo", "--wait", "30", "--", "sleep", "300"]);
    let id = h.wait_request();
    assert!(h.approve(id, &[]).status.success());

    // Outside the sandbox the granted child's environment is readable (the limit the sandbox
    // exists for): wait until it is live.
    let t0 = Instant::now();
    let child = loop {
        if let Some(p) = pids_with_env_value(TOKEN).first() {
            break *p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the run never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    };

    // The sandbox is started through a copy of keyveil, because the probe tries to overwrite
    // the executable it runs under (the test binary must survive a failure).
    let copy_dir = tempfile::Builder::new()
        .prefix("kvx")
        .tempdir_in("/tmp")
        .unwrap();
    let copy = copy_dir.path().join("keyveil");
    std::fs::copy(bin(), &copy).unwrap();
    let kv = copy.to_str().unwrap();
    let o = std::process::Command::new(&copy)
        .args(["agent", "--", "sh", "-c", PROBE, "sh", kv])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", h.path())
        .env("KEYVEIL_HOME", h.path())
        .env("LANG", "C.UTF-8")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(7), "{out}\n{}", text(&o.stderr));

    // The run was live for the whole probe (it sleeps 300 s: a loaded machine may take a while;
    // it is revoked at the end).
    assert!(
        pids_with_env_value(TOKEN).contains(&child),
        "the granted run ended before the probe finished"
    );

    for enc in encodings(TOKEN) {
        assert!(
            !contains(&o.stdout, &enc),
            "the value leaked into the sandbox:\n{out}"
        );
        assert!(!contains(&o.stderr, &enc));
    }
    let environs = out
        .split("--- environs")
        .nth(1)
        .and_then(|s| s.split("--- end").next())
        .unwrap_or_default();
    assert!(
        environs.contains("KEYVEIL_HOME="),
        "the probe read no environment at all:\n{out}"
    );
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs < 10, "the sandbox sees {procs} processes:\n{out}");
    for want in [
        "vault=cat: ",
        "No such file or directory",
        "status=ok",
        "umount_proc=refused",
        "nested_umount_proc=refused",
        "nested_umount_home=refused",
        "audit_write=refused",
        "audit_read=ok",
        "run_write=refused",
        "exe_write=refused",
        "exe_replace=refused",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let home_line = out.lines().find(|l| l.starts_with("home=")).unwrap();
    assert_eq!(home_line.trim(), "home=audit.jsonl run", "{out}");

    // The real audit log is untouched by the forged append, and still verifies.
    assert!(!h.audit_text().contains("forged"));
    h.ok(&["audit", "verify"]);
    h.ok(&["revoke", "--all"]);
    let _ = wait_output(run, Duration::from_secs(20));
}

#[test]
fn without_unshare_the_error_says_what_to_install() {
    let h = Home::empty();
    let o = h
        .cmd(&["agent", "--", "true"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("cannot find `unshare`"), "{err}");
    assert!(err.contains("hint: install util-linux"), "{err}");
}
