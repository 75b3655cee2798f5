//! `keyveil`: a local secret broker for AI coding agents. Agents get access to secrets,
//! never custody: see `docs/architecture.md` for the map of this crate.
//!
//! The `keyveil` executable (`src/main.rs`) only parses its arguments ([`parse`]) and calls [`run`]; a
//! run's reaper is the same executable and starts through [`run_reaper_if_asked`]. Everything
//! else is private to this library, except the write-side [`scan`] (measured on its own by
//! `benches/scan.rs`).
#![deny(unsafe_code)]
#![warn(unreachable_pub)]

mod authorize;
mod broker;
mod card;
mod ci_sign;
mod cli;
mod client;
mod demo;
mod dynamic;
mod factor;
mod factor_proof;
mod frame_writer;
mod gitconfig;
mod harden;
mod loaders;
mod logging;
mod manifest;
mod mcp;
mod notify;
mod output;
mod paths;
mod pin;
mod reap;
mod redact;
mod risk;
mod sandbox;
pub mod scan;
mod setup;
mod stdin_program;
mod subuid;
mod supervise;
mod sweep;
mod tcp_table;
mod when;

pub use cli::{Cli, parse};

/// Runs the reaper and exits when this process was started as a run's reaper (its first
/// argument is the reaper flag, see `reap.rs`); returns otherwise. Call it before parsing the
/// command line: a reaper never parses it.
pub fn run_reaper_if_asked() {
    reap::maybe_run();
}

/// Runs the command line; returns the process exit code (0 ok, 1 error, 2 usage, 3 denied,
/// 4 locked, 5 timed out waiting for approval). An error is written to stderr with its causes
/// and `hint:` lines.
pub fn run(cli: Cli) -> i32 {
    match cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e
                .downcast_ref::<output::Exit>()
                .map(|x| x.code)
                .unwrap_or(1);
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            output::note(msg);
            code
        }
    }
}
