//! Steering: persona-vector additions to the residual stream, as an explicit [`Intervention`]
//! handed to the forward pass.
//!
//! Layer convention (the paper's, and transformers' `output_hidden_states`): vector row `l` is
//! hidden-state index `l`, i.e. the output of block `l - 1`; row 0 is the embedding output and
//! has no block to steer.

use crate::model::Intervention;
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::{Device, Tensor, TensorData};

/// Which hidden-state rows are steered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SteerLayers {
    /// Add `coef * v[l]` at the output of block `l - 1` (`l ≥ 1`).
    Single(usize),
    /// Add the layer-incremental `coef * (v[l] - v[l-1])` at the output of every block `l - 1`,
    /// so the total added by hidden-state `l` is `coef * (v[l] - v[0])`.
    All,
}

/// Which tokens are steered during generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    /// Every token, prompt and generated.
    All,
    /// Prompt tokens only.
    Prompt,
    /// The last prompt token and every generated token (the ones that produce the reply).
    Response,
}

impl std::str::FromStr for Positions {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "all" => Ok(Self::All),
            "prompt" => Ok(Self::Prompt),
            "response" => Ok(Self::Response),
            _ => {
                anyhow::bail!("unknown steering positions {s:?} (expected all, prompt or response)")
            }
        }
    }
}

/// Per-block edits built from a persona vector, ready to become an [`Intervention`].
#[derive(Debug, Clone)]
pub struct Steering {
    /// One entry per block, `[hidden]`.
    block_adds: Vec<Option<Vec<f32>>>,
    /// One entry per block: unit vectors whose component is removed.
    block_ablate: Vec<Option<Vec<f32>>>,
    pub positions: Positions,
}

impl Steering {
    /// `vector` is `[layers + 1][hidden]`, checked against the model's `num_layers` and `hidden`.
    pub fn new(
        vector: &[Vec<f32>],
        layers: SteerLayers,
        coef: f32,
        positions: Positions,
        num_layers: usize,
        hidden: usize,
    ) -> Result<Self> {
        check_shape(vector, num_layers, hidden)?;
        ensure!(
            coef.is_finite(),
            "the steering coefficient must be a finite number, got {coef}"
        );
        let scaled = |row: &[f32]| row.iter().map(|x| coef * x).collect::<Vec<f32>>();
        // What block `l - 1` adds: all of row `l`, or, at every layer, its step from row `l - 1`.
        let add = |l: usize| {
            Ok(match layers {
                SteerLayers::Single(_) => scaled(&vector[l]),
                SteerLayers::All => {
                    let diff: Vec<f32> = vector[l]
                        .iter()
                        .zip(&vector[l - 1])
                        .map(|(a, b)| a - b)
                        .collect();
                    scaled(&diff)
                }
            })
        };
        let block_adds = per_block(layers, num_layers, add)?;
        Ok(Self {
            block_adds,
            block_ablate: vec![None; num_layers],
            positions,
        })
    }

    /// Directional ablation (CAFT, Casademunt et al. 2025): removes the component along
    /// `v̂[l] = v[l] / |v[l]|` from the output of block `l - 1`, at one layer or at every layer
    /// (each with its own row).
    pub fn ablate(
        vector: &[Vec<f32>],
        layers: SteerLayers,
        positions: Positions,
        num_layers: usize,
        hidden: usize,
    ) -> Result<Self> {
        let direction = |l: usize| {
            unit(&vector[l]).with_context(|| {
                format!("persona vector row {l} is zero, so there is no direction to ablate")
            })
        };
        check_shape(vector, num_layers, hidden)?;
        let block_ablate = per_block(layers, num_layers, direction)?;
        Ok(Self {
            block_adds: vec![None; num_layers],
            block_ablate,
            positions,
        })
    }

    /// The intervention for one forward pass; `mask` is `[batch, seq]` (1 = steer this token).
    pub fn intervention(&self, device: &Device, mask: Option<Tensor<2>>) -> Intervention {
        let upload = |rows: &[Option<Vec<f32>>]| {
            rows.iter()
                .map(|v| {
                    v.as_ref().map(|v| {
                        Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), device)
                    })
                })
                .collect::<Vec<_>>()
        };
        Intervention {
            block_adds: upload(&self.block_adds)
                .into_iter()
                .map(|v| v.map(|v| v.unsqueeze::<2>()))
                .collect(),
            block_ablate: upload(&self.block_ablate),
            positions: mask,
        }
    }

    /// One intervention for a batch whose rows are steered differently (or not at all): row `r`
    /// gets `rows[r]`'s additions, gated per token by `mask` (`[batch, seq]`; a row without
    /// steering should be 0 there). `None` when no row is steered. Ablation is per model, not per
    /// row, so steerings that ablate are refused.
    pub fn batch_intervention(
        rows: &[Option<&Steering>],
        mask: Tensor<2>,
        device: &Device,
    ) -> Result<Option<Intervention>> {
        ensure!(
            rows.iter()
                .flatten()
                .all(|s| s.block_ablate.iter().all(Option::is_none)),
            "directional ablation cannot differ per row of a batch"
        );
        let Some(first) = rows.iter().flatten().next() else {
            return Ok(None);
        };
        let blocks = first.block_adds.len();
        let hidden = first.block_adds.iter().flatten().next().map_or(0, Vec::len);
        let block_adds = (0..blocks)
            .map(|b| {
                if rows.iter().flatten().all(|s| s.block_adds[b].is_none()) {
                    return None;
                }
                let flat: Vec<f32> = rows
                    .iter()
                    .flat_map(|s| match s.and_then(|s| s.block_adds[b].as_ref()) {
                        Some(v) => v.clone(),
                        None => vec![0.0; hidden],
                    })
                    .collect();
                Some(Tensor::from_data(
                    TensorData::new(flat, [rows.len(), hidden]),
                    device,
                ))
            })
            .collect();
        Ok(Some(Intervention {
            block_adds,
            block_ablate: vec![None; blocks],
            positions: Some(mask),
        }))
    }
}

/// One entry per block: `row(l)` at the output of block `l - 1` for each hidden-state row `l`
/// that `layers` names, `None` elsewhere.
fn per_block(
    layers: SteerLayers,
    num_layers: usize,
    mut row: impl FnMut(usize) -> Result<Vec<f32>>,
) -> Result<Vec<Option<Vec<f32>>>> {
    match layers {
        SteerLayers::Single(l) => {
            check_layer(l, num_layers)?;
            (0..num_layers)
                .map(|b| {
                    if b + 1 == l {
                        row(l).map(Some)
                    } else {
                        Ok(None)
                    }
                })
                .collect()
        }
        SteerLayers::All => (1..=num_layers).map(|l| row(l).map(Some)).collect(),
    }
}

fn check_layer(l: usize, num_layers: usize) -> Result<()> {
    ensure!(
        (1..=num_layers).contains(&l),
        "steering layer {l} is out of range 1..={num_layers} (layer 0 is the embedding output)"
    );
    Ok(())
}

/// `v / |v|`; `None` for the zero vector, which has no direction.
pub fn unit(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0).then(|| v.iter().map(|x| x / norm).collect())
}

/// Refuses NaN and infinite values: steering with one trains on NaN, a projection on one is NaN.
/// `what` names the vector in the error.
pub fn ensure_finite(rows: &[Vec<f32>], what: &str) -> Result<()> {
    match rows
        .iter()
        .enumerate()
        .find_map(|(l, r)| r.iter().find(|x| !x.is_finite()).map(|x| (l, x)))
    {
        Some((l, x)) => bail!("{what}: row {l} holds a non-finite value ({x})"),
        None => Ok(()),
    }
}

fn check_shape(vector: &[Vec<f32>], num_layers: usize, hidden: usize) -> Result<()> {
    ensure!(
        vector.len() == num_layers + 1,
        "persona vector has {} layers, the model needs {} (layers + 1)",
        vector.len(),
        num_layers + 1
    );
    ensure!(
        vector.iter().all(|row| row.len() == hidden),
        "persona vector rows have size {}, the model's hidden size is {hidden}",
        vector[0].len()
    );
    ensure_finite(vector, "persona vector")
}
