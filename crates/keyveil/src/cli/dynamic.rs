//! `keyveil dynamic ...`: declare dynamic variables (see `docs/dynamic-credentials.md`).
// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{Exit, call_guarded, read_secret_line, say};
use crate::paths::Paths;
use keyveil_proto::DynamicAddRequest;

/// `keyveil dynamic` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum DynamicCommand {
    /// Declare a dynamic variable. The admin credential (admin URL, or OpenBao token) is read
    /// from a hidden /dev/tty prompt or, with --admin-stdin, from the first line of stdin:
    /// never from argv.
    ///
    /// Examples:
    ///   keyveil dynamic add dev DATABASE_URL --engine postgres --admin-stdin \
    ///       --template 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{role}}'
    ///   keyveil dynamic add dev REDIS_URL --engine redis --template '~app:* +get +set'
    ///   keyveil dynamic add dev --engine openbao-kv --address http://127.0.0.1:8200 --kv-path app
    ///   keyveil dynamic add dev --engine openbao-kv --address https://bao.corp:8200 \
    ///       --ca-file corp-ca.pem --namespace team --auth approle --role-id ROLE_ID \
    ///       --kv-path team/app            # the secret id is asked at /dev/tty
    ///   keyveil dynamic add ci --engine openbao-kv --address https://bao.corp:8200 \
    ///       --auth jwt --auth-role ci --admin-env CI_JOB_JWT --kv-path team/app
    // The examples are clap help text, printed as written: their URLs are not links.
    #[allow(rustdoc::bare_urls)]
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
        /// OpenBao address: https://HOST:PORT (any host), or http:// on loopback only.
        #[arg(long)]
        address: Option<String>,
        /// How to reach and log in to OpenBao.
        #[command(flatten)]
        bao: BaoArgs,
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
        /// Prove your factor with the change (the passphrase asked at the terminal): the
        /// variable then records that its source was chosen with the factor, and approval cards
        /// neither flag it new nor quote its KV values. Without it, a KV value is quoted on
        /// every card that asks for it (an agent could have linked the server).
        #[arg(long)]
        with_factor: bool,
        /// Your factor, from stdin (first line; the admin secret of --admin-stdin after it).
        #[command(flatten)]
        factor: super::FactorArgs,
    },
}

/// How to reach an OpenBao node and log in to it (shared by `dynamic add` and `env link`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BaoArgs {
    /// OpenBao namespace (sent as X-Vault-Namespace).
    #[arg(long)]
    namespace: Option<String>,
    /// PEM file of the CA that signed the OpenBao nodes' certificates (default: the system
    /// roots). Its content is stored sealed with the variable, not its path.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for OpenBao's TLS listener (read at each connection).
    #[arg(long, requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(long, requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
    /// How keyveil logs in to OpenBao: token | approle | jwt | userpass. The secret (token,
    /// AppRole secret id, JWT, password) is read like the admin URL: /dev/tty, --admin-stdin
    /// or --admin-env.
    #[arg(long, default_value = "token")]
    auth: String,
    /// Mount of the auth method (default: approle, jwt or userpass).
    #[arg(long)]
    auth_mount: Option<String>,
    /// AppRole role id (not a secret by itself; the secret id is read like a token).
    #[arg(long)]
    role_id: Option<String>,
    /// Role of OpenBao's JWT auth method.
    #[arg(long)]
    auth_role: Option<String>,
    /// User name of a userpass login (the password is read like a token: /dev/tty or
    /// --admin-stdin, never argv).
    #[arg(long)]
    username: Option<String>,
    /// Read the admin secret (token, secret id, JWT) from this environment variable of the
    /// CLI (a CI job's OIDC token): its name on the command line, never its value.
    #[arg(long)]
    admin_env: Option<String>,
}

/// Runs a `dynamic` subcommand.
pub(crate) async fn run(paths: &Paths, cmd: DynamicCommand) -> Result<i32> {
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
            bao:
                BaoArgs {
                    namespace,
                    ca_file,
                    client_cert,
                    client_key,
                    auth,
                    auth_mount,
                    role_id,
                    auth_role,
                    username,
                    admin_env,
                },
            mount,
            role,
            kv_path,
            kv_key,
            connect_url,
            prefix,
            description,
            no_check,
            with_factor,
            factor,
        } => {
            // The factor first (the first line of stdin), the admin secret after it.
            let given = match super::factor_from_args(&factor, true)? {
                Some(f) => Some(f),
                None if with_factor => Some(super::factor_input(
                    false,
                    None,
                    false,
                    "Vault passphrase to link with your factor: ",
                )?),
                None => None,
            };
            let template = match template_file {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
                None => template,
            };
            let what = if !engine.starts_with("openbao") {
                "admin URL"
            } else {
                match auth.as_str() {
                    "approle" => "AppRole secret id",
                    "jwt" | "oidc" => "JWT",
                    "userpass" => "OpenBao password",
                    _ => "OpenBao token",
                }
            };
            if admin_env.is_some() && admin_stdin {
                return Err(Exit {
                    code: 2,
                    message: "give the secret with --admin-stdin or --admin-env, not both".into(),
                }
                .into());
            }
            let admin = match &admin_env {
                Some(var) => match std::env::var(var) {
                    Ok(v) => {
                        crate::harden::harden_cli();
                        crate::client::withhold_from_broker(var);
                        keyveil_proto::Passphrase::new(v.trim().to_owned())
                    }
                    Err(_) => {
                        return Err(Exit {
                            code: 2,
                            message: format!(
                                "the environment variable {var} is not set (or not UTF-8)\nhint: in CI, expose the job's OIDC token under that name, or use --admin-stdin"
                            ),
                        }
                        .into());
                    }
                },
                None => read_secret_line(
                    admin_stdin,
                    &format!(
                        "{what} for {env}/{} (hidden): ",
                        var.as_deref().unwrap_or("*")
                    ),
                )?,
            };
            let ca_pem = match &ca_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("cannot read the CA file {}", p.display()))?,
                ),
                None => None,
            };
            let abs = |p: Option<std::path::PathBuf>| -> Result<Option<String>> {
                p.map(|p| {
                    std::fs::canonicalize(&p)
                        .with_context(|| format!("cannot find {}", p.display()))
                        .map(|p| p.display().to_string())
                })
                .transpose()
            };
            let client_cert = abs(client_cert)?;
            let client_key = abs(client_key)?;
            let auth = (auth != "token").then_some(auth);
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
                ("namespace", namespace),
                ("ca_pem", ca_pem),
                ("client_cert", client_cert),
                ("client_key", client_key),
                ("auth", auth),
                ("auth_mount", auth_mount),
                ("role_id", role_id),
                ("auth_role", auth_role),
                ("username", username),
            ] {
                if let Some(v) = v {
                    options.insert(k.to_owned(), v);
                }
            }
            // Replacing a variable that has a value needs the factor (asked at the terminal
            // unless given).
            let d = call_guarded(paths, given, |_| {
                Ok(DynamicAddRequest {
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
                })
            })
            .await?;
            say(format!(
                "added {env}/{{{}}}: {} at {}, output {}{}",
                d.variables.join(","),
                d.engine,
                d.target,
                d.output,
                if d.prefix.is_empty() {
                    String::new()
                } else {
                    format!(", users named {}*", d.prefix)
                }
            ));
            Ok(0)
        }
    }
}

/// Prints the dynamic credentials of one grant (from `grants`): handle and expiry only; and
/// the reads its spawns wait on for OpenBao's second approver (the accessor to authorize).
pub(super) fn print_grant_credentials(grant: &keyveil_proto::op::GrantInfo) {
    for w in &grant.openbao_waits {
        say(format!(
            "    {}: waits for a second approver in OpenBao (control group on {}): bao write sys/control-group/authorize accessor={}",
            w.variable, w.path, w.accessor
        ));
    }
    for d in &grant.dynamic {
        let h = &d.handle;
        say(format!(
            "    {}: {} {} at {}, dies {}",
            d.variable,
            h.engine,
            h.user,
            h.target,
            crate::when::human_time(&d.expires_at.to_string())
        ));
    }
}
