//! `keyveil ci`: CI mode (`docs/ci.md`). `start` starts a broker with an ephemeral vault, the
//! manifest and allowlist frozen, logged in to OpenBao with the job's OIDC token; `scan`
//! looks for the job's values in artifact folders; `finish` ends the broker and writes its
//! signed audit chain; `verify` checks that chain offline with the public key from the job log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;

use super::{Exit, call, json_text, say};
use crate::paths::Paths;
use keyveil_proto::{Passphrase, op};

/// `keyveil ci` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum CiCommand {
    /// Start the job's broker (in a fresh KEYVEIL_HOME, before the agent's step): an ephemeral
    /// vault under a random key held in memory only, keyveil.toml and the allowlist frozen
    /// (their SHA-256 printed and audited), OpenBao logins with the job's OIDC token. Prints
    /// the public key that will sign the audit chain. Local variables of keyveil.toml take
    /// their values from this step's environment variables of the same names.
    ///
    /// Example:
    ///   keyveil ci start --policy .github/keyveil-allow.toml --jwt-env ACTIONS_ID_TOKEN
    #[command(verbatim_doc_comment)]
    Start {
        /// The allowlist: `[[allow]]` rules (environment, argv, prefix, cwd, ttl_seconds).
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// The manifest (default: ./keyveil.toml).
        #[arg(long, value_name = "FILE")]
        manifest: Option<PathBuf>,
        /// The environment variable that holds the job's OIDC token (JWT).
        #[arg(long, value_name = "VAR", conflicts_with = "jwt_file")]
        jwt_env: Option<String>,
        /// A file that holds the job's OIDC token (JWT).
        #[arg(long, value_name = "FILE")]
        jwt_file: Option<PathBuf>,
        /// The OpenBao JWT role, where keyveil.toml names none.
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// The OpenBao address, where keyveil.toml names none.
        #[arg(long, value_name = "URL")]
        address: Option<String>,
        /// A CA bundle (PEM) for OpenBao, where keyveil.toml names none.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Allow plain HTTP to a loopback OpenBao listener of this user (a `bao proxy` the job
        /// runs itself); an agent of the same user that takes the port gets the JWT.
        #[arg(long)]
        insecure_loopback: bool,
        /// Print what was frozen as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scan folders (artifacts, before upload) for every value the job used, in every
    /// encoding the write-side scan knows. Exit 1 naming variables and paths (never a value)
    /// when one is found, 0 when clean.
    Scan {
        /// Folders or files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The public key `ci start` printed (its step output `public_key`): the answer must be
        /// signed by it, so a process that took the broker's socket cannot answer "clean".
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
    /// End the job's broker: stop runs, revoke grants, leases and OpenBao tokens, and write
    /// the audit chain and its signed head to DIR.
    Finish {
        /// The folder to write audit.jsonl and audit-head.json into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Verify a folder `ci finish` wrote: the chain links line to line, and its head is
    /// signed by the key `ci start` printed in the job log.
    Verify {
        /// The folder.
        dir: PathBuf,
        /// The public key from the job log (`ed25519:` and 64 hex digits).
        #[arg(long, value_name = "KEY")]
        public_key: String,
    },
}

/// Runs a `ci` subcommand.
pub(crate) async fn run(paths: &Paths, cmd: CiCommand) -> Result<i32> {
    match cmd {
        CiCommand::Start {
            policy,
            manifest,
            jwt_env,
            jwt_file,
            role,
            address,
            ca_file,
            insecure_loopback,
            json,
        } => {
            let jwt = match (jwt_env, jwt_file) {
                (Some(var), _) => {
                    crate::client::withhold_from_broker(&var);
                    Some(Passphrase::new(std::env::var(&var).map_err(|_| Exit {
                        code: 2,
                        message: format!(
                            "the environment variable {var} is not set\nhint: pass the job's OIDC token in it, or use --jwt-file"
                        ),
                    })?))
                }
                (None, Some(f)) => Some(Passphrase::new(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read the JWT file {}", f.display()))?
                        .trim()
                        .to_owned(),
                )),
                (None, None) => None,
            };
            let mut b = bootstrap(policy, manifest, jwt, role, address, ca_file)?;
            b.insecure_loopback = insecure_loopback;
            let started = crate::authorize::ci_start(paths, b).await?;
            // A step output later steps read as `${{ steps.ID.outputs.public_key }}`: the
            // agent's step cannot change another step's outputs.
            if let Some(out) = std::env::var_os("GITHUB_OUTPUT") {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&out)
                    .context("cannot open $GITHUB_OUTPUT")?;
                std::io::Write::write_all(
                    &mut f,
                    format!("public_key={}\n", started.public_key).as_bytes(),
                )
                .context("cannot write $GITHUB_OUTPUT")?;
            }
            if json {
                say(json_text(&started)?);
            } else {
                say(format!(
                    "keyveil CI broker started for {}\npolicy sha256:   {}\nmanifest sha256: {}\nenvironments: {}; rules: {}\naudit signing key (keep this line of the job log to verify the audit artifact):\n{}",
                    paths.home.display(),
                    started.policy_sha256,
                    started.manifest_sha256.as_deref().unwrap_or("(none)"),
                    started.environments.join(", "),
                    started.rules,
                    started.public_key
                ));
            }
            Ok(0)
        }
        CiCommand::Scan {
            paths: p,
            public_key,
            json,
        } => {
            let abs = p
                .iter()
                .map(|x| {
                    std::path::absolute(x).with_context(|| format!("bad path {}", x.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let key = public_key.as_deref().map(key_arg).transpose()?;
            let nonce = match key {
                Some(_) => {
                    let mut n = [0u8; 32];
                    getrandom::fill(&mut n).map_err(|e| anyhow::anyhow!("no random nonce: {e}"))?;
                    Some(hex::encode(n))
                }
                None => None,
            };
            let d = call(
                paths,
                op::CiScan {
                    paths: abs,
                    nonce: nonce.clone(),
                },
            )
            .await?;
            if let (Some(k), Some(n)) = (&key, &nonce)
                && !crate::ci_sign::scan_signed(k, n, &d)
            {
                return Err(Exit {
                    code: 1,
                    message: "the answer is not signed by the job's broker (the key `ci start` printed): whatever answers on the broker's socket is not it, so the scan proves nothing\nhint: do not upload the artifacts; the job's broker was stopped or replaced".to_owned(),
                }
                .into());
            }
            if json {
                say(json_text(&d)?);
            } else {
                for f in &d.findings {
                    say(format!("{}: {} ({})", f.path, f.variable, f.form));
                }
                let end = if d.truncated {
                    " (a limit cut the scan short: not everything was read)"
                } else {
                    ""
                };
                say(format!(
                    "{} {} in {} files scanned{end}",
                    d.findings.len(),
                    if d.findings.len() == 1 {
                        "value found"
                    } else {
                        "values found"
                    },
                    d.files_scanned
                ));
            }
            if !d.findings.is_empty() {
                return Err(Exit {
                    code: 1,
                    message: "a value the job used is in the scanned folders: do not upload them\nhint: remove or fix the files named above, then run `keyveil ci scan` again".to_owned(),
                }
                .into());
            }
            Ok(if d.truncated { 1 } else { 0 })
        }
        CiCommand::Finish { out } => {
            let out = std::path::absolute(&out).context("bad --out path")?;
            let d = call(paths, op::CiFinish { out }).await?;
            say(format!(
                "audit chain of {} entries written to {} (head {} signed by {})",
                d.entries,
                d.out.display(),
                d.head_sha256,
                d.public_key
            ));
            Ok(0)
        }
        CiCommand::Verify { dir, public_key } => {
            let key = key_arg(&public_key)?;
            match crate::ci_sign::verify_dir(&dir, &key) {
                Ok(v) => {
                    say(format!(
                        "OK: {} entries, head {} signed by this key",
                        v.entries, v.head_sha256
                    ));
                    Ok(0)
                }
                Err(e) => Err(Exit {
                    code: 1,
                    message: format!("the audit artifact does not verify: {e}\nhint: the artifact was changed after the job, or the key is not the one this job printed; do not trust it"),
                }
                .into()),
            }
        }
    }
}

/// A `--public-key` argument, or a usage error.
fn key_arg(s: &str) -> Result<[u8; 32]> {
    Ok(crate::ci_sign::parse_public_key(s).map_err(|e| Exit {
        code: 2,
        message: format!(
            "{e}\nhint: copy the key from the `keyveil ci start` line of the job log (or its step output `public_key`)"
        ),
    })?)
}

/// Reads and freezes what the broker gets at start: the files' bytes (as read now; later edits
/// change nothing), the local variables' values from this step's environment.
fn bootstrap(
    policy: PathBuf,
    manifest: Option<PathBuf>,
    jwt: Option<Passphrase>,
    auth_role: Option<String>,
    address: Option<String>,
    ca_file: Option<PathBuf>,
) -> Result<op::CiBootstrap> {
    let read = |p: &Path, what: &str| -> Result<(String, String)> {
        let bytes = crate::manifest::read_file(p).map_err(|e| Exit {
            code: 2,
            message: format!("{what}: {e}\nhint: give the path of the file"),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| Exit {
            code: 2,
            message: format!(
                "{what} {} is not UTF-8 text\nhint: fix the file",
                p.display()
            ),
        })?;
        let canon = std::fs::canonicalize(p)?.to_string_lossy().into_owned();
        Ok((canon, text))
    };
    let (policy_path, policy_text) = read(&policy, "the CI allowlist")?;
    let manifest = manifest.unwrap_or_else(|| PathBuf::from(crate::manifest::FILE_NAME));
    let (manifest_path, manifest_text) = read(&manifest, "keyveil.toml")?;
    let parsed = crate::manifest::parse(&manifest_text).map_err(|e| Exit {
        code: 2,
        message: format!("{manifest_path}: {e}"),
    })?;
    let mut values = BTreeMap::new();
    for e in &parsed.environments {
        for v in e.variables.iter().filter(|v| v.is_local()) {
            if let Ok(val) = std::env::var(&v.name) {
                crate::client::withhold_from_broker(&v.name);
                values.insert(v.name.clone(), Passphrase::new(val));
            }
        }
    }
    let ca_pem = match ca_file {
        Some(f) => Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read the CA file {}", f.display()))?,
        ),
        None => None,
    };
    let env = |k: &str| std::env::var(k).ok();
    Ok(op::CiBootstrap {
        policy_path,
        policy_text,
        manifest_path: Some(manifest_path),
        manifest_text: Some(manifest_text),
        values,
        jwt,
        auth_role,
        address,
        ca_pem,
        insecure_loopback: false,
        cwd: std::env::current_dir()
            .and_then(std::fs::canonicalize)
            .context("cannot read the working directory")?
            .to_string_lossy()
            .into_owned(),
        path: env("PATH"),
        home: env("HOME"),
    })
}
