#![allow(clippy::unwrap_used)]
use jiff::Timestamp;
use keyveil_proto::ClientInfo;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use super::factor::*;
use super::grants::*;
use super::requests::*;

pub(super) fn client(name: &str) -> ClientInfo {
    ClientInfo {
        kind: "mcp".into(),
        name: name.into(),
        version: "1".into(),
        pid: 1,
    }
}

fn grant(argv: Option<Vec<String>>) -> Grant {
    let now = Timestamp::now();
    Grant {
        id: "g-1".into(),
        request_id: 1,
        client: "mcp:host".into(),
        environment: "demo".into(),
        variables: vec!["A".into(), "B".into()],
        argv,
        prefix: false,
        cwd: "/w".into(),
        subdirs: false,
        pass_env: vec![],
        executable: None,
        inputs: vec![],
        pass_values: Default::default(),
        chosen_vars: Default::default(),
        mount_flags: Vec::new(),
        mount_anchor: None,
        stdin_digest: None,
        created_at: now,
        expires_at: now
            .saturating_add(jiff::SignedDuration::from_secs(60))
            .unwrap(),
        uses_left: Some(1),
        runs: 0,
        revoked: false,
        cancel: CancellationToken::new(),
        masked: true,
    }
}

fn ask(client: &str, env: &str, vars: &[&str], argv: &[&str], cwd: &str) -> Ask {
    Ask {
        client: super::tests::client(client),
        environment: env.into(),
        variables: vars.iter().map(|s| s.to_string()).collect(),
        argv: Some(argv.iter().map(|s| s.to_string()).collect()),
        cwd: cwd.into(),
        pass_env: vec![],
        pass_values: Default::default(),
        stdin: None,
        peer: crate::broker::peer::Peer::of_pid(None),
        mount: None,
        linked: Vec::new(),
    }
}

#[test]
fn a_grant_covers_only_its_scope() {
    let now = Timestamp::now();
    let g = grant(Some(vec!["echo".to_string(), "hi".to_string()]));
    assert!(g.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), now));
    // another argv (a shell around it), another cwd, env, client, variable
    assert!(!g.covers(
        &ask("host", "demo", &["A"], &["sh", "-c", "env"], "/w"),
        now
    ));
    assert!(!g.covers(
        &ask("host", "demo", &["A"], &["echo", "hi", "x"], "/w"),
        now
    ));
    assert!(!g.covers(
        &ask("host", "demo", &["A"], &["echo", "hi\u{200b}"], "/w"),
        now
    ));
    assert!(!g.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w/sub"), now));
    assert!(!g.covers(&ask("host", "prod", &["A"], &["echo", "hi"], "/w"), now));
    assert!(!g.covers(&ask("other", "demo", &["A"], &["echo", "hi"], "/w"), now));
    assert!(!g.covers(&ask("host", "demo", &["C"], &["echo", "hi"], "/w"), now));
    let mut p = ask("host", "demo", &["A"], &["echo", "hi"], "/w");
    p.pass_env = vec!["EXTRA".into()];
    assert!(
        !g.covers(&p, now),
        "pass-through names are part of the scope"
    );
    let mut used = g.clone();
    used.uses_left = Some(0);
    assert!(!used.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), now));
    let mut revoked = g.clone();
    revoked.revoked = true;
    assert!(!revoked.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), now));
    let later = now
        .saturating_add(jiff::SignedDuration::from_secs(61))
        .unwrap();
    assert!(!g.covers(&ask("host", "demo", &["A"], &["echo", "hi"], "/w"), later));
    assert!(grant(None).covers(&ask("host", "demo", &["A"], &["anything"], "/w"), now));
}

#[test]
fn prefix_grants_match_tokens_and_refuse_code_options() {
    let mut g = grant(Some(vec!["git".to_string(), "fetch".to_string()]));
    g.prefix = true;
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(g.argv_covers(&argv(&["git", "fetch"])));
    assert!(g.argv_covers(&argv(&["git", "fetch", "origin"])));
    assert!(!g.argv_covers(&argv(&["git", "fetch", "--upload-pack=touch /tmp/x"])));
    assert!(!g.argv_covers(&argv(&["git", "fetchx"])));
    assert!(!g.argv_covers(&argv(&["sh", "-c", "git fetch && curl x"])));
    let mut s = grant(Some(vec!["ssh".to_string(), "host".to_string()]));
    s.prefix = true;
    assert!(!s.argv_covers(&argv(&["ssh", "host", "-oProxyCommand=sh"])));
}

#[test]
fn subdir_grants_compare_canonical_paths() {
    let mut g = grant(None);
    g.subdirs = true;
    assert!(g.cwd_covers("/w/sub/deeper"));
    assert!(!g.cwd_covers("/wx"));
    assert!(!g.cwd_covers("/outside"));
}

#[test]
fn factor_guard_locks_after_five_failures_and_doubles() {
    let mut f = FactorGuard::default();
    let t0 = Instant::now();
    for _ in 0..4 {
        assert!(f.fail(t0).is_none());
        assert!(f.check(t0).is_ok());
    }
    assert_eq!(f.fail(t0), Some(FACTOR_LOCKOUT));
    assert!(f.check(t0).is_err());
    assert!(
        f.check(t0 + FACTOR_LOCKOUT + Duration::from_secs(1))
            .is_ok()
    );
    for _ in 0..4 {
        f.fail(t0);
    }
    assert_eq!(f.fail(t0), Some(FACTOR_LOCKOUT * 2));
}

#[test]
fn the_lockout_stops_doubling_and_typed_passphrases_only_wait() {
    let mut f = FactorGuard::default();
    let t0 = Instant::now();
    let mut longest = Duration::ZERO;
    for _ in 0..100 {
        if let Some(d) = f.fail(t0) {
            longest = longest.max(d);
        }
    }
    assert_eq!(longest, MAX_FACTOR_LOCKOUT);
    // While locked, a wrong typed passphrase waits at most MAX_TYPED_DELAY.
    assert_eq!(f.typed_delay(t0), MAX_TYPED_DELAY);
    assert_eq!(
        f.typed_delay(t0 + MAX_FACTOR_LOCKOUT - Duration::from_secs(2)),
        Duration::from_secs(2)
    );
    f.succeed();
    assert_eq!(f.typed_delay(t0), Duration::ZERO);
}

#[test]
fn a_mount_grant_covers_only_readers_whose_chain_holds_its_anchor() {
    let anchor = MountAnchor {
        pid: 20,
        start: 200,
        name: "bash".into(),
    };
    let mut g = grant(Some(vec!["sh".into()]));
    g.client = "mount:/w/.env".into();
    let read = |lineage: Vec<(u32, u64)>| {
        let mut a = ask("/w/.env", "demo", &["A"], &["sh"], "/w");
        a.client.kind = "mount".into();
        a.mount = Some(MountAsk {
            path: "/w/.env".into(),
            flags: Vec::new(),
            anchor: None,
            lineage,
        });
        a
    };
    let now = Timestamp::now();
    let under = read(vec![(50, 500), (20, 200), (1, 10)]);
    let reparented = read(vec![(50, 500), (1, 10)]);
    let reused = read(vec![(50, 500), (20, 201), (1, 10)]);
    // No anchor: no reader is covered.
    assert!(!g.covers(&under, now));
    assert_eq!(
        g.mount_scope().as_deref(),
        Some(
            "no later reader without a card (the approved reader's parent was init or a subreaper: nothing to bind to)"
        )
    );
    g.mount_anchor = Some(anchor);
    assert!(g.covers(&under, now));
    assert!(
        !g.covers(&reparented, now),
        "reparented away from the anchor"
    );
    assert!(!g.covers(&reused, now), "a reused pid is not the anchor");
    assert_eq!(
        g.mount_scope().as_deref(),
        Some("readers started under bash (pid 20)")
    );
}
