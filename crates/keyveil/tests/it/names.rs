//! Hidden variable names (`policy set ENV hide-names on`): clients see and use aliases only;
//! the real names reach granted children and, with the factor, `env show --reveal-names`.

use crate::harness::*;

/// A fake value (never a real credential).
const VALUE: &str = "kv_fake_Hn7tQ2wE9rY4uI1oP6aS";
/// The names being protected: they say which services the user has.
const REAL: &str = "STRIPE_LIVE_SECRET";
const OTHER: &str = "PAYROLL_DB_PASSWORD";

/// `policy set demo hide-names SETTING` with `passphrase` on stdin.
fn set_hiding(h: &Home, setting: &str, passphrase: &str) -> std::process::Output {
    h.run_stdin(
        &[
            "policy",
            "set",
            "demo",
            "hide-names",
            setting,
            "--passphrase-stdin",
        ],
        &format!("{passphrase}\n"),
    )
}

fn hide(h: &Home) {
    let o = set_hiding(h, "on", PASS);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

/// The alias of the first variable `env show demo` lists.
fn first_alias(h: &Home) -> String {
    h.json(&["env", "show", "demo", "--json"])["variables"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Everything a client can read about `demo` without the factor.
fn client_view(h: &Home) -> String {
    let mut all = String::new();
    for args in [
        vec!["env", "list", "--json"],
        vec!["env", "show", "demo", "--json"],
        vec!["env", "show", "demo"],
        vec!["requests", "--json"],
        vec!["grants", "--json"],
        vec!["audit", "--json"],
        vec!["policy", "show", "demo", "--json"],
    ] {
        let o = h.run(&args);
        all.push_str(&text(&o.stdout));
        all.push_str(&text(&o.stderr));
    }
    all
}

#[test]
fn hidden_names_reach_clients_only_as_aliases() {
    let h = Home::new();
    h.set("demo", REAL, VALUE);
    h.set("demo", OTHER, "kv_fake_other_Zx8cV3bN6mL1kJ4h");
    // Before: names are visible (the default).
    assert!(client_view(&h).contains(REAL));
    hide(&h);
    let audit_before = h.audit_text().len();

    // Listings show aliases, and the descriptions are blanked.
    let list = h.json(&["env", "show", "demo", "--json"]);
    let names: Vec<String> = list["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(names.iter().all(|n| n.starts_with("HIDDEN_")), "{names:?}");
    assert_eq!(list["policy"]["hide_names"], true);

    // A guessed real name is not understood: no oracle for which names exist.
    let o = h.run(&[
        "run", "--env", "demo", "--only", REAL, "--wait", "0", "--", "true",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let o2 = h.run(&[
        "run",
        "--env",
        "demo",
        "--only",
        "NO_SUCH_NAME",
        "--wait",
        "0",
        "--",
        "true",
    ]);
    assert_eq!(
        err.replace(REAL, "X"),
        text(&o2.stderr).replace("NO_SUCH_NAME", "X"),
        "a real name and a made-up one must get the same answer"
    );

    // The alias works: the child gets the real name, the output marks the alias.
    let alias = h.json(&["env", "show", "demo", "--json"])["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .find(|a| {
            // Which alias is REAL's? Ask with the factor.
            let o = h.run_stdin(
                &[
                    "env",
                    "show",
                    "demo",
                    "--reveal-names",
                    "--json",
                    "--passphrase-stdin",
                ],
                &format!("{PASS}\n"),
            );
            let d: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            d["names"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["alias"] == a.as_str() && n["real_name"] == REAL)
        })
        .expect("the reveal maps an alias to the real name");
    // The script finds the variable under its real name without spelling it (an argv is the
    // agent's own text and is shown as written).
    let script = "v=$(env | sed -n 's/^STRIPE_LIVE_SECRE[T]=//p'); \
                  printf 'got=%s name-ok=%s\\n' \"$v\" \"${v:+yes}\"";
    let child = h.spawn_run(&[
        "run", "--env", "demo", "--only", &alias, "--wait", "30", "--", "sh", "-c", script,
    ]);
    let id = h.wait_request();
    // The pending request, as any client sees it, names the alias only.
    let pending = client_view(&h);
    assert!(pending.contains(&alias), "{pending}");
    // The variable was stored with the factor: not flagged new, and its value is not shown.
    assert!(!pending.contains("new-variable"), "{pending}");
    assert!(!pending.contains("\"chosen_values\":[{"), "{pending}");
    assert!(h.approve(id, &[]).status.success());
    let o = wait_output(child, std::time::Duration::from_secs(30));
    let out = text(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        out.contains("name-ok=yes"),
        "the child got the real name: {out}"
    );
    assert!(out.contains(&format!("got=[REDACTED:{alias}]")), "{out}");

    // Nothing a client can read names the hidden variables or holds the value.
    let view = client_view(&h);
    for secret in [REAL, OTHER, VALUE] {
        assert!(!view.contains(secret), "{secret} reached a client: {view}");
        assert!(!out.contains(secret) && !text(&o.stderr).contains(secret));
    }
    // The audit entries written since the policy change carry aliases.
    let audit = h.audit_text();
    let since = &audit[audit_before..];
    assert!(since.contains(&alias), "{since}");
    assert!(!since.contains(REAL) && !since.contains(OTHER), "{since}");
    assert!(!audit.contains(VALUE));
    let o = h.run(&["audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
}

#[test]
fn revealing_names_needs_the_factor() {
    let h = Home::new();
    h.set("demo", REAL, VALUE);
    hide(&h);
    let o = h.run_stdin(
        &[
            "env",
            "show",
            "demo",
            "--reveal-names",
            "--passphrase-stdin",
        ],
        "a guessed passphrase\n",
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert!(!text(&o.stdout).contains(REAL) && !text(&o.stderr).contains(REAL));
    let o = h.run(&["env", "show", "demo", "--reveal-names", "--totp", "000000"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!text(&o.stdout).contains(REAL));
    // With the passphrase: alias, real name.
    let o = h.run_stdin(
        &[
            "env",
            "show",
            "demo",
            "--reveal-names",
            "--passphrase-stdin",
        ],
        &format!("{PASS}\n"),
    );
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains(REAL) && out.contains("HIDDEN_"), "{out}");
    assert!(!out.contains(VALUE));
    // Turning hiding off is a policy change: it needs the factor too.
    let o = set_hiding(&h, "off", "a guessed passphrase");
    assert_eq!(o.status.code(), Some(3));
    assert!(!client_view(&h).contains(REAL));
}

#[test]
fn the_human_can_still_set_a_hidden_variable_by_alias_or_name() {
    let h = Home::new();
    h.set("demo", REAL, VALUE);
    hide(&h);
    let alias = first_alias(&h);
    // By alias: replaces the same variable (no second one appears). Replacing needs the factor.
    let o = h.run_stdin(
        &["set", "demo", &alias, "--from-stdin", "--passphrase-stdin"],
        &format!("{PASS}\nkv_fake_rotated_Qw3eR6tY9uI2oP5a"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shown = h.json(&["env", "show", "demo", "--json"]);
    assert_eq!(shown["variables"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["variables"][0]["name"], alias.as_str());
    // By real name: the same variable again.
    let o = h.run_stdin(
        &["set", "demo", REAL, "--from-stdin", "--passphrase-stdin"],
        &format!("{PASS}\n{VALUE}"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let shown = h.json(&["env", "show", "demo", "--json"]);
    assert_eq!(shown["variables"].as_array().unwrap().len(), 1, "{shown}");
}

#[test]
fn the_order_of_aliases_says_nothing_about_the_names() {
    let h = Home::new();
    // Six names in alphabetical order: listed in that order, their aliases would betray it
    // (a probe variable's position tells the agent where a real name sorts).
    let names = [
        "AAA_KEY", "BBB_KEY", "CCC_KEY", "DDD_KEY", "EEE_KEY", "FFF_KEY",
    ];
    for n in names {
        h.set("demo", n, "kv_fake_order_Vb8nM2xC5zL7kJ1h");
        let o = h.run_stdin(
            &[
                "policy",
                "set",
                "demo",
                "bind",
                n,
                "api.example.test",
                "--passphrase-stdin",
            ],
            &format!("{PASS}\n"),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    hide(&h);
    // Egress bindings, kept sorted by real name in the vault, are listed in alias order too.
    let policy = h.json(&["policy", "show", "demo", "--json"]);
    let bindings = policy["bindings"]
        .as_array()
        .or_else(|| policy["policy"]["bindings"].as_array())
        .unwrap_or_else(|| panic!("no bindings in {policy}"));
    let bound: Vec<&str> = bindings
        .iter()
        .map(|b| b["variable"].as_str().unwrap())
        .collect();
    let mut bound_sorted = bound.clone();
    bound_sorted.sort_unstable();
    assert_eq!(bound, bound_sorted, "bindings listed in alias order");
    for n in names {
        assert!(!policy.to_string().contains(n), "{n} in {policy}");
    }
    let shown = h.json(&["env", "show", "demo", "--json"]);
    let aliases: Vec<&str> = shown["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut sorted = aliases.clone();
    sorted.sort_unstable();
    assert_eq!(aliases, sorted, "listed in alias order");
    let listed = h.json(&["env", "list", "--json"]);
    let env = listed
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == "demo"))
        .cloned()
        .unwrap_or_else(|| listed["environments"][0].clone());
    let in_list: Vec<&str> = env["variables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(in_list, sorted);
}

#[test]
fn removing_or_linking_a_hidden_variable_never_names_it() {
    let h = Home::new();
    h.set("demo", REAL, VALUE);
    hide(&h);
    let alias = first_alias(&h);
    // The value-entry link for a variable that has a value: refused, by alias.
    let o = h.run(&["set", "demo", &alias, "--web"]);
    let err = text(&o.stderr);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        err.contains("already has a value") && err.contains(&alias),
        "{err}"
    );
    assert!(!err.contains(REAL), "{err}");
    // Removing it by alias (with the factor): reply and audit carry the alias.
    let before = h.audit_text().len();
    let o = h.run_stdin(
        &["unset", "demo", &alias, "--passphrase-stdin"],
        &format!("{PASS}\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let since = h.audit_text()[before..].to_owned();
    assert!(
        since.contains("var_unset") && since.contains(&alias),
        "{since}"
    );
    assert!(
        !since.contains(REAL) && !text(&o.stdout).contains(REAL),
        "{since}"
    );
}

#[test]
fn without_the_factor_a_guessed_name_gets_the_answer_a_made_up_one_gets() {
    let h = Home::new();
    h.set("demo", REAL, VALUE);
    hide(&h);
    let made_up = "NOT_A_VARIABLE_AT_ALL";
    for (args, input) in [
        (vec!["unset", "demo"], ""),
        (vec!["set", "demo"], "kv_fake_guess_Rt5yU8iO2pA4sD7f"),
        (vec!["generate", "demo"], ""),
        (vec!["set", "demo"], ""), // --web below
    ] {
        let web = args[0] == "set" && input.is_empty();
        let answer = |name: &str| {
            let mut a = args.clone();
            a.push(name);
            a.push(if web {
                "--web"
            } else if args[0] == "set" {
                "--from-stdin"
            } else {
                "--json"
            });
            if a.last() == Some(&"--json") {
                a.pop();
            }
            let o = h.run_stdin(&a, input);
            (o.status.code(), text(&o.stderr).replace(name, "NAME"))
        };
        let (guess, other) = (answer(REAL), answer(made_up));
        assert_eq!(
            guess, other,
            "{args:?}: a real name is answered differently"
        );
        assert_ne!(guess.0, Some(0), "{args:?} succeeded without the factor");
    }
    // Nothing changed: the one variable still has its value (a granted run sees it).
    let shown = h.json(&["env", "show", "demo", "--json"]);
    assert_eq!(shown["variables"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["variables"][0]["set"], true);
}
