//! Run-time device selection: `cpu` (burn's flex backend) or `cuda[:N]` (with the `cuda` feature).

use anyhow::{bail, Context, Result};
use burn::tensor::{DType, Device};

pub fn parse(spec: &str) -> Result<Device> {
    match spec.split_once(':') {
        None if spec == "cpu" => Ok(Device::flex()),
        None if spec == "cuda" => cuda(0),
        Some(("cuda", index)) => cuda(
            index
                .parse()
                .with_context(|| format!("device {spec:?}: {index:?} is not a GPU index"))?,
        ),
        _ => bail!("unknown device {spec:?} (expected cpu, cuda or cuda:N)"),
    }
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<Device> {
    bail!("this build has no CUDA support: rebuild with `cargo build --release --features cuda`")
}

pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => bail!("unknown dtype {spec:?} (expected f32, f16 or bf16)"),
    }
}
