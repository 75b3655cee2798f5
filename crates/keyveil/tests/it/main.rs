//! keyveil's integration tests: one binary (ripgrep style), each module a theme. Every test
//! gets its own `KEYVEIL_HOME` and its own broker, stopped on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod approval;
mod corpus;
mod crash;
mod dynamic;
mod flow;
mod fulldisk;
mod hardening;
mod harness;
mod hostile;
mod mcp_hostile;
mod names;
mod output;
mod policy;
mod sandbox;
mod setup;
mod tamper;
mod web;
