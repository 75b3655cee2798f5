//! Test helpers of the engines' unit tests: specs with a fresh prefix, and PostgreSQL queries
//! through the engine's own client. The servers themselves (readiness, `psql`, `redis-cli`, a
//! throwaway `bao server -dev`) come from `keyveil-testkit`, shared with `tests/it/dynamic.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use keyveil_vault::{DynamicSource, SecretValue};

pub(crate) use keyveil_testkit::{BaoDev, pg_admin_url, pg_ready, redis_ready};

use super::{DynamicSpec, new_prefix};

/// A spec with a fresh prefix (so parallel tests never touch each other's users).
pub(crate) fn spec(engine: &str, admin: &str, template: &str, output: &str) -> DynamicSpec {
    let mut s = spec_with(engine, admin, &[]);
    s.template = template.to_owned();
    s.output = super::OutputForm::parse(output).unwrap();
    s
}

/// An `openbao-kv` spec reading the secret `app` with `token`, and `opts`.
pub(crate) fn kv_spec(token: &str, opts: &[(&str, &str)]) -> DynamicSpec {
    let mut o = vec![("path", "app")];
    o.extend_from_slice(opts);
    spec_with("openbao-kv", token, &o)
}

/// A spec with options (and a fresh prefix).
pub(crate) fn spec_with(engine: &str, admin: &str, options: &[(&str, &str)]) -> DynamicSpec {
    let mut o: std::collections::BTreeMap<String, String> = options
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    o.insert("prefix".into(), new_prefix().unwrap());
    let src = DynamicSource {
        engine: engine.to_owned(),
        admin: SecretValue::new(admin.to_owned()),
        template: String::new(),
        output: "password".into(),
        options: o,
    };
    let mut s = DynamicSpec {
        engine: super::EngineKind::parse(&src.engine).unwrap(),
        admin: src.admin.clone(),
        template: String::new(),
        output: super::OutputForm::Password,
        prefix: src.options.get("prefix").cloned().unwrap_or_default(),
        options: src.options,
        // The test servers are the test's own (same user), as a human's dev server would be
        // with `insecure-loopback` on.
        same_user_loopback: true,
    };
    if s.engine == super::EngineKind::OpenbaoKv || s.engine == super::EngineKind::OpenbaoDatabase {
        s.prefix.clear();
    }
    s
}

async fn pg_client() -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3",
        tokio_postgres::NoTls,
    )
    .await
    .ok()?;
    tokio::spawn(conn);
    Some(c)
}

/// Runs SQL as `postgres` in database `test`; a concurrent catalog update (another test
/// creating or dropping roles at the same moment: "tuple concurrently updated") is tried again,
/// up to 5 times, as keyveil's own mints and revokes do.
pub(crate) async fn pg_exec(sql: &str) {
    let c = pg_client().await.unwrap();
    let mut tries = 0;
    loop {
        match c.batch_execute(sql).await {
            Ok(()) => return,
            Err(e) if tries < 5 && super::postgres::is_concurrency_error(&e) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50 * tries)).await;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
    }
}

/// Whether a role exists.
pub(crate) async fn pg_role_exists(name: &str) -> bool {
    pg_client()
        .await
        .unwrap()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// A test PKI made here: a CA, a server certificate for 127.0.0.1 signed by it (the material
/// for [`keyveil_testkit::BaoDev::start_tls`]), and a client certificate signed by a second CA.
pub(crate) struct TestPki {
    /// The CA of the server certificate (PEM).
    pub ca_pem: String,
    /// For the TLS listeners.
    pub tls: keyveil_testkit::BaoTls,
    /// A client certificate the second listener accepts, and its key (PEM).
    pub client_cert_pem: String,
    pub client_key_pem: String,
}

fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).unwrap();
    (rcgen::Issuer::new(p, key), cert.pem())
}

fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let c = p.signed_by(&key, issuer).unwrap();
    (c.pem(), key.serialize_pem())
}

/// A fresh [`TestPki`].
pub(crate) fn test_pki() -> TestPki {
    let (server_ca, ca_pem) = ca("keyveil test CA");
    let (client_ca, client_ca_pem) = ca("keyveil test client CA");
    let (cert_pem, key_pem) = leaf(&server_ca, "127.0.0.1");
    let (client_cert_pem, client_key_pem) = leaf(&client_ca, "keyveil-test-client");
    TestPki {
        ca_pem,
        tls: keyveil_testkit::BaoTls {
            cert_pem,
            key_pem,
            client_ca_pem,
        },
        client_cert_pem,
        client_key_pem,
    }
}

/// An Ed25519 key for signing test JWTs, and its public key (SPKI PEM) for OpenBao's
/// `jwt_validation_pubkeys`.
pub(crate) fn jwt_key() -> (rcgen::KeyPair, String) {
    let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let public = k.public_key_pem();
    (k, public)
}

/// A compact JWS (`EdDSA`) of `claims`.
pub(crate) fn sign_jwt(key: &rcgen::KeyPair, claims: &serde_json::Value) -> String {
    use base64::Engine;
    use rcgen::SigningKey;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let body = b64.encode(claims.to_string());
    let input = format!("{head}.{body}");
    let sig = key.sign(input.as_bytes()).unwrap();
    format!("{input}.{}", b64.encode(sig))
}
