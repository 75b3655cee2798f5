//! The broker's operations, one function per request kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use keyveil_vault::{Environment, KdfParams, Source, Variable, Vault};
use serde_json::{Value, json};
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::Broker;
use super::spawn::{self, SpawnSpec};
use super::state::{
    AccessReq, DENIAL_MEMORY, Grant, Inner, LiveRun, ONCE_GRANT_TTL_SECONDS, OpError, OpResult,
    RequestState, new_id, unknown_env,
};
use crate::protocol::{
    AccessRequest, Charset, ClientInfo, ErrorCode, Frame, Passphrase, Reply, Request, RunRequest,
};

/// Longest value `generate` makes (characters).
const MAX_GENERATED: usize = 4096;
/// Longest argv accepted (elements).
const MAX_ARGV: usize = 4096;

fn usage(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Usage, msg)
}

fn check_name(kind: &str, name: &str) -> OpResult<()> {
    if keyveil_vault::is_valid_name(name) {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid {kind} name {:?}: names follow environment-variable rules [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)",
            crate::display::clip(name, 80)
        )))
    }
}

fn check_env_name(name: &str) -> OpResult<()> {
    // Environment names: the same rules, plus '-' for names like `my-app`.
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "invalid environment name {:?}: use letters, digits, '_' and '-', starting with a letter (at most 64)",
            crate::display::clip(name, 80)
        )))
    }
}

/// Handles every request but `run`.
pub async fn dispatch(broker: &Arc<Broker>, req: Request) -> Reply {
    let r = match req {
        Request::Status => Ok(status(broker)),
        Request::Init {
            passphrase,
            kdf_memory_kib,
        } => init(broker, passphrase, kdf_memory_kib).await,
        Request::Unlock { passphrase } => unlock(broker, passphrase).await,
        Request::Lock => Ok(lock(broker)),
        Request::Shutdown => {
            broker.shutdown.cancel();
            Ok(json!({"stopping": true}))
        }
        Request::EnvList => env_list(broker),
        Request::EnvShow { name } => env_show(broker, &name),
        Request::EnvCreate { name, description } => env_create(broker, &name, description),
        Request::EnvRemove { name } => env_remove(broker, &name),
        Request::VarSet {
            environment,
            name,
            value,
        } => var_set(broker, &environment, &name, value),
        Request::VarGenerate {
            environment,
            name,
            length,
            charset,
        } => var_generate(broker, &environment, &name, length, charset, None),
        Request::VarUnset { environment, name } => var_unset(broker, &environment, &name),
        Request::VarDeclare {
            environment,
            name,
            description,
            generate,
            length,
        } => var_declare(broker, &environment, &name, description, generate, length),
        Request::RequestAccess(a) => request_access(broker, a),
        Request::AccessStatus { request_id } => access_status(broker, request_id),
        Request::Requests => Ok(requests(broker)),
        Request::Approve {
            request_id,
            passphrase,
            ttl_seconds,
            uses,
            any_command,
        } => {
            approve(
                broker,
                request_id,
                passphrase,
                ttl_seconds,
                uses,
                any_command,
            )
            .await
        }
        Request::Deny { request_id, reason } => deny(broker, request_id, reason),
        Request::Grants { client } => Ok(grants(broker, client.as_deref())),
        Request::Revoke {
            grant_id,
            all,
            client,
        } => revoke(broker, grant_id, all, client.as_deref()),
        Request::Audit { limit } => audit(broker, limit),
        Request::AuditVerify => audit_verify(broker),
        Request::Run(_) => Err(usage("run is handled on its own path")),
    };
    match r {
        Ok(v) => Reply::ok(v),
        Err(e) => e.reply(),
    }
}

fn status(broker: &Broker) -> Value {
    let inner = broker.lock();
    json!({
        "running": true,
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "home": broker.paths.home,
        "socket": broker.paths.socket(),
        "vault_exists": broker.paths.vault().exists(),
        "locked": inner.vault.is_none(),
        "pending_requests": inner.requests.values().filter(|r| r.state == RequestState::Pending).count(),
        "live_grants": inner.grants.values().filter(|g| g.live(Timestamp::now())).count(),
        "live_runs": inner.runs.len(),
    })
}

async fn init(broker: &Arc<Broker>, pass: Passphrase, kdf_kib: Option<u32>) -> OpResult<Value> {
    if pass.expose().len() < 8 {
        return Err(usage("the passphrase is too short (at least 8 characters)"));
    }
    let path = broker.paths.vault();
    if path.exists() {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("a vault already exists at {}", path.display()),
        )
        .hint("unlock it with `keyveil unlock`, or choose another KEYVEIL_HOME"));
    }
    let mut params = KdfParams::DEFAULT;
    if let Some(m) = kdf_kib {
        params.m_cost_kib = m.max(KdfParams::MINIMUM.m_cost_kib);
        params.t_cost = params.t_cost.min(KdfParams::MINIMUM.t_cost.max(2));
    }
    let vault =
        tokio::task::spawn_blocking(move || Vault::create(&path, pass.expose().as_bytes(), params))
            .await
            .map_err(|e| OpError::new(ErrorCode::Failed, format!("vault creation failed: {e}")))?
            .map_err(vault_err)?;
    open_with(broker, vault)?;
    broker.lock().audit("init", json!({}));
    Ok(json!({"created": broker.paths.vault()}))
}

fn open_with(broker: &Broker, vault: Vault) -> OpResult<()> {
    use keyveil_vault::audit::{AuditError, AuditWriter, quarantine};
    let key = vault.audit_key();
    let path = broker.paths.audit();
    let cant = |e: AuditError| {
        OpError::new(ErrorCode::Failed, format!("cannot open the audit log: {e}"))
            .hint("check the permissions of KEYVEIL_HOME; `keyveil status` shows where it is")
    };
    // A log whose last line fails its MAC was edited by someone without the key. Refusing to
    // unlock would let any same-user process lock the human out, so the bad log is moved
    // aside as evidence, a new one is started, and the first entry of the new log says so.
    let (writer, quarantined) = match AuditWriter::open(&path, &key) {
        Ok(w) => (w, None),
        Err(AuditError::BadLine { .. }) => {
            let moved = quarantine(&path).map_err(cant)?;
            (AuditWriter::open(&path, &key).map_err(cant)?, Some(moved))
        }
        Err(e) => return Err(cant(e)),
    };
    let mut inner = broker.lock();
    inner.vault = Some(vault);
    inner.audit = Some(writer);
    if let Some(moved) = quarantined {
        tracing::warn!(moved = %moved.display(), "audit log failed verification and was quarantined");
        inner.audit("audit_quarantined", json!({ "moved_to": moved }));
    }
    Ok(())
}

fn vault_err(e: keyveil_vault::VaultError) -> OpError {
    use keyveil_vault::VaultError as E;
    match e {
        E::WrongPassphrase => OpError::new(ErrorCode::Denied, "wrong passphrase"),
        E::NotFound { .. } => OpError::new(ErrorCode::NotFound, "no vault exists yet")
            .hint("create one with `keyveil init`"),
        other => OpError::new(ErrorCode::Failed, other.to_string()),
    }
}

async fn unlock(broker: &Arc<Broker>, pass: Passphrase) -> OpResult<Value> {
    if broker.lock().vault.is_some() {
        return Ok(json!({"unlocked": true, "already": true}));
    }
    if let Err(secs) = broker.lock().factor.check(Instant::now()) {
        return Err(OpError::new(
            ErrorCode::Denied,
            format!("too many wrong passphrases; try again in {secs} s"),
        ));
    }
    let path = broker.paths.vault();
    let opened = tokio::task::spawn_blocking(move || Vault::open(&path, pass.expose().as_bytes()))
        .await
        .map_err(|e| OpError::new(ErrorCode::Failed, format!("unlock failed: {e}")))?;
    match opened {
        Ok(v) => {
            open_with(broker, v)?;
            let mut inner = broker.lock();
            inner.factor.succeed();
            inner.audit("unlock", json!({}));
            Ok(json!({"unlocked": true}))
        }
        Err(keyveil_vault::VaultError::WrongPassphrase) => {
            let lockout = broker.lock().factor.fail(Instant::now());
            tracing::warn!(?lockout, "wrong passphrase at unlock");
            Err(OpError::new(ErrorCode::Denied, "wrong passphrase")
                .hint("try again; after 5 failures keyveil waits before accepting more"))
        }
        Err(e) => Err(vault_err(e)),
    }
}

fn lock(broker: &Broker) -> Value {
    stop_everything(broker, "vault locked");
    let mut inner = broker.lock();
    inner.audit("lock", json!({}));
    inner.vault = None;
    inner.audit = None;
    json!({"locked": true})
}

/// Revokes every grant (killing its runs) and denies every pending request.
pub fn stop_everything(broker: &Broker, why: &str) {
    let mut inner = broker.lock();
    let ids: Vec<String> = inner.grants.keys().cloned().collect();
    for id in ids {
        inner.revoke(&id, why);
    }
    for r in inner.requests.values_mut() {
        if r.state == RequestState::Pending {
            r.state = RequestState::Denied {
                reason: Some(why.to_owned()),
            };
            r.decided = Some(Instant::now());
        }
    }
    drop(inner);
    broker.notify();
}

fn env_list(broker: &Broker) -> OpResult<Value> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let envs: Vec<Value> = v
        .data()
        .environments
        .iter()
        .map(|(name, e)| {
            json!({
                "name": name,
                "description": e.description,
                "variables": e.variables.keys().collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(json!({ "environments": envs }))
}

fn env_show(broker: &Broker, name: &str) -> OpResult<Value> {
    let inner = broker.lock();
    let v = inner.vault()?;
    let e = v
        .data()
        .environments
        .get(name)
        .ok_or_else(|| unknown_env(name, v))?;
    let vars: Vec<Value> = e
        .variables
        .iter()
        .map(|(n, var)| {
            json!({
                "name": n,
                "description": var.description,
                "source": var.source,
                "set": var.value.is_some(),
                "created_at": var.created_at,
                "rotated_at": var.rotated_at,
            })
        })
        .collect();
    Ok(json!({
        "name": name,
        "description": e.description,
        "variables": vars,
        "policy": e.policy,
    }))
}

fn env_create(broker: &Broker, name: &str, description: String) -> OpResult<Value> {
    check_env_name(name)?;
    let mut inner = broker.lock();
    let v = inner.vault_mut()?;
    if v.data().environments.contains_key(name) {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!("environment '{name}' already exists"),
        ));
    }
    v.data_mut().environments.insert(
        name.to_owned(),
        Environment {
            description,
            variables: Default::default(),
            policy: Default::default(),
            created_at: Timestamp::now(),
        },
    );
    save(v)?;
    inner.audit("env_create", json!({"environment": name}));
    Ok(json!({"name": name}))
}

fn env_remove(broker: &Broker, name: &str) -> OpResult<Value> {
    let mut inner = broker.lock();
    let v = inner.vault_mut()?;
    if v.data_mut().environments.remove(name).is_none() {
        return Err(unknown_env(name, v));
    }
    save(v)?;
    // Grants on a removed environment die with it.
    let ids: Vec<String> = inner
        .grants
        .values()
        .filter(|g| g.environment == name)
        .map(|g| g.id.clone())
        .collect();
    for id in ids {
        inner.revoke(&id, "environment removed");
    }
    inner.audit("env_remove", json!({"environment": name}));
    Ok(json!({"removed": name}))
}

fn save(v: &mut Vault) -> OpResult<()> {
    v.save().map_err(|e| {
        let hint = match e {
            keyveil_vault::VaultError::ChangedOnDisk { .. } => {
                "the vault file was replaced behind the broker's back; nothing was written. Run `keyveil lock` then `keyveil unlock` to reload it"
            }
            _ => "nothing was changed on disk; check free space and permissions of KEYVEIL_HOME",
        };
        OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}")).hint(hint)
    })
}

fn store(
    inner: &mut Inner,
    env: &str,
    name: &str,
    value: Option<String>,
    source: Source,
    description: Option<String>,
) -> OpResult<bool> {
    check_name("variable", name)?;
    let v = inner.vault_mut()?;
    let e = match v.data_mut().environments.get_mut(env) {
        Some(e) => e,
        None => return Err(unknown_env(env, v)),
    };
    let now = Timestamp::now();
    let existed = e.variables.contains_key(name);
    match e.variables.get_mut(name) {
        Some(var) => {
            if let Some(val) = value {
                var.value = Some(keyveil_vault::SecretValue::new(val));
                var.rotated_at = Some(now);
                var.source = source;
            }
            if let Some(d) = description {
                var.description = d;
            }
        }
        None => {
            e.variables.insert(
                name.to_owned(),
                Variable {
                    value: value.map(keyveil_vault::SecretValue::new),
                    description: description.unwrap_or_default(),
                    source,
                    created_at: now,
                    rotated_at: None,
                },
            );
        }
    }
    save(v)?;
    Ok(existed)
}

fn var_set(broker: &Broker, env: &str, name: &str, value: Passphrase) -> OpResult<Value> {
    if value.expose().is_empty() {
        return Err(usage("the value is empty; nothing was stored"));
    }
    if value.expose().contains('\0') {
        return Err(usage(
            "the value contains a NUL byte, which an environment variable cannot hold; nothing was stored",
        ));
    }
    let short = value.expose().len() < 8;
    let mut inner = broker.lock();
    let existed = store(
        &mut inner,
        env,
        name,
        Some(value.expose().to_owned()),
        Source::Human,
        None,
    )?;
    inner.audit(
        "var_set",
        json!({"environment": env, "variable": name, "replaced": existed}),
    );
    Ok(
        json!({"environment": env, "name": name, "status": "set", "replaced": existed, "short_value": short}),
    )
}

fn var_generate(
    broker: &Broker,
    env: &str,
    name: &str,
    length: usize,
    charset: Charset,
    description: Option<String>,
) -> OpResult<Value> {
    if !(8..=MAX_GENERATED).contains(&length) {
        return Err(usage(format!(
            "length must be between 8 and {MAX_GENERATED} characters"
        )));
    }
    let value = generate(length, charset)?;
    let mut inner = broker.lock();
    let existed = store(
        &mut inner,
        env,
        name,
        Some(value),
        Source::Generated,
        description,
    )?;
    inner.audit(
        "var_generate",
        json!({"environment": env, "variable": name, "length": length, "replaced": existed}),
    );
    Ok(json!({"environment": env, "name": name, "status": "set"}))
}

/// A uniformly random string over the charset (rejection sampling, no modulo bias).
pub fn generate(length: usize, charset: Charset) -> OpResult<String> {
    let alphabet: Vec<u8> = match charset {
        Charset::Alnum => (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .collect(),
        Charset::Hex => (b'0'..=b'9').chain(b'a'..=b'f').collect(),
        Charset::Base64url => (b'A'..=b'Z')
            .chain(b'a'..=b'z')
            .chain(b'0'..=b'9')
            .chain([b'-', b'_'])
            .collect(),
        Charset::Ascii => (b'!'..=b'~').collect(),
    };
    let n = alphabet.len();
    let limit = 256 - (256 % n);
    let mut out = String::with_capacity(length);
    let mut buf = [0u8; 64];
    while out.len() < length {
        getrandom::fill(&mut buf).map_err(|e| {
            OpError::new(
                ErrorCode::Failed,
                format!("the OS random source failed: {e}"),
            )
        })?;
        for &b in &buf {
            if usize::from(b) < limit
                && out.len() < length
                && let Some(&c) = alphabet.get(usize::from(b) % n)
            {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

fn var_unset(broker: &Broker, env: &str, name: &str) -> OpResult<Value> {
    let mut inner = broker.lock();
    let v = inner.vault_mut()?;
    let e = match v.data_mut().environments.get_mut(env) {
        Some(e) => e,
        None => return Err(unknown_env(env, v)),
    };
    if e.variables.remove(name).is_none() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("environment '{env}' has no variable '{name}'"),
        ));
    }
    save(v)?;
    inner.audit("var_unset", json!({"environment": env, "variable": name}));
    Ok(json!({"environment": env, "name": name, "status": "unset"}))
}

fn var_declare(
    broker: &Broker,
    env: &str,
    name: &str,
    description: Option<String>,
    generate_now: bool,
    length: Option<usize>,
) -> OpResult<Value> {
    check_name("variable", name)?;
    {
        let inner = broker.lock();
        let v = inner.vault()?;
        let e = v
            .data()
            .environments
            .get(env)
            .ok_or_else(|| unknown_env(env, v))?;
        if let Some(var) = e.variables.get(name)
            && var.value.is_some()
        {
            // Declaring never overwrites: an agent must not be able to replace a value.
            return Ok(
                json!({"status": "set", "hint": "the variable already has a value; declaring again changes nothing"}),
            );
        }
    }
    if generate_now {
        var_generate(
            broker,
            env,
            name,
            length.unwrap_or(32),
            Charset::Alnum,
            description,
        )?;
        return Ok(json!({"status": "set"}));
    }
    let mut inner = broker.lock();
    store(&mut inner, env, name, None, Source::Human, description)?;
    inner.audit("var_declare", json!({"environment": env, "variable": name}));
    Ok(json!({
        "status": "awaiting_value",
        "hint": format!("ask the user to run `keyveil set {env} {name}` in their own terminal; never ask them to paste the value into the chat"),
    }))
}

fn canonical_cwd(cwd: &str) -> OpResult<String> {
    let p = std::path::Path::new(cwd);
    if !p.is_absolute() {
        return Err(usage(format!(
            "the working directory must be absolute, got {:?}",
            crate::display::clip(cwd, 200)
        )));
    }
    let c = std::fs::canonicalize(p).map_err(|e| {
        OpError::new(
            ErrorCode::NotFound,
            format!(
                "working directory {:?} is not usable: {e}",
                crate::display::clip(cwd, 200)
            ),
        )
    })?;
    if !c.is_dir() {
        return Err(usage(format!(
            "{:?} is not a directory",
            crate::display::clip(cwd, 200)
        )));
    }
    c.into_os_string()
        .into_string()
        .map_err(|_| usage("the working directory is not valid UTF-8"))
}

fn approve_hint(id: u64) -> String {
    format!(
        "ask the user to approve it in a terminal: `keyveil approve {id}` (or deny: `keyveil deny {id}`); then call again"
    )
}

/// Finds or creates the request for an ask. Returns `(request id, created)`.
#[allow(clippy::too_many_arguments)]
fn find_or_create_request(
    inner: &mut Inner,
    client: &ClientInfo,
    env: &str,
    vars: &[String],
    argv: Option<&[String]>,
    cwd: &str,
    reason: Option<String>,
    ttl_seconds: Option<u64>,
) -> OpResult<(u64, bool)> {
    inner.expire_requests();
    for r in inner.requests.values() {
        if !r.same_ask(client, env, vars, argv, cwd) {
            continue;
        }
        match &r.state {
            RequestState::Pending => return Ok((r.id, false)),
            RequestState::Denied { reason }
                if r.decided.is_some_and(|d| d.elapsed() < DENIAL_MEMORY) =>
            {
                return Err(OpError::new(
                    ErrorCode::Denied,
                    format!(
                        "the user denied this request (#{}){}",
                        r.id,
                        reason
                            .as_ref()
                            .map(|x| format!(": {x}"))
                            .unwrap_or_default()
                    ),
                )
                .hint("do not ask again in a loop; ask the user what they want instead"));
            }
            _ => {}
        }
    }
    let id = inner.next_request;
    inner.next_request += 1;
    let redactor = inner.env_redactor(env);
    let shown_argv = argv.map(|a| scrub_argv(&redactor, a));
    inner.requests.insert(
        id,
        AccessReq {
            id,
            client: client.clone(),
            environment: env.to_owned(),
            variables: vars.to_vec(),
            argv: argv.map(<[String]>::to_vec),
            cwd: cwd.to_owned(),
            reason: reason.clone(),
            ttl_seconds,
            created_at: Timestamp::now(),
            state: RequestState::Pending,
            decided: None,
        },
    );
    inner.audit(
        "request",
        json!({
            "request_id": id,
            "client": client.scope_key(),
            "client_version": client.version,
            "client_pid": client.pid,
            "environment": env,
            "variables": vars,
            "argv": shown_argv,
            "cwd": cwd,
            "reason": reason.map(|r| scrub(&redactor, &r)),
        }),
    );
    Ok((id, true))
}

/// Removes any value from a string before it is audited or shown.
pub fn scrub(redactor: &crate::redact::Redactor, s: &str) -> String {
    let (out, _) = redactor.redact(s.as_bytes());
    String::from_utf8_lossy(&out).into_owned()
}

fn scrub_argv(redactor: &crate::redact::Redactor, argv: &[String]) -> Vec<String> {
    argv.iter().map(|a| scrub(redactor, a)).collect()
}

fn request_access(broker: &Broker, a: AccessRequest) -> OpResult<Value> {
    let cwd = canonical_cwd(&a.cwd)?;
    if let Some(argv) = &a.argv
        && argv.is_empty()
    {
        return Err(usage("the command is empty"));
    }
    let mut inner = broker.lock();
    let vars = inner.resolve_variables(&a.environment, a.variables.as_deref())?;
    let (id, created) = find_or_create_request(
        &mut inner,
        &a.client,
        &a.environment,
        &vars,
        a.argv.as_deref(),
        &cwd,
        a.reason,
        a.ttl_seconds,
    )?;
    drop(inner);
    if created {
        broker.notify();
    }
    Ok(json!({"request_id": id, "status": "pending", "hint": approve_hint(id)}))
}

fn access_status(broker: &Broker, id: u64) -> OpResult<Value> {
    let mut inner = broker.lock();
    inner.expire_requests();
    let r = inner
        .requests
        .get(&id)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no request #{id}")))?;
    Ok(match &r.state {
        RequestState::Pending => json!({"status": "pending", "hint": approve_hint(id)}),
        RequestState::Approved { grant_id } => {
            let g = inner.grants.get(grant_id);
            json!({
                "status": if g.is_some_and(|g| g.live(Timestamp::now())) { "approved" } else { "ended" },
                "grant_id": grant_id,
                "expires_at": g.map(|g| g.expires_at),
            })
        }
        RequestState::Denied { reason } => json!({"status": "denied", "reason": reason}),
        RequestState::Expired => json!({"status": "expired"}),
    })
}

fn requests(broker: &Broker) -> Value {
    let mut inner = broker.lock();
    inner.expire_requests();
    let list: Vec<Value> = inner
        .requests
        .values()
        .filter(|r| r.state == RequestState::Pending)
        .map(|r| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("expires_at".into(), json!(r.expires_at()));
            }
            v
        })
        .collect();
    json!({"requests": list})
}

async fn approve(
    broker: &Arc<Broker>,
    id: u64,
    pass: Passphrase,
    ttl_seconds: Option<u64>,
    uses: Option<u32>,
    any_command: bool,
) -> OpResult<Value> {
    {
        let mut inner = broker.lock();
        inner.vault()?;
        inner.expire_requests();
        match inner.requests.get(&id).map(|r| &r.state) {
            None => {
                return Err(
                    OpError::new(ErrorCode::NotFound, format!("no request #{id}"))
                        .hint("list pending requests with `keyveil requests`"),
                );
            }
            Some(RequestState::Pending) => {}
            Some(s) => {
                return Err(OpError::new(
                    ErrorCode::Failed,
                    format!("request #{id} is no longer pending ({})", state_word(s)),
                ));
            }
        }
        if let Err(secs) = inner.factor.check(Instant::now()) {
            inner.audit(
                "factor_locked",
                json!({"request_id": id, "seconds_left": secs}),
            );
            return Err(OpError::new(
                ErrorCode::Denied,
                format!(
                    "approvals are locked after repeated wrong passphrases; try again in {secs} s"
                ),
            ));
        }
    }
    // Verify the factor outside the lock (Argon2id takes a moment), on a blocking thread.
    let checker = broker.lock().vault()?.passphrase_checker();
    let ok = tokio::task::spawn_blocking(move || checker.check(pass.expose().as_bytes()))
        .await
        .unwrap_or(false);

    let mut inner = broker.lock();
    if !ok {
        let lockout = inner.factor.fail(Instant::now());
        inner.audit(
            "factor_failed",
            json!({"request_id": id, "factor": "passphrase", "lockout_seconds": lockout.map(|d| d.as_secs())}),
        );
        return Err(OpError::new(
            ErrorCode::Denied,
            "wrong passphrase; the request was not approved",
        )
        .hint(match lockout {
            Some(d) => format!(
                "too many failures: approvals are locked for {} s",
                d.as_secs()
            ),
            None => "try again with the vault passphrase".to_owned(),
        }));
    }
    inner.factor.succeed();
    // Re-check under the lock: a concurrent approval may have won the race.
    let Some(req) = inner.requests.get(&id).cloned() else {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("no request #{id}"),
        ));
    };
    if req.state != RequestState::Pending {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!(
                "request #{id} is no longer pending ({})",
                state_word(&req.state)
            ),
        ));
    }
    let max_ttl = inner
        .vault()?
        .data()
        .environments
        .get(&req.environment)
        .map(|e| e.policy.max_ttl_seconds)
        .unwrap_or(ONCE_GRANT_TTL_SECONDS);
    let (ttl, uses_left) = match ttl_seconds {
        Some(t) => (t.min(max_ttl).max(1), uses),
        None => (
            ONCE_GRANT_TTL_SECONDS.min(max_ttl.max(60)),
            Some(uses.unwrap_or(1)),
        ),
    };
    let now = Timestamp::now();
    let grant = Grant {
        id: new_id("g-"),
        request_id: id,
        client: req.client.scope_key(),
        environment: req.environment.clone(),
        variables: req.variables.clone(),
        argv: if any_command { None } else { req.argv.clone() },
        cwd: req.cwd.clone(),
        created_at: now,
        expires_at: now
            .saturating_add(SignedDuration::from_secs(
                i64::try_from(ttl).unwrap_or(i64::MAX),
            ))
            .unwrap_or(now),
        uses_left,
        runs: 0,
        revoked: false,
        cancel: CancellationToken::new(),
    };
    let gid = grant.id.clone();
    let out = json!({
        "request_id": id,
        "grant_id": gid,
        "expires_at": grant.expires_at,
        "uses_left": grant.uses_left,
        "any_command": grant.argv.is_none(),
    });
    inner.audit(
        "approve",
        json!({
            "request_id": id,
            "grant_id": gid,
            "factor": "passphrase",
            "environment": grant.environment,
            "variables": grant.variables,
            "any_command": grant.argv.is_none(),
            "ttl_seconds": ttl,
            "uses": grant.uses_left,
        }),
    );
    inner.grants.insert(gid.clone(), grant);
    if let Some(r) = inner.requests.get_mut(&id) {
        r.state = RequestState::Approved { grant_id: gid };
        r.decided = Some(Instant::now());
    }
    drop(inner);
    broker.notify();
    Ok(out)
}

fn state_word(s: &RequestState) -> &'static str {
    match s {
        RequestState::Pending => "pending",
        RequestState::Approved { .. } => "approved",
        RequestState::Denied { .. } => "denied",
        RequestState::Expired => "expired",
    }
}

fn deny(broker: &Broker, id: u64, reason: Option<String>) -> OpResult<Value> {
    let mut inner = broker.lock();
    let r = inner
        .requests
        .get_mut(&id)
        .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no request #{id}")))?;
    if r.state != RequestState::Pending {
        return Err(OpError::new(
            ErrorCode::Failed,
            format!(
                "request #{id} is no longer pending ({})",
                state_word(&r.state)
            ),
        ));
    }
    r.state = RequestState::Denied {
        reason: reason.clone(),
    };
    r.decided = Some(Instant::now());
    inner.audit("deny", json!({"request_id": id, "reason": reason}));
    drop(inner);
    broker.notify();
    Ok(json!({"request_id": id, "status": "denied"}))
}

fn grants(broker: &Broker, client: Option<&str>) -> Value {
    let inner = broker.lock();
    let now = Timestamp::now();
    let list: Vec<Value> = inner
        .grants
        .values()
        .filter(|g| {
            // Listed while usable, or while a run started under it is still live (a used-up
            // once-grant can still be revoked to kill its run).
            let running = inner.runs.values().any(|r| r.grant_id == g.id);
            (g.live(now) || (running && !g.revoked)) && client.is_none_or(|c| g.client == c)
        })
        .map(|g| serde_json::to_value(g).unwrap_or(Value::Null))
        .collect();
    json!({"grants": list})
}

fn revoke(
    broker: &Broker,
    grant_id: Option<String>,
    all: bool,
    client: Option<&str>,
) -> OpResult<Value> {
    let mut inner = broker.lock();
    let ids: Vec<String> = match (grant_id, all) {
        (Some(id), _) => {
            let g = inner.grants.get(&id).ok_or_else(|| {
                OpError::new(ErrorCode::NotFound, format!("no grant {id}"))
                    .hint("list grants with `keyveil grants`")
            })?;
            if client.is_some_and(|c| g.client != c) {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("no grant {id} for this client"),
                ));
            }
            vec![id]
        }
        (None, true) => inner
            .grants
            .values()
            .filter(|g| !g.revoked && client.is_none_or(|c| g.client == c))
            .map(|g| g.id.clone())
            .collect(),
        (None, false) => return Err(usage("name a grant id, or use --all")),
    };
    let mut n = 0;
    for id in &ids {
        if inner.revoke(id, "revoked by request") {
            n += 1;
        }
    }
    drop(inner);
    broker.notify();
    Ok(json!({"revoked": true, "count": n, "grant_ids": ids}))
}

fn audit(broker: &Broker, limit: Option<usize>) -> OpResult<Value> {
    broker.lock().vault()?;
    let entries =
        keyveil_vault::audit::read_entries(&broker.paths.audit(), Some(limit.unwrap_or(50)))
            .map_err(|e| {
                OpError::new(ErrorCode::Failed, format!("cannot read the audit log: {e}"))
            })?;
    Ok(json!({"entries": entries}))
}

fn audit_verify(broker: &Broker) -> OpResult<Value> {
    let key = broker.lock().vault()?.audit_key();
    match keyveil_vault::audit::verify(&broker.paths.audit(), &key) {
        Ok(n) => Ok(json!({"ok": true, "entries": n})),
        Err(e) => Err(OpError::new(ErrorCode::Failed, format!("audit log verification failed: {e}"))
            .hint("the log was edited, truncated in the middle or reordered; keep a copy for investigation")),
    }
}

type Conn = Framed<UnixStream, LengthDelimitedCodec>;

/// The `run` path: find a grant or wait for one, then spawn and relay.
pub async fn run(broker: &Arc<Broker>, req: RunRequest, framed: Conn) {
    let (mut sink, mut stream) = framed.split();
    // Notice a client that hangs up (Ctrl-C of the CLI, a cancelled MCP call).
    let gone = CancellationToken::new();
    let gone2 = gone.clone();
    let watcher = tokio::spawn(async move {
        while let Some(Ok(_)) = stream.next().await {}
        gone2.cancel();
    });
    let reply = run_inner(broker, req, &mut sink, &gone).await;
    if let Some(r) = reply
        && let Ok(body) = Frame::json(&r)
    {
        let _ = sink.send(body).await;
    }
    watcher.abort();
}

async fn run_inner(
    broker: &Arc<Broker>,
    mut req: RunRequest,
    sink: &mut spawn::OutputSink,
    gone: &CancellationToken,
) -> Option<Reply> {
    if req.argv.is_empty() || req.argv.first().is_some_and(String::is_empty) {
        return Some(usage("the command is empty: give argv[0] and its arguments").reply());
    }
    if req.argv.len() > MAX_ARGV {
        return Some(usage("the command has too many arguments").reply());
    }
    let cwd = match canonical_cwd(&req.cwd) {
        Ok(c) => c,
        Err(e) => return Some(e.reply()),
    };
    let vars = match broker
        .lock()
        .resolve_variables(&req.environment, req.variables.as_deref())
    {
        Ok(v) => v,
        Err(e) => return Some(e.reply()),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(req.wait_seconds);
    let mut changed = broker.changed.subscribe();
    let mut announced: Option<u64> = None;
    let grant_id = loop {
        // 1. A live grant covering exactly this run? Else 2. the request of this ask.
        let step: Result<Result<String, (u64, bool, Option<RequestState>)>, OpError> = {
            let mut inner = broker.lock();
            if let Some(gid) =
                inner.find_grant(&req.client, &req.environment, &vars, &req.argv, &cwd)
            {
                if let Some(g) = inner.grants.get_mut(&gid) {
                    if let Some(u) = g.uses_left.as_mut() {
                        *u = u.saturating_sub(1);
                    }
                    g.runs += 1;
                }
                Ok(Ok(gid))
            } else {
                find_or_create_request(
                    &mut inner,
                    &req.client,
                    &req.environment,
                    &vars,
                    Some(&req.argv),
                    &cwd,
                    req.reason.clone(),
                    req.ttl_seconds,
                )
                .map(|(id, created)| {
                    Err((
                        id,
                        created,
                        inner.requests.get(&id).map(|r| r.state.clone()),
                    ))
                })
            }
        };
        {
            let (id, created, state) = match step {
                Err(e) => return Some(e.reply()),
                Ok(Ok(gid)) => break gid,
                Ok(Err(x)) => x,
            };
            if created {
                broker.notify();
            }
            match state {
                Some(RequestState::Denied { reason }) => {
                    return Some(
                        OpError::new(
                            ErrorCode::Denied,
                            format!(
                                "the user denied request #{id}{}",
                                reason.map(|r| format!(": {r}")).unwrap_or_default()
                            ),
                        )
                        .reply(),
                    );
                }
                Some(RequestState::Expired) => {
                    return Some(
                        OpError::new(
                            ErrorCode::Timeout,
                            format!("request #{id} expired unanswered"),
                        )
                        .reply(),
                    );
                }
                _ => {}
            }
            if announced != Some(id) {
                announced = Some(id);
                if let Ok(body) = Frame::json(&Reply::Pending {
                    request_id: id,
                    hint: approve_hint(id),
                    is_final: false,
                }) {
                    let _ = sink.send(body).await;
                }
            }
        }
        // 3. Wait for a change, the deadline, or the client going away.
        tokio::select! {
            r = changed.changed() => { if r.is_err() { return None; } }
            _ = tokio::time::sleep_until(deadline) => {
                let id = announced.unwrap_or(0);
                return Some(Reply::Pending { request_id: id, hint: approve_hint(id), is_final: true });
            }
            _ = gone.cancelled() => return None,
            _ = broker.shutdown.cancelled() => return Some(OpError::new(ErrorCode::Failed, "the broker is stopping").reply()),
        }
    };

    // Spawn under the grant.
    let (values, cancel, redactor, shown_argv) = {
        let inner = broker.lock();
        let values = match inner.values(&req.environment, &vars) {
            Ok(v) => v,
            Err(e) => return Some(e.reply()),
        };
        let cancel = inner
            .grants
            .get(&grant_id)
            .map(|g| g.cancel.clone())
            .unwrap_or_default();
        let redactor = crate::redact::Redactor::new(
            values
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().as_bytes().to_vec())),
        );
        let env_red = inner.env_redactor(&req.environment);
        let shown_argv = scrub_argv(&env_red, &req.argv);
        (values, cancel, redactor, shown_argv)
    };
    let run_id = new_id("r-");
    let timeout = Duration::from_secs(
        req.timeout_seconds
            .unwrap_or(spawn::DEFAULT_TIMEOUT_SECONDS)
            .clamp(1, 86_400),
    );
    let mut spec = SpawnSpec {
        argv: std::mem::take(&mut req.argv),
        cwd: cwd.clone(),
        env: std::mem::take(&mut req.env),
        values,
        stdin: req.stdin.take(),
    };
    let started = match spawn::start(&mut spec) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!(
                "cannot start {:?}: {e}",
                shown_argv.first().map(String::as_str).unwrap_or("")
            );
            broker.lock().audit(
                "run_failed",
                json!({"run_id": run_id, "grant_id": grant_id, "argv": shown_argv, "error": scrub(&redactor, &e.to_string())}),
            );
            return Some(
                OpError::new(ErrorCode::Failed, msg)
                    .hint("check that the command exists on the PATH of the requester")
                    .reply(),
            );
        }
    };
    {
        let mut inner = broker.lock();
        inner.runs.insert(
            run_id.clone(),
            LiveRun {
                id: run_id.clone(),
                grant_id: grant_id.clone(),
                pgid: started.pid,
                argv: shown_argv.clone(),
                started_at: Timestamp::now(),
            },
        );
        inner.audit(
            "run_start",
            json!({
                "run_id": run_id,
                "grant_id": grant_id,
                "client": req.client.scope_key(),
                "environment": req.environment,
                "variables": vars,
                "argv": shown_argv,
                "cwd": cwd,
                "pid": started.pid,
            }),
        );
    }
    if let Ok(body) = Frame::json(&Reply::Started {
        run_id: run_id.clone(),
        grant_id: grant_id.clone(),
    }) {
        let _ = sink.send(body).await;
    }
    let mut result = spawn::relay(
        started,
        timeout,
        req.output,
        &redactor,
        cancel,
        gone.clone(),
        sink,
    )
    .await;
    result.run_id = run_id.clone();
    result.grant_id = grant_id.clone();
    {
        let mut inner = broker.lock();
        inner.runs.remove(&run_id);
        inner.audit(
            "run_end",
            json!({
                "run_id": run_id,
                "grant_id": grant_id,
                "exit_code": result.exit_code,
                "signal": result.signal,
                "redactions": result.redactions,
                "timed_out": result.timed_out,
                "revoked": result.revoked,
                "truncated": result.truncated,
                "duration_ms": result.duration_ms,
            }),
        );
    }
    Some(Reply::Exit(result))
}
