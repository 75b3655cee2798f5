//! Sweep: find every copy of a vault value that already escaped (`keyveil sweep`).
//!
//! Runs inside the broker, the only process that holds values: [`sweep_with`] takes a
//! [`Redactor`] built from every stored value and reports **where** each one occurs, by
//! variable name and location, never the value nor the bytes around it. See `docs/sweep.md`.
//!
//! What is searched:
//! - every file under the given roots (working trees, untracked and ignored files, `.env*`,
//!   editor swap and backup files, `.git` itself), through the write-side scan (`crate::scan`)
//!   with no "changed since" threshold: the redactor's variants (raw, base64 at every offset,
//!   hex, escapes, ...), plus gzip, zlib, tar, zip, git packs, UTF-16 and text escapes;
//! - `$HOME`: its top-level files (shell histories, `.claude.json`, `.netrc`, ...) and its
//!   dot-directories (agent hosts' transcripts and state: `.codex/sessions`, `.claude/projects`,
//!   `.gemini/tmp`, `.copilot/session-state`, `.config/Code` and `.config/Cursor` workspace
//!   storage, fish history, editor state), minus the cache subtrees of the write-side scan;
//!   on macOS also `~/Library/Application Support/{Code,Cursor}/User`;
//! - git: every repository at or below a root ([`git`]): every object of the repository
//!   (reachable from any ref, the reflog, the stash, or from nothing at all; loose or packed,
//!   deltas resolved), read in process by gitoxide's plumbing crates with no git process and no
//!   configuration read, each found object then placed at a commit and path.
//!
//! Memory is bounded: files are read whole only up to the scan's `max_file_bytes` and in windows
//! beyond; git objects are matched in windows of [`git::WINDOW`] bytes, and none larger than
//! [`git::MAX_OBJECT`] is decoded.

pub(crate) mod git;
mod git_check;
mod git_place;
mod kinds;
pub(crate) use kinds::classify;
pub(crate) mod scrub;
pub(crate) mod wire;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_attacks;
#[cfg(test)]
mod tests_gix;
#[cfg(test)]
mod tests_round3;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use keyveil_redact::Redactor;
use serde::{Deserialize, Serialize};

use crate::scan::{ScanLimits, ScanScope};

/// What to sweep.
#[derive(Clone, Debug)]
pub(crate) struct SweepPlan {
    /// Absolute directories (or files) swept whole, with the git repositories at or below them.
    pub roots: Vec<PathBuf>,
    /// `$HOME`: its top-level files and dot-directories; `None` skips it.
    pub home: Option<PathBuf>,
    /// A file whose inode changed less than this long before the sweep is flagged
    /// [`Finding::recent`] (it may have been planted to probe the sweep; see `docs/sweep.md`).
    pub recent: Duration,
    /// Wall-clock budget of the whole sweep.
    pub max_duration: Duration,
}

/// Where a copy was found. Holds no value and no bytes of the file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Location {
    /// A file on disk (for an archive member, `archive.tar.gz!inner/file`).
    File {
        /// The path; any part of it that is itself a value reads `[REDACTED:NAME]`.
        path: String,
        /// 1-based line numbers where the value is on one line (at most 20; empty when it spans
        /// lines, is inside a container, or the file is large).
        lines: Vec<u64>,
    },
    /// An object in a git repository.
    Git {
        /// The repository's working tree (or git directory when bare).
        repo: String,
        /// Object id (hex).
        object: String,
        /// `blob`, `tree`, `commit` or `tag`.
        object_type: String,
        /// Commits that add or remove the object (at most 5, newest first); for a commit
        /// object, itself. Empty when no ref, reflog entry or stash reaches it.
        commits: Vec<String>,
        /// The path the object has in some reachable tree (blobs and trees).
        path: Option<String>,
    },
}

/// One copy of one value. Holds no value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct Finding {
    /// The environment (filled in by the broker; empty from [`sweep_with`] itself).
    #[serde(default)]
    pub environment: String,
    /// The variable: as the redactor names it from [`sweep_with`]; the broker then splits it into
    /// [`Finding::environment`] and the name clients see (an alias where names are hidden).
    pub variable: String,
    /// Which secret: `value` (a stored value), `minted` (a dynamic credential held by a live
    /// grant), `admin` (a dynamic variable's administrative credential) or `former` (the value a
    /// compromise mark kept of a variable rotated since). Set by the broker.
    #[serde(default)]
    pub credential: String,
    /// What kind of place: `codex`, `claude-code`, `gemini`, `copilot`, `vscode-cursor`,
    /// `shell-history`, `editor-backup`, `dotenv`, `credential-file`, `git-internal`,
    /// `git-history` or `file`.
    pub kind: String,
    /// Where.
    pub location: Location,
    /// How it was found, outermost layer first (see `crate::scan::Leak::form`).
    pub form: String,
    /// The file changed (inode change time) within [`SweepPlan::recent`] before the sweep.
    pub recent: bool,
}

/// The result of a sweep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SweepReport {
    /// Findings, sorted by variable then location.
    pub findings: Vec<Finding>,
    /// Files read.
    pub files_scanned: u64,
    /// Bytes matched (files and decompressed data).
    pub bytes_scanned: u64,
    /// Git repositories swept.
    pub repositories: u64,
    /// Git objects matched.
    pub git_objects: u64,
    /// Entries or objects left out (unreadable, over a limit); see `notes`.
    pub skipped: u64,
    /// Something was cut short by a limit: the sweep is incomplete.
    pub truncated: bool,
    /// What was left out and why (paths and counts; never a value).
    pub notes: Vec<String>,
    /// Wall-clock time, milliseconds.
    pub elapsed_ms: u64,
}

/// The write-side scan's limits, widened for a whole-disk search.
fn limits(budget: Duration) -> ScanLimits {
    ScanLimits {
        max_files: 2_000_000,
        max_entries: 20_000_000,
        max_total_bytes: 64 << 30,
        max_members: 100_000,
        max_duration: budget,
        ..ScanLimits::default()
    }
}

/// [`sweep_with`] without progress counting (tests).
#[cfg(test)]
pub(crate) fn sweep(plan: &SweepPlan, redactor: &Redactor) -> SweepReport {
    sweep_with(plan, redactor, None)
}

/// Sweeps `plan` for the values `redactor` knows, counting its work in `progress` as it goes.
/// Never fails: what cannot be read is counted in [`SweepReport::skipped`] with a note.
pub(crate) fn sweep_with(
    plan: &SweepPlan,
    redactor: &Redactor,
    progress: Option<&crate::scan::Progress>,
) -> SweepReport {
    let start = Instant::now();
    let deadline = start + plan.max_duration;
    let now = SystemTime::now();
    let mut report = SweepReport::default();
    let mut findings = BTreeSet::new();
    let home = plan
        .home
        .as_ref()
        .and_then(|h| std::fs::canonicalize(h).ok());

    // Files: each root whole, then $HOME's scope, then host folders outside dot-directories.
    let mut scopes: Vec<ScanScope> = Vec::new();
    let mut roots: Vec<PathBuf> = plan
        .roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    roots.sort();
    roots.dedup();
    for r in &roots {
        if r.is_dir() {
            scopes.push(scope(r.clone(), None, Duration::ZERO));
        } else {
            // A file named on its own: matched as stored (no decoding), in windows.
            file_root(
                r,
                redactor,
                now,
                plan,
                home.as_deref(),
                &mut findings,
                &mut report,
            );
        }
    }
    // A root at or above $HOME already walks all of it.
    if let Some(h) = home
        .as_ref()
        .filter(|h| !roots.iter().any(|r| h.starts_with(r)))
    {
        scopes.push(scope(PathBuf::new(), Some(h.clone()), Duration::ZERO));
        for extra in kinds::HOME_EXTRA {
            let p = h.join(extra);
            if p.is_dir() {
                scopes.push(scope(p, None, Duration::ZERO));
            }
        }
    }
    for mut s in scopes {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            report.truncated = true;
            report
                .notes
                .push(format!("out of time before {}", shown_scope(&s)));
            continue;
        }
        s.limits = limits(left);
        let (r, mut lines) = crate::scan::scan_with_lines(&s, redactor, progress);
        report.files_scanned += r.files_scanned;
        report.bytes_scanned += r.bytes_scanned;
        report.skipped += r.skipped;
        if r.truncated {
            report.truncated = true;
            let why: Vec<String> = r
                .left_out
                .iter()
                .map(|(why, n)| format!("{n} {why}"))
                .collect();
            report.notes.push(format!(
                "{}: {} entries left out ({})",
                shown_scope(&s),
                r.skipped,
                why.join(", ")
            ));
        }
        for leak in r.leaks {
            let path = leak.path.to_string_lossy().into_owned();
            // Computed while the file was read: never opened again because it held a value.
            let lines = if leak.path == leak.file && leak.form == "raw" {
                lines
                    .remove(&(leak.path.clone(), leak.variable.clone()))
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            findings.insert(Finding {
                environment: String::new(),
                credential: String::new(),
                kind: kinds::classify(&leak.file, home.as_deref()).to_owned(),
                // A name that holds a value may itself be the planted guess (a folder renamed
                // to it keeps its old files' change times): such a copy is always recent.
                recent: named_after_a_value(&leak.path)
                    || named_after_a_value(&leak.file)
                    || recent(&leak.file, now, plan.recent),
                variable: leak.variable,
                location: Location::File { path, lines },
                form: leak.form,
            });
        }
    }

    // Git: every repository at or below a root.
    let repos = git::discover(&roots, deadline, &mut report);
    for repo in repos {
        if Instant::now() >= deadline {
            report.truncated = true;
            report
                .notes
                .push(format!("out of time before repository {}", repo.display()));
            continue;
        }
        report.repositories += 1;
        let found = git::sweep_repo(
            &repo,
            redactor,
            deadline,
            plan.recent,
            &mut report,
            progress,
        );
        // The same copies met as raw files below `.git/objects` say less: drop them for the
        // variables the object sweep placed (what it could not place stays).
        let placed: BTreeSet<&str> = found.iter().map(|f| f.variable.as_str()).collect();
        let objects = git::git_dir(&repo).join("objects");
        findings.retain(|f| {
            !(placed.contains(f.variable.as_str())
                && matches!(&f.location, Location::File { path, .. } if Path::new(path).starts_with(&objects)))
        });
        findings.extend(found);
    }

    report.findings = findings
        .into_iter()
        .map(|f| redact_finding(f, redactor))
        .collect();
    for n in &mut report.notes {
        *n = redact_text(n, redactor);
    }
    report
        .findings
        .sort_by(|a, b| (&a.variable, &a.location).cmp(&(&b.variable, &b.location)));
    report.elapsed_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// Whether `path` is a named pipe (not followed if a symlink): never opened by the sweep.
pub(crate) fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt as _;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Matches one file given as a root, as stored, in overlapping windows of 16 MiB.
fn file_root(
    path: &Path,
    redactor: &Redactor,
    now: SystemTime,
    plan: &SweepPlan,
    home: Option<&Path>,
    findings: &mut BTreeSet<Finding>,
    report: &mut SweepReport,
) {
    use std::os::unix::fs::OpenOptionsExt as _;
    const WINDOW: usize = 16 << 20;
    // A named pipe is never opened (opening one would make the sweep a reader of it): a
    // keyveil mount (`docs/mounts.md`) holds no value on disk, so it is not a leak.
    if is_fifo(path) {
        report.notes.push(format!(
            "{}: a named pipe (a keyveil mount holds no value on disk); not opened",
            path.display()
        ));
        return;
    }
    let flags =
        rustix::fs::OFlags::NOFOLLOW.bits() as i32 | rustix::fs::OFlags::NONBLOCK.bits() as i32;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path);
    let mut f = match opened {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        _ => {
            report.skipped += 1;
            report.truncated = true;
            report.notes.push(format!(
                "{}: not a regular file that can be read",
                path.display()
            ));
            return;
        }
    };
    report.files_scanned += 1;
    let overlap = redactor.max_pattern_len().max(1);
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(WINDOW + overlap));
    let mut vars = BTreeSet::new();
    let mut whole: Option<Vec<(String, Vec<u64>)>> = None;
    let mut first = true;
    loop {
        let start = buf.len();
        buf.resize(start + WINDOW, 0);
        let n = match f.read(buf.get_mut(start..).unwrap_or_default()) {
            Ok(n) => n,
            Err(e) => {
                report.truncated = true;
                report
                    .notes
                    .push(format!("{}: read error ({e})", path.display()));
                0
            }
        };
        buf.truncate(start + n);
        if n == 0 {
            break;
        }
        report.bytes_scanned += n as u64;
        let spans = redactor.find_leak_spans(&buf);
        // The whole file is in `buf`: its lines from the same pass (and the same work whether
        // or not it found something), not by matching or opening it again.
        let lines = crate::scan::lines_of(&buf, &spans);
        whole = (first && n < WINDOW).then(|| lines.into_iter().collect());
        first = false;
        vars.extend(spans.into_iter().map(|(v, _)| v));
        let keep = buf.len().min(overlap);
        let cut = buf.len() - keep;
        buf.drain(..cut);
    }
    for variable in vars {
        let lines = whole
            .as_ref()
            .and_then(|w| w.iter().find(|(v, _)| *v == variable))
            .map(|(_, l)| l.clone())
            .unwrap_or_default();
        findings.insert(Finding {
            environment: String::new(),
            credential: String::new(),
            kind: kinds::classify(path, home).to_owned(),
            recent: recent(path, now, plan.recent),
            location: Location::File {
                path: path.to_string_lossy().into_owned(),
                lines,
            },
            variable,
            form: "raw".into(),
        });
    }
}

fn scope(cwd: PathBuf, home: Option<PathBuf>, _slack: Duration) -> ScanScope {
    ScanScope {
        cwd,
        home,
        since: SystemTime::UNIX_EPOCH,
        limits: ScanLimits::default(),
    }
}

fn shown_scope(s: &ScanScope) -> String {
    match &s.home {
        Some(h) => format!("{} (home)", h.display()),
        None => s.cwd.display().to_string(),
    }
}

/// Whether a shown path had a value in it (a part of it reads `[REDACTED:...]`).
fn named_after_a_value(p: &Path) -> bool {
    memchr::memmem::find(&crate::scan::path_bytes(p), b"[REDACTED:").is_some()
}

/// Whether `file`'s inode changed within `window` before `now`, or that cannot be told (a
/// copy of unknown age counts as recent: it may be a planted guess).
fn recent(file: &Path, now: SystemTime, window: Duration) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(file) else {
        return true;
    };
    let Ok(secs) = u64::try_from(meta.ctime()) else {
        return true;
    };
    let ctime = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    now.duration_since(ctime).map_or(true, |age| age < window)
}

/// `s` with any value (in any form the redactor knows) replaced by its marker: a path, a file
/// or directory name, a git path may itself hold a value (a file named after a token).
pub(crate) fn redact_text(s: &str, redactor: &Redactor) -> String {
    if redactor.find_leaks(s.as_bytes()).is_empty() {
        return s.to_owned();
    }
    String::from_utf8_lossy(&redactor.redact(s.as_bytes()).0).into_owned()
}

/// `f` with every string it shows passed through [`redact_text`].
pub(crate) fn redact_finding(mut f: Finding, redactor: &Redactor) -> Finding {
    match &mut f.location {
        Location::File { path, .. } => *path = redact_text(path, redactor),
        Location::Git { repo, path, .. } => {
            *repo = redact_text(repo, redactor);
            if let Some(p) = path {
                *p = redact_text(p, redactor);
            }
        }
    }
    f
}
