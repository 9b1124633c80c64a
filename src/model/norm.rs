//! RMSNorm, the transformer's one normalisation. On the flex CPU backend (f32, a frozen scale) a
//! fused kernel ([`super::flex::rms_norm`]) computes it and its gradient in one pass each; other
//! backends and dtypes take burn's `RmsNorm`, which the fused kernel is tested against.

use super::flex;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

/// `x / √(mean(x²) + ε) · γ` over the last dimension.
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    match rms_norm_fused(norm, &x) {
        Some(y) => y,
        None => norm.forward(x),
    }
}

/// The fused kernel, or `None` when it does not apply (another backend or dtype, a scale on the
/// autodiff graph).
pub fn rms_norm_fused<const D: usize>(norm: &RmsNorm, x: &Tensor<D>) -> Option<Tensor<D>> {
    flex::rms_norm::rms_norm(x, &norm.gamma.val(), norm.epsilon)
}
