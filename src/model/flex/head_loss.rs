//! The fused head loss on the flex backend, as a custom autodiff operation.
//!
//! Rows are split into blocks, one rayon task each; a task walks the vocabulary in tiles: one
//! `gemm` call gives the block's logits for the tile (small enough to stay in cache), and the
//! online log-sum-exp folds it into each row's running maximum `m` and sum. On the autodiff graph
//! the same walk also gives the gradient, flash-attention style: the tile becomes `exp(l − m)` in
//! place and `tile · W_tileᵀ` is accumulated into `[rows, hidden]`, rescaled by `exp(m_old − m)`
//! whenever a row's maximum grows; at the end, divided by the sum and less the target's column of
//! `W`, that is `(softmax − onehot)·Wᵀ`, and the backward pass only scales it by the loss's
//! gradient. Two head matmuls in all, as the tensor-op path does (forward and backward), with no
//! `[n, vocab]` buffer (that path has several, none of which fits in cache) and one `exp` per
//! logit.

use super::{is_flex, kernels, matmul, scalar, View};
use crate::model::HeadWeight;
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

/// Vocabulary entries per tile: a 256-row block's tile is 512 KiB, a quarter of an L2 cache.
/// Measured on SmolLM2's head (2 cores, 1,020 rows; with a backward pass that recomputed the
/// tiles): 2048 × 128 rows took 15% more CPU time than 512 × 256; 256 to 1024 entries with 256
/// or 512 rows were alike.
const VOCAB_TILE: usize = 512;
/// The most rows per task (fewer when that leaves a thread idle): each task packs every tile of
/// the head weight for `gemm` once, so larger blocks pack less.
const MAX_ROW_BLOCK: usize = 256;
const MIN_ROW_BLOCK: usize = 8;

/// The head's weight for the fused kernels: f32 on flex and off the autodiff graph, as `rows`.
fn flex_head(rows: &Tensor<2>, head: &HeadWeight) -> Option<Head> {
    let weight = head.weight();
    let eligible = rows.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && !weight.is_autodiff()
        && is_flex(&rows.device())
        && is_flex(&weight.device());
    let weight = weight.clone().try_into_primitive::<Flex>().ok()?;
    eligible.then(|| Head::new(weight, matches!(head, HeadWeight::Tied(_))))
}

/// The logits `[n, vocab]` of `rows` off the autodiff graph, written by one matrix product in
/// place (the tensor-op path transposes a tied head's `[vocab, n]` result into a copy), or `None`
/// when these tensors are not for it.
pub(crate) fn logits(rows: &Tensor<2>, head: &HeadWeight) -> Option<Tensor<2>> {
    if rows.is_autodiff() {
        return None;
    }
    let head = flex_head(rows, head)?;
    let hidden = rows
        .clone()
        .try_into_primitive::<Flex>()
        .ok()?
        .to_contiguous();
    let n = hidden.layout().shape()[0];
    let rows = View::row_major(hidden.as_slice::<f32>()?, n, head.hidden);
    let out = super::linear::product(rows, head.tile(0, head.vocab), None, 1.0);
    let out = FlexTensor::from_data(TensorData::new(out, [n, head.vocab]));
    Some(Tensor::from_primitive::<Flex>(out))
}

/// The fused loss, or `None` when these tensors are not for it (another backend or dtype, or a
/// head whose weight is on the autodiff graph).
pub(crate) fn nll_sum(rows: &Tensor<2>, head: &HeadWeight, targets: &[u32]) -> Option<Tensor<1>> {
    let head = flex_head(rows, head)?;
    if targets.iter().any(|&t| t as usize >= head.vocab) {
        return None; // the tensor-op path reports it
    }
    let targets: Arc<[u32]> = targets.into();
    match rows.gradient_checkpointing_strategy() {
        None => {
            let hidden = rows.clone().try_into_primitive::<Flex>().ok()?;
            let (loss, _) = forward(&Inputs::new(hidden, head, targets), false);
            Some(Tensor::from_primitive::<Flex>(scalar(loss)))
        }
        Some(GradientCheckpointingStrategy::Disabled) => {
            tracked::<NoCheckpointing>(rows, head, targets)
        }
        Some(GradientCheckpointingStrategy::Balanced) => {
            tracked::<BalancedCheckpointing>(rows, head, targets)
        }
    }
}

/// The forward pass on the autodiff graph, with [`HeadLossBackward`] as its backward step.
fn tracked<C: CheckpointStrategy>(
    rows: &Tensor<2>,
    head: Head,
    targets: Arc<[u32]>,
) -> Option<Tensor<1>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let rows = rows
        .clone()
        .try_into_primitive::<Autodiff<Flex, C>>()
        .ok()?;
    let inputs = Inputs::new(rows.primitive().clone(), head, targets);
    let out = match HeadLossBackward
        .prepare::<C>([rows.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (loss, grad) = forward(&inputs, true);
            let n = inputs.targets.len();
            let grad = FlexTensor::from_data(TensorData::new(grad, [n, inputs.head.hidden]));
            prep.finish(grad, scalar(loss))
        }
        OpsKind::UnTracked(prep) => prep.finish(scalar(forward(&inputs, false).0)),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

/// The head weight as the right-hand side of `hidden · W`: element `(k, v)` (hidden unit `k`,
/// vocabulary entry `v`) at `k·k_stride + v·v_stride` of a contiguous buffer.
#[derive(Clone, Debug)]
struct Head {
    weight: FlexTensor,
    hidden: usize,
    vocab: usize,
    k_stride: usize,
    v_stride: usize,
}

impl Head {
    fn new(weight: FlexTensor, tied: bool) -> Self {
        let weight = weight.to_contiguous();
        let dims = weight.layout().shape().to_vec();
        let (hidden, vocab) = if tied {
            (dims[1], dims[0])
        } else {
            (dims[0], dims[1])
        };
        let (k_stride, v_stride) = if tied { (1, hidden) } else { (vocab, 1) };
        Self {
            weight,
            hidden,
            vocab,
            k_stride,
            v_stride,
        }
    }

    /// `W[:, v0..v0 + width]`, `[hidden, width]`.
    fn tile(&self, v0: usize, width: usize) -> View<'_> {
        let values = self.weight.as_slice::<f32>().expect("contiguous f32");
        View::new(
            values,
            v0 * self.v_stride,
            [self.hidden, width],
            [self.k_stride, self.v_stride],
        )
    }
}

/// The hidden rows `[n, hidden]`, the head and the targets.
struct Inputs {
    hidden: FlexTensor,
    head: Head,
    targets: Arc<[u32]>,
}

impl Inputs {
    fn new(hidden: FlexTensor, head: Head, targets: Arc<[u32]>) -> Self {
        Self {
            hidden: hidden.to_contiguous(),
            head,
            targets,
        }
    }

    fn rows(&self) -> &[f32] {
        self.hidden.as_slice::<f32>().expect("contiguous f32")
    }

    /// Rows per task: as many as fit, but enough tasks for every thread.
    fn row_block(&self) -> usize {
        let per_thread = self.targets.len().div_ceil(rayon::current_num_threads());
        per_thread.clamp(MIN_ROW_BLOCK, MAX_ROW_BLOCK)
    }
}

/// The summed loss and, `with_grad`, `(softmax − onehot)·Wᵀ` (`[n, hidden]`; empty without).
fn forward(s: &Inputs, with_grad: bool) -> (f32, Vec<f32>) {
    let (n, h, block) = (s.targets.len(), s.head.hidden, s.row_block());
    let mut grad = vec![0f32; if with_grad { n * h } else { 0 }];
    let blocks = s
        .rows()
        .par_chunks(block * h)
        .zip(s.targets.par_chunks(block));
    // Collected in block order and summed in it, so the loss does not depend on scheduling.
    let losses: Vec<f64> = match with_grad {
        true => blocks
            .zip(grad.par_chunks_mut(block * h))
            .map(|((rows, targets), grad)| forward_block(&s.head, rows, targets, Some(grad)))
            .collect(),
        false => blocks
            .map(|(rows, targets)| forward_block(&s.head, rows, targets, None))
            .collect(),
    };
    (losses.iter().sum::<f64>() as f32, grad)
}

/// One block of rows: its summed loss; with `grad` (`[rows, hidden]`, zeros), its rows of
/// `(softmax − onehot)·Wᵀ` written there.
fn forward_block(head: &Head, rows: &[f32], targets: &[u32], mut grad: Option<&mut [f32]>) -> f64 {
    let n = targets.len();
    let mut max = vec![f32::NEG_INFINITY; n];
    let mut sum = vec![0f32; n];
    let mut picked = vec![0f32; n];
    let mut tile = vec![0f32; n * VOCAB_TILE];
    for v0 in (0..head.vocab).step_by(VOCAB_TILE) {
        let width = VOCAB_TILE.min(head.vocab - v0);
        let tile = &mut tile[..n * width];
        logits_tile(head, rows, v0, width, tile);
        for (r, row) in tile.chunks_exact_mut(width).enumerate() {
            if let Some(i) = (targets[r] as usize).checked_sub(v0).filter(|&i| i < width) {
                picked[r] = row[i];
            }
            let m = max[r].max(kernels::max(row));
            let rescale = (max[r] - m).exp();
            sum[r] = sum[r] * rescale
                + match &mut grad {
                    Some(grad) => {
                        if rescale != 1.0 {
                            let h = head.hidden;
                            grad[r * h..(r + 1) * h]
                                .iter_mut()
                                .for_each(|g| *g *= rescale);
                        }
                        kernels::exp_in_place(row, m)
                    }
                    None => kernels::sum_exp(row, m),
                };
            max[r] = m;
        }
        if let Some(grad) = &mut grad {
            accumulate_hidden_grad(head, tile, v0, width, grad);
        }
    }
    if let Some(grad) = grad {
        finish_grad(head, targets, &sum, grad);
    }
    let lse = max.iter().zip(&sum).map(|(m, s)| m + s.ln());
    lse.zip(&picked).map(|(l, p)| (l - p) as f64).sum()
}

/// `Σ exp(l − m)·W_lᵀ` → `softmax·Wᵀ − W_targetᵀ`, row by row.
fn finish_grad(head: &Head, targets: &[u32], sum: &[f32], grad: &mut [f32]) {
    let values = head.weight.as_slice::<f32>().expect("contiguous f32");
    for ((row, &t), &s) in grad.chunks_exact_mut(head.hidden).zip(targets).zip(sum) {
        let inv = 1.0 / s;
        for (k, g) in row.iter_mut().enumerate() {
            *g = *g * inv - values[k * head.k_stride + t as usize * head.v_stride];
        }
    }
}

#[derive(Debug)]
struct HeadLossBackward;

impl Backward<Flex, 1> for HeadLossBackward {
    /// `(softmax − onehot)·Wᵀ`, `[n, hidden]`.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Some(parent) = parent else { return };
        let g = grad.as_slice::<f32>().expect("an f32 loss gradient")[0];
        let unit = ops.state.as_slice::<f32>().expect("contiguous f32");
        let scaled: Vec<f32> = unit.iter().map(|x| x * g).collect();
        let shape = ops.state.layout().shape().clone();
        grads.register::<Flex>(
            parent.id,
            FlexTensor::from_data(TensorData::new(scaled, shape)),
        );
    }
}

/// `tile = rows · W[:, v0..v0 + width]`, `[rows, width]` row-major.
fn logits_tile(head: &Head, rows: &[f32], v0: usize, width: usize, tile: &mut [f32]) {
    let n = tile.len() / width;
    let rows = View::row_major(rows, n, head.hidden);
    matmul(tile, rows, head.tile(v0, width), false, 1.0);
}

/// `out += tile · W[:, v0..v0 + width]ᵀ`, `out` being `[rows, hidden]` row-major.
fn accumulate_hidden_grad(head: &Head, tile: &[f32], v0: usize, width: usize, out: &mut [f32]) {
    let tile = View::row_major(tile, tile.len() / width, width);
    matmul(out, tile, head.tile(v0, width).t(), true, 1.0);
}
