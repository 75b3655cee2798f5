//! The TOTP factor (RFC 6238 over RFC 4226 HOTP): HMAC-SHA1, 6 digits, 30-second steps, a
//! window of ±1 step, each step accepted once (RFC 6238 §5.2: replays refused). Computation is
//! `totp-rs`; this module adds enrolment, replay protection and the terminal QR code.

use totp_rs::{Algorithm, Builder, Secret, Totp};

/// Seed length in bytes (160 bits, RFC 4226 §4 recommends at least 128, SHA-1's block 160).
pub(crate) const SEED_BYTES: usize = 20;
/// Step length, seconds.
pub(crate) const STEP_SECONDS: u64 = 30;

/// Why a code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TotpError {
    /// Not a current code (wrong, or outside the ±1 step window).
    #[error("wrong or expired TOTP code")]
    Wrong,
    /// The code's step was already used.
    #[error("this TOTP code was already used; wait for the next one")]
    Replayed,
    /// The seed in the vault cannot be used.
    #[error("the enrolled TOTP seed is unusable; enrol again with `keyveil factor enroll totp`")]
    BadSeed,
}

/// A fresh random seed.
pub(crate) fn new_seed() -> Result<Vec<u8>, getrandom::Error> {
    let mut b = vec![0u8; SEED_BYTES];
    getrandom::fill(&mut b)?;
    Ok(b)
}

fn totp(seed: &[u8], account: &str) -> Result<Totp, TotpError> {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_secret(seed.to_vec())
        .with_issuer(Some("keyveil"))
        .with_account_name(account)
        .build()
        .map_err(|_| TotpError::BadSeed)
}

/// The seed as RFC 4648 base32 (what the vault stores).
pub(crate) fn to_base32(seed: &[u8]) -> String {
    Secret::new(seed.to_vec().into_boxed_slice()).to_base32()
}

/// The seed from base32.
pub(crate) fn from_base32(s: &str) -> Result<Vec<u8>, TotpError> {
    Secret::try_from_base32(s)
        .map(|s| s.as_bytes().to_vec())
        .map_err(|_| TotpError::BadSeed)
}

/// The `otpauth://totp/...` URI an authenticator app imports (Key Uri Format).
pub(crate) fn uri(seed: &[u8], account: &str) -> Result<String, TotpError> {
    totp(seed, account)?
        .to_url()
        .map_err(|_| TotpError::BadSeed)
}

/// The code for a time (tests).
#[cfg(test)]
pub(crate) fn code_at(seed: &[u8], unix_seconds: u64) -> Result<String, TotpError> {
    Ok(totp(seed, "keyveil")?.generate(unix_seconds).to_string())
}

/// The 6-digit code of one 30-second time step (RFC 6238 §4: T = unix time / 30), as the
/// broker's side of a TOTP exchange needs it.
///
/// # Errors
/// [`TotpError::BadSeed`].
pub(crate) fn code_for_step(seed: &[u8], step: u64) -> Result<String, TotpError> {
    Ok(totp(seed, "keyveil")?
        .generate(step.saturating_mul(STEP_SECONDS))
        .to_string())
}

/// Checks `code` at `unix_seconds`; returns the matched step, refusing steps `<= last_step`.
pub(crate) fn verify(
    seed: &[u8],
    code: &str,
    unix_seconds: u64,
    last_step: u64,
) -> Result<u64, TotpError> {
    let t = totp(seed, "keyveil")?;
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TotpError::Wrong);
    }
    match t.check(code, unix_seconds) {
        Some(step) if step <= last_step => Err(TotpError::Replayed),
        Some(step) => Ok(step),
        None => Err(TotpError::Wrong),
    }
}

/// The URI as a QR code of Unicode half blocks, for a terminal.
pub(crate) fn qr_text(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        Err(_) => String::from("(the URI is too long for a QR code; type it into the app)"),
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 seed "12345678901234567890"; the 8-digit vectors' last six
    /// digits are the 6-digit codes.
    #[test]
    fn rfc6238_vectors() {
        let seed = b"12345678901234567890";
        for (t, code8) in [
            (59u64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
        ] {
            assert_eq!(code_at(seed, t).unwrap(), &code8[2..], "t={t}");
        }
    }

    #[test]
    fn window_and_replay() {
        let seed = new_seed().unwrap();
        let t = 1_800_000_000u64;
        let code = code_at(&seed, t).unwrap();
        let step = verify(&seed, &code, t, 0).unwrap();
        assert_eq!(step, t / 30);
        assert_eq!(verify(&seed, &code, t, step), Err(TotpError::Replayed));
        // One step late is accepted, two are not.
        assert!(verify(&seed, &code, t + 30, 0).is_ok());
        assert_eq!(verify(&seed, &code, t + 90, 0), Err(TotpError::Wrong));
        assert_eq!(verify(&seed, "12345", t, 0), Err(TotpError::Wrong));
        assert_eq!(verify(&seed, "abcdef", t, 0), Err(TotpError::Wrong));
        let b32 = to_base32(&seed);
        assert_eq!(from_base32(&b32).unwrap(), seed);
        let u = uri(&seed, "alice").unwrap();
        assert!(u.starts_with("otpauth://totp/keyveil:alice?secret="), "{u}");
        assert!(qr_text(&u).lines().count() > 10);
    }
}
