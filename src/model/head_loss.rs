//! The output head and the training loss taken through it: summed next-token cross-entropy at
//! chosen hidden rows.
//!
//! On the flex CPU backend a fused kernel ([`super::flex::head_loss`]) computes the loss in vocabulary tiles with
//! an online log-sum-exp, so the `[rows, vocab]` logits, their log-softmax and its gradient never
//! exist in full: its backward pass recomputes each tile and writes `(softmax − onehot)·g` straight
//! into the gradient of the hidden rows. Other backends (CUDA, CubeCL's CPU runtime), other dtypes
//! a head on the autodiff graph and soft-capped logits (Gemma 2) take the tensor-op path, [`nll_sum_reference`], which the
//! fused kernel is tested against.

use super::flex;
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};

/// The output head's weight, in the layout the model keeps it.
#[derive(Clone, Debug)]
pub enum HeadWeight {
    /// Tied to the embeddings: `[vocab, hidden]`.
    Tied(Tensor<2>),
    /// A separate `lm_head` without bias, in burn's `Linear` layout: `[hidden, vocab]`.
    Linear(Tensor<2>),
}

impl HeadWeight {
    /// Logits of final-norm hidden rows: `[rows, hidden]` → `[rows, vocab]`, in the weight's
    /// dtype. On flex (f32, off the autodiff graph) one matrix product writes them in place.
    pub fn logits(&self, rows: Tensor<2>) -> Tensor<2> {
        if let Some(logits) = flex::head_loss::logits(&rows, self) {
            return logits;
        }
        match self {
            HeadWeight::Linear(w) => rows.matmul(w.clone()),
            // `E · xᵀ` keeps the large embedding matrix contiguous (`x · Eᵀ` would copy all of it
            // on every call) and transposes only the small result.
            HeadWeight::Tied(e) => e.clone().matmul(rows.transpose()).transpose(),
        }
    }

    pub(crate) fn weight(&self) -> &Tensor<2> {
        match self {
            HeadWeight::Tied(w) | HeadWeight::Linear(w) => w,
        }
    }
}

/// Summed negative log-likelihood (a scalar `[1]`, f32) of `targets[i]` under the logits of
/// `rows[i]`, `rows` being final-norm hidden states `[n, hidden]`, the logits soft-capped at
/// `softcap` when there is one (Gemma 2). Differentiable in `rows`. Fused on flex (f32, a head
/// off the autodiff graph, no soft cap), [`nll_sum_reference`] elsewhere.
pub fn nll_sum(
    rows: Tensor<2>,
    head: &HeadWeight,
    targets: &[u32],
    softcap: Option<f64>,
) -> Tensor<1> {
    assert_eq!(rows.dims()[0], targets.len(), "one target per row");
    let fused = match softcap {
        None => nll_sum_fused(&rows, head, targets),
        Some(_) => None,
    };
    fused.unwrap_or_else(|| nll_of_logits(soft_cap(head.logits(rows), softcap), targets))
}

/// The fused kernel, or `None` when it does not apply to these tensors: another backend or
/// dtype, a head weight on the autodiff graph, or a target outside the vocabulary.
pub fn nll_sum_fused(rows: &Tensor<2>, head: &HeadWeight, targets: &[u32]) -> Option<Tensor<1>> {
    flex::head_loss::nll_sum(rows, head, targets)
}

/// [`nll_sum`] without a soft cap in tensor operations on any backend: the full `[n, vocab]`
/// logits and their log-softmax.
pub fn nll_sum_reference(rows: Tensor<2>, head: &HeadWeight, targets: &[u32]) -> Tensor<1> {
    nll_of_logits(head.logits(rows), targets)
}

/// `cap · tanh(logits / cap)` in the logits' dtype, as transformers does; the logits themselves
/// without a cap.
pub fn soft_cap<const D: usize>(logits: Tensor<D>, cap: Option<f64>) -> Tensor<D> {
    match cap {
        Some(cap) => (logits / cap).tanh() * cap,
        None => logits,
    }
}

/// The summed negative log-likelihood of `targets` under `logits` (`[n, vocab]`), taken in f32
/// whatever the model's dtype (transformers upcasts the logits).
fn nll_of_logits(logits: Tensor<2>, targets: &[u32]) -> Tensor<1> {
    let device = logits.device();
    let ids: Vec<i64> = targets.iter().map(|&t| i64::from(t)).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [targets.len(), 1]), &device);
    log_softmax(logits.cast(DType::F32), 1)
        .gather(1, ids)
        .sum()
        .neg()
}
