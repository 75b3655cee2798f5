//! The `keyveil` executable: parses the command line and calls the library (`lib.rs`).
#![forbid(unsafe_code)]

fn main() {
    // A run's reaper is this executable started by the broker: it never parses the CLI.
    keyveil::run_reaper_if_asked();
    let cli = keyveil::parse();
    std::process::exit(keyveil::run(cli));
}
