//! `tiering generate`: placeholder, being written.

#[derive(clap::Args)]
pub struct GenerateArgs {}

pub fn run(_args: GenerateArgs) -> anyhow::Result<()> {
    Ok(())
}
