//! Real `redis-server` processes for the Redis state tests: a standalone server or a 3-master
//! Cluster on free loopback ports, each in its own temporary directory, stopped by PID on drop.
//! The tests start their own servers; a missing `redis-server` fails them (scripts/test.sh
//! installs it), it never skips them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

/// One raw command over RESP (for readiness polls without a client library).
fn raw(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A `redis-server` child process.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// The TLS port ([`RedisServer::start_tls`]), else 0.
    pub tls_port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisServer {
    /// A standalone server without persistence.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// A standalone server with `extra` settings (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            tls_port: 0,
            dir: tempfile::tempdir().unwrap(),
            args: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// A server without persistence that also speaks TLS on [`RedisServer::tls_port`] with
    /// `cert`/`key` (clients are not asked for certificates), with `extra` settings (e.g. ACL
    /// users). Its plaintext port stays open for the readiness poll.
    pub fn start_tls(cert: &Path, key: &Path, extra: &[&str]) -> RedisServer {
        let tls_port = free_port();
        let mut args: Vec<String> = vec![
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            cert.display().to_string(),
            "--tls-key-file".into(),
            key.display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            tls_port,
            dir: tempfile::tempdir().unwrap(),
            args,
        };
        s.spawn();
        s
    }

    /// `rediss://127.0.0.1:TLS_PORT`.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        // NOAUTH: up, and the default user needs a password (an ACL test).
        wait_until(Duration::from_secs(10), || {
            raw(self.port, "PING")
                .is_some_and(|r| r.starts_with("+PONG") || r.starts_with("-NOAUTH"))
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL and wait for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and directory (its AOF/RDB files, if any, reload).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A client of the `redis` crate.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `ok` every 10 ms until it holds, at most `limit`.
pub fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A Redis Cluster of 3 masters, without replicas ([`RedisCluster::start`]) or with one
/// replica each ([`RedisCluster::start_replicated`], for failover).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::start_with_replicas(0)
    }

    /// 3 masters with one replica each: killing a master promotes its replica after
    /// `cluster-node-timeout` (2 s).
    pub fn start_replicated() -> RedisCluster {
        RedisCluster::start_with_replicas(1)
    }

    fn start_with_replicas(replicas: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::start_with(&[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for n in &nodes {
            wait_until(Duration::from_secs(20), || {
                raw(n.port, "CLUSTER INFO").is_some_and(|r| r.contains("cluster_state:ok"))
            });
        }
        if replicas > 0 {
            // Every replica has finished its first sync, so a failover has data to promote.
            for n in &nodes {
                wait_until(Duration::from_secs(20), || {
                    raw(n.port, "INFO replication").is_some_and(|r| {
                        r.contains("role:master") || r.contains("master_link_status:up")
                    })
                });
            }
        }
        RedisCluster { nodes }
    }

    /// The index in [`RedisCluster::nodes`] of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> usize {
        let any = self.nodes.iter().find(|n| n.child.is_some()).unwrap().port;
        let slot: u16 = raw(any, &format!("CLUSTER KEYSLOT {key}"))
            .and_then(|r| r.trim().trim_start_matches(':').parse().ok())
            .unwrap();
        let nodes = raw(any, "CLUSTER NODES").unwrap();
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let owns = f[8..].iter().any(|r| {
                let mut it = r.split('-').map(|x| x.parse::<u16>().unwrap_or(u16::MAX));
                let lo = it.next().unwrap_or(u16::MAX);
                let hi = it.next().unwrap_or(lo);
                (lo..=hi).contains(&slot)
            });
            if owns {
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                return self.nodes.iter().position(|n| n.port == port).unwrap();
            }
        }
        panic!("no master serves slot {slot}:\n{nodes}");
    }

    /// Blocks until every write the master at `i` acknowledged has reached its replica
    /// (`WAIT 1`), then kills it (SIGKILL).
    pub fn sync_and_kill(&mut self, i: usize) {
        let port = self.nodes[i].port;
        let r = raw(port, "WAIT 1 5000").unwrap_or_default();
        assert!(r.starts_with(":1"), "WAIT: {r}");
        self.nodes[i].kill();
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", list.join(","))
    }
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it, written into `dir`:
/// (CA, certificate, key) paths.
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "redis CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("redis.pem"),
        dir.join("redis.key"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A password file (mode 0600) holding `password`.
pub fn password_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}
