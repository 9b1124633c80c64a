//! A frozen linear layer off the autodiff graph (prefill, decoding, scoring): `x·W (+ b)` as
//! `gemm` calls writing straight into the output's buffer.
//!
//! burn-flex's matmul zero-fills a byte buffer for its output and then copies it into an aligned
//! one (5.5% of a prefill's CPU time under `perf`), and leaves a product of few rows to `gemm`'s
//! own threading, which at 128 rows reached ~200 GFLOP/s here where two halves of the columns,
//! one per thread, reach ~230 (and ~285 either way at 1,024 rows).

use super::{gemm_at, is_flex, Call, View};
use burn::backend::Flex;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Multiply-adds below which one thread does the whole product (burn-flex's threshold)...
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// ...unless the right-hand side has this many values: a product of few rows (decoding) is
/// bound by reading the weight, and two cores read it faster than one.
const PARALLEL_READ: usize = 256 * 1024;

/// Columns below which a band per thread is too narrow to pay (a LoRA rank, say).
const MIN_BAND: usize = 64;

/// `x·W (+ b)` for `x` `[n, d_in]` and `weight` `[d_in, d_out]` (burn's `Linear` layout), or
/// `None` when these tensors are not for it (another backend or dtype, on the autodiff graph).
pub(crate) fn linear(
    x: &Tensor<2>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<2>> {
    let mut tensors = vec![x, weight];
    let bias = bias.map(|b| b.clone().unsqueeze::<2>());
    tensors.extend(&bias);
    let eligible = tensors
        .iter()
        .all(|t| t.dtype() == DType::F32 && !t.is_autodiff() && is_flex(&t.device()));
    if !eligible {
        return None;
    }
    let [x, weight] = [x, weight].map(|t| t.clone().try_into_primitive::<Flex>().ok());
    let (x, weight) = (x?.to_contiguous(), weight?.to_contiguous());
    let bias = match bias {
        Some(b) => Some(b.try_into_primitive::<Flex>().ok()?.to_contiguous()),
        None => None,
    };
    let (n, d_in) = (x.layout().shape()[0], x.layout().shape()[1]);
    let d_out = weight.layout().shape()[1];
    let x = View::row_major(x.as_slice::<f32>()?, n, d_in);
    let w = View::row_major(weight.as_slice::<f32>()?, d_in, d_out);
    let bias = match &bias {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let out = product(x, w, bias, 1.0);
    let out = burn::backend::flex::FlexTensor::from_data(TensorData::new(out, [n, d_out]));
    Some(Tensor::from_primitive::<Flex>(out))
}

/// `scale · lhs·rhs`, plus `bias` on every row when there is one, into a new row-major buffer
/// that is never zero-filled: each thread's `gemm` writes its own band of columns (or, for fewer
/// columns than make a band per thread, `gemm` spreads the product over the threads itself).
pub(super) fn product(lhs: View, rhs: View, bias: Option<&[f32]>, scale: f32) -> Vec<f32> {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions");
    if m * n * k == 0 {
        return match bias {
            Some(bias) => bias.iter().copied().cycle().take(m * n).collect(),
            None => vec![0.0; m * n],
        };
    }
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let spare = &mut out.spare_capacity_mut()[..m * n];
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n, "one bias per column");
        for row in spare.chunks_exact_mut(n) {
            for (o, &b) in row.iter_mut().zip(bias) {
                o.write(b);
            }
        }
    }
    let dst = Dst(spare.as_mut_ptr());
    let threads = rayon::current_num_threads();
    let parallel = m * n * k >= PARALLEL_WORK || k * n >= PARALLEL_READ;
    if parallel && n < MIN_BAND * threads {
        let whole = Call {
            parallelism: gemm::Parallelism::Rayon(0),
            accumulate: bias.is_some(),
            scale,
        };
        // SAFETY: `dst` holds `m × n` values at row stride `n` (see below for `set_len`).
        unsafe { gemm_at(dst.at(0), n, lhs, rhs, whole) };
        unsafe { out.set_len(m * n) };
        return out;
    }
    let band = match parallel {
        // Whole 16-column vectors, so no two threads share one.
        true => n.div_ceil(threads).div_ceil(16) * 16,
        false => n,
    };
    let call = Call {
        parallelism: gemm::Parallelism::None,
        accumulate: bias.is_some(),
        scale,
    };
    (0..n.div_ceil(band)).into_par_iter().for_each(|i| {
        let (start, width) = (i * band, band.min(n - i * band));
        let rhs = View {
            offset: rhs.offset + start * rhs.cs,
            cols: width,
            ..rhs
        };
        // SAFETY: band `i` is columns `start..start + width` of the `m × n` buffer, disjoint
        // from every other band's; `View::new` checked that `lhs` and `rhs` lie in their slices.
        unsafe { gemm_at(dst.at(start), n, lhs, rhs, call) };
    });
    // SAFETY: the bands cover all `n` columns of all `m` rows, and `gemm` writes every element
    // of its destination (reading it first only with `accumulate`, where the bias was written).
    unsafe { out.set_len(m * n) };
    out
}

/// The output buffer, shared by the threads that write disjoint bands of it.
#[derive(Clone, Copy)]
struct Dst(*mut MaybeUninit<f32>);

// SAFETY: each thread writes only its own band of columns (see `product`).
unsafe impl Send for Dst {}
unsafe impl Sync for Dst {}

impl Dst {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY (of the callers): `offset` lies inside the buffer.
        self.0.wrapping_add(offset).cast()
    }
}
