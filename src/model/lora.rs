//! LoRA adapters, kept unmerged: a target projection computes `x·W + s·(drop(x)·A)·B`, as PEFT
//! does. Unmerged, the frozen `W` never needs a gradient (merging, `W + s·A·B`, would make every
//! step pay for a full weight gradient; measured ~30% slower on CPU).
//!
//! `A` is stored `[in, r]` and `B` `[r, out]` (burn's `Linear` orientation); PEFT files store the
//! transposes and are read and written by `loader::peft`.

use super::{transpose, ModelConfig};
use anyhow::{ensure, Result};
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A projection of a decoder block that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module's name in Hugging Face checkpoints and PEFT's `target_modules`.
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    fn parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    pub fn from_module_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.module_name() == name)
    }

    /// `[in, out]` of the projection in `config`.
    pub fn shape(self, c: &ModelConfig) -> [usize; 2] {
        let (h, q, kv, m) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        match self {
            Target::Q => [h, q],
            Target::K | Target::V => [h, kv],
            Target::O => [q, h],
            Target::Gate | Target::Up => [h, m],
            Target::Down => [m, h],
        }
    }

    /// PEFT's key for this adapter's `lora_A`/`lora_B` weight in `adapter_model.safetensors`.
    pub fn peft_key(self, layer: usize, matrix: &str) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}.{matrix}.weight",
            self.parent(),
            self.module_name()
        )
    }
}

/// The adapter hyper-parameters (the recipe's `[lora]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank of `A·B`.
    pub r: usize,
    /// Scale numerator: the update is scaled by `alpha / r` (or `alpha / √r` with `rslora`).
    pub alpha: f32,
    /// Rank-stabilised scaling (`alpha / √r`, Kalajdzievski 2023).
    pub rslora: bool,
    /// Dropout on the adapter's input (training only).
    pub dropout: f32,
    /// Which projections of every block get an adapter.
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            rslora: false,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.r > 0, "lora.r must be at least 1");
        ensure!(
            self.alpha.is_finite(),
            "lora.alpha must be a finite number, got {}",
            self.alpha
        );
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "lora.dropout must be in [0, 1), got {}",
            self.dropout
        );
        ensure!(!self.targets.is_empty(), "lora.targets is empty");
        Ok(())
    }
}

/// One projection's adapter.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// `[in, r]`
    pub a: Tensor<2>,
    /// `[r, out]`
    pub b: Tensor<2>,
}

/// The adapters of every block, applied by [`crate::model::CausalLm::forward`] when given.
#[derive(Debug, Clone)]
pub struct Adapters {
    pub config: LoraConfig,
    /// `layers[i][target as usize]`
    layers: Vec<[Option<LoraPair>; 7]>,
    /// Dropout is applied only when set (training forward passes).
    pub dropout_active: bool,
}

impl Adapters {
    /// PEFT's initialisation: `A` Kaiming-uniform (a = √5, i.e. U(±1/√in)), `B` zero, so training
    /// starts from the base model exactly. `A` is drawn `[r, in]` row by row as PEFT lays it out.
    pub fn init(
        config: &LoraConfig,
        model: &ModelConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = StdRng::seed_from_u64(seed);
        let r = config.r;
        Self::build(config.clone(), model, |_, _, [d_in, d_out]| {
            let bound = 1.0 / (d_in as f32).sqrt();
            let a_rows: Vec<f32> = (0..r * d_in)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            Ok(LoraPair {
                a: host_tensor(transpose(&a_rows, r, d_in), [d_in, r], device),
                b: Tensor::zeros([r, d_out], device),
            })
        })
    }

    /// Adapters on `config.targets` of every block, `pair(layer, target, [in, out])` making each,
    /// in layer then target order.
    pub fn build(
        config: LoraConfig,
        model: &ModelConfig,
        mut pair: impl FnMut(usize, Target, [usize; 2]) -> Result<LoraPair>,
    ) -> Result<Self> {
        config.validate()?;
        let mut layers = Vec::with_capacity(model.num_layers);
        for i in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &t in &config.targets {
                slots[t as usize] = Some(pair(i, t, t.shape(model))?);
            }
            layers.push(slots);
        }
        Ok(Self {
            config,
            layers,
            dropout_active: false,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers.get(layer)?[target as usize].as_ref()
    }

    /// Every adapter in a fixed order (layer, then target order), with its PEFT key stem.
    pub fn iter(&self) -> impl Iterator<Item = (usize, Target, &LoraPair)> {
        self.layers.iter().enumerate().flat_map(|(i, slots)| {
            Target::ALL
                .into_iter()
                .filter_map(move |t| slots[t as usize].as_ref().map(|p| (i, t, p)))
        })
    }

    /// Replaces every matrix through `f(layer, target, is_b, tensor)`, keeping the order of
    /// [`Adapters::iter`].
    pub fn map(&self, mut f: impl FnMut(usize, Target, bool, Tensor<2>) -> Tensor<2>) -> Self {
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, slots)| {
                let mut out: [Option<LoraPair>; 7] = Default::default();
                for t in Target::ALL {
                    if let Some(p) = &slots[t as usize] {
                        out[t as usize] = Some(LoraPair {
                            a: f(i, t, false, p.a.clone()),
                            b: f(i, t, true, p.b.clone()),
                        });
                    }
                }
                out
            })
            .collect();
        Self {
            config: self.config.clone(),
            layers,
            dropout_active: self.dropout_active,
        }
    }

    /// `s·(drop(x)·A)·B` for the adapter on (`layer`, `target`), `None` when it has none.
    ///
    /// # Shapes
    /// - x: `[batch, seq, in]` → `[batch, seq, out]`
    pub fn delta(&self, layer: usize, target: Target, x: Tensor<3>) -> Option<Tensor<3>> {
        let pair = self.get(layer, target)?;
        let [b, t, d_in] = x.dims();
        let mut x = x.reshape([b * t, d_in]).cast(pair.a.dtype());
        let p = self.config.dropout;
        if self.dropout_active && p > 0.0 {
            let keep = Tensor::<2>::random(
                [b * t, d_in],
                Distribution::Bernoulli(1.0 - p as f64),
                &x.device(),
            );
            x = x * keep / (1.0 - p);
        }
        let out = x.matmul(pair.a.clone()).matmul(pair.b.clone()) * self.config.scale();
        let d_out = pair.b.dims()[1];
        Some(out.reshape([b, t, d_out]))
    }
}

/// A frozen linear layer with a LoRA adapter: `y = x·W (+ bias) + s·(x·A)·B`.
pub struct LoraLinear<'a> {
    /// `[in, out]`
    pub weight: &'a Tensor<2>,
    /// `[out]`
    pub bias: Option<&'a Tensor<1>>,
    /// `[in, r]`
    pub a: &'a Tensor<2>,
    /// `[r, out]`
    pub b: &'a Tensor<2>,
    pub scale: f32,
}

/// `layer` applied to `x` (`[batch, seq, in]`) by the fused kernel of the flex backend (f32, a
/// frozen weight), forward and backward in a few matrix products without the adapter's own
/// output, scaling and sum as separate passes; `None` when it does not apply, and the caller
/// computes `x·W + b` and [`Adapters::delta`] apart.
pub fn linear_fused(x: &Tensor<3>, layer: &LoraLinear) -> Option<Tensor<3>> {
    super::flex::lora::project(x, layer)
}

impl Adapters {
    /// `linear` with the adapter on (`layer`, `target`) through [`linear_fused`]; `None` when the
    /// block has no adapter there, dropout is on, or the fused kernel does not apply.
    pub fn fused_linear(
        &self,
        layer: usize,
        target: Target,
        linear: &burn::nn::Linear,
        x: &Tensor<3>,
    ) -> Option<Tensor<3>> {
        let pair = self.get(layer, target)?;
        if self.dropout_active && self.config.dropout > 0.0 {
            return None;
        }
        let (weight, bias) = (linear.weight.val(), linear.bias.as_ref().map(|b| b.val()));
        let layer = LoraLinear {
            weight: &weight,
            bias: bias.as_ref(),
            a: &pair.a,
            b: &pair.b,
            scale: self.config.scale(),
        };
        linear_fused(x, &layer)
    }
}

pub fn host(t: &Tensor<2>) -> Result<Vec<f32>> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
}

pub fn host_tensor(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
