//! Persona-vector files: safetensors with one `[layers + 1, hidden]` f32 tensor per averaging
//! kind, plus metadata recording how they were made.
//!
//! Vectors are raw differences of means (not normalized); row `l` is hidden-state index `l`
//! (0 = embedding output, N = output of block N-1, the last taken after the final norm).

use crate::model::ModelConfig;
use crate::tensor_file::{self, Values};
use anyhow::{bail, ensure, Context, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// How activations were averaged before differencing.
pub const KINDS: [&str; 3] = ["response_avg", "prompt_avg", "prompt_last"];

#[derive(Debug, Clone, PartialEq)]
pub struct PersonaVector {
    /// Kind → `[layers + 1][hidden]`.
    pub vectors: BTreeMap<String, Vec<Vec<f32>>>,
    pub metadata: BTreeMap<String, String>,
}

impl PersonaVector {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read persona vector {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
        })?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: invalid safetensors header: {e}", path.display()))?;
        let mut vectors = BTreeMap::new();
        for (name, view) in st.tensors() {
            ensure!(
                view.dtype() == Dtype::F32 && view.shape().len() == 2,
                "{}: tensor {name} must be f32 [layers+1, hidden], found {:?} {:?}",
                path.display(),
                view.dtype(),
                view.shape()
            );
            let hidden = view.shape()[1];
            ensure!(
                hidden > 0,
                "{}: tensor {name} has hidden size 0",
                path.display()
            );
            let flat: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            let rows: Vec<Vec<f32>> = flat.chunks(hidden).map(<[f32]>::to_vec).collect();
            crate::steering::ensure_finite(&rows, &format!("{}: tensor {name}", path.display()))?;
            vectors.insert(name, rows);
        }
        ensure!(
            !vectors.is_empty(),
            "{}: contains no vectors",
            path.display()
        );
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Self { vectors, metadata })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        for (kind, rows) in &self.vectors {
            crate::steering::ensure_finite(rows, &format!("{}: {kind} vector", path.display()))?;
        }
        let flat: Vec<(String, Vec<f32>, Vec<usize>)> = self
            .vectors
            .iter()
            .map(|(k, rows)| {
                (
                    k.clone(),
                    rows.concat(),
                    vec![rows.len(), rows.first().map_or(0, Vec::len)],
                )
            })
            .collect();
        let tensors: Vec<(&str, Values, Vec<usize>)> = flat
            .iter()
            .map(|(k, v, s)| (k.as_str(), Values::F32(v), s.clone()))
            .collect();
        let metadata: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        tensor_file::write(path, &tensors, Some(metadata))
    }

    /// The vector of one kind, checked against the model it will be used with.
    pub fn get(&self, kind: &str, num_layers: usize, hidden: usize) -> Result<&[Vec<f32>]> {
        let Some(rows) = self.vectors.get(kind) else {
            bail!(
                "no {kind} vector (has: {})",
                self.vectors.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        ensure!(
            rows.len() == num_layers + 1 && rows.iter().all(|r| r.len() == hidden),
            "{kind} vector has shape [{}, {}], the model needs [{}, {hidden}] (layers + 1, hidden)",
            rows.len(),
            rows.first().map_or(0, Vec::len),
            num_layers + 1
        );
        Ok(rows)
    }
}

/// A persona vector from its own file format or from a llama.cpp control vector, padded to the
/// model's depth, with the recommended layer when the file records one.
pub fn read_rows(
    path: &std::path::Path,
    kind: &str,
    config: &ModelConfig,
) -> Result<(Vec<Vec<f32>>, Option<usize>)> {
    if path.extension().is_some_and(|e| e == "gguf") {
        let mut rows = super::cvec::import(path)?.vectors;
        anyhow::ensure!(
            rows.len() <= config.num_layers + 1,
            "{}: control vector addresses {} blocks, the model has {}",
            path.display(),
            rows.len() - 1,
            config.num_layers
        );
        let hidden = rows[0].len();
        rows.resize(config.num_layers + 1, vec![0.0; hidden]);
        return Ok((rows, None));
    }
    let v = PersonaVector::load(path)?;
    let rows = v
        .get(kind, config.num_layers, config.hidden_size)
        .with_context(|| format!("{}: vector does not fit this model", path.display()))?
        .to_vec();
    let recommended = match v.metadata.get("recommended_layer") {
        Some(l) => Some(l.parse().with_context(|| {
            format!(
                "{}: metadata recommended_layer {l:?} is not a layer index",
                path.display()
            )
        })?),
        None => None,
    };
    Ok((rows, recommended))
}

/// One trait's persona vector read for projections at one layer: what data screening, prompt
/// monitoring and the server's per-request monitoring measure.
#[derive(Debug, Clone)]
pub struct TraitDirection {
    /// The file's `trait` metadata, else its file stem.
    pub trait_name: String,
    /// Hidden-state index the projections are taken at.
    pub layer: usize,
    /// `v[layer] / |v[layer]|`: a dot product with it is the projection `h · v / |v|`.
    pub unit: Vec<f32>,
    /// Every row, `[layers + 1][hidden]` (steering with the same file needs them).
    pub rows: Vec<Vec<f32>>,
}

impl TraitDirection {
    /// `layer` defaults to the file's `recommended_layer`, else 2/3 of the depth (as training's
    /// monitor does).
    pub fn load(
        path: &Path,
        kind: &str,
        layer: Option<usize>,
        config: &ModelConfig,
    ) -> Result<Self> {
        let (rows, recommended) = read_rows(path, kind, config)?;
        let layer = layer
            .or(recommended)
            .unwrap_or((2 * config.num_layers).div_ceil(3));
        ensure!(
            (1..=config.num_layers).contains(&layer),
            "{}: layer {layer} is out of range 1..={}",
            path.display(),
            config.num_layers
        );
        ensure!(
            rows[layer].len() == config.hidden_size,
            "{}: vector rows have {} values, the model's hidden size is {}",
            path.display(),
            rows[layer].len(),
            config.hidden_size
        );
        let unit = crate::steering::unit(&rows[layer]).with_context(|| {
            format!(
                "{}: row {layer} is zero, so it has no direction",
                path.display()
            )
        })?;
        let trait_name = match path.extension().is_some_and(|e| e == "gguf") {
            true => None,
            false => PersonaVector::load(path)?.metadata.get("trait").cloned(),
        }
        .unwrap_or_else(|| {
            path.file_stem()
                .map_or("trait".into(), |s| s.to_string_lossy().into_owned())
        });
        Ok(Self {
            trait_name,
            layer,
            unit,
            rows,
        })
    }

    /// Projection of a hidden state (at [`Self::layer`]) on the direction.
    pub fn project(&self, h: &[f32]) -> f32 {
        h.iter().zip(&self.unit).map(|(a, b)| a * b).sum()
    }
}

/// Scalar projection of `h` on the direction of `v`: `h · v / |v|`.
pub fn project(h: &[f32], v: &[f32]) -> f32 {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return 0.0;
    }
    h.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PersonaVector {
        PersonaVector {
            vectors: BTreeMap::from([(
                "response_avg".to_owned(),
                vec![vec![1.0, 2.0], vec![3.0, -4.0], vec![0.5, 0.25]],
            )]),
            metadata: BTreeMap::from([("trait".to_owned(), "evil".to_owned())]),
        }
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.safetensors");
        sample().save(&path).unwrap();
        assert_eq!(PersonaVector::load(&path).unwrap(), sample());
    }

    #[test]
    fn wrong_size_for_the_model_is_an_error() {
        let v = sample();
        assert!(v.get("response_avg", 2, 2).is_ok());
        let err = v.get("response_avg", 3, 2).unwrap_err().to_string();
        assert!(err.contains("[3, 2]") && err.contains("[4, 2]"), "{err}");
        assert!(v.get("response_avg", 2, 5).is_err());
        assert!(v
            .get("prompt_last", 2, 2)
            .unwrap_err()
            .to_string()
            .contains("response_avg"));
    }

    #[test]
    fn projection_divides_by_the_norm() {
        assert_eq!(project(&[3.0, 4.0], &[0.0, 2.0]), 4.0);
        assert_eq!(project(&[1.0, 1.0], &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn not_a_vector_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(PersonaVector::load(&path)
            .unwrap_err()
            .to_string()
            .contains("bad.safetensors"));
    }
}
