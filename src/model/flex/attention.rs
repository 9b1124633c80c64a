//! Masked attention, `softmax(q·kᵀ·scale + mask)·v`, as one autodiff operation on flex, with
//! grouped queries read in place (query head `i` uses KV head `i / (heads / kv_heads)`, so keys and
//! values are never repeated per query head).
//!
//! Forward, one rayon task per (row, head): `S = q·kᵀ·scale` into a `[seq, keys]` buffer, the mask,
//! a softmax per query, `O = P·v`; kept for the backward pass: the inputs, `O` and each query's
//! log-sum-exp. Backward, one task per (row, KV head), so the key and value gradients of a KV head
//! have one writer: for each of its query heads, `P = exp(S − lse)` recomputed, `dV += Pᵀ·dO`,
//! `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))·scale`, `dQ = dS·k`, `dK += dSᵀ·q`. Burn's
//! autodiff instead runs attention as about ten tensor operations per layer, each with a
//! `[row, head, seq, keys]` buffer and its own backward pass, over repeated keys and values.

use super::{common_strategy, is_flex, kernels, lift, matmul, strided, View};
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

/// The attention output `[batch, heads, seq, head_dim]` of `q` (`[batch, heads, seq,
/// head_dim]`) over `k`, `v` (`[batch, kv_heads, keys, head_dim]`), scores scaled by `scale`,
/// where `masked`
/// (`[batch, seq, keys]`, true = hidden) hides keys from queries; `None` when these tensors are
/// not for it (another backend or dtype, inputs with different checkpointing strategies, shapes
/// that do not fit). Inputs off the autodiff graph meet the others there as constants.
pub(crate) fn attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    masked: &Arc<[bool]>,
    scale: f32,
) -> Option<Tensor<4>> {
    let inputs = [q, k, v];
    let eligible = inputs
        .iter()
        .all(|t| t.dtype() == DType::F32 && is_flex(&t.device()));
    let dims = Dims::new(q.dims(), k.dims(), v.dims(), scale)?;
    if !eligible || masked.len() != dims.b * dims.t * dims.tk {
        return None;
    }
    let strategies = inputs.map(|t| t.gradient_checkpointing_strategy());
    match common_strategy(&strategies)? {
        None => {
            let [q, k, v] = inputs.map(|t| t.clone().try_into_primitive::<Flex>().ok());
            let parts = Parts::new(dims, [q?, k?, v?], masked.clone());
            Some(Tensor::from_primitive::<Flex>(forward(&parts).0))
        }
        Some(s @ GradientCheckpointingStrategy::Disabled) => {
            tracked::<NoCheckpointing>(dims, inputs.map(|t| lift(t, s)), masked)
        }
        Some(s @ GradientCheckpointingStrategy::Balanced) => {
            tracked::<BalancedCheckpointing>(dims, inputs.map(|t| lift(t, s)), masked)
        }
    }
}

/// The forward pass on the autodiff graph, with [`AttentionBackward`] as its backward step.
fn tracked<C: CheckpointStrategy>(
    dims: Dims,
    inputs: [Tensor<4>; 3],
    masked: &Arc<[bool]>,
) -> Option<Tensor<4>>
where
    DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
{
    let [q, k, v] = inputs.map(|t| t.try_into_primitive::<Autodiff<Flex, C>>().ok());
    let (q, k, v) = (q?, k?, v?);
    let primitives = [&q, &k, &v].map(|t| t.primitive().clone());
    let parts = Parts::new(dims, primitives, masked.clone());
    let (out, lse) = forward(&parts);
    let out = match AttentionBackward
        .prepare::<C>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                parts,
                out: out.clone(),
                lse: lse.into(),
            };
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex, C>>(out))
}

/// Multiply-adds of `q·kᵀ` below which a call runs on one thread (burn-flex's threshold for
/// its own attention).
const PARALLEL_WORK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    heads: usize,
    kv_heads: usize,
    t: usize,
    tk: usize,
    d: usize,
    scale: f32,
}

impl Dims {
    fn new(q: [usize; 4], k: [usize; 4], v: [usize; 4], scale: f32) -> Option<Self> {
        let [b, heads, t, d] = q;
        let [_, kv_heads, tk, _] = k;
        let fits = k == v
            && k[0] == b
            && k[3] == d
            && kv_heads > 0
            && heads % kv_heads == 0
            && t > 0
            && d > 0;
        fits.then_some(Self {
            b,
            heads,
            kv_heads,
            t,
            tk,
            d,
            scale,
        })
    }

    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Tasks per rayon job: all of them (one thread) when the whole call is too small to pay
    /// for spreading it, as a decoding step's is (measured: 4% fewer tokens/s in SmolLM2's
    /// greedy decode when its 9 heads were spread over 2 threads).
    fn min_tasks(&self) -> usize {
        let work = self.b * self.heads * self.t * self.tk * self.d;
        if work < PARALLEL_WORK {
            usize::MAX
        } else {
            1
        }
    }
}

/// A tensor `[batch, heads, rows, head_dim]` read in place.
#[derive(Clone, Debug)]
struct Input {
    tensor: FlexTensor,
    offset: usize,
    strides: Vec<usize>,
}

impl Input {
    fn new(t: FlexTensor) -> Self {
        let (tensor, offset, strides) = strided(t);
        Self {
            tensor,
            offset,
            strides,
        }
    }

    /// The `[rows, head_dim]` matrix of row `b`, head `h`.
    fn matrix(&self, b: usize, h: usize) -> View<'_> {
        let (s, shape) = (&self.strides, self.tensor.layout().shape());
        View::new(
            self.tensor.storage::<f32>(),
            self.offset + b * s[0] + h * s[1],
            [shape[2], shape[3]],
            [s[2], s[3]],
        )
    }
}

/// Queries per block: a block's products stop at its last visible key, so a causal mask skips
/// about half of the work (and a 64 × 256 score block stays in L2).
const QUERY_BLOCK: usize = 64;

/// The queries `start..start + len` of a row, and how many keys they see (`0..keys`).
#[derive(Clone, Copy)]
struct Block {
    start: usize,
    len: usize,
    keys: usize,
}

/// The inputs of one attention call.
#[derive(Clone, Debug)]
struct Parts {
    dims: Dims,
    q: Input,
    k: Input,
    v: Input,
    masked: Arc<[bool]>,
    /// `[batch, blocks]`: the number of keys up to the last one a block's queries see.
    keys: Arc<[usize]>,
}

impl Parts {
    fn new(dims: Dims, [q, k, v]: [FlexTensor; 3], masked: Arc<[bool]>) -> Self {
        let Dims { b, t, tk, .. } = dims;
        let keys = (0..b)
            .flat_map(|row| (0..t).step_by(QUERY_BLOCK).map(move |start| (row, start)))
            .map(|(row, start)| {
                let queries = start..(start + QUERY_BLOCK).min(t);
                let last_seen = |i: usize| {
                    let seen = &masked[(row * t + i) * tk..(row * t + i + 1) * tk];
                    seen.iter()
                        .rposition(|&hidden| !hidden)
                        .map_or(0, |j| j + 1)
                };
                queries.map(last_seen).max().unwrap_or(0)
            })
            .collect();
        Self {
            dims,
            q: Input::new(q),
            k: Input::new(k),
            v: Input::new(v),
            masked,
            keys,
        }
    }

    /// The query blocks of batch row `row`.
    fn blocks(&self, row: usize) -> impl Iterator<Item = Block> + '_ {
        let t = self.dims.t;
        let per_row = t.div_ceil(QUERY_BLOCK);
        (0..per_row).map(move |i| Block {
            start: i * QUERY_BLOCK,
            len: QUERY_BLOCK.min(t - i * QUERY_BLOCK),
            keys: self.keys[row * per_row + i],
        })
    }

    /// `scores ← q·kᵀ·scale` (`[block.len, block.keys]`) of a block of row `b`, head `h`, with hidden
    /// keys at −∞.
    fn scores(&self, b: usize, h: usize, block: Block, scores: &mut [f32]) {
        let Dims { t, tk, .. } = self.dims;
        let kv = h / self.dims.groups();
        let k = self.k.matrix(b, kv).rows(0, block.keys);
        let q = self.q.matrix(b, h).rows(block.start, block.len);
        matmul(scores, q, k.t(), false, self.dims.scale);
        for (r, row) in scores.chunks_exact_mut(block.keys.max(1)).enumerate() {
            let at = (b * t + block.start + r) * tk;
            for (s, &hidden) in row.iter_mut().zip(&self.masked[at..at + block.keys]) {
                if hidden {
                    *s = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// The output and each query's log-sum-exp, `[batch, heads, seq]`.
fn forward(p: &Parts) -> (FlexTensor, Vec<f32>) {
    let Dims {
        b, heads, t, tk, d, ..
    } = p.dims;
    let mut out = vec![0f32; b * heads * t * d];
    let mut lse = vec![0f32; b * heads * t];
    out.par_chunks_mut(t * d)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .with_min_len(p.dims.min_tasks())
        .for_each_init(
            || vec![0f32; QUERY_BLOCK * tk],
            |scores, (i, (out, lse))| {
                let (row, head) = (i / heads, i % heads);
                let v = p.v.matrix(row, head / p.dims.groups());
                for block in p.blocks(row) {
                    let scores = &mut scores[..block.len * block.keys];
                    p.scores(row, head, block, scores);
                    let lse = &mut lse[block.start..block.start + block.len];
                    for (l, s) in lse
                        .iter_mut()
                        .zip(scores.chunks_exact_mut(block.keys.max(1)))
                    {
                        *l = kernels::softmax(s);
                    }
                    let out = &mut out[block.start * d..(block.start + block.len) * d];
                    let probs = View::row_major(scores, block.len, block.keys);
                    matmul(out, probs, v.rows(0, block.keys), false, 1.0);
                }
            },
        );
    let out = FlexTensor::from_data(TensorData::new(out, [b, heads, t, d]));
    (out, lse)
}

/// What the backward pass needs: the inputs, the output and each query's log-sum-exp.
#[derive(Clone, Debug)]
struct Saved {
    parts: Parts,
    out: FlexTensor,
    lse: Arc<[f32]>,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Saved, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        if ops.parents.iter().all(Option::is_none) {
            return;
        }
        let [dq, dk, dv] = gradients(&ops.state, &Input::new(grad.to_contiguous()));
        for (parent, g) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, g);
            }
        }
    }
}

/// Per-task scratch of the backward pass: `P` and `dP`/`dS` of a query block, `[block, keys]`
/// each, and `rowsum(dO ⊙ O)`.
struct Scratch {
    p: Vec<f32>,
    dp: Vec<f32>,
    delta: Vec<f32>,
}

/// The gradients in `q`, `k` and `v` given the output's gradient `grad` (contiguous).
fn gradients(s: &Saved, grad: &Input) -> [FlexTensor; 3] {
    let Dims {
        b,
        heads,
        kv_heads,
        t,
        tk,
        d,
        ..
    } = s.parts.dims;
    let groups = s.parts.dims.groups();
    let mut dq = vec![0f32; b * heads * t * d];
    let mut dk = vec![0f32; b * kv_heads * tk * d];
    let mut dv = vec![0f32; b * kv_heads * tk * d];
    dq.par_chunks_mut(groups * t * d)
        .zip(dk.par_chunks_mut(tk * d).zip(dv.par_chunks_mut(tk * d)))
        .enumerate()
        .with_min_len(s.parts.dims.min_tasks())
        .for_each_init(
            || Scratch {
                p: vec![0.0; QUERY_BLOCK * tk],
                dp: vec![0.0; QUERY_BLOCK * tk],
                delta: vec![0.0; QUERY_BLOCK],
            },
            |scratch, (i, (dq, (dk, dv)))| {
                let (row, kv) = (i / kv_heads, i % kv_heads);
                for (j, dq) in dq.chunks_exact_mut(t * d).enumerate() {
                    let at = Head {
                        row,
                        head: kv * groups + j,
                    };
                    head_gradients(s, grad, at, scratch, [dq, dk, dv]);
                }
            },
        );
    let shape = |h: usize, rows: usize| [b, h, rows, d];
    [
        FlexTensor::from_data(TensorData::new(dq, shape(heads, t))),
        FlexTensor::from_data(TensorData::new(dk, shape(kv_heads, tk))),
        FlexTensor::from_data(TensorData::new(dv, shape(kv_heads, tk))),
    ]
}

#[derive(Clone, Copy)]
struct Head {
    row: usize,
    head: usize,
}

/// One query head's part: writes its `dq`, adds to its KV head's `dk` and `dv`.
fn head_gradients(s: &Saved, grad: &Input, at: Head, scratch: &mut Scratch, out: [&mut [f32]; 3]) {
    let [dq, dk, dv] = out;
    for block in s.parts.blocks(at.row) {
        let d = s.parts.dims.d;
        let dq = &mut dq[block.start * d..(block.start + block.len) * d];
        let dk = &mut dk[..block.keys * d];
        let dv = &mut dv[..block.keys * d];
        block_gradients(s, grad, (at, block), scratch, [dq, dk, dv]);
    }
}

/// A query block's part of [`head_gradients`].
fn block_gradients(
    s: &Saved,
    grad: &Input,
    (at, block): (Head, Block),
    scratch: &mut Scratch,
    [dq, dk, dv]: [&mut [f32]; 3],
) {
    let Dims { heads, t, d, .. } = s.parts.dims;
    let (row, head) = (at.row, at.head);
    let kv = head / s.parts.dims.groups();
    let (keys, len) = (block.keys, block.len);
    let (p, dp) = (&mut scratch.p[..len * keys], &mut scratch.dp[..len * keys]);
    let delta = &mut scratch.delta[..len];
    let q = s.parts.q.matrix(row, head).rows(block.start, len);
    let k = s.parts.k.matrix(row, kv).rows(0, keys);
    let v = s.parts.v.matrix(row, kv).rows(0, keys);
    let go = grad.matrix(row, head).rows(block.start, len);
    let first = (row * heads + head) * t + block.start;
    // P = exp(S − lse), hidden keys giving 0.
    s.parts.scores(row, head, block, p);
    for (r, s_row) in p.chunks_exact_mut(keys.max(1)).enumerate() {
        kernels::scaled_softmax(s_row, s.lse[first + r], 1.0);
    }
    let out = s.out.as_slice::<f32>().expect("contiguous f32");
    let grad_rows = grad.tensor.as_slice::<f32>().expect("contiguous f32");
    for (r, delta) in delta.iter_mut().enumerate() {
        let at = (first + r) * d;
        *delta = kernels::dot(&grad_rows[at..at + d], &out[at..at + d]);
    }
    let p_view = View::row_major(p, len, keys);
    matmul(dv, p_view.t(), go, true, 1.0);
    matmul(dp, go, v.t(), false, 1.0);
    let rows = p
        .chunks_exact(keys.max(1))
        .zip(dp.chunks_exact_mut(keys.max(1)));
    for ((p_row, dp_row), &delta) in rows.zip(&*delta) {
        kernels::softmax_grad(p_row, dp_row, delta, s.parts.dims.scale);
    }
    let ds = View::row_major(dp, len, keys);
    matmul(dq, ds, k, false, 1.0);
    matmul(dk, ds.t(), q, true, 1.0);
}
