#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;

const GOOD: &str = r#"# the team's environments
version = 1

[environments.dev]
description = "local development"

[environments.dev.variables.STRIPE_KEY]
description = "Stripe test key"

[environments.dev.variables.DATABASE_URL]
source = "openbao-kv"
address = "https://bao.example:8200"
path = "team/app"
key = "DATABASE_URL"

[environments.ci.variables.PG]
source = "postgres"
template = "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{role}}"
"#;

#[test]
fn parses_environments_variables_and_sources_in_file_order() {
    let m = parse(GOOD).unwrap();
    let names: Vec<_> = m.environments.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dev", "ci"]);
    let dev = &m.environments[0];
    assert_eq!(dev.description, "local development");
    assert_eq!(dev.variables[0].name, "STRIPE_KEY");
    assert!(dev.variables[0].is_local());
    assert_eq!(dev.variables[1].source, "openbao-kv");
    assert_eq!(dev.variables[1].options["path"], "team/app");
    let pg = &m.environments[1].variables[0];
    assert_eq!(pg.source, "postgres");
    // The plan shows where a source points, and a template by its size only.
    let shown = pg.shown_source();
    assert!(shown.starts_with("postgres template=("), "{shown}");
    assert!(!shown.contains("GRANT"), "{shown}");
}

#[test]
fn bad_toml_gives_its_line_and_a_hint() {
    let text = "[environments.dev]\n\n[environments.dev.variables.A]\nsource = \"local\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(e.message.starts_with("not valid TOML"), "{e}");
    assert!(e.to_string().contains("\nhint: "), "{e}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    for (text, line, what) in [
        ("versoin = 1\n[environments.dev]\n", 1, "versoin"),
        ("[environments.dev]\ndescripton = \"x\"\n", 2, "descripton"),
        (
            "[environments.dev.variables.A]\nsource = \"local\"\naddress = \"http://x\"\n",
            3,
            "address",
        ),
        (
            "[environments.dev.variables.A]\nsource = \"openbao-kv\"\naddress = \"https://b\"\npath = \"p\"\ntemplate = \"t\"\n",
            5,
            "template",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text}: {e}");
        assert!(e.message.contains(what), "{text}: {e}");
        assert!(!e.hint.is_empty());
    }
}

#[test]
fn wrong_sources_names_and_missing_keys_are_refused() {
    let cases = [
        (
            "[environments.dev.variables.A]\nsource = \"vault\"\n",
            "unknown source",
        ),
        (
            "[environments.dev.variables.A]\nsource = \"openbao-kv\"\naddress = \"https://b\"\n",
            "no path",
        ),
        ("[environments.dev.variables.BASH_ENV]\n", "load code"),
        ("[environments.dev.variables.1A]\n", "invalid variable name"),
        ("[environments.\"9x\"]\n", "invalid environment name"),
        (
            "[environments.dev.variables.A]\nsource = 3\n",
            "must be a string",
        ),
        (
            "version = 2\n[environments.dev]\n",
            "unsupported manifest version",
        ),
        ("# nothing\n", "declares no environment"),
    ];
    for (text, want) in cases {
        let e = parse(text).unwrap_err();
        assert!(e.message.contains(want), "{text}: {e}");
    }
}

#[test]
fn digest_is_of_the_bytes() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_ne!(
        sha256_hex(GOOD.as_bytes()),
        sha256_hex(GOOD.replace("dev", "dev2").as_bytes())
    );
}
