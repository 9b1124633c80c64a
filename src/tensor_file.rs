//! Writing host tensors to safetensors files (vectors, forward dumps).

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

pub enum Values<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// Writes `(name, values, shape)` triples with [`crate::atomic::write`].
pub fn write(
    path: &Path,
    tensors: &[(&str, Values, Vec<usize>)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(&str, Dtype, Vec<u8>, &Vec<usize>)> = tensors
        .iter()
        .map(|(name, values, shape)| match values {
            Values::F32(v) => (
                *name,
                Dtype::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape,
            ),
            Values::I64(v) => (
                *name,
                Dtype::I64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                shape,
            ),
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, dtype, data, shape)| {
            Ok((*name, TensorView::new(*dtype, shape.to_vec(), data)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .with_context(|| format!("{}: tensor shapes do not match their data", path.display()))?;
    let bytes = safetensors::serialize(views, metadata)
        .with_context(|| format!("cannot serialise {}", path.display()))?;
    crate::atomic::write(path, bytes)
}
