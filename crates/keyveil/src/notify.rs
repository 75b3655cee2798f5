//! Desktop notifications when a new request waits for the human: `notify-send` (freedesktop
//! notifications over D-Bus) on Linux and the BSDs, `osascript` on macOS.
//!
//! Best effort and never in the way: nothing happens without the platform tool on `PATH`, or on
//! Linux without a desktop session (`DISPLAY`, `WAYLAND_DISPLAY` or
//! `DBUS_SESSION_BUS_ADDRESS`); the process is spawned from a short-lived thread (never under
//! the broker's lock), given 5 seconds, then killed; every failure is ignored.
//! `KEYVEIL_NO_NOTIFY=1` turns it off.
//!
//! The text holds no value keyveil gave out: the caller passes the request's argv and reason as
//! the requester gave them (never matched against values: that would be an oracle, readable in
//! `/proc/PID/cmdline` of the notifier) and the environment. The client's self-chosen name is
//! not shown at all (it could say "approve #99" unlabelled): the card names the client. Every agent-chosen
//! string is made visible with the project's escaper (as on the approval card: no control,
//! bidi or zero-width character survives, so a newline cannot start a fake line), cut to its
//! own length (so a long command or reason can never push the approve instruction out of the
//! body), and its `<`, `>`, `&`, quotes are escaped because notification servers interpret a
//! subset of HTML markup in the body. On macOS the strings reach AppleScript as `argv` items of
//! a fixed script, never as script source.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long `notify-send` may take before it is killed.
const LIMIT: Duration = Duration::from_secs(5);
/// Longest rendering of the command in the body, in characters (the request itself is shown in
/// full where the human approves).
const MAX_COMMAND: usize = 240;
/// Longest rendering of the requester's reason in the body, in characters.
const MAX_REASON: usize = 120;
/// The fixed AppleScript that shows `argv` (title, body) as a notification on macOS.
const OSASCRIPT: [&str; 3] = [
    "on run argv",
    "display notification (item 2 of argv) with title (item 1 of argv)",
    "end run",
];

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

/// The environment a notifier keeps: its desktop session, locale and home.
const NOTIFIER_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "DBUS_SESSION_BUS_ADDRESS",
    "XDG_RUNTIME_DIR",
    "XDG_SESSION_TYPE",
    "XDG_CURRENT_DESKTOP",
    "XAUTHORITY",
    "TMPDIR",
];

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
///
/// `env` is the environment, `argv` the command as the
/// requester gave it (`None`: any command), `reason` its unverified reason. The body ends with
/// the fixed instruction ``Approve with `keyveil approve ID` ...``, which no agent-chosen text
/// can push out or imitate on a line of its own.
pub(crate) fn text(
    id: u64,
    env: &str,
    argv: Option<&[String]>,
    reason: Option<&str>,
) -> (String, String) {
    let command = match argv {
        Some(a) => a
            .iter()
            .map(|x| keyveil_proto::display::quoted(x))
            .collect::<Vec<_>>()
            .join(" "),
        None => "ANY COMMAND".to_owned(),
    };
    let reason = match reason.filter(|r| !r.trim().is_empty()) {
        Some(r) => format!(
            " The requester says (unverified): \"{}\".",
            keyveil_proto::display::clip(r, MAX_REASON).replace('"', "\\\"")
        ),
        None => String::new(),
    };
    let body = format!(
        "A client asks to run {} in environment {}.{reason} Approve with `keyveil approve {id}` (or `keyveil approve --web`); check the command on the card there first.",
        keyveil_proto::display::clip(&command, MAX_COMMAND),
        keyveil_proto::display::clip(env, 80),
    );
    (
        format!("keyveil: request #{id} waits for approval"),
        markup_escape(&body),
    )
}

/// The notifier of this platform and its arguments for `title` and `body`, or `None` when
/// there is none (or, on Linux, no desktop session).
fn notifier(title: String, body: String) -> Option<Command> {
    if cfg!(target_os = "macos") {
        let mut c = Command::new(find_on_path("osascript")?);
        for line in OSASCRIPT {
            c.arg("-e").arg(line);
        }
        c.arg("--").arg(title).arg(body);
        Some(c)
    } else {
        if !desktop() {
            return None;
        }
        let mut c = Command::new(find_on_path("notify-send")?);
        c.arg("--app-name=keyveil")
            .arg("--urgency=normal")
            .arg("--")
            .arg(title)
            .arg(body);
        Some(c)
    }
}

/// Shows a notification for request `id` (arguments as in [`text`]), if the platform has a
/// notifier and, on Linux, a desktop session.
pub(crate) fn request_created(id: u64, env: &str, argv: Option<&[String]>, reason: Option<&str>) {
    if std::env::var_os("KEYVEIL_NO_NOTIFY").is_some_and(|v| v == "1") {
        return;
    }
    let (title, body) = text(id, env, argv, reason);
    let Some(mut command) = notifier(title, body) else {
        return;
    };
    // The notifier gets what it needs to reach the desktop, not the broker's environment
    // (whatever the process that started the broker had in its own).
    command.env_clear();
    for (k, v) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if NOTIFIER_ENV.contains(&name.as_ref()) || name.starts_with("LC_") {
            command.env(&k, &v);
        }
    }
    let spawned = std::thread::Builder::new()
        .name("notify".into())
        .spawn(move || {
            let child = command
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
        let (title, body) = text(7, "demo", Some(&argv), None);
        assert!(title.contains("#7"));
        assert!(!body.contains('<') && !body.contains('\u{202e}') && !body.contains('\u{1b}'));
        assert!(body.contains("&lt;b&gt;x&lt;/b&gt;"), "{body}");
        assert!(body.contains("\\u{202e}"), "{body}");
        assert!(body.contains("keyveil approve 7"));
        let (_, any) = text(8, "demo", None, None);
        assert!(any.contains("ANY COMMAND"));
    }

    #[test]
    fn agent_text_cannot_fake_a_line_or_push_out_the_instruction() {
        let fake = "ok\n\nkeyveil: request #1 approved. Approve with `keyveil approve 1`";
        let argv = vec!["sh".to_owned(), "-c".to_owned(), fake.repeat(50)];
        let reason = format!("{}\r\u{2028}<a href=x>click</a>\u{200b}", "y".repeat(5000));
        let (_, body) = text(42, "demo", Some(&argv), Some(&reason));
        assert!(!body.chars().any(|c| c.is_control()), "{body:?}");
        assert!(
            !body.contains('\u{2028}') && !body.contains('\u{200b}'),
            "{body:?}"
        );
        assert!(!body.contains("<a"), "{body}");
        assert!(
            body.ends_with("Approve with `keyveil approve 42` (or `keyveil approve --web`); check the command on the card there first."),
            "{body}"
        );
        assert!(body.chars().count() < 800, "{}", body.chars().count());
        assert!(body.contains("(unverified)"), "{body}");
    }
}
