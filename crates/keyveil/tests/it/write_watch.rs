//! The write-side scan from a watch of the working directory (issue 21, item 3;
//! `docs/write-side.md`, "Watched working directories"), through the real broker.
//!
//! Each write kind runs twice under one standing grant in the same folder, with the same
//! fixture: first walked (the first run in a folder has no watch), then from the watch built
//! after it. Both runs must report exactly the same findings, and the second must say (in its
//! `run_end` audit entry) how it was scanned: `watched`, or the documented fall-back.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;

/// A value nobody can guess (the scan reports only such values).
pub(crate) fn fresh_value() -> String {
    let mut b = [0u8; 20];
    getrandom::fill(&mut b).unwrap();
    format!("fixture-watched-{}", hex::encode(b))
}

/// Runs `script` with `sh` in `dir` (the test's own fixture work, not a granted run).
pub(crate) fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "fixture script failed: {script}");
}

/// Removes everything inside `dir`.
pub(crate) fn empty(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// What a run reported, one line per finding (variable, path, form, action), sorted.
pub(crate) fn findings(o: &std::process::Output) -> Vec<String> {
    let mut v: Vec<String> = text(&o.stderr)
        .lines()
        .filter(|l| l.contains("wrote the value of"))
        .map(|l| l.trim().to_owned())
        .collect();
    v.sort();
    v
}

/// How the last run was scanned (its `run_end` entry's `write_scan`).
pub(crate) fn last_how(h: &Home) -> String {
    let audit = h.audit_text();
    let end = audit
        .lines()
        .rev()
        .find(|l| l.contains("\"run_end\""))
        .expect("no run_end");
    let v: serde_json::Value = serde_json::from_str(end).unwrap();
    v["write_scan"].as_str().unwrap_or_default().to_owned()
}

/// Waits (at most 30 s) until `status` shows `n` watched folders.
pub(crate) fn wait_watched(h: &Home, n: u64) {
    let t0 = Instant::now();
    while h.json(&["status", "--json"])["watched_folders"].as_u64() != Some(n) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{n} watched folders never showed in status"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fixture's files are older than the scan's 2 s slack for both runs.
pub(crate) fn age() {
    std::thread::sleep(Duration::from_millis(2_300));
}

/// A home with `API_TOKEN`, a folder with `setup` done in it, and a standing any-command
/// grant approved for that folder by a first run of `first` (walked: no watch yet).
pub(crate) struct Case {
    pub(crate) h: Home,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) value: String,
}

impl Case {
    pub(crate) fn new(setup: &str) -> Case {
        let h = Home::new();
        let value = fresh_value();
        h.set("demo", "API_TOKEN", &value);
        let dir = tempfile::Builder::new()
            .prefix("kvwatch")
            .tempdir_in("/tmp")
            .unwrap();
        sh(dir.path(), setup);
        Case { h, dir, value }
    }

    pub(crate) fn cwd(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// The first run: approved (any command in this folder, 10 minutes).
    pub(crate) fn first(&self, script: &str) -> std::process::Output {
        let child = self.h.spawn_run(&[
            "run",
            "--env",
            "demo",
            "--cwd",
            self.cwd(),
            "--wait",
            "30",
            "--",
            "sh",
            "-c",
            script,
        ]);
        let id = self.h.wait_request();
        let a = self.h.approve(id, &["--any-command", "--ttl", "10m"]);
        assert!(a.status.success(), "approve failed: {}", text(&a.stderr));
        wait_output(child, Duration::from_secs(60))
    }

    /// A later run under the grant.
    pub(crate) fn again(&self, script: &str) -> std::process::Output {
        self.h.run(&[
            "run",
            "--env",
            "demo",
            "--cwd",
            self.cwd(),
            "--wait",
            "1",
            "--",
            "sh",
            "-c",
            script,
        ])
    }

    /// No output anywhere holds the value.
    pub(crate) fn no_value_in(&self, o: &std::process::Output) {
        for enc in encodings(&self.value) {
            assert!(!contains(&o.stdout, &enc) && !contains(&o.stderr, &enc));
        }
    }
}

/// `script` run walked, then (the folder reset to `setup`) run again from the watch: the two
/// runs' findings and how the second was scanned.
pub(crate) fn walked_then_watched(
    setup: &str,
    script: &str,
) -> (Case, Vec<String>, Vec<String>, String) {
    let c = Case::new(setup);
    age();
    let o = c.first(script);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        last_how(&c.h).starts_with("walked"),
        "the first run in a folder is walked: {}",
        last_how(&c.h)
    );
    let walk = findings(&o);
    c.no_value_in(&o);
    wait_watched(&c.h, 1);
    empty(c.dir.path());
    sh(c.dir.path(), setup);
    age();
    let o = c.again(script);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    c.no_value_in(&o);
    let how = last_how(&c.h);
    (c, walk, findings(&o), how)
}

/// Asserts the same findings, that they name each of `names`, and that the second run was
/// scanned `how`.
pub(crate) fn check(
    walk: &[String],
    watched: &[String],
    how: &str,
    want_how: &str,
    names: &[&str],
) {
    assert_eq!(how, want_how, "how the second run was scanned");
    assert_eq!(walk, watched, "the watch found other things than the walk");
    for n in names {
        assert!(
            watched.iter().any(|l| l.contains(n)),
            "{n} was not reported: {watched:?}"
        );
    }
}

#[test]
fn watched_scan_finds_created_files_as_the_walk_does() {
    let (c, walk, watched, how) = walked_then_watched(
        "mkdir -p src/lib && printf 'fn main() {}\\n' > src/main.rs",
        r#"printf 'token=%s\n' "$API_TOKEN" > created.env
mkdir -p new/deep/er && printf %s "$API_TOKEN" | base64 > new/deep/er/enc.b64
printf '{"t": "%s"}\n' "$API_TOKEN" > src/lib/conf.json"#,
    );
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &["created.env", "new/deep/er/enc.b64", "src/lib/conf.json"],
    );
    // The watch is kept while the grant lives, and dropped with it.
    assert_eq!(c.h.json(&["status", "--json"])["watched_folders"], 1);
    c.h.ok(&["revoke", "--all"]);
    wait_watched(&c.h, 0);
}

#[test]
fn watched_scan_finds_files_rewritten_in_place_as_the_walk_does() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p repo/.git && printf '[core]\\n' > repo/.git/config \
         && printf '%0512d' 0 > repo/blob.bin",
        r#"printf '[remote "o"]\n\turl = https://u:%s@h/r\n' "$API_TOKEN" > repo/.git/config
printf %s "$API_TOKEN" | dd of=repo/blob.bin bs=1 seek=100 conv=notrunc 2>/dev/null"#,
    );
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &["repo/.git/config", "repo/blob.bin"],
    );
}

#[test]
fn watched_scan_finds_appended_files_as_the_walk_does() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p logs && printf 'started\\n' > logs/app.log && printf 'ls\\n' > .history",
        r#"printf 'token %s\n' "$API_TOKEN" >> logs/app.log
printf 'export T=%s\n' "$API_TOKEN" >> .history"#,
    );
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &["logs/app.log", ".history"],
    );
}

#[test]
fn watched_scan_finds_files_and_folders_renamed_in_as_the_walk_does() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p dest",
        r#"t=$(mktemp /tmp/kvw-file.XXXXXX) && printf %s "$API_TOKEN" > "$t" && mv "$t" dest/moved-in.txt
d=$(mktemp -d /tmp/kvw-dir.XXXXXX) && mkdir "$d/inner" && printf %s "$API_TOKEN" > "$d/inner/x.txt" && mv "$d" dir-in"#,
    );
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &["dest/moved-in.txt", "dir-in/inner/x.txt"],
    );
}

/// A file written through a new hard link: the walk reports every name of the inode in the
/// tree (its ctime moved), events name only the one written through, so the watched scan
/// gives way to the walk and the findings are the same.
#[test]
fn a_write_through_a_new_hard_link_falls_back_to_the_walk_with_the_same_findings() {
    let (_c, walk, watched, how) = walked_then_watched(
        "printf 'plain\\n' > orig.txt",
        r#"ln orig.txt alias.txt && printf '%s\n' "$API_TOKEN" >> alias.txt
t=$(mktemp /tmp/kvw-link.XXXXXX) && printf %s "$API_TOKEN" > "$t" && ln "$t" linked-in.txt && rm "$t""#,
    );
    check(
        &walk,
        &watched,
        &how,
        "walked: a changed file has more than one name",
        &["orig.txt", "alias.txt", "linked-in.txt"],
    );
}

/// A run that floods the kernel's event queue (more events than
/// `fs.inotify.max_queued_events`) to lose the one that matters: the scan falls back to the
/// walk and still reports the value; the watch is built again and the next run is watched.
#[test]
fn an_overflowed_event_queue_falls_back_to_the_walk_and_the_watch_is_rebuilt() {
    let c = Case::new("mkdir many");
    let o = c.first("true");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    wait_watched(&c.h, 1);
    // In a folder that is watched already (a folder the run creates is walked whole, and
    // watched only once the run has ended: its entries raise no event).
    let flood = r#"n=$(( $(cat /proc/sys/fs/inotify/max_queued_events) + 500 ))
(cd many && seq 1 "$n" | xargs touch)
printf %s "$API_TOKEN" > after-flood.txt"#;
    let o = c.again(flood);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(last_how(&c.h), "walked: the event queue overflowed");
    let f = findings(&o);
    assert!(f.iter().any(|l| l.contains("after-flood.txt")), "{f:?}");
    c.no_value_in(&o);
    wait_watched(&c.h, 1);
    let o = c.again(r#"printf %s "$API_TOKEN" > many/7"#);
    assert_eq!(last_how(&c.h), "watched");
    let f = findings(&o);
    assert!(f.iter().any(|l| l.contains("many/7")), "{f:?}");
}

/// Past the share of the user's inotify watch limit (made small here: debug builds read it
/// from the home's `watch-limit` file) the folder is not watched: every run is walked and
/// still reports what it wrote.
#[test]
fn a_folder_over_the_watch_limit_is_walked_at_every_run() {
    let c = Case::new("mkdir -p a b c d/e");
    std::fs::write(c.h.path().join("watch-limit"), "8").unwrap();
    let o = c.first("true");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let t0 = Instant::now();
    loop {
        let o = c.again(r#"printf %s "$API_TOKEN" > d/e/leak.txt"#);
        let f = findings(&o);
        assert!(f.iter().any(|l| l.contains("d/e/leak.txt")), "{f:?}");
        let how = last_how(&c.h);
        if how != "walked: the watch of this folder is being built" {
            assert!(
                how.starts_with("walked: this folder cannot be watched"),
                "{how}"
            );
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never built");
    }
    assert_eq!(c.h.json(&["status", "--json"])["watched_folders"], 0);
}

/// A file written and renamed out of the tree and back: it lost a name in the tree for a while
/// (it may have had another one there, which no event would name), so the run is walked; the
/// findings are the walk's.
#[test]
fn a_written_file_moved_out_of_the_tree_and_back_is_walked() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p d",
        r#"printf %s "$API_TOKEN" > a1.txt && mv a1.txt /tmp/kvw-out-$$ && mv /tmp/kvw-out-$$ a1.txt"#,
    );
    check(
        &walk,
        &watched,
        &how,
        "walked: a file written during the run lost a name",
        &["a1.txt"],
    );
}

/// An agent that knows the scan is watched tries to hide a write from the watcher: written
/// in a folder created and removed during the
/// run, a nested folder created and filled before its watch can exist, a file dated in the
/// past, an in-place write with the modification time put back, and a write that is the very
/// last thing the run does after a burst of others. Every one is reported, from the watch,
/// as the walk reports it.
#[test]
fn writes_hidden_from_the_watcher_are_still_reported() {
    let (_c, walk, watched, how) = walked_then_watched(
        "mkdir -p deep/d1/d2 && printf 'keep\\n' > deep/d1/d2/keep.txt",
        r#"mkdir -p tmpd/x && printf %s "$API_TOKEN" > tmpd/x/a2.txt && mv tmpd/x/a2.txt a2.txt && rm -rf tmpd
mkdir -p n1/n2/n3 && printf %s "$API_TOKEN" > n1/n2/n3/a3.txt
printf %s "$API_TOKEN" > a4.txt && touch -d 2001-01-01 a4.txt
touch -r deep/d1/d2/keep.txt /tmp/kvw-ref-$$
printf %s "$API_TOKEN" | dd of=deep/d1/d2/keep.txt conv=notrunc 2>/dev/null
touch -r /tmp/kvw-ref-$$ deep/d1/d2/keep.txt && rm /tmp/kvw-ref-$$
for i in $(seq 1 200); do printf x > "burst-$i.txt"; done
printf %s "$API_TOKEN" > zz-last.txt"#,
    );
    check(
        &walk,
        &watched,
        &how,
        "watched",
        &[
            "a2.txt",
            "n1/n2/n3/a3.txt",
            "a4.txt",
            "deep/d1/d2/keep.txt",
            "zz-last.txt",
        ],
    );
}
