//! Code loaded from files the agent can write: for each known tool, the configuration files and
//! settings that decide what it executes, and what keyveil does about each (issue 15, item 2).
//!
//! A human who approves `git status` or `npm test` approves what those tools will execute, and
//! that is decided as much by configuration (`core.fsmonitor` in `.git/config`, `script-shell`
//! in `~/.npmrc`, a `.pth` file in site-packages) as by the argv. The agent runs as the same user
//! and can write every one of those files. For each tool, keyveil either
//!
//! - **pins** the file: it is fingerprinted at request time, shown on the card as an input (role
//!   `git-config`, `npmrc`, ...; its code-running settings quoted in the input's detail line),
//!   re-hashed at every run under the grant, and re-derived for the actual cwd and argv (a file
//!   created after approval counts as a change): a change ends the grant ("inputs changed since
//!   approval"); or
//! - **neutralises** it for every granted child, through the environment the broker builds from
//!   scratch ([`NEUTRALISE`]), where that is cheap and does not break normal use; and
//! - never passes the environment variables that would load more code ([`is_loader_var`], on top
//!   of [`is_injection_var`]).
//!
//! The table is [`TABLE`] (also rendered in `docs/threat-model.md`). Pinning stays cheap: a few
//! `stat`s per candidate path, a directory listing for git hooks and Python site directories, and
//! hashes cached by (dev, inode, size, mtime, ctime) in `pin/`.

use std::path::{Path, PathBuf};

use crate::pin::{InputPin, pin_input, pin_input_text, read_for_requester};

mod env;
mod git;
mod home;
mod make;
mod make_argv;
mod makefile;
mod managers;
mod npm;
mod python;
mod shell;
mod table;

use git::*;
use make::*;

pub(crate) use env::{NEUTRALISE, is_injection_var, is_loader_var};
pub(crate) use managers::manager_inputs;
use table::TABLE;

/// Most files a single tool pins (hooks, `.pth` files, includes): beyond this the rest are not
/// pinned, which the card shows as a `... more not pinned` detail.
const MAX_FILES: usize = 64;

/// Largest text file whose settings are read and shown (bytes); a bigger one is refused.
const MAX_TEXT: u64 = 1 << 20;

/// What a command runs in: the argv, the working directory, the executable, the child's HOME.
pub(crate) struct Ctx<'a> {
    /// The argv.
    pub(crate) argv: &'a [String],
    /// The canonical working directory.
    pub(crate) cwd: &'a Path,
    /// The resolved executable (canonical).
    pub(crate) exe: &'a Path,
    /// The child's HOME (the vault's), if any.
    pub(crate) home: Option<&'a Path>,
}

/// The pins for the tool `family` (or `arg0`), from [`TABLE`].
pub(crate) fn inputs(family: &str, arg0: &str, cx: &Ctx<'_>) -> Vec<InputPin> {
    let mut out = Pins::default();
    for l in TABLE {
        if l.names.contains(&family) || l.names.contains(&arg0) {
            let name = if l.names.contains(&family) {
                family
            } else {
                arg0
            };
            (l.pins)(cx, name, &mut out);
        }
    }
    out.0
}

fn none(_: &Ctx<'_>, _: &str, _: &mut Pins) {}

#[derive(Default)]
struct Pins(Vec<InputPin>);

impl Pins {
    /// Pins a text file and returns its text (the bytes hashed) when it was newly pinned.
    fn add_text(
        &mut self,
        role: &str,
        path: &Path,
        detail: impl FnOnce(&str) -> Option<String>,
    ) -> Option<String> {
        if self.full(path) {
            return None;
        }
        // A file whose settings the card quotes (or whose includes are followed) is read whole
        // or refused: over 1 MiB it is pinned by hash only in `pin/`, which would hide them.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > MAX_TEXT) {
            self.unpinnable(
                path,
                &format!("{role} over 1 MiB: keyveil cannot read and show its settings"),
            );
            return None;
        }
        let (p, text) = pin_input_text(role, path, detail)?;
        if self.0.iter().any(|q| q.path == p.path) {
            return None;
        }
        self.0.push(p);
        Some(text)
    }

    /// Pins a directory by fingerprint (`crate::pin::path_dirs`), at the depth its role says.
    fn add_dir(&mut self, role: &str, dir: &Path, what: &str) {
        if self.0.iter().any(|q| Path::new(&q.path) == dir) || self.full(dir) {
            return;
        }
        let depth = crate::pin::path_dirs::depth_for(role);
        self.0
            .extend(crate::pin::path_dirs::pin_dir(role, dir, depth, what));
    }

    /// Whether the pin list is full; then `path` is recorded as not pinned (fail closed).
    fn full(&mut self, path: &Path) -> bool {
        if self.0.len() < MAX_FILES * 4 {
            return false;
        }
        self.unpinnable(
            path,
            &format!(
                "more than {} inputs for one command; keyveil pins no more",
                MAX_FILES * 4
            ),
        );
        true
    }

    /// Records an input that could not be pinned completely: the request is refused.
    fn unpinnable(&mut self, path: &Path, why: &str) {
        let p = crate::pin::path_dirs::unpinnable(path, why);
        if !self.0.contains(&p) {
            self.0.push(p);
        }
    }

    /// Whether `path` (canonicalised) is pinned already.
    fn has(&self, path: &Path) -> bool {
        std::fs::canonicalize(path).is_ok_and(|c| self.0.iter().any(|q| Path::new(&q.path) == c))
    }

    fn add(&mut self, role: &str, path: &Path, detail: Option<String>) -> bool {
        if self.full(path) {
            return false;
        }
        match pin_input(role, path, detail) {
            Some(p) if !self.0.iter().any(|q| q.path == p.path) => {
                self.0.push(p);
                true
            }
            _ => false,
        }
    }
}

fn argv_has_pair(argv: &[String], a: &str, b: &str) -> bool {
    argv.windows(2)
        .any(|w| w.first().is_some_and(|x| x == a) && w.get(1).is_some_and(|x| x == b))
}

/// `dir` and its ancestors, nearest first.
fn up(dir: &Path) -> impl Iterator<Item = &Path> {
    dir.ancestors()
}

fn home_file(cx: &Ctx<'_>, rel: &str) -> Option<PathBuf> {
    cx.home.map(|h| h.join(rel))
}

#[cfg(test)]
mod tests;
