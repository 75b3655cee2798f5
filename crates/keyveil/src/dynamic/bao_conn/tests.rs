//! Tests of the OpenBao connection against `bao server` (TLS with a CA made here, client
//! certificates, namespaces, node lists, redirects).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;
use crate::dynamic::Logins;
use crate::dynamic::openbao::read_kv;
use crate::dynamic::testutil::{BaoDev, kv_spec, test_pki};
use std::sync::atomic::Ordering;

async fn err_of(spec: &DynamicSpec) -> (String, String) {
    let e = read_kv(spec, &Logins::default()).await.unwrap_err();
    (e.to_string(), e.hint().unwrap_or("").to_owned())
}

/// TLS with the test's CA, a namespace, a client certificate, and the errors of each
/// failure: which node, which path, what to do, and never the token.
#[tokio::test]
async fn tls_namespaces_client_certificates_and_their_errors() {
    let pki = test_pki();
    let Some(bao) = BaoDev::start_tls(&pki.tls) else {
        return;
    };
    bao.cli(&["namespace", "create", "team"]);
    bao.cli(&[
        "secrets",
        "enable",
        "-namespace=team",
        "-path=secret",
        "kv-v2",
    ]);
    bao.cli(&[
        "kv",
        "put",
        "-namespace=team",
        "secret/app",
        "API_KEY=ns-value-123456",
    ]);
    let tls = bao.tls_address.as_str();
    let ca = pki.ca_pem.as_str();

    let ok = kv_spec(
        &bao.token,
        &[("address", tls), ("ca_pem", ca), ("namespace", "team")],
    );
    let got = read_kv(&ok, &Logins::default()).await.unwrap();
    assert_eq!(got["API_KEY"].expose(), "ns-value-123456");

    // The system roots do not know the test CA.
    let (e, hint) = err_of(&kv_spec(
        &bao.token,
        &[("address", tls), ("namespace", "team")],
    ))
    .await;
    assert!(e.contains(tls) && e.contains("TLS"), "{e}");
    assert!(hint.contains("--ca-file"), "{hint}");
    // The certificate names 127.0.0.1, not localhost.
    let by_name = tls.replace("127.0.0.1", "localhost");
    let (e, hint) = err_of(&kv_spec(
        &bao.token,
        &[("address", &by_name), ("ca_pem", ca)],
    ))
    .await;
    assert!(hint.contains("does not name"), "{e} / {hint}");
    // Outside the namespace the secret is not there: the path and namespace are named.
    let (e, hint) = err_of(&kv_spec(&bao.token, &[("address", tls), ("ca_pem", ca)])).await;
    assert!(e.contains("secret/data/app") && e.contains("404"), "{e}");
    assert!(hint.contains("namespace"), "{hint}");
    // A token without the policy: 403, the path, the namespace, what to ask for.
    let weak = bao
        .cli(&[
            "token",
            "create",
            "-namespace=team",
            "-policy=default",
            "-field=token",
        ])
        .trim()
        .to_owned();
    let (e, hint) = err_of(&kv_spec(
        &weak,
        &[("address", tls), ("ca_pem", ca), ("namespace", "team")],
    ))
    .await;
    assert!(
        e.contains("403") && e.contains("secret/data/app") && e.contains("namespace team"),
        "{e}"
    );
    assert!(hint.contains("policy"), "{hint}");
    assert!(!e.contains(&weak) && !hint.contains(&weak));
    // Nothing listens: the node and a way to check it.
    let (e, hint) = err_of(&kv_spec(
        &bao.token,
        &[("address", "https://127.0.0.1:9"), ("ca_pem", ca)],
    ))
    .await;
    assert!(
        e.contains("https://127.0.0.1:9") && hint.contains("bao status"),
        "{e} / {hint}"
    );

    // The listener that requires a client certificate.
    let mtls = bao.mtls_address.as_str();
    let (e, hint) = err_of(&kv_spec(
        &bao.token,
        &[("address", mtls), ("ca_pem", ca), ("namespace", "team")],
    ))
    .await;
    assert!(hint.contains("--client-cert"), "{e} / {hint}");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    std::fs::write(&cert, &pki.client_cert_pem).unwrap();
    std::fs::write(&key, &pki.client_key_pem).unwrap();
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let with_cert = kv_spec(
        &bao.token,
        &[
            ("address", mtls),
            ("ca_pem", ca),
            ("namespace", "team"),
            ("client_cert", &cert),
            ("client_key", &key),
        ],
    );
    let got = read_kv(&with_cert, &Logins::default()).await.unwrap();
    assert_eq!(got["API_KEY"].expose(), "ns-value-123456");

    // Plain HTTP leaves loopback never; https goes anywhere.
    assert!(Conn::new(&kv_spec("t", &[("address", "http://192.0.2.1:8200")])).is_err());
    assert!(Conn::new(&kv_spec("t", &[("address", "https://192.0.2.1:8200")])).is_ok());
}

/// A node list: every node is checked (plain HTTP to loopback only, one scheme, no
/// duplicates, at most nine).
#[test]
fn node_lists_are_checked_node_by_node() {
    let s = |a: &str| kv_spec("t", &[("address", a)]);
    let ok = Conn::new(&s("http://127.0.0.1:8200, http://127.0.0.1:8201/")).unwrap();
    assert_eq!(ok.node_count(), 2);
    assert_eq!(ok.address, "http://127.0.0.1:8200,http://127.0.0.1:8201");
    for bad in [
        "http://127.0.0.1:8200,http://10.0.0.1:8200",
        "http://127.0.0.1:8200,https://127.0.0.1:8201",
        "http://127.0.0.1:8200,http://127.0.0.1:8200",
        "http://127.0.0.1:8200,",
        "http://127.0.0.1:8200,http://127.0.0.1:8201/v1",
    ] {
        assert!(Conn::new(&s(bad)).is_err(), "{bad}");
    }
    let ten: Vec<String> = (0..10)
        .map(|i| format!("http://127.0.0.1:{}", 8200 + i))
        .collect();
    assert!(Conn::new(&s(&ten.join(","))).is_err());
}

/// A node that redirects (as a standby does, to where it says the active node is) never makes
/// the broker send the token there: the redirect is not followed, the next listed node
/// serves; with only that node listed, the error says to list the cluster's nodes.
#[tokio::test]
async fn a_redirect_is_never_followed_and_the_next_listed_node_serves() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(bao) = BaoDev::start() else {
        return;
    };
    bao.cli(&["kv", "put", "secret/app", "API_KEY=cluster-value-123456"]);
    // The agent's listener: counts every connection it gets.
    let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let thief_addr = thief.local_addr().unwrap();
    let stolen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s2 = stolen.clone();
    tokio::spawn(async move {
        while let Ok((_c, _)) = thief.accept().await {
            s2.fetch_add(1, Ordering::SeqCst);
        }
    });
    // A "standby" that answers every request with a 307 to the thief.
    let standby = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let standby_addr = format!("http://{}", standby.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut c, _)) = standby.accept().await {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{thief_addr}/v1/secret/data/app\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = c.write_all(answer.as_bytes()).await;
        }
    });
    let both = format!("{standby_addr},{}", bao.address);
    let got = read_kv(
        &kv_spec(&bao.token, &[("address", &both)]),
        &Logins::default(),
    )
    .await
    .unwrap();
    assert_eq!(got["API_KEY"].expose(), "cluster-value-123456");
    let (e, hint) = err_of(&kv_spec(&bao.token, &[("address", &standby_addr)])).await;
    assert!(e.contains("307") && !e.contains(&bao.token), "{e}");
    assert!(hint.contains("list every node"), "{hint}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stolen.load(Ordering::SeqCst),
        0,
        "the broker connected to the redirect's target"
    );
}
