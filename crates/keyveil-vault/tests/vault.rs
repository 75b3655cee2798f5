//! Vault: round trips, passphrases, tampering, atomic locked saves, secret hygiene.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use keyveil_vault::{
    Environment, FactorKind, KdfParams, Policy, SealedValue, SecretValue, Source, Variable, Vault,
    VaultData, VaultError, is_valid_environment_name, is_valid_name, is_valid_new_environment_name,
};
use sha2::{Digest, Sha256};

const PASS: &[u8] = b"passphrase-FOR-tests-7c1d";
const SECRET: &str = "SECRET-VALUE-a8f3e2d1c0b9";
const PARAMS: KdfParams = KdfParams::MINIMUM;

fn new_vault() -> (tempfile::TempDir, PathBuf, Vault) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut vault = Vault::create(&path, PASS, PARAMS).unwrap();
    let mut env = Environment::new("development");
    env.variables.insert(
        "API_TOKEN".into(),
        Variable::new(
            Some(SealedValue::seal(SecretValue::new(SECRET.into())).unwrap()),
            "token",
            Source::Human,
        ),
    );
    env.variables.insert(
        "LATER".into(),
        Variable::new(None, "declared", Source::Generated),
    );
    vault.data_mut().environments.insert("dev".into(), env);
    vault.save().unwrap();
    (dir, path, vault)
}

/// Recomputes the trailing SHA-256 checksum, as an attacker who knows the format would.
fn fix_checksum(bytes: &mut Vec<u8>) {
    let body_len = bytes.len() - 32;
    let digest = Sha256::digest(&bytes[..body_len]);
    bytes.truncate(body_len);
    bytes.extend_from_slice(&digest);
}

fn open_bytes(dir: &Path, bytes: &[u8]) -> Result<Vault, VaultError> {
    let path = dir.join("tampered");
    std::fs::write(&path, bytes).unwrap();
    let result = Vault::open(&path, PASS);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "open must never modify the file"
    );
    result
}

/// Offsets in a one-slot version-1 file (see docs/vault-format.md).
const SLOT: usize = 12;
const M_COST: usize = SLOT + 4;
const T_COST: usize = SLOT + 8;
const SALT: usize = SLOT + 16;
const WRAPPED: usize = SLOT + 56;
const PAYLOAD_NONCE: usize = SLOT + 104;
const CIPHERTEXT: usize = PAYLOAD_NONCE + 24;

#[test]
fn create_save_open_round_trip() {
    let (_dir, path, vault) = new_vault();
    let reopened = Vault::open(&path, PASS).unwrap();
    let env = &reopened.data().environments["dev"];
    assert_eq!(env.description, "development");
    assert_eq!(env.policy, Policy::default());
    assert_eq!(env.policy.max_ttl_seconds, 28_800);
    let token = &env.variables["API_TOKEN"];
    assert_eq!(
        token.value.as_ref().unwrap().open().unwrap().expose(),
        SECRET
    );
    assert_eq!(token.value.as_ref().unwrap().len(), SECRET.len());
    assert_eq!(token.source, Source::Human);
    assert_eq!(
        token.created_at,
        vault.data().environments["dev"].variables["API_TOKEN"].created_at
    );
    assert!(env.variables["LATER"].value.is_none());
    assert_eq!(reopened.kdf_params(), PARAMS);
    assert_eq!(reopened.path(), path);
    assert_eq!(*reopened.audit_key(), *vault.audit_key());
    assert!(reopened.check_passphrase(PASS));
    assert!(!reopened.check_passphrase(b"wrong"));
    assert!(!reopened.check_passphrase(b""));
    let checker = reopened.passphrase_checker();
    drop(reopened);
    let handle = std::thread::spawn(move || {
        (
            checker.check(PASS),
            checker.check(b"wrong"),
            format!("{checker:?}"),
        )
    });
    let (right, wrong, debug) = handle.join().unwrap();
    assert!(right && !wrong);
    assert_eq!(debug, "PassphraseChecker { key_slots: 1, .. }");
}

#[test]
fn wrong_passphrase_is_refused() {
    let (_dir, path, _vault) = new_vault();
    let err = Vault::open(&path, b"not the passphrase").unwrap_err();
    assert!(matches!(err, VaultError::WrongPassphrase), "{err:?}");
}

#[test]
fn create_refuses_existing_bad_params_and_empty_passphrase() {
    let (dir, path, _vault) = new_vault();
    let before = std::fs::read(&path).unwrap();
    let err = Vault::create(&path, PASS, PARAMS).unwrap_err();
    assert!(matches!(err, VaultError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let other = dir.path().join("other");
    for params in [
        KdfParams {
            m_cost_kib: 19_455,
            ..PARAMS
        },
        KdfParams {
            t_cost: 1,
            ..PARAMS
        },
        KdfParams {
            p_cost: 0,
            ..PARAMS
        },
    ] {
        let err = Vault::create(&other, PASS, params).unwrap_err();
        assert!(
            matches!(
                err,
                VaultError::WeakKdfParams {
                    reason: "below the minimum",
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let huge = KdfParams {
        m_cost_kib: u32::MAX,
        ..PARAMS
    };
    let err = Vault::create(&other, PASS, huge).unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::WeakKdfParams {
                reason: "above the maximum",
                ..
            }
        ),
        "{err:?}"
    );
    let err = Vault::create(&other, b"", PARAMS).unwrap_err();
    assert!(matches!(err, VaultError::BadPassphrase { .. }), "{err:?}");
    assert!(!other.exists());
}

#[test]
fn missing_file_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let err = Vault::open(&dir.path().join("nope"), PASS).unwrap_err();
    assert!(matches!(err, VaultError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("keyveil init"));
}

#[test]
fn every_flipped_byte_is_rejected_without_key_derivation() {
    let (dir, path, _vault) = new_vault();
    let good = std::fs::read(&path).unwrap();
    let started = std::time::Instant::now();
    for offset in 0..good.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[offset] ^= mask;
            let err = open_bytes(dir.path(), &bad).unwrap_err();
            match offset {
                8 | 9 => assert!(
                    matches!(err, VaultError::UnsupportedVersion { .. }),
                    "{offset}: {err:?}"
                ),
                _ => assert!(
                    matches!(err, VaultError::Corrupt { .. }),
                    "{offset}: {err:?}"
                ),
            }
        }
    }
    // The checksum catches every accidental flip before Argon2id runs.
    assert!(started.elapsed().as_secs() < 20);
    // The original is untouched and still opens.
    assert_eq!(std::fs::read(&path).unwrap(), good);
    Vault::open(&path, PASS).unwrap();
}

#[test]
fn deliberate_edits_with_a_valid_checksum_are_rejected() {
    let (dir, path, _vault) = new_vault();
    let good = std::fs::read(&path).unwrap();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bad = good.clone();
        f(&mut bad);
        fix_checksum(&mut bad);
        open_bytes(dir.path(), &bad).unwrap_err()
    };

    // Payload and payload nonce: the AEAD rejects them.
    let err = edit(&|b| b[CIPHERTEXT + 3] ^= 1);
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err:?}");
    let err = edit(&|b| b[PAYLOAD_NONCE] ^= 1);
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err:?}");
    // Slot fields bound by the slot AEAD: salt, valid-but-different t_cost, wrapped key.
    for err in [
        edit(&|b| b[SALT] ^= 1),
        edit(&|b| b[T_COST + 3] = 3),
        edit(&|b| b[WRAPPED] ^= 1),
    ] {
        assert!(matches!(err, VaultError::WrongPassphrase), "{err:?}");
    }
    // Downgrade and DoS attempts are refused before any key derivation.
    let err = edit(&|b| b[M_COST..M_COST + 4].copy_from_slice(&19_455u32.to_be_bytes()));
    assert!(
        matches!(
            err,
            VaultError::WeakKdfParams {
                reason: "below the minimum",
                ..
            }
        ),
        "{err:?}"
    );
    let err = edit(&|b| b[M_COST..M_COST + 4].copy_from_slice(&u32::MAX.to_be_bytes()));
    assert!(
        matches!(
            err,
            VaultError::WeakKdfParams {
                reason: "above the maximum",
                ..
            }
        ),
        "{err:?}"
    );
    let err = edit(&|b| b[T_COST..T_COST + 4].copy_from_slice(&1_000_000u32.to_be_bytes()));
    assert!(
        matches!(
            err,
            VaultError::WeakKdfParams {
                reason: "above the maximum",
                ..
            }
        ),
        "{err:?}"
    );
    // Layout fields.
    for f in [
        &(|b: &mut Vec<u8>| b[10] = 0) as &dyn Fn(&mut Vec<u8>),
        &|b| b[10] = 9,
        &|b| b[11] = 1,
        &|b| b[SLOT] = 2,
        &|b| b[SLOT + 1] = 1,
        &|b| b.truncate(CIPHERTEXT + 10 + 32),
    ] {
        let err = edit(f);
        assert!(matches!(err, VaultError::Corrupt { .. }), "{err:?}");
    }
    // A second (copied) key slot changes the header, which the payload AEAD binds.
    let err = edit(&|b| {
        let slot: Vec<u8> = b[SLOT..SLOT + 104].to_vec();
        b[10] = 2;
        b.splice(SLOT + 104..SLOT + 104, slot);
    });
    assert!(matches!(err, VaultError::Corrupt { .. }), "{err:?}");
    // A future version is reported as such.
    let err = edit(&|b| b[8..10].copy_from_slice(&2u16.to_be_bytes()));
    assert!(
        matches!(err, VaultError::UnsupportedVersion { found: 2 }),
        "{err:?}"
    );
    // Not a vault at all.
    for junk in [&b""[..], b"KEYVEIL", b"{\"environments\":{}}"] {
        let err = open_bytes(dir.path(), junk).unwrap_err();
        assert!(matches!(err, VaultError::Corrupt { .. }), "{err:?}");
    }
}

#[test]
fn saves_use_a_fresh_nonce_and_private_files() {
    let (dir, path, mut vault) = new_vault();
    let first = std::fs::read(&path).unwrap();
    vault.save().unwrap();
    let second = std::fs::read(&path).unwrap();
    assert_eq!(first.len(), second.len());
    assert_eq!(
        first[..PAYLOAD_NONCE],
        second[..PAYLOAD_NONCE],
        "slots are kept"
    );
    assert_ne!(
        first[PAYLOAD_NONCE..CIPHERTEXT],
        second[PAYLOAD_NONCE..CIPHERTEXT]
    );
    assert_ne!(first[CIPHERTEXT..], second[CIPHERTEXT..]);
    // Padding hides small size changes.
    assert_eq!((first.len() - CIPHERTEXT - 16 - 32) % 256, 0);

    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["vault", "vault.lock"],
        "no temporary files left behind"
    );
    assert_eq!(Vault::lock_path(&path), dir.path().join("vault.lock"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for name in ["vault", "vault.lock"] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
}

#[test]
fn concurrent_writer_is_not_silently_overwritten() {
    let (_dir, path, mut first) = new_vault();
    let mut second = Vault::open(&path, PASS).unwrap();
    second
        .data_mut()
        .environments
        .insert("staging".into(), Environment::new("s"));
    second.save().unwrap();
    first.data_mut().environments.remove("dev");
    let err = first.save().unwrap_err();
    assert!(matches!(err, VaultError::ChangedOnDisk { .. }), "{err:?}");
    let now = Vault::open(&path, PASS).unwrap();
    assert!(now.data().environments.contains_key("dev"));
    assert!(now.data().environments.contains_key("staging"));
    // A deleted vault is not resurrected by a stale handle either.
    std::fs::remove_file(&path).unwrap();
    let err = second.save().unwrap_err();
    assert!(matches!(err, VaultError::ChangedOnDisk { .. }), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn save_reports_a_held_lock() {
    let (_dir, path, mut vault) = new_vault();
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .open(Vault::lock_path(&path))
        .unwrap();
    lock.lock().unwrap();
    let err = vault.save().unwrap_err();
    assert!(matches!(err, VaultError::Locked { .. }), "{err:?}");
    lock.unlock().unwrap();
    vault.save().unwrap();
}

#[test]
fn change_passphrase_keeps_data_and_audit_key() {
    let (_dir, path, mut vault) = new_vault();
    let audit_key = vault.audit_key();
    vault.change_passphrase(b"new passphrase", PARAMS).unwrap();
    assert!(matches!(
        Vault::open(&path, PASS).unwrap_err(),
        VaultError::WrongPassphrase
    ));
    let reopened = Vault::open(&path, b"new passphrase").unwrap();
    assert_eq!(*reopened.audit_key(), *audit_key);
    assert!(reopened.data().environments.contains_key("dev"));
}

#[test]
fn audit_keys_differ_between_vaults() {
    let (_d1, _p1, a) = new_vault();
    let (_d2, _p2, b) = new_vault();
    assert_ne!(*a.audit_key(), *b.audit_key());
}

#[test]
fn nothing_prints_a_secret() {
    let (dir, path, vault) = new_vault();
    let pass = std::str::from_utf8(PASS).unwrap();
    let mut texts = vec![
        format!("{vault:?}"),
        format!("{:?}", vault.data()),
        format!("{:#?}", vault.data()),
        format!(
            "{:?}",
            vault.data().environments["dev"].variables["API_TOKEN"]
        ),
        format!("{:?}", SecretValue::new(SECRET.into())),
    ];
    assert_eq!(texts[4], "[secret]");
    let good = std::fs::read(&path).unwrap();
    let mut errors = vec![
        Vault::open(&path, b"wrong").unwrap_err(),
        Vault::create(&path, PASS, PARAMS).unwrap_err(),
        Vault::open(&dir.path().join("missing"), PASS).unwrap_err(),
    ];
    let mut flipped = good.clone();
    flipped[CIPHERTEXT] ^= 1;
    errors.push(open_bytes(dir.path(), &flipped).unwrap_err());
    fix_checksum(&mut flipped);
    errors.push(open_bytes(dir.path(), &flipped).unwrap_err());
    for err in &errors {
        texts.push(format!("{err}"));
        texts.push(format!("{err:?}"));
    }
    for text in &texts {
        assert!(!text.contains(SECRET), "{text}");
        assert!(!text.contains(pass), "{text}");
    }
}

#[test]
fn payload_defaults_and_names() {
    let data: VaultData = serde_json::from_str(
        r#"{"environments":{"x":{"description":"","variables":{},"created_at":"2026-01-01T00:00:00Z"}}}"#,
    )
    .unwrap();
    assert!(data.audit_checkpoint.is_none());
    let policy = &data.environments["x"].policy;
    assert_eq!(policy.factor, FactorKind::Passphrase);
    assert_eq!(policy.max_ttl_seconds, 28_800);
    assert!(!policy.hide_names);
    let p: Policy = serde_json::from_str(r#"{"factor":"totp"}"#).unwrap();
    assert_eq!(p.factor, FactorKind::Totp);
    assert_eq!(
        serde_json::to_string(&Source::Provider).unwrap(),
        r#""provider""#
    );
    assert_eq!(
        serde_json::to_string(&FactorKind::Confirm).unwrap(),
        r#""confirm""#
    );

    for ok in ["A", "_", "API_TOKEN", "a1", "_9", &"X".repeat(128)] {
        assert!(is_valid_name(ok), "{ok}");
    }
    for bad in ["", "1A", "A-B", "A B", "É", "A=B", "$A", &"X".repeat(129)] {
        assert!(!is_valid_name(bad), "{bad}");
    }
    for ok in ["dev", "my-app.staging", "2026", "_x"] {
        assert!(is_valid_environment_name(ok), "{ok}");
    }
    for bad in ["", ".", "..", "-x", "a/b", "a b", &"e".repeat(65)] {
        assert!(!is_valid_environment_name(bad), "{bad}");
    }
    // A new environment's name: letters first, no dots (existing names may have them).
    for ok in ["dev", "my-app", "_x", "a1", &"e".repeat(64)] {
        assert!(is_valid_new_environment_name(ok), "{ok}");
    }
    for bad in [
        "",
        "2026",
        "my-app.staging",
        "-x",
        "a b",
        "é",
        &"e".repeat(65),
    ] {
        assert!(!is_valid_new_environment_name(bad), "{bad}");
    }
}

#[test]
fn name_aliases_are_stable_keyed_and_valid_names() {
    let (_dir, path, vault) = new_vault();
    let alias = vault.name_alias("dev", "API_TOKEN");
    assert!(alias.starts_with("HIDDEN_"), "{alias}");
    assert_eq!(alias.len(), "HIDDEN_".len() + 12);
    assert!(is_valid_name(&alias), "{alias} is a valid variable name");
    assert!(
        !alias.contains("API"),
        "the alias reveals nothing of the name"
    );
    // Stable across reopening (agents keep their aliases between sessions).
    let reopened = Vault::open(&path, PASS).unwrap();
    assert_eq!(reopened.name_alias("dev", "API_TOKEN"), alias);
    // Different per name and per environment, and the separator keeps (env, name) unambiguous.
    assert_ne!(vault.name_alias("dev", "LATER"), alias);
    assert_ne!(vault.name_alias("prod", "API_TOKEN"), alias);
    assert_ne!(
        vault.name_alias("de", "vAPI_TOKEN"),
        vault.name_alias("dev", "API_TOKEN")
    );
    // Keyed by the vault's data key: another vault gives another alias for the same name.
    let (_dir2, _path2, other) = new_vault();
    assert_ne!(other.name_alias("dev", "API_TOKEN"), alias);
}

#[test]
fn the_factor_key_from_the_file_is_the_open_vaults_and_needs_the_passphrase() {
    let (dir, path, vault) = new_vault();
    let from_file = keyveil_vault::factor_key_from_file(&path, PASS).unwrap();
    assert_eq!(*from_file, *vault.factor_key());
    // Not the audit key, nor the alias key: separate derivations of one data key.
    assert_ne!(*vault.factor_key(), *vault.audit_key());
    assert!(matches!(
        keyveil_vault::factor_key_from_file(&path, b"not the passphrase"),
        Err(VaultError::WrongPassphrase)
    ));
    // Another vault with the same passphrase has another key.
    let other = Vault::create(&dir.path().join("other"), PASS, PARAMS).unwrap();
    assert_ne!(*other.factor_key(), *vault.factor_key());
    // A passphrase change keeps the key (the data key stays).
    let mut vault = vault;
    vault
        .change_passphrase(b"a new passphrase", PARAMS)
        .unwrap();
    assert_eq!(
        *keyveil_vault::factor_key_from_file(&path, b"a new passphrase").unwrap(),
        *from_file
    );
}
