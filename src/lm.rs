//! The language model as the layers above run it: base weights, the LoRA adapters over them and
//! inference-time steering, one value instead of three arguments threaded through every call.

use crate::model::{Adapters, CausalLm, Forward, ForwardInput, ForwardOutput, ModelConfig};
use crate::steering::Steering;
use anyhow::Result;
use burn::tensor::{Device, Tensor};

/// A model with its adapters and steering, cheap to copy.
#[derive(Clone, Copy)]
pub struct Lm<'a> {
    pub model: &'a CausalLm,
    pub adapters: Option<&'a Adapters>,
    pub steering: Option<&'a Steering>,
}

impl<'a> Lm<'a> {
    /// The base model: no adapters, no steering.
    pub fn new(model: &'a CausalLm) -> Self {
        Self {
            model,
            adapters: None,
            steering: None,
        }
    }

    pub fn with_adapters(self, adapters: Option<&'a Adapters>) -> Self {
        Self { adapters, ..self }
    }

    pub fn with_steering(self, steering: Option<&'a Steering>) -> Self {
        Self { steering, ..self }
    }

    pub fn config(&self) -> &'a ModelConfig {
        self.model.config()
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The forward pass with the adapters, and steering at every token; `pass`'s own adapters
    /// and intervention are replaced by these.
    pub fn forward(&self, input: &ForwardInput, pass: Forward) -> Result<ForwardOutput> {
        self.forward_masked(input, None, pass)
    }

    /// As [`Lm::forward`], steering only where `mask` (`[batch, seq]`, 1 = steer) says.
    pub fn forward_masked(
        &self,
        input: &ForwardInput,
        mask: Option<Tensor<2>>,
        pass: Forward,
    ) -> Result<ForwardOutput> {
        let intervention = self.steering.map(|s| s.intervention(&self.device(), mask));
        self.model.forward(
            input,
            Forward {
                adapters: self.adapters,
                intervention: intervention.as_ref(),
                ..pass
            },
        )
    }
}
