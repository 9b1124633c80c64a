//! Hugging Face checkpoint directories: `config.json` plus `model.safetensors` or shards listed
//! in `model.safetensors.index.json`, weights in f32, f16 or bf16.

use crate::model::ParamSource;
use anyhow::{bail, Context, Result};
use burn::tensor::TensorData;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// Memory-mapped shards and which shard holds each tensor.
pub struct SafetensorsParams {
    shards: Vec<(PathBuf, Mmap)>,
    index: BTreeMap<String, usize>,
}

impl SafetensorsParams {
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index_path.exists() {
            shard_files(&index_path)?
        } else {
            bail!(
                "{}: no model.safetensors or model.safetensors.index.json",
                dir.display()
            );
        };
        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        for path in files {
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: the file is opened read-only; the map lives as long as the loader.
            let mmap = unsafe { Mmap::map(&file) }
                .with_context(|| format!("cannot map {}", path.display()))?;
            let (_, meta) = SafeTensors::read_metadata(&mmap).map_err(|e| {
                anyhow::anyhow!("{}: invalid safetensors header: {e}", path.display())
            })?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), shards.len());
            }
            shards.push((path, mmap));
        }
        Ok(Self { shards, index })
    }
}

fn shard_files(index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path)
        .with_context(|| format!("cannot read {}", index_path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: invalid JSON", index_path.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| {
            format!(
                "{}: field weight_map missing or not an object",
                index_path.display()
            )
        })?;
    let mut files: Vec<String> = map
        .values()
        .map(|v| v.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .with_context(|| {
            format!(
                "{}: field weight_map has a non-string file name",
                index_path.display()
            )
        })?;
    files.sort();
    files.dedup();
    let dir = index_path.parent().unwrap_or(Path::new("."));
    files
        .into_iter()
        .map(|f| {
            // Shards sit next to the index; a path that leads elsewhere ("/", "../x") would
            // have some unrelated file read as weights.
            let plain_name = Path::new(&f).file_name().is_some_and(|n| n == f.as_str());
            anyhow::ensure!(
                plain_name,
                "{}: field weight_map names {f:?}, which is not a file name in the model directory",
                index_path.display()
            );
            Ok(dir.join(f))
        })
        .collect()
}

impl ParamSource for SafetensorsParams {
    fn get(&self, name: &str, shape: &[usize]) -> Result<TensorData> {
        let &shard = self.index.get(name).with_context(|| {
            format!("tensor {name} not found in the checkpoint's safetensors files")
        })?;
        let (path, mmap) = &self.shards[shard];
        let st = SafeTensors::deserialize(mmap)
            .map_err(|e| anyhow::anyhow!("{}: invalid safetensors file: {e}", path.display()))?;
        let view = st
            .tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: tensor {name}: {e}", path.display()))?;
        let found = view.shape().to_vec();
        anyhow::ensure!(
            found == shape,
            "{}: tensor {name} has shape {found:?}, the model config expects {shape:?}",
            path.display()
        );
        let values =
            view_to_f32(&view).with_context(|| format!("{}: tensor {name}", path.display()))?;
        Ok(TensorData::new(values, found))
    }
}

/// A tensor's values as f32, whatever float type the file stores.
pub fn view_to_f32(view: &safetensors::tensor::TensorView) -> Result<Vec<f32>> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => bail!("unsupported dtype {other:?} (supported: F32, F16, BF16)"),
    })
}
