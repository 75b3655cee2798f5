//! The `mount`, `unmount` and `mounts` operations.

use super::*;

/// `mount`: creates the FIFO (or puts one in place of a regular file, with `replace`) and
/// starts serving it.
pub(crate) fn mount(broker: &Broker, o: op::Mount) -> OpResult<op::Mounted> {
    let path = PathBuf::from(&o.path);
    if !path.is_absolute() {
        return Err(usage("the mount path must be absolute"));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(usage("the mount path names no file"));
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| {
        OpError::new(
            ErrorCode::NotFound,
            format!("the directory of {} is not usable: {e}", shown(&o.path)),
        )
        .hint("create the directory first")
    })?;
    let path = dir.join(name);
    let key = path.display().to_string();
    {
        let inner = broker.lock();
        if !inner
            .vault()?
            .data()
            .environments
            .contains_key(&o.environment)
        {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("no environment {}", shown(&o.environment)),
            )
            .hint("`keyveil env list` shows them; `keyveil env create NAME` makes one"));
        }
    }
    if broker.mounts.lock().contains_key(&key) {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("{} is already a mount", shown(&key)),
        )
        .hint("`keyveil mounts` lists them; `keyveil unmount PATH` removes one"));
    }
    let (replaced, (dev, ino, mtime)) = make_in_place(&path, &key, o.replace)?;
    let stored = Stored {
        path: key.clone(),
        environment: o.environment.clone(),
        created_at: Timestamp::now(),
        dev,
        ino,
        mtime_ns: Some(mtime),
    };
    let mut entry = Entry {
        stored,
        state: "serving",
        reads: 0,
        refused: 0,
        recent: Vec::new(),
        busy: false,
        refused_holders: Vec::new(),
    };
    broker.mounts.carry_gone(&mut entry);
    let out = info(&entry);
    {
        let mut m = broker.mounts.lock();
        m.insert(key.clone(), entry);
        if let Err(e) = broker.mounts.save(&m) {
            m.remove(&key);
            drop(m);
            let _ = std::fs::remove_file(&path);
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot record the mount: {e}; nothing was mounted"),
            )
            .hint("make KEYVEIL_HOME writable (mounts.json is written through mounts.json.tmp, a file) and free some space, then mount again"));
        }
    }
    broker.mounts.drop_gone(&key);
    broker.lock().audit(
        "mount",
        json!({"path": key, "environment": o.environment, "replaced_file": replaced}),
    );
    // What the audit log says of this path (a broker restarted since an unmount there).
    super::history::rebuild(broker, Some(&key));
    let out = broker.mounts.lock().get(&key).map_or(out, info);
    Ok(op::Mounted {
        mount: out,
        replaced,
    })
}

/// Makes the mount's FIFO at `path` (shown as `key`): a new one where nothing is, or, with
/// `replace`, one renamed over a regular file (anything else there is refused). Returns
/// whether a file was replaced and the FIFO's device, inode and modification time.
fn make_in_place(path: &Path, key: &str, replace: bool) -> OpResult<(bool, (u64, u64, i128))> {
    let existing = std::fs::symlink_metadata(path).ok();
    let replaced = match &existing {
        None => false,
        Some(m) if replace && m.is_file() => true,
        Some(m) if replace => {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!(
                    "{} is not a regular file ({}); nothing was replaced",
                    shown(key),
                    if m.file_type().is_fifo() {
                        "a named pipe"
                    } else if m.is_symlink() {
                        "a symlink"
                    } else {
                        "not a file"
                    }
                ),
            ));
        }
        Some(_) => {
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("{} already exists", shown(key)),
            )
            .hint("move it away, or import it and put the mount in its place with `keyveil import ENV FILE --mount`"));
        }
    };
    let id = if replaced {
        let tmp = sibling(path);
        let id = make_fifo_timed(&tmp)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(OpError::new(
                ErrorCode::Failed,
                format!("cannot put the mount in place of {}: {e}", shown(key)),
            ));
        }
        id
    } else {
        make_fifo_timed(path)?
    };
    Ok((replaced, id))
}

/// `unmount`: forgets the mount and removes its FIFO if it is still the one the broker made.
pub(crate) fn unmount(broker: &Broker, o: op::Unmount) -> OpResult<op::Unmounted> {
    let given = PathBuf::from(&o.path);
    let key = given
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .zip(given.file_name())
        .map(|(d, n)| d.join(n).display().to_string())
        .unwrap_or_else(|| o.path.clone());
    let entry = {
        let mut m = broker.mounts.lock();
        let Some(e) = m.remove(&key) else {
            return Err(OpError::new(
                ErrorCode::NotFound,
                format!("{} is not a mount", shown(&key)),
            )
            .hint("`keyveil mounts` lists them"));
        };
        if let Err(e) = broker.mounts.save(&m) {
            tracing::warn!(error = %e, "cannot write mounts.json");
        }
        broker.mounts.keep_gone(&e);
        e
    };
    let ours = std::fs::symlink_metadata(&key).is_ok_and(|m| {
        m.file_type().is_fifo() && m.dev() == entry.stored.dev && m.ino() == entry.stored.ino
    });
    let removed = ours && std::fs::remove_file(&key).is_ok();
    forget_opens(entry.stored.dev, entry.stored.ino);
    broker
        .lock()
        .audit("unmount", json!({"path": key, "removed": removed}));
    Ok(op::Unmounted { path: key, removed })
}

/// `mounts`.
pub(crate) fn list(broker: &Broker) -> op::MountList {
    op::MountList {
        mounts: broker.mounts.lock().values().map(info).collect(),
    }
}
