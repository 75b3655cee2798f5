//! Known-answer tests against the committed vectors in `tests/vectors/`.
//!
//! Regenerate (only when the format deliberately changes) with
//! `KEYVEIL_REGENERATE_VECTORS=1 cargo test -p keyveil-vault kat`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::vault::testing::{decode, encode_fixed};
use crate::{KdfParams, VaultData};

const PASSPHRASE: &[u8] = b"keyveil test vector passphrase";

fn seq<const N: usize>(start: u8) -> [u8; N] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The inputs of vector `v1-minimum`, as documented in `tests/vectors/v1-minimum.inputs.json`.
struct Inputs {
    params: KdfParams,
    data_key: [u8; 32],
    salt: [u8; 16],
    slot_nonce: [u8; 24],
    payload_nonce: [u8; 24],
}

fn inputs() -> Inputs {
    Inputs {
        params: KdfParams::MINIMUM,
        data_key: seq(0x00),
        salt: seq(0x40),
        slot_nonce: seq(0x80),
        payload_nonce: seq(0xc0),
    }
}

fn expected_data() -> Value {
    json!({
        "environments": {
            "demo": {
                "description": "Known-answer vector",
                "variables": {
                    "API_TOKEN": {
                        "value": "kv-test-value-0123456789",
                        "description": "a human-entered token",
                        "source": "human",
                        "created_at": "2026-01-02T03:04:05Z",
                        "rotated_at": null
                    },
                    "DATABASE_URL": {
                        "value": null,
                        "description": "declared, awaiting a value",
                        "source": "generated",
                        "created_at": "2026-01-02T03:04:06Z",
                        "rotated_at": "2026-02-03T04:05:06.789Z"
                    }
                },
                "policy": {"factor": "passphrase", "max_ttl_seconds": 28800, "hide_names": false},
                "created_at": "2026-01-02T03:04:05Z"
            },
            "staging": {
                "description": "ünïcödé \"quoted\" \\ and a\nnewline",
                "variables": {},
                "policy": {"factor": "totp", "max_ttl_seconds": 3600, "hide_names": true},
                "created_at": "2026-01-02T03:04:07Z"
            }
        },
        "factors": {},
        "audit_checkpoint": {"seq": 7, "mac": "ab".repeat(32)}
    })
}

#[test]
fn kat_v1_minimum() {
    let dir = vectors_dir();
    let vault_path = dir.join("v1-minimum.vault");
    let inputs = inputs();
    let data: VaultData = serde_json::from_value(expected_data()).unwrap();
    let encoded = encode_fixed(
        Path::new("v1-minimum.vault"),
        PASSPHRASE,
        inputs.params,
        inputs.data_key,
        inputs.salt,
        inputs.slot_nonce,
        inputs.payload_nonce,
        data,
    )
    .unwrap();

    if std::env::var_os("KEYVEIL_REGENERATE_VECTORS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&vault_path, &encoded).unwrap();
        let vault = decode(&vault_path, &encoded, PASSPHRASE).unwrap();
        let description = json!({
            "description": "Inputs of v1-minimum.vault; see docs/vault-format.md",
            "passphrase_utf8": std::str::from_utf8(PASSPHRASE).unwrap(),
            "m_cost_kib": inputs.params.m_cost_kib,
            "t_cost": inputs.params.t_cost,
            "p_cost": inputs.params.p_cost,
            "data_key_hex": hex::encode(inputs.data_key),
            "salt_hex": hex::encode(inputs.salt),
            "slot_nonce_hex": hex::encode(inputs.slot_nonce),
            "payload_nonce_hex": hex::encode(inputs.payload_nonce),
            "audit_key_hex": hex::encode(vault.audit_key().as_ref()),
            "payload": expected_data(),
        });
        let mut text = serde_json::to_string_pretty(&description).unwrap();
        text.push('\n');
        std::fs::write(dir.join("v1-minimum.inputs.json"), text).unwrap();
    }

    let committed = std::fs::read(&vault_path).expect("committed vector v1-minimum.vault");
    // Decrypting the committed file gives the expected data ...
    let vault = decode(&vault_path, &committed, PASSPHRASE).unwrap();
    assert_eq!(serde_json::to_value(vault.data()).unwrap(), expected_data());
    // ... and re-encrypting the same data with the same inputs gives the same bytes.
    assert_eq!(hex::encode(&encoded), hex::encode(&committed));

    // The documented inputs and derived audit key match.
    let described: Value =
        serde_json::from_slice(&std::fs::read(dir.join("v1-minimum.inputs.json")).unwrap())
            .unwrap();
    assert_eq!(described["payload"], expected_data());
    assert_eq!(described["salt_hex"], hex::encode(inputs.salt));
    assert_eq!(
        described["audit_key_hex"],
        hex::encode(vault.audit_key().as_ref())
    );
    assert!(vault.check_passphrase(PASSPHRASE));
    assert!(!vault.check_passphrase(b"keyveil test vector passphrasE"));
}

/// The audit vector: three entries written with fixed times under the audit key of
/// `v1-minimum.vault`.
#[test]
fn kat_audit_v1() {
    use crate::audit::{AuditWriter, verify};

    let dir = vectors_dir();
    let committed_path = dir.join("audit-v1.jsonl");
    let vault_bytes = std::fs::read(dir.join("v1-minimum.vault")).unwrap();
    let vault = decode(Path::new("v1-minimum.vault"), &vault_bytes, PASSPHRASE).unwrap();
    let key = vault.audit_key();

    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("audit.jsonl");
    let mut writer = AuditWriter::open(&path, &key).unwrap();
    let entries: [(&str, Value, &str); 3] = [
        ("vault.unlocked", json!({}), "2026-01-02T03:04:05Z"),
        (
            "grant.approved",
            json!({
                "environment": "demo",
                "variables": ["API_TOKEN"],
                "argv": ["sh", "-c", "echo \"$API_TOKEN\" | sha256sum"],
                "uses_left": 1,
                "grant_id": "g-1",
                "note": "tab\there, ünïcödé ✓, control \u{1}, slash /, backslash \\",
            }),
            "2026-01-02T03:04:06.5Z",
        ),
        (
            "run.exited",
            json!({"exit_code": -1, "detail": {"b": 2, "a": [1, "x", null, false]}}),
            "2026-01-02T03:04:07.123456789Z",
        ),
    ];
    for (event, fields, ts) in entries {
        let Value::Object(fields) = fields else {
            panic!("not an object")
        };
        writer
            .append_at(event, fields, ts.parse().unwrap())
            .unwrap();
    }
    drop(writer);
    let produced = std::fs::read(&path).unwrap();
    if std::env::var_os("KEYVEIL_REGENERATE_VECTORS").is_some() {
        std::fs::write(&committed_path, &produced).unwrap();
    }
    let committed = std::fs::read(&committed_path).expect("committed vector audit-v1.jsonl");
    assert_eq!(
        String::from_utf8(produced).unwrap(),
        String::from_utf8(committed).unwrap()
    );
    assert_eq!(verify(&committed_path, &key).unwrap(), 3);
}
