//! Git repositories: every object, placed at a commit and path.
//!
//! Objects are read by git itself (`git cat-file --batch-all-objects --batch`): loose and
//! packed, deltas resolved, reachable from a branch, a tag, the reflog or the stash, or from
//! nothing (a dropped stash, an amended commit not yet collected). Each object is matched in
//! windows of [`WINDOW`] bytes that overlap by the redactor's longest pattern, so memory stays
//! bounded whatever the object's size. Found objects are then placed: `git rev-list --objects
//! --all --reflog` gives a path, one walk of `git log --all --reflog -m --raw -t` the commits
//! that add or remove them. Both run for every repository, found or not, and no command line
//! names an object: the agent reads every process's arguments in `/proc`.
//!
//! git runs with no system or global configuration, no replace objects, no terminal prompt,
//! no optional locks, no lazy fetch or other transport, no signature checker and no hooks or
//! file-system monitor (a repository's own config is the agent's to write); the commands used run no diff driver,
//! pager or hook.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keyveil_redact::Redactor;

pub(super) use super::git_run::git;
use super::git_run::{FIRST_OUTPUT, MAX_CHECKED, Watchdog, read_small, refusal};
use super::{Finding, Location, SweepReport};

/// Bytes matched at once from one git object.
pub(crate) const WINDOW: usize = 8 << 20;
/// Deepest directory level searched for repositories below a root.
const MAX_DEPTH: usize = 24;
/// Most directory entries examined while looking for repositories.
const MAX_ENTRIES: u64 = 5_000_000;
/// Commits listed per found object.
const MAX_COMMITS: usize = 5;
/// The git directory of a working tree (`.git`, or what a `.git` file points to), or the
/// repository itself when bare.
pub(crate) fn git_dir(repo: &Path) -> PathBuf {
    let dot = repo.join(".git");
    if dot.is_dir() {
        return dot;
    }
    // Only a regular `.git` file is read (a planted named pipe would block the sweep).
    if std::fs::symlink_metadata(&dot).is_ok_and(|m| m.is_file())
        && let Ok(text) = read_small(&dot)
        && let Some(p) = text.strip_prefix("gitdir:")
    {
        let p = Path::new(p.trim());
        return if p.is_absolute() {
            p.to_path_buf()
        } else {
            repo.join(p)
        };
    }
    repo.to_path_buf()
}

/// Whether `dir` is a bare repository (`HEAD`, `objects/`, `refs/`).
fn is_bare(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// Repositories at or below `roots` (and the one a root is inside of), each once. Symlinks are
/// not followed.
pub(super) fn discover(
    roots: &[PathBuf],
    deadline: Instant,
    report: &mut SweepReport,
) -> Vec<PathBuf> {
    let mut found = BTreeSet::new();
    let mut entries = 0u64;
    for root in roots {
        // The repository a root is inside of (git killed at the deadline: its config may be
        // a planted named pipe).
        if let Some(top) = toplevel(root, deadline) {
            found.insert(top);
        }
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((dir, depth)) = stack.pop() {
            if Instant::now() >= deadline || entries > MAX_ENTRIES {
                report.truncated = true;
                report
                    .notes
                    .push("the search for git repositories was cut short".into());
                return found.into_iter().collect();
            }
            if dir.join(".git").exists() {
                found.insert(dir.clone());
            } else if is_bare(&dir) {
                found.insert(dir.clone());
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                entries += 1;
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() && e.file_name() != ".git" && depth < MAX_DEPTH {
                    stack.push((e.path(), depth + 1));
                }
            }
        }
    }
    found.into_iter().collect()
}

/// Whether anything in the object store of the repository whose git directory is `dir` (its
/// `objects` folder, each folder and file directly in it, in each of its folders (the loose
/// objects), in `objects/pack` and `objects/info`, and the same in every object directory an alternates file or `commondir`
/// names) changed (inode change time) within `window` before now, or cannot be told.
///
/// A found object is placed by no file of its own (a pack holds many), and git keeps no date
/// an agent cannot forge: so every object of a store that changed lately may be the agent's
/// planted guess, and counts once as `recent`, like a file changed lately.
pub(super) fn store_recent(dir: &Path, window: Duration) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let now = std::time::SystemTime::now();
    let fresh = |p: &Path| -> bool {
        let Ok(m) = std::fs::symlink_metadata(p) else {
            return true;
        };
        let Ok(secs) = u64::try_from(m.ctime()) else {
            return true;
        };
        let ctime = std::time::UNIX_EPOCH + Duration::from_secs(secs);
        now.duration_since(ctime).map_or(true, |age| age < window)
    };
    let mut stores = vec![dir.join("objects")];
    // Read without blocking (a named pipe swapped in after git ran); one that is there but
    // cannot be read leaves the store's age unknown: recent.
    let read = |p: &Path| match read_small(p) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    };
    match read(&dir.join("commondir")) {
        Ok(Some(c)) => stores.push(dir.join(c.trim()).join("objects")),
        Ok(None) => {}
        Err(()) => return true,
    }
    let mut seen = BTreeSet::new();
    let mut checked = 0u64;
    while let Some(objects) = stores.pop() {
        if !seen.insert(objects.clone()) || seen.len() > 16 {
            continue;
        }
        if fresh(&objects) {
            return true;
        }
        for sub in [PathBuf::new(), PathBuf::from("pack"), PathBuf::from("info")] {
            let Ok(rd) = std::fs::read_dir(objects.join(&sub)) else {
                continue;
            };
            for e in rd.flatten() {
                checked += 1;
                if checked > MAX_CHECKED || fresh(&e.path()) {
                    return true;
                }
                // A loose object's fan-out folder (`objects/ab`) keeps its change time when a
                // file in it is rewritten in place, and git reads a rewritten loose object
                // without checking its hash: every file in it counts too.
                let name = e.file_name();
                if sub.as_os_str().is_empty()
                    && name != "pack"
                    && name != "info"
                    && e.path().is_dir()
                    && let Ok(inner) = std::fs::read_dir(e.path())
                {
                    for x in inner.flatten() {
                        checked += 1;
                        if checked > MAX_CHECKED || fresh(&x.path()) {
                            return true;
                        }
                    }
                }
            }
        }
        let Ok(alternates) = read(&objects.join("info/alternates")) else {
            return true;
        };
        if let Some(text) = alternates {
            for l in text.lines().take(64).map(str::trim) {
                if !l.is_empty() && !l.starts_with('#') {
                    stores.push(objects.join(l));
                }
            }
        }
    }
    false
}

/// `git rev-parse --show-toplevel` in `dir`, killed at `deadline` (and at most 10 s).
fn toplevel(dir: &Path, deadline: Instant) -> Option<PathBuf> {
    let mut child = git(dir)
        .ok()?
        .args(["rev-parse", "--show-toplevel"])
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let dog = Watchdog::arm(
        &child,
        deadline.min(Instant::now() + Duration::from_secs(10)),
    );
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.by_ref().take(64 << 10).read_to_end(&mut out);
    }
    let _ = child.kill();
    dog.disarm();
    let ok = child.wait().is_ok_and(|s| s.success());
    let top = String::from_utf8_lossy(&out).trim().to_owned();
    (ok && !top.is_empty()).then(|| PathBuf::from(top))
}

/// One object whose bytes hold a value.
struct Hit {
    oid: String,
    kind: String,
    variables: BTreeSet<String>,
}

/// Sweeps every object of `repo`. Findings name the repository, object, commits and path.
pub(super) fn sweep_repo(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    recent: Duration,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
) -> Vec<Finding> {
    // A repository with a named pipe or device where git reads would block git: refused,
    // with a note (the watchdog also kills git at the deadline for what this cannot see, such
    // as a config `include.path` naming a pipe elsewhere).
    if let Some(why) = refusal(&git_dir(repo)) {
        report.skipped += 1;
        report.truncated = true;
        report
            .notes
            .push(format!("repository {}: not read: {why}", repo.display()));
        return Vec::new();
    }
    let hits = match match_objects(repo, redactor, deadline, report, progress) {
        Ok(h) => h,
        Err(e) => {
            report.skipped += 1;
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: cannot read its objects ({e})",
                repo.display()
            ));
            return Vec::new();
        }
    };
    // Both history walks run whether or not anything was found, and name no object on their
    // command line: an agent watching `/proc` for the broker's git processes (their arguments,
    // how many, how long) must not learn which of its planted objects holds a value.
    let paths = paths_of(repo, &hits, deadline);
    let commits = commits_of(repo, &hits, deadline, report);
    // Judged for every repository, found or not (the same work either way).
    let fresh = store_recent(&git_dir(repo), recent);
    let mut out = Vec::new();
    for h in &hits {
        let commits = match h.kind.as_str() {
            "commit" => vec![h.oid.clone()],
            _ => commits.get(&h.oid).cloned().unwrap_or_default(),
        };
        for v in &h.variables {
            out.push(Finding {
                environment: String::new(),
                credential: String::new(),
                variable: v.clone(),
                kind: "git-history".into(),
                location: Location::Git {
                    repo: repo.to_string_lossy().into_owned(),
                    object: h.oid.clone(),
                    object_type: h.kind.clone(),
                    commits: commits.clone(),
                    path: paths.get(&h.oid).cloned(),
                },
                form: "git-object".into(),
                recent: fresh,
            });
        }
    }
    out
}

/// Streams every object of `repo` through the redactor.
fn match_objects(
    repo: &Path,
    redactor: &Redactor,
    deadline: Instant,
    report: &mut SweepReport,
    progress: Option<&crate::scan::Progress>,
) -> std::io::Result<Vec<Hit>> {
    let mut child = git(repo)?
        .args(["cat-file", "--batch-all-objects", "--batch", "--unordered"])
        .stdout(Stdio::piped())
        .spawn()?;
    let dog = Watchdog::arm(&child, deadline);
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| std::io::Error::other("no stdout"))?;
    let mut r = BufReader::with_capacity(1 << 16, stdout);
    let overlap = redactor.max_pattern_len().max(1);
    let mut hits = Vec::new();
    let mut header = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(WINDOW + overlap);
    let mut result = Ok(());
    let mut timed_out = false;
    let mut objects = 0u64;
    loop {
        if Instant::now() >= deadline {
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: out of time while reading objects",
                repo.display()
            ));
            break;
        }
        header.clear();
        match r.read_until(b'\n', &mut header) {
            Ok(0) => break,
            Ok(_) => dog.started(),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        let line = String::from_utf8_lossy(&header).trim_end().to_owned();
        let mut parts = line.split(' ');
        let (Some(oid), Some(kind), Some(size)) = (parts.next(), parts.next(), parts.next()) else {
            // `<oid> missing` and the like: nothing follows.
            continue;
        };
        let Ok(size) = size.parse::<u64>() else {
            result = Err(std::io::Error::other("unexpected output from git cat-file"));
            break;
        };
        report.git_objects += 1;
        objects += 1;
        if let Some(p) = progress {
            p.objects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            p.add(0, size);
        }
        let mut vars = BTreeSet::new();
        let mut left = size;
        buf.clear();
        while left > 0 {
            if Instant::now() >= deadline {
                // One object may be gigabytes (a crafted pack inflates cheaply): stop mid-object.
                timed_out = true;
                break;
            }
            let want = usize::try_from(left).unwrap_or(WINDOW).min(WINDOW);
            let start = buf.len();
            buf.resize(start + want, 0);
            if let Err(e) = r.read_exact(buf.get_mut(start..).unwrap_or_default()) {
                result = Err(e);
                break;
            }
            left -= want as u64;
            report.bytes_scanned += want as u64;
            vars.extend(redactor.find_leaks(&buf));
            // Keep the tail: a value may straddle two windows.
            let keep = buf.len().min(overlap);
            let cut = buf.len() - keep;
            buf.drain(..cut);
        }
        if result.is_err() {
            break;
        }
        if timed_out {
            if !vars.is_empty() {
                hits.push(Hit {
                    oid: oid.to_owned(),
                    kind: kind.to_owned(),
                    variables: vars,
                });
            }
            report.truncated = true;
            report.notes.push(format!(
                "repository {}: out of time while reading objects",
                repo.display()
            ));
            break;
        }
        let mut nl = [0u8; 1];
        if let Err(e) = r.read_exact(&mut nl) {
            result = Err(e);
            break;
        }
        if !vars.is_empty() {
            hits.push(Hit {
                oid: oid.to_owned(),
                kind: kind.to_owned(),
                variables: vars,
            });
        }
    }
    zeroize::Zeroize::zeroize(&mut buf);
    let _ = child.kill();
    let killed = dog.disarm();
    let status = child.wait()?;
    if killed {
        if objects == 0 {
            return Err(std::io::Error::other(format!(
                "git was stopped: it wrote nothing for {} s (a named pipe where it reads?) or the time budget ran out",
                FIRST_OUTPUT.as_secs()
            )));
        }
        // Out of time, or blocked after a while: what was read counts.
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: git was stopped (it wrote nothing for {} s, or the time budget ran out); the objects after that point were not matched",
            repo.display(),
            FIRST_OUTPUT.as_secs()
        ));
        return Ok(hits);
    }
    if let Err(e) = result {
        // A corrupt object (planted, to hide the rest) stops git: what was found before it is
        // kept, and the report says the repository was not read to its end.
        if hits.is_empty() && objects == 0 {
            return Err(e);
        }
        report.skipped += 1;
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: git stopped reading its objects ({e}); the objects after that point were not matched",
            repo.display()
        ));
    } else if !status.success() && hits.is_empty() && objects == 0 {
        return Err(std::io::Error::other("git cat-file failed"));
    }
    Ok(hits)
}

/// A path for each found blob or tree, from the trees reachable from any ref or reflog entry.
fn paths_of(repo: &Path, hits: &[Hit], deadline: Instant) -> HashMap<String, String> {
    let wanted: BTreeSet<&str> = hits.iter().map(|h| h.oid.as_str()).collect();
    let mut out = HashMap::new();
    let Ok(mut child) = git(repo).and_then(|mut c| {
        c.args(["rev-list", "--objects", "--all", "--reflog"])
            .stdout(Stdio::piped())
            .spawn()
    }) else {
        return out;
    };
    let dog = Watchdog::arm(&child, deadline);
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            dog.started();
            if Instant::now() >= deadline {
                break;
            }
            if let Some((oid, path)) = line.split_once(' ')
                && wanted.contains(oid)
                && !path.is_empty()
            {
                out.entry(oid.to_owned()).or_insert_with(|| path.to_owned());
            }
        }
    }
    let _ = child.kill();
    dog.disarm();
    let _ = child.wait();
    out
}

/// For each found blob or tree, the commits (newest first, at most [`MAX_COMMITS`]) whose change
/// adds or removes it, merges and stashes included: one walk of the whole history (`git log
/// --raw`), whatever was found.
fn commits_of(
    repo: &Path,
    hits: &[Hit],
    deadline: Instant,
    report: &mut SweepReport,
) -> HashMap<String, Vec<String>> {
    let wanted: BTreeSet<&str> = hits
        .iter()
        .filter(|h| h.kind != "commit")
        .map(|h| h.oid.as_str())
        .collect();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let Ok(mut child) = git(repo).and_then(|mut c| {
        c.args([
            "log",
            "--all",
            "--reflog",
            "-m",
            "--raw",
            "-t",
            "--no-abbrev",
            "--no-renames",
            "--no-ext-diff",
            "--no-textconv",
            "--no-show-signature",
            "--format=%x00%H",
        ])
        .stdout(Stdio::piped())
        .spawn()
    }) else {
        return out;
    };
    let dog = Watchdog::arm(&child, deadline);
    let mut cut = false;
    if let Some(stdout) = child.stdout.take() {
        let mut commit = String::new();
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            dog.started();
            if Instant::now() >= deadline {
                cut = true;
                break;
            }
            if let Some(c) = line.strip_prefix(b"\0") {
                commit = String::from_utf8_lossy(c).into_owned();
                continue;
            }
            // `:100644 100644 <old> <new> M\tpath`
            if line.first() != Some(&b':') || wanted.is_empty() {
                continue;
            }
            let head = line.split(|&b| b == b'\t').next().unwrap_or_default();
            for oid in String::from_utf8_lossy(head).split(' ').skip(2).take(2) {
                if wanted.contains(oid) {
                    let list = out.entry(oid.to_owned()).or_default();
                    if list.len() < MAX_COMMITS && !list.contains(&commit) {
                        list.push(commit.clone());
                    }
                }
            }
        }
    }
    let _ = child.kill();
    cut |= dog.disarm();
    let _ = child.wait();
    if cut {
        report.truncated = true;
        report.notes.push(format!(
            "repository {}: out of time while placing objects at commits",
            repo.display()
        ));
    }
    out
}
