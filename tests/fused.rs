//! The fused kernels of the flex backend against the tensor-op paths they replace elsewhere:
//! - the output-head loss: the loss and the gradient in the hidden rows, for a tied and an untied
//!   head, over a vocabulary of several tiles (the last one partial);
//! - attention: outputs and the gradients in q, k and v, with grouped queries, causal and padding
//!   masks, a sliding window, a cached prefix (more keys than queries), a scale other than
//!   `1/√d` and a strided q (a transposed view, as the model passes it);
//! - the gated MLP activation `silu(gate)·up` and its gradients;
//! - rotary embedding of a transposed view, and its gradient;
//! - a frozen linear layer off the autodiff graph, on one thread and spread over threads;
//! - a frozen linear layer with its LoRA adapter: the output and the gradients in x, A and B,
//!   with and without bias, x on or off the autodiff graph;
//! - RMSNorm with a frozen scale (`w` and Gemma's `1 + w`), and its gradient;
//!
//! each with and without gradient checkpointing and without autodiff. The model's goldens
//! (tests/golden_tiny.rs, tests/training.rs) check them against transformers and PEFT as well.

use burn::tensor::{DType, Device, GradientCheckpointingStrategy, Tensor, TensorData};
use persona_train::model::activation::{swiglu_fused, swiglu_reference};
use persona_train::model::head_loss::{nll_sum, nll_sum_fused, nll_sum_reference, HeadWeight};
use persona_train::model::lora::{linear_fused, LoraLinear};
use persona_train::model::masked_attention::{attention_fused, attention_reference};
use persona_train::model::norm::RmsNorm;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// Output-head loss
// ---------------------------------------------------------------------------------------------

const HIDDEN: usize = 48;
const VOCAB: usize = 5000;
const ROWS: usize = 37;

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

fn matrix(rows: usize, cols: usize, seed: u64, scale: f32, device: &Device) -> Tensor<2> {
    Tensor::from_data(
        TensorData::new(values(rows * cols, seed, scale), [rows, cols]),
        device,
    )
}

fn heads(device: &Device) -> [(&'static str, HeadWeight); 2] {
    let tied = matrix(VOCAB, HIDDEN, 7, 0.5, device);
    let linear = matrix(HIDDEN, VOCAB, 8, 0.5, device);
    [
        ("tied", HeadWeight::Tied(tied)),
        ("linear", HeadWeight::Linear(linear)),
    ]
}

/// Targets across the vocabulary, first and last entries included.
fn targets() -> Vec<u32> {
    (0..ROWS)
        .map(|i| match i {
            0 => 0,
            1 => VOCAB as u32 - 1,
            _ => (i * 977 % VOCAB) as u32,
        })
        .collect()
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()[0] as f64
}

fn vec2(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The loss of `0.25 · nll` and the gradient in the rows, through `loss`.
fn loss_and_grad(
    loss: impl Fn(Tensor<2>) -> Tensor<1>,
    strategy: GradientCheckpointingStrategy,
) -> (f64, Vec<f32>) {
    let device = Device::flex();
    let rows = matrix(ROWS, HIDDEN, 3, 2.0, &device)
        .autodiff()
        .with_gradient_checkpointing_strategy(strategy)
        .require_grad();
    let out = loss(rows.clone()) * 0.25;
    let value = scalar(out.clone().inner());
    let grads = out.backward();
    (
        value,
        vec2(rows.grad(&grads).expect("rows have a gradient")),
    )
}

#[test]
fn fused_loss_and_gradient_match_the_tensor_op_path() {
    let device = Device::flex();
    let targets = targets();
    for (name, head) in heads(&device) {
        for strategy in [
            GradientCheckpointingStrategy::Disabled,
            GradientCheckpointingStrategy::Balanced,
        ] {
            let fused = loss_and_grad(
                |rows| nll_sum_fused(&rows, &head, &targets).expect("the fused path applies"),
                strategy,
            );
            let reference =
                loss_and_grad(|rows| nll_sum_reference(rows, &head, &targets), strategy);
            let err = (fused.0 - reference.0).abs() / reference.0.abs();
            assert!(
                err < 1e-6,
                "{name} {strategy:?}: loss {} vs {}",
                fused.0,
                reference.0
            );
            let err = rel_err(&fused.1, &reference.1);
            assert!(err < 1e-5, "{name} {strategy:?}: gradient rel err {err}");
        }
    }
}

#[test]
fn fused_loss_without_autodiff_matches() {
    let device = Device::flex();
    let targets = targets();
    for (name, head) in heads(&device) {
        let rows = matrix(ROWS, HIDDEN, 3, 2.0, &device);
        let fused = scalar(nll_sum_fused(&rows, &head, &targets).expect("fused"));
        let reference = scalar(nll_sum_reference(rows, &head, &targets));
        assert!(
            (fused - reference).abs() / reference < 1e-6,
            "{name}: {fused} vs {reference}"
        );
    }
}

#[test]
fn head_logits_equal_the_matrix_product() {
    let device = Device::flex();
    let rows = matrix(ROWS, HIDDEN, 3, 2.0, &device);
    for (name, head) in heads(&device) {
        let want = match &head {
            HeadWeight::Tied(e) => rows.clone().matmul(e.clone().transpose()),
            HeadWeight::Linear(w) => rows.clone().matmul(w.clone()),
        };
        let err = rel_err(&vec2(head.logits(rows.clone())), &vec2(want));
        assert!(err < 1e-6, "{name}: rel err {err}");
    }
}

#[test]
fn other_dtypes_and_trained_heads_take_the_tensor_op_path() {
    let device = Device::flex();
    let targets = targets();
    let rows = matrix(ROWS, HIDDEN, 3, 2.0, &device);
    let [(_, tied), _] = heads(&device);
    let HeadWeight::Tied(w) = &tied else {
        unreachable!()
    };
    let half = HeadWeight::Tied(w.clone().cast(DType::BF16));
    assert!(nll_sum_fused(&rows.clone().cast(DType::BF16), &half, &targets).is_none());
    let trained = HeadWeight::Tied(w.clone().autodiff().require_grad());
    assert!(nll_sum_fused(&rows, &trained, &targets).is_none());
    // `nll_sum` still answers, through the tensor-op path.
    let loss = scalar(nll_sum(rows.clone(), &trained, &targets, None));
    let reference = scalar(nll_sum_reference(rows, &tied, &targets));
    assert!((loss - reference).abs() / reference < 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

const B: usize = 2;
const HEADS: usize = 6;
const KV_HEADS: usize = 2;
const D: usize = 16;

/// Scores' scale: not `1/√D`, so a kernel that assumed it would fail.
const SCALE: f64 = 0.3;

/// Causal over `past` cached keys, row 1's first two keys padding (each query still sees
/// itself), and when there is a `window`, each query sees only keys less than it away.
fn mask(t: usize, past: usize, window: Option<usize>) -> Arc<[bool]> {
    let keys = past + t;
    let mut m = Vec::new();
    for row in 0..B {
        for i in 0..t {
            for j in 0..keys {
                let q = past + i;
                let padding = row == 1 && j < 2;
                let in_window = window.is_none_or(|w| q - j < w);
                m.push(!(j == q || (j < q && !padding && in_window)));
            }
        }
    }
    m.into()
}

struct Case {
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    masked: Arc<[bool]>,
}

/// q as the model makes it: `[batch, seq, heads, d]` with its middle dimensions swapped.
fn case(t: usize, past: usize, window: Option<usize>, device: &Device) -> Case {
    let keys = past + t;
    let q = Tensor::<4>::from_data(
        TensorData::new(values(B * t * HEADS * D, 1, 1.0), [B, t, HEADS, D]),
        device,
    )
    .swap_dims(1, 2);
    let kv = |seed| {
        Tensor::<4>::from_data(
            TensorData::new(
                values(B * KV_HEADS * keys * D, seed, 1.0),
                [B, KV_HEADS, keys, D],
            ),
            device,
        )
    };
    Case {
        q,
        k: kv(2),
        v: kv(3),
        masked: mask(t, past, window),
    }
}

fn vec4(t: Tensor<4>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Output and gradients of `Σ w ⊙ attention(q, k, v)` (w fixed pseudo-random weights).
fn run(
    fused: bool,
    (t, past, window): (usize, usize, Option<usize>),
    strategy: GradientCheckpointingStrategy,
) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let c = case(t, past, window, &device);
    let leaf = |x: Tensor<4>| {
        x.autodiff()
            .with_gradient_checkpointing_strategy(strategy)
            .require_grad()
    };
    let (q, k, v) = (leaf(c.q), leaf(c.k), leaf(c.v));
    let out = if fused {
        attention_fused(&q, &k, &v, &c.masked, SCALE).expect("the fused path applies")
    } else {
        attention_reference(q.clone(), k.clone(), v.clone(), &c.masked, SCALE, None)
    };
    let w = Tensor::<4>::from_data(
        TensorData::new(values(B * HEADS * t * D, 9, 1.0), [B, HEADS, t, D]),
        &device,
    );
    let grads = (out.clone() * w).sum().backward();
    let g = |x: &Tensor<4>| vec4(x.grad(&grads).expect("a gradient"));
    vec![vec4(out.inner()), g(&q), g(&k), g(&v)]
}

#[test]
fn fused_attention_and_gradients_match_burn() {
    for shape in [(9, 0, None), (5, 4, None), (70, 0, None), (70, 4, Some(16))] {
        for strategy in [
            GradientCheckpointingStrategy::Disabled,
            GradientCheckpointingStrategy::Balanced,
        ] {
            let fused = run(true, shape, strategy);
            let reference = run(false, shape, strategy);
            for (name, (a, b)) in ["output", "dq", "dk", "dv"]
                .iter()
                .zip(fused.iter().zip(&reference))
            {
                let err = rel_err(a, b);
                assert!(
                    err < 1e-5,
                    "(t, past, window) {shape:?} {strategy:?}: {name} rel err {err}"
                );
            }
        }
    }
}

#[test]
fn fused_attention_without_autodiff_matches_burn() {
    let device = Device::flex();
    for (t, past) in [(9, 0), (1, 8)] {
        let c = case(t, past, None, &device);
        let fused = attention_fused(&c.q, &c.k, &c.v, &c.masked, SCALE).expect("fused");
        let reference = attention_reference(c.q, c.k, c.v, &c.masked, SCALE, None);
        let err = rel_err(&vec4(fused), &vec4(reference));
        assert!(err < 1e-5, "t {t} past {past}: rel err {err}");
    }
}

#[test]
fn constant_keys_and_values_meet_a_tracked_query() {
    let device = Device::flex();
    let c = case(9, 0, None, &device);
    let q = c.q.clone().autodiff().require_grad();
    let fused = attention_fused(&q, &c.k, &c.v, &c.masked, SCALE).expect("fused");
    let reference =
        attention_reference(q.clone(), c.k.clone(), c.v.clone(), &c.masked, SCALE, None);
    let (gf, gr) = (
        fused.clone().sum().backward(),
        reference.clone().sum().backward(),
    );
    let err = rel_err(&vec4(q.grad(&gf).unwrap()), &vec4(q.grad(&gr).unwrap()));
    assert!(err < 1e-5, "dq rel err {err}");
    assert!(rel_err(&vec4(fused.inner()), &vec4(reference.inner())) < 1e-5);
    let short: Arc<[bool]> = c.masked[1..].into();
    assert!(attention_fused(&c.q, &c.k, &c.v, &short, SCALE).is_none());
}

// ---------------------------------------------------------------------------------------------
// silu(gate)·up
// ---------------------------------------------------------------------------------------------

/// Gate values across silu's range, saturated ends included.
fn gate_and_up(device: &Device) -> (Tensor<3>, Tensor<3>) {
    let shape = [3, 7, 50];
    let n = 3 * 7 * 50;
    let gate: Vec<f32> = values(n, 11, 12.0)
        .into_iter()
        .enumerate()
        .map(|(i, g)| match i {
            0 => -100.0,
            1 => 100.0,
            _ => g,
        })
        .collect();
    (
        Tensor::from_data(TensorData::new(gate, shape), device),
        Tensor::from_data(TensorData::new(values(n, 12, 1.0), shape), device),
    )
}

fn swiglu_and_grads(fused: bool, strategy: GradientCheckpointingStrategy) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let (gate, up) = gate_and_up(&device);
    let leaf = |x: Tensor<3>| {
        x.autodiff()
            .with_gradient_checkpointing_strategy(strategy)
            .require_grad()
    };
    let (gate, up) = (leaf(gate), leaf(up));
    let out = match fused {
        true => swiglu_fused(&gate, &up).expect("the fused path applies"),
        false => swiglu_reference(gate.clone(), up.clone()),
    };
    let w = Tensor::<3>::from_data(
        TensorData::new(values(3 * 7 * 50, 13, 1.0), [3, 7, 50]),
        &device,
    );
    let grads = (out.clone() * w).sum().backward();
    let flat = |t: Tensor<3>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    vec![
        flat(out.inner()),
        flat(gate.grad(&grads).expect("gate gradient")),
        flat(up.grad(&grads).expect("up gradient")),
    ]
}

#[test]
fn fused_swiglu_and_gradients_match_burn() {
    for strategy in [
        GradientCheckpointingStrategy::Disabled,
        GradientCheckpointingStrategy::Balanced,
    ] {
        let fused = swiglu_and_grads(true, strategy);
        let reference = swiglu_and_grads(false, strategy);
        for (name, (a, b)) in ["output", "d_gate", "d_up"]
            .iter()
            .zip(fused.iter().zip(&reference))
        {
            let err = rel_err(a, b);
            assert!(err < 1e-6, "{strategy:?}: {name} rel err {err}");
        }
    }
    let device = Device::flex();
    let (gate, up) = gate_and_up(&device);
    let fused = swiglu_fused(&gate, &up).expect("fused without autodiff");
    let flat = |t: Tensor<3>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let err = rel_err(
        &flat(fused),
        &flat(swiglu_reference(gate.clone(), up.clone())),
    );
    assert!(err < 1e-6, "without autodiff: rel err {err}");
    assert!(swiglu_fused(&gate.clone().cast(DType::BF16), &up.cast(DType::BF16)).is_none());
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding
// ---------------------------------------------------------------------------------------------

/// Output and input gradient of `Σ w ⊙ rope(x)`, `x` a transposed view as the model passes it,
/// tables with different angles per row (left padding shifts positions).
fn rope_and_grad(fused: bool, strategy: Option<GradientCheckpointingStrategy>) -> Vec<Vec<f32>> {
    use persona_train::model::rope::{apply_fused, apply_reference};
    let device = Device::flex();
    let (b, t, h, d) = (2, 7, 3, 8);
    let table = |seed| {
        Tensor::<4>::from_data(
            TensorData::new(values(b * t * d, seed, 1.0), [b, 1, t, d]),
            &device,
        )
    };
    let (cos, sin) = (table(51), table(52));
    let x = Tensor::<4>::from_data(
        TensorData::new(values(b * t * h * d, 53, 1.0), [b, t, h, d]),
        &device,
    )
    .swap_dims(1, 2);
    let x = match strategy {
        Some(s) => x
            .autodiff()
            .with_gradient_checkpointing_strategy(s)
            .require_grad(),
        None => x,
    };
    let y = match fused {
        true => apply_fused(&x, &cos, &sin).expect("the fused path applies"),
        false => apply_reference(x.clone(), &cos, &sin),
    };
    if strategy.is_none() {
        return vec![vec4(y)];
    }
    let w = Tensor::<4>::from_data(
        TensorData::new(values(b * h * t * d, 54, 1.0), [b, h, t, d]),
        &device,
    );
    let grads = (y.clone() * w).sum().backward();
    vec![vec4(y.inner()), vec4(x.grad(&grads).expect("x gradient"))]
}

#[test]
fn fused_rope_and_gradient_match_the_tensor_ops() {
    for strategy in [
        None,
        Some(GradientCheckpointingStrategy::Disabled),
        Some(GradientCheckpointingStrategy::Balanced),
    ] {
        let fused = rope_and_grad(true, strategy);
        let reference = rope_and_grad(false, strategy);
        assert_eq!(fused.len(), reference.len());
        for (name, (a, b)) in ["output", "dx"].iter().zip(fused.iter().zip(&reference)) {
            let err = rel_err(a, b);
            assert!(err < 1e-6, "{strategy:?}: {name} rel err {err}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frozen linear layer
// ---------------------------------------------------------------------------------------------

/// The fused product against burn's `Linear`: one thread (few rows), bands of columns per thread
/// (many rows and columns, or one row and a large weight, as in decoding), and `gemm`'s own
/// threads (many rows, few columns); with and without bias.
#[test]
fn fused_linear_matches_burn() {
    let device = Device::flex();
    for (rows, d_in, d_out, bias) in [
        (5, 24, 40, true),
        (300, 160, 200, true),
        (300, 160, 200, false),
        (3000, 160, 16, false),
        (1, 576, 512, true),
    ] {
        let m = |r: usize, c: usize, seed| {
            Tensor::<2>::from_data(TensorData::new(values(r * c, seed, 1.0), [r, c]), &device)
        };
        let layer = burn::nn::Linear {
            weight: burn::module::Param::from_tensor(m(d_in, d_out, 41)),
            bias: bias.then(|| burn::module::Param::from_tensor(m(1, d_out, 42).reshape([d_out]))),
        };
        let x = m(rows, d_in, 43);
        let fused = persona_train::model::linear::forward_fused(&layer, &x).expect("fused");
        let reference = layer.forward(x.clone());
        let err = rel_err(&vec2(fused), &vec2(reference));
        assert!(
            err < 1e-6,
            "{rows}×{d_in}→{d_out} bias {bias}: rel err {err}"
        );
        let tracked = x.autodiff().require_grad();
        assert!(persona_train::model::linear::forward_fused(&layer, &tracked).is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layer with a LoRA adapter
// ---------------------------------------------------------------------------------------------

const IN: usize = 24;
const OUT: usize = 40;
const R: usize = 4;

/// Output and gradients (x when it is on the graph, A, B) of `Σ w ⊙ layer(x)`, fused or as
/// `x·W + b + (x·A·B)·s`.
fn lora_and_grads(fused: bool, bias: bool, x_tracked: bool, rows: usize) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let strategy = GradientCheckpointingStrategy::Balanced;
    let m = |r, c, seed| {
        Tensor::<2>::from_data(TensorData::new(values(r * c, seed, 1.0), [r, c]), &device)
    };
    let leaf2 = |t: Tensor<2>| {
        t.autodiff()
            .with_gradient_checkpointing_strategy(strategy)
            .require_grad()
    };
    let (w, a, b) = (m(IN, OUT, 21), leaf2(m(IN, R, 22)), leaf2(m(R, OUT, 23)));
    let bias =
        bias.then(|| Tensor::<1>::from_data(TensorData::new(values(OUT, 24, 1.0), [OUT]), &device));
    let x = Tensor::<3>::from_data(
        TensorData::new(values(2 * rows * IN, 25, 1.0), [2, rows, IN]),
        &device,
    );
    let x = match x_tracked {
        true => x
            .autodiff()
            .with_gradient_checkpointing_strategy(strategy)
            .require_grad(),
        false => x,
    };
    let y = match fused {
        true => {
            let layer = LoraLinear {
                weight: &w,
                bias: bias.as_ref(),
                a: &a,
                b: &b,
                scale: 0.75,
            };
            linear_fused(&x, &layer).expect("the fused path applies")
        }
        false => {
            let base = x.clone().matmul(w.clone().unsqueeze::<3>());
            let base = match &bias {
                Some(bias) => base + bias.clone().unsqueeze::<3>(),
                None => base,
            };
            base + x
                .clone()
                .matmul(a.clone().unsqueeze::<3>())
                .matmul(b.clone().unsqueeze::<3>())
                * 0.75
        }
    };
    let weights = Tensor::<3>::from_data(
        TensorData::new(values(2 * rows * OUT, 26, 1.0), [2, rows, OUT]),
        &device,
    );
    let grads = (y.clone() * weights).sum().backward();
    let flat2 = |t: Tensor<2>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let flat3 = |t: Tensor<3>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let mut out = vec![
        flat3(y.inner()),
        flat2(a.grad(&grads).unwrap()),
        flat2(b.grad(&grads).unwrap()),
    ];
    if x_tracked {
        out.push(flat3(x.grad(&grads).expect("x gradient")));
    }
    out
}

#[test]
fn fused_lora_linear_and_gradients_match_the_tensor_ops() {
    // 5 rows: products on one thread; 3,700: the frozen products spread over the threads.
    for (bias, x_tracked, rows) in [
        (false, false, 5),
        (false, true, 5),
        (true, false, 5),
        (true, true, 5),
        (true, true, 3700),
    ] {
        {
            let fused = lora_and_grads(true, bias, x_tracked, rows);
            let reference = lora_and_grads(false, bias, x_tracked, rows);
            for (name, (a, b)) in ["output", "dA", "dB", "dx"]
                .iter()
                .zip(fused.iter().zip(&reference))
            {
                let err = rel_err(a, b);
                assert!(
                    err < 1e-5,
                    "bias {bias} x tracked {x_tracked} rows {rows}: {name} rel err {err}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm
// ---------------------------------------------------------------------------------------------

fn norm_and_grad(
    fused: bool,
    plus_one: bool,
    strategy: GradientCheckpointingStrategy,
) -> Vec<Vec<f32>> {
    let device = Device::flex();
    let n = 72;
    let weight = Tensor::<1>::from_data(TensorData::new(values(n, 31, 2.0), [n]), &device);
    let norm = RmsNorm::new(weight, 1e-5, plus_one);
    let x = Tensor::<3>::from_data(
        TensorData::new(values(3 * 5 * n, 32, 3.0), [3, 5, n]),
        &device,
    )
    .autodiff()
    .with_gradient_checkpointing_strategy(strategy)
    .require_grad();
    let y = match fused {
        true => norm.forward_fused(&x).expect("the fused path applies"),
        false => norm.forward_reference(x.clone()),
    };
    let w = Tensor::<3>::from_data(
        TensorData::new(values(3 * 5 * n, 33, 1.0), [3, 5, n]),
        &device,
    );
    let grads = (y.clone() * w).sum().backward();
    let flat = |t: Tensor<3>| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap()
    };
    vec![flat(y.inner()), flat(x.grad(&grads).expect("x gradient"))]
}

#[test]
fn fused_rms_norm_and_gradient_match_the_tensor_ops() {
    for plus_one in [false, true] {
        for strategy in [
            GradientCheckpointingStrategy::Disabled,
            GradientCheckpointingStrategy::Balanced,
        ] {
            let fused = norm_and_grad(true, plus_one, strategy);
            let reference = norm_and_grad(false, plus_one, strategy);
            for (name, (a, b)) in ["output", "dx"].iter().zip(fused.iter().zip(&reference)) {
                let err = rel_err(a, b);
                assert!(
                    err < 1e-6,
                    "(1 + w) {plus_one} {strategy:?}: {name} rel err {err}"
                );
            }
        }
    }
}
