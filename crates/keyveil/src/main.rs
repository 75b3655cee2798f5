//! `keyveil`: a local secret broker for AI coding agents. Agents get access to secrets,
//! never custody: see `docs/architecture.md`.
#![deny(unsafe_code)]

mod authorize;
mod broker;
mod card;
mod cli;
mod client;
mod demo;
mod display;
mod dotenv;
mod dynamic;
mod factor;
mod factor_proof;
mod frame_writer;
mod gitconfig;
mod harden;
mod loaders;
mod logging;
mod mcp;
mod notify;
mod path_dirs;
mod paths;
mod pin;
mod protocol;
mod reap;
mod redact;
mod risk;
mod sandbox;
mod scan;
mod setup;
mod supervise;
mod when;

fn main() {
    // A run's reaper (`reap.rs`) is this executable started by the broker: it never parses
    // the CLI.
    reap::maybe_run();
    let cli = cli::parse();
    let code = match cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = e.downcast_ref::<cli::Exit>().map(|x| x.code).unwrap_or(1);
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            cli::note(msg);
            code
        }
    };
    std::process::exit(code);
}
