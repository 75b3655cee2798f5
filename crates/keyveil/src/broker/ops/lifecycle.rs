//! The vault's life in the broker: status, `init`, `unlock` (and the bootstrap's open), `lock`, and
//! stopping every grant and run.

use super::usage;
use crate::broker::Broker;
use crate::broker::state::{Inner, OpError, OpResult, RunsStopped};
use jiff::Timestamp;
use keyveil_proto::op;
use keyveil_proto::{ErrorCode, Passphrase};
use keyveil_vault::{KdfParams, Vault};
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub(super) fn status(broker: &Broker) -> op::BrokerStatus {
    let inner = broker.lock();
    op::BrokerStatus {
        running: true,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        home: broker.paths.home.clone(),
        socket: broker.paths.socket(),
        vault_exists: broker.paths.vault().exists(),
        locked: !inner.is_unlocked(),
        locked_asks: if !inner.is_unlocked() {
            inner
                .locked_asks()
                .values()
                .map(|(a, _)| a.clone())
                .collect()
        } else {
            Vec::new()
        },
        pending_requests: inner.requests().pending().count(),
        live_grants: inner
            .grants()
            .iter()
            .filter(|g| g.live(Timestamp::now()))
            .count(),
        log_lines_lost: crate::logging::lost_lines(),
        kept_redactors: inner.run_redactors().len(),
        watched_folders: inner.tree_watches().counts().0,
        watched_dirs: inner.tree_watches().counts().1,
        values_outside_custody: crate::broker::access::outside_custody(&inner),
        ci: inner.ci(),
        live_runs: inner.runs().iter().count(),
        runs: inner
            .runs()
            .iter()
            .map(|r| op::LiveRun {
                id: r.id().to_owned(),
                grant_id: r.grant_id().to_owned(),
                pgid: r.pgid(),
                argv: r.argv().to_owned(),
                started_at: r.started_at(),
            })
            .collect(),
    }
}

pub(super) async fn init(
    broker: &Arc<Broker>,
    pass: Passphrase,
    kdf_kib: Option<u32>,
    policy_path: Option<String>,
    home: Option<String>,
) -> OpResult<op::Bootstrapped> {
    if pass.expose().len() < keyveil_proto::MIN_PASSPHRASE_LEN {
        return Err(usage(format!(
            "the passphrase is too short (at least {} characters)",
            keyveil_proto::MIN_PASSPHRASE_LEN
        ))
        .hint("choose a longer passphrase; nothing was created"));
    }
    let path = broker.paths.vault();
    if broker.lock().is_unlocked() {
        // Whatever is (or is not) at the vault's path now, this broker serves the human's vault:
        // a second vault made here would be keyed to whoever typed this passphrase.
        return Err(OpError::new(
            ErrorCode::Failed,
            "the broker is unlocked, serving the vault it opened: `init` is refused while it runs unlocked; nothing was created",
        )
        .hint(format!(
            "if {} was moved or deleted, move it back; to start a new vault, the user runs `keyveil lock` first",
            path.display()
        )));
    }
    if path.exists() {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("a vault already exists at {}", path.display()),
        )
        .hint("unlock it with `keyveil unlock`, or choose another KEYVEIL_HOME"));
    }
    let mut params = KdfParams::DEFAULT;
    if let Some(m) = kdf_kib {
        params.m_cost_kib = m.max(KdfParams::MINIMUM.m_cost_kib);
        params.t_cost = params.t_cost.min(KdfParams::MINIMUM.t_cost.max(2));
    }
    // Record the human's PATH (absolute entries only) and HOME: granted children get these,
    // never the requester's. They are in the vault's first and only write.
    let mut data = keyveil_vault::VaultData::default();
    data.settings.path = policy_path
        .map(|p| {
            let mut seen = Vec::new();
            for d in p.split(':').filter(|d| d.starts_with('/')) {
                if !seen.contains(&d) {
                    seen.push(d);
                }
            }
            seen.join(":")
        })
        .filter(|p| !p.is_empty());
    data.settings.home = home.filter(|h| h.starts_with('/'));
    let create_path = path.clone();
    let vault = crate::broker::kdf_gate::derive(move || {
        Vault::create_with(&create_path, pass.expose().as_bytes(), params, data)
    })
    .await
    .map_err(|e| OpError::new(ErrorCode::Failed, format!("vault creation failed: {e}")))?
    .map_err(vault_err)?;
    let written = std::fs::read(&path).ok();
    // The audit log must open and record the creation; otherwise the new file goes again.
    let undo = |broker: &Broker, e: OpError| {
        let mut inner = broker.lock();
        inner.drop_vault();
        inner.audit_log_mut().close();
        if std::fs::read(&path).ok() == written {
            let _ = std::fs::remove_file(&path);
        }
        e
    };
    if let Err(e) = open_with(broker, vault) {
        return Err(undo(broker, e));
    }
    let recorded = broker.lock().must_audit("init", json!({}));
    if let Err(e) = recorded {
        return Err(undo(broker, e));
    }
    Ok(op::Bootstrapped::Created {
        created: broker.paths.vault(),
    })
}

/// Opens the audit log for `vault` and puts both in the broker. Returns warnings for the
/// human (a log that was moved aside, and what the sealed checkpoint says is missing).
pub(crate) fn open_with(broker: &Broker, vault: Vault) -> OpResult<Vec<String>> {
    use keyveil_vault::audit::{AuditError, AuditWriter, quarantine};
    let key = vault.audit_key();
    let path = broker.paths.audit();
    let cant = |e: AuditError| {
        OpError::new(ErrorCode::Failed, format!("cannot open the audit log: {e}"))
            .hint("check the permissions of KEYVEIL_HOME; `keyveil status` shows where it is")
    };
    // A log whose last line fails its MAC was edited by someone without the key. Refusing to
    // unlock would let any same-user process lock the human out, so the bad log is moved
    // aside as evidence, a new one is started, and the first entry of the new log says so.
    // What the moved log still proves is measured against the seal first: moving a cut log
    // aside must not hide the cut (issue 21: the quarantine used to reset the seal silently).
    let (writer, quarantined) = match AuditWriter::open(&path, &key) {
        Ok(w) => (w, None),
        Err(AuditError::BadLine { .. }) => {
            let moved = quarantine(&path).map_err(cant)?;
            let salvage =
                keyveil_vault::audit::salvage(&moved, &key, vault.data().audit_checkpoint.as_ref())
                    .ok();
            (
                AuditWriter::open(&path, &key).map_err(cant)?,
                Some((moved, salvage)),
            )
        }
        Err(e) => return Err(cant(e)),
    };
    let mut warnings = Vec::new();
    // Does the log still hold the entry the vault sealed last time?
    let seal_broken = match (&quarantined, vault.data().audit_checkpoint.as_ref()) {
        (None, Some(cp)) => keyveil_vault::audit::verify_checkpoint(&path, &key, cp)
            .err()
            .map(|e| e.to_string()),
        _ => None,
    };
    let mut inner = broker.lock();
    inner.install_vault(vault);
    // Entries the previous writer could not write are recorded first in this log.
    inner.audit_log_mut().start(writer);
    if let Some(why) = &seal_broken {
        tracing::warn!(%why, "the audit log does not match the vault's sealed checkpoint");
        inner.audit("audit_seal_mismatch", json!({ "why": why }));
        warnings.push(format!(
            "the audit log does not verify against the checkpoint the vault sealed ({why}): entries were edited, removed or forged after they were written"
        ));
    }
    inner.audit_log_mut().checked(seal_broken);
    inner.open_audit_session();
    if let Some((moved, salvage)) = quarantined {
        // The seal belonged to the log that was moved aside: what it knew is recorded in the
        // new log's first entries (MAC'd), where `audit verify` finds and reports it.
        if let Ok(v) = inner.vault_mut() {
            v.data_mut().audit_checkpoint = None;
        }
        tracing::warn!(moved = %moved.display(), "audit log failed verification and was quarantined");
        let (verified, first_bad, sealed_seq, missing) = match &salvage {
            Some(s) => (
                Some(s.verified),
                s.first_bad.as_ref().map(|b| b.0),
                s.sealed_seq,
                s.missing(),
            ),
            None => (None, None, None, 0),
        };
        inner.audit(
            "audit_quarantined",
            json!({
                "moved_to": moved,
                "verified_lines": verified,
                "first_bad_line": first_bad,
                "sealed_seq": sealed_seq,
                "missing": missing,
            }),
        );
        warnings.push(crate::card::quarantine_warning(
            &moved, verified, first_bad, sealed_seq, missing,
        ));
    }
    Ok(warnings)
}

pub(super) fn vault_err(e: keyveil_vault::VaultError) -> OpError {
    use keyveil_vault::VaultError as E;
    match e {
        E::WrongPassphrase => OpError::new(ErrorCode::Denied, "wrong passphrase"),
        E::NotFound { .. } => OpError::new(ErrorCode::NotFound, "no vault exists yet")
            .hint("create one with `keyveil init`"),
        e @ E::Corrupt { .. } => OpError::new(ErrorCode::Failed, e.to_string()).hint(
            "nothing was changed; restore the vault file from a backup, or, if the message names the journal, move the journal file next to the vault aside and unlock again",
        ),
        other => OpError::new(ErrorCode::Failed, other.to_string()),
    }
}

pub(super) async fn unlock(broker: &Arc<Broker>, pass: Passphrase) -> OpResult<op::Bootstrapped> {
    if broker.lock().is_unlocked() {
        return Ok(op::Bootstrapped::Unlocked {
            unlocked: true,
            already: Some(true),
            warnings: Vec::new(),
        });
    }
    // No lockout here: the passphrase is never refused unjudged (each guess costs an Argon2id
    // derivation, as an offline attack on the vault file does).
    let path = broker.paths.vault();
    let opened = crate::broker::kdf_gate::derive(move || {
        let mut v = Vault::open(&path, pass.expose().as_bytes())?;
        // Fold the changes journaled by the last session into the vault file (a full save, off
        // the broker's lock). Not fatal: the journal keeps them until the next compaction.
        if let Err(e) = v.compact() {
            tracing::warn!(error = %e, "cannot fold the vault's journal into the vault file");
        }
        Ok::<Vault, keyveil_vault::VaultError>(v)
    })
    .await
    .map_err(|e| OpError::new(ErrorCode::Failed, format!("unlock failed: {e}")))?;
    match opened {
        Ok(v) => {
            let warnings = open_with(broker, v)?;
            let mut inner = broker.lock();
            inner.factor_mut().succeeded();
            inner.audit("unlock", json!({}));
            drop(inner);
            // Reap dynamic credentials that a crashed broker left behind.
            crate::broker::leases::on_unlock(broker);
            // The mounts' listing, as the verified audit log tells it.
            crate::broker::mounts::rebuild_history(broker, None);
            Ok(op::Bootstrapped::Unlocked {
                unlocked: true,
                already: None,
                warnings,
            })
        }
        Err(keyveil_vault::VaultError::WrongPassphrase) => {
            let lockout = broker.lock().factor_mut().failed(Instant::now());
            tracing::warn!(?lockout, "wrong passphrase at unlock");
            Err(OpError::new(ErrorCode::Denied, "wrong passphrase")
                .hint("try again; the right passphrase is always accepted"))
        }
        Err(e) => Err(vault_err(e)),
    }
}

pub(crate) async fn lock(broker: &Broker) -> op::Locked {
    // The runs end before the vault leaves memory (their ends are still audited); the reply
    // says what was stopped.
    let stopped = RunsStopped::wait(stop_everything(broker, "vault locked")).await;
    let (recorded, already, audit_problem) = {
        let mut inner = broker.lock();
        // A grant approved while we waited ends in the same step as the vault leaves memory.
        let _late = stop_all(&mut inner, "vault locked");
        let already = !inner.is_unlocked();
        let recorded = already || inner.audit_recorded("lock", json!({}));
        // What the human is told about the log: the cause of a miss where it is known (the
        // file was replaced or moved), and a seal that did not verify at unlock.
        let audit_problem = match (
            inner.audit_log().path_changed(),
            inner.audit_log().seal_broken(),
        ) {
            _ if already => None,
            (Some(change), _) => Some(format!(
                "the audit log {} is no longer the file keyveil was writing to: {change} (an editor or `sed -i` saves a new file too), so this lock could not be recorded in it",
                broker.paths.audit().display()
            )),
            (None, Some(why)) => Some(format!(
                "the audit log does not verify against the checkpoint the vault sealed ({why}): entries were edited, removed or forged after they were written"
            )),
            (None, None) => None,
        };
        inner.seal_audit_final();
        // The values leave memory whatever the disk said above (the sealed checkpoint and the
        // audit entry are best effort here; what could not be written is kept as the gap).
        inner.forget_unlocked();
        (recorded, already, audit_problem)
    };
    // The approval page's sessions and links end with the unlock they were opened under.
    broker.web.end_sessions();
    broker.notify();
    // The OpenBao tokens of logins end with the vault (after the revocations in flight).
    crate::broker::leases::close_logins(broker, std::time::Duration::from_secs(5)).await;
    if !recorded {
        tracing::error!(
            "the vault was locked, but the lock could not be recorded in the audit log"
        );
    }
    op::Locked {
        locked: true,
        stopped: stopped.reply(),
        recorded,
        already,
        audit_problem,
    }
}

/// Revokes every grant (killing its runs) and denies every pending request; returns watches on
/// the end of the runs that were live (see [`RunsStopped::wait`]).
pub(crate) fn stop_everything(broker: &Broker, why: &str) -> RunEnds {
    let ended = stop_all(&mut broker.lock(), why);
    broker.notify();
    ended
}

/// [`stop_everything`] under a lock already held (the caller notifies).
pub(super) fn stop_all(inner: &mut Inner, why: &str) -> RunEnds {
    let ids: Vec<String> = inner.grants().ids();
    let ended = inner.runs().ended_of(&ids);
    for id in ids {
        inner.revoke(&id, why);
    }
    inner.requests_mut().deny_all_pending(why);
    ended
}

/// Watches on the end of runs (see [`RunsStopped::wait`]).
pub(super) type RunEnds = Vec<tokio::sync::watch::Receiver<Option<crate::broker::spawn::TreeEnd>>>;
