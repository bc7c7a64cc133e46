//! `tiering keys generate`: an ed25519 key pair for signing model bundles.
//!
//! The private key (`NAME.key`, PKCS#8 PEM, mode 0600) goes to `tiering train --sign-key`; the
//! public key (`NAME.pub`) to `tiering serve --verify-key` and `tiering models --verify-key`.
//! Existing files are never overwritten.

use anyhow::{Context, Result};
use std::path::PathBuf;
use tiering::bundle::signature::generate_key_pair;
use tiering::serve::auth::keys::{new_token, token_hash, KeyEntry, KeysFile};
use tiering::serve::auth::Role;

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
    /// Add an API key to a keys file (created mode 0600 if missing): prints a fresh token ONCE
    /// and stores only its SHA-256.
    AddToken {
        /// The key's name (logged on denials; one name per key).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Its roles, comma-separated: reader, retention, writer, admin.
        #[arg(long, value_delimiter = ',', required = true, value_name = "ROLES")]
        roles: Vec<Role>,
        /// The keys file (`tiering serve --keys-file`).
        #[arg(long, value_name = "FILE")]
        keys_file: PathBuf,
        /// Its own quota: requests per second (default: the server's quota_rate).
        #[arg(long, value_name = "N")]
        rate: Option<f64>,
        /// Its own quota burst (default: the server's quota_burst).
        #[arg(long, value_name = "N")]
        burst: Option<u32>,
    },
}

pub fn run(args: KeysArgs) -> Result<()> {
    match args.action {
        Action::AddToken {
            name,
            roles,
            keys_file,
            rate,
            burst,
        } => add_token(name, roles, &keys_file, rate, burst),
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

fn add_token(
    name: String,
    roles: Vec<Role>,
    path: &std::path::Path,
    rate: Option<f64>,
    burst: Option<u32>,
) -> Result<()> {
    let mut file = if path.exists() {
        KeysFile::read(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        KeysFile::default()
    };
    if file.keys.iter().any(|k| k.name == name) {
        anyhow::bail!(
            "{}: a key named {name:?} exists already (remove its [[key]] entry to replace it)",
            path.display()
        );
    }
    let token = new_token();
    file.keys.push(KeyEntry {
        name: name.clone(),
        sha256: hex::encode(token_hash(&token)),
        roles,
        rate,
        burst,
    });
    // Checked as the server will read it before it is written.
    file.clone().into_keys().context("the new entry")?;
    file.write(path)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "key {name:?} added to {} (only its SHA-256 is stored; a running server picks it up within seconds). The token, shown once:",
        path.display()
    );
    println!("{token}");
    Ok(())
}
