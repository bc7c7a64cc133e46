//! Command-line front end. Each subcommand parses its flags, calls the library, and reports.

mod client;
mod generate;
mod models;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tiering", version, about = "Learned user tiers and calibrated churn probabilities, served over gRPC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a seeded synthetic live-commerce data set (events + users).
    Generate(generate::GenerateArgs),
    /// Serve tiers and churn probabilities over gRPC from MODELS/CURRENT.
    Serve(serve::ServeArgs),
    /// List, promote or roll back model bundles.
    Models(models::ModelsArgs),
    /// Pull the at-risk list from a running server (CSV, JSON or a table).
    AtRisk(client::AtRiskArgs),
    /// Look one user up on a running server.
    User(client::UserArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Models(args) => models::run(args),
        Command::AtRisk(args) => client::run_at_risk(args),
        Command::User(args) => client::run_user(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
