//! Last-prompt-token monitoring (placeholder: being written).

#[derive(clap::Args)]
pub struct MonitorArgs {}

pub fn run(_a: MonitorArgs) -> anyhow::Result<()> {
    anyhow::bail!("monitor is not written yet")
}
