use super::pins::lexical;
use super::*;
use crate::loaders::is_injection_var;

#[test]
fn injection_variables_are_recognised() {
    for n in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "DYLD_INSERT_LIBRARIES",
        "BASH_ENV",
        "ENV",
        "NODE_OPTIONS",
        "PYTHONPATH",
        "GIT_CONFIG_COUNT",
        "GIT_SSH_COMMAND",
        "PERL5OPT",
        "JAVA_TOOL_OPTIONS",
        "BASH_FUNC_x%%",
        // The red-team list: each made an approved `python3 app.py` leak a value.
        "PYTHONWARNINGS",
        "PYTHONBREAKPOINT",
        "BROWSER",
        "GIT_EXTERNAL_DIFF",
        "GIT_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER",
        "RUSTFLAGS",
        "GOFLAGS",
        "MAKEFLAGS",
        "HTTPS_PROXY",
        "https_proxy",
        "NODE_EXTRA_CA_CERTS",
        "SSL_CERT_FILE",
        "SHELL",
        "TMPDIR",
    ] {
        assert!(is_injection_var(n), "{n}");
    }
    for n in [
        "API_TOKEN",
        "CI",
        "NO_COLOR",
        "RUST_LOG",
        "GH_TOKEN",
        "GITHUB_TOKEN",
        "CARGO_REGISTRY_TOKEN",
        "PYPI_TOKEN",
    ] {
        assert!(!is_injection_var(n), "{n}");
    }
    assert!(check_pass_env(&["LD_PRELOAD".into()]).is_err());
    assert_eq!(
        check_pass_env(&["B".into(), "A".into(), "B".into()])
            .map_err(|e| e.message)
            .ok(),
        Some(vec!["A".to_string(), "B".to_string()])
    );
}

/// A peer counted under `origin`: this test process (a peer the broker can place: one it
/// cannot is refused, `strings_masked`).
fn peer(origin: &str) -> Peer {
    Peer {
        origin: origin.to_owned(),
        ..Peer::of_pid(Some(std::process::id()))
    }
}

fn claimed(name: &str) -> keyveil_proto::ClientInfo {
    keyveil_proto::ClientInfo {
        kind: "mcp".into(),
        name: name.into(),
        version: "1".into(),
        pid: 1,
    }
}

fn pending(id: u64, name: &str, origin: &str) -> AccessReq {
    let mut a = ask(name, origin);
    a.argv = Some(vec!["echo".into(), id.to_string()]);
    let facts = RequestFacts {
        reason: None,
        ttl_seconds: None,
        executable: None,
        inputs: vec![],
        risk: vec![],
        chosen_values: vec![],
        new_variables: vec![],
        contradictions: vec![],
        masked: true,
    };
    AccessReq::new(id, &a, facts)
}

fn ask(name: &str, origin: &str) -> Ask {
    Ask {
        client: claimed(name),
        environment: "e".into(),
        variables: vec!["V".into()],
        argv: Some(vec!["echo".into(), "new".into()]),
        cwd: "/".into(),
        pass_env: vec![],
        pass_values: Default::default(),
        stdin: None,
        peer: peer(origin),
        mount: None,
        linked: Vec::new(),
    }
}

fn refusal(inner: &mut Inner, a: &Ask) -> String {
    match find_or_create_request(inner, a, Pins::default(), None, None) {
        Err(e) => e.message,
        Ok(_) => String::new(),
    }
}

#[test]
fn open_requests_are_capped_per_real_origin_and_in_all() {
    // Three open from one origin under three claimed names: a fourth name is refused.
    let mut inner = Inner::default();
    for i in 0..3 {
        inner
            .requests_mut()
            .insert(pending(i, &format!("n{i}"), "/usr/bin/python3"));
    }
    let m = refusal(&mut inner, &ask("another-name", "/usr/bin/python3"));
    assert!(m.contains("3 requests of this client"), "{m}");
    // Another origin is not refused by that count (it gets as far as the locked vault).
    let m = refusal(&mut inner, &ask("n0", "/usr/bin/node"));
    assert!(!m.contains("no more are queued"), "{m}");
    // Across origins (copies of an executable look like new ones): the global cap.
    let mut inner = Inner::default();
    for i in 0..MAX_OPEN_REQUESTS as u64 {
        inner
            .requests_mut()
            .insert(pending(i, "same", &format!("/tmp/copy{i}")));
    }
    let m = refusal(&mut inner, &ask("same", "/tmp/copy-new"));
    assert!(
        m.contains(&format!("{MAX_OPEN_REQUESTS} requests already wait")),
        "{m}"
    );
}

#[test]
fn lexical_cwd_normalises_without_resolving() {
    assert_eq!(lexical("/a/b/../c/./d"), Path::new("/a/c/d"));
}

#[test]
fn a_request_from_a_peer_the_broker_cannot_place_is_refused() {
    let mut inner = Inner::default();
    let mut a = ask("client", "/usr/bin/agent");
    // No pid (another PID namespace): refused before anything is stored.
    a.peer = Peer::of_pid(None);
    assert!(refusal(&mut inner, &a).contains("cannot tell which process"));
    // A pid whose process is not the one that connected (another start time): refused.
    let mut reused = Peer::of_pid(Some(std::process::id()));
    reused.start = reused.start.map(|s| s + 1);
    a.peer = reused;
    assert!(refusal(&mut inner, &a).contains("cannot tell which process"));
    assert!(inner.requests().iter().next().is_none());
    // This process, which descends from no run: its strings are its own, shown as given.
    a.peer = peer("/usr/bin/agent");
    assert_eq!(
        inner.peer_holds_values(&a.peer),
        crate::broker::state::Holds::No
    );
}
