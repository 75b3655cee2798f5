//! Audit operations: reading the log's tail and verifying its chain against the sealed checkpoint.

use crate::broker::Broker;
use crate::broker::state::{OpError, OpResult};
use keyveil_proto::ErrorCode;
use keyveil_proto::op;
use keyveil_vault::Source;
use serde_json::Value;

pub(super) fn audit(broker: &Broker, limit: Option<usize>) -> OpResult<op::AuditEntries> {
    broker.lock().vault()?;
    let entries =
        keyveil_vault::audit::read_entries(&broker.paths.audit(), Some(limit.unwrap_or(50)))
            .map_err(|e| {
                OpError::new(ErrorCode::Failed, format!("cannot read the audit log: {e}"))
            })?;
    // Each entry as the log holds it: `seq`, `ts`, `event`, then its own fields.
    let entries = serde_json::from_value(Value::Array(entries)).map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("an audit entry has no seq, ts or event: {e}"),
        )
    })?;
    Ok(op::AuditEntries { entries })
}

pub(super) fn audit_verify(broker: &Broker) -> OpResult<op::AuditVerified> {
    let (key, checkpoint) = {
        let mut inner = broker.lock();
        inner.vault()?;
        inner.audit_log_mut().check_path().map_err(|e| {
            let hint = e.hint.unwrap_or_default();
            OpError::new(
                ErrorCode::Failed,
                format!("audit log verification failed: {}", e.message),
            )
            .hint(format!(
                "the entries written before the change are in the moved file, which ends with an `audit.path_changed` entry; {hint}"
            ))
        })?;
        let v = inner.vault()?;
        (v.audit_key(), v.data().audit_checkpoint.clone())
    };
    let path = broker.paths.audit();
    // First against the last seal (detects entries cut off the end), then move the seal forward.
    let r = keyveil_vault::audit::verify_report(&path, &key, checkpoint.as_ref());
    match r {
        Ok(report) => {
            let mut inner = broker.lock();
            inner.seal_audit();
            // Entries not written yet (the log is still full): they are not in the file.
            let pending = inner.audit_log().pending_gap().map(|g| op::PendingGap {
                lost: g.lost,
                refused: g.refused,
                events: g.events.clone(),
            });
            let gaps = report
                .gaps
                .into_iter()
                .map(|g| op::GapSeen {
                    seq: g.seq,
                    ts: g.ts,
                    lost: g.lost,
                    refused: g.refused,
                    events: g.events,
                    first: g.first,
                    last: g.last,
                })
                .collect();
            // Sessions that ended uncleanly (recorded at the next unlock).
            let unclean_ends = keyveil_vault::audit::read_entries(&path, None)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.get("event").and_then(Value::as_str) == Some("audit_unclean_end"))
                .map(|e| op::UncleanEnd {
                    seq: e.get("seq").and_then(Value::as_u64),
                    sealed_seq: e.get("sealed_seq").and_then(Value::as_u64),
                })
                .collect();
            let quarantined = keyveil_vault::audit::read_entries(&path, None)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| e.get("event").and_then(Value::as_str) == Some("audit_quarantined"))
                .map(|e| op::Quarantined {
                    seq: e.get("seq").and_then(Value::as_u64),
                    moved_to: e
                        .get("moved_to")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    verified_lines: e.get("verified_lines").and_then(Value::as_u64),
                    first_bad_line: e.get("first_bad_line").and_then(Value::as_u64),
                    sealed_seq: e.get("sealed_seq").and_then(Value::as_u64),
                    missing: e.get("missing").and_then(Value::as_u64).unwrap_or(0),
                })
                .collect();
            Ok(op::AuditVerified {
                ok: true,
                quarantined,
                unclean_ends,
                entries: report.entries,
                sealed_seq: checkpoint.map(|c| c.seq),
                gaps,
                pending_gap: pending,
            })
        }
        Err(e) => Err(OpError::new(
            ErrorCode::Failed,
            format!("audit log verification failed: {e}"),
        )
        .hint(
            "the log was edited, truncated, reordered or replaced; keep a copy for investigation",
        )),
    }
}

/// The serde name of a variable's source (`human`, `generated`, `dynamic`, `provider`).
pub(super) fn source_name(source: Source) -> String {
    match serde_json::to_value(source) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}
