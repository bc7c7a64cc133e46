//! `tiering at-risk` and `tiering user`: clients of a running server, for retention teams and for
//! looking one user up. This file is the RPC side (flags, connecting, paging, errors, the output
//! file); how the users are written is [`super::client_output`].
//!
//! `at-risk` calls `ListAtRiskUsers` page by page (following `next_page_token`) until `--limit`
//! users or the end of the list, then writes them in the `--order-by` chosen, highest first (ties
//! by user id), in the `--format` chosen (csv, json, jsonl, table). The default is the list a
//! retention team can act on: ordered by value at risk (churn probability × CLV), users whose
//! lifecycle stage is `churned` left out unless `--include-churned` (or `--lifecycle churned`)
//! asks for them; `--order-by churn-probability --include-churned` gives the older list.
//!
//! Errors: a gRPC status prints as `CODE: message` (`INVALID_ARGUMENT: min_churn_probability:
//! must be in [0, 1], got 1.5`); a server that cannot be reached is named by its URL. `--out`
//! writes a temporary file beside the target and renames it into place, so readers never see a
//! half-written list. Writing to a closed pipe (`| head`) ends quietly.

use super::client_output::{as_of_text, sort_users, write_user_table, write_users, JsonUser};

pub use super::client_output::{AtRiskOrderArg, ListFormat, UserFormat};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;
use tiering::io::atomic::AtomicFile;
use tiering::pb::{self as proto, tiering_client::TieringClient};
use tonic::transport::{Channel, Endpoint};

/// Largest response accepted from the server (a page of 10,000 users is a few MB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The server's gRPC address, `http://HOST:PORT` (a bare `HOST:PORT` means http).
    #[arg(
        long,
        env = "TIERING_SERVER",
        default_value = "http://127.0.0.1:50051",
        value_name = "URL"
    )]
    pub server: String,
    /// Give up on each call after this many seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,
    #[command(flatten)]
    pub security: SecurityArgs,
}

/// Environment variable holding the API token (never a flag: flags show in `ps`).
pub const TOKEN_ENV: &str = "TIERING_TOKEN";

/// TLS and credentials for talking to a server.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Speak TLS, trusting the server certificate's CA in FILE (PEM); `http://` URLs become
    /// `https://`.
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS: this client certificate (PEM), with --tls-key.
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Mutual TLS: the client certificate's private key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The server name to check the certificate against (default: the URL's host).
    #[arg(long, global = true, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Read the API token from FILE (else the TIERING_TOKEN environment variable).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// Adds `authorization: Bearer TOKEN` to every call when a token is configured.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A client with its credentials.
pub type Client = TieringClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

impl SecurityArgs {
    /// The token from `--token-file` or `TIERING_TOKEN`.
    fn bearer(&self) -> Result<Bearer> {
        let token = match &self.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading --token-file {}", path.display()))?,
            ),
            None => std::env::var(TOKEN_ENV).ok(),
        };
        let Some(token) = token
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
        else {
            return Ok(Bearer(None));
        };
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?;
        Ok(Bearer(Some(value)))
    }

    /// The TLS settings, when TLS is asked for.
    fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading {what} {}", p.display()))
        };
        let mut config = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(read(ca, "--tls-ca")?),
        );
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert, "--tls-cert")?,
                read(key, "--tls-key")?,
            ));
        }
        if let Some(name) = &self.tls_server_name {
            config = config.domain_name(name.clone());
        }
        Ok(Some(config))
    }
}

#[derive(Debug, clap::Args)]
pub struct AtRiskArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// Only users whose churn probability is at least P (0 to 1).
    #[arg(long, value_name = "P")]
    pub min_probability: f64,
    /// Only this tier (repeat for several), e.g. `--tier core_fans`.
    #[arg(long = "tier", value_name = "ID")]
    pub tiers: Vec<String>,
    /// Only this lifecycle stage (repeat for several): new, mature_active, silent,
    /// about_to_churn, churned.
    #[arg(long = "lifecycle", value_name = "STAGE")]
    pub lifecycle: Vec<String>,
    /// The order of the list, highest first: value-at-risk (churn probability × CLV) or
    /// churn-probability.
    #[arg(long, value_enum, default_value_t = AtRiskOrderArg::ValueAtRisk)]
    pub order_by: AtRiskOrderArg,
    /// Keep users whose lifecycle stage is `churned` (left out by default: they are gone; also
    /// kept when `--lifecycle churned` asks for them).
    #[arg(long)]
    pub include_churned: bool,
    /// Only users whose interests hold this category (repeat for several: any of them), e.g.
    /// `--interest beauty`.
    #[arg(long = "interest", value_name = "CATEGORY")]
    pub interests: Vec<String>,
    /// At most N users, the riskiest first (default: every matching user).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Output format: csv, json (an array), jsonl (JSON Lines) or table.
    #[arg(long, value_enum, default_value_t = ListFormat::Csv)]
    pub format: ListFormat,
    /// Write to FILE (atomically: a temporary file renamed into place) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Users asked for per page (the server lowers it to its own maximum). Every page costs the
    /// server one scoring pass over all its users, so large pages make long lists cheaper.
    #[arg(long, default_value_t = 10_000, value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..))]
    pub page_size: u32,
}

#[derive(Debug, clap::Args)]
pub struct UserArgs {
    /// The user id.
    pub user_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Output format: table (readable) or json.
    #[arg(long, value_enum, default_value_t = UserFormat::Table)]
    pub format: UserFormat,
}

pub fn run_at_risk(args: AtRiskArgs) -> Result<()> {
    let runtime = runtime()?;
    let url = server_url(&args.server.server);
    let (users, pages) = runtime.block_on(fetch_at_risk(&args, &url))?;
    let result = match &args.out {
        Some(path) => {
            let mut out = BufWriter::new(AtomicFile::create(path)?);
            write_users(&mut out, &users, args.format)
                .with_context(|| format!("writing {}", path.display()))?;
            let file = out
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("writing {}", path.display()))?;
            file.commit().map_err(anyhow::Error::from)
        }
        None => {
            let stdout = io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            match write_users(&mut out, &users, args.format).and_then(|()| out.flush()) {
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
                r => r.context("writing to stdout"),
            }
        }
    };
    result?;
    let first = users.first();
    eprintln!(
        "{} users with churn probability >= {} ({} page{}; model {}, as of {}){}",
        users.len(),
        args.min_probability,
        pages,
        if pages == 1 { "" } else { "s" },
        first.map_or("-", |u| u.model_version.as_str()),
        first.map_or_else(|| "-".to_string(), |u| as_of_text(u.as_of.as_ref())),
        args.out
            .as_ref()
            .map(|p| format!(" -> {}", p.display()))
            .unwrap_or_default(),
    );
    Ok(())
}

pub fn run_user(args: UserArgs) -> Result<()> {
    let runtime = runtime()?;
    let url = server_url(&args.server.server);
    let user = runtime.block_on(async {
        let mut client = connect(&url, &args.server).await?;
        let req = proto::GetUserTierRequest {
            user_id: args.user_id.clone(),
        };
        client
            .get_user_tier(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_error)
            .with_context(|| format!("looking up user {:?} on {url}", args.user_id))
    })?;
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let written = match args.format {
        UserFormat::Json => serde_json::to_writer_pretty(&mut out, &JsonUser::from(&user))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out)),
        UserFormat::Table => write_user_table(&mut out, &user),
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `HOST:PORT` → `http://HOST:PORT`; URLs with a scheme are kept.
pub fn server_url(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

pub(super) async fn connect(url: &str, args: &ServerArgs) -> Result<Client> {
    connect_with(url, &args.security, args.timeout).await
}

/// Connects to `url` with TLS and a token as `security` says.
pub async fn connect_with(url: &str, security: &SecurityArgs, timeout: u64) -> Result<Client> {
    let tls = security.tls()?;
    let url = match (&tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_string(),
    };
    if tls.is_none() && url.starts_with("https://") {
        anyhow::bail!(
            "{url}: an https server needs --tls-ca FILE (the CA that signed its certificate)"
        );
    }
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("--server {url:?} is not a valid URL"))?
        .connect_timeout(Duration::from_secs(timeout.min(10)))
        .timeout(Duration::from_secs(timeout));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).context("configuring TLS")?;
    }
    let bearer = security.bearer()?;
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the tiering server at {url}: {}",
            error_chain(&e)
        )
    })?;
    Ok(TieringClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// An error and its sources as one line, without the repeats transport errors carry
/// (`tcp connect error: tcp connect error: ...`).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// A gRPC status, shown as `CODE: message`.
#[derive(Debug)]
pub struct RpcError {
    pub code: tonic::Code,
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", code_name(self.code), self.message)
    }
}

impl std::error::Error for RpcError {}

pub(super) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(RpcError {
        code: s.code(),
        message: s.message().to_string(),
    })
}

/// The canonical gRPC name of a status code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Pagination restarts allowed when the model changes mid-list (ABORTED from the server).
const MAX_RESTARTS: u32 = 3;

/// Why one pass over the pages stopped early.
enum FetchError {
    Rpc { status: tonic::Status, page: u64 },
    SameToken,
}

/// Every page until `--limit` or the end; returns the users sorted by risk and the page count.
/// A model swap during pagination (ABORTED after the first page) starts the list again.
async fn fetch_at_risk(args: &AtRiskArgs, url: &str) -> Result<(Vec<proto::UserTier>, u64)> {
    let mut client = connect(url, &args.server).await?;
    let bar = super::spinner("fetching at-risk users");
    let mut restarts = 0;
    loop {
        match fetch_pages(&mut client, args, &bar).await {
            Ok((mut users, pages)) => {
                bar.finish_and_clear();
                sort_users(&mut users, args.order_by);
                return Ok((users, pages));
            }
            Err(FetchError::Rpc { status, page })
                if status.code() == tonic::Code::Aborted && page > 1 && restarts < MAX_RESTARTS =>
            {
                restarts += 1;
                bar.println(format!(
                    "note: {}; starting again from the first page",
                    status.message()
                ));
            }
            Err(FetchError::Rpc { status, page }) => {
                bar.finish_and_clear();
                return Err(status_error(status))
                    .with_context(|| format!("listing at-risk users on {url} (page {page})"));
            }
            Err(FetchError::SameToken) => {
                bar.finish_and_clear();
                anyhow::bail!("the server at {url} returned the same page token twice; stopping");
            }
        }
    }
}

/// Churned users are left out unless `--include-churned` or `--lifecycle churned` asks for them.
fn excludes_churned(args: &AtRiskArgs) -> bool {
    !args.include_churned && !args.lifecycle.iter().any(|s| s == "churned")
}

/// One pass from the first page.
async fn fetch_pages(
    client: &mut Client,
    args: &AtRiskArgs,
    bar: &indicatif::ProgressBar,
) -> Result<(Vec<proto::UserTier>, u64), FetchError> {
    let mut users: Vec<proto::UserTier> = Vec::new();
    // A user whose events arrive during pagination may show up on two pages: keep the latest.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut token = String::new();
    let mut pages = 0u64;
    let mut received = 0u64;
    loop {
        let want = match args.limit {
            Some(limit) => limit
                .saturating_sub(received)
                .min(u64::from(args.page_size)),
            None => u64::from(args.page_size),
        };
        let req = proto::ListAtRiskUsersRequest {
            min_churn_probability: args.min_probability,
            tier_ids: args.tiers.clone(),
            lifecycle_stages: args.lifecycle.clone(),
            limit: u32::try_from(want).unwrap_or(args.page_size),
            page_token: token.clone(),
            order_by: args.order_by.proto() as i32,
            exclude_churned: excludes_churned(args),
            interest_categories: args.interests.clone(),
        };
        pages += 1;
        let rpc = |status| FetchError::Rpc {
            status,
            page: pages,
        };
        let mut stream = client
            .list_at_risk_users(req)
            .await
            .map_err(rpc)?
            .into_inner();
        let mut next = String::new();
        while let Some(mut user) = stream.message().await.map_err(rpc)? {
            if !user.next_page_token.is_empty() {
                next = std::mem::take(&mut user.next_page_token);
            }
            if args.limit.is_some_and(|l| received >= l) {
                continue;
            }
            received += 1;
            match seen.get(&user.user_id) {
                Some(&i) => users[i] = user,
                None => {
                    seen.insert(user.user_id.clone(), users.len());
                    users.push(user);
                }
            }
        }
        bar.set_message(format!("fetching at-risk users: {} so far", users.len()));
        if next.is_empty() || args.limit.is_some_and(|l| received >= l) {
            return Ok((users, pages));
        }
        if next == token {
            return Err(FetchError::SameToken);
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_default_to_http() {
        assert_eq!(server_url("127.0.0.1:5"), "http://127.0.0.1:5");
        assert_eq!(server_url("https://x:5/"), "https://x:5");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: AtRiskArgs,
    }

    fn parse(extra: &[&str]) -> AtRiskArgs {
        use clap::Parser;
        let mut argv = vec!["at-risk", "--min-probability", "0.5"];
        argv.extend(extra);
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn at_risk_defaults_to_the_saveable_list_ordered_by_value_at_risk() {
        let a = parse(&[]);
        assert_eq!(a.order_by, AtRiskOrderArg::ValueAtRisk);
        assert!(excludes_churned(&a));
        assert!(!excludes_churned(&parse(&["--include-churned"])));
        assert!(!excludes_churned(&parse(&["--lifecycle", "churned"])));
        let old = parse(&["--order-by", "churn-probability"]);
        assert_eq!(old.order_by.proto(), proto::AtRiskOrder::ChurnProbability);
    }
}
