//! Where keyveil keeps its files, derived from `KEYVEIL_HOME` or `HOME` alone.
//!
//! Agent hosts start MCP servers with a short environment whitelist (Codex passes neither
//! `XDG_RUNTIME_DIR` nor most other variables), so everything, including the broker's socket,
//! is derived from the data directory:
//!
//! | path | what |
//! |---|---|
//! | `$KEYVEIL_HOME` | data directory, mode 0700 (default `$XDG_DATA_HOME/keyveil`, else `~/.local/share/keyveil`) |
//! | `vault.kv` | the encrypted vault |
//! | `audit.jsonl` | the audit log |
//! | `run/` | mode 0700: `broker.sock` (0600), `broker.lock`, `broker.pid` |
//! | `broker.log` | the broker's own log (never values) |

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The set of paths of one keyveil home.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// The data directory.
    pub home: PathBuf,
}

impl Paths {
    /// Resolves the home from `KEYVEIL_HOME`, `XDG_DATA_HOME` or `HOME`.
    ///
    /// Errors when none is set (hint: set `KEYVEIL_HOME`).
    pub(crate) fn resolve() -> Result<Paths> {
        if let Some(h) = std::env::var_os("KEYVEIL_HOME").filter(|h| !h.is_empty()) {
            return Ok(Paths {
                home: absolute(Path::new(&h))?,
            });
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
            return Ok(Paths {
                home: absolute(&Path::new(&x).join("keyveil"))?,
            });
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => Ok(Paths {
                home: absolute(&Path::new(&h).join(".local/share/keyveil"))?,
            }),
            None => bail!(
                "cannot find keyveil's data directory: neither KEYVEIL_HOME nor HOME is set\nhint: set KEYVEIL_HOME=/path/to/dir"
            ),
        }
    }

    /// For a given directory.
    #[cfg(test)]
    pub(crate) fn at(home: PathBuf) -> Paths {
        Paths { home }
    }

    /// The vault file.
    pub(crate) fn vault(&self) -> PathBuf {
        self.home.join("vault.kv")
    }
    /// The list of mounts (`keyveil mount`): paths and environment names, never a value.
    pub(crate) fn mounts(&self) -> PathBuf {
        self.home.join("mounts.json")
    }

    /// The audit log.
    pub(crate) fn audit(&self) -> PathBuf {
        self.home.join("audit.jsonl")
    }
    /// The broker's runtime directory (0700).
    pub(crate) fn run_dir(&self) -> PathBuf {
        self.home.join("run")
    }
    /// The broker's socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.run_dir().join("broker.sock")
    }
    /// The single-instance lock.
    pub(crate) fn lock(&self) -> PathBuf {
        self.run_dir().join("broker.lock")
    }
    /// The broker's log file.
    pub(crate) fn log(&self) -> PathBuf {
        self.home.join("broker.log")
    }

    /// Checks that the socket path fits in `sun_path`.
    pub(crate) fn check_socket_len(&self) -> Result<()> {
        let len = self.socket().as_os_str().len();
        if len > MAX_SOCKET_PATH {
            bail!(
                "the broker socket path {} is {len} bytes, over the {MAX_SOCKET_PATH}-byte limit of Unix sockets\nhint: set KEYVEIL_HOME to a shorter directory",
                self.socket().display()
            );
        }
        Ok(())
    }

    /// A `hint:` line (with its leading newline) when the file system holding the home has no
    /// space or no inodes left for us; empty otherwise (or when that cannot be told).
    pub(crate) fn full_disk_hint(&self) -> String {
        match rustix::fs::statvfs(&self.home) {
            Ok(s) if s.f_bavail == 0 || (s.f_files > 0 && s.f_favail == 0) => format!(
                "\nhint: the file system holding {} is full; free some space there (or move KEYVEIL_HOME to a file system the agent cannot fill) and try again",
                self.home.display()
            ),
            _ => String::new(),
        }
    }

    /// Creates the home and run directories with mode 0700 (tightening them if they exist).
    pub(crate) fn ensure_dirs(&self) -> Result<()> {
        for d in [self.home.clone(), self.run_dir()] {
            std::fs::create_dir_all(&d)
                .with_context(|| format!("cannot create directory {}", d.display()))?;
            set_mode(&d, 0o700)?;
        }
        Ok(())
    }
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).with_context(|| format!("cannot make {} absolute", p.display()))
}

/// Sets Unix permission bits on a path.
pub(crate) fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", p.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn long_socket_paths_are_refused_with_a_hint() {
        let p = Paths::at(PathBuf::from(format!("/tmp/{}", "x".repeat(120))));
        let e = p.check_socket_len().unwrap_err().to_string();
        assert!(e.contains("hint: set KEYVEIL_HOME"), "{e}");
        Paths::at(PathBuf::from("/tmp/k"))
            .check_socket_len()
            .unwrap();
    }
}
