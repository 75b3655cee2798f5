//! The human's side of every factor: the CLI (and the demo) prove the passphrase or a TOTP
//! code to the broker without sending it, after checking that the process answering at the
//! socket is the real, unlocked broker; and `init`/`unlock` hand the passphrase only to a
//! broker this process started itself. The cryptography is in `factor_proof.rs`; this module
//! does the I/O around it.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use zeroize::Zeroizing;

use crate::client;
use crate::factor_proof::{self, FactorKey, TotpClient};
use crate::paths::Paths;
use keyveil_proto::op;
use keyveil_proto::{Bootstrap, FactorProof, Passphrase, Reply, Request};

/// Longest wait for a broker we started to create or unlock the vault (Argon2id takes ≈ 1 s).
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait for another broker to let go of the home's lock after `Shutdown`.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What the human typed.
#[derive(Debug)]
pub(crate) enum FactorInput {
    /// The vault passphrase.
    Passphrase(Passphrase),
    /// A 6-digit TOTP code.
    Totp(Passphrase),
}

/// Refusals the human must read as such (the CLI turns them into exit codes).
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthError {
    /// The passphrase does not open the vault file.
    #[error(
        "wrong passphrase (checked against the vault file {path}); nothing was sent\nhint: run the command again and type the passphrase you chose at `keyveil init` (check Caps Lock and the keyboard layout); it cannot be recovered or reset"
    )]
    WrongPassphrase {
        /// The vault file.
        path: String,
    },
    /// Whatever answers at the socket could not prove it holds the vault's key.
    #[error(
        "the process answering at {socket} could not prove it is your unlocked keyveil broker; nothing that depends on your factor was sent\nhint: if the broker is locked, run `keyveil unlock`; otherwise something replaced the socket: stop it (`keyveil daemon stop`, or find it with `fuser {socket}`) and run `keyveil unlock`"
    )]
    NotYourBroker {
        /// The socket path.
        socket: String,
    },
    /// The TOTP code did not match any step the broker offered.
    #[error(
        "wrong or expired TOTP code (or a code already used); nothing was sent\nhint: run the command again with the code your authenticator shows now (a code lasts 30 s and works once), or use the passphrase"
    )]
    WrongTotp,
}

/// A challenge the broker answered with a proof that it holds our factor key: what a request
/// needs to be signed, and the key for sealing what travels with it.
pub(crate) struct Authorized {
    challenge: String,
    index: usize,
    key: FactorKey,
    nonce: [u8; factor_proof::LEN],
}

impl Authorized {
    /// Puts the proof for `req`, exactly as it will be sent, into it.
    pub(crate) fn sign(&self, req: &mut Request) {
        let digest = factor_proof::request_digest(&serde_json::to_value(&*req).unwrap_or_default());
        req.set_factor(FactorProof {
            challenge: self.challenge.clone(),
            key: self.index,
            proof: hex::encode(factor_proof::client_proof(&self.key, &self.nonce, &digest)),
        });
    }

    /// Seals `plain` for the broker (see `factor_proof::seal_in_transit`).
    ///
    /// # Errors
    /// The OS random source failed.
    pub(crate) fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<String> {
        Ok(factor_proof::seal_in_transit(
            &self.key,
            &self.nonce,
            aad,
            plain,
        )?)
    }

    /// Opens what the broker sealed for us.
    ///
    /// # Errors
    /// It does not authenticate: it did not come from the broker that proved itself.
    pub(crate) fn open(&self, aad: &[u8], sealed: &str) -> Result<Zeroizing<Vec<u8>>> {
        Ok(factor_proof::open_in_transit(
            &self.key,
            &self.nonce,
            aad,
            sealed,
        )?)
    }
}

/// The factor key of the passphrase, derived here from the vault file (≈ 1 s of Argon2id).
///
/// # Errors
/// [`AuthError::WrongPassphrase`]; the vault file cannot be read.
pub(crate) async fn passphrase_key(paths: &Paths, pass: &Passphrase) -> Result<FactorKey> {
    let path = paths.vault();
    let pass = pass.clone();
    let shown = path.display().to_string();
    let r = tokio::task::spawn_blocking(move || {
        keyveil_vault::factor_key_from_file(&path, pass.expose().as_bytes())
    })
    .await
    .context("the key derivation stopped")?;
    match r {
        Ok(k) => Ok(FactorKey::new(k)),
        Err(keyveil_vault::VaultError::WrongPassphrase) => {
            Err(AuthError::WrongPassphrase { path: shown }.into())
        }
        Err(keyveil_vault::VaultError::NotFound { .. }) => Err(anyhow!(
            "no vault exists at {shown}\nhint: create one with `keyveil init`"
        )),
        Err(e) => Err(anyhow!(e)),
    }
}

/// Asks for a challenge and checks the broker's proof of holding the key; `Ok(None)` when the
/// answer does not prove it (a locked broker, or not our broker).
async fn challenge(
    paths: &Paths,
    pass_key: Option<&FactorKey>,
    totp: Option<TotpClient>,
    totp_msgs: Vec<String>,
    start: bool,
) -> Result<Option<Authorized>> {
    let client_nonce = factor_proof::random_nonce()?;
    let req = Request::FactorChallenge(op::FactorChallenge {
        client_nonce: hex::encode(client_nonce),
        totp: totp_msgs,
    });
    let reply = if start {
        client::call(paths, &req).await?
    } else {
        match client::call_existing(paths, &req).await {
            Some(r) => r?,
            None => return Ok(None),
        }
    };
    let data = match reply {
        Reply::Ok { data } => data,
        Reply::Error { message, hint, .. } => {
            // Locked, locked out, no TOTP enrolled: said plainly. It proves nothing either way,
            // and nothing that depends on the factor was sent.
            bail!(
                "{message}{}",
                hint.map(|h| format!("\nhint: {h}")).unwrap_or_default()
            )
        }
        _ => return Ok(None),
    };
    let Ok(ch) = client::typed_data::<op::FactorChallenge>(data) else {
        return Ok(None);
    };
    let Ok(nonce) = factor_proof::parse32(&ch.nonce) else {
        return Ok(None);
    };
    let proves = |key: &FactorKey, mac: &str| {
        factor_proof::parse32(mac).is_ok_and(|m| {
            factor_proof::same(&factor_proof::hello_mac(key, &client_nonce, &nonce), &m)
        })
    };
    if let Some(key) = pass_key {
        for (index, k) in ch.keys.iter().enumerate() {
            if k.kind == "passphrase" && proves(key, &k.mac) {
                return Ok(Some(Authorized {
                    challenge: ch.id,
                    index,
                    key: key.clone(),
                    nonce,
                }));
            }
        }
        return Ok(None);
    }
    let Some(totp) = totp else {
        return Ok(None);
    };
    let offered: Vec<(usize, Option<String>)> = ch
        .keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.kind == "totp")
        .map(|(i, k)| (i, k.msg.clone()))
        .collect();
    let msgs: Vec<Option<String>> = offered.iter().map(|(_, m)| m.clone()).collect();
    let mut unproven = None;
    for ((index, _), key) in offered.iter().zip(totp.finish(&msgs)) {
        let (Some(key), Some(k)) = (key, ch.keys.get(*index)) else {
            continue;
        };
        if proves(&key, &k.mac) {
            return Ok(Some(Authorized {
                challenge: ch.id,
                index: *index,
                key,
                nonce,
            }));
        }
        unproven.get_or_insert((*index, key));
    }
    // A wrong code (or a stale one): the request is still sent, signed with what the code gives
    // (useless to anyone without the seed), so the broker judges, counts and audits it.
    match unproven {
        Some((index, key)) => Ok(Some(Authorized {
            challenge: ch.id,
            index,
            key,
            nonce,
        })),
        None => Err(AuthError::WrongTotp.into()),
    }
}

/// Proves `input` to the broker of `paths` (starting one if none runs), after it proved it
/// holds the factor's key.
///
/// # Errors
/// [`AuthError`] (wrong passphrase, wrong TOTP code, not our broker); I/O.
pub(crate) async fn authorize(paths: &Paths, input: &FactorInput) -> Result<Authorized> {
    let got = match input {
        FactorInput::Passphrase(p) => {
            let key = passphrase_key(paths, p).await?;
            challenge(paths, Some(&key), None, Vec::new(), true).await?
        }
        FactorInput::Totp(code) => {
            let (state, msgs) = TotpClient::start(code.expose());
            challenge(paths, None, Some(state), msgs, true).await?
        }
    };
    got.ok_or_else(|| {
        AuthError::NotYourBroker {
            socket: paths.socket().display().to_string(),
        }
        .into()
    })
}

/// [`authorize`] with a passphrase key already derived by [`passphrase_key`]: one more
/// challenge without a second Argon2id (a challenge proves one request; `keyveil import` signs
/// one `VarSet` per variable).
///
/// # Errors
/// [`AuthError::NotYourBroker`]; I/O.
pub(crate) async fn authorize_with_key(paths: &Paths, key: &FactorKey) -> Result<Authorized> {
    challenge(paths, Some(key), None, Vec::new(), true)
        .await?
        .ok_or_else(|| {
            AuthError::NotYourBroker {
                socket: paths.socket().display().to_string(),
            }
            .into()
        })
}

/// Signs `req` with `input` and sends it; returns the broker's final reply.
///
/// # Errors
/// As [`authorize`], and the connection's.
pub(crate) async fn call(paths: &Paths, input: &FactorInput, mut req: Request) -> Result<Reply> {
    let a = authorize(paths, input).await?;
    a.sign(&mut req);
    client::call(paths, &req).await
}

/// Whether the broker answering now is ours and unlocked (it proves it holds `key`).
async fn is_ours_unlocked(paths: &Paths, key: &FactorKey) -> bool {
    matches!(
        challenge(paths, Some(key), None, Vec::new(), false).await,
        Ok(Some(_))
    )
}

/// Asks whatever answers at the socket to stop (a locked broker of ours does; anything else is
/// ignored), then waits until no process holds the home's broker lock.
async fn clear_the_way(paths: &Paths) -> Result<()> {
    let _ = client::call_existing(paths, &op::Shutdown.into()).await;
    paths.ensure_dirs()?;
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    loop {
        let free = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.lock())
            .ok()
            .is_some_and(|f| f.try_lock().is_ok());
        if free {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "another process holds {} and does not prove it is your broker; nothing was sent\nhint: stop it (`fuser -v {}` names it) and run this again",
                paths.lock().display(),
                paths.lock().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts our own broker with `b` and checks its answer.
async fn bootstrap(paths: &Paths, b: Bootstrap) -> Result<op::Bootstrapped> {
    let p = paths.clone();
    let reply =
        tokio::task::spawn_blocking(move || client::start_broker_with(&p, &b, BOOTSTRAP_TIMEOUT))
            .await
            .context("the broker start stopped")??;
    match reply {
        Reply::Ok { data } => serde_json::from_value(data)
            .context("the broker that was started gave an answer this client cannot read"),
        Reply::Error { message, hint, .. } => bail!(
            "{message}{}",
            hint.map(|h| format!("\nhint: {h}")).unwrap_or_default()
        ),
        _ => bail!("the broker that was started gave an unexpected answer"),
    }
}

/// `keyveil unlock`: checks the passphrase against the vault file here; if our broker already
/// runs unlocked, says so (`Ok(true)`); otherwise stops whatever answers at the socket and
/// starts a broker of our own that gets the passphrase through its stdin pipe, then checks that
/// the broker answering is it (`Ok(false)`), with the warnings the unlock gave (an audit log
/// moved aside).
///
/// # Errors
/// [`AuthError::WrongPassphrase`]; another process holds the broker lock; the new broker failed
/// or is not the one answering.
pub(crate) async fn unlock(paths: &Paths, pass: Passphrase) -> Result<(bool, Vec<String>)> {
    if let Some(Ok(Reply::Ok { data })) = client::call_existing(paths, &op::Status.into()).await
        && let Ok(status) = client::typed_data::<op::Status>(data)
        && status.ci
    {
        bail!(
            "refused: the broker for {} runs in CI mode (`keyveil ci start`), where no factor exists and its vault's key is random and held in its memory only; nothing was sent\nhint: a CI job never unlocks: `keyveil ci finish` ends this broker",
            paths.home.display()
        );
    }
    let key = passphrase_key(paths, &pass).await?;
    if is_ours_unlocked(paths, &key).await {
        return Ok((true, Vec::new()));
    }
    // An agent's call in the moment between the old broker's exit and ours can start a locked
    // broker that takes the lock first (agents are told to call again while the human unlocks):
    // clear the way again, at most three times. The passphrase only ever goes to our own child.
    let mut tries = 0;
    let answer = loop {
        tries += 1;
        clear_the_way(paths).await?;
        match bootstrap(
            paths,
            Bootstrap::Unlock {
                passphrase: pass.clone(),
            },
        )
        .await
        {
            Ok(answer) => break answer,
            Err(e) if tries >= 3 => return Err(e),
            Err(e) => tracing::debug!(error = %e, "unlock: the broker start failed; trying again"),
        }
    };
    if !is_ours_unlocked(paths, &key).await {
        return Err(AuthError::NotYourBroker {
            socket: paths.socket().display().to_string(),
        }
        .into());
    }
    let warnings = match answer {
        op::Bootstrapped::Unlocked { warnings, .. } => warnings,
        op::Bootstrapped::Created { .. } | op::Bootstrapped::CiStarted { .. } => Vec::new(),
    };
    Ok((false, warnings))
}

/// `keyveil init`: refuses while a broker for this home says it is unlocked (its vault may have
/// been moved aside: a new vault must not replace it behind its back), then creates the vault in
/// a broker of our own (passphrase through its stdin pipe) and checks that it answers.
///
/// # Errors
/// A vault exists; a broker is unlocked; the creation failed.
pub(crate) async fn init(
    paths: &Paths,
    pass: Passphrase,
    kdf_memory_kib: Option<u32>,
    path: Option<String>,
    home: Option<String>,
) -> Result<op::Bootstrapped> {
    if paths.vault().exists() {
        bail!(
            "a vault already exists at {}\nhint: unlock it with `keyveil unlock`, or choose another KEYVEIL_HOME",
            paths.vault().display()
        );
    }
    if let Some(Ok(Reply::Ok { data })) = client::call_existing(paths, &op::Status.into()).await
        && let Ok(status) = client::typed_data::<op::Status>(data)
        && !status.locked
    {
        bail!(
            "a broker is running unlocked for {} while no vault file is there (was it moved or deleted?); nothing was created\nhint: if the vault file was moved or deleted, move it back; to start a new vault, run `keyveil lock` first",
            paths.home.display()
        );
    }
    clear_the_way(paths).await?;
    let data = bootstrap(
        paths,
        Bootstrap::Init {
            passphrase: pass.clone(),
            kdf_memory_kib,
            path,
            home,
        },
    )
    .await?;
    let key = passphrase_key(paths, &pass).await?;
    if !is_ours_unlocked(paths, &key).await {
        return Err(AuthError::NotYourBroker {
            socket: paths.socket().display().to_string(),
        }
        .into());
    }
    Ok(data)
}

/// `keyveil ci start`: in a fresh home (no vault, no broker answering), starts a broker of our
/// own in CI mode with `b` (the frozen files and the job's secrets, through its stdin socket
/// pair) and returns what it froze and its public key.
///
/// # Errors
/// The home holds a vault or a broker; the broker refused the bootstrap (its message).
pub(crate) async fn ci_start(
    paths: &Paths,
    b: keyveil_proto::op::CiBootstrap,
) -> Result<op::CiStarted> {
    if paths.vault().exists()
        || client::call_existing(paths, &op::Status.into())
            .await
            .is_some()
    {
        bail!(
            "`keyveil ci start` needs a fresh KEYVEIL_HOME, and {} already holds a vault or a broker\nhint: point KEYVEIL_HOME at a new empty folder (for example under $RUNNER_TEMP)",
            paths.home.display()
        );
    }
    match bootstrap(paths, Bootstrap::Ci(Box::new(b))).await? {
        op::Bootstrapped::CiStarted { ci } => Ok(ci),
        _ => bail!(
            "the broker that was started gave an unexpected answer\nhint: see {}",
            paths.log().display()
        ),
    }
}
