//! `tiering serve`: tiers and churn probabilities over gRPC from `MODELS/CURRENT`.
//!
//! Configuration is layered: defaults → `--config FILE` (TOML, see
//! `tiering::serve::config`) → `TIERING__*` environment variables → these flags.
//! SIGINT/SIGTERM shut down gracefully (drain, then a final state snapshot); SIGHUP reloads the
//! model.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use tiering::serve::state::redis::RedisAccess;
use tiering::serve::ServeConfig;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Model bundles directory; MODELS/CURRENT names the live bundle and is watched for changes.
    #[arg(long, value_name = "MODELS")]
    pub models: Option<PathBuf>,
    /// gRPC listen address (default 127.0.0.1:50051; port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the HTTP/JSON API (http://ADDR/v1/...) and the web console (http://ADDR/) here,
    /// with the same TLS, tokens and roles as gRPC.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,
    /// Per-user state: a directory (snapshot + event log; default: `state` beside MODELS), or a
    /// shared Redis for several replicas: redis://HOST:PORT[/DB] or
    /// redis+cluster://HOST:PORT,HOST:PORT,... (seed nodes); rediss:// and rediss+cluster:// over
    /// TLS. No credentials in the URL (refused): see --redis-user and --redis-password-file.
    #[arg(long, value_name = "DIR|URL")]
    pub state: Option<PathBuf>,
    #[command(flatten)]
    pub redis: RedisAccessArgs,
    /// Redis state only: start although Redis lost the state the models directory recorded
    /// (wiped, or restored from an older backup), seeding missing users from the bundle.
    #[arg(long)]
    pub reseed_state: bool,
    /// TOML configuration file (every field of `ServeConfig`; flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Pin the clock (RFC 3339, or YYYY-MM-DD = the end of that day, UTC), e.g. to serve historic
    /// data.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// Serve only model bundles signed by this public key (a PEM file from `tiering keys
    /// generate`, or a directory of *.pub files); repeat for several (key rotation). Replaces
    /// the configuration's `verify_key`. Without it bundles are not verified.
    #[arg(long, value_name = "FILE|DIR")]
    pub verify_key: Vec<PathBuf>,
    /// TLS on the gRPC and metrics listeners: the server certificate chain (PEM), with
    /// --tls-key. Reloaded on change or SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate issued by this CA (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// API keys and mTLS identities with their roles (`tiering keys add-token`); turns
    /// authentication on. Must not be readable by group or others.
    #[arg(long, value_name = "FILE")]
    pub keys_file: Option<PathBuf>,
    /// Allow listening beyond loopback without TLS or without a keys file.
    #[arg(long)]
    pub insecure: bool,
    /// Append the audit log of administrative actions to FILE (JSON lines, fsynced); log
    /// lines with target `audit` are written either way.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// The privacy key (keyed hashes of ids in the suppression list and the audit log) from
    /// FILE; else TIERING_PRIVACY_KEY, else one generated into the state directory.
    #[arg(long, value_name = "FILE")]
    pub privacy_key_file: Option<PathBuf>,
    /// Encrypt the state snapshot and event log with the key in FILE (64 hex digits, mode
    /// 0600). A state is encrypted from its first seed on; see README "Data at rest and
    /// pseudonyms".
    #[arg(long, value_name = "FILE")]
    pub state_key_file: Option<PathBuf>,
    /// Replace user ids in requests by HMAC-SHA256(key, id) (hex key in FILE, mode 0600); the
    /// bundles must be trained with the same --pseudonymize-key-file.
    #[arg(long, value_name = "FILE")]
    pub pseudonymize_key_file: Option<PathBuf>,
}

/// How to reach a Redis state over TLS and as which ACL user: the same flags for `tiering serve`
/// and `tiering aggregate` (both open the shared state).
#[derive(Debug, Default, clap::Args)]
pub struct RedisAccessArgs {
    /// Redis over TLS only: PEM CA certificates the Redis server's certificate must chain to
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// Redis state only: the ACL user (default: `default`).
    #[arg(long, value_name = "NAME")]
    pub redis_user: Option<String>,
    /// Redis state only: a file (mode 0600) whose first line is the ACL password; without it the
    /// password comes from TIERING_REDIS_PASSWORD. There is no password flag.
    #[arg(long, value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
}

impl RedisAccessArgs {
    /// The access settings these flags give (unset flags: the system's roots, the `default`
    /// user, the password from TIERING_REDIS_PASSWORD if set).
    pub fn access(self) -> RedisAccess {
        RedisAccess {
            ca_file: self.redis_ca_file,
            user: self.redis_user,
            password_file: self.redis_password_file,
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let source = match &args.config {
        Some(file) => format!("{} (with any TIERING__* variables)", file.display()),
        None => "(TIERING__* variables)".to_string(),
    };
    let mut config = ServeConfig::load(args.config.as_deref(), std::env::vars())
        .with_context(|| format!("loading the configuration {source}"))?;
    if let Some(m) = args.models {
        config.models = m;
    }
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(m) = args.metrics_listen {
        config.metrics_listen = Some(m);
    }
    if let Some(h) = args.http_listen {
        config.http_listen = Some(h);
    }
    if let Some(s) = args.state {
        config.state_dir = Some(s);
    }
    if args.reseed_state {
        config.reseed_state = true;
    }
    let access = args.redis.access();
    if let Some(f) = access.ca_file {
        config.redis_ca_file = Some(f);
    }
    if let Some(u) = access.user {
        config.redis_user = Some(u);
    }
    if let Some(f) = access.password_file {
        config.redis_password_file = Some(f);
    }
    if let Some(n) = args.now {
        config.now = Some(n);
    }
    if !args.verify_key.is_empty() {
        config.verify_key = args.verify_key;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    if args.tls_client_ca.is_some() {
        config.tls_client_ca = args.tls_client_ca;
    }
    if args.keys_file.is_some() {
        config.keys_file = args.keys_file;
    }
    config.insecure |= args.insecure;
    if args.audit_log.is_some() {
        config.audit_log = args.audit_log;
    }
    if args.privacy_key_file.is_some() {
        config.privacy_key_file = args.privacy_key_file;
    }
    if args.state_key_file.is_some() {
        config.state_key_file = args.state_key_file;
    }
    if args.pseudonymize_key_file.is_some() {
        config.pseudonymize_key_file = args.pseudonymize_key_file;
    }
    let config = config.check().context("checking the configuration")?;
    tiering::bundle::permissions::warn_open(&config.models, "models directory");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the gRPC address {}", config.listen))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let try_it = if config.tls_cert.is_some() {
            format!("grpcurl -cacert CA.pem {addr} list")
        } else {
            format!("grpcurl -plaintext {addr} list")
        };
        eprintln!(
            "tiering: gRPC on {addr} (state in {}); try `{try_it}`",
            config.state_dir().display()
        );
        tiering::serve::run(config, listener, shutdown_signal())
            .await
            .context("serving")
    })
}

/// SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
