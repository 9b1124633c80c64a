//! The fused head loss on the flex backend, as a custom autodiff operation.
//!
//! Rows are split into blocks, one rayon task each; a task walks the vocabulary in tiles: one
//! `gemm` call gives the block's logits for the tile (small enough to stay in cache), and the
//! online log-sum-exp folds it into each row's running maximum and sum. The backward pass walks
//! the same tiles again, turns each into `g·(softmax − onehot)` in place and accumulates
//! `tile · W_tileᵀ` into the block's rows of the hidden gradient. Against the tensor-op path this
//! does one more head matmul (the recomputation) and saves several passes over `[n, vocab]`
//! buffers that do not fit in cache, and their allocation.

use super::HeadWeight;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, DispatchDevice, DispatchKindConversion, DispatchTensor, Flex};
use burn::tensor::{DType, Device, GradientCheckpointingStrategy, Tensor, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// Vocabulary entries per tile: a 256-row block's tile is 512 KiB, a quarter of an L2 cache.
/// Measured on SmolLM2's head (2 cores, 1,020 rows): 2048 × 128 rows took 15% more CPU time
/// than 512 × 256; 256 to 1024 entries with 256 or 512 rows were alike.
const VOCAB_TILE: usize = 512;
/// The most rows per task (fewer when that leaves a thread idle): each task packs every tile of
/// the head weight for `gemm` once, so larger blocks pack less.
const MAX_ROW_BLOCK: usize = 256;
const MIN_ROW_BLOCK: usize = 8;

/// The fused loss, or `None` when these tensors are not for it (another backend or dtype, or a
/// head whose weight is on the autodiff graph).
pub(super) fn nll_sum(rows: &Tensor<2>, head: &HeadWeight, targets: &[u32]) -> Option<Tensor<1>> {
    let weight = head.weight();
    let eligible = rows.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && !weight.is_autodiff()
        && is_flex(&rows.device())
        && is_flex(&weight.device());
    if !eligible {
        return None;
    }
    let head = Head::new(
        weight.clone().try_into_primitive::<Flex>().ok()?,
        matches!(head, HeadWeight::Tied(_)),
    );
    if targets.iter().any(|&t| t as usize >= head.vocab) {
        return None; // the tensor-op path reports it
    }
    let targets: Arc<[u32]> = targets.into();
    match rows.gradient_checkpointing_strategy() {
        None => {
            let hidden = rows.clone().try_into_primitive::<Flex>().ok()?;
            let (loss, _) = forward(&Saved::new(hidden, head, targets));
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

fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
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
    let mut saved = Saved::new(rows.primitive().clone(), head, targets);
    let (loss, lse) = forward(&saved);
    let out = match HeadLossBackward
        .prepare::<C>([rows.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            saved.lse = lse.into();
            prep.finish(saved, scalar(loss))
        }
        OpsKind::UnTracked(prep) => prep.finish(scalar(loss)),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

fn scalar(value: f32) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(vec![value], [1]))
}

/// The head weight as the right-hand side of `hidden · W`: element `(k, v)` (hidden unit `k`,
/// vocabulary entry `v`) at `k·k_stride + v·v_stride` of a contiguous buffer.
#[derive(Clone, Debug)]
struct Head {
    weight: FlexTensor,
    hidden: usize,
    vocab: usize,
    k_stride: isize,
    v_stride: isize,
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
        let (k_stride, v_stride) = if tied {
            (1, hidden as isize)
        } else {
            (vocab as isize, 1)
        };
        Self {
            weight,
            hidden,
            vocab,
            k_stride,
            v_stride,
        }
    }

    fn values(&self) -> &[f32] {
        self.weight.as_slice::<f32>().expect("contiguous f32")
    }
}

/// What the backward pass needs: the inputs and each row's log-sum-exp.
#[derive(Clone, Debug)]
struct Saved {
    hidden: FlexTensor,
    head: Head,
    targets: Arc<[u32]>,
    lse: Arc<[f32]>,
}

impl Saved {
    fn new(hidden: FlexTensor, head: Head, targets: Arc<[u32]>) -> Self {
        Self {
            hidden: hidden.to_contiguous(),
            head,
            targets,
            lse: Arc::from([]),
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

/// The summed loss and each row's log-sum-exp.
fn forward(s: &Saved) -> (f32, Vec<f32>) {
    let (h, block) = (s.head.hidden, s.row_block());
    let parts: Vec<(f64, Vec<f32>)> = s
        .rows()
        .par_chunks(block * h)
        .zip(s.targets.par_chunks(block))
        .map(|(rows, targets)| forward_block(&s.head, rows, targets))
        .collect();
    let loss = parts.iter().map(|(l, _)| l).sum::<f64>() as f32;
    (loss, parts.into_iter().flat_map(|(_, lse)| lse).collect())
}

/// One block of rows: its summed loss and its rows' log-sum-exp.
fn forward_block(head: &Head, rows: &[f32], targets: &[u32]) -> (f64, Vec<f32>) {
    let n = targets.len();
    let mut max = vec![f32::NEG_INFINITY; n];
    let mut sum = vec![0f32; n];
    let mut picked = vec![0f32; n];
    let mut tile = vec![0f32; n * VOCAB_TILE];
    for v0 in (0..head.vocab).step_by(VOCAB_TILE) {
        let width = VOCAB_TILE.min(head.vocab - v0);
        let tile = &mut tile[..n * width];
        logits_tile(head, rows, v0, width, tile);
        for (r, row) in tile.chunks_exact(width).enumerate() {
            if let Some(i) = (targets[r] as usize).checked_sub(v0).filter(|&i| i < width) {
                picked[r] = row[i];
            }
            let m = max[r].max(kernels::max(row));
            sum[r] = sum[r] * (max[r] - m).exp() + kernels::sum_exp(row, m);
            max[r] = m;
        }
    }
    let lse: Vec<f32> = max.iter().zip(&sum).map(|(m, s)| m + s.ln()).collect();
    let loss = lse.iter().zip(&picked).map(|(l, p)| (l - p) as f64).sum();
    (loss, lse)
}

#[derive(Debug)]
struct HeadLossBackward;

impl Backward<Flex, 1> for HeadLossBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Some(parent) = parent else { return };
        let g = grad.as_slice::<f32>().expect("an f32 loss gradient")[0];
        grads.register::<Flex>(parent.id, hidden_grad(&ops.state, g));
    }
}

/// `g · (softmax − onehot) · Wᵀ`, `[n, hidden]`: the gradient of `g · loss` in the hidden rows.
fn hidden_grad(s: &Saved, g: f32) -> FlexTensor {
    let (n, h, block) = (s.targets.len(), s.head.hidden, s.row_block());
    let mut out = vec![0f32; n * h];
    out.par_chunks_mut(block * h)
        .zip(s.rows().par_chunks(block * h))
        .zip(s.targets.par_chunks(block).zip(s.lse.par_chunks(block)))
        .for_each(|((out, rows), (targets, lse))| {
            backward_block(&s.head, rows, (targets, lse), g, out)
        });
    FlexTensor::from_data(TensorData::new(out, [n, h]))
}

fn backward_block(head: &Head, rows: &[f32], at: (&[u32], &[f32]), g: f32, out: &mut [f32]) {
    let (targets, lse) = at;
    let n = targets.len();
    let mut tile = vec![0f32; n * VOCAB_TILE];
    for v0 in (0..head.vocab).step_by(VOCAB_TILE) {
        let width = VOCAB_TILE.min(head.vocab - v0);
        let tile = &mut tile[..n * width];
        logits_tile(head, rows, v0, width, tile);
        for (r, row) in tile.chunks_exact_mut(width).enumerate() {
            kernels::scaled_softmax(row, lse[r], g);
            if let Some(i) = (targets[r] as usize).checked_sub(v0).filter(|&i| i < width) {
                row[i] -= g;
            }
        }
        accumulate_hidden_grad(head, tile, v0, width, out);
    }
}

/// `tile = rows · W[:, v0..v0 + width]`, `[rows, width]` row-major.
fn logits_tile(head: &Head, rows: &[f32], v0: usize, width: usize, tile: &mut [f32]) {
    let (h, n) = (head.hidden, tile.len() / width);
    debug_assert_eq!(rows.len(), n * h);
    let w = &head.values()[v0 * head.v_stride as usize..];
    // SAFETY: `tile` holds `n × width`, `rows` `n × h`, and `w` from vocabulary entry `v0` on
    // holds `h × width` at the head's strides (`v0 + width ≤ vocab`).
    unsafe {
        gemm::gemm(
            n,
            width,
            h,
            tile.as_mut_ptr(),
            1,
            width as isize,
            false,
            rows.as_ptr(),
            1,
            h as isize,
            w.as_ptr(),
            head.v_stride,
            head.k_stride,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `out += tile · W[:, v0..v0 + width]ᵀ`, `out` being `[rows, hidden]` row-major.
fn accumulate_hidden_grad(head: &Head, tile: &[f32], v0: usize, width: usize, out: &mut [f32]) {
    let (h, n) = (head.hidden, tile.len() / width);
    debug_assert_eq!(out.len(), n * h);
    let w = &head.values()[v0 * head.v_stride as usize..];
    // SAFETY: as in `logits_tile`, with `Wᵀ` read as `width × h` by swapping the strides.
    unsafe {
        gemm::gemm(
            n,
            h,
            width,
            out.as_mut_ptr(),
            1,
            h as isize,
            true,
            tile.as_ptr(),
            1,
            width as isize,
            w.as_ptr(),
            head.k_stride,
            head.v_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Row kernels over a tile, written so the compiler vectorizes them (16 independent lanes, a
/// branch-free `exp`), and compiled for AVX2 as well where the CPU has it.
mod kernels {
    const LANES: usize = 16;

    /// Public kernels, each calling its `_impl` body compiled for AVX2 when the CPU has it.
    macro_rules! multiversion {
        ($($(#[$doc:meta])* fn $name:ident($($a:ident: $t:ty),*) -> $r:ty = $imp:ident;)*) => {$(
            $(#[$doc])*
            pub fn $name($($a: $t),*) -> $r {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    #[target_feature(enable = "avx2")]
                    unsafe fn avx2($($a: $t),*) -> $r {
                        $imp($($a),*)
                    }
                    // SAFETY: the CPU has AVX2 (checked above).
                    return unsafe { avx2($($a),*) };
                }
                $imp($($a),*)
            }
        )*};
    }

    multiversion! {
        fn max(row: &[f32]) -> f32 = max_impl;
        /// `Σ exp(x − m)`.
        fn sum_exp(row: &[f32], m: f32) -> f32 = sum_exp_impl;
        /// `x ← g · exp(x − lse)` in place.
        fn scaled_softmax(row: &mut [f32], lse: f32, g: f32) -> () = scaled_softmax_impl;
    }

    #[inline(always)]
    fn max_impl(row: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        let m = rest.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        acc.iter().fold(m, |a, &b| a.max(b))
    }

    #[inline(always)]
    fn sum_exp_impl(row: &[f32], m: f32) -> f32 {
        let mut acc = [0f32; LANES];
        let chunks = row.chunks_exact(LANES);
        let rest = chunks.remainder();
        for c in chunks {
            for i in 0..LANES {
                acc[i] += exp(c[i] - m);
            }
        }
        rest.iter().map(|&x| exp(x - m)).sum::<f32>() + acc.iter().sum::<f32>()
    }

    #[inline(always)]
    fn scaled_softmax_impl(row: &mut [f32], lse: f32, g: f32) {
        for x in row {
            *x = g * exp(*x - lse);
        }
    }

    /// `eˣ` for `x ≤ 0` (Cephes' `expf`: `2ⁿ·eʳ` with `|r| ≤ ln2/2` and a degree-6 polynomial,
    /// within 2 ulp of the correctly rounded result); 0 below −87.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
        let xc = x.max(-87.0);
        let t = xc * std::f32::consts::LOG2_E + ROUND;
        let n = t - ROUND;
        let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let p = 1.987_569_2e-4;
        let p = p * r + 1.398_199_9e-3;
        let p = p * r + 8.333_452e-3;
        let p = p * r + 4.166_579_6e-2;
        let p = p * r + 1.666_666_5e-1;
        let p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        // n is the low bits of t's mantissa: 2ⁿ from them, exponent bias 127.
        let bits = (t.to_bits() as i32 - ROUND.to_bits() as i32 + 127) << 23;
        let e = y * f32::from_bits(bits as u32);
        if x < -87.0 {
            0.0
        } else {
            e
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernels::exp;

    #[test]
    fn exp_matches_std_within_two_ulp() {
        let mut x = -87.0f32;
        while x <= 0.0 {
            let (got, want) = (exp(x), x.exp());
            let ulp = (got.to_bits() as i64 - want.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {got}, std {want}");
            x += 0.001_3;
        }
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }
}
