//! A frozen linear layer, `x·W (+ b)`, over every token of a batch as one product. Off the
//! autodiff graph on the flex CPU backend (f32) a fused kernel ([`super::flex::linear`]) writes
//! the output in place; elsewhere burn's `Linear` runs it, which the fused kernel is tested
//! against. (With LoRA adapters, [`super::lora::linear_fused`] takes the layer instead.)

use super::flex;
use burn::nn::Linear;
use burn::tensor::Tensor;

/// `x` `[batch, seq, in]` → `[batch, seq, out]`, as one `[batch·seq, in]` product: burn keeps
/// `[batch, seq, in]` a batched product when `seq` fills its row tiles, and flex then packs the
/// weight once per batch row (a prefill of 8 × 128 tokens ran at 0.79× transformers that way).
pub fn forward(linear: &Linear, x: Tensor<3>) -> Tensor<3> {
    let [b, t, d_in] = x.dims();
    let x = x.reshape([b * t, d_in]);
    let y = forward_fused(linear, &x).unwrap_or_else(|| linear.forward(x));
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
}

/// The fused kernel on `x` `[n, in]`, or `None` when it does not apply (another backend or
/// dtype, tensors on the autodiff graph).
pub fn forward_fused(linear: &Linear, x: &Tensor<2>) -> Option<Tensor<2>> {
    let bias = linear.bias.as_ref().map(|b| b.val());
    flex::linear::linear(x, &linear.weight.val(), bias.as_ref())
}
