//! Dynamic credentials held per grant ([`Registry`]): which grant holds which minted
//! credential, the results of background revocations and reaps waiting for the audit log, the
//! gate that keeps a reap from racing a mint, and the OpenBao logins.
//!
//! The broker's side (minting at a grant's first spawn, destroying at its end, the tick's
//! sweep, reaping after a crash) is in `broker/leases.rs` and `broker/lease_reap.rs`; the
//! registry lives in the broker's state (`Inner::dynamic`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;
use keyveil_vault::SecretValue;
use serde_json::{Value, json};

use super::{DynamicSpec, Minted};

/// Attempts to destroy a credential before giving up (the reaper gets it at the next unlock).
const REVOKE_ATTEMPTS: u32 = 3;

/// A credential held for a grant.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    variable: String,
    spec: DynamicSpec,
    minted: Minted,
    minted_at: Timestamp,
}

impl Held {
    /// A credential for `variable` minted now by `spec`'s engine.
    pub(crate) fn new(variable: String, spec: DynamicSpec, minted: Minted) -> Held {
        Held {
            variable,
            spec,
            minted,
            minted_at: Timestamp::now(),
        }
    }

    /// How an audit entry names it: the variable and the handle (never the value).
    pub(crate) fn audit_fields(&self) -> Value {
        json!({"variable": self.variable, "handle": self.minted.handle})
    }
}

#[derive(Debug)]
struct GrantCreds {
    creds: Vec<Held>,
    last_use: Instant,
}

/// Results of background revocations and reaps (`(event, fields)`), drained into the audit
/// log by the broker's tick ([`Registry::drain_outbox`]).
pub(crate) type Outbox = Arc<Mutex<Vec<(&'static str, Value)>>>;

/// Dynamic credentials held by the broker, per grant. Lives in the broker state (`Inner`).
#[derive(Debug, Default)]
pub(crate) struct Registry {
    held: BTreeMap<String, GrantCreds>,
    outbox: Outbox,
    /// Reaps take it exclusively; mints share it: a reap never races a fresh mint.
    gate: Arc<tokio::sync::RwLock<()>>,
    /// Revocations still running in the background ([`Registry::inflight`]).
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    /// Tokens from OpenBao logins (memory only; revoked at lock and stop).
    logins: Arc<super::Logins>,
    /// Reads OpenBao holds for a control group that a spawn waits on, per grant.
    cg_waits: BTreeMap<String, Vec<keyveil_proto::op::ControlGroupWait>>,
}

impl Registry {
    /// A spawn under `grant_id` waits for OpenBao's second approver on `wait`.
    pub(crate) fn cg_wait_start(
        &mut self,
        grant_id: &str,
        wait: keyveil_proto::op::ControlGroupWait,
    ) {
        let list = self.cg_waits.entry(grant_id.to_owned()).or_default();
        list.retain(|w| w.variable != wait.variable);
        list.push(wait);
    }

    /// The spawns under `grant_id` wait no more (released, refused or given up).
    pub(crate) fn cg_wait_end(&mut self, grant_id: &str) {
        self.cg_waits.remove(grant_id);
    }

    /// What the spawns under `grant_id` wait on, for `keyveil grants`.
    pub(crate) fn cg_waits(&self, grant_id: &str) -> Vec<keyveil_proto::op::ControlGroupWait> {
        self.cg_waits.get(grant_id).cloned().unwrap_or_default()
    }

    /// The credentials a grant holds, as shown by `keyveil grants` (no secret).
    pub(crate) fn describe(&self, grant_id: &str) -> Vec<keyveil_proto::op::DynamicCredential> {
        self.held
            .get(grant_id)
            .map(|g| {
                g.creds
                    .iter()
                    .map(|h| keyveil_proto::op::DynamicCredential {
                        variable: h.variable.clone(),
                        handle: keyveil_proto::op::CredentialInfo {
                            engine: h.minted.handle.engine.name().to_owned(),
                            user: h.minted.handle.user.clone(),
                            lease_id: h.minted.handle.lease_id.clone(),
                            target: h.minted.handle.target.clone(),
                        },
                        minted_at: h.minted_at,
                        expires_at: h.minted.expires_at,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every credential held, for `keyveil sweep` (broker only): `(grant id, variable, value)`,
    /// the secret variables of an output form (`PGPASSWORD`) included under the variable's name.
    pub(crate) fn held_values(&self) -> Vec<(String, String, SecretValue)> {
        let mut out = Vec::new();
        for (grant, g) in &self.held {
            for h in &g.creds {
                out.push((grant.clone(), h.variable.clone(), h.minted.value.clone()));
                for (_, v) in &h.minted.extra_env {
                    out.push((grant.clone(), h.variable.clone(), v.clone()));
                }
            }
        }
        out
    }

    /// The OpenBao lease ids live grants hold.
    #[cfg(feature = "openbao")]
    pub(crate) fn held_leases(&self) -> std::collections::BTreeSet<String> {
        self.held
            .values()
            .flat_map(|g| g.creds.iter().map(|h| h.minted.handle.lease_id.clone()))
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Names of every minted user held, for the reaper's keep list.
    pub(crate) fn held_users(&self) -> Vec<String> {
        self.held
            .values()
            .flat_map(|g| g.creds.iter().map(|h| h.minted.handle.user.clone()))
            .collect()
    }

    /// Whether no grant holds a credential.
    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The grants holding credentials, each with when one was last handed out.
    pub(crate) fn holders(&self) -> impl Iterator<Item = (&str, Instant)> {
        self.held.iter().map(|(id, g)| (id.as_str(), g.last_use))
    }

    /// The credential `grant_id` already holds for `variable`, marked as handed out now.
    pub(crate) fn reuse(&mut self, grant_id: &str, variable: &str) -> Option<Minted> {
        self.held.get_mut(grant_id).and_then(|g| {
            g.last_use = Instant::now();
            g.creds
                .iter()
                .find(|h| h.variable == variable)
                .map(|h| h.minted.clone())
        })
    }

    /// Records credentials minted for `grant_id` (handed out now).
    pub(crate) fn register(&mut self, grant_id: &str, fresh: Vec<Held>) {
        let entry = self
            .held
            .entry(grant_id.to_owned())
            .or_insert_with(|| GrantCreds {
                creds: Vec::new(),
                last_use: Instant::now(),
            });
        entry.creds.extend(fresh);
        entry.last_use = Instant::now();
    }

    /// Forgets and returns the credentials `grant_id` holds (`None`: it holds none).
    pub(crate) fn take(&mut self, grant_id: &str) -> Option<Vec<Held>> {
        self.held.remove(grant_id).map(|g| g.creds)
    }

    /// Destroys `creds` at their sources in the background (each tried a few times); the
    /// outcome of each goes to the outbox as `dynamic_revoked` or `dynamic_revoke_failed`.
    pub(crate) fn revoke_in_background(&self, grant_id: &str, creds: Vec<Held>) {
        spawn_revocations(
            grant_id.to_owned(),
            creds,
            self.outbox.clone(),
            self.inflight.clone(),
            self.logins.clone(),
        );
    }

    /// Takes the entries background tasks queued for the audit log, oldest first.
    pub(crate) fn drain_outbox(&self) -> Vec<(&'static str, Value)> {
        std::mem::take(&mut *lock_outbox(&self.outbox))
    }

    /// The outbox, for a background task to queue its entries ([`push_outbox`]).
    pub(crate) fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// The gate: mints hold it shared, reaps exclusively.
    pub(crate) fn gate(&self) -> Arc<tokio::sync::RwLock<()>> {
        self.gate.clone()
    }

    /// How many background revocations are still running.
    pub(crate) fn inflight(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.inflight.clone()
    }

    /// The OpenBao logins.
    pub(crate) fn logins(&self) -> Arc<super::Logins> {
        self.logins.clone()
    }
}

/// Queues an audit entry for the broker's next sweep (entries from background tasks).
pub(crate) fn push_outbox(o: &Outbox, event: &'static str, fields: Value) {
    lock_outbox(o).push((event, fields));
}

fn lock_outbox(o: &Outbox) -> std::sync::MutexGuard<'_, Vec<(&'static str, Value)>> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

fn spawn_revocations(
    grant_id: String,
    creds: Vec<Held>,
    outbox: Outbox,
    inflight: Arc<std::sync::atomic::AtomicUsize>,
    logins: Arc<super::Logins>,
) {
    use std::sync::atomic::Ordering;
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        tracing::error!(
            grant_id,
            "no async runtime to revoke dynamic credentials; the reaper will get them"
        );
        return;
    };
    inflight.fetch_add(1, Ordering::SeqCst);
    rt.spawn(async move {
        for h in creds {
            let t0 = Instant::now();
            let mut last = None;
            for attempt in 0..REVOKE_ATTEMPTS {
                match super::revoke(&h.spec, &logins, &h.minted.handle).await {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        tokio::time::sleep(std::time::Duration::from_millis(
                            200 * u64::from(attempt + 1),
                        ))
                        .await;
                    }
                }
            }
            let entry = match last {
                None => (
                    "dynamic_revoked",
                    json!({"grant_id": grant_id, "variable": h.variable, "handle": h.minted.handle, "ms": t0.elapsed().as_millis() as u64}),
                ),
                Some(e) => {
                    tracing::error!(grant_id, variable = h.variable, error = %e, "cannot revoke a dynamic credential");
                    (
                        "dynamic_revoke_failed",
                        json!({"grant_id": grant_id, "variable": h.variable, "handle": h.minted.handle, "error": e.to_string()}),
                    )
                }
            };
            lock_outbox(&outbox).push(entry);
        }
        inflight.fetch_sub(1, Ordering::SeqCst);
    });
}
