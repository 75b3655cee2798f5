//! Desktop notifications (`notify-send`) when a new request waits for the human.
//!
//! Best effort and never in the way: nothing happens without `notify-send` on `PATH` or without
//! a desktop session (`DISPLAY`, `WAYLAND_DISPLAY` or `DBUS_SESSION_BUS_ADDRESS`); the process
//! is spawned from a short-lived thread (never under the broker's lock), given 5 seconds, then
//! killed; every failure is ignored. `KEYVEIL_NO_NOTIFY=1` turns it off.
//!
//! The text holds no value keyveil gave out: the caller passes the request's argv as the
//! requester gave it (never matched against values: that would be an oracle, readable in
//! `/proc/PID/cmdline` of `notify-send`), its client key and environment; all of it is made
//! visible with the project's escaper, cut to 400 characters, and its `<`, `>`, `&` are escaped
//! because notification servers interpret a subset of HTML markup in the body.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `notify-send` may take before it is killed.
const LIMIT: Duration = Duration::from_secs(5);
/// Longest body, in characters (the request itself is shown in full where the human approves).
const MAX_BODY: usize = 400;

fn markup_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

fn desktop() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
}

/// Title and body of the notification for a new request (pure: tested without a desktop).
pub(crate) fn text(id: u64, client: &str, env: &str, argv: Option<&[String]>) -> (String, String) {
    let command = match argv {
        Some(a) => a
            .iter()
            .map(|x| keyveil_proto::display::quoted(x))
            .collect::<Vec<_>>()
            .join(" "),
        None => "ANY COMMAND".to_owned(),
    };
    let body = format!(
        "{} asks to run {command} in environment {}. Approve with `keyveil approve {id}` or `keyveil approve --web`.",
        keyveil_proto::display::visible(client),
        keyveil_proto::display::visible(env),
    );
    let body = keyveil_proto::display::clip(&body, MAX_BODY);
    (
        format!("keyveil: request #{id} waits for approval"),
        markup_escape(&body),
    )
}

/// Shows a notification for request `id`, if a desktop and `notify-send` are there.
pub(crate) fn request_created(id: u64, client: &str, env: &str, argv: Option<&[String]>) {
    if std::env::var_os("KEYVEIL_NO_NOTIFY").is_some_and(|v| v == "1") || !desktop() {
        return;
    }
    let Some(exe) = find_on_path("notify-send") else {
        return;
    };
    let (title, body) = text(id, client, env, argv);
    let spawned = std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || {
            let child = Command::new(exe)
                .arg("--app-name=keyveil")
                .arg("--urgency=normal")
                .arg("--")
                .arg(title)
                .arg(body)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let Ok(mut child) = child else { return };
            let t0 = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => return,
                    Ok(None) if t0.elapsed() > LIMIT => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!(error = %e, "no notification thread");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_text_is_escaped() {
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "<b>x</b>\u{202e}\u{1b}[2J".to_owned(),
        ];
        let (title, body) = text(7, "mcp:<evil>", "demo", Some(&argv));
        assert!(title.contains("#7"));
        assert!(!body.contains('<') && !body.contains('\u{202e}') && !body.contains('\u{1b}'));
        assert!(body.contains("&lt;b&gt;x&lt;/b&gt;"), "{body}");
        assert!(body.contains("\\u{202e}"), "{body}");
        assert!(body.contains("keyveil approve 7"));
        let (_, any) = text(8, "cli:keyveil", "demo", None);
        assert!(any.contains("ANY COMMAND"));
    }
}
