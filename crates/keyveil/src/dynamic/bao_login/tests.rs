//! Tests of the OpenBao logins against `bao server` (AppRole, JWT): tokens cached, renewed and
//! revoked at close.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::dynamic::openbao::read_kv;
use crate::dynamic::testutil::{BaoDev, jwt_key, kv_spec, sign_jwt};

fn policy(bao: &BaoDev) {
    bao.cli_stdin(
        &["policy", "write", "app-read", "-"],
        "path \"secret/data/app\" { capabilities = [\"read\"] }\n",
    );
    bao.cli(&["kv", "put", "secret/app", "API_KEY=login-value-123456"]);
}

/// AppRole: one login shared by every use, refused without the login, revoked at close, no
/// login while closed, a fresh one after reopen; a token revoked behind keyveil's back is
/// replaced by a fresh login.
#[tokio::test]
async fn approle_login_is_cached_renewed_and_revoked_at_close() {
    let Some(bao) = BaoDev::start() else {
        return;
    };
    policy(&bao);
    bao.cli(&["auth", "enable", "approle"]);
    bao.cli(&[
        "write",
        "auth/approle/role/app",
        "token_policies=app-read",
        "token_ttl=10m",
        "token_max_ttl=1h",
    ]);
    let role_id = bao
        .cli(&["read", "-field=role_id", "auth/approle/role/app/role-id"])
        .trim()
        .to_owned();
    let secret_id = bao
        .cli(&[
            "write",
            "-f",
            "-field=secret_id",
            "auth/approle/role/app/secret-id",
        ])
        .trim()
        .to_owned();
    let spec = kv_spec(
        &secret_id,
        &[
            ("address", &bao.address),
            ("auth", "approle"),
            ("role_id", &role_id),
        ],
    );
    let logins = Logins::default();
    let before = bao.accessors().len();
    for _ in 0..3 {
        let got = read_kv(&spec, &logins).await.unwrap();
        assert_eq!(got["API_KEY"].expose(), "login-value-123456");
    }
    assert_eq!(logins.held(), 1);
    assert_eq!(
        bao.accessors().len(),
        before + 1,
        "one login for three reads"
    );

    // Renewal: a token past half its TTL is renewed in place.
    let accessor = {
        let mut m = logins.sessions();
        let s = m.values_mut().next().unwrap();
        s.since = Instant::now() - Duration::from_secs(400);
        s.accessor.clone()
    };
    let logins = Arc::new(logins);
    logins.renew_due();
    let t0 = Instant::now();
    while logins.sessions().values().next().unwrap().since.elapsed() > Duration::from_secs(300) {
        assert!(t0.elapsed() < Duration::from_secs(10), "not renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(bao.accessor_alive(&accessor));

    // Revoked behind keyveil's back: the next read logs in again.
    bao.cli(&["token", "revoke", "-accessor", &accessor]);
    read_kv(&spec, &logins).await.unwrap();
    let accessor2 = logins.sessions().values().next().unwrap().accessor.clone();
    assert_ne!(accessor, accessor2);

    let (revoked, failed) = logins.close().await;
    assert_eq!((revoked, failed), (vec![accessor2.clone()], 0));
    assert!(
        !bao.accessor_alive(&accessor2),
        "the token is revoked at the server"
    );
    let e = read_kv(&spec, &logins).await.unwrap_err().to_string();
    assert!(e.contains("locked"), "{e}");
    logins.reopen();
    read_kv(&spec, &logins).await.unwrap();

    // A wrong secret id: the login path and what to do; the secret id nowhere.
    let bad = kv_spec(
        "00000000-wrong-secret-id",
        &[
            ("address", &bao.address),
            ("auth", "approle"),
            ("role_id", &role_id),
        ],
    );
    let e = read_kv(&bad, &Logins::default()).await.unwrap_err();
    let (text, hint) = (e.to_string(), e.hint().unwrap_or("").to_owned());
    assert!(
        text.contains("auth/approle/login") && hint.contains("secret id"),
        "{text} / {hint}"
    );
    assert!(!text.contains("wrong-secret-id") && !text.contains(&secret_id));
}

/// JWT login with a key made here (OpenBao's `jwt_validation_pubkeys`); an expired JWT and
/// one signed by another key are refused with a hint.
#[tokio::test]
async fn jwt_login_with_a_key_made_by_the_test() {
    let Some(bao) = BaoDev::start() else {
        return;
    };
    policy(&bao);
    let (key, public) = jwt_key();
    bao.cli(&["auth", "enable", "jwt"]);
    bao.cli(&[
        "write",
        "auth/jwt/config",
        &format!("jwt_validation_pubkeys={public}"),
        "jwt_supported_algs=EdDSA",
        "bound_issuer=https://ci.example.invalid",
    ]);
    bao.cli(&[
        "write",
        "auth/jwt/role/ci",
        "role_type=jwt",
        "user_claim=sub",
        "bound_audiences=keyveil",
        "token_policies=app-read",
        "token_ttl=10m",
    ]);
    let now = jiff::Timestamp::now().as_second();
    let claims = |exp: i64| json!({"iss": "https://ci.example.invalid", "sub": "repo:team/app", "aud": "keyveil", "iat": now, "nbf": now - 5, "exp": exp});
    let jwt = sign_jwt(&key, &claims(now + 300));
    let spec = kv_spec(
        &jwt,
        &[
            ("address", &bao.address),
            ("auth", "jwt"),
            ("auth_role", "ci"),
        ],
    );
    let logins = Logins::default();
    let got = read_kv(&spec, &logins).await.unwrap();
    assert_eq!(got["API_KEY"].expose(), "login-value-123456");
    assert_eq!(logins.held(), 1);
    let (revoked, _) = logins.close().await;
    assert!(!bao.accessor_alive(&revoked[0]));

    for bad in [
        sign_jwt(&key, &claims(now - 120)),
        sign_jwt(&jwt_key().0, &claims(now + 300)),
    ] {
        let s = kv_spec(
            &bad,
            &[
                ("address", &bao.address),
                ("auth", "jwt"),
                ("auth_role", "ci"),
            ],
        );
        let e = read_kv(&s, &Logins::default()).await.unwrap_err();
        let (text, hint) = (e.to_string(), e.hint().unwrap_or("").to_owned());
        assert!(
            text.contains("auth/jwt/login") && hint.contains("fresh"),
            "{text} / {hint}"
        );
        assert!(!text.contains(&bad));
    }
}
