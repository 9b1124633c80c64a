//! Scaled dot-product attention under a boolean mask, with grouped queries: the one attention
//! the transformer runs. On the flex CPU backend (f32, no soft cap) a fused kernel
//! ([`super::flex::attention`]) computes it, forward and backward, without repeating keys and
//! values per query head or materialising the intermediate tensors of burn's autodiff; other
//! backends and dtypes take [`attention_reference`], burn's attention over repeated keys and
//! values, which the fused kernel is tested against.

use super::flex;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor, TensorData};
use std::sync::Arc;

/// `softmax(scores, hidden keys at −∞)·v` where the scores are `q·kᵀ·scale`, soft-capped to
/// `cap · tanh(scores / cap)` when there is a cap (Gemma 2).
///
/// # Shapes
/// - q: `[batch, heads, seq, head_dim]`
/// - k, v: `[batch, kv_heads, keys, head_dim]`, `heads` a multiple of `kv_heads`; query head `i`
///   uses KV head `i / (heads / kv_heads)`
/// - masked: `[batch, seq, keys]` flattened, true = the key is hidden from the query
/// - output: `[batch, heads, seq, head_dim]`
pub fn attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    masked: &Arc<[bool]>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<4> {
    let fused = match softcap {
        None => attention_fused(&q, &k, &v, masked, scale),
        Some(_) => None,
    };
    fused.unwrap_or_else(|| attention_reference(q, k, v, masked, scale, softcap))
}

/// The fused kernel, or `None` when it does not apply to these tensors (another backend or
/// dtype, inputs with different autodiff states, inconsistent shapes).
pub fn attention_fused(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    masked: &Arc<[bool]>,
    scale: f64,
) -> Option<Tensor<4>> {
    flex::attention::attention(q, k, v, masked, scale as f32)
}

/// [`attention`] in tensor operations on any backend.
pub fn attention_reference(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    masked: &Arc<[bool]>,
    scale: f64,
    softcap: Option<f64>,
) -> Tensor<4> {
    let [b, heads, t, _] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    let data = TensorData::new(masked.to_vec(), [b, 1, t, keys]);
    let device = q.device().inner();
    let mask = Tensor::<4, Bool>::from_data(data, &device).expand([b, heads, t, keys]);
    let (k, v) = (
        repeat_kv(k, heads / kv_heads),
        repeat_kv(v, heads / kv_heads),
    );
    let options = AttentionModuleOptions {
        scale: Some(scale),
        softcap,
        is_causal: false,
    };
    burn_attention(q, k, v, Some(mask), None, options)
}

/// Grouped-query attention: each KV head serves `groups` query heads.
fn repeat_kv(x: Tensor<4>, groups: usize) -> Tensor<4> {
    if groups == 1 {
        return x;
    }
    let [b, kvh, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2)
        .expand([b, kvh, groups, t, d])
        .reshape([b, kvh * groups, t, d])
}
