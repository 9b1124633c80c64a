//! Rotary position embeddings in Hugging Face's `rotate_half` layout.
//!
//! burn's `RotaryEncoding` rotates adjacent pairs, which is a different (permuted) convention, so
//! HF checkpoints need this one. Angles are computed on the host in f32, as transformers does,
//! because positions differ per row under left padding.

use super::config::{LayerType, Llama3RopeScaling, ModelConfig, RopeScaling};
use burn::tensor::{Device, Tensor, TensorData};

#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// The rotation of layers of `kind`: local layers with a base of their own (Gemma 3) use
    /// it unscaled; every other layer uses `rope_theta` and `rope_scaling`.
    pub fn new(config: &ModelConfig, kind: LayerType) -> Self {
        let (theta, scaling) = match (kind, config.rope_local_theta) {
            (LayerType::Sliding, Some(local)) => (local, None),
            _ => (config.rope_theta, config.rope_scaling.as_ref()),
        };
        let dim = config.head_dim;
        let mut inv_freq: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / theta.powf(i as f32 / dim as f32))
            .collect();
        match scaling {
            Some(RopeScaling::Llama3(s)) => inv_freq = llama3_scale(&inv_freq, s),
            Some(RopeScaling::Linear { factor }) => inv_freq.iter_mut().for_each(|x| *x /= factor),
            Some(RopeScaling::FreqFactors(f)) => {
                inv_freq.iter_mut().zip(f).for_each(|(x, f)| *x /= f)
            }
            None => {}
        }
        Self { inv_freq }
    }

    /// `cos` and `sin` tables of shape `[batch, 1, seq, head_dim]` for the given positions.
    pub fn tables(&self, positions: &[Vec<usize>], device: &Device) -> (Tensor<4>, Tensor<4>) {
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(batch * seq * half * 2);
        let mut sin = Vec::with_capacity(batch * seq * half * 2);
        for row in positions {
            for &p in row {
                let angles: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        let shape = [batch, 1, seq, half * 2];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` of shape `[batch, heads, seq, head_dim]`. On the flex
/// CPU backend (f32) a fused kernel ([`super::flex::rope`]) computes it and its gradient in one
/// pass each; elsewhere [`apply_reference`] does, which the fused kernel is tested against.
pub fn apply(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    match apply_fused(&x, cos, sin) {
        Some(y) => y,
        None => apply_reference(x, cos, sin),
    }
}

/// The fused kernel, or `None` when it does not apply (another backend or dtype, tables on the
/// autodiff graph).
pub fn apply_fused(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    super::flex::rope::rope(x, cos, sin)
}

/// [`apply`] in tensor operations on any backend.
pub fn apply_reference(x: Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<4> {
    let [b, h, t, d] = x.dims();
    let half = d / 2;
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// transformers' `_compute_llama3_parameters`: long wavelengths are divided by `factor`, short
/// ones kept, and the band between interpolated smoothly.
fn llama3_scale(inv_freq: &[f32], s: &Llama3RopeScaling) -> Vec<f32> {
    let old_len = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_len / s.low_freq_factor;
    let high_freq_wavelen = old_len / s.high_freq_factor;
    inv_freq
        .iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen > low_freq_wavelen {
                f / s.factor
            } else if wavelen < high_freq_wavelen {
                f
            } else {
                let smooth = (old_len / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}
