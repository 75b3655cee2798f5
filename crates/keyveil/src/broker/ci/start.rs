//! `keyveil ci start` in the broker: the ephemeral vault, the frozen manifest and allowlist, the
//! OpenBao logins with the job's OIDC token, and CI mode switched on for the broker's life.

use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;
use keyveil_proto::op::{self, CiBootstrap};
use keyveil_proto::{DynamicAddRequest, ErrorCode, Passphrase};
use keyveil_vault::{
    AutoApproveRule, Environment, KdfParams, SealedValue, SecretValue, Source, StoreRecord,
    Variable, Vault, VaultData,
};
use serde_json::json;

use super::Session;
use super::rules::{self, Rule};
use crate::broker::Broker;
use crate::broker::state::{OpError, OpResult};
use crate::ci_sign::Signer;
use crate::manifest::{Manifest, VarDecl};

/// A failure at start: nothing is served.
fn failed(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Failed, msg)
}

/// Starts CI mode: see the module's documentation. Every failure stops the broker (the
/// bootstrap fails), so a job never runs with a half-made broker.
///
/// Errors: the home is not fresh; the allowlist or manifest is refused; a rule's command
/// cannot be pinned; an OpenBao login fails; the audit log cannot be written.
pub(crate) async fn start(broker: &Arc<Broker>, b: CiBootstrap) -> OpResult<op::Bootstrapped> {
    let vault_path = broker.paths.vault();
    if vault_path.exists() || broker.lock().is_unlocked() {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!(
                "`keyveil ci start` needs a fresh KEYVEIL_HOME, and {} holds a vault",
                vault_path.display()
            ),
        )
        .hint("point KEYVEIL_HOME at a new empty folder (for example under $RUNNER_TEMP)"));
    }
    let base = Path::new(&b.cwd);
    let rules = rules::parse(&b.policy_text, base)?;
    let manifest = match &b.manifest_text {
        Some(t) => crate::manifest::parse(t).map_err(|e| {
            OpError::new(
                ErrorCode::Usage,
                format!(
                    "keyveil.toml: line {}: {}; nothing was started",
                    e.line, e.message
                ),
            )
            .hint(e.hint)
        })?,
        None => Manifest::default(),
    };
    for (i, r) in rules.iter().enumerate() {
        if !manifest
            .environments
            .iter()
            .any(|e| e.name == r.environment)
        {
            return Err(OpError::new(
                ErrorCode::Usage,
                format!(
                    "the CI allowlist: rule {} names environment '{}', which keyveil.toml does not declare; nothing was started",
                    i + 1,
                    r.environment
                ),
            )
            .hint("declare the environment in keyveil.toml, or fix the rule"));
        }
    }
    let data = vault_data(&b, &manifest)?;
    create_vault(broker, data).await?;
    bind_rules(broker, &rules).await?;
    let manifest_dir = b
        .manifest_path
        .as_deref()
        .and_then(|p| Path::new(p).parent())
        .unwrap_or(base)
        .to_path_buf();
    for e in &manifest.environments {
        for v in e.variables.iter().filter(|v| !v.is_local()) {
            link(broker, &b, &e.name, v, &manifest_dir).await?;
        }
    }
    let signer = Signer::generate().map_err(failed)?;
    let public_key = signer.public_key();
    let policy_sha256 = crate::manifest::sha256_hex(b.policy_text.as_bytes());
    let manifest_sha256 = b
        .manifest_text
        .as_ref()
        .map(|t| crate::manifest::sha256_hex(t.as_bytes()));
    let environments: Vec<String> = manifest
        .environments
        .iter()
        .map(|e| e.name.clone())
        .collect();
    broker
        .ci
        .set(Session {
            signer,
            used: std::sync::Mutex::new(Vec::new()),
        })
        .map_err(|_| failed("this broker already runs in CI mode"))?;
    {
        let mut inner = broker.lock();
        inner.set_ci();
        inner.must_audit(
            "ci_start",
            json!({
                "policy_path": b.policy_path,
                "policy_sha256": policy_sha256,
                "manifest_path": b.manifest_path,
                "manifest_sha256": manifest_sha256,
                "public_key": public_key,
                "environments": environments,
                "rules": rules.iter().map(|r| json!({
                    "environment": r.environment,
                    "argv": r.argv,
                    "prefix": r.prefix,
                    "cwd": r.cwd,
                    "ttl_seconds": r.ttl_seconds,
                })).collect::<Vec<_>>(),
            }),
        )?;
    }
    Ok(op::Bootstrapped::CiStarted {
        ci: op::CiStarted {
            public_key,
            policy_sha256,
            manifest_sha256,
            environments,
            rules: rules.len(),
        },
    })
}

/// The vault's first and only full write: the start step's PATH and HOME, the manifest's
/// environments, and each local variable's value from the start step's environment (stored as
/// with the factor: whoever wrote the job chose it, not the agent).
fn vault_data(b: &CiBootstrap, m: &Manifest) -> OpResult<VaultData> {
    let mut data = VaultData::default();
    data.settings.path = b
        .path
        .as_deref()
        .map(|p| {
            let mut seen: Vec<&str> = Vec::new();
            for d in p.split(':').filter(|d| d.starts_with('/')) {
                if !seen.contains(&d) {
                    seen.push(d);
                }
            }
            seen.join(":")
        })
        .filter(|p| !p.is_empty());
    data.settings.home = b.home.clone().filter(|h| h.starts_with('/'));
    let now = Timestamp::now();
    for e in &m.environments {
        let mut env = Environment::new(e.description.clone());
        env.policy.max_ttl_seconds = 24 * 3600;
        env.policy.insecure_loopback = b.insecure_loopback;
        for v in e.variables.iter().filter(|v| v.is_local()) {
            let value = match b.values.get(&v.name) {
                Some(p) => Some(
                    SealedValue::seal(SecretValue::new(p.expose().to_owned()))
                        .map_err(|e| failed(format!("cannot seal a value: {e}")))?,
                ),
                None => None,
            };
            let stored = value.as_ref().map(|_| StoreRecord {
                at: now,
                factor: true,
            });
            env.variables.insert(
                v.name.clone(),
                Variable {
                    value,
                    description: v.description.clone(),
                    source: Source::Human,
                    created_at: now,
                    rotated_at: None,
                    dynamic: None,
                    stored,
                },
            );
        }
        data.environments.insert(e.name.clone(), env);
    }
    Ok(data)
}

/// Creates the vault under a random key that never leaves this process (the cheapest KDF: a
/// 256-bit random key needs no stretching), and opens its audit log.
async fn create_vault(broker: &Arc<Broker>, data: VaultData) -> OpResult<()> {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut()).map_err(|e| failed(format!("no random key: {e}")))?;
    let key = Passphrase::new(hex::encode(raw.as_ref()));
    let path = broker.paths.vault();
    let vault = crate::broker::kdf_gate::derive(move || {
        Vault::create_with(&path, key.expose().as_bytes(), KdfParams::MINIMUM, data)
    })
    .await
    .map_err(|e| failed(format!("vault creation failed: {e}")))?
    .map_err(|e| failed(format!("vault creation failed: {e}")))?;
    crate::broker::ops::open_vault(broker, vault)?;
    broker.lock().must_audit("init", json!({"ci": true}))
}

/// Each rule becomes an auto-approve rule of its environment, bound (as `policy ENV
/// auto-approve` binds) to what its command runs now: a later change refuses it.
async fn bind_rules(broker: &Arc<Broker>, rules: &[Rule]) -> OpResult<()> {
    for (i, r) in rules.iter().enumerate() {
        let (search_path, home) = {
            let inner = broker.lock();
            (inner.policy_path(&r.environment), inner.child_home())
        };
        let pins = crate::broker::access::prepare_bounded(
            r.argv.clone(),
            r.cwd.clone(),
            search_path,
            home,
        )
        .await
        .map_err(|e| OpError {
            message: format!(
                "the CI allowlist: rule {}: its command cannot be pinned: {}; nothing was started",
                i + 1,
                e.message
            ),
            ..e
        })?;
        let bound = crate::broker::policy_ops::bind(&pins);
        let mut inner = broker.lock();
        let v = inner.vault_mut()?;
        if let Some(e) = v.data_mut().environments.get_mut(&r.environment) {
            e.policy.auto_approve.push(AutoApproveRule {
                argv: r.argv.clone(),
                prefix: r.prefix,
                cwd: r.cwd.clone(),
                ttl_seconds: r.ttl_seconds,
                bound,
            });
        }
    }
    let mut inner = broker.lock();
    inner
        .vault_mut()?
        .save()
        .map_err(|e| failed(format!("cannot save the vault: {e}")))
}

/// Links one OpenBao (or dynamic) source of the manifest: logs in with the job's OIDC token
/// where `auth = "jwt"` (the token stays in the broker's memory), checked before anything runs.
async fn link(
    broker: &Arc<Broker>,
    b: &CiBootstrap,
    env: &str,
    v: &VarDecl,
    dir: &Path,
) -> OpResult<()> {
    let mut options = v.options.clone();
    let template = options.remove("template").unwrap_or_default();
    let output = options.remove("output").unwrap_or_default();
    if options.get("auth").map(String::as_str) != Some("jwt") {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "keyveil.toml: {env}/{} ({}) does not log in with `auth = \"jwt\"`; in CI mode the job's OIDC token is the only login secret; nothing was started",
                v.name, v.source
            ),
        )
        .hint("set auth = \"jwt\" (and auth_role) on OpenBao sources an agent in CI uses"));
    }
    let Some(jwt) = &b.jwt else {
        return Err(OpError::new(
            ErrorCode::Usage,
            format!(
                "{env}/{} logs in with a JWT, and none was given; nothing was started",
                v.name
            ),
        )
        .hint("pass the job's OIDC token with --jwt-env VAR or --jwt-file FILE"));
    };
    if let Some(ca) = options.remove("ca_file") {
        let p = dir.join(&ca);
        let pem = std::fs::read_to_string(&p)
            .map_err(|e| failed(format!("cannot read the CA file {}: {e}", p.display())))?;
        options.insert("ca_pem".to_owned(), pem);
    }
    for (k, given) in [
        ("auth_role", &b.auth_role),
        ("address", &b.address),
        ("ca_pem", &b.ca_pem),
    ] {
        if let Some(g) = given {
            options.entry(k.to_owned()).or_insert_with(|| g.clone());
        }
    }
    let req = DynamicAddRequest {
        environment: env.to_owned(),
        name: Some(v.name.clone()),
        engine: v.source.clone(),
        admin: jwt.clone(),
        template,
        output,
        options,
        description: Some(v.description.clone()).filter(|d| !d.is_empty()),
        check: true,
        factor: None,
    };
    crate::broker::dynamic_ops::add_at_ci_start(broker, req)
        .await
        .map_err(|e| OpError {
            message: format!("{env}/{}: {}; nothing was started", v.name, e.message),
            ..e
        })?;
    Ok(())
}
