//! LoRA adapters, kept unmerged: a target projection computes `x·W + s·(drop(x)·A)·B`, as PEFT
//! does. Unmerged, the frozen `W` never needs a gradient (merging, `W + s·A·B`, would make every
//! step pay for a full weight gradient; measured ~30% slower on CPU).
//!
//! `A` is stored `[in, r]` and `B` `[r, out]` (burn's `Linear` orientation); PEFT files store the
//! transposes (`lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`) and are converted on the
//! host when read or written.

use crate::model::transformer::transpose;
use crate::model::ModelConfig;
use anyhow::{bail, ensure, Context, Result};
use burn::tensor::Device;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

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

    fn from_module_name(name: &str) -> Option<Self> {
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
        config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut layers = Vec::with_capacity(model.num_layers);
        for _ in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &t in &config.targets {
                let [d_in, d_out] = t.shape(model);
                let bound = 1.0 / (d_in as f32).sqrt();
                let a_rows: Vec<f32> = (0..config.r * d_in)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                slots[t as usize] = Some(LoraPair {
                    a: host_tensor(transpose(&a_rows, config.r, d_in), [d_in, config.r], device),
                    b: Tensor::zeros([config.r, d_out], device),
                });
            }
            layers.push(slots);
        }
        Ok(Self {
            config: config.clone(),
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

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir` in PEFT's format,
    /// so `PeftModel.from_pretrained(base, dir)` loads them.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut tensors: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        for (i, t, pair) in self.iter() {
            let [d_in, r] = pair.a.dims();
            let d_out = pair.b.dims()[1];
            tensors.push((
                t.peft_key(i, "lora_A"),
                transpose(&host(&pair.a)?, d_in, r),
                vec![r, d_in],
            ));
            tensors.push((
                t.peft_key(i, "lora_B"),
                transpose(&host(&pair.b)?, r, d_out),
                vec![d_out, r],
            ));
        }
        let views: Vec<_> = tensors
            .iter()
            .map(|(k, v, s)| (k.as_str(), crate::tensor_file::Values::F32(v), s.clone()))
            .collect();
        crate::tensor_file::write(&dir.join("adapter_model.safetensors"), &views, None)?;
        let c = &self.config;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "use_rslora": c.rslora,
            "target_modules": c.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_dora": false,
            "modules_to_save": null,
            "layers_to_transform": null,
        });
        let path = dir.join("adapter_config.json");
        crate::atomic::write_json(&path, &config)
    }

    /// Reads a PEFT LoRA adapter directory (ours or PEFT's) for a model with `model`'s shapes.
    pub fn load_peft(dir: &Path, model: &ModelConfig, device: &Device) -> Result<Self> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("cannot read {}", config_path.display()))?;
        let config = peft_config(&text).with_context(|| format!("{}", config_path.display()))?;
        let weights_path = dir.join("adapter_model.safetensors");
        let bytes = std::fs::read(&weights_path)
            .with_context(|| format!("cannot read {}", weights_path.display()))?;
        let file = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", weights_path.display()))?;
        let mut tensors = HashMap::new();
        for (key, view) in file.tensors() {
            let values = crate::loader::safetensors::view_to_f32(&view)
                .with_context(|| format!("{}: tensor {key}", weights_path.display()))?;
            tensors.insert(key, (view.shape().to_vec(), values));
        }
        let adapters = Self::from_peft_tensors(config, model, device, &mut tensors)
            .with_context(|| format!("{}", weights_path.display()))?;
        if let Some(extra) = tensors.keys().min() {
            bail!(
                "{}: tensor {extra} is not a LoRA weight of this model's {} layers and targets {:?} (modules_to_save, DoRA and other adapter kinds are not supported)",
                weights_path.display(),
                model.num_layers,
                adapters.config.targets
            );
        }
        Ok(adapters)
    }

    /// Builds adapters from tensors under PEFT's names and orientation (`key -> (shape,
    /// values)`), removing the ones it uses from `tensors`.
    pub fn from_peft_tensors(
        config: LoraConfig,
        model: &ModelConfig,
        device: &Device,
        tensors: &mut HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Result<Self> {
        config.validate()?;
        let r = config.r;
        let mut layers = Vec::with_capacity(model.num_layers);
        for i in 0..model.num_layers {
            let mut slots: [Option<LoraPair>; 7] = Default::default();
            for &t in &config.targets {
                let [d_in, d_out] = t.shape(model);
                let mut take = |matrix: &str, shape: [usize; 2]| -> Result<Vec<f32>> {
                    let key = t.peft_key(i, matrix);
                    let (found, values) = tensors
                        .remove(&key)
                        .with_context(|| format!("missing tensor {key}"))?;
                    ensure!(
                        found == shape,
                        "tensor {key} has shape {found:?}, expected {shape:?} (r = {r}, model {d_in}x{d_out})"
                    );
                    Ok(values)
                };
                let a = take("lora_A", [r, d_in])?;
                let b = take("lora_B", [d_out, r])?;
                slots[t as usize] = Some(LoraPair {
                    a: host_tensor(transpose(&a, r, d_in), [d_in, r], device),
                    b: host_tensor(transpose(&b, d_out, r), [r, d_out], device),
                });
            }
            layers.push(slots);
        }
        Ok(Self {
            config,
            layers,
            dropout_active: false,
        })
    }
}

/// The `LoraConfig` of a PEFT `adapter_config.json`.
fn peft_config(text: &str) -> Result<LoraConfig> {
    #[derive(Deserialize)]
    struct Peft {
        peft_type: Option<String>,
        r: usize,
        lora_alpha: f32,
        #[serde(default)]
        lora_dropout: f32,
        #[serde(default)]
        use_rslora: bool,
        target_modules: TargetModules,
        #[serde(default)]
        use_dora: bool,
        #[serde(default)]
        layers_to_transform: Option<serde_json::Value>,
        #[serde(default)]
        rank_pattern: BTreeMap<String, serde_json::Value>,
        #[serde(default)]
        alpha_pattern: BTreeMap<String, serde_json::Value>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum TargetModules {
        List(Vec<String>),
        Pattern(String),
    }
    let p: Peft = serde_json::from_str(text).context("not a PEFT adapter config")?;
    if let Some(kind) = &p.peft_type {
        ensure!(
            kind == "LORA",
            "peft_type is {kind:?}; only LORA adapters are supported"
        );
    }
    ensure!(!p.use_dora, "use_dora: DoRA adapters are not supported");
    ensure!(
        p.rank_pattern.is_empty() && p.alpha_pattern.is_empty(),
        "rank_pattern/alpha_pattern: per-module ranks or alphas are not supported"
    );
    ensure!(
        p.layers_to_transform.as_ref().is_none_or(|v| v.is_null()),
        "layers_to_transform is not supported (adapters on every layer are expected)"
    );
    let names = match p.target_modules {
        TargetModules::List(names) => names,
        TargetModules::Pattern(p) => {
            bail!("target_modules is a pattern ({p:?}); a list of module names is expected")
        }
    };
    let mut targets = names
        .iter()
        .map(|n| {
            Target::from_module_name(n).with_context(|| {
                format!("target_modules: unknown module {n:?} (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)")
            })
        })
        .collect::<Result<Vec<_>>>()?;
    targets.sort();
    targets.dedup();
    let config = LoraConfig {
        r: p.r,
        alpha: p.lora_alpha,
        rslora: p.use_rslora,
        dropout: p.lora_dropout,
        targets,
    };
    config.validate()?;
    Ok(config)
}

pub(crate) fn host(t: &Tensor<2>) -> Result<Vec<f32>> {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading a tensor back: {e:?}"))
}

pub(crate) fn host_tensor(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}
