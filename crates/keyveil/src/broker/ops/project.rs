//! Project manifests (`keyveil.toml`, `docs/manifest.md`): the human approves a manifest's
//! digest with the factor (`project_approve`), and lists the pins (`project_status`). The
//! check at each run is `broker/manifest_pin.rs`.

use std::sync::Arc;

use jiff::Timestamp;
use keyveil_proto::{ErrorCode, op};
use keyveil_vault::ManifestPin;
use serde_json::json;

use super::vars::save;
use crate::broker::Broker;
use crate::broker::factor_ops::{self, Proof};
use crate::broker::manifest_pin::file_name;
use crate::broker::state::{OpError, OpResult};
use crate::manifest;

/// Handles [`keyveil_proto::Request::ProjectApprove`]: reads the manifest at `o.path`, checks
/// that its digest is the one the human was shown, that it parses and that every environment it
/// declares exists, verifies the factor (never `confirm`; at least the strongest any of those
/// environments' rules need), then pins each environment to the digest. Pins of this path for
/// environments the manifest no longer declares are dropped. Audited (`project_apply`).
///
/// `digest` is the `factor_proof::request_digest` of the request, for its factor proof.
pub(super) async fn approve(
    broker: &Arc<Broker>,
    o: op::ProjectApprove,
    digest: Option<[u8; crate::factor_proof::LEN]>,
) -> OpResult<op::ProjectApproved> {
    let op::ProjectApprove {
        path,
        sha256,
        factor,
    } = o;
    broker.lock().vault()?;
    if !path.starts_with('/') {
        return Err(OpError::new(
            ErrorCode::Usage,
            "the manifest's path must be absolute",
        ));
    }
    // Pinned where the file is: its folder canonical, its own name never a symlink (m3).
    let path = manifest::canonical_path(std::path::Path::new(&path))
        .map(|p| p.display().to_string())
        .map_err(|e| {
            OpError::new(ErrorCode::Failed, e)
                .hint("run `keyveil project apply` in the repository (the file itself, not a link)")
        })?;
    let bytes = manifest::read_file(std::path::Path::new(&path)).map_err(|e| {
        OpError::new(ErrorCode::Failed, e).hint("run `keyveil project apply` in the repository")
    })?;
    let now = manifest::sha256_hex(&bytes);
    if now != sha256 {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!(
                "{} changed after its plan was shown (its SHA-256 is now {})",
                file_name(&path),
                now.get(..12).unwrap_or(&now)
            ),
        )
        .hint("run `keyveil project apply` again and read the new plan before approving"));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        OpError::new(ErrorCode::Usage, "the manifest is not UTF-8 text")
            .hint("save keyveil.toml as UTF-8")
    })?;
    let m = manifest::parse(&text).map_err(|e| {
        OpError::new(
            ErrorCode::Usage,
            format!("{}: line {}: {}", file_name(&path), e.line, e.message),
        )
        .hint(e.hint.clone())
    })?;
    let envs: Vec<String> = m.environments.iter().map(|e| e.name.clone()).collect();
    let mut required = keyveil_vault::FactorKind::Totp;
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        for e in &envs {
            if !v.data().environments.contains_key(e) {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("the manifest declares environment {e:?}, which does not exist"),
                )
                .hint("`keyveil project apply` creates it before approving"));
            }
        }
    }
    for e in &envs {
        required = factor_ops::stronger(required, factor_ops::rule_change_factor(broker, e));
    }
    let proof = Proof::from_request(factor, digest, false);
    let used = factor_ops::verify_factor(
        broker,
        proof,
        required,
        json!({"project_apply": path, "sha256": sha256}),
    )
    .await?
    .used;
    let mut inner = broker.lock();
    inner.audit_log_mut().ready("project_apply")?;
    if used == "passphrase" {
        // Checked under the same lock as the pin: nothing is stored in between. A TOTP code
        // proves this one request only, so the values `apply` stored with it were stored
        // without the factor: not checked then (`docs/manifest.md`).
        unverified_values(inner.vault()?, &m)?;
    }
    let v = inner.vault_mut()?;
    let manifests = &mut v.data_mut().manifests;
    manifests.retain(|env, pin| pin.path != path || envs.contains(env));
    for e in &envs {
        manifests.insert(
            e.clone(),
            ManifestPin {
                path: path.clone(),
                sha256: sha256.clone(),
                approved_at: Timestamp::now(),
            },
        );
    }
    save(v)?;
    inner.audit(
        "project_apply",
        json!({"path": path, "sha256": sha256, "environments": envs}),
    );
    Ok(op::ProjectApproved {
        path,
        sha256,
        environments: envs,
    })
}

/// Refuses to pin a manifest one of whose declared variables holds a value stored without the
/// human's factor (a first value, which anyone with the user's uid could have chosen before
/// the first `apply`; red team s14b, m9): the factor would vouch for the agent's value.
/// `keyveil project apply` asks for such values again, with the factor, before the pin.
fn unverified_values(v: &keyveil_vault::Vault, m: &manifest::Manifest) -> OpResult<()> {
    for e in &m.environments {
        let Some(env) = v.data().environments.get(&e.name) else {
            continue;
        };
        for d in &e.variables {
            let Some(var) = env.variables.get(&d.name) else {
                continue;
            };
            let held = var.value.is_some() || var.dynamic.is_some();
            if let Some(s) = var.stored.as_ref().filter(|s| held && !s.factor) {
                return Err(OpError::new(
                    ErrorCode::Denied,
                    format!(
                        "{}/{} holds a value stored without your factor ({}); it is not pinned",
                        e.name, d.name, s.at
                    ),
                )
                .hint("run `keyveil project apply` with your passphrase: it asks for that value again and stores it with your factor"));
            }
        }
    }
    Ok(())
}

/// Handles [`keyveil_proto::Request::ProjectStatus`]: every pin, with the file's digest now.
pub(super) fn status(broker: &Broker) -> OpResult<op::ProjectPins> {
    let pins: Vec<(String, ManifestPin)> = {
        let inner = broker.lock();
        let v = inner.vault()?;
        v.data()
            .manifests
            .iter()
            .map(|(e, p)| (e.clone(), p.clone()))
            .collect()
    };
    let pins = pins
        .into_iter()
        .map(|(environment, p)| op::ProjectPin {
            environment,
            current: manifest::read_file(std::path::Path::new(&p.path))
                .ok()
                .map(|b| manifest::sha256_hex(&b)),
            path: p.path,
            sha256: p.sha256,
            approved_at: p.approved_at,
        })
        .collect();
    Ok(op::ProjectPins { pins })
}
