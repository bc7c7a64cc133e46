//! `tiering at-risk` and `tiering user`: placeholder, being written.

#[derive(clap::Args)]
pub struct AtRiskArgs {}

#[derive(clap::Args)]
pub struct UserArgs {}

pub fn run_at_risk(_args: AtRiskArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

pub fn run_user(_args: UserArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
