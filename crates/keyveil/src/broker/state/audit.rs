//! The audit log's state behind the broker's mutex ([`AuditLog`]): the writer, a broken seal, a
//! moved log, the gap carried across a lock; entries appended, refused or counted in the gap.
//! The entries reach it already scrubbed of names and values, and what a failure sets off
//! (live runs stopped, the checkpoint sealed into the vault) is done by `Inner`, which holds
//! the runs and the vault (`inner.rs`).

use serde_json::{Map, Value};

use keyveil_proto::ErrorCode;

use super::error::{OpError, OpResult};

/// The audit log's state behind the broker's mutex.
#[derive(Default)]
pub(crate) struct AuditLog {
    /// The audit writer (opened at unlock: its key comes from the vault).
    writer: Option<keyveil_vault::audit::AuditWriter>,
    /// Why the audit log did not match the vault's sealed checkpoint at unlock (entries cut off
    /// its end, or an older log swapped in); while set, the seal is not moved forward.
    seal_broken: Option<String>,
    /// Set when the audit log's path stopped naming the open log file (moved, deleted or
    /// replaced while the broker runs); cleared at unlock or when the file is back.
    path_changed: Option<keyveil_vault::audit::PathChange>,
    /// Audit entries that could not be written, carried across a lock (the writer is closed
    /// then) and handed to the next writer at unlock, which writes them first as `audit.gap`.
    gap: Option<keyveil_vault::audit::AuditGap>,
    /// Set while live runs are being stopped because their ends could not be recorded (the
    /// revocations' own entries fail too; this keeps that from recursing).
    stopping_runs: bool,
}

/// What became of an entry appended with [`AuditLog::append`] or [`AuditLog::append_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Appended {
    /// It is in the log.
    Recorded,
    /// The log is not open (the vault is locked).
    NotOpen,
    /// The log was moved or replaced: not recorded (noted in the moved file the first time).
    PathChanged,
    /// It could not be written even from the reserve: counted in the gap; live runs must be
    /// stopped, since their ends could not be recorded either.
    Failed,
}

impl AuditLog {
    /// At unlock: `writer` becomes the audit writer, first given the entries the previous one
    /// could not write (written first, as `audit.gap`).
    pub(crate) fn start(&mut self, mut writer: keyveil_vault::audit::AuditWriter) {
        if let Some(gap) = self.gap.take() {
            writer.carry_gap(gap);
        }
        self.writer = Some(writer);
    }

    /// At unlock, once the log was checked against the vault's sealed checkpoint: why it did
    /// not match (`None`: it did), and the path is taken to name the open file again.
    pub(crate) fn checked(&mut self, seal_broken: Option<String>) {
        self.seal_broken = seal_broken;
        self.path_changed = None;
    }

    /// How the audit log's path stopped naming the open file, if it did.
    pub(crate) fn path_changed(&self) -> Option<&keyveil_vault::audit::PathChange> {
        self.path_changed.as_ref()
    }

    /// Why the audit log did not match the vault's sealed checkpoint at unlock, if it did not.
    pub(crate) fn seal_broken(&self) -> Option<&str> {
        self.seal_broken.as_deref()
    }

    /// The entries not written yet: the open writer's gap, or the one carried across a lock.
    pub(crate) fn pending_gap(&self) -> Option<&keyveil_vault::audit::AuditGap> {
        self.writer
            .as_ref()
            .and_then(|w| w.gap())
            .or(self.gap.as_ref())
    }

    /// Writes a pending gap using the reserve too (the broker is stopping: the reserve is no
    /// longer needed after this).
    pub(crate) fn flush_gap_closing(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            let _ = w.flush_gap_closing();
        }
    }

    /// Appends an entry for something that happens whatever the log says (`Inner::audit`): it
    /// may use the log's reserved space; an entry that cannot be written is counted in the
    /// writer's pending gap and logged.
    pub(super) fn append(&mut self, event: &str, map: Map<String, Value>) -> Appended {
        use keyveil_vault::audit::AuditError;
        let Some(w) = self.writer.as_mut() else {
            tracing::info!(event, "audit log not open (vault locked)");
            return Appended::NotOpen;
        };
        match w.append_record(event, map) {
            // The path names the file again (moved back): a later move is noticed anew.
            Ok(_) => {
                self.path_changed = None;
                Appended::Recorded
            }
            Err(AuditError::PathChanged { change, .. }) => {
                self.note_path_changed(change);
                tracing::error!(
                    event,
                    "audit entry not recorded: the audit log was moved or replaced"
                );
                Appended::PathChanged
            }
            Err(e) => {
                tracing::error!(event, error = %e, "audit entry not recorded (kept as a gap, written when the log can be written again); live runs are stopped");
                Appended::Failed
            }
        }
    }

    /// [`AuditLog::append`] for several entries at once, in order, with one write and one sync
    /// (`AuditWriter::append_records`).
    pub(super) fn append_batch(&mut self, entries: Vec<(String, Map<String, Value>)>) -> Appended {
        use keyveil_vault::audit::AuditError;
        let Some(w) = self.writer.as_mut() else {
            tracing::info!(entries = entries.len(), "audit log not open (vault locked)");
            return Appended::NotOpen;
        };
        match w.append_records(entries) {
            Ok(_) => {
                self.path_changed = None;
                Appended::Recorded
            }
            Err(AuditError::PathChanged { change, .. }) => {
                self.note_path_changed(change);
                tracing::error!("audit entries not recorded: the audit log was moved or replaced");
                Appended::PathChanged
            }
            Err(e) => {
                tracing::error!(error = %e, "audit entries not recorded (kept as a gap, written when the log can be written again); live runs are stopped");
                Appended::Failed
            }
        }
    }

    /// Appends a refusal or failure a requester can repeat at will (`Inner::audit_note`): only
    /// while the log keeps its reserve after it (`AuditWriter::append_if_room`); otherwise
    /// counted in the pending gap as lost and logged.
    pub(super) fn append_if_room(&mut self, event: &str, map: Map<String, Value>) {
        let Some(w) = self.writer.as_mut() else {
            tracing::info!(event, "audit log not open (vault locked)");
            return;
        };
        if let Err(e) = w.append_if_room(event, map) {
            tracing::error!(event, error = %e, "audit entry not recorded (counted in the gap)");
        }
    }

    /// Appends an entry **before** the action it records (`Inner::must_audit`, after
    /// [`AuditLog::check_path`]). `Ok` while locked.
    ///
    /// # Errors
    /// As `Inner::must_audit`: the entry is refused when the log cannot keep its reserve after
    /// it ([`audit_refusal`]).
    pub(super) fn append_before(&mut self, event: &str, map: Map<String, Value>) -> OpResult<()> {
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        match w.append(event, map) {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(event, error = %e, "audit entry refused; the action is refused");
                Err(audit_refusal(event, w.path(), &e))
            }
        }
    }

    /// Starts stopping live runs because an entry could not be recorded; `false` when that is
    /// already under way (the revocations' own entries fail too).
    pub(super) fn begin_stopping_runs(&mut self) -> bool {
        !std::mem::replace(&mut self.stopping_runs, true)
    }

    /// The runs were stopped.
    pub(super) fn end_stopping_runs(&mut self) {
        self.stopping_runs = false;
    }

    /// Writes a pending `audit.gap` entry if the log has room for it and its reserve (the
    /// broker's 10-second tick calls this, so a gap is sealed even when nothing else happens).
    pub(crate) fn flush_gap(&mut self) {
        if self.path_changed.is_some() {
            return;
        }
        if let Some(w) = self.writer.as_mut()
            && let Ok(true) = w.flush_gap()
        {
            tracing::info!("audit log writable again; the gap was recorded");
        }
    }

    /// Closes the audit writer (at lock), keeping its pending gap for the next one.
    pub(crate) fn close(&mut self) {
        if let Some(w) = self.writer.as_mut() {
            // Closing: the reserve is no longer needed, the gap may use it.
            let _ = w.flush_gap_closing();
        }
        if let Some(mut w) = self.writer.take()
            && let Some(gap) = w.take_gap()
        {
            tracing::error!(
                entries = gap.entries(),
                "audit entries could not be written; the gap is kept in memory and recorded at the next unlock"
            );
            match &mut self.gap {
                Some(g) => g.merge(gap),
                None => self.gap = Some(gap),
            }
        }
    }

    /// First notice of a moved or replaced audit log: closes the chain in the moved file with
    /// an `audit.path_changed` entry and logs what to do. Later notices only log.
    fn note_path_changed(&mut self, change: keyveil_vault::audit::PathChange) {
        if self.path_changed.is_some() {
            return;
        }
        self.path_changed = Some(change);
        let Some(w) = self.writer.as_mut() else {
            return;
        };
        tracing::error!(
            path = %w.path().display(),
            %change,
            "the audit log is no longer at its path; grants and runs are refused until it is moved back, or until `keyveil lock` and `keyveil unlock` start a new log"
        );
        if let Err(e) = w.record_path_change(change) {
            tracing::error!(error = %e, "cannot record the change in the moved audit log");
        }
    }

    /// Whether the audit log's path still names the file the broker appends to (checked now, by
    /// device and inode). `Ok` while locked (the locked error comes from elsewhere).
    ///
    /// # Errors
    /// [`ErrorCode::Failed`] saying the log was moved, deleted or replaced, with a hint (move it
    /// back, or lock and unlock to start a new log); the first time, an `audit.path_changed`
    /// entry is appended to the moved file.
    pub(crate) fn check_path(&mut self) -> OpResult<()> {
        use keyveil_vault::audit::AuditError;
        let Some(w) = self.writer.as_ref() else {
            return Ok(());
        };
        match w.check_path() {
            Ok(()) => {
                self.path_changed = None;
                Ok(())
            }
            Err(AuditError::PathChanged { path, change }) => {
                self.note_path_changed(change);
                let path = path.display();
                Err(OpError::new(
                    ErrorCode::Failed,
                    format!(
                        "keyveil's audit log {path} was changed while the broker was running ({change}): it is no longer the file the broker writes to, so nothing done now could be recorded, and grants and runs are refused"
                    ),
                )
                .hint(format!(
                    "if the file was moved on purpose, move it back to {path}; otherwise the user runs `keyveil lock` then `keyveil unlock` (with their passphrase), which starts a new log there (`keyveil audit verify` then reports the break against the vault's sealed checkpoint)"
                )))
            }
            Err(e) => Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot check keyveil's audit log: {e}; grants and runs are refused"),
            )
            .hint("check the permissions of KEYVEIL_HOME; `keyveil status` shows where it is")),
        }
    }

    /// Whether an action whose entry is written after it (with `Inner::audit`) may proceed:
    /// the log's path must still name the open file ([`AuditLog::check_path`]), a pending gap
    /// is written, and the log must have room for the entry and its reserve, so that the entry
    /// is written once the action is done. `event` names the entry, for the gap when it is
    /// refused. `Ok` while locked.
    ///
    /// # Errors
    /// As `Inner::must_audit`.
    pub(crate) fn ready(&mut self, event: &str) -> OpResult<()> {
        self.ready_for(event, 0)
    }

    /// [`AuditLog::ready`] for an entry of about `entry_len` bytes (a run's argv can be long):
    /// the room checked for is that, or 4 KiB, whichever is more, plus the reserve.
    ///
    /// # Errors
    /// As `Inner::must_audit`.
    pub(crate) fn ready_for(&mut self, event: &str, entry_len: usize) -> OpResult<()> {
        self.check_path()?;
        let Some(w) = self.writer.as_mut() else {
            return Ok(());
        };
        w.ready(event, entry_len as u64).map_err(|e| {
            tracing::error!(event, error = %e, "the audit log cannot be written; the action is refused");
            audit_refusal(event, w.path(), &e)
        })
    }

    /// The checkpoint to seal into the vault: the log's current end, unless the log did not
    /// match the seal at unlock (a seal is never moved forward over it) or is not open.
    pub(crate) fn checkpoint_to_seal(&self) -> Option<keyveil_vault::AuditCheckpoint> {
        if self.seal_broken.is_some() {
            return None;
        }
        self.writer.as_ref().and_then(|w| w.checkpoint())
    }

    /// The runs the log shows started (`run_start`) and never ended (`run_end`): run id →
    /// its grant id. Empty when the log is not open.
    pub(super) fn runs_left_open(&self) -> std::collections::BTreeMap<String, Value> {
        let Some(path) = self.writer.as_ref().map(|w| w.path().to_path_buf()) else {
            return Default::default();
        };
        let entries = keyveil_vault::audit::read_entries(&path, None).unwrap_or_default();
        let mut open: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
        for e in &entries {
            let Some(run_id) = e.get("run_id").and_then(Value::as_str) else {
                continue;
            };
            match e.get("event").and_then(Value::as_str) {
                Some("run_start") => {
                    open.insert(
                        run_id.to_owned(),
                        e.get("grant_id").cloned().unwrap_or(Value::Null),
                    );
                }
                Some("run_end") => {
                    open.remove(run_id);
                }
                _ => {}
            }
        }
        open
    }
}

/// The error for an action refused because its audit entry cannot be written: "the audit log
/// cannot be written: CAUSE; nothing was run" (for a run) or "...; nothing was done", with a
/// hint to free space where the log lives. Names no entry content.
pub(crate) fn audit_refusal(
    event: &str,
    log: &std::path::Path,
    e: &keyveil_vault::audit::AuditError,
) -> OpError {
    use keyveil_vault::audit::AuditError;
    let cause = match e {
        AuditError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    let nothing = if event.starts_with("run") {
        "nothing was run"
    } else {
        "nothing was done"
    };
    let dir = log
        .parent()
        .map_or_else(|| log.display().to_string(), |d| d.display().to_string());
    OpError::new(
        ErrorCode::Failed,
        format!("the audit log cannot be written: {cause}; {nothing}"),
    )
    .hint(format!(
        "free space in {dir} (see `df {dir}`), then try again; keyveil refuses to act on anything it cannot record, and records how many entries were missed as an `audit.gap` entry once it can write again"
    ))
}
