//! The transformer and the values that flow through its forward pass. Nothing here knows about
//! files: loaders implement [`ParamSource`] to map a checkpoint onto the model.

pub mod activation;
pub mod cache;
pub mod config;
mod flex;
pub mod head_loss;
pub mod hf_config;
pub mod linear;
pub mod lora;
pub mod masked_attention;
pub mod norm;
pub mod rope;
pub mod transformer;

pub use cache::KvCache;
pub use config::{
    Activation, Architecture, BlockStyle, LayerType, Llama3RopeScaling, ModelConfig, RopeScaling,
};
pub use head_loss::HeadWeight;
pub use lora::Adapters;
pub use transformer::CausalLm;

use anyhow::Result;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Named parameters in the Hugging Face layout (`model.layers.0.self_attn.q_proj.weight`, shape
/// `[out, in]`), as f32. `shape` is what the model expects, so a source can report a mismatch
/// against the file it reads from.
pub trait ParamSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<TensorData>;
}

/// One forward pass's tokens and their bookkeeping.
pub struct ForwardInput {
    /// `[batch, seq]`
    pub input_ids: Tensor<2, Int>,
    /// Rotary position of every token, `[batch][seq]`; differs per row under left padding.
    pub positions: Vec<Vec<usize>>,
    /// Which keys are real tokens, `[batch][cached + seq]`; `None` when nothing is padded.
    pub key_mask: Option<Vec<Vec<bool>>>,
    /// The largest id of `input_ids`, kept on the host so the forward pass can refuse an id
    /// outside the vocabulary without reading the tensor back. Private: only the constructors
    /// below, which see every id, set it.
    max_id: u32,
}

impl ForwardInput {
    /// Rows of any length padded on the left with `pad_id` (masked), so every row ends in the
    /// last column; positions count from each row's first real token. What generation and
    /// next-token scoring need.
    pub fn left_padded(rows: &[impl AsRef<[u32]>], pad_id: u32, device: &Device) -> Self {
        let b = rows.len();
        let width = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * width);
        let mut positions = Vec::with_capacity(b);
        let mut key_mask = Vec::with_capacity(b);
        for row in rows {
            let row = row.as_ref();
            let pad = width - row.len();
            ids.extend(std::iter::repeat_n(pad_id, pad).chain(row.iter().copied()));
            positions.push((0..width).map(|j| j.saturating_sub(pad)).collect());
            key_mask.push((0..width).map(|j| j >= pad).collect());
        }
        Self::new(ids, [b, width], positions, Some(key_mask), device)
    }

    /// Rows of any length padded on the right (id 0, masked), positions from 0; no mask when no
    /// row is padded. What teacher-forced passes (training, probes, continuation scoring) need.
    pub fn right_padded(rows: &[impl AsRef<[u32]>], device: &Device) -> Self {
        Self::right_padded_after(rows, 0, device)
    }

    /// As [`ForwardInput::right_padded`], after `past` cached positions that every row shares
    /// (a prompt whose keys and values serve several continuations): positions from `past`.
    pub fn right_padded_after(rows: &[impl AsRef<[u32]>], past: usize, device: &Device) -> Self {
        let b = rows.len();
        let seq = rows.iter().map(|r| r.as_ref().len()).max().unwrap_or(0);
        let mut ids = vec![0; b * seq];
        let mut key_mask = vec![vec![false; past + seq]; b];
        for (r, row) in rows.iter().enumerate() {
            key_mask[r][..past].fill(true);
            for (i, &id) in row.as_ref().iter().enumerate() {
                ids[r * seq + i] = id;
                key_mask[r][past + i] = true;
            }
        }
        let padded = key_mask.iter().flatten().any(|&real| !real);
        let positions = vec![(past..past + seq).collect(); b];
        Self::new(ids, [b, seq], positions, padded.then_some(key_mask), device)
    }

    /// Unpadded rows of equal length starting at position `start`.
    pub fn dense(ids: &[Vec<u32>], start: usize, device: &Device) -> Self {
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        Self::new(
            flat,
            [b, t],
            vec![(start..start + t).collect(); b],
            None,
            device,
        )
    }

    /// One new token per row after a cached prefix: row `r` at `positions[r]`, attending to
    /// `key_mask[r]` (the cached keys and itself).
    pub fn decode_step(
        tokens: &[u32],
        positions: &[usize],
        key_mask: Vec<Vec<bool>>,
        device: &Device,
    ) -> Self {
        let positions = positions.iter().map(|&p| vec![p]).collect();
        Self::new(
            tokens.to_vec(),
            [tokens.len(), 1],
            positions,
            Some(key_mask),
            device,
        )
    }

    fn new(
        ids: Vec<u32>,
        shape: [usize; 2],
        positions: Vec<Vec<usize>>,
        key_mask: Option<Vec<Vec<bool>>>,
        device: &Device,
    ) -> Self {
        let max_id = ids.iter().copied().max().unwrap_or(0);
        let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
        Self {
            input_ids: Tensor::from_data(TensorData::new(ids, shape), device),
            positions,
            key_mask,
            max_id,
        }
    }

    /// The largest token id of the input.
    pub fn max_id(&self) -> u32 {
        self.max_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogitsFor {
    All,
    /// Only the last position: what generation needs, and it skips most of the vocab matmul.
    Last,
    #[default]
    None,
}

/// What one forward pass carries besides its tokens, and what it returns: start from
/// [`Forward::logits`] or [`Forward::hidden_states`] and set the rest by field.
#[derive(Default)]
pub struct Forward<'a> {
    /// Keys and values of earlier tokens, attended to and appended to (generation).
    pub cache: Option<&'a mut KvCache>,
    /// LoRA adapters on the blocks' projections.
    pub adapters: Option<&'a Adapters>,
    /// Edits of the residual stream after each block (steering, ablation).
    pub intervention: Option<&'a Intervention>,
    /// Which positions go through the output head.
    pub logits: LogitsFor,
    /// Whether every hidden state is returned.
    pub hidden_states: bool,
}

impl Forward<'_> {
    /// A pass that returns logits at `which` positions and no hidden states.
    pub fn logits(which: LogitsFor) -> Self {
        Self {
            logits: which,
            ..Self::default()
        }
    }

    /// A pass that returns every hidden state and no logits.
    pub fn hidden_states() -> Self {
        Self {
            hidden_states: true,
            ..Self::default()
        }
    }
}

pub struct ForwardOutput {
    pub logits: Option<Tensor<3>>,
    pub hidden_states: Vec<Tensor<3>>,
}

/// Edits of the residual stream at the output of chosen blocks: the explicit intervention point
/// that steering plugs into.
///
/// Entry `l` acts on the output of block `l`, i.e. on hidden-state index `l + 1` in the paper's
/// (and transformers') convention: first the component along `block_ablate[l]` (a unit vector)
/// is removed, then `block_adds[l]` is added. `positions` scales both per token.
#[derive(Debug, Clone)]
pub struct Intervention {
    /// One entry per block, each `[rows, hidden]` with `rows` 1 (the same addition for every
    /// row of the batch) or the batch size (one addition per row, as a server batching requests
    /// with different steering needs).
    pub block_adds: Vec<Option<Tensor<2>>>,
    /// One entry per block, each a unit vector `[hidden]` (directional ablation, as in CAFT).
    pub block_ablate: Vec<Option<Tensor<1>>>,
    /// `[batch, seq]` multiplier (1 = apply, 0 = leave); `None` applies everywhere.
    pub positions: Option<Tensor<2>>,
}

impl Intervention {
    pub(crate) fn apply(&self, block: usize, x: Tensor<3>) -> Tensor<3> {
        // Vectors are f32; they act in the activations' dtype (bf16 models).
        let dtype = x.dtype();
        let gate = |t: Tensor<3>| match &self.positions {
            Some(p) => p.clone().cast(dtype).unsqueeze_dim::<3>(2) * t,
            None => t,
        };
        let mut x = x;
        if let Some(Some(u)) = self.block_ablate.get(block) {
            // A product and a sum rather than a `[h, 1]` matmul: on CubeCL's CPU runtime the
            // matmul burn picks for it (or its backward) asks 66,560 bytes of shared memory of a
            // 49,152-byte budget, and burn-cubecl unwraps that error.
            let u = u.clone().cast(dtype).unsqueeze::<3>();
            let along = (x.clone() * u.clone()).sum_dim(2);
            let component = along * u;
            x = x - gate(component);
        }
        if let Some(Some(v)) = self.block_adds.get(block) {
            x = x + gate(v.clone().cast(dtype).unsqueeze_dim::<3>(1));
        }
        x
    }
}

/// Row-major `[rows, cols]` → `[cols, rows]`.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
