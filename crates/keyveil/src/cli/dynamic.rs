//! `keyveil dynamic ...`: declare dynamic variables (see `docs/dynamic-credentials.md`).
// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;

use super::{Exit, call_guarded, read_secret_line, say};
use crate::paths::Paths;
use crate::protocol::{DynamicAddRequest, Request};

/// `keyveil dynamic` subcommands.
#[derive(Debug, Subcommand)]
pub enum DynamicCommand {
    /// Declare a dynamic variable. The admin credential (admin URL, or OpenBao token) is read
    /// from a hidden /dev/tty prompt or, with --admin-stdin, from the first line of stdin:
    /// never from argv.
    ///
    /// Examples:
    ///   keyveil dynamic add dev DATABASE_URL --engine postgres --admin-stdin \
    ///       --template 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{role}}'
    ///   keyveil dynamic add dev REDIS_URL --engine redis --template '~app:* +get +set'
    ///   keyveil dynamic add dev --engine openbao-kv --address http://127.0.0.1:8200 --kv-path app
    #[command(verbatim_doc_comment)]
    Add {
        /// Environment.
        env: String,
        /// Variable name (optional for openbao-kv: every field of the secret is imported).
        var: Option<String>,
        /// postgres | redis | openbao-database | openbao-kv.
        #[arg(long)]
        engine: String,
        /// Read the admin URL or OpenBao token from the first line of stdin.
        #[arg(long, alias = "admin-url-stdin")]
        admin_stdin: bool,
        /// What a minted credential may do: SQL with {{role}} (postgres), ACL rules (redis).
        #[arg(long, default_value = "", conflicts_with = "template_file")]
        template: String,
        /// Read the template from a file.
        #[arg(long)]
        template_file: Option<std::path::PathBuf>,
        /// What is injected: password (plus VAR_USER) | url | pg-env (url plus PG* variables).
        #[arg(long, default_value = "")]
        output: String,
        /// OpenBao address (loopback HTTP, e.g. http://127.0.0.1:8200).
        #[arg(long)]
        address: Option<String>,
        /// OpenBao mount (default: database, or secret for KV).
        #[arg(long)]
        mount: Option<String>,
        /// OpenBao database role.
        #[arg(long)]
        role: Option<String>,
        /// OpenBao KV v2 path under the mount.
        #[arg(long)]
        kv_path: Option<String>,
        /// OpenBao KV field (default: the variable's name).
        #[arg(long)]
        kv_key: Option<String>,
        /// The URL clients connect to, without credentials (default: the admin URL's host,
        /// port and database).
        #[arg(long)]
        connect_url: Option<String>,
        /// Name prefix of minted users (must start with keyveil_; default: keyveil_ + a random
        /// tag).
        #[arg(long)]
        prefix: Option<String>,
        /// Description shown to agents.
        #[arg(long)]
        description: Option<String>,
        /// Store without connecting first.
        #[arg(long)]
        no_check: bool,
    },
}

/// Runs a `dynamic` subcommand.
pub async fn run(paths: &Paths, cmd: DynamicCommand) -> Result<i32> {
    match cmd {
        DynamicCommand::Add {
            env,
            var,
            engine,
            admin_stdin,
            template,
            template_file,
            output,
            address,
            mount,
            role,
            kv_path,
            kv_key,
            connect_url,
            prefix,
            description,
            no_check,
        } => {
            let template = match template_file {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
                None => template,
            };
            let what = if engine.starts_with("openbao") {
                "OpenBao token"
            } else {
                "admin URL"
            };
            let admin = read_secret_line(
                admin_stdin,
                &format!(
                    "{what} for {env}/{} (hidden): ",
                    var.as_deref().unwrap_or("*")
                ),
            )?;
            if admin.expose().is_empty() {
                return Err(Exit {
                    code: 2,
                    message: format!("the {what} is empty; nothing was stored"),
                }
                .into());
            }
            let mut options = BTreeMap::new();
            for (k, v) in [
                ("address", address),
                ("mount", mount),
                ("role", role),
                ("path", kv_path),
                ("key", kv_key),
                ("connect_url", connect_url),
                ("prefix", prefix),
            ] {
                if let Some(v) = v {
                    options.insert(k.to_owned(), v);
                }
            }
            // Replacing a variable that has a value needs the factor (asked at the terminal).
            let d = call_guarded(paths, None, |_| {
                Ok(Request::DynamicAdd(DynamicAddRequest {
                    environment: env.clone(),
                    name: var.clone(),
                    engine: engine.clone(),
                    admin: admin.clone(),
                    template: template.clone(),
                    output: output.clone(),
                    options: options.clone(),
                    description: description.clone(),
                    check: !no_check,
                    factor: None,
                }))
            })
            .await?;
            let vars: Vec<&str> = d["variables"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            say(format!(
                "added {env}/{{{}}}: {} at {}, output {}{}",
                vars.join(","),
                d["engine"].as_str().unwrap_or(""),
                d["target"].as_str().unwrap_or(""),
                d["output"].as_str().unwrap_or(""),
                match d["prefix"].as_str() {
                    Some(p) if !p.is_empty() => format!(", users named {p}*"),
                    _ => String::new(),
                }
            ));
            Ok(0)
        }
    }
}

/// Prints the dynamic credentials of one grant (from `grants`): handle and expiry only.
pub fn print_grant_credentials(grant: &Value) {
    for d in grant["dynamic"].as_array().into_iter().flatten() {
        let h = &d["handle"];
        say(format!(
            "    {}: {} {} at {}, dies {}",
            d["variable"].as_str().unwrap_or(""),
            h["engine"].as_str().unwrap_or(""),
            h["user"].as_str().unwrap_or(""),
            h["target"].as_str().unwrap_or(""),
            crate::when::human_time(d["expires_at"].as_str().unwrap_or(""))
        ));
    }
}
