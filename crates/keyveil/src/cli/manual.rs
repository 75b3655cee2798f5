//! `keyveil completions SHELL` and `keyveil man`: shell completions and man pages generated
//! from the clap definitions (`clap_complete`, `clap_mangen`), so they never drift from the
//! command line. A package installs them with, e.g.:
//!
//! ```sh
//! keyveil completions bash > /usr/share/bash-completion/completions/keyveil
//! keyveil completions zsh  > /usr/share/zsh/vendor-completions/_keyveil
//! keyveil completions fish > /usr/share/fish/vendor_completions.d/keyveil.fish
//! keyveil man --dir /usr/share/man/man1      # keyveil.1 and keyveil-SUBCOMMAND.1
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, CommandFactory, ValueEnum};

use super::Cli;

/// Shells `keyveil completions` writes a script for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Shell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
    /// elvish.
    Elvish,
    /// PowerShell.
    Powershell,
}

/// `keyveil completions`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  keyveil completions bash > ~/.local/share/bash-completion/completions/keyveil
  keyveil completions zsh > ~/.zfunc/_keyveil      # with fpath+=(~/.zfunc) before compinit
  keyveil completions fish > ~/.config/fish/completions/keyveil.fish")]
pub(crate) struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub(crate) shell: Shell,
}

/// `keyveil man`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  keyveil man | man -l -                 # read it now
  keyveil man --dir ~/.local/share/man/man1")]
pub(crate) struct ManArgs {
    /// Write `keyveil.1` and one `keyveil-SUBCOMMAND.1` per subcommand into this directory
    /// (created if missing) instead of printing `keyveil.1` on stdout.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
}

/// Writes the completion script for `shell` to stdout.
///
/// # Errors
/// stdout cannot be written.
pub(crate) fn completions(a: &CompletionsArgs) -> Result<i32> {
    use clap_complete::Shell as S;
    let shell = match a.shell {
        Shell::Bash => S::Bash,
        Shell::Zsh => S::Zsh,
        Shell::Fish => S::Fish,
        Shell::Elvish => S::Elvish,
        Shell::Powershell => S::PowerShell,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "keyveil", &mut buf);
    write_stdout(&buf)
}

/// Writes `buf` to stdout; a reader that stopped early (`| head`) is not an error.
fn write_stdout(buf: &[u8]) -> Result<i32> {
    match std::io::stdout().lock().write_all(buf) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(0),
    }
}

/// Prints `keyveil.1`, or writes every page into `--dir`.
///
/// # Errors
/// The directory or a page cannot be written; stdout cannot be written.
pub(crate) fn man(a: &ManArgs) -> Result<i32> {
    let cmd = Cli::command();
    match &a.dir {
        None => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut buf)
                .context("cannot render the man page")?;
            return write_stdout(&buf);
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let written = write_pages(&cmd, dir)?;
            super::say(format!("wrote {written} man pages into {}", dir.display()));
        }
    }
    Ok(0)
}

/// Writes the page of `cmd` and of each visible subcommand below it (`keyveil-env-show.1`);
/// returns how many.
fn write_pages(cmd: &clap::Command, dir: &Path) -> Result<usize> {
    let cmd = cmd.clone().disable_help_subcommand(true);
    let mut n = 0;
    let mut stack = vec![(cmd.get_name().to_owned(), cmd)];
    while let Some((name, mut c)) = stack.pop() {
        c.build();
        for sub in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            let sub_name = format!("{name}-{}", sub.get_name());
            stack.push((sub_name.clone(), sub.clone().name(sub_name)));
        }
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .render(&mut buf)
            .context("cannot render a man page")?;
        std::fs::write(&path, buf).with_context(|| format!("cannot write {}", path.display()))?;
        n += 1;
    }
    Ok(n)
}
