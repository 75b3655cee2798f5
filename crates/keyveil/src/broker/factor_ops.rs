//! Factors: verifying the human's factor (passphrase or TOTP), challenges, and TOTP enrolment.
//! Policy changes, which always need a factor (so a same-user agent can never loosen policy),
//! are in `policy_ops.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use keyveil_vault::{FactorKind, SecretValue, TotpFactor};
use serde_json::{Value, json};

use super::Broker;
use super::state::{HeldChallenge, HeldKind};
use super::state::{OpError, OpResult};
use crate::factor;
use crate::factor_proof::{self, FactorKey};
use keyveil_proto::op;
use keyveil_proto::{Challenge, ChallengeKey, ErrorCode, FactorProof, Passphrase};

/// How long a started TOTP enrolment waits for its confirming code.
const ENROLL_WINDOW: Duration = Duration::from_secs(600);

/// Longest a challenge stays usable.
const CHALLENGE_TTL: Duration = Duration::from_secs(120);
/// Most challenges held at once (the oldest is dropped first).
const MAX_CHALLENGES: usize = 32;

/// The proof a human offers.
pub(crate) enum Proof {
    /// Made by the human's CLI (`factor_proof.rs`), with the digest of the request it came in.
    Bound {
        /// The proof as sent.
        factor: FactorProof,
        /// `factor_proof::request_digest` of the request that carried it.
        digest: [u8; factor_proof::LEN],
    },
    /// The passphrase typed into the approval page (posted to the broker's own HTTP server).
    Typed(Passphrase),
    /// A TOTP code typed into the approval page.
    TypedTotp(String),
    /// No secret: a plain confirmation.
    Confirm,
    /// Nothing was given.
    Missing,
}

impl Proof {
    /// From a request's fields: its factor proof (with the request's digest) or a confirmation.
    pub(crate) fn from_request(
        factor: Option<FactorProof>,
        digest: Option<[u8; factor_proof::LEN]>,
        confirm: bool,
    ) -> Proof {
        match (factor, digest) {
            (Some(factor), Some(digest)) => Proof::Bound { factor, digest },
            _ if confirm => Proof::Confirm,
            _ => Proof::Missing,
        }
    }
}

/// What a verified factor was, and the key it used (for sealing a reply or opening a value that
/// travelled with it).
pub(crate) struct Verified {
    /// `passphrase`, `totp` or `confirm`.
    pub used: &'static str,
    /// The factor key and the challenge nonce, for `factor_proof::{seal,open}_in_transit`.
    pub transit: Option<(FactorKey, [u8; factor_proof::LEN])>,
}

/// The stronger of two factor requirements (`confirm` < `totp` < `passphrase`).
pub(crate) fn stronger(a: FactorKind, b: FactorKind) -> FactorKind {
    let rank = |k: FactorKind| match k {
        FactorKind::Confirm => 0,
        FactorKind::Totp => 1,
        FactorKind::Passphrase => 2,
    };
    if rank(a) >= rank(b) { a } else { b }
}

/// The factor a change to `env`'s rules (policy, names, stored values) needs: at least the one its
/// policy demands for approvals (its strongest action), and never less than a TOTP code. So a
/// TOTP code cannot loosen an environment whose approvals need the passphrase.
pub(crate) fn rule_change_factor(broker: &Broker, env: &str) -> FactorKind {
    let inner = broker.lock();
    let policy = inner
        .vault()
        .ok()
        .and_then(|v| v.data().environments.get(env).map(|e| e.policy.factor))
        .unwrap_or(FactorKind::Passphrase);
    stronger(policy, FactorKind::Totp)
}

/// `factor_challenge`: a fresh nonce and, for each factor key the broker holds, the proof that it
/// holds it (see `factor_proof.rs`). With `totp` messages (a TOTP code the human typed), one
/// SPAKE2 answer per candidate step not yet used; such a challenge counts as a failed attempt
/// until a proof made with it succeeds, so a process cannot test codes without the rate limit.
pub(crate) fn challenge(
    broker: &Broker,
    client_nonce: &str,
    totp: &[String],
) -> OpResult<Challenge> {
    let bad = |m: &str| OpError::new(ErrorCode::Usage, m.to_owned());
    let cn = factor_proof::parse32(client_nonce)
        .map_err(|_| bad("client_nonce must be 64 hex digits"))?;
    if !totp.is_empty() && totp.len() != factor_proof::TOTP_STEPS {
        return Err(bad(
            "a TOTP challenge carries one message per candidate step (3)",
        ));
    }
    let mut inner = broker.lock();
    let now = Instant::now();
    if !totp.is_empty()
        && let Err(secs) = inner.factor_mut().check(now)
    {
        return Err(totp_locked(secs));
    }
    let nonce =
        factor_proof::random_nonce().map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let v = inner.vault()?;
    let pass_key = FactorKey::new(v.factor_key());
    let mut shown = vec![ChallengeKey {
        kind: "passphrase".into(),
        mac: hex::encode(factor_proof::hello_mac(&pass_key, &cn, &nonce)),
        msg: None,
    }];
    let mut held = vec![Some((HeldKind::Passphrase, pass_key))];
    if !totp.is_empty() {
        let Some(t) = v.data().factors.totp.clone() else {
            return Err(
                OpError::new(ErrorCode::Failed, "no TOTP authenticator is enrolled").hint(
                    "approve with the passphrase, or enrol one with `keyveil factor enroll totp`",
                ),
            );
        };
        let seed_b32 = t
            .seed_base32
            .open()
            .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
        let seed = factor::from_base32(seed_b32.expose())
            .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
        drop(seed_b32);
        let step_now = factor::now_seconds() / factor::STEP_SECONDS;
        for (j, msg) in (0u64..).zip(totp) {
            // Steps now-1, now, now+1 (RFC 6238 §5.2 skew); a used one is not offered again.
            let step = (step_now + j).saturating_sub(1);
            if step <= t.last_step {
                shown.push(ChallengeKey {
                    kind: "totp".into(),
                    mac: String::new(),
                    msg: None,
                });
                held.push(None);
                continue;
            }
            let code = factor::code_for_step(&seed, step)
                .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
            let (reply, key) = factor_proof::totp_broker(&code, msg)
                .map_err(|e| OpError::new(ErrorCode::Usage, e.to_string()))?;
            shown.push(ChallengeKey {
                kind: "totp".into(),
                mac: hex::encode(factor_proof::hello_mac(&key, &cn, &nonce)),
                msg: Some(reply),
            });
            held.push(Some((HeldKind::Totp(step), key)));
        }
        // Counted until a proof made with it succeeds (`verify_factor` resets the count).
        if let Some(d) = inner.factor_mut().failed(now) {
            inner.audit_note(
                "factor_locked",
                json!({"for": "totp_challenge", "seconds_left": d.as_secs()}),
            );
        }
    }
    let id = hex::encode(
        factor_proof::random_nonce()
            .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?
            .get(..12)
            .unwrap_or_default(),
    );
    inner.factor_mut().hold_challenge(
        id.clone(),
        HeldChallenge {
            nonce,
            keys: held,
            created: now,
        },
        CHALLENGE_TTL,
        MAX_CHALLENGES,
    );
    Ok(Challenge {
        id,
        nonce: hex::encode(nonce),
        keys: shown,
    })
}

/// Verifies a proof against the factor `required` (passphrase always satisfies; TOTP satisfies
/// `totp` and `confirm`; a plain confirmation only `confirm`). Failures are rate-limited (5,
/// then a doubling lockout) and audited with `purpose`.
pub(crate) async fn verify_factor(
    broker: &Arc<Broker>,
    proof: Proof,
    required: FactorKind,
    purpose: Value,
) -> OpResult<Verified> {
    not_locked_out(broker, &proof, &purpose)?;
    // Whether a failure here counts towards the lockout (see above).
    let typed_passphrase = matches!(proof, Proof::Typed(_));
    let mut counted = true;
    let outcome: Result<Verified, (&'static str, String)> = match proof {
        Proof::Missing => {
            // Not counted: nothing was tried.
            return Err(OpError::new(ErrorCode::Denied, "this needs your factor; none was given")
                .hint("run it from your terminal: keyveil asks for the passphrase (or `--totp` for a code)"));
        }
        Proof::Confirm => {
            if required != FactorKind::Confirm {
                return Err(not_enough(required, "confirm"));
            }
            Ok(Verified {
                used: "confirm",
                transit: None,
            })
        }
        Proof::Typed(p) => {
            let checker = broker.lock().vault()?.passphrase_checker();
            let good = super::kdf_gate::derive(move || checker.check(p.expose().as_bytes()))
                .await
                .unwrap_or(false);
            if good {
                Ok(Verified {
                    used: "passphrase",
                    transit: None,
                })
            } else {
                Err(("passphrase", "wrong passphrase".to_owned()))
            }
        }
        Proof::TypedTotp(code) => {
            if required == FactorKind::Passphrase {
                return Err(not_enough(required, "totp"));
            }
            check_totp(broker, &code)
                .map(|()| Verified {
                    used: "totp",
                    transit: None,
                })
                .map_err(|w| ("totp", w))
        }
        Proof::Bound { factor, digest } => {
            let held = broker.lock().factor_mut().take_challenge(&factor.challenge);
            // A TOTP challenge was counted when handed out; a passphrase proof never counts.
            counted = false;
            match check_bound(broker, held, &factor, &digest, required) {
                Ok(v) => Ok(v),
                Err(BoundError::NotEnough(used)) => return Err(not_enough(required, used)),
                Err(BoundError::Failed(used, why)) => Err((used, why)),
            }
        }
    };
    let (used, why) = match outcome {
        Ok(v) => {
            // Only a real factor resets the count: a plain confirmation (which an agent can give
            // in a `confirm` environment) must never lift a lockout of TOTP guesses.
            if v.used != "confirm" {
                broker.lock().factor_mut().succeeded();
            }
            return Ok(v);
        }
        Err(e) => e,
    };
    Err(failed(broker, used, why, counted, typed_passphrase, &purpose).await)
}

/// Refuses a TOTP code while TOTP guessing is locked out (audited as `factor_locked` with
/// `purpose`), and any proof while the vault is locked.
fn not_locked_out(broker: &Arc<Broker>, proof: &Proof, purpose: &Value) -> OpResult<()> {
    let mut inner = broker.lock();
    inner.vault()?;
    // Only guesses made here count: a code or passphrase typed into the page, and TOTP
    // exchanges (counted when handed out). Only TOTP codes are ever locked out. The
    // passphrase is never refused unjudged (an agent could otherwise lock the human out):
    // a passphrase proof is no online guess at all (each guess costs an offline Argon2id
    // derivation, as an attack on the vault file does), and a typed one is judged by an
    // Argon2id check too, a wrong one answered only after a delay (`typed_delay`).
    if matches!(proof, Proof::TypedTotp(_))
        && let Err(secs) = inner.factor_mut().check(Instant::now())
    {
        inner.audit_note(
            "factor_locked",
            json!({"for": purpose, "seconds_left": secs}),
        );
        return Err(totp_locked(secs));
    }
    Ok(())
}

/// Records a failed proof (`used`: the factor tried, `why`): counts it towards the TOTP
/// lockout when `counted`, delays a wrong typed passphrase (`typed_passphrase`) outside the
/// broker's lock, audits it (`factor_failed`, with `purpose`) and returns the refusal.
async fn failed(
    broker: &Arc<Broker>,
    used: &'static str,
    why: String,
    counted: bool,
    typed_passphrase: bool,
    purpose: &Value,
) -> OpError {
    let (lockout, delay) = {
        let mut inner = broker.lock();
        let now = Instant::now();
        let lockout = if counted {
            inner.factor_mut().failed(now)
        } else {
            None
        };
        let delay = if typed_passphrase {
            inner.factor().typed_delay(now)
        } else {
            Duration::ZERO
        };
        inner.audit_note(
            "factor_failed",
            json!({"for": purpose, "factor": used, "why": why, "lockout_seconds": lockout.map(|d| d.as_secs()), "delay_seconds": delay.as_secs()}),
        );
        (lockout, delay)
    };
    // A speed bump, never a lock: the answer to a wrong typed passphrase waits (outside the
    // broker's lock); the right one is never delayed or refused.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    OpError::new(
        ErrorCode::Denied,
        format!("{why}; nothing was approved or changed"),
    )
    .hint(match lockout {
        Some(d) => format!(
            "too many failures: TOTP codes are locked for {} s; the passphrase is never locked out",
            d.as_secs()
        ),
        None => "try again with the right factor".to_owned(),
    })
}

/// The refusal of a TOTP code while TOTP guessing is locked out: it names the way that always
/// works (the passphrase, which satisfies every policy and is never locked out).
fn totp_locked(secs: u64) -> OpError {
    OpError::new(
        ErrorCode::Denied,
        format!("TOTP codes are locked after repeated wrong factors; try again in {secs} s"),
    )
    .hint("your passphrase is never locked out: approve at your terminal with `keyveil approve ID` (it asks for the passphrase)")
}

fn not_enough(required: FactorKind, used: &str) -> OpError {
    OpError::new(
        ErrorCode::Denied,
        format!(
            "the policy requires the {} factor; a {used} is not enough here",
            factor_word(required)
        ),
    )
    .hint(match required {
        FactorKind::Passphrase => "give the vault passphrase (keyveil prompts for it)",
        _ => "give the vault passphrase (prompted), or a TOTP code with `--totp`",
    })
}

enum BoundError {
    NotEnough(&'static str),
    Failed(&'static str, String),
}

/// Checks a CLI-made proof against the challenge it names (already removed: used once).
fn check_bound(
    broker: &Broker,
    held: Option<HeldChallenge>,
    f: &FactorProof,
    digest: &[u8; factor_proof::LEN],
    required: FactorKind,
) -> Result<Verified, BoundError> {
    let fail = |why: &str| BoundError::Failed("proof", why.to_owned());
    let Some(ch) = held else {
        return Err(fail("unknown or already used factor challenge"));
    };
    if ch.created.elapsed() > CHALLENGE_TTL {
        return Err(fail("the factor challenge expired"));
    }
    let Some(Some((kind, key))) = ch.keys.get(f.key) else {
        return Err(fail("the proof names a key the challenge does not hold"));
    };
    let used = match kind {
        HeldKind::Passphrase => "passphrase",
        HeldKind::Totp(_) => "totp",
    };
    let Ok(given) = factor_proof::parse32(&f.proof) else {
        return Err(BoundError::Failed(used, "malformed factor proof".into()));
    };
    if !factor_proof::same(&factor_proof::client_proof(key, &ch.nonce, digest), &given) {
        return Err(BoundError::Failed(
            used,
            match kind {
                HeldKind::Passphrase => "the passphrase proof does not match this request".into(),
                HeldKind::Totp(_) => "wrong or expired TOTP code".into(),
            },
        ));
    }
    if let HeldKind::Totp(step) = kind {
        if required == FactorKind::Passphrase {
            return Err(BoundError::NotEnough("totp"));
        }
        record_totp_step(broker, *step).map_err(|w| BoundError::Failed("totp", w))?;
    }
    Ok(Verified {
        used,
        transit: Some((key.clone(), ch.nonce)),
    })
}

/// Records that a TOTP step was used (replay protection that survives restarts: the step is
/// saved in the vault); refuses a step not after the last one used.
fn record_totp_step(broker: &Broker, step: u64) -> Result<(), String> {
    let mut inner = broker.lock();
    let v = inner.vault_mut().map_err(|e| e.message)?;
    let Some(t) = v.data_mut().factors.totp.as_mut() else {
        return Err("no TOTP authenticator is enrolled".into());
    };
    if step <= t.last_step {
        return Err(factor::TotpError::Replayed.to_string());
    }
    t.last_step = step;
    v.save()
        .map_err(|e| format!("cannot record the code's use: {e}"))
}

fn factor_word(k: FactorKind) -> &'static str {
    match k {
        FactorKind::Passphrase => "passphrase",
        FactorKind::Totp => "totp",
        FactorKind::Confirm => "confirm",
    }
}

/// Checks a TOTP code against the enrolled seed and records its step (replay protection that
/// survives restarts: the step is saved in the vault).
fn check_totp(broker: &Broker, code: &str) -> Result<(), String> {
    let mut inner = broker.lock();
    let Ok(v) = inner.vault_mut() else {
        return Err("the vault is locked".to_owned());
    };
    let Some(t) = v.data().factors.totp.clone() else {
        return Err("no TOTP authenticator is enrolled (`keyveil factor enroll totp`)".to_owned());
    };
    let seed_b32 = t.seed_base32.open().map_err(|e| e.to_string())?;
    let seed = factor::from_base32(seed_b32.expose()).map_err(|e| e.to_string())?;
    drop(seed_b32);
    let step = factor::verify(&seed, code, factor::now_seconds(), t.last_step)
        .map_err(|e| e.to_string())?;
    if let Some(t) = v.data_mut().factors.totp.as_mut() {
        t.last_step = step;
    }
    v.save()
        .map_err(|e| format!("cannot record the code's use: {e}"))?;
    Ok(())
}

/// Starts TOTP enrolment: passphrase required. Returns the URI and QR text once, sealed under
/// the factor key of the proof (`sealed_uri`, `sealed_qr`, associated data `factor_enroll`), so
/// a process relaying the socket never sees the seed.
pub(crate) async fn enroll(broker: &Arc<Broker>, proof: Proof) -> OpResult<op::Enrolling> {
    let verified = verify_factor(
        broker,
        proof,
        FactorKind::Passphrase,
        json!("factor_enroll"),
    )
    .await?;
    let Some((key, nonce)) = verified.transit else {
        return Err(OpError::new(
            ErrorCode::Denied,
            "enrolment needs a passphrase proof from the keyveil CLI",
        ));
    };
    let seed = factor::new_seed().map_err(|e| {
        OpError::new(
            ErrorCode::Failed,
            format!("the OS random source failed: {e}"),
        )
    })?;
    let account = std::env::var("USER").unwrap_or_else(|_| "user".to_owned());
    let uri =
        factor::uri(&seed, &account).map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let qr = factor::qr_text(&uri);
    let seal = |t: &str| {
        factor_proof::seal_in_transit(&key, &nonce, b"factor_enroll", t.as_bytes())
            .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))
    };
    let (sealed_uri, sealed_qr) = (seal(&uri)?, seal(&qr)?);
    let mut inner = broker.lock();
    inner.audit_log_mut().ready("factor_enroll_started")?;
    inner
        .factor_mut()
        .set_pending_totp(SecretValue::new(factor::to_base32(&seed)), Instant::now());
    inner.audit("factor_enroll_started", json!({"factor": "totp"}));
    Ok(op::Enrolling {
        sealed_uri,
        sealed_qr,
    })
}

/// Finishes enrolment with a first code.
///
/// Rate-limited like every factor check: wrong codes count towards the same lockout.
pub(crate) fn confirm(broker: &Broker, code: &str) -> OpResult<op::Enrolled> {
    let mut inner = broker.lock();
    if let Err(secs) = inner.factor_mut().check(Instant::now()) {
        return Err(totp_locked(secs));
    }
    let Some((seed_b32, at)) = inner.factor_mut().take_pending_totp() else {
        return Err(
            OpError::new(ErrorCode::Failed, "no TOTP enrolment is in progress")
                .hint("start one with `keyveil factor enroll totp`"),
        );
    };
    if at.elapsed() > ENROLL_WINDOW {
        return Err(
            OpError::new(ErrorCode::Timeout, "the TOTP enrolment expired")
                .hint("start again with `keyveil factor enroll totp`"),
        );
    }
    let seed = factor::from_base32(seed_b32.expose())
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let step = match factor::verify(&seed, code, factor::now_seconds(), 0) {
        Ok(s) => s,
        Err(e) => {
            // Keep the enrolment open for another try.
            inner.factor_mut().set_pending_totp(seed_b32, at);
            let lockout = inner.factor_mut().failed(Instant::now());
            inner.audit_note(
                "factor_failed",
                json!({"for": "factor_confirm", "factor": "totp", "why": e.to_string(), "lockout_seconds": lockout.map(|d| d.as_secs())}),
            );
            return Err(OpError::new(ErrorCode::Denied, e.to_string())
                .hint("type the code your authenticator shows now"));
        }
    };
    if let Err(e) = inner.audit_log_mut().ready("factor_enrolled") {
        // Keep the enrolment open: the code can be tried again once the log has room.
        inner.factor_mut().set_pending_totp(seed_b32, at);
        return Err(e);
    }
    inner.factor_mut().succeeded();
    let seed_b32 = keyveil_vault::SealedValue::seal(seed_b32)
        .map_err(|e| OpError::new(ErrorCode::Failed, e.to_string()))?;
    let v = inner.vault_mut()?;
    v.data_mut().factors.totp = Some(TotpFactor {
        seed_base32: seed_b32,
        last_step: step,
        enrolled_at: Timestamp::now(),
    });
    v.save()
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")))?;
    inner.audit("factor_enrolled", json!({"factor": "totp"}));
    Ok(op::Enrolled {
        enrolled: "totp".to_owned(),
    })
}
