//! Request ids that never repeat across broker restarts: the next id is kept in
//! `KEYVEIL_HOME/run/next-request-id` (one decimal number, 0600), written after each new request
//! and read when a broker starts. Ids stay small numbers a human types (`keyveil approve 7`).
//!
//! The file is the broker's, but any process of the user can write it. An unreadable or absurd
//! number (above [`MAX_PLAUSIBLE`]: a billion requests) is not trusted: the broker then starts
//! from the current Unix time in seconds, which is above every id a human-paced broker handed
//! out before, so an id still never repeats. A number set lower by hand can make ids repeat;
//! that costs no approval, which is bound to the card the human saw (`factor_proof::card_digest`).

use std::path::{Path, PathBuf};

/// Above this, the stored number is taken as tampering.
const MAX_PLAUSIBLE: u64 = 1_000_000_000;

/// Where the next id is kept.
pub fn file(run_dir: &Path) -> PathBuf {
    run_dir.join("next-request-id")
}

/// The first id a starting broker hands out.
pub fn load(path: &Path) -> u64 {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(n) if (1..=MAX_PLAUSIBLE).contains(&n) => n,
            _ => fallback(path),
        },
        Err(_) => fallback(path),
    }
}

fn fallback(path: &Path) -> u64 {
    tracing::warn!(file = %path.display(), "the next request id is unreadable or implausible; continuing from the current time");
    u64::try_from(jiff::Timestamp::now().as_second())
        .unwrap_or(1)
        .max(MAX_PLAUSIBLE + 1)
}

/// Records `next` (written to a temporary file, then renamed over the old one). A failure is
/// logged: ids may then repeat after a restart, nothing else.
pub fn store(path: &Path, next: u64) {
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, format!("{next}\n"))
        .and_then(|()| crate::paths::set_mode(&tmp, 0o600).map_err(std::io::Error::other))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        tracing::warn!(file = %path.display(), error = %e, "cannot record the next request id");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_continue_and_tampering_never_lowers_them_below_a_floor() {
        let d = tempfile::tempdir().unwrap();
        let f = file(d.path());
        assert_eq!(load(&f), 1);
        store(&f, 42);
        assert_eq!(load(&f), 42);
        for junk in ["", "x", "0", "18446744073709551615", "-3"] {
            std::fs::write(&f, junk).unwrap();
            assert!(load(&f) > MAX_PLAUSIBLE, "{junk:?}");
        }
    }
}
