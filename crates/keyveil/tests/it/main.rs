//! keyveil's integration tests: one binary (ripgrep style), each module a theme. Every test
//! gets its own `KEYVEIL_HOME` and its own broker, stopped on drop.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod approval;
mod background;
mod card;
mod card_values;
mod ci;
mod cli_ux;
mod codeload;
mod corpus;
mod crash;
mod custody;
mod daily;
mod dynamic;
mod egress;
mod egress_go;
mod egress_rules;
mod flow;
mod fulldisk;
mod hardening;
mod harness;
mod hostile;
mod identity;
mod import;
mod journal;
mod kept_redactor;
mod limits;
mod locked;
mod manifest;
mod mcp_hostile;
mod mcp_wait;
mod mount;
mod names;
mod names_human;
mod openbao;
mod openbao_cgroup;
mod openbao_cluster;
mod openbao_reap;
mod oracle;
mod output;
mod pathdirs;
mod policy;
mod redteam;
mod redteam15;
mod redteam16;
mod redteam19;
mod redteam19_round2;
mod redteam19_round3;
mod redteam2;
mod redteam20;
mod redteam20b;
mod redteam22;
mod redteam22b;
mod redteam3;
mod redteam4;
mod redteam_s10;
mod redteam_s10b;
mod redteam_s10c;
mod redteam_s11_egress;
mod redteam_s11_mounts;
mod redteam_s11b_egress;
mod redteam_s12_kv;
mod redteam_s12_mounts;
mod redteam_s13_mounts;
mod redteam_s13b_mounts;
mod redteam_s14;
mod redteam_s14b;
mod redteam_s8;
mod redteam_s8b;
mod redteam_s9;
mod redteam_s9b;
mod redteam_s9c;
mod revoke;
mod sandbox;
mod setup;
mod sweep;
mod tamper;
mod watch;
mod web;
mod write_watch;
