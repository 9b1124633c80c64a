//! Data screening by projection difference (placeholder: being written).

#[derive(clap::Args)]
pub struct ScreenArgs {}

pub fn run(_a: ScreenArgs) -> anyhow::Result<()> {
    anyhow::bail!("screen is not written yet")
}
