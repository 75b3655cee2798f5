//! The human's factor at the command line: reading it (terminal or stdin, never argv), and
//! sending changes that need it signed after the broker proved itself (`authorize.rs`).
#![allow(clippy::indexing_slicing)]

use super::*;
use keyveil_proto::op::{self, Operation};

/// Refuses a factor on the command line: `/proc/PID/cmdline` is readable by every process of
/// the user, and an agent polling it spends the code first.
pub(crate) fn refuse_argv_factor(totp: Option<&String>) -> Result<()> {
    if totp.is_some_and(|c| !c.is_empty()) {
        return Err(Exit {
            code: 2,
            message: "a TOTP code on the command line is readable by every process of yours (/proc/PID/cmdline), and an agent can spend it before keyveil does; it was not used\nhint: `--totp` alone asks for the code on the terminal; `--totp-stdin` reads it from standard input".into(),
        }
        .into());
    }
    Ok(())
}

/// The factor the human chose: a TOTP code (`--totp`: asked on the terminal; `--totp-stdin`),
/// or the passphrase (`--passphrase-stdin`, or asked on the terminal with `prompt`).
pub(crate) fn factor_input(
    passphrase_stdin: bool,
    totp: Option<&String>,
    totp_stdin: bool,
    prompt: &str,
) -> Result<FactorInput> {
    refuse_argv_factor(totp)?;
    if totp_stdin {
        return Ok(FactorInput::Totp(read_secret_line(true, "")?));
    }
    if totp.is_some() {
        return Ok(FactorInput::Totp(read_secret_line(false, "TOTP code: ")?));
    }
    let typed = read_secret_line(passphrase_stdin, prompt)?;
    // Six digits typed at the prompt are a TOTP code (a vault passphrase has at least 8
    // characters), as on the approval page.
    if !passphrase_stdin && is_totp_code(typed.expose()) {
        return Ok(FactorInput::Totp(typed));
    }
    Ok(FactorInput::Passphrase(typed))
}

/// Whether `s` looks like a TOTP code: exactly six ASCII digits.
pub(crate) fn is_totp_code(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// The factor given up front for a change that may need it (`--totp`, `--totp-stdin`, or
/// `--passphrase-stdin` when stdin is free); `None` when none was given.
pub(crate) fn factor_from_args(f: &FactorArgs, stdin_is_free: bool) -> Result<Option<FactorInput>> {
    refuse_argv_factor(f.totp.as_ref())?;
    if f.totp.is_some() || (f.totp_stdin && stdin_is_free) {
        return factor_input(false, f.totp.as_ref(), f.totp_stdin, "").map(Some);
    }
    if f.passphrase_stdin && stdin_is_free {
        return Ok(Some(FactorInput::Passphrase(read_secret_line(true, "")?)));
    }
    Ok(None)
}

/// Sends a change that may replace or remove stored values. With a factor, the broker is
/// authenticated first and the request is signed (`authorize.rs`); `make` gets the
/// authorisation so it can seal what travels with it. When the broker answers that the change
/// needs the factor ([`FACTOR_NEEDED`]) and none was given, asks for the passphrase at the
/// terminal (`/dev/tty`, never stdin) and sends the change once more, signed.
pub(crate) async fn call_guarded<O: Operation>(
    paths: &Paths,
    given: Option<FactorInput>,
    make: impl Fn(Option<&Authorized>) -> Result<O>,
) -> Result<O::Reply> {
    let make = |a: Option<&Authorized>| make(a).map(Into::into);
    if let Some(input) = given {
        return expect::<O>(signed(paths, &input, &make).await?);
    }
    let reply = client::call(paths, &make(None)?).await?;
    if let Reply::Error {
        code: ErrorCode::Denied,
        message,
        ..
    } = &reply
        && message.starts_with(FACTOR_NEEDED)
    {
        note(message);
        let passphrase = rpassword::prompt_password("Vault passphrase to confirm: ")
            .map(Passphrase::new)
            .map_err(|e| Exit {
                code: 2,
                message: format!(
                    "cannot ask for your passphrase: no terminal ({e})\nhint: add `--passphrase-stdin` or `--totp-stdin` (with `set --from-stdin`: the passphrase or code on the first line, the value after it)"
                ),
            })?;
        return expect::<O>(signed(paths, &FactorInput::Passphrase(passphrase), &make).await?);
    }
    expect::<O>(reply)
}

/// Asks the broker, without the value, whether storing `env/var` needs the factor. `None`: it
/// does not (a first value, sent as given); otherwise the factor, asked at the terminal.
pub(crate) async fn probe_set(paths: &Paths, env: &str, var: &str) -> Result<Option<FactorInput>> {
    let probe = Request::VarSet(op::VarSet {
        environment: env.to_owned(),
        name: var.to_owned(),
        value: None,
        sealed_value: None,
        factor: None,
    });
    match client::call(paths, &probe).await? {
        Reply::Error {
            code: ErrorCode::Denied,
            message,
            ..
        } if message.starts_with(FACTOR_NEEDED) => {
            note(&message);
            let passphrase = read_secret_line(false, "Vault passphrase to confirm: ").map_err(|_| Exit {
                code: 2,
                message: "cannot ask for your passphrase: no terminal\nhint: add `--passphrase-stdin` or `--totp-stdin` (with `set --from-stdin`: the passphrase or code on the first line, the value after it)".into(),
            })?;
            Ok(Some(FactorInput::Passphrase(passphrase)))
        }
        other => {
            expect_ok(other)?;
            Ok(None)
        }
    }
}

/// Authenticates the broker with `input`, builds the request, signs it and sends it; the
/// broker's final reply.
pub(crate) async fn signed(
    paths: &Paths,
    input: &FactorInput,
    make: &impl Fn(Option<&Authorized>) -> Result<Request>,
) -> Result<Reply> {
    let a = authorize::authorize(paths, input)
        .await
        .map_err(auth_exit)?;
    let mut req = make(Some(&a))?;
    a.sign(&mut req);
    client::call(paths, &req).await
}

/// A refused factor exits 3 (denied) with its message; anything else stays an error.
pub(crate) fn auth_exit(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<authorize::AuthError>() {
        Some(a) => Exit {
            code: 3,
            message: a.to_string(),
        }
        .into(),
        None => e,
    }
}

/// Signs `req` with the factor and sends it.
pub(crate) async fn call_signed<O: Operation>(
    paths: &Paths,
    input: &FactorInput,
    o: O,
) -> Result<O::Reply> {
    let req: Request = o.into();
    expect::<O>(
        signed(paths, input, &|_| {
            Ok(match &req {
                Request::EnvReveal(op::EnvReveal { name, .. }) => {
                    Request::EnvReveal(op::EnvReveal {
                        name: name.clone(),
                        factor: None,
                    })
                }
                Request::PolicySet(op::PolicySet {
                    environment,
                    change,
                    ..
                }) => Request::PolicySet(op::PolicySet {
                    environment: environment.clone(),
                    factor: None,
                    change: change.clone(),
                }),
                Request::Approve(op::Approve {
                    request_id,
                    card,
                    confirm,
                    ttl_seconds,
                    uses,
                    any_command,
                    prefix,
                    subdirs,
                    ..
                }) => Request::Approve(op::Approve {
                    request_id: *request_id,
                    card: card.clone(),
                    factor: None,
                    confirm: *confirm,
                    ttl_seconds: *ttl_seconds,
                    uses: *uses,
                    any_command: *any_command,
                    prefix: *prefix,
                    subdirs: *subdirs,
                }),
                Request::FactorEnroll(op::FactorEnroll { .. }) => {
                    Request::FactorEnroll(op::FactorEnroll { factor: None })
                }
                _ => bail!("this request takes no factor"),
            })
        })
        .await?,
    )
}

pub(crate) fn read_secret_line(from_stdin: bool, prompt: &str) -> Result<Passphrase> {
    // From here on this process holds a factor: no ptrace, no /proc/PID/mem, no core file.
    crate::harden::harden_cli();
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("cannot read stdin")?;
        let trimmed = s.trim_end_matches(['\n', '\r']).to_owned();
        zeroize::Zeroize::zeroize(&mut s);
        if trimmed.is_empty() {
            return Err(Exit {
                code: 2,
                message: "nothing was read from stdin (empty first line)\nhint: pipe the passphrase in, e.g. from your password manager, or drop --passphrase-stdin to be prompted".into(),
            }
            .into());
        }
        return Ok(Passphrase::new(trimmed));
    }
    rpassword::prompt_password(prompt).map(Passphrase::new).map_err(|e| {
        Exit {
            code: 2,
            message: format!("cannot read from the terminal: {e}\nhint: use --passphrase-stdin to read the passphrase from standard input (`keyveil set` reads the value with --from-stdin: the passphrase on the first line, the value after it)"),
        }
        .into()
    })
}
