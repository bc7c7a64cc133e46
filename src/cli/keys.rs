//! `tiering keys generate`: an ed25519 key pair for signing model bundles.
//!
//! The private key (`NAME.key`, PKCS#8 PEM, mode 0600) goes to `tiering train --sign-key`; the
//! public key (`NAME.pub`) to `tiering serve --verify-key` and `tiering models --verify-key`.
//! Existing files are never overwritten.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::signature::generate_key_pair;

#[derive(clap::Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Write a new key pair: DIR/NAME.key (private, mode 0600) and DIR/NAME.pub (public).
    Generate {
        /// The directory to write the key files to (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The files' base name.
        #[arg(long, default_value = "bundle-signing", value_name = "NAME")]
        name: String,
    },
}

pub fn run(args: KeysArgs) -> Result<()> {
    match args.action {
        Action::Generate { out, name } => {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                anyhow::bail!("--name {name:?}: a plain file name is needed");
            }
            let pair = generate_key_pair(&out, &name)
                .with_context(|| format!("generating a key pair in {}", out.display()))?;
            println!("key id {}", pair.key_id);
            println!(
                "private key: {} (mode 0600; keep it off the serving machines: `tiering train --sign-key`)",
                pair.private.display()
            );
            println!(
                "public key:  {} (`tiering serve --verify-key`, `tiering models --verify-key`)",
                pair.public.display()
            );
            Ok(())
        }
    }
}
