//! `tiering at-risk` and `tiering user`: clients of a running server, for retention teams and for
//! looking one user up.
//!
//! `at-risk` calls `ListAtRiskUsers` page by page (following `next_page_token`) until `--limit`
//! users or the end of the list, then writes them sorted by churn probability, highest first
//! (ties by user id). Formats (`--format`):
//!
//! - `csv` (default): a header, then one row per user with the columns of [`COLUMNS`]; `reasons`
//!   is the top factors as `feature=+0.42 (value)` joined by `; `, `playbook` the tier's actions
//!   joined by ` | `.
//! - `json`: one JSON array of objects, one object per line. Keys as the CSV columns, but
//!   `reasons` is an array of `{feature, contribution, value}` and `playbook` an array of
//!   strings; plus `model_version` and `as_of` (RFC 3339).
//! - `jsonl`: the same objects as JSON Lines (one per line, no array), for streaming tools.
//! - `table`: aligned columns for a terminal (CJK-width aware).
//!
//! Errors: a gRPC status prints as `CODE: message` (`INVALID_ARGUMENT: min_churn_probability:
//! must be in [0, 1], got 1.5`); a server that cannot be reached is named by its URL. `--out`
//! writes a temporary file beside the target and renames it into place, so readers never see a
//! half-written list. Writing to a closed pipe (`| head`) ends quietly.

use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tiering::serve::proto::{self, tiering_client::TieringClient};
use tonic::transport::{Channel, Endpoint};
use unicode_width::UnicodeWidthStr;

/// The CSV header (and the keys of the JSON objects).
pub const COLUMNS: [&str; 11] = [
    "user_id",
    "churn_probability",
    "risk_level",
    "risk_percentile",
    "tier_id",
    "tier_name",
    "tier_name_zh",
    "lifecycle_stage",
    "rfm_segment",
    "reasons",
    "playbook",
];

/// Largest response accepted from the server (a page of 10,000 users is a few MB).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    Csv,
    /// A JSON array, one object per line.
    Json,
    /// JSON Lines: one object per line.
    Jsonl,
    /// Aligned columns for a terminal.
    Table,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UserFormat {
    Table,
    Json,
}

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
            let mut file = AtomicFile::create(path)
                .with_context(|| format!("creating a temporary file for {}", path.display()))?;
            write_users(&mut file, &users, args.format)
                .and_then(|()| file.commit())
                .with_context(|| format!("writing {}", path.display()))
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

fn runtime() -> Result<tokio::runtime::Runtime> {
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

async fn connect(url: &str, args: &ServerArgs) -> Result<TieringClient<Channel>> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .with_context(|| format!("--server {:?} is not a valid URL", args.server))?
        .connect_timeout(Duration::from_secs(args.timeout.min(10)))
        .timeout(Duration::from_secs(args.timeout));
    let channel = endpoint.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the tiering server at {url}: {}",
            error_chain(&e)
        )
    })?;
    Ok(TieringClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
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

/// An `f32` the server computed, widened without the noise digits (`0.331199`, not
/// `0.3311994969844818`).
fn f32_clean(x: f64) -> f64 {
    (x as f32).to_string().parse().unwrap_or(x)
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

fn status_error(s: tonic::Status) -> anyhow::Error {
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
                sort_by_risk(&mut users);
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

/// One pass from the first page.
async fn fetch_pages(
    client: &mut TieringClient<Channel>,
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

/// Highest churn probability first, then user id ascending (the server's order).
pub fn sort_by_risk(users: &mut [proto::UserTier]) {
    users.sort_by(|a, b| {
        b.churn_probability
            .total_cmp(&a.churn_probability)
            .then_with(|| a.user_id.cmp(&b.user_id))
    });
}

/// `recency_days=+0.42 (81.04); ...`
pub fn reasons_text(factors: &[proto::Factor]) -> String {
    factors
        .iter()
        .map(|f| {
            format!(
                "{}={:+.2} ({})",
                f.feature,
                f.contribution,
                value_text(f.value)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A feature value without noise: `81.04`, `5`, `0.5`.
fn value_text(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

fn as_of_text(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|d| d.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

#[derive(Serialize)]
struct JsonFactor<'a> {
    feature: &'a str,
    contribution: f64,
    value: f64,
}

/// One user as JSON (`at-risk --format json|jsonl`, `user --format json`).
#[derive(Serialize)]
struct JsonUser<'a> {
    user_id: &'a str,
    churn_probability: f64,
    risk_level: &'a str,
    risk_percentile: f64,
    tier_id: &'a str,
    tier_name: &'a str,
    tier_name_zh: &'a str,
    lifecycle_stage: &'a str,
    rfm_segment: &'a str,
    reasons: Vec<JsonFactor<'a>>,
    playbook: &'a [String],
    model_version: &'a str,
    as_of: String,
}

impl<'a> From<&'a proto::UserTier> for JsonUser<'a> {
    fn from(u: &'a proto::UserTier) -> Self {
        JsonUser {
            user_id: &u.user_id,
            churn_probability: u.churn_probability,
            risk_level: &u.risk_level,
            risk_percentile: u.risk_percentile,
            tier_id: &u.tier_id,
            tier_name: &u.tier_name,
            tier_name_zh: &u.tier_name_zh,
            lifecycle_stage: &u.lifecycle_stage,
            rfm_segment: &u.rfm_segment,
            reasons: u
                .top_factors
                .iter()
                .map(|f| JsonFactor {
                    feature: &f.feature,
                    contribution: f32_clean(f.contribution),
                    value: f32_clean(f.value),
                })
                .collect(),
            playbook: &u.recommended_actions,
            model_version: &u.model_version,
            as_of: as_of_text(u.as_of.as_ref()),
        }
    }
}

/// Writes the list in `format`.
pub fn write_users(
    out: &mut dyn Write,
    users: &[proto::UserTier],
    format: ListFormat,
) -> io::Result<()> {
    match format {
        ListFormat::Csv => write_csv(out, users),
        ListFormat::Json => {
            out.write_all(b"[")?;
            for (i, u) in users.iter().enumerate() {
                out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, &JsonUser::from(u))?;
            }
            out.write_all(b"\n]\n")
        }
        ListFormat::Jsonl => {
            for u in users {
                serde_json::to_writer(&mut *out, &JsonUser::from(u))?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        ListFormat::Table => write_table(out, users),
    }
}

fn csv_row(u: &proto::UserTier) -> [String; 11] {
    [
        u.user_id.clone(),
        format!("{:.6}", u.churn_probability),
        u.risk_level.clone(),
        format!("{:.2}", u.risk_percentile),
        u.tier_id.clone(),
        u.tier_name.clone(),
        u.tier_name_zh.clone(),
        u.lifecycle_stage.clone(),
        u.rfm_segment.clone(),
        reasons_text(&u.top_factors),
        u.recommended_actions.join(" | "),
    ]
}

fn write_csv(out: &mut dyn Write, users: &[proto::UserTier]) -> io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(COLUMNS)?;
    for u in users {
        w.write_record(csv_row(u))?;
    }
    w.flush()
}

/// Aligned columns; numbers right-aligned, the last column unpadded.
fn write_table(out: &mut dyn Write, users: &[proto::UserTier]) -> io::Result<()> {
    let header = [
        "USER_ID",
        "CHURN",
        "RISK",
        "PCTILE",
        "TIER",
        "TIER_NAME",
        "中文",
        "LIFECYCLE",
        "RFM",
        "REASONS",
        "PLAYBOOK",
    ];
    let right = [
        false, true, false, true, false, false, false, false, false, false, false,
    ];
    let rows: Vec<[String; 11]> = users
        .iter()
        .map(|u| {
            let mut r = csv_row(u);
            r[1] = format!("{:.4}", u.churn_probability);
            r[3] = format!("{:.1}", u.risk_percentile);
            r
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.width());
        }
    }
    let mut line = |cells: &[&str]| -> io::Result<()> {
        let mut s = String::new();
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                s.push_str(cell);
                break;
            }
            let pad = " ".repeat(widths[i].saturating_sub(cell.width()));
            if right[i] {
                s.push_str(&pad);
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&pad);
            }
            s.push_str("  ");
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(&header)?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells)?;
    }
    Ok(())
}

/// Every field of one user, one per line.
fn write_user_table(out: &mut dyn Write, u: &proto::UserTier) -> io::Result<()> {
    const W: usize = 20;
    let plain = [
        ("user_id", u.user_id.clone()),
        ("tier_id", u.tier_id.clone()),
        ("tier_name", u.tier_name.clone()),
        ("tier_name_zh", u.tier_name_zh.clone()),
        ("churn_probability", format!("{:.4}", u.churn_probability)),
        ("risk_level", u.risk_level.clone()),
        (
            "risk_percentile",
            format!(
                "{:.1} (share of users at or below this risk)",
                u.risk_percentile
            ),
        ),
        ("rfm_segment", u.rfm_segment.clone()),
        ("lifecycle_stage", u.lifecycle_stage.clone()),
    ];
    for (k, v) in plain {
        writeln!(out, "{k:<W$} {v}")?;
    }
    let fw = u
        .top_factors
        .iter()
        .map(|f| f.feature.width())
        .max()
        .unwrap_or(0);
    if u.top_factors.is_empty() {
        writeln!(out, "{:<W$} -", "top_factors")?;
    }
    for (i, f) in u.top_factors.iter().enumerate() {
        let key = if i == 0 { "top_factors" } else { "" };
        writeln!(
            out,
            "{key:<W$} {:<fw$}  {:+.3} log-odds  (value {})",
            f.feature,
            f.contribution,
            value_text(f.value)
        )?;
    }
    if u.recommended_actions.is_empty() {
        writeln!(out, "{:<W$} -", "recommended_actions")?;
    }
    for (i, a) in u.recommended_actions.iter().enumerate() {
        let key = if i == 0 { "recommended_actions" } else { "" };
        writeln!(out, "{key:<W$} - {a}")?;
    }
    writeln!(out, "{:<W$} {}", "model_version", u.model_version)?;
    writeln!(out, "{:<W$} {}", "as_of", as_of_text(u.as_of.as_ref()))
}

/// A file written under a temporary name beside its target and renamed into place by
/// [`AtomicFile::commit`]; dropped uncommitted, the temporary file is removed.
struct AtomicFile {
    tmp: PathBuf,
    target: PathBuf,
    file: Option<BufWriter<File>>,
}

impl AtomicFile {
    fn create(target: &Path) -> io::Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        let file = File::create(&tmp)?;
        Ok(AtomicFile {
            tmp,
            target: target.to_path_buf(),
            file: Some(BufWriter::new(file)),
        })
    }

    fn commit(&mut self) -> io::Result<()> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("already committed"))?;
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.tmp, &self.target)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, p: f64) -> proto::UserTier {
        proto::UserTier {
            user_id: id.into(),
            churn_probability: p,
            tier_id: "core_fans".into(),
            tier_name: "Core fans".into(),
            tier_name_zh: "核心铁粉".into(),
            top_factors: vec![
                proto::Factor {
                    feature: "recency_days".into(),
                    contribution: 0.4213,
                    value: 81.0416,
                },
                proto::Factor {
                    feature: "orders".into(),
                    contribution: -0.1,
                    value: 5.0,
                },
            ],
            recommended_actions: vec!["exclusive community".into(), "co-streaming".into()],
            ..Default::default()
        }
    }

    #[test]
    fn reasons_read_as_feature_signed_contribution_and_value() {
        assert_eq!(
            reasons_text(&user("a", 0.5).top_factors),
            "recency_days=+0.42 (81.04); orders=-0.10 (5)"
        );
        assert_eq!(value_text(0.5), "0.5");
        assert_eq!(value_text(-0.001), "0");
    }

    #[test]
    fn users_sort_by_probability_then_id() {
        let mut v = vec![user("b", 0.5), user("c", 0.9), user("a", 0.5)];
        sort_by_risk(&mut v);
        let ids: Vec<&str> = v.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
    }

    #[test]
    fn csv_has_the_header_and_joined_reasons_and_playbook() {
        let mut out = Vec::new();
        write_users(&mut out, &[user("a", 0.75)], ListFormat::Csv).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(COLUMNS.join(",").as_str()));
        let row = lines.next().unwrap();
        assert!(row.starts_with("a,0.750000,"), "{row}");
        assert!(row.contains("exclusive community | co-streaming"), "{row}");
    }

    #[test]
    fn json_is_an_array_and_jsonl_one_object_per_line() {
        let users = [user("a", 0.75), user("b", 0.5)];
        let mut out = Vec::new();
        write_users(&mut out, &users, ListFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        assert_eq!(v[0]["reasons"][0]["feature"], "recency_days");
        let mut out = Vec::new();
        write_users(&mut out, &[], ListFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(0));
        let mut out = Vec::new();
        write_users(&mut out, &users, ListFormat::Jsonl).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2);
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn table_columns_line_up_with_wide_characters() {
        let mut out = Vec::new();
        write_users(
            &mut out,
            &[user("a", 0.75), user("bbbbbb", 0.5)],
            ListFormat::Table,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let col = |l: &str| l[..l.find("core_fans").unwrap_or(l.len())].width();
        assert_eq!(col(lines[1]), col(lines[2]));
        let zh = |l: &str| l[..l.find("核心铁粉").unwrap_or(0)].width();
        assert_eq!(zh(lines[1]), zh(lines[2]));
    }

    #[test]
    fn server_urls_default_to_http() {
        assert_eq!(server_url("127.0.0.1:5"), "http://127.0.0.1:5");
        assert_eq!(server_url("https://x:5/"), "https://x:5");
    }

    #[test]
    fn an_uncommitted_atomic_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.csv");
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"whole").unwrap();
        f.commit().unwrap();
        drop(f);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "whole");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
