//! `silu(gate) · up`, the gated MLP activation, as one autodiff operation on flex: one pass
//! forward and one backward (`d_gate = g·up·σ(1 + gate·(1 − σ))`, `d_up = g·gate·σ`), with a
//! vectorized `exp`. Burn's autodiff runs it as a sigmoid, two products and their backward
//! passes, about 20 ns per element on SmolLM2's MLP against ~1 here.

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

/// Elements per rayon task.
const CHUNK: usize = 16 * 1024;

/// `silu(gate) · up`, or `None` when these tensors are not for the fused kernel (another backend
/// or dtype, different shapes or checkpointing strategies).
pub(crate) fn swiglu<const D: usize>(gate: &Tensor<D>, up: &Tensor<D>) -> Option<Tensor<D>> {
    let eligible = [gate, up]
        .iter()
        .all(|t| t.dtype() == DType::F32 && is_flex(&t.device()))
        && gate.dims() == up.dims();
    if !eligible {
        return None;
    }
    let strategies = [gate, up].map(|t| t.gradient_checkpointing_strategy());
    match common_strategy(&strategies)? {
        None => {
            let g = gate.clone().try_into_primitive::<Flex>().ok()?;
            let u = up.clone().try_into_primitive::<Flex>().ok()?;
            Some(Tensor::from_primitive::<Flex>(forward(&g, &u)))
        }
        Some(s @ GradientCheckpointingStrategy::Disabled) => {
            tracked::<NoCheckpointing, D>(lift(gate, s), lift(up, s))
        }
        Some(s @ GradientCheckpointingStrategy::Balanced) => {
            tracked::<BalancedCheckpointing, D>(lift(gate, s), lift(up, s))
        }
    }
}

fn tracked<C: CheckpointStrategy, const D: usize>(
    gate: Tensor<D>,
    up: Tensor<D>,
) -> Option<Tensor<D>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let gate = gate.try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let up = up.try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let (g, u) = (
        gate.primitive().to_contiguous(),
        up.primitive().to_contiguous(),
    );
    let out = forward(&g, &u);
    let out = match SwigluBackward
        .prepare::<C>([gate.node(), up.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((g, u), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// `values` in `t`'s shape.
fn like(t: &FlexTensor, values: Vec<f32>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, t.layout().shape().clone()))
}

fn forward(gate: &FlexTensor, up: &FlexTensor) -> FlexTensor {
    let (gate, up) = (gate.to_contiguous(), up.to_contiguous());
    let mut out = vec![0f32; gate.layout().num_elements()];
    out.par_chunks_mut(CHUNK)
        .zip(values(&gate).par_chunks(CHUNK))
        .zip(values(&up).par_chunks(CHUNK))
        .for_each(|((o, g), u)| kernels::swiglu(g, u, o));
    like(&gate, out)
}

#[derive(Debug)]
struct SwigluBackward;

impl Backward<Flex, 2> for SwigluBackward {
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (gate, up) = &ops.state;
        let n = gate.layout().num_elements();
        let (mut d_gate, mut d_up) = (vec![0f32; n], vec![0f32; n]);
        d_gate
            .par_chunks_mut(CHUNK)
            .zip(d_up.par_chunks_mut(CHUNK))
            .zip(values(&grad).par_chunks(CHUNK))
            .zip(
                values(gate)
                    .par_chunks(CHUNK)
                    .zip(values(up).par_chunks(CHUNK)),
            )
            .for_each(|(((dg, du), g), (x, u))| kernels::swiglu_grad(g, x, u, dg, du));
        let [p_gate, p_up] = ops.parents;
        if let Some(p) = p_gate {
            grads.register::<Flex>(p.id, like(gate, d_gate));
        }
        if let Some(p) = p_up {
            grads.register::<Flex>(p.id, like(up, d_up));
        }
    }
}
