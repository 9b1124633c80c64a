//! One optimizer step and the adapter bookkeeping around it: the loss of each micro-batch,
//! accumulated gradients, clipping, AdamW, and the adapters as autodiff leaves.

use super::loss::{self, Batch};
use super::optim::{self, AdamW};
use crate::data::Example;
use crate::lm::Lm;
use crate::model::lora::Adapters;
use crate::model::CausalLm;
use crate::recipe::OptimConfig;
use crate::steering::Steering;
use anyhow::{ensure, Result};
use burn::tensor::{GradientCheckpointingStrategy, Tensor};

/// Refuses to checkpoint adapters that hold NaN or infinite values.
pub fn ensure_adapters_finite(adapters: &Adapters, step: usize) -> Result<()> {
    for (layer, target, pair) in adapters.iter() {
        for (name, t) in [("lora_A", &pair.a), ("lora_B", &pair.b)] {
            ensure!(
                t.clone().is_finite().all().into_scalar::<bool>(),
                "step {step}: layer {layer} {} {name} holds non-finite values; no checkpoint was written (lower optim.lr?)",
                target.module_name()
            );
        }
    }
    Ok(())
}

/// The result of one optimizer step.
pub struct StepResult {
    /// The updated adapters, attached to the autodiff graph as new leaves.
    pub adapters: Adapters,
    /// Mean loss over every target token of the step's micro-batches.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// One optimizer step over `micro` (gradient accumulation): the loss is the mean over all
/// their target tokens, gradients are summed, clipped to `cfg.grad_clip` and applied with AdamW
/// at learning rate `lr`, through the model with training-time `steering`. `adapters` must be
/// autodiff leaves that require gradients.
pub fn optimizer_step(
    model: &CausalLm,
    steering: Option<&Steering>,
    adapters: Adapters,
    micro: &[Batch],
    optimizer: &mut AdamW,
    lr: f64,
) -> Result<StepResult> {
    let targets: usize = micro.iter().map(Batch::num_targets).sum();
    let current = params(&adapters);
    let mut grads: Option<Vec<Tensor<2>>> = None;
    let mut loss = 0.0;
    for batch in micro {
        let lm = Lm::new(model)
            .with_adapters(Some(&adapters))
            .with_steering(steering);
        let nll = loss::nll_sum(lm, batch)?;
        let part = nll / targets.max(1) as f32;
        let g = part.backward();
        loss += part.inner().into_scalar::<f32>() as f64;
        let step_grads: Vec<Tensor<2>> = current
            .iter()
            .map(|p| p.grad(&g).unwrap_or_else(|| p.clone().inner().zeros_like()))
            .collect();
        grads = Some(match grads {
            None => step_grads,
            Some(acc) => acc
                .into_iter()
                .zip(step_grads)
                .map(|(a, b)| a + b)
                .collect(),
        });
    }
    let grads = grads.expect("at least one micro-batch");
    let grad_norm = optim::global_norm(&grads);
    // Checked before the update, so a bad step never reaches the adapters or the moments.
    ensure!(
        loss.is_finite() && grad_norm.is_finite(),
        "the loss is {loss} and the gradient norm {grad_norm} (lower optim.lr, check the data and the steering vector)"
    );
    let grads = optim::clip(grads, grad_norm, optimizer.cfg.grad_clip);
    let updated = optimizer.update(current.into_iter().map(Tensor::inner).collect(), grads, lr);
    let mut updated = updated.into_iter();
    let adapters = adapters.map(|_, _, _, _| {
        trainable(
            updated.next().expect("one update per parameter"),
            &optimizer.cfg,
        )
    });
    Ok(StepResult {
        adapters,
        loss,
        grad_norm,
    })
}

/// An adapter matrix as an autodiff leaf that requires gradients. With
/// `optim.gradient_checkpointing`, burn's balanced checkpointing recomputes the memory-bound
/// activations of the graph built from it in the backward pass instead of keeping them.
pub fn trainable(t: Tensor<2>, cfg: &OptimConfig) -> Tensor<2> {
    let t = t.autodiff();
    let t = match cfg.gradient_checkpointing {
        true => t.with_gradient_checkpointing_strategy(GradientCheckpointingStrategy::Balanced),
        false => t,
    };
    t.require_grad()
}

/// The adapter matrices in [`Adapters::iter`] order, `A` then `B` of each.
pub fn params(adapters: &Adapters) -> Vec<Tensor<2>> {
    adapters
        .iter()
        .flat_map(|(_, _, p)| [p.a.clone(), p.b.clone()])
        .collect()
}

/// The adapters outside the autodiff graph, without dropout: for probes, validation and saving.
pub fn inference(adapters: &Adapters) -> Adapters {
    let mut plain = adapters.map(|_, _, _, t| t.inner());
    plain.dropout_active = false;
    plain
}

/// The mean loss over every target token of `val`, through `model` with `adapters` (no dropout,
/// no steering).
pub fn validation_loss(
    model: &CausalLm,
    adapters: &Adapters,
    val: &[Example],
    batch_size: usize,
) -> Result<f64> {
    let device = model.device();
    let (mut nll, mut n) = (0.0, 0);
    for chunk in val.chunks(batch_size) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::new(&refs, &device);
        n += batch.num_targets();
        let plain = Lm::new(model).with_adapters(Some(adapters));
        nll += loss::nll_sum(plain, &batch)?.into_scalar::<f32>() as f64;
    }
    Ok(nll / n.max(1) as f64)
}
