//! `dynamic add`: declares a dynamic variable (a credential minted per grant at its source) or
//! an OpenBao KV-backed one, storing its configuration and admin credential in the vault.

use std::sync::Arc;

use jiff::Timestamp;
use keyveil_vault::{Source, Variable};
use sha2::Digest;

use super::Broker;
use super::state::{OpError, OpResult, unknown_env};
use crate::dynamic::{self, DynamicError, DynamicSpec, EngineKind, OutputForm};
use keyveil_proto::op::DynamicAdded;
use keyveil_proto::{DynamicAddRequest, ErrorCode};

/// Option names a request may set (everything else is refused, so a typo is not ignored).
const OPTIONS: &[&str] = &[
    "address",
    "mount",
    "role",
    "path",
    "key",
    "connect_url",
    "prefix",
    "namespace",
    "ca_pem",
    "client_cert",
    "client_key",
    "auth",
    "auth_mount",
    "role_id",
    "auth_role",
    "username",
];

/// A usage error (the request is wrong as given).
fn usage(msg: impl Into<String>) -> OpError {
    OpError::new(ErrorCode::Usage, msg)
}

/// The reply error for a [`DynamicError`]: a usage error for a bad configuration, else a
/// failure, with the error's hint.
fn failed(e: &DynamicError) -> OpError {
    let code = match e {
        DynamicError::Config(_) => ErrorCode::Usage,
        _ => ErrorCode::Failed,
    };
    let err = OpError::new(code, e.to_string());
    match e.hint() {
        Some(h) => err.hint(h),
        None => err,
    }
}

/// Handles [`keyveil_proto::Request::DynamicAdd`].
///
/// `digest` is the `factor_proof::request_digest` of the request, for its factor proof.
pub(crate) async fn add(
    broker: &Arc<Broker>,
    mut req: DynamicAddRequest,
    digest: Option<[u8; crate::factor_proof::LEN]>,
) -> OpResult<DynamicAdded> {
    broker.lock().vault()?;
    let hidden_guess = resolve_alias(broker, &mut req);
    let mut spec = spec_of(&req)?;
    // Plain HTTP to a loopback port of the broker's own user only where the human allowed it.
    spec.same_user_loopback = insecure_loopback(broker, &req.environment);
    let logins = broker.lock().dynamic().logins();
    let names = variables(&req, &spec, &logins).await?;
    check_names(&names)?;
    // (A KV import has just read the secret: that was the check.)
    if req.check && !(spec.engine == EngineKind::OpenbaoKv && req.name.is_none()) {
        check_source(&spec, &logins).await?;
    }
    let verified = authorize(broker, &req, &spec, &names, hidden_guess, digest).await?;
    store(broker, &req, &spec, &names, verified)
}

/// [`add`] for `keyveil ci start` (`broker/ci`), before any client is served: the source comes
/// from the frozen manifest and its login secret from the job, as if added with the factor.
pub(crate) async fn add_at_ci_start(
    broker: &Arc<Broker>,
    req: DynamicAddRequest,
) -> OpResult<DynamicAdded> {
    let mut spec = spec_of(&req)?;
    spec.same_user_loopback = insecure_loopback(broker, &req.environment);
    let logins = broker.lock().dynamic().logins();
    let names = variables(&req, &spec, &logins).await?;
    check_names(&names)?;
    if req.check && !(spec.engine == EngineKind::OpenbaoKv && req.name.is_none()) {
        check_source(&spec, &logins).await?;
    }
    store(broker, &req, &spec, &names, true)
}

/// Whether the human allowed plain HTTP to a loopback port of the broker's own user for
/// `environment` (its policy's `insecure_loopback`); `false` while locked or for an unknown one.
fn insecure_loopback(broker: &Broker, environment: &str) -> bool {
    broker.lock().vault().is_ok_and(|v| {
        v.data()
            .environments
            .get(environment)
            .is_some_and(|e| e.policy.insecure_loopback)
    })
}

/// Replaces the request's variable name, where names are hidden, by the real name its alias
/// stands for; whether the name is a guess (no alias of a hidden environment): any such name
/// needs the factor (see [`authorize`]), whether or not it exists.
fn resolve_alias(broker: &Broker, req: &mut DynamicAddRequest) -> bool {
    let Some(n) = req.name.take() else {
        return false;
    };
    let inner = broker.lock();
    let hidden_guess = inner.names().hides_names(&req.environment)
        && inner.names().real_name(&req.environment, &n).is_none();
    req.name = Some(inner.names().human_name(&req.environment, &n));
    hidden_guess
}

/// The checked [`DynamicSpec`] a request declares: its engine, output form (by default a
/// password for an OpenBao database role without `connect_url`, else a URL), options (only
/// [`OPTIONS`]) and login prefix (a new one for Postgres and Redis unless given).
fn spec_of(req: &DynamicAddRequest) -> Result<DynamicSpec, OpError> {
    let engine = EngineKind::parse(&req.engine).map_err(|e| failed(&e))?;
    for k in req.options.keys() {
        if !OPTIONS.contains(&k.as_str()) {
            return Err(usage(format!(
                "unknown dynamic option {:?}; known: {}",
                keyveil_proto::display::clip(k, 40),
                OPTIONS.join(", ")
            )));
        }
    }
    let mut options = req.options.clone();
    let output = if req.output.is_empty() {
        if engine == EngineKind::OpenbaoDatabase && !options.contains_key("connect_url") {
            OutputForm::Password
        } else {
            OutputForm::Url
        }
    } else {
        OutputForm::parse(&req.output).map_err(|e| failed(&e))?
    };
    let prefix = match engine {
        EngineKind::Postgres | EngineKind::Redis => match options.remove("prefix") {
            Some(p) => p,
            None => dynamic::new_prefix().map_err(|e| failed(&e))?,
        },
        _ => {
            options.remove("prefix");
            String::new()
        }
    };
    let spec = DynamicSpec {
        engine,
        admin: keyveil_vault::SecretValue::new(req.admin.expose().to_owned()),
        template: req.template.clone(),
        output,
        prefix,
        options,
        same_user_loopback: false,
    };
    spec.check().map_err(|e| failed(&e))?;
    Ok(spec)
}

/// The variables to declare, each with the KV field it reads (if any): the one named, or
/// every field of an OpenBao KV secret (see [`kv_fields`]).
async fn variables(
    req: &DynamicAddRequest,
    spec: &DynamicSpec,
    logins: &dynamic::Logins,
) -> Result<Vec<(String, Option<String>)>, OpError> {
    match (&req.name, spec.engine) {
        (Some(n), _) => Ok(vec![(n.clone(), None)]),
        (None, EngineKind::OpenbaoKv) => kv_fields(spec, logins).await,
        (None, _) => Err(usage("name the variable: keyveil dynamic add ENV VAR ...")),
    }
}

/// The fields of the OpenBao KV secret `spec` names, each a variable of its own name; fields
/// whose name is no valid variable name or names a code-loading variable are skipped (and
/// logged); an error when none is left.
#[cfg(feature = "openbao")]
async fn kv_fields(
    spec: &DynamicSpec,
    logins: &dynamic::Logins,
) -> Result<Vec<(String, Option<String>)>, OpError> {
    let fields = dynamic::openbao::read_kv(spec, logins)
        .await
        .map_err(|e| failed(&e))?;
    let mut out = Vec::new();
    for k in fields.keys() {
        if !keyveil_vault::is_valid_name(k) {
            tracing::warn!("skipped a KV field whose name is not a valid variable name");
        } else if crate::loaders::is_injection_var(k) || crate::loaders::is_loader_var(k) {
            // The server names the variables: one named BASH_ENV, NODE_OPTIONS,
            // ... would make granted commands run code its value names.
            tracing::warn!(
                field = k.as_str(),
                "skipped a KV field named like a code-loading variable"
            );
        } else {
            out.push((k.clone(), Some(k.clone())));
        }
    }
    if out.is_empty() {
        return Err(OpError::new(
            ErrorCode::Failed,
            "the KV secret has no field whose name is a valid variable name",
        ));
    }
    Ok(out)
}

/// Without the `openbao` feature a KV import is refused as unsupported.
#[cfg(not(feature = "openbao"))]
async fn kv_fields(
    _spec: &DynamicSpec,
    _logins: &dynamic::Logins,
) -> Result<Vec<(String, Option<String>)>, OpError> {
    Err(failed(&DynamicError::Unsupported("openbao-kv")))
}

/// Refuses a variable name that breaks environment-variable rules or names a code-loading
/// variable (as `set` refuses them: the value, chosen by whoever runs the server, would make
/// granted commands load or run other code).
fn check_names(names: &[(String, Option<String>)]) -> Result<(), OpError> {
    for (n, _) in names {
        if !keyveil_vault::is_valid_name(n) {
            return Err(usage(format!(
                "invalid variable name {:?}: names follow environment-variable rules [A-Za-z_][A-Za-z0-9_]*",
                keyveil_proto::display::clip(n, 80)
            )));
        }
        if crate::loaders::is_injection_var(n) || crate::loaders::is_loader_var(n) {
            return Err(OpError::new(
                ErrorCode::Denied,
                format!("refused: a variable named {n} would make granted commands load or run other code"),
            )
            .hint("choose another name; keyveil never injects code-loading variables into a granted process"));
        }
    }
    Ok(())
}

/// Checks the admin credential against its source before anything is stored.
async fn check_source(spec: &DynamicSpec, logins: &dynamic::Logins) -> Result<(), OpError> {
    dynamic::check_admin(spec, logins).await.map_err(|e| {
        let f = failed(&e);
        let h = match &f.hint {
            Some(h) => format!("nothing was stored; {h}"),
            None => "nothing was stored; fix the admin URL or token and try again".into(),
        };
        f.hint(h)
    })
}

/// Asks for the human's factor where it is needed: replacing a variable that holds a value
/// (see `guard::guard_stored`), a name guessed where names are hidden, or an OpenBao database
/// variable whose value is the server's `password` as given (its server may be the agent's,
/// and a value minted per grant cannot be quoted on the card); whether it was verified.
async fn authorize(
    broker: &Arc<Broker>,
    req: &DynamicAddRequest,
    spec: &DynamicSpec,
    names: &[(String, Option<String>)],
    mut hidden_guess: bool,
    digest: Option<[u8; crate::factor_proof::LEN]>,
) -> Result<bool, OpError> {
    let stored: usize = {
        let inner = broker.lock();
        names
            .iter()
            .map(|(n, _)| inner.names().stored_names(&req.environment, Some(n)))
            .sum()
    };
    // Where names are hidden, a KV import names variables by what the server holds, not by
    // alias: answered like any guess (the factor, whether or not they exist), so it is no
    // oracle for hidden names.
    if req.name.is_none() && broker.lock().names().hides_names(&req.environment) {
        hidden_guess = true;
    }
    let need = if hidden_guess {
        super::guard::Need::HiddenName
    } else if spec.engine == EngineKind::OpenbaoDatabase && spec.output == OutputForm::Password {
        super::guard::Need::ServerChosen
    } else {
        super::guard::Need::stored(stored)
    };
    Ok(
        super::guard::guard_stored(broker, &req.environment, need, req.factor.clone(), digest)
            .await?
            .is_some(),
    )
}

/// Stores the variables (after rechecking the factor under the lock), saves the vault and
/// audits the summary returned.
fn store(
    broker: &Broker,
    req: &DynamicAddRequest,
    spec: &DynamicSpec,
    names: &[(String, Option<String>)],
    verified: bool,
) -> OpResult<DynamicAdded> {
    let engine = spec.engine;
    let mut inner = broker.lock();
    for (n, _) in names {
        super::guard::recheck(&inner, &req.environment, Some(n), verified)?;
    }
    inner.audit_log_mut().ready("dynamic_add")?;
    let vault = inner.vault_mut()?;
    let now = Timestamp::now();
    let Some(env) = vault.data_mut().environments.get_mut(&req.environment) else {
        return Err(unknown_env(&req.environment, vault));
    };
    let source = if engine == EngineKind::OpenbaoKv {
        Source::Provider
    } else {
        Source::Dynamic
    };
    // Who chose the source (and so, for a KV path, the values): with the factor or without
    // (an agent may have); approval cards flag a variable stored without it.
    let record = keyveil_vault::StoreRecord {
        at: now,
        factor: verified,
    };
    let mut replaced = Vec::new();
    for (n, key) in names {
        let mut s = spec.clone();
        if let Some(k) = key {
            s.options.insert("key".into(), k.clone());
        }
        let stored = s.to_source();
        let description = req
            .description
            .clone()
            .unwrap_or_else(|| format!("{} credential ({})", engine.name(), spec.shown_target()));
        match env.variables.get_mut(n) {
            Some(v) => {
                v.value = None;
                v.dynamic = Some(stored);
                v.source = source;
                v.description = description;
                v.rotated_at = Some(now);
                v.stored = Some(record);
                replaced.push(n.clone());
            }
            None => {
                let mut v = Variable::new(None, description, source);
                v.dynamic = Some(stored);
                v.stored = Some(record);
                env.variables.insert(n.clone(), v);
            }
        }
    }
    vault.save().map_err(|e| {
        OpError::new(ErrorCode::Failed, format!("cannot save the vault: {e}"))
            .hint("nothing was changed on disk; check free space and permissions of KEYVEIL_HOME")
    })?;
    let summary = DynamicAdded {
        environment: req.environment.clone(),
        variables: names.iter().map(|(n, _)| n.clone()).collect(),
        engine: engine.name().to_owned(),
        target: spec.shown_target(),
        output: spec.output.name().to_owned(),
        prefix: spec.prefix.clone(),
        template_sha256: hex::encode(sha2::Sha256::digest(req.template.as_bytes())),
        replaced,
    };
    inner.audit(
        "dynamic_add",
        serde_json::to_value(&summary).unwrap_or_default(),
    );
    Ok(summary)
}
