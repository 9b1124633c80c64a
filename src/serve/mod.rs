//! OpenAI-compatible server (placeholder: being written).

#[derive(clap::Args)]
pub struct ServeArgs {}

pub fn run(_a: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("serve is not written yet")
}
