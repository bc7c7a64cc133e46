//! The two kinds of connection behind one enum: a standalone server through a
//! `ConnectionManager` (reconnects by itself), or a Cluster through the crate's async cluster
//! connection (follows slot moves and failovers). Both multiplex every caller's commands over
//! one connection per node, so concurrent requests share round trips.
//!
//! Batches are split by cluster slot: `MGET` of many keys is split by the cluster connection
//! itself (one sub-`MGET` per slot, answered in the order asked); writes go as one pipeline per
//! slot, all sent at once (on a standalone server, one pipeline).

use super::access::Credentials;
use crate::serve::config::RedisTarget;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo, Slot};
use ::redis::{
    Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisError, RedisResult, Script,
    TlsCertificates, Value,
};
use std::collections::HashMap;
use std::time::Duration;

/// Keys a scan asks for per round trip, and the most keys one `MGET` or pipeline carries.
pub const CHUNK: usize = 1000;

/// A connection to the state's Redis.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A master node, for scans.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl Conn {
    /// Connects (the first connection is awaited, so an unreachable Redis fails here).
    /// `timeout` bounds each connection attempt and each answer. Over TLS the server's
    /// certificate must chain to `creds.ca_pem` (else the system's roots); the user and password,
    /// when given, authenticate every connection (`AUTH`).
    pub async fn connect(
        target: &RedisTarget,
        timeout: Duration,
        creds: &Credentials,
    ) -> RedisResult<Conn> {
        let urls = target.node_urls();
        let certs = |ca: &Vec<u8>| TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.clone()),
        };
        match target {
            RedisTarget::Standalone { .. } => {
                let info = with_credentials(urls[0].as_str().into_connection_info()?, creds);
                let client = match &creds.ca_pem {
                    Some(ca) => ::redis::Client::build_with_tls(info, certs(ca))?,
                    None => ::redis::Client::open(info)?,
                };
                // Few, quick reconnection attempts: while Redis is down calls fail fast
                // (UNAVAILABLE) instead of queueing behind a long backoff; the next call or the
                // health probe starts a new attempt.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(20))
                    .set_max_delay(Duration::from_millis(200));
                Ok(Conn::Standalone(
                    ConnectionManager::new_with_config(client, config).await?,
                ))
            }
            RedisTarget::Cluster { .. } => {
                let mut builder = ClusterClientBuilder::new(urls)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(200);
                if let Some(u) = &creds.user {
                    builder = builder.username(u);
                }
                if let Some(p) = &creds.password {
                    builder = builder.password(p);
                }
                if let Some(ca) = &creds.ca_pem {
                    builder = builder.certs(certs(ca));
                }
                let client = builder.build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// One command, routed by its key.
    pub async fn query<T: ::redis::FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        match self.clone() {
            Conn::Standalone(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    /// The values of `keys`, in order (`None` for a missing key).
    pub async fn mget(&self, keys: &[String]) -> RedisResult<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK) {
            let mut cmd = ::redis::cmd("MGET");
            for k in chunk {
                cmd.arg(k);
            }
            let values: Vec<Option<Vec<u8>>> = self.query(&cmd).await?;
            if values.len() != chunk.len() {
                return Err(RedisError::from((
                    ErrorKind::Parse,
                    "MGET answered a different number of values",
                )));
            }
            out.extend(values);
        }
        Ok(out)
    }

    /// Runs `cmds` (each a single-key command on the key beside it) pipelined, one pipeline per
    /// slot on a Cluster; each command's own result, in order.
    pub async fn pipelined(
        &self,
        cmds: Vec<(String, Cmd)>,
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        match self {
            Conn::Standalone(c) => {
                let mut out = Vec::with_capacity(cmds.len());
                for chunk in cmds.chunks(CHUNK) {
                    let mut pipe = ::redis::pipe();
                    pipe.ignore_errors();
                    for (_, cmd) in chunk {
                        pipe.add_command(cmd.clone());
                    }
                    let results: Vec<RedisResult<Value>> = pipe.query_async(&mut c.clone()).await?;
                    out.extend(results);
                }
                Ok(out)
            }
            Conn::Cluster(c) => cluster_pipelined(c, cmds).await,
        }
    }

    /// PING.
    pub async fn ping(&self) -> RedisResult<()> {
        let pong: String = self.query(&::redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisError::from((
                ErrorKind::Parse,
                "PING did not answer PONG",
            )))
        }
    }

    /// Loads `script` on every master (after a restart or failover its cache is empty).
    pub async fn load_script(&self, script: &Script) -> RedisResult<()> {
        let mut cmd = ::redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(script_code(script));
        match self.clone() {
            Conn::Standalone(mut c) => cmd.query_async::<Value>(&mut c).await.map(drop),
            Conn::Cluster(mut c) => c
                .route_command(
                    cmd,
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)),
                )
                .await
                .map(drop),
        }
    }

    /// The master nodes to scan (one "node" for a standalone server).
    pub async fn masters(&self) -> RedisResult<Vec<Option<Node>>> {
        let Conn::Cluster(c) = self else {
            return Ok(vec![None]);
        };
        let slots = c
            .clone()
            .route_command(
                ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        let mut nodes: Vec<Option<Node>> = Vec::new();
        let Value::Array(ranges) = slots else {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "CLUSTER SLOTS: not an array",
            )));
        };
        for range in ranges {
            let node = match range {
                Value::Array(parts) => match parts.get(2) {
                    Some(Value::Array(master)) => match (master.first(), master.get(1)) {
                        (Some(Value::BulkString(h)), Some(Value::Int(p))) => Some(Node {
                            host: String::from_utf8_lossy(h).into_owned(),
                            port: u16::try_from(*p).unwrap_or(0),
                        }),
                        _ => None,
                    },
                    _ => None,
                },
                _ => None,
            };
            let node = node.ok_or_else(|| {
                RedisError::from((ErrorKind::Parse, "CLUSTER SLOTS: unexpected entry"))
            })?;
            if !nodes.contains(&Some(node.clone())) {
                nodes.push(Some(node));
            }
        }
        Ok(nodes)
    }

    /// One SCAN step on `node` (`None`: the standalone server): the next cursor and the keys.
    pub async fn scan_step(
        &self,
        node: &Option<Node>,
        cursor: u64,
        pattern: &str,
    ) -> RedisResult<(u64, Vec<String>)> {
        let mut cmd = ::redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(CHUNK);
        match (self.clone(), node) {
            (Conn::Cluster(mut c), Some(n)) => {
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: n.host.clone(),
                            port: n.port,
                        }),
                    )
                    .await?;
                ::redis::from_redis_value(v).map_err(RedisError::from)
            }
            (conn, _) => conn.query(&cmd).await,
        }
    }
}

/// `info` with the user and password of `creds` (when given).
fn with_credentials(info: ConnectionInfo, creds: &Credentials) -> ConnectionInfo {
    let mut redis = info.redis_settings().clone();
    if let Some(u) = &creds.user {
        redis = redis.set_username(u);
    }
    if let Some(p) = &creds.password {
        redis = redis.set_password(p);
    }
    info.set_redis_settings(redis)
}

/// True for Redis refusing the credentials: a failed `AUTH` (`WRONGPASS`, a disabled user), or
/// a command refused for want of one (`NOAUTH`).
pub fn is_auth_error(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// The script's source, for `SCRIPT LOAD` (the crate keeps it private to `Script`).
fn script_code(script: &Script) -> &'static str {
    let _ = script;
    super::CAS_SCRIPT
}

/// One pipeline per slot, all sent at once; results put back in the order of `cmds`.
async fn cluster_pipelined(
    conn: &ClusterConnection,
    cmds: Vec<(String, Cmd)>,
) -> RedisResult<Vec<RedisResult<Value>>> {
    let n = cmds.len();
    let mut groups: HashMap<Slot, Vec<(usize, Cmd)>> = HashMap::new();
    for (i, (key, cmd)) in cmds.into_iter().enumerate() {
        groups
            .entry(Slot::for_key(&key))
            .or_default()
            .push((i, cmd));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (_, group) in groups {
        let mut c = conn.clone();
        tasks.spawn(async move {
            let mut pipe = ::redis::pipe();
            pipe.ignore_errors();
            let idx: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
            for (_, cmd) in group {
                pipe.add_command(cmd);
            }
            let results: RedisResult<Vec<RedisResult<Value>>> = pipe.query_async(&mut c).await;
            (idx, results)
        });
    }
    let mut out: Vec<Option<RedisResult<Value>>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (idx, results) = joined
            .map_err(|e| RedisError::from((ErrorKind::Client, "pipeline task", e.to_string())))?;
        let results = results?;
        if results.len() != idx.len() {
            return Err(RedisError::from((
                ErrorKind::Parse,
                "a pipeline answered a different number of results",
            )));
        }
        for (i, r) in idx.into_iter().zip(results) {
            out[i] = Some(r);
        }
    }
    Ok(out
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(RedisError::from((
                    ErrorKind::Client,
                    "no result for a pipelined command",
                )))
            })
        })
        .collect())
}
