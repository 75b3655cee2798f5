#![allow(clippy::unwrap_used)]
use super::*;
use std::fs::File;

#[test]
fn resolution_ignores_relative_path_entries_and_pins_content() {
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("tool");
    std::fs::write(&tool, "#!/bin/sh\necho one\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("./bin:{}", bin.display());
    let r = resolve("tool", &path, d.path()).unwrap();
    assert_eq!(r, std::fs::canonicalize(&tool).unwrap());
    assert!(
        resolve("tool", "./bin", d.path()).is_err(),
        "relative PATH entries are ignored"
    );
    let pin = pin_file(&r).unwrap();
    open_verified(&pin).unwrap();
    std::fs::write(&tool, "#!/bin/sh\necho two\n").unwrap();
    match open_verified(&pin) {
        Err(PinError::Changed { .. }) => {}
        other => panic!("expected Changed, got {other:?}"),
    }
}

#[test]
fn npm_inputs_show_the_script_and_detect_changes() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("package.json"),
        r#"{"scripts":{"test":"jest"}}"#,
    )
    .unwrap();
    let argv: Vec<String> = vec!["npm".into(), "test".into()];
    let ins = inputs(&argv, d.path(), Path::new("/usr/bin/npm"), None, "");
    assert_eq!(ins[0].role, "package.json");
    assert_eq!(ins[0].detail.as_deref(), Some("script \"test\" runs: jest"));
    check_inputs(&ins).unwrap();
    std::fs::write(
        d.path().join("package.json"),
        r#"{"scripts":{"test":"curl x"}}"#,
    )
    .unwrap();
    assert!(matches!(
        check_inputs(&ins),
        Err(PinError::InputsChanged(_))
    ));
}

#[test]
fn script_operands_are_pinned_but_inline_code_is_not() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("ci.sh"), "echo ci\n").unwrap();
    let a: Vec<String> = vec!["bash".into(), "-e".into(), "ci.sh".into()];
    // The script, and its directory (the files it may source).
    let roles: Vec<String> = inputs(&a, d.path(), Path::new("/bin/bash"), None, "")
        .into_iter()
        .map(|p| p.role)
        .collect();
    assert_eq!(roles, ["script", "script-dir"]);
    let b: Vec<String> = vec!["sh".into(), "-c".into(), "ci.sh".into()];
    assert!(inputs(&b, d.path(), Path::new("/bin/sh"), None, "").is_empty());
}

#[test]
fn requester_writable_locations() {
    let cwd = Path::new("/work/app");
    assert!(requester_writable(
        Path::new("/work/app/node_modules/.bin/npm"),
        cwd,
        None
    ));
    assert!(requester_writable(
        Path::new("/home/u/.local/bin/x"),
        cwd,
        None
    ));
    assert!(requester_writable(
        Path::new("/home/u/bin/x"),
        cwd,
        Some(Path::new("/home/u"))
    ));
    assert!(requester_writable(Path::new("/tmp/x"), cwd, None));
    assert!(!requester_writable(
        Path::new("/usr/bin/env"),
        cwd,
        Some(Path::new("/home/u"))
    ));
}

fn sv(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn roles(argv: &[&str], cwd: &Path, exe: &str) -> Vec<(String, String)> {
    inputs(&sv(argv), cwd, Path::new(exe), None, "/usr/bin:/bin")
        .into_iter()
        .filter(|p| !crate::pin::path_dirs::DIR_ROLES.contains(&p.role.as_str()))
        .map(|p| {
            let name = Path::new(&p.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (p.role, name)
        })
        .collect()
}

fn has(r: &[(String, String)], role: &str, name: &str) -> bool {
    r.iter().any(|(a, b)| a == role && b == name)
}

#[test]
fn options_with_arguments_are_never_taken_for_the_script() {
    let d = tempfile::tempdir().unwrap();
    for f in [
        "x.sh", "x.py", "t.pl", "t.rb", "app.js", "r.js", "a.lua", "m.lua",
    ] {
        std::fs::write(d.path().join(f), "x\n").unwrap();
    }
    let p = d.path();
    for (argv, exe, want) in [
        (&["bash", "-o", "pipefail", "x.sh"][..], "/bin/bash", "x.sh"),
        (&["bash", "-eo", "pipefail", "x.sh"], "/bin/bash", "x.sh"),
        (&["bash", "--rcfile", "r.js", "x.sh"], "/bin/bash", "x.sh"),
        (
            &["python3", "-W", "error", "x.py"],
            "/usr/bin/python3",
            "x.py",
        ),
        (
            &["python3", "-X", "dev", "-u", "x.py"],
            "/usr/bin/python3",
            "x.py",
        ),
        (&["perl", "-I", "lib", "t.pl"], "/usr/bin/perl", "t.pl"),
        (&["perl", "-Mstrict", "-w", "t.pl"], "/usr/bin/perl", "t.pl"),
        (&["ruby", "-r", "json", "t.rb"], "/usr/bin/ruby", "t.rb"),
        (
            &["node", "--title", "x", "app.js"],
            "/usr/bin/node",
            "app.js",
        ),
        (&["lua", "-l", "m", "a.lua"], "/usr/bin/lua", "a.lua"),
    ] {
        let r = roles(argv, p, exe);
        assert!(has(&r, "script", want), "{argv:?}: {r:?}");
    }
    // Files an option loads code from are pinned too.
    let r = roles(
        &["node", "--require", "./r.js", "app.js"],
        p,
        "/usr/bin/node",
    );
    assert!(
        has(&r, "script-option", "r.js") && has(&r, "script", "app.js"),
        "{r:?}"
    );
    let r = roles(&["lua", "-l", "m", "a.lua"], p, "/usr/bin/lua");
    assert!(has(&r, "script-option", "m.lua"), "{r:?}");
    // `bash x.sh -c y`: `-c` after the operand is the script's argument, not inline code.
    let r = roles(&["bash", "x.sh", "-c", "y"], p, "/bin/bash");
    assert!(has(&r, "script", "x.sh"), "{r:?}");
    // `python3 -m mod x.py`: a module run, `x.py` is its argument.
    let r = roles(
        &["python3", "-m", "json.tool", "x.py"],
        p,
        "/usr/bin/python3",
    );
    assert!(!has(&r, "script", "x.py"), "{r:?}");
    // `perl -S` and `php -d auto_prepend_file=` cannot be pinned.
    let r = roles(&["perl", "-S", "t.pl"], p, "/usr/bin/perl");
    assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
    let r = roles(
        &["php", "-d", "auto_prepend_file=/tmp/x", "x.py"],
        p,
        "/usr/bin/php",
    );
    assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
}

#[test]
fn wrappers_are_seen_through_or_refused() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("x.sh"), "echo\n").unwrap();
    std::fs::create_dir(d.path().join("sub")).unwrap();
    std::fs::write(d.path().join("sub/y.sh"), "echo\n").unwrap();
    let p = d.path();
    for argv in [
        &["timeout", "60", "sh", "x.sh"][..],
        &[
            "timeout",
            "-s",
            "KILL",
            "--kill-after=5",
            "60",
            "sh",
            "x.sh",
        ],
        &["nice", "-n", "5", "sh", "x.sh"],
        &["nice", "-5", "sh", "x.sh"],
        &["nohup", "sh", "x.sh"],
        &["env", "-u", "X", "CI=1", "sh", "x.sh"],
        &["stdbuf", "-oL", "-e", "0", "sh", "x.sh"],
        &["setsid", "-w", "sh", "x.sh"],
        &["time", "-f", "%e", "sh", "x.sh"],
        &["ionice", "-c", "3", "sh", "x.sh"],
        &["taskset", "-c", "0", "sh", "x.sh"],
        &["chrt", "-o", "0", "sh", "x.sh"],
        &["flock", "/tmp/l", "sh", "x.sh"],
        &["nice", "timeout", "5", "env", "sh", "x.sh"],
    ] {
        let exe = format!("/usr/bin/{}", argv[0]);
        let r = roles(argv, p, &exe);
        assert!(has(&r, "script", "x.sh"), "{argv:?}: {r:?}");
        assert!(
            has(&r, "wrapped-executable", "sh")
                || has(&r, "wrapped-executable", "dash")
                || r.iter().any(|(a, _)| a == "wrapped-executable"),
            "{argv:?}: {r:?}"
        );
    }
    let r = roles(&["env", "-C", "sub", "sh", "y.sh"], p, "/usr/bin/env");
    assert!(has(&r, "script", "y.sh"), "{r:?}");
    for argv in [
        &["env", "LD_PRELOAD=/tmp/x.so", "sh", "x.sh"][..],
        &["env", "-S", "sh x.sh"],
        &["timeout", "--bogus", "5", "sh", "x.sh"],
        &["xargs", "-n", "1", "sh"],
    ] {
        let exe = format!("/usr/bin/{}", argv[0]);
        let r = roles(argv, p, &exe);
        assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{argv:?}: {r:?}");
    }
    // Inline code and pid modes run no pinned command.
    let r = roles(&["flock", "/tmp/l", "-c", "echo"], p, "/usr/bin/flock");
    assert!(r.is_empty(), "{r:?}");
}

#[test]
fn what_cannot_be_pinned_is_marked_never_skipped() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let fifo = p.join("f.sh");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let t0 = std::time::Instant::now();
    // Script operand, text input and executable: none blocks on the pipe.
    let r = roles(&["sh", "f.sh"], p, "/bin/sh");
    assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
    let (m, _) = pin_input_text("git-config", &fifo, |_| None).unwrap();
    assert_eq!(m.role, UNPINNABLE);
    assert!(read_for_requester(&fifo).is_none());
    assert_eq!(pin_input("x", &fifo, None).unwrap().role, UNPINNABLE);
    assert!(pin_file(&fifo).is_err());
    assert!(t0.elapsed() < std::time::Duration::from_secs(2));
    for op in ["/dev/stdin", "/proc/self/fd/0", "/dev/null"] {
        let r = roles(&["bash", op], p, "/bin/bash");
        assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{op}: {r:?}");
    }
    let _l = std::os::unix::net::UnixListener::bind(p.join("s.sh")).unwrap();
    let r = roles(&["sh", "s.sh"], p, "/bin/sh");
    assert!(r.iter().any(|(a, _)| a == UNPINNABLE), "{r:?}");
    // A pin marker never passes a check.
    assert!(check_inputs(&[unpinnable(&fifo, "a FIFO")]).is_err());
}

#[test]
fn big_inputs_fail_closed() {
    let d = tempfile::tempdir().unwrap();
    let big = d.path().join("big.sh");
    let f = File::create(&big).unwrap();
    f.set_len(MAX_INPUT + 1).unwrap();
    drop(f);
    // Too big to hash: pinned by identity, which a same-size rewrite changes (ctime).
    let pin = pin_input("script", &big, None).unwrap();
    assert!(pin.sha256.starts_with("identity:"), "{}", pin.sha256);
    check_inputs(std::slice::from_ref(&pin)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.set_len(MAX_INPUT + 1).unwrap();
    std::fs::write(&big, vec![b'#'; (MAX_INPUT + 1) as usize]).unwrap();
    assert!(check_inputs(&[pin]).is_err());
    // Too big to read and quote: a marker, never a pin of unread text.
    let (m, t) = pin_input_text("git-config", &big, |_| None).unwrap();
    assert_eq!(m.role, UNPINNABLE);
    assert!(t.is_empty());
}

#[test]
fn a_file_written_during_a_run_shows_even_when_restored() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("ci.sh");
    std::fs::write(&s, "echo one\n").unwrap();
    let pins = vec![pin_input("script", &s, None).unwrap()];
    let st = stamps(&pins);
    assert_eq!(changed_since(&st), None);
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&s, "echo two\n").unwrap();
    std::fs::write(&s, "echo one\n").unwrap();
    check_inputs(&pins).unwrap();
    assert!(changed_since(&st).is_some());
}

#[test]
fn sealed_files_are_scripts_and_a_shebang_executable_never_a_binary() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("ci.sh");
    std::fs::write(&s, "echo one\n").unwrap();
    let cfg = d.path().join("package.json");
    std::fs::write(&cfg, "{}").unwrap();
    let pins = vec![
        pin_input("script", &s, None).unwrap(),
        pin_input("package.json", &cfg, None).unwrap(),
    ];
    let as_file = |p: &Path| FilePin {
        path: p.to_string_lossy().into_owned(),
        dev: 0,
        ino: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
        sha256: pins[0].sha256.clone(),
    };
    let sealed = sealed_files(None, &pins).unwrap();
    assert_eq!(sealed, vec![(pins[0].path.clone(), pins[0].sha256.clone())]);
    // A `#!` executable is sealed too; a binary is not.
    let run = d.path().join("run");
    std::fs::write(&run, "#!/bin/sh\necho two\n").unwrap();
    assert_eq!(sealed_files(Some(&as_file(&run)), &pins).unwrap().len(), 2);
    let bin = d.path().join("bin");
    std::fs::write(&bin, b"\x7fELF....").unwrap();
    assert_eq!(sealed_files(Some(&as_file(&bin)), &pins).unwrap().len(), 1);
}

/// A file the user could write or replace, wherever it lies: its own, in a directory of its
/// own (even deep below), in a directory its group may write, or in a sticky directory only
/// when the entry is its own. Run as root, with a made-up uid owning what it should.
#[test]
fn writable_by_sees_a_users_own_directories_anywhere() {
    use super::files::writable_by;
    use std::os::unix::fs::PermissionsExt;
    if rustix::process::geteuid().as_raw() != 0 {
        return; // chown needs root; the rule itself is checked where it can be
    }
    let (me, group) = (4_242_001u32, 4_242_001u32);
    let t = tempfile::tempdir_in("/run").unwrap();
    let set = |p: &Path, mode: u32, owner: Option<u32>| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(p, owner, owner).unwrap();
    };
    // root's directory (0755), then one of the user's, then root's file in it.
    let root_dir = t.path().join("sys");
    let mine = root_dir.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    let exe = mine.join("docker");
    std::fs::write(&exe, b"x").unwrap();
    set(t.path(), 0o755, Some(0));
    set(&root_dir, 0o755, Some(0));
    set(&mine, 0o700, Some(me));
    set(&exe, 0o755, Some(0));
    assert!(writable_by(&exe, me, &[group]), "a directory of the user's");
    assert!(!writable_by(&exe, me + 1, &[group + 1]), "another user's");
    // The user's own file in root's directory.
    set(&mine, 0o755, Some(0));
    set(&exe, 0o755, Some(me));
    assert!(writable_by(&exe, me, &[group]));
    // A group-writable directory of the user's group.
    set(&exe, 0o755, Some(0));
    assert!(!writable_by(&exe, me, &[group]));
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o775)).unwrap();
    std::os::unix::fs::chown(&mine, Some(0), Some(group)).unwrap();
    assert!(writable_by(&exe, me, &[group]));
    // The same directory's group as a supplementary group of the user's only.
    assert!(writable_by(&exe, me, &[group + 7, group]));
    assert!(!writable_by(&exe, me, &[group + 7]));
    // A sticky world-writable directory: root's entry is safe, the user's own is not.
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(&mine, Some(0), Some(0)).unwrap();
    assert!(!writable_by(&exe, me, &[group]));
    set(&exe, 0o755, Some(me));
    assert!(writable_by(&exe, me, &[group]));
    // System executables are not.
    assert!(!writable_by(Path::new("/bin/sh"), me, &[group]));
}
