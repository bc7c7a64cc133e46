//! `tiering erase`, `tiering export-user` and `tiering object`: a person's rights, as clients of a
//! running server (EraseUser, ExportUser, SetProfilingObjection; role `admin`), with the same
//! server, TLS and token options as `tiering user`. The server audits each call.

use super::client::{connect, runtime, server_url, status_error, ServerArgs};
use anyhow::{Context, Result};
use tiering::pb as proto;

#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The user id to erase.
    pub user_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExportUserArgs {
    /// The user id whose data to export (JSON on stdout).
    pub user_id: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, clap::Args)]
pub struct ObjectArgs {
    /// The user id.
    pub user_id: String,
    /// Withdraw the objection instead of recording it.
    #[arg(long)]
    pub withdraw: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn run_erase(args: EraseArgs) -> Result<()> {
    let url = server_url(&args.server.server);
    let r = runtime()?.block_on(async {
        let mut client = connect(&url, &args.server).await?;
        let req = proto::EraseUserRequest {
            user_id: args.user_id.clone(),
        };
        client
            .erase_user(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_error)
            .with_context(|| format!("erasing a user on {url}"))
    })?;
    println!(
        "erased ({}; suppressed as {})",
        if r.existed {
            "the user's data was removed"
        } else {
            "nothing was held"
        },
        r.id_hash
    );
    Ok(())
}

pub fn run_export(args: ExportUserArgs) -> Result<()> {
    let url = server_url(&args.server.server);
    let r = runtime()?.block_on(async {
        let mut client = connect(&url, &args.server).await?;
        let req = proto::ExportUserRequest {
            user_id: args.user_id.clone(),
        };
        client
            .export_user(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_error)
            .with_context(|| format!("exporting a user's data from {url}"))
    })?;
    let doc: serde_json::Value =
        serde_json::from_str(&r.json).context("the server's export is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

pub fn run_object(args: ObjectArgs) -> Result<()> {
    let url = server_url(&args.server.server);
    let objected = !args.withdraw;
    let r = runtime()?.block_on(async {
        let mut client = connect(&url, &args.server).await?;
        let req = proto::SetProfilingObjectionRequest {
            user_id: args.user_id.clone(),
            objected,
        };
        client
            .set_profiling_objection(req)
            .await
            .map(tonic::Response::into_inner)
            .map_err(status_error)
            .with_context(|| format!("setting a profiling objection on {url}"))
    })?;
    println!(
        "profiling objection {} (before: {})",
        if objected { "recorded" } else { "withdrawn" },
        if r.previously_objected {
            "objected"
        } else {
            "not objected"
        }
    );
    Ok(())
}
