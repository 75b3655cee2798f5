//! `keyveil mount`, `unmount` and `mounts`.

use super::*;

/// `keyveil mount ENV PATH`: a `.env` at `PATH` each read of which waits for approval.
pub(crate) async fn mount(paths: &Paths, env: String, path: PathBuf) -> Result<i32> {
    let d = call(
        paths,
        op::Mount {
            environment: env,
            path: absolute(&path)?,
            replace: false,
        },
    )
    .await?;
    say(format!(
        "mounted {} for environment {}: each read waits for your approval (`keyveil requests`)\nnote: a reader is not started by keyveil: its output is not redacted and revoking cannot stop it; prefer `keyveil run` where you can",
        crate::card::esc(&d.mount.path),
        crate::card::esc(&d.mount.environment)
    ));
    Ok(0)
}

/// `keyveil unmount PATH`: the mount forgotten, its FIFO removed if it is still the broker's.
pub(crate) async fn unmount(paths: &Paths, path: PathBuf) -> Result<i32> {
    let d = call(
        paths,
        op::Unmount {
            path: absolute(&path)?,
        },
    )
    .await?;
    if d.removed {
        say(format!("unmounted {}", crate::card::esc(&d.path)));
    } else {
        say(format!(
            "unmounted {}; the named pipe was already gone or replaced by something else, which was left as it is",
            crate::card::esc(&d.path)
        ));
    }
    Ok(0)
}

/// A mount's recent events as the listing's lines under it, newest first (`last` alone from a
/// broker that lists no `recent`).
fn events(m: &op::MountInfo) -> String {
    let shown = |l: &str| keyveil_proto::display::visible_text(l);
    if m.recent.is_empty() {
        return m
            .last
            .as_deref()
            .map(|l| format!("\n    last: {}", shown(l)))
            .unwrap_or_default();
    }
    m.recent
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "\n    {} {}",
                if i == 0 { "last:" } else { "     " },
                shown(l)
            )
        })
        .collect()
}

/// `keyveil mounts`: the mounts, their state and last note, and what io_uring does to them.
pub(crate) async fn list(paths: &Paths, json: bool) -> Result<i32> {
    let list = call(paths, op::Mounts {}).await?.mounts;
    if json {
        say(json_text(&list)?);
    } else if list.is_empty() {
        say("no mounts");
    } else {
        for m in &list {
            say(format!(
                "{}  environment {}  {}  reads {}, refused {}{}",
                crate::card::esc(&m.path),
                crate::card::esc(&m.environment),
                m.state,
                m.reads,
                m.refused,
                events(m)
            ));
        }
        // What the user's io_uring does to a mount (docs/mounts.md, step 5).
        match crate::broker::mounts::io_uring_disabled() {
            Some(2) => {}
            Some(n) => say(format!(
                "note: io_uring is open to {} here (kernel.io_uring_disabled={n}): while a process of yours has io_uring threads (a ring can copy a mount's pipe unseen), mount reads are refused or stopped; `sysctl kernel.io_uring_disabled=2` takes that away",
                if n == 0 {
                    "every user"
                } else {
                    "kernel.io_uring_group"
                }
            )),
            None => {}
        }
    }
    Ok(0)
}
