//! RMSNorm with a frozen scale, `x / √(mean(x²) + ε) · γ` over the last dimension, as one autodiff
//! operation on flex: one pass forward, keeping each row's RMS, and one backward,
//! `dx = (dy·γ − x·Σ(dy·γ·x)/(n·rms²)) / rms`. Burn's autodiff runs it as six tensor operations
//! and their backward passes.

use super::{common_strategy, is_flex, kernels, lift};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
use burn::tensor::{DType, GradientCheckpointingStrategy, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// Rows per rayon task.
const ROWS: usize = 32;

/// The norm of `x` (`[.., n]`) with scale `gamma` (`[n]`, off the autodiff graph), or `None` when
/// these tensors are not for the fused kernel.
pub(crate) fn rms_norm<const D: usize>(
    x: &Tensor<D>,
    gamma: &Tensor<1>,
    eps: f64,
) -> Option<Tensor<D>> {
    let eligible = [x.dtype(), gamma.dtype()] == [DType::F32; 2]
        && !gamma.is_autodiff()
        && is_flex(&x.device())
        && is_flex(&gamma.device())
        && x.dims()[D - 1] == gamma.dims()[0];
    if !eligible {
        return None;
    }
    let gamma = gamma
        .clone()
        .try_into_primitive::<Flex>()
        .ok()?
        .to_contiguous();
    let eps = eps as f32;
    match common_strategy(&[x.gradient_checkpointing_strategy()])? {
        None => {
            let x = x.clone().try_into_primitive::<Flex>().ok()?.to_contiguous();
            Some(Tensor::from_primitive::<Flex>(forward(&x, &gamma, eps).0))
        }
        Some(s @ GradientCheckpointingStrategy::Disabled) => {
            tracked::<NoCheckpointing, D>(lift(x, s), gamma, eps)
        }
        Some(s @ GradientCheckpointingStrategy::Balanced) => {
            tracked::<BalancedCheckpointing, D>(lift(x, s), gamma, eps)
        }
    }
}

fn tracked<C: CheckpointStrategy, const D: usize>(
    x: Tensor<D>,
    gamma: FlexTensor,
    eps: f32,
) -> Option<Tensor<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = x.try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let values = x.primitive().to_contiguous();
    let (y, rms) = forward(&values, &gamma, eps);
    let y = match RmsNormBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((values, gamma, rms.into()), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(y))
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// The normed rows, in `x`'s shape, and each row's RMS.
fn forward(x: &FlexTensor, gamma: &FlexTensor, eps: f32) -> (FlexTensor, Vec<f32>) {
    let gamma = values(gamma);
    let n = gamma.len();
    let rows = x.layout().num_elements() / n;
    let (mut y, mut rms) = (vec![0f32; rows * n], vec![0f32; rows]);
    y.par_chunks_mut(ROWS * n)
        .zip(rms.par_chunks_mut(ROWS))
        .zip(values(x).par_chunks(ROWS * n))
        .for_each(|((y, rms), x)| {
            for ((y, rms), x) in y.chunks_exact_mut(n).zip(rms).zip(x.chunks_exact(n)) {
                *rms = (kernels::dot(x, x) / n as f32 + eps).sqrt();
                kernels::rms_scale(x, gamma, *rms, y);
            }
        });
    let shape = x.layout().shape().clone();
    (FlexTensor::from_data(TensorData::new(y, shape)), rms)
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 1> for RmsNormBackward {
    /// The input, the scale and each row's RMS.
    type State = (FlexTensor, FlexTensor, Arc<[f32]>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [parent] = ops.parents;
        let Some(parent) = parent else { return };
        let (x, gamma, rms) = &ops.state;
        let gamma = values(gamma);
        let n = gamma.len();
        let mut dx = vec![0f32; x.layout().num_elements()];
        dx.par_chunks_mut(ROWS * n)
            .zip(values(&dy).par_chunks(ROWS * n))
            .zip(values(x).par_chunks(ROWS * n).zip(rms.par_chunks(ROWS)))
            .for_each(|((dx, dy), (x, rms))| {
                let rows = dx.chunks_exact_mut(n).zip(dy.chunks_exact(n));
                for ((dx, dy), (x, &rms)) in rows.zip(x.chunks_exact(n).zip(rms)) {
                    kernels::rms_norm_grad(dy, x, gamma, rms, dx);
                }
            });
        let shape = x.layout().shape().clone();
        grads.register::<Flex>(parent.id, FlexTensor::from_data(TensorData::new(dx, shape)));
    }
}
