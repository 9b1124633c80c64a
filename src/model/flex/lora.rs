//! A frozen linear layer with its LoRA adapter, `y = x·W (+ bias) + s·(x·A)·B`, as one autodiff
//! operation on flex. Forward: `xa = x·A`, `y = x·W`, then `s·xa·B` accumulated into `y` by the
//! same matrix kernel (no adapter output, scaling or sum as separate passes over `[n, out]`).
//! Backward, with `gb = s·dy·Bᵀ`: `dx = dy·Wᵀ + gb·Aᵀ` (the second accumulated into the first),
//! `dA = xᵀ·gb`, `dB = s·xaᵀ·dy`. `W` and the bias get no gradient (they are frozen).

use super::linear::product;
use super::{common_strategy, is_flex, lift, matmul_par, View};
use crate::model::lora::LoraLinear;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, DispatchKindConversion, DispatchTensor, Flex};
use burn::tensor::{DType, GradientCheckpointingStrategy, Tensor, TensorData};

/// `x·W (+ bias) + s·(x·A)·B` for `x` `[batch, seq, in]`, or `None` when these tensors are not for
/// the fused kernel (another backend or dtype, a weight or bias on the autodiff graph, inputs
/// with different checkpointing strategies).
pub(crate) fn project(x: &Tensor<3>, layer: &LoraLinear) -> Option<Tensor<3>> {
    let frozen_ok = !layer.weight.is_autodiff() && layer.bias.is_none_or(|b| !b.is_autodiff());
    let f32_flex = x.dtype() == DType::F32
        && [layer.weight, layer.a, layer.b]
            .iter()
            .all(|t| t.dtype() == DType::F32 && is_flex(&t.device()))
        && layer.bias.is_none_or(|b| b.dtype() == DType::F32)
        && is_flex(&x.device());
    if !frozen_ok || !f32_flex {
        return None;
    }
    let [b, t, _] = x.dims();
    let frozen = Frozen::new(layer)?;
    let strategies = [
        x.gradient_checkpointing_strategy(),
        layer.a.gradient_checkpointing_strategy(),
        layer.b.gradient_checkpointing_strategy(),
    ];
    let out = match common_strategy(&strategies)? {
        None => {
            let [x, a, bm] = [
                x.clone().reshape([b * t, frozen.d_in]),
                layer.a.clone(),
                layer.b.clone(),
            ]
            .map(|m| m.try_into_primitive::<Flex>().ok());
            let parts = Parts::new(x?, a?, bm?, frozen, layer.scale);
            Tensor::from_primitive::<Flex>(forward(&parts).0)
        }
        Some(s @ GradientCheckpointingStrategy::Disabled) => {
            tracked::<NoCheckpointing>(x, layer, frozen, s)?
        }
        Some(s @ GradientCheckpointingStrategy::Balanced) => {
            tracked::<BalancedCheckpointing>(x, layer, frozen, s)?
        }
    };
    let d_out = out.dims()[1];
    Some(out.reshape([b, t, d_out]))
}

/// The forward pass on the autodiff graph, with [`LoraBackward`] as its backward step.
fn tracked<C: CheckpointStrategy>(
    x: &Tensor<3>,
    layer: &LoraLinear,
    frozen: Frozen,
    strategy: GradientCheckpointingStrategy,
) -> Option<Tensor<2>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let [b, t, d_in] = x.dims();
    let inputs = [
        lift(&x.clone().reshape([b * t, d_in]), strategy),
        lift(layer.a, strategy),
        lift(layer.b, strategy),
    ]
    .map(|m| m.try_into_primitive::<Autodiff<Flex, C>>().ok());
    let [x, a, bm] = inputs;
    let (x, a, bm) = (x?, a?, bm?);
    let parts = Parts::new(
        x.primitive().clone(),
        a.primitive().clone(),
        bm.primitive().clone(),
        frozen,
        layer.scale,
    );
    let (y, xa) = forward(&parts);
    let y = match LoraBackward
        .prepare::<C>([x.node(), a.node(), bm.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(Saved { parts, xa }, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(y))
}

/// The frozen weight and bias.
#[derive(Clone, Debug)]
struct Frozen {
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    d_in: usize,
    d_out: usize,
}

impl Frozen {
    fn new(layer: &LoraLinear) -> Option<Self> {
        let [d_in, d_out] = layer.weight.dims();
        let weight = layer.weight.clone().try_into_primitive::<Flex>().ok()?;
        let bias = match layer.bias {
            Some(b) => Some(b.clone().try_into_primitive::<Flex>().ok()?.to_contiguous()),
            None => None,
        };
        Some(Self {
            weight: weight.to_contiguous(),
            bias,
            d_in,
            d_out,
        })
    }
}

/// The inputs, contiguous: `x` `[n, in]`, `A`, `B`.
#[derive(Clone, Debug)]
struct Parts {
    x: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
    frozen: Frozen,
    scale: f32,
    n: usize,
    r: usize,
}

impl Parts {
    fn new(x: FlexTensor, a: FlexTensor, b: FlexTensor, frozen: Frozen, scale: f32) -> Self {
        let n = x.layout().shape()[0];
        let r = a.layout().shape()[1];
        Self {
            x: x.to_contiguous(),
            a: a.to_contiguous(),
            b: b.to_contiguous(),
            frozen,
            scale,
            n,
            r,
        }
    }

    fn x(&self) -> View<'_> {
        View::row_major(values(&self.x), self.n, self.frozen.d_in)
    }

    fn w(&self) -> View<'_> {
        View::row_major(
            values(&self.frozen.weight),
            self.frozen.d_in,
            self.frozen.d_out,
        )
    }

    fn a(&self) -> View<'_> {
        View::row_major(values(&self.a), self.frozen.d_in, self.r)
    }

    fn b(&self) -> View<'_> {
        View::row_major(values(&self.b), self.r, self.frozen.d_out)
    }
}

fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

fn tensor(values: Vec<f32>, shape: [usize; 2]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `y` `[n, out]` and `xa = x·A` `[n, r]`.
fn forward(p: &Parts) -> (FlexTensor, FlexTensor) {
    let (n, r, d_out) = (p.n, p.r, p.frozen.d_out);
    let xa = product(p.x(), p.a(), None, 1.0);
    let mut y = product(p.x(), p.w(), p.frozen.bias.as_ref().map(values), 1.0);
    matmul_par(&mut y, View::row_major(&xa, n, r), p.b(), true, p.scale);
    (tensor(y, [n, d_out]), tensor(xa, [n, r]))
}

#[derive(Clone, Debug)]
struct Saved {
    parts: Parts,
    xa: FlexTensor,
}

#[derive(Debug)]
struct LoraBackward;

impl Backward<Flex, 3> for LoraBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let [px, pa, pb] = ops.parents;
        let Saved { parts: p, xa } = &ops.state;
        let (n, r, d_in, d_out) = (p.n, p.r, p.frozen.d_in, p.frozen.d_out);
        let dy = View::row_major(values(&dy), n, d_out);
        let gb = product(dy, p.b().t(), None, p.scale);
        let gb_view = View::row_major(&gb, n, r);
        if let Some(px) = px {
            let mut dx = product(dy, p.w().t(), None, 1.0);
            matmul_par(&mut dx, gb_view, p.a().t(), true, 1.0);
            grads.register::<Flex>(px.id, tensor(dx, [n, d_in]));
        }
        if let Some(pa) = pa {
            let da = product(p.x().t(), gb_view, None, 1.0);
            grads.register::<Flex>(pa.id, tensor(da, [d_in, r]));
        }
        if let Some(pb) = pb {
            let xa = View::row_major(values(xa), n, r);
            let db = product(xa.t(), dy, None, p.scale);
            grads.register::<Flex>(pb.id, tensor(db, [r, d_out]));
        }
    }
}
