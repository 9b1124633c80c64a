//! The fused output-head loss of the flex backend against the tensor-op path: the loss and the
//! gradient in the hidden rows, for a tied and an untied head, with and without gradient
//! checkpointing, over a vocabulary of several tiles (the last one partial). The full model's
//! LoRA gradients through it are checked against PEFT in tests/training.rs.

use burn::tensor::{DType, Device, GradientCheckpointingStrategy, Tensor, TensorData};
use persona_train::model::head_loss::{nll_sum, nll_sum_fused, nll_sum_reference, HeadWeight};

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
    let loss = scalar(nll_sum(rows.clone(), &trained, &targets));
    let reference = scalar(nll_sum_reference(rows, &tied, &targets));
    assert!((loss - reference).abs() / reference < 1e-6);
}
