//! `tiering models`: placeholder, being written.

#[derive(clap::Args)]
pub struct ModelsArgs {}

pub fn run(_args: ModelsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
