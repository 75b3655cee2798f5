//! Host-bound injection (`docs/egress.md`): a variable the policy binds to hosts reaches a run
//! as a placeholder; the run's own egress proxy swaps the placeholder for the value only in
//! requests to those hosts, over TLS it terminates with a leaf of a CA minted for the run, and
//! verifies the upstream server. The child's environment never holds the value.

mod body;
mod http;
mod intercept;
pub(crate) mod owner;
pub(crate) mod placeholder;
mod proxy;
pub(crate) mod tls;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use keyveil_proto::WriteLeak;
use keyveil_vault::SecretValue;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::Broker;

/// Name of the CA bundle written into the run's private `TMPDIR`.
pub(crate) const BUNDLE_NAME: &str = "keyveil-egress-ca.pem";

/// Variables of the child's environment that point HTTP clients at the proxy.
const PROXY_VARS: &[&str] = &["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"];
/// Variables that common stacks read for the CA bundle they trust (OpenSSL and curl, Node,
/// Python requests, curl, git).
const CA_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "NODE_EXTRA_CA_CERTS",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
];

/// One destination a variable is bound to: a host name (lowercase) or IP address, and a port
/// (443 unless the binding names one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dest {
    /// Host, lowercase, without brackets.
    pub(crate) host: String,
    /// Port.
    pub(crate) port: u16,
}

impl Dest {
    /// Parses `host` or `host:port` (`[v6]:port`); refuses schemes, paths, user info and
    /// wildcards. The error says what is wrong.
    pub(crate) fn parse(s: &str) -> Result<Dest, String> {
        let s = s.trim().to_ascii_lowercase();
        if s.is_empty() || s.contains("://") || s.contains(['/', '@', '*', '?', '#', ' ']) {
            return Err(format!(
                "{s:?} is not a host: give a name such as api.example.com, optionally with :PORT"
            ));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed ["))?;
            (h.to_owned(), p.strip_prefix(':'))
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_owned(), Some(p)),
                _ => (s.clone(), None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: bad port"))?,
            None => 443,
        };
        if host.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        Ok(Dest { host, port })
    }

    /// `host` or `host:port` when the port is not 443.
    pub(crate) fn shown(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 443 {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// A bound variable of one run.
pub(crate) struct Binding {
    /// The name clients see (an alias where the policy hides names).
    pub(crate) shown: String,
    /// The placeholder the child got.
    pub(crate) placeholder: String,
    /// The value.
    pub(crate) value: Zeroizing<Vec<u8>>,
    /// Where the value may go.
    pub(crate) dests: Vec<Dest>,
    /// Where in a request, besides headers, the value is swapped in (the placeholder anywhere
    /// else is blocked and reported).
    pub(crate) bound_in: keyveil_vault::BoundIn,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("shown", &self.shown)
            .field("dests", &self.dests)
            .finish_non_exhaustive()
    }
}

/// The state a run's proxy shares with its sessions.
pub(crate) struct Shared {
    pub(crate) run_id: String,
    pub(crate) bindings: Vec<Binding>,
    pub(crate) ca: tls::RunCa,
    pub(crate) upstream: Arc<rustls::ClientConfig>,
    pub(crate) token: CancellationToken,
    /// The run's reaper (0 until it is spawned: every connection is refused until then).
    pub(crate) root_pid: Arc<AtomicI32>,
    pub(crate) local: SocketAddr,
    pub(crate) leaks: Arc<Mutex<Vec<WriteLeak>>>,
    /// The run's audit queue, written in order by [`audit_writer`]; closed when the last
    /// session and the accept loop are gone.
    audit_tx: tokio::sync::mpsc::UnboundedSender<(String, serde_json::Value)>,
    /// Connections refused so far (processes outside the run).
    pub(crate) refused: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// Whether any binding of the run sends a value to `host:port` (then `CONNECT` to it is
    /// intercepted).
    pub(crate) fn intercepts(&self, host: &str, port: u16) -> bool {
        self.bindings
            .iter()
            .any(|b| b.dests.iter().any(|d| d.host == host && d.port == port))
    }

    /// Queues an audit entry for the run's writer ([`audit_writer`]): never blocks a session
    /// on the broker's lock or the log's sync. Entries are written in the order they are
    /// queued, and all of them before the run's end entry ([`RunEgress::close`]).
    pub(crate) fn audit(&self, event: &str, detail: serde_json::Value) {
        // The receiver lives until every sender is gone: this cannot fail while `self` exists.
        let _ = self.audit_tx.send((event.to_owned(), detail));
    }

    /// Reports a placeholder sent where its variable is not bound (once per variable and
    /// destination) and audits it: the variable and the destination, never a value.
    pub(crate) fn report_blocked(&self, variable: &str, dest: &str, why: &str) {
        {
            let mut l = self.leaks.lock().unwrap_or_else(|e| e.into_inner());
            if !l.iter().any(|x| x.variable == variable && x.path == dest) {
                l.push(WriteLeak {
                    variable: variable.to_owned(),
                    path: dest.to_owned(),
                    form: "egress".to_owned(),
                    action: "blocked".to_owned(),
                });
            }
        }
        self.audit(
            "egress_blocked",
            serde_json::json!({"run_id": self.run_id, "variable": variable, "destination": dest, "why": why}),
        );
    }
}

/// A run's proxy, alive until [`RunEgress::close`] or drop (the run's end) or its grant's end
/// (revoke, lock): then every session it holds is closed at once.
///
/// It holds no reference to the sessions' shared state: the run's audit queue closes when the
/// last session is gone, which is how [`RunEgress::close`] knows every entry is written.
pub(crate) struct RunEgress {
    run_id: String,
    local: SocketAddr,
    token: CancellationToken,
    root_pid: Arc<AtomicI32>,
    leaks: Arc<Mutex<Vec<WriteLeak>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RunEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunEgress")
            .field("run_id", &self.run_id)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// How long [`RunEgress::close`] waits for the sessions to end and their audit entries to be
/// written (sessions end as soon as they are next polled; this bounds a stuck disk).
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl RunEgress {
    /// Tells the proxy which process tree is the run's (its reaper's pid).
    pub(crate) fn set_root(&self, pid: i32) {
        self.root_pid.store(pid, Ordering::SeqCst);
    }

    /// Closes the proxy and every session now, then waits until every audit entry the run's
    /// sessions queued is written (at most [`CLOSE_WAIT`]; past it the rest is still written,
    /// later, and the broker log says so), so the run's end entry comes after them.
    pub(crate) async fn close(&self) {
        self.token.cancel();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer
            && tokio::time::timeout(CLOSE_WAIT, w).await.is_err()
        {
            tracing::error!(
                run_id = %self.run_id,
                "the egress proxy's audit entries were not all written before the run's end"
            );
        }
    }

    /// The placeholders sent where they were not bound, by variable and destination.
    pub(crate) fn take_leaks(&self) -> Vec<WriteLeak> {
        std::mem::take(&mut *self.leaks.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Drop for RunEgress {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Most entries written with one sync.
const AUDIT_BATCH: usize = 512;

/// The run's audit writer, on a blocking thread: takes what is queued (up to
/// [`AUDIT_BATCH`] at a time), in order, and writes it with one write and one sync under the
/// broker's lock (`Inner::audit_batch`). Entries that arrive during a sync go into the next
/// batch, so a busy run pays one sync per batch rather than per request. Ends when every
/// sender is gone (the accept loop and every session of the run), after writing everything.
fn audit_writer(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    broker: Weak<Broker>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if let Some(b) = broker.upgrade() {
            b.lock().audit_batch(batch);
        }
    }
}

/// The bound variables of a run, as the policy has them.
pub(crate) type Bound = Vec<BoundVar>;

/// One host-bound variable of a run, as the policy binds it.
pub(crate) struct BoundVar {
    /// Real name.
    pub(crate) name: String,
    /// The name clients see (an alias where names are hidden).
    pub(crate) shown: String,
    /// The value.
    pub(crate) value: SecretValue,
    /// Where the value may go.
    pub(crate) dests: Vec<Dest>,
    /// Where in a request, besides headers, the value is swapped in.
    pub(crate) bound_in: keyveil_vault::BoundIn,
}

/// Starts a run's proxy on 127.0.0.1 (a port the kernel picks) for `bound`, with a CA minted
/// for the run, and writes the CA bundle (system roots + the run's CA) to `tmp_dir`. Returns
/// the proxy, the placeholders by real name (the child gets them in place of the values) and
/// the variables that point the child's HTTP clients at the proxy. Errors are worded for the
/// run's error reply; nothing is started then.
pub(crate) async fn start(
    broker: &Arc<Broker>,
    run_id: &str,
    bound: Bound,
    extra_roots: Option<&str>,
    grant_cancel: &CancellationToken,
    tmp_dir: &std::path::Path,
) -> Result<(RunEgress, Vec<(String, String)>, Vec<(String, String)>), String> {
    let (system, system_pem) = tls::system_roots();
    let upstream = tls::upstream_config(&system, extra_roots)?;
    let ca = tls::RunCa::new(run_id)?;
    let bundle = tmp_dir.join(BUNDLE_NAME);
    let mut text = system_pem;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&ca.cert_pem);
    write_private(&bundle, text.as_bytes())
        .map_err(|e| format!("cannot write the run's CA bundle: {e}"))?;
    let mut placeholders = Vec::new();
    let mut bindings = Vec::new();
    for BoundVar {
        name,
        shown,
        value,
        dests,
        bound_in,
    } in bound
    {
        let p = placeholder::placeholder(value.expose())
            .map_err(|e| format!("the OS random source failed: {e}"))?;
        placeholders.push((name, p.clone()));
        bindings.push(Binding {
            shown,
            placeholder: p,
            value: Zeroizing::new(value.expose().as_bytes().to_vec()),
            dests,
            bound_in,
        });
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot open the run's egress proxy: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot open the run's egress proxy: {e}"))?;
    let (audit_tx, audit_rx) = tokio::sync::mpsc::unbounded_channel();
    let weak = Arc::downgrade(broker);
    let writer = tokio::task::spawn_blocking(move || audit_writer(audit_rx, weak));
    let token = grant_cancel.child_token();
    let root_pid = Arc::new(AtomicI32::new(0));
    let leaks = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared {
        run_id: run_id.to_owned(),
        bindings,
        ca,
        upstream,
        token: token.clone(),
        root_pid: root_pid.clone(),
        local,
        leaks: leaks.clone(),
        audit_tx,
        refused: std::sync::atomic::AtomicU64::new(0),
    });
    tokio::spawn(proxy::serve(listener, shared));
    let url = format!("http://{local}");
    let shown_bundle = bundle.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = PROXY_VARS
        .iter()
        .map(|k| ((*k).to_owned(), url.clone()))
        .collect();
    env.extend(
        CA_VARS
            .iter()
            .map(|k| ((*k).to_owned(), shown_bundle.clone())),
    );
    // Node 22.21+ and 24.5+ send `fetch` and `http(s)` through `HTTPS_PROXY` only when told
    // to; older Nodes ignore the variable (and reach the API with a worthless placeholder).
    env.push(("NODE_USE_ENV_PROXY".to_owned(), "1".to_owned()));
    // Loopback stays direct for everything but the proxy itself (clients never proxy it).
    let egress = RunEgress {
        run_id: run_id.to_owned(),
        local,
        token,
        root_pid,
        leaks,
        writer: Mutex::new(Some(writer)),
    };
    Ok((egress, placeholders, env))
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

/// Sets or replaces `vars` in `env`.
pub(crate) fn set_env(env: &mut Vec<(String, String)>, vars: Vec<(String, String)>) {
    for (k, v) in vars {
        env.retain(|(o, _)| *o != k);
        env.push((k, v));
    }
    // A requester's NO_PROXY would let a client go around the proxy: harmless (it holds only
    // placeholders) but the run would then fail to reach its API; keep the child's view simple.
    env.retain(|(k, _)| k != "NO_PROXY" && k != "no_proxy");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn destinations_parse_strictly() {
        assert_eq!(
            Dest::parse("API.Example.com").unwrap(),
            Dest {
                host: "api.example.com".into(),
                port: 443
            }
        );
        assert_eq!(Dest::parse("localhost:8443").unwrap().port, 8443);
        assert_eq!(Dest::parse("[::1]:8443").unwrap().host, "::1");
        for bad in [
            "https://a.com",
            "a.com/x",
            "*.a.com",
            "u@a.com",
            "a.com:0",
            "a.com:x",
            "",
        ] {
            assert!(Dest::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Dest::parse("a.com:8443").unwrap().shown(), "a.com:8443");
        assert_eq!(Dest::parse("a.com").unwrap().shown(), "a.com");
    }
}
