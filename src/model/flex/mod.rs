//! Fused operations for the flex CPU backend, each a custom autodiff operation with a hand-written
//! backward pass: the output head's cross-entropy ([`head_loss`]) and masked attention
//! ([`attention`]). Burn's autodiff runs these as chains of tensor operations, each a pass over
//! memory with its own buffers; here each is a few `gemm` calls per cache-sized block and row
//! kernels in between. Every operation returns `None` for tensors it is not for (another backend
//! or dtype), and its caller then takes the tensor-op path, which its tests compare it with.

pub(super) mod attention;
pub(super) mod head_loss;
mod kernels;
pub(super) mod linear;
pub(super) mod lora;
pub(super) mod rms_norm;
pub(super) mod rope;
pub(super) mod swiglu;

use burn::backend::flex::FlexTensor;
use burn::backend::DispatchDevice;
use burn::tensor::{Device, GradientCheckpointingStrategy, Tensor, TensorData};

fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// How inputs that are to meet in one operation stand towards autodiff: `Some(None)` none of them
/// is on the autodiff graph, `Some(Some(strategy))` some are, all with `strategy`; `None` they
/// disagree. The caller lifts the others with [`lift`].
fn common_strategy(
    strategies: &[Option<GradientCheckpointingStrategy>],
) -> Option<Option<GradientCheckpointingStrategy>> {
    let mut on_graph = strategies.iter().flatten();
    match on_graph.next() {
        None => Some(None),
        Some(&first) => on_graph.all(|&s| s == first).then_some(Some(first)),
    }
}

/// `t` on the autodiff graph with `strategy` (a constant there when it was not on it).
fn lift<const D: usize>(t: &Tensor<D>, strategy: GradientCheckpointingStrategy) -> Tensor<D> {
    match t.is_autodiff() {
        true => t.clone(),
        false => t
            .clone()
            .autodiff()
            .with_gradient_checkpointing_strategy(strategy),
    }
}

fn scalar(value: f32) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(vec![value], [1]))
}

/// The values of `t` in its layout: the whole buffer, where element `index` of the layout is at
/// `offset + Σ index·stride`. Copies only a tensor with negative strides.
fn strided(t: FlexTensor) -> (FlexTensor, usize, Vec<usize>) {
    let t = match t.layout().strides().iter().all(|&s| s >= 0) {
        true => t,
        false => t.to_contiguous(),
    };
    let strides = t.layout().strides().iter().map(|&s| s as usize).collect();
    let offset = t.layout().start_offset();
    (t, offset, strides)
}

/// A matrix read in place from a slice: element `(r, c)` at `offset + r·rs + c·cs`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// # Panics
    /// When the last element lies outside `data`.
    fn new(data: &'a [f32], offset: usize, [rows, cols]: [usize; 2], [rs, cs]: [usize; 2]) -> Self {
        let last = offset + rows.saturating_sub(1) * rs + cols.saturating_sub(1) * cs;
        assert!(
            rows == 0 || cols == 0 || last < data.len(),
            "view out of bounds"
        );
        Self {
            data,
            offset,
            rows,
            cols,
            rs,
            cs,
        }
    }

    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, 0, [rows, cols], [cols, 1])
    }

    /// Rows `start..start + count`.
    fn rows(self, start: usize, count: usize) -> Self {
        assert!(start + count <= self.rows, "rows out of range");
        Self {
            offset: self.offset + start * self.rs,
            rows: count,
            ..self
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = scale · lhs · rhs`, or `dst += scale · lhs · rhs` with `accumulate`; `dst` is row-major
/// `[lhs.rows, rhs.cols]`. Single-threaded: callers parallelise over blocks.
fn matmul(dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, scale: f32) {
    gemm_into(dst, lhs, rhs, (accumulate, scale), gemm::Parallelism::None);
}

/// [`matmul`] on every thread of rayon's pool, for one large product.
fn matmul_par(dst: &mut [f32], lhs: View, rhs: View, accumulate: bool, scale: f32) {
    gemm_into(
        dst,
        lhs,
        rhs,
        (accumulate, scale),
        gemm::Parallelism::Rayon(0),
    );
}

fn gemm_into(
    dst: &mut [f32],
    lhs: View,
    rhs: View,
    (accumulate, scale): (bool, f32),
    parallelism: gemm::Parallelism,
) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    assert_eq!(rhs.rows, k, "inner dimensions");
    assert_eq!(dst.len(), m * n, "output size");
    let call = Call {
        parallelism,
        accumulate,
        scale,
    };
    // SAFETY: `dst` holds exactly `m × n` initialised values at row stride `n`.
    unsafe { gemm_at(dst.as_mut_ptr(), n, lhs, rhs, call) };
}

/// How one `gemm` call runs: on which threads, adding to the destination or not, and the
/// product's scale.
#[derive(Clone, Copy)]
struct Call {
    parallelism: gemm::Parallelism,
    accumulate: bool,
    scale: f32,
}

/// `dst (+)= scale · lhs·rhs`, `dst` row-major with row stride `dst_rs`.
///
/// # Safety
/// `dst` must point at `lhs.rows` rows of `rhs.cols` writable values, `dst_rs` apart, holding
/// initialised values when `accumulate`; `View::new` has checked that every element of `lhs`
/// and `rhs` lies in its slice.
unsafe fn gemm_at(dst: *mut f32, dst_rs: usize, lhs: View, rhs: View, call: Call) {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            call.accumulate,
            lhs.data.as_ptr().add(lhs.offset),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr().add(rhs.offset),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            call.scale,
            false,
            false,
            false,
            call.parallelism,
        );
    }
}
