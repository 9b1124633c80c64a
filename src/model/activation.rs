//! The gated MLP activation, `silu(gate)·up`. On the flex CPU backend (f32) a fused kernel
//! ([`super::flex::swiglu`]) computes it and its gradients in one pass each; other backends and
//! dtypes take [`swiglu_reference`], which the fused kernel is tested against.

use super::flex;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;

/// `silu(gate) · up`, elementwise; `gate` and `up` of one shape.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    match swiglu_fused(&gate, &up) {
        Some(out) => out,
        None => swiglu_reference(gate, up),
    }
}

/// The fused kernel, or `None` when it does not apply to these tensors (another backend or
/// dtype, different shapes or autodiff states).
pub fn swiglu_fused<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    flex::swiglu::swiglu(gate, up)
}

/// [`swiglu`] in tensor operations on any backend.
pub fn swiglu_reference<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    silu(gate) * up
}
