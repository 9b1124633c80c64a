//! Rotary embedding in the `rotate_half` layout, `y = x·cos + rotate_half(x)·sin` with
//! `rotate_half(x) = [−x₂, x₁]`, as one autodiff operation on flex: one pass forward, reading
//! `x` in place (the model passes a transposed view), and one backward,
//! `dx₁ = dy₁·cos₁ + dy₂·sin₂`, `dx₂ = dy₂·cos₂ − dy₁·sin₁`. Burn's autodiff runs it as two
//! slices, a negation, a concatenation, two products and a sum, each a pass over memory with its
//! own backward.

use super::{is_flex, strided};
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

/// The rotation of `x` (`[batch, heads, seq, head_dim]`) by the tables `cos`, `sin`
/// (`[batch, 1, seq, head_dim]`, off the autodiff graph), or `None` when these tensors are not
/// for the fused kernel.
pub(crate) fn rope(x: &Tensor<4>, cos: &Tensor<4>, sin: &Tensor<4>) -> Option<Tensor<4>> {
    let [b, _, t, d] = x.dims();
    let eligible = [x, cos, sin]
        .iter()
        .all(|t| t.dtype() == DType::F32 && is_flex(&t.device()))
        && !cos.is_autodiff()
        && !sin.is_autodiff()
        && cos.dims() == [b, 1, t, d]
        && sin.dims() == [b, 1, t, d]
        && d % 2 == 0;
    if !eligible {
        return None;
    }
    // Contiguous already (built on the host), so this shares their buffers rather than copying.
    let table = |t: &Tensor<4>| Some(t.clone().try_into_primitive::<Flex>().ok()?.to_contiguous());
    let tables = Tables {
        cos: table(cos)?,
        sin: table(sin)?,
    };
    match x.gradient_checkpointing_strategy() {
        None => {
            let x = x.clone().try_into_primitive::<Flex>().ok()?;
            Some(Tensor::from_primitive::<Flex>(rotate(x, &tables, false)))
        }
        Some(GradientCheckpointingStrategy::Disabled) => tracked::<NoCheckpointing>(x, tables),
        Some(GradientCheckpointingStrategy::Balanced) => {
            tracked::<BalancedCheckpointing>(x, tables)
        }
    }
}

/// The tables, `[batch, 1, seq, head_dim]` each, contiguous.
#[derive(Clone, Debug)]
struct Tables {
    cos: FlexTensor,
    sin: FlexTensor,
}

fn tracked<C: CheckpointStrategy>(x: &Tensor<4>, tables: Tables) -> Option<Tensor<4>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let x = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
    let y = rotate(x.primitive().clone(), &tables, false);
    let y = match RopeBackward
        .prepare::<C>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(tables, y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(y))
}

/// `x` rotated forward, or backward (the transposed rotation, for the gradient) with `inverse`,
/// into a contiguous `[batch, heads, seq, head_dim]` tensor.
fn rotate(x: FlexTensor, tables: &Tables, inverse: bool) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let (b, h, t, d) = (shape[0], shape[1], shape[2], shape[3]);
    let (x, offset, s) = strided(x);
    let values = x.storage::<f32>();
    let [cos, sin] = [&tables.cos, &tables.sin].map(|t| t.as_slice::<f32>().expect("f32"));
    let mut out = vec![0f32; b * h * t * d];
    out.par_chunks_mut(t * d).enumerate().for_each_init(
        || vec![0f32; d],
        |x, (i, out)| {
            let (row, head) = (i / h, i % h);
            for (pos, y) in out.chunks_exact_mut(d).enumerate() {
                let at = offset + row * s[0] + head * s[1] + pos * s[2];
                match s[3] {
                    1 => x.copy_from_slice(&values[at..at + d]),
                    step => x
                        .iter_mut()
                        .enumerate()
                        .for_each(|(j, x)| *x = values[at + j * step]),
                }
                let table = (row * t + pos) * d;
                let cos = &cos[table..table + d];
                let sin = &sin[table..table + d];
                rotate_row(x, (cos, sin), inverse, y);
            }
        },
    );
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// One row: `y₁ = x₁·cos₁ − x₂·sin₁`, `y₂ = x₂·cos₂ + x₁·sin₂`; inverse:
/// `y₁ = x₁·cos₁ + x₂·sin₂`, `y₂ = x₂·cos₂ − x₁·sin₁`.
fn rotate_row(x: &[f32], (cos, sin): (&[f32], &[f32]), inverse: bool, y: &mut [f32]) {
    let half = y.len() / 2;
    let (y1, y2) = y.split_at_mut(half);
    let (x1, x2) = x.split_at(half);
    let (c1, c2) = cos.split_at(half);
    let (s1, s2) = sin.split_at(half);
    if inverse {
        for j in 0..half {
            y1[j] = x1[j] * c1[j] + x2[j] * s2[j];
            y2[j] = x2[j] * c2[j] - x1[j] * s1[j];
        }
    } else {
        for j in 0..half {
            y1[j] = x1[j] * c1[j] - x2[j] * s1[j];
            y2[j] = x2[j] * c2[j] + x1[j] * s2[j];
        }
    }
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    type State = Tables;

    fn backward(self, ops: Ops<Tables, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            grads.register::<Flex>(parent.id, rotate(dy, &ops.state, true));
        }
    }
}
