//! Inference-time steering from a persona-vector file: which file, layer(s), coefficient and
//! positions, resolved against the model (and the vector's recommendations) into a [`Steering`].

use crate::model::ModelConfig;
use crate::persona::vector::{read_rows, PersonaVector};
use crate::steering::{Positions, SteerLayers, Steering};
use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};

/// Steering as a command asks for it.
#[derive(Debug, Clone)]
pub struct SteerSpec {
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    pub vector: PathBuf,
    /// Which averaging of the persona vector to use.
    pub vector_kind: String,
    /// Hidden-state index to steer; default: the vector's `recommended_layer`.
    pub layer: Option<usize>,
    /// Default: the vector's `recommended_coef`.
    pub coef: Option<f32>,
    pub positions: Positions,
    /// The layer-incremental vectors `coef·(v[l] − v[l−1])` at every block instead of one layer.
    pub all_layers: bool,
}

impl SteerSpec {
    /// The steering for a model with `config`'s shapes.
    pub fn build(&self, config: &ModelConfig) -> Result<Steering> {
        let path = &self.vector;
        let (rows, recommended) = read_rows(path, &self.vector_kind, config)?;
        let layers = if self.all_layers {
            SteerLayers::All
        } else {
            let layer = self.layer.or(recommended).with_context(|| {
                format!("{}: no recommended_layer in the vector's metadata; pass --layer L (or --all-layers)", path.display())
            })?;
            SteerLayers::Single(layer)
        };
        let coef = match self.coef {
            Some(c) => c,
            None => recommended_coef(path)?,
        };
        Steering::new(
            &rows,
            layers,
            coef,
            self.positions,
            config.num_layers,
            config.hidden_size,
        )
        .with_context(|| format!("steering with {}", path.display()))
    }
}

/// The coefficient `sweep --write-recommendation` stored in a vector file.
fn recommended_coef(path: &Path) -> Result<f32> {
    let missing = || {
        format!(
            "{}: no recommended_coef in the vector's metadata; pass --coef C",
            path.display()
        )
    };
    ensure!(
        path.extension().is_none_or(|e| e != "gguf"),
        "{}",
        missing()
    );
    let v = PersonaVector::load(path)?;
    let c = v.metadata.get("recommended_coef").with_context(missing)?;
    c.parse().with_context(|| {
        format!(
            "{}: metadata recommended_coef {c:?} is not a number",
            path.display()
        )
    })
}
