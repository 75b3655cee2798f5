//! After an unlock: revoke the OpenBao database leases a crashed broker minted and never
//! revoked.
//!
//! OpenBao's lease ids carry no keyveil mark, so the reaper cannot list "keyveil's leases" at
//! the server (and must never touch a teammate's). It reads them from keyveil's own audit
//! log instead: every lease is recorded in a `dynamic_mint` entry (its id, variable and
//! expiry: no secret) before the run that uses it starts, and its end in `dynamic_revoked`.
//! The log's entries are MACed under a key sealed in the vault, so an agent that writes the
//! file cannot add a lease for the broker to revoke: the log is verified (against the sealed
//! checkpoint) in the same read that yields the entries used, so no file swapped in after the
//! verification is ever read. A mint not followed by a revocation or a reap, whose expiry is
//! still ahead and that no live grant holds, is revoked with the variable's own login (`sys/leases/revoke`, idempotent) and a
//! `dynamic_lease_reaped` entry records its lease id.

// `serde_json::Value` indexing by key returns `Null` for a missing key: it never panics.
#![allow(clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Value, json};

use super::Broker;
use crate::dynamic::{DynamicSpec, EngineKind, push_outbox};

/// The most audit entries read back (the newest): a lease older than this many entries has
/// long reached its grant's expiry.
const MAX_ENTRIES: usize = 100_000;

/// A lease to revoke: its variable's spec, label and the lease id.
struct Orphan {
    label: String,
    spec: DynamicSpec,
    lease_id: String,
}

/// Finds the orphaned leases (see the module doc); `Err` with a reason when the audit log
/// cannot be trusted or read (nothing is reaped then).
fn orphans(broker: &Broker, held: &BTreeSet<String>) -> Result<Vec<Orphan>, String> {
    let (key, checkpoint, specs) = {
        let inner = broker.lock();
        let vault = inner
            .vault()
            .map_err(|_| "the vault is locked".to_owned())?;
        let mut specs: BTreeMap<(String, String), DynamicSpec> = BTreeMap::new();
        for (en, e) in &vault.data().environments {
            for (vn, v) in &e.variables {
                if let Some(spec) = v
                    .dynamic
                    .as_ref()
                    .and_then(|d| DynamicSpec::from_source(d, e.policy.insecure_loopback).ok())
                    .filter(|s| s.engine == EngineKind::OpenbaoDatabase)
                {
                    // Entries name a variable as shown (an alias where names are hidden).
                    specs.insert((en.clone(), inner.names().shown_name(en, vn)), spec.clone());
                    specs.insert((en.clone(), vn.clone()), spec);
                }
            }
        }
        (
            vault.audit_key(),
            vault.data().audit_checkpoint.clone(),
            specs,
        )
    };
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let path = broker.paths.audit();
    // One read: the entries used are the very bytes verified (a verify then a second read of
    // the path would read whatever file the agent swapped in between).
    let (_, entries) =
        keyveil_vault::audit::verify_and_read(&path, &key, checkpoint.as_ref(), MAX_ENTRIES)
            .map_err(|e| format!("the audit log does not verify ({e})"))?;
    let now = Timestamp::now();
    let mut minted: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut ended: BTreeSet<String> = BTreeSet::new();
    for e in &entries {
        let lease = e["handle"]["lease_id"].as_str().unwrap_or("");
        let ev = e["event"].as_str().unwrap_or("");
        match ev {
            "dynamic_mint" if e["engine"] == "openbao-database" && !lease.is_empty() => {
                let live = e["expires_at"]
                    .as_str()
                    .and_then(|t| t.parse::<Timestamp>().ok())
                    .is_some_and(|t| t > now);
                if live {
                    let env = e["environment"].as_str().unwrap_or("").to_owned();
                    let var = e["variable"].as_str().unwrap_or("").to_owned();
                    minted.insert(lease.to_owned(), (env, var));
                }
            }
            "dynamic_revoked" if !lease.is_empty() => {
                ended.insert(lease.to_owned());
            }
            "dynamic_lease_reaped" => {
                if let Some(l) = e["lease_id"].as_str() {
                    ended.insert(l.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(minted
        .into_iter()
        .filter(|(lease, _)| !ended.contains(lease) && !held.contains(lease))
        .filter_map(|(lease_id, (env, var))| {
            specs.get(&(env.clone(), var.clone())).map(|spec| Orphan {
                label: format!("{env}/{var}"),
                spec: spec.clone(),
                lease_id,
            })
        })
        .collect())
}

/// Revokes, in the background, the OpenBao leases a crashed broker left (called at unlock,
/// with the lease ids live grants hold). One `dynamic_lease_reaped` entry per lease revoked,
/// `dynamic_reap_failed` when the log cannot be trusted or a revocation fails.
pub(crate) fn on_unlock(broker: &Arc<Broker>, held: BTreeSet<String>) {
    let found = orphans(broker, &held);
    let (outbox, logins, gate) = {
        let inner = broker.lock();
        (
            inner.dynamic().outbox(),
            inner.dynamic().logins(),
            inner.dynamic().gate(),
        )
    };
    let list = match found {
        Ok(l) => l,
        Err(reason) => {
            tracing::warn!(reason, "OpenBao leases of a crashed broker not reaped");
            push_outbox(
                &outbox,
                "dynamic_reap_failed",
                json!({"engine": "openbao-database", "error": format!("{reason}: leases left by a crash end at their grant's expiry")}),
            );
            return;
        }
    };
    if list.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let _exclusive = gate.write().await;
        for o in list {
            let entry: (&'static str, Value) = match crate::dynamic::openbao::revoke(
                &o.spec,
                &logins,
                &o.lease_id,
            )
            .await
            {
                Ok(()) => (
                    "dynamic_lease_reaped",
                    json!({"variable": o.label, "engine": "openbao-database", "target": o.spec.shown_target(), "lease_id": o.lease_id}),
                ),
                Err(e) => (
                    "dynamic_reap_failed",
                    json!({"variable": o.label, "engine": "openbao-database", "lease_id": o.lease_id, "error": e.to_string()}),
                ),
            };
            push_outbox(&outbox, entry.0, entry.1);
        }
    });
}
