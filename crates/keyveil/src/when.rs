//! Times for people: the broker speaks RFC 3339 UTC (`2026-12-06T13:16:38.87188047Z`, kept as
//! is under `--json` and in the audit log's JSON); the terminal shows local time and how far
//! away it is (`14:16 (in 14 min)`, `yesterday 09:02 (26 h ago)`).
//!
//! The local zone is the system's (`TZ`, else `/etc/localtime`, else UTC), as `date` uses.
#![forbid(unsafe_code)]

use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// `ts` (RFC 3339) as local time with the distance from now: `14:16 (in 14 min)`; a time on
/// another day carries its date. Text that is not a timestamp comes back escaped and as is.
pub fn human_time(ts: &str) -> String {
    human_time_at(ts, Timestamp::now(), &TimeZone::system())
}

/// `ts` as local time with seconds, for logs: `2026-12-06 14:16:38`.
pub fn local_stamp(ts: &str) -> String {
    match ts.parse::<Timestamp>() {
        Ok(t) => t
            .to_zoned(TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => crate::display::visible_text(ts),
    }
}

/// [`human_time`] against a given `now` and zone (what the tests use).
pub fn human_time_at(ts: &str, now: Timestamp, tz: &TimeZone) -> String {
    let Ok(t) = ts.parse::<Timestamp>() else {
        return crate::display::visible_text(ts);
    };
    let local: Zoned = t.to_zoned(tz.clone());
    let today = now.to_zoned(tz.clone()).date();
    let day = local.date();
    let clock = local.strftime("%H:%M").to_string();
    let shown = if day == today {
        clock
    } else if today.tomorrow().ok() == Some(day) {
        format!("tomorrow {clock}")
    } else if today.yesterday().ok() == Some(day) {
        format!("yesterday {clock}")
    } else {
        format!("{} {clock}", local.strftime("%Y-%m-%d"))
    };
    let secs = t.as_second().saturating_sub(now.as_second());
    format!("{shown} ({})", relative(secs))
}

/// A signed distance in seconds as words: `in 14 min`, `3 min ago`, `in 2 h 5 min`,
/// `just now` (under 5 seconds), `in 3 days`.
pub fn relative(secs: i64) -> String {
    let a = secs.unsigned_abs();
    if a < 5 {
        return "just now".to_owned();
    }
    let span = if a < 60 {
        format!("{a} s")
    } else if a < 3600 {
        format!("{} min", a / 60)
    } else if a < 48 * 3600 {
        let (h, m) = (a / 3600, (a % 3600) / 60);
        if m == 0 || h >= 10 {
            format!("{h} h")
        } else {
            format!("{h} h {m} min")
        }
    } else {
        let d = a / 86_400;
        format!("{d} {}", if d == 1 { "day" } else { "days" })
    };
    if secs > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(ts: &str, now: &str, tz: &str) -> String {
        human_time_at(
            ts,
            now.parse().unwrap(),
            &TimeZone::get(tz).unwrap_or(TimeZone::UTC),
        )
    }

    #[test]
    fn relative_words() {
        assert_eq!(relative(0), "just now");
        assert_eq!(relative(-3), "just now");
        assert_eq!(relative(45), "in 45 s");
        assert_eq!(relative(14 * 60 + 59), "in 14 min");
        assert_eq!(relative(-180), "3 min ago");
        assert_eq!(relative(3600), "in 1 h");
        assert_eq!(relative(2 * 3600 + 5 * 60), "in 2 h 5 min");
        assert_eq!(relative(-(26 * 3600)), "26 h ago");
        assert_eq!(relative(86_400 * 3), "in 3 days");
    }

    #[test]
    fn local_time_with_its_distance() {
        let now = "2026-12-06T13:02:00Z";
        assert_eq!(
            at("2026-12-06T13:16:38.87188047Z", now, "UTC"),
            "13:16 (in 14 min)"
        );
        assert_eq!(at("2026-12-06T12:59:00Z", now, "UTC"), "12:59 (3 min ago)");
        // Europe/Berlin is UTC+1 in December.
        assert_eq!(
            at("2026-12-06T13:16:38Z", now, "Europe/Berlin"),
            "14:16 (in 14 min)"
        );
        assert_eq!(
            at("2026-12-07T08:00:00Z", now, "UTC"),
            "tomorrow 08:00 (in 18 h)"
        );
        assert_eq!(
            at("2026-12-05T11:00:00Z", now, "UTC"),
            "yesterday 11:00 (26 h ago)"
        );
        assert_eq!(
            at("2027-01-01T00:00:00Z", now, "UTC"),
            "2027-01-01 00:00 (in 25 days)"
        );
        // Not a timestamp: shown as is, escaped.
        assert_eq!(at("soon\u{1b}[2J", now, "UTC"), "soon\\u{1b}[2J");
    }
}
