//! The training objective: next-token cross-entropy on assistant tokens, with the adapters and
//! any training-time steering in the forward pass.

use crate::data::Example;
use crate::lm::Lm;
use crate::model::{Forward, ForwardInput};
use crate::steering::Positions;
use anyhow::Result;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// A right-padded batch of examples.
pub struct Batch {
    pub input: ForwardInput,
    /// `[batch, seq]` flattened: which tokens are targets (unshifted, as PEFT's `labels != -100`).
    targets: Vec<bool>,
    /// `[batch, seq]` flattened: which tokens are real (not padding).
    real: Vec<bool>,
    pub rows: usize,
    pub seq: usize,
    /// Flat positions whose logits predict a target, and the target ids.
    predict_at: Vec<i64>,
    predict: Vec<u32>,
}

impl Batch {
    pub fn new(examples: &[&Example], device: &Device) -> Self {
        let rows = examples.len();
        let seq = examples.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let mut targets = vec![false; rows * seq];
        let mut real = vec![false; rows * seq];
        let (mut predict_at, mut predict) = (Vec::new(), Vec::new());
        for (r, ex) in examples.iter().enumerate() {
            for (i, (&id, &target)) in ex.ids.iter().zip(&ex.targets).enumerate() {
                targets[r * seq + i] = target;
                real[r * seq + i] = true;
                if target && i > 0 {
                    predict_at.push((r * seq + i - 1) as i64);
                    predict.push(id);
                }
            }
        }
        let ids: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
        Self {
            input: ForwardInput::right_padded(&ids, device),
            targets,
            real,
            rows,
            seq,
            predict_at,
            predict,
        }
    }

    /// Tokens the loss is computed on.
    pub fn num_targets(&self) -> usize {
        self.predict.len()
    }

    /// Real (non-padding) tokens.
    pub fn num_tokens(&self) -> usize {
        self.real.iter().filter(|&&x| x).count()
    }

    /// The `[batch, seq]` multiplier that restricts steering to `positions`.
    fn steering_mask(&self, positions: Positions, device: &Device) -> Option<Tensor<2>> {
        let pick: Box<dyn Fn(usize) -> bool> = match positions {
            Positions::All => return None,
            Positions::Response => Box::new(|i| self.targets[i]),
            Positions::Prompt => Box::new(|i| self.real[i] && !self.targets[i]),
        };
        let values: Vec<f32> = (0..self.rows * self.seq)
            .map(|i| if pick(i) { 1.0 } else { 0.0 })
            .collect();
        Some(Tensor::from_data(
            TensorData::new(values, [self.rows, self.seq]),
            device,
        ))
    }
}

/// Summed negative log-likelihood of the batch's targets (a scalar `[1]`), through `lm`'s adapters
/// and steering (at the batch's positions the steering names). Divide by the number of targets of
/// the whole optimizer step before `backward`.
pub fn nll_sum(lm: Lm, batch: &Batch) -> Result<Tensor<1>> {
    let device = lm.device();
    let mask = lm
        .steering
        .and_then(|s| batch.steering_mask(s.positions, &device));
    let out = lm.forward_masked(&batch.input, mask, Forward::hidden_states())?;
    let last = out
        .hidden_states
        .into_iter()
        .last()
        .expect("hidden states requested");
    let h = last.dims()[2];
    let n = batch.predict.len();
    let at = Tensor::<1, Int>::from_data(TensorData::new(batch.predict_at.clone(), [n]), &device);
    // Only positions that predict a target go through the output head: prompts are usually most
    // of a chat, and the head is the largest matmul.
    let rows = last.reshape([batch.rows * batch.seq, h]).select(0, at);
    Ok(lm.model.nll_sum(rows, &batch.predict))
}
