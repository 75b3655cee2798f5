//! The flags that give the human's factor (`--passphrase-stdin`, `--totp`, `--totp-stdin`),
//! shared by the clap definitions of every command that needs it (`args`, `import`, `sweep`,
//! `vars`) and read by `factor`.

use clap::Args;

/// The factor given for a change that needs it. Never a factor on argv: every process of yours
/// can read `/proc/PID/cmdline`.
#[derive(Debug, Args)]
pub(crate) struct FactorArgs {
    /// Read the passphrase from the first line of stdin.
    #[arg(long, global = true)]
    pub(crate) passphrase_stdin: bool,
    /// Use a TOTP code instead of the passphrase: asked for on the terminal (a code written
    /// after the flag is refused before anything is sent: every process of yours can read
    /// /proc/PID/cmdline).
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "", value_name = "CODE")]
    pub(crate) totp: Option<String>,
    /// Read a TOTP code from the first line of stdin.
    #[arg(long, global = true, conflicts_with = "passphrase_stdin")]
    pub(crate) totp_stdin: bool,
}
