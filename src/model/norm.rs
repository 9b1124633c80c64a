//! RMSNorm in the two conventions of the supported families. On the flex CPU backend (f32, a
//! frozen weight) a fused kernel ([`super::flex::rms_norm`]) computes it and its gradient in one
//! pass each; other backends and dtypes take the tensor operations, which the fused kernel is
//! tested against.

use super::flex;
use burn::module::{Module, Param};
use burn::tensor::{DType, Tensor};

/// `x / rms(x)` scaled by the weight: by `w` in the activations' dtype (Llama, Qwen:
/// `w · x.to(dtype)`), or by `1 + w` with the product taken in f32 (Gemma:
/// `(x · (1 + w)).to(dtype)`). The weight is kept as the checkpoint stores it.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f64,
    #[module(skip)]
    plus_one: bool,
}

impl RmsNorm {
    pub fn new(weight: Tensor<1>, eps: f64, plus_one: bool) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
            plus_one,
        }
    }

    /// Normalises over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.forward_fused(&x) {
            Some(y) => y,
            None => self.forward_reference(x),
        }
    }

    /// The fused kernel, or `None` when it does not apply (another backend or dtype, a weight on
    /// the autodiff graph).
    pub fn forward_fused<const D: usize>(&self, x: &Tensor<D>) -> Option<Tensor<D>> {
        let weight = self.weight.val();
        if weight.dtype() != DType::F32 {
            return None;
        }
        // In f32 the two conventions differ only by the scale.
        let scale = if self.plus_one { weight + 1.0 } else { weight };
        flex::rms_norm::rms_norm(x, &scale, self.eps)
    }

    /// [`RmsNorm::forward`] in tensor operations on any backend.
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dtype = x.dtype();
        let rms = (x.clone().cast(DType::F32).square().mean_dim(D - 1) + self.eps).sqrt();
        let weight = self.weight.val();
        if self.plus_one {
            let scale = weight.cast(DType::F32) + 1.0;
            ((x.cast(DType::F32) / rms) * scale.unsqueeze()).cast(dtype)
        } else {
            (x / rms.cast(dtype)) * weight.unsqueeze()
        }
    }
}
