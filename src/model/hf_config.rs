//! `config.json` of Hugging Face checkpoints: read into a [`ModelConfig`] with transformers'
//! defaults for each family, and written back in the layout transformers 4 and 5 both read.

use super::config::{
    check_layer_count, Architecture, LayerType, Llama3RopeScaling, ModelConfig, RopeScaling,
};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer};
use std::path::Path;

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_hf_json(&text)
            .with_context(|| format!("invalid model config {}", path.display()))
    }

    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text)?;
        let architecture = raw.architecture()?;
        check_layer_count(raw.num_hidden_layers).context("field num_hidden_layers")?;
        let d = Defaults::of(architecture);
        let num_heads = raw.num_attention_heads;
        let head_dim = raw
            .head_dim
            .or(d.head_dim)
            .unwrap_or(raw.hidden_size.checked_div(num_heads).unwrap_or(0));
        let rope = raw.rope(&d)?;
        let sliding_window = raw.sliding_window(architecture);
        let gemma = raw.gemma_values(&d);
        let config = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
            head_dim,
            rope_theta: rope.theta,
            rope_scaling: rope.scaling,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(d.tie_word_embeddings),
            attention_bias: raw.attention_bias.unwrap_or(d.attention_bias),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            layer_types: raw.layer_types(architecture, sliding_window)?,
            sliding_window,
            rope_local_theta: rope.local_theta,
            query_pre_attn_scalar: gemma.query_pre_attn_scalar,
            attn_logit_softcapping: gemma.attn_logit_softcapping,
            final_logit_softcapping: gemma.final_logit_softcapping,
        };
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a Hugging Face `config.json` (without token ids, which belong to
    /// the tokenizer), in the legacy `rope_theta`/`rope_scaling` form that transformers 4 and 5
    /// both read, as [`ModelConfig::from_hf_json`] does.
    ///
    /// Frequency factors from a GGUF file (`rope_freqs.weight`) are written as the Llama 3
    /// scaling that reproduces them; factors that no Llama 3 scaling reproduces are an error,
    /// because a Hugging Face config cannot carry per-frequency factors.
    ///
    /// Qwen2 gets no `attention_bias` field: transformers always gives it q/k/v biases (a
    /// Qwen2 without them must be written with zero biases).
    pub fn to_hf_json(&self) -> Result<serde_json::Value> {
        // Gemma's configs name the activation `hidden_activation`.
        let activation_key = match self.architecture {
            Architecture::Gemma2 | Architecture::Gemma3 => "hidden_activation",
            _ => "hidden_act",
        };
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.hf_name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": f64_json(self.rms_norm_eps),
            "rope_theta": f32_json(self.rope_theta),
            "rope_scaling": self.rope_scaling_json()?,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        v[activation_key] = self.style().activation.hf_name().into();
        for (k, value) in self.family_json() {
            v[k] = value;
        }
        Ok(v)
    }

    fn rope_scaling_json(&self) -> Result<serde_json::Value> {
        let llama3 = match &self.rope_scaling {
            None => None,
            Some(RopeScaling::Linear { factor }) => {
                return Ok(serde_json::json!({"rope_type": "linear", "factor": f32_json(*factor)}))
            }
            Some(RopeScaling::Llama3(s)) => Some(*s),
            Some(RopeScaling::FreqFactors(f)) => {
                llama3_from_freq_factors(f, self.rope_theta, self.head_dim).context(
                    "rope frequency factors (GGUF rope_freqs.weight) cannot be written as a Hugging Face rope_scaling",
                )?
            }
        };
        Ok(match llama3 {
            None => serde_json::Value::Null,
            Some(s) => serde_json::json!({
                "rope_type": "llama3",
                "factor": f32_json(s.factor),
                "low_freq_factor": f32_json(s.low_freq_factor),
                "high_freq_factor": f32_json(s.high_freq_factor),
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
        })
    }

    /// The fields only some families read.
    fn family_json(&self) -> Vec<(&'static str, serde_json::Value)> {
        let window = serde_json::json!(self.sliding_window);
        let layer_types: serde_json::Value = self.layer_types.iter().map(|t| t.hf_name()).collect();
        let opt = |x: Option<f32>| x.map_or(serde_json::Value::Null, f32_json);
        match self.architecture {
            Architecture::Llama => vec![
                ("attention_bias", self.attention_bias.into()),
                ("mlp_bias", false.into()),
            ],
            Architecture::Mistral => vec![("sliding_window", window)],
            Architecture::Qwen2 | Architecture::Qwen3 => {
                let first_local = self
                    .layer_types
                    .iter()
                    .position(|&t| t == LayerType::Sliding);
                let mut fields = vec![
                    ("use_sliding_window", first_local.is_some().into()),
                    ("sliding_window", window),
                    (
                        "max_window_layers",
                        first_local.unwrap_or(self.num_layers).into(),
                    ),
                    ("layer_types", layer_types),
                ];
                if self.architecture == Architecture::Qwen3 {
                    fields.push(("attention_bias", self.attention_bias.into()));
                }
                fields
            }
            Architecture::Gemma2 | Architecture::Gemma3 => {
                let mut fields = vec![
                    ("sliding_window", window),
                    ("layer_types", layer_types),
                    // transformers' Gemma configs type it as an integer.
                    (
                        "query_pre_attn_scalar",
                        match self.query_pre_attn_scalar {
                            Some(x) if x.fract() == 0.0 => (x as u64).into(),
                            x => opt(x),
                        },
                    ),
                    ("attn_logit_softcapping", opt(self.attn_logit_softcapping)),
                    ("final_logit_softcapping", opt(self.final_logit_softcapping)),
                    ("attention_bias", self.attention_bias.into()),
                ];
                if let Some(theta) = self.rope_local_theta {
                    fields.push(("rope_local_base_freq", f32_json(theta)));
                }
                fields
            }
        }
    }
}

/// transformers' defaults of each family, for fields `config.json` leaves out.
struct Defaults {
    /// `None`: `hidden_size / num_attention_heads`.
    head_dim: Option<usize>,
    rope_theta: f32,
    /// `Some` for a family whose local layers have their own RoPE base (Gemma 3).
    rope_local_theta: Option<f32>,
    attention_bias: bool,
    tie_word_embeddings: bool,
    /// `Some` for the families that read Gemma's attention scale and soft caps.
    gemma: Option<GemmaValues>,
}

/// Gemma's attention scale and soft caps (also what a config gives for them).
#[derive(Clone, Copy, Default)]
struct GemmaValues {
    query_pre_attn_scalar: Option<f32>,
    attn_logit_softcapping: Option<f32>,
    final_logit_softcapping: Option<f32>,
}

impl Defaults {
    fn of(arch: Architecture) -> Self {
        let plain = Self {
            head_dim: None,
            rope_theta: 10_000.0,
            rope_local_theta: None,
            attention_bias: false,
            tie_word_embeddings: false,
            gemma: None,
        };
        let gemma = |attn, last| Self {
            head_dim: Some(256),
            tie_word_embeddings: true,
            gemma: Some(GemmaValues {
                query_pre_attn_scalar: Some(256.0),
                attn_logit_softcapping: attn,
                final_logit_softcapping: last,
            }),
            ..plain
        };
        match arch {
            Architecture::Llama | Architecture::Mistral => plain,
            Architecture::Qwen2 => Self {
                attention_bias: true,
                ..plain
            },
            Architecture::Qwen3 => Self {
                head_dim: Some(128),
                ..plain
            },
            Architecture::Gemma2 => gemma(Some(50.0), Some(30.0)),
            Architecture::Gemma3 => Self {
                rope_theta: 1_000_000.0,
                rope_local_theta: Some(10_000.0),
                ..gemma(None, None)
            },
        }
    }
}

/// transformers' `sliding_window` when `config.json` has none.
const DEFAULT_WINDOW: usize = 4096;
/// Qwen's `max_window_layers` when `config.json` has none.
const DEFAULT_MAX_WINDOW_LAYERS: usize = 28;

/// The RoPE of global and local layers.
struct Rope {
    theta: f32,
    scaling: Option<RopeScaling>,
    local_theta: Option<f32>,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    hidden_activation: Option<String>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    rope_parameters: Option<serde_json::Value>,
    rope_local_base_freq: Option<f32>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    use_sliding_window: Option<bool>,
    /// Absent (`None`: the family's default) and `null` (`Some(None)`: no window) differ.
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    max_window_layers: Option<usize>,
    layer_types: Option<Vec<String>>,
    sliding_window_pattern: Option<usize>,
    query_pre_attn_scalar: Option<f32>,
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<Option<f32>>,
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<Option<f32>>,
    use_bidirectional_attention: Option<bool>,
    text_config: Option<serde_json::Value>,
}

/// A field that is present, `null` or not: `Some(value)`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl HfConfig {
    fn architecture(&self) -> Result<Architecture> {
        let model_type = self.model_type.as_deref().unwrap_or("");
        if model_type == "gemma3" || self.text_config.is_some() {
            bail!(
                "field model_type: {model_type:?} is a multimodal checkpoint (text_config); only text models are supported (gemma3_text, e.g. Gemma 3 270M and 1B)"
            );
        }
        let arch = Architecture::from_hf_name(model_type).with_context(|| {
            format!(
                "field model_type: unknown architecture {model_type:?} (supported: {}; architectures = {:?})",
                Architecture::supported_hf_names(),
                self.architectures
            )
        })?;
        let expected = arch.style().activation.hf_name();
        for (field, value) in [
            ("hidden_act", &self.hidden_act),
            ("hidden_activation", &self.hidden_activation),
        ] {
            if let Some(v) = value.as_deref().filter(|&v| v != expected) {
                bail!("field {field}: {v:?} is not supported for {model_type} (expected {expected:?})");
            }
        }
        if self.use_bidirectional_attention == Some(true) {
            bail!("field use_bidirectional_attention: bidirectional attention (embedding models) is not supported");
        }
        Ok(arch)
    }

    /// The window of local layers, `None` when no layer is local.
    fn sliding_window(&self, arch: Architecture) -> Option<usize> {
        let given = self.sliding_window.unwrap_or(Some(DEFAULT_WINDOW));
        match arch {
            Architecture::Llama => None,
            // Qwen keeps its window only with `use_sliding_window`.
            Architecture::Qwen2 | Architecture::Qwen3 => {
                given.filter(|_| self.use_sliding_window == Some(true))
            }
            Architecture::Mistral | Architecture::Gemma2 | Architecture::Gemma3 => given,
        }
    }

    /// Which layers are local: `layer_types` when given (Qwen, Gemma), else the family's
    /// pattern. Without a window every layer is global, as in transformers.
    fn layer_types(&self, arch: Architecture, window: Option<usize>) -> Result<Vec<LayerType>> {
        let n = self.num_hidden_layers;
        let pattern = |every: usize| {
            (0..n)
                .map(|i| match (i + 1) % every.max(1) {
                    0 => LayerType::Full,
                    _ => LayerType::Sliding,
                })
                .collect::<Vec<_>>()
        };
        let types = match (arch, &self.layer_types) {
            (Architecture::Llama, _) => vec![LayerType::Full; n],
            (Architecture::Mistral, _) => vec![LayerType::Sliding; n],
            (_, Some(names)) => names
                .iter()
                .map(|name| match name.as_str() {
                    "full_attention" => Ok(LayerType::Full),
                    "sliding_attention" => Ok(LayerType::Sliding),
                    other => bail!("field layer_types: unsupported layer type {other:?} (supported: full_attention, sliding_attention)"),
                })
                .collect::<Result<_>>()?,
            (Architecture::Qwen2 | Architecture::Qwen3, None) => {
                let first = self.max_window_layers.unwrap_or(DEFAULT_MAX_WINDOW_LAYERS);
                (0..n)
                    .map(|i| if i >= first { LayerType::Sliding } else { LayerType::Full })
                    .collect()
            }
            (Architecture::Gemma2, None) => pattern(2),
            (Architecture::Gemma3, None) => pattern(self.sliding_window_pattern.unwrap_or(6)),
        };
        Ok(match window {
            Some(_) => types,
            None => vec![LayerType::Full; types.len()],
        })
    }

    /// Gemma's attention scale and soft caps, with the family's defaults; none for the others.
    fn gemma_values(&self, d: &Defaults) -> GemmaValues {
        let Some(g) = d.gemma else {
            return GemmaValues::default();
        };
        GemmaValues {
            query_pre_attn_scalar: self.query_pre_attn_scalar.or(g.query_pre_attn_scalar),
            attn_logit_softcapping: self
                .attn_logit_softcapping
                .unwrap_or(g.attn_logit_softcapping),
            final_logit_softcapping: self
                .final_logit_softcapping
                .unwrap_or(g.final_logit_softcapping),
        }
    }

    /// transformers ≥ 5 writes `rope_parameters` (theta and scaling together, or one such
    /// table per layer type: `full_attention`, `sliding_attention`); older configs have
    /// `rope_theta`, `rope_scaling` and Gemma 3's `rope_local_base_freq`.
    fn rope(&self, d: &Defaults) -> Result<Rope> {
        let params = self.rope_parameters.as_ref().filter(|p| !p.is_null());
        let (global, local) = match params {
            Some(p)
                if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() =>
            {
                (p.get("full_attention"), p.get("sliding_attention"))
            }
            Some(p) => (Some(p), None),
            None => (None, None),
        };
        let table = |v: Option<&serde_json::Value>, field: &str| -> Result<Option<HfRopeScaling>> {
            v.filter(|v| !v.is_null())
                .map(|v| HfRopeScaling::deserialize(v).with_context(|| format!("field {field}")))
                .transpose()
        };
        let global = table(global, "rope_parameters")?;
        let local = table(local, "rope_parameters.sliding_attention")?;
        let theta = global
            .as_ref()
            .and_then(|g| g.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(d.rope_theta);
        let scaling = match global.or_else(|| self.rope_scaling.clone()) {
            Some(s) => s.scaling("rope_scaling")?,
            None => None,
        };
        let local_theta = match local {
            Some(l) => {
                if l.clone()
                    .scaling("rope_parameters.sliding_attention")?
                    .is_some()
                {
                    bail!("field rope_parameters.sliding_attention: rope scaling of local layers is not supported");
                }
                l.rope_theta
                    .or(self.rope_local_base_freq)
                    .or(d.rope_local_theta)
            }
            None => self.rope_local_base_freq.or(d.rope_local_theta),
        };
        // Only Gemma 3 gives local layers a base of their own.
        let local_theta = local_theta.filter(|_| d.rope_local_theta.is_some());
        Ok(Rope {
            theta,
            scaling,
            local_theta,
        })
    }
}

#[derive(Deserialize, Clone)]
struct HfRopeScaling {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

impl HfRopeScaling {
    fn scaling(self, field: &str) -> Result<Option<RopeScaling>> {
        let kind = self.rope_type.or(self.kind).unwrap_or_default();
        let factor = || {
            self.factor
                .with_context(|| format!("field {field}.factor missing"))
        };
        Ok(match kind.as_str() {
            "llama3" => Some(RopeScaling::Llama3(Llama3RopeScaling {
                factor: factor()?,
                low_freq_factor: self
                    .low_freq_factor
                    .with_context(|| format!("field {field}.low_freq_factor missing"))?,
                high_freq_factor: self
                    .high_freq_factor
                    .with_context(|| format!("field {field}.high_freq_factor missing"))?,
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .with_context(|| format!("field {field}.original_max_position_embeddings missing"))?,
            })),
            "linear" => Some(RopeScaling::Linear { factor: factor()? }),
            "default" | "" => None,
            other => bail!(
                "field {field}.rope_type: unsupported rope scaling {other:?} (supported: llama3, linear)"
            ),
        })
    }
}

/// `x` as the shortest decimal that reads back as the same f32 (`0.1`, not `0.10000000149`).
fn f32_json(x: f32) -> serde_json::Value {
    let shortest: f64 = x.to_string().parse().unwrap_or(x as f64);
    serde_json::Number::from_f64(shortest).map_or(serde_json::Value::Null, Into::into)
}

/// Like [`f32_json`] for a value that came from an f32 (GGUF stores epsilons as f32), else as is.
fn f64_json(x: f64) -> serde_json::Value {
    if (x as f32) as f64 == x {
        f32_json(x as f32)
    } else {
        serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, Into::into)
    }
}

/// Largest relative difference allowed between the given frequency factors' inverse
/// frequencies and those of the derived Llama 3 scaling (the factors are stored as f32).
const FREQ_FACTOR_TOL: f64 = 1e-5;

/// The derived scaling's `low_freq_factor`: only ratios matter (see
/// [`llama3_from_freq_factors`]), and Llama 3.x uses 1.
const LOW: f64 = 1.0;
/// Llama 3.x's `high_freq_factor`, taken when too few factors lie in the band to fit one.
const HIGH: f64 = 4.0;

/// The Llama 3 scaling whose inverse frequencies equal `base / factors` (what llama.cpp's
/// converter writes as `rope_freqs.weight`), `None` when every factor is 1.
///
/// The scaling depends on `original_max_position_embeddings`, `low_freq_factor` and
/// `high_freq_factor` only through their ratios, so `low_freq_factor` is taken as 1 (Llama
/// 3.x's value). Between the two wavelength thresholds the smoothing term is linear in
/// 1/wavelength; a least-squares line through the factors in that band gives the other two.
/// With fewer than two factors in the band, `high_freq_factor` is taken as 4 (Llama 3.x's) and
/// `original_max_position_embeddings` chosen to fit. Whatever is derived is checked against
/// every factor.
fn llama3_from_freq_factors(
    factors: &[f32],
    theta: f32,
    head_dim: usize,
) -> Result<Option<Llama3RopeScaling>> {
    let fit = FreqFactors::new(factors, theta, head_dim)?;
    let factor = fit.factor;
    if fit.f.iter().all(|&x| close(x, 1.0)) {
        return Ok(None);
    }
    if factor < 1.0 {
        bail!("the largest factor is {factor} (< 1); Llama 3 scaling only divides frequencies");
    }
    let band = fit.band();
    let (old_len, high) = if band.len() >= 2 {
        fit_band(&band, factor)?
    } else {
        (fit.step_length(band.first()), HIGH)
    };
    fit.closest(old_len, high).map(Some)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= FREQ_FACTOR_TOL * b.abs()
}

/// GGUF frequency factors next to the rotary frequencies they divide.
struct FreqFactors {
    f: Vec<f64>,
    /// The unscaled inverse frequencies.
    base: Vec<f64>,
    /// `base / f`: what a derived scaling must reproduce.
    target: Vec<f64>,
    wavelen: Vec<f64>,
    /// The largest factor, Llama 3's `factor`.
    factor: f64,
}

impl FreqFactors {
    fn new(factors: &[f32], theta: f32, head_dim: usize) -> Result<Self> {
        let half = head_dim / 2;
        if factors.len() != half {
            bail!(
                "{} factors for head_dim {head_dim} (expected {half})",
                factors.len()
            );
        }
        let f: Vec<f64> = factors.iter().map(|&x| x as f64).collect();
        if let Some(bad) = f.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            bail!("factor {bad} is not a positive number");
        }
        let base: Vec<f64> = (0..half)
            .map(|i| 1.0 / (theta as f64).powf((2 * i) as f64 / head_dim as f64))
            .collect();
        let target: Vec<f64> = base.iter().zip(&f).map(|(b, f)| b / f).collect();
        let factor = f.iter().cloned().fold(f64::MIN, f64::max);
        let wavelen: Vec<f64> = base
            .iter()
            .map(|b| 2.0 * std::f64::consts::PI / b)
            .collect();
        Ok(Self {
            f,
            base,
            target,
            wavelen,
            factor,
        })
    }

    /// `(1/wavelength, smoothing weight)` of each factor strictly between 1 and `factor`, the
    /// weight `s` solving `1/f = (1 - s)/factor + s`.
    fn band(&self) -> Vec<(f64, f64)> {
        let (f, factor) = (&self.f, self.factor);
        (0..f.len())
            .filter(|&i| !close(f[i], 1.0) && !close(f[i], factor))
            .map(|i| {
                (
                    1.0 / self.wavelen[i],
                    (1.0 / f[i] - 1.0 / factor) / (1.0 - 1.0 / factor),
                )
            })
            .collect()
    }

    /// `original_max_position_embeddings` with `high_freq_factor` [`HIGH`], from the one factor in the
    /// band, or without one from where the factors step from 1 to `factor`.
    fn step_length(&self, in_band: Option<&(f64, f64)>) -> f64 {
        if let Some(&(x, s)) = in_band {
            return (s * (HIGH - LOW) + LOW) / x;
        }
        // A step from 1 to `factor`: any length putting the band between the two works.
        let below = (0..self.f.len())
            .filter(|&i| close(self.f[i], 1.0))
            .map(|i| self.wavelen[i] * HIGH)
            .fold(0.0, f64::max);
        let above = (0..self.f.len())
            .filter(|&i| close(self.f[i], self.factor))
            .map(|i| self.wavelen[i] * LOW)
            .fold(f64::MAX, f64::min);
        if 8192.0 >= below && 8192.0 <= above {
            8192.0
        } else {
            below.ceil()
        }
    }

    /// The scaling `(old_len, LOW, high)` or one of its multiples, preferring round values
    /// (Llama 3.x: 8192, 1, 4) when they fit as well; an error naming the closest when none
    /// reproduces every factor.
    fn closest(&self, old_len: f64, high: f64) -> Result<Llama3RopeScaling> {
        // Scaled by k, (old, low, high) describe the same scaling; a k that makes the length a
        // whole number may be needed, as transformers wants an integer there.
        let candidate = |k: f64, high: f64| Llama3RopeScaling {
            factor: self.factor as f32,
            low_freq_factor: (LOW * k) as f32,
            high_freq_factor: (high * k) as f32,
            original_max_position_embeddings: (old_len * k).round().max(1.0) as usize,
        };
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        let mut best: Option<(Llama3RopeScaling, (f64, usize))> = None;
        let candidates = (1..=8)
            .map(|k| k as f64)
            .flat_map(|k| [candidate(k, round(high)), candidate(k, high)]);
        for s in candidates {
            let d = self.deviation(&s);
            if best.as_ref().is_none_or(|(_, bd)| d.0 < bd.0) {
                best = Some((s, d));
            }
            if d.0 <= FREQ_FACTOR_TOL {
                return Ok(s);
            }
        }
        let (s, (d, i)) = best.expect("candidates were tried");
        bail!(
            "no Llama 3 scaling reproduces them: the closest (factor {}, low_freq_factor {}, high_freq_factor {}, original_max_position_embeddings {}) is off by {:.2e} (relative) at frequency {i}, factor {}",
            s.factor,
            s.low_freq_factor,
            s.high_freq_factor,
            s.original_max_position_embeddings,
            d,
            self.f[i]
        )
    }

    /// The largest relative difference between `s`'s inverse frequencies and the target ones,
    /// and the frequency where it is.
    fn deviation(&self, s: &Llama3RopeScaling) -> (f64, usize) {
        let old = s.original_max_position_embeddings as f64;
        let (l, h, fac) = (
            s.low_freq_factor as f64,
            s.high_freq_factor as f64,
            s.factor as f64,
        );
        (0..self.f.len())
            .map(|i| {
                let (b, w) = (self.base[i], self.wavelen[i]);
                let scaled = if w > old / l {
                    b / fac
                } else if w < old / h {
                    b
                } else {
                    let smooth = (old / w - l) / (h - l);
                    (1.0 - smooth) * b / fac + smooth * b
                };
                ((scaled - self.target[i]).abs() / self.target[i], i)
            })
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a })
    }
}

/// `(original_max_position_embeddings, high_freq_factor)` from a least-squares line through
/// the band's smoothing weights: `s = x·old/(high - 1) - 1/(high - 1)`, x = 1/wavelength (with
/// low = 1).
fn fit_band(band: &[(f64, f64)], factor: f64) -> Result<(f64, f64)> {
    let n = band.len() as f64;
    let (mx, ms) = band
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, s)| (a + x / n, b + s / n));
    let sxx: f64 = band.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxs: f64 = band.iter().map(|(x, s)| (x - mx) * (s - ms)).sum();
    let slope = sxs / sxx;
    let intercept = ms - slope * mx;
    if !(slope > 0.0 && intercept < 0.0) {
        bail!("no Llama 3 scaling reproduces them: the factors between 1 and {factor} do not rise with wavelength as Llama 3 scaling's do");
    }
    Ok((-slope / intercept, 1.0 - 1.0 / intercept))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#""model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2"#;

    #[test]
    fn reads_rope_parameters_of_transformers_5() {
        let c = ModelConfig::from_hf_json(&format!(
            r#"{{ {BASE}, "rope_parameters": {{"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}} }}"#
        ))
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3(s)) if s.original_max_position_embeddings == 32)
        );
    }

    #[test]
    fn reads_legacy_rope_fields() {
        let c = ModelConfig::from_hf_json(&format!(
            r#"{{ {BASE}, "rope_theta": 1e6, "rope_scaling": null }}"#
        ))
        .unwrap();
        assert_eq!(
            (c.rope_theta, c.rope_scaling, c.num_kv_heads, c.head_dim),
            (1e6, None, 2, 4)
        );
    }

    #[test]
    fn rejects_unknown_rope_type() {
        let err = ModelConfig::from_hf_json(&format!(
            r#"{{ {BASE}, "rope_scaling": {{"rope_type": "yarn", "factor": 4.0}} }}"#
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("yarn"));
    }

    /// The body of a config.json of `model_type` with `layers` layers and the given fields.
    fn family(model_type: &str, layers: usize, fields: &str) -> Result<ModelConfig> {
        ModelConfig::from_hf_json(&format!(
            r#"{{ "model_type": "{model_type}", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": {layers}, "num_attention_heads": 2 {fields} }}"#
        ))
    }

    /// google/gemma-3-270m's config.json as the Hub has it (transformers 4 layout).
    #[test]
    fn reads_gemma3_hub_config() {
        let c = family(
            "gemma3_text",
            8,
            r#", "_sliding_window_pattern": 6, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
              "query_pre_attn_scalar": 256, "rope_local_base_freq": 10000.0, "rope_theta": 1000000.0,
              "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
              "attn_logit_softcapping": null, "final_logit_softcapping": null"#,
        )
        .unwrap();
        let (s, f) = (LayerType::Sliding, LayerType::Full);
        assert_eq!(c.layer_types, [s, s, s, s, s, f, s, s]);
        assert_eq!(
            (c.sliding_window, c.rope_theta, c.rope_local_theta),
            (Some(512), 1e6, Some(1e4))
        );
        assert_eq!(c.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
        assert_eq!(
            (c.head_dim, c.query_pre_attn_scalar, c.tie_word_embeddings),
            (256, Some(256.0), true)
        );
        assert_eq!(
            (c.attn_logit_softcapping, c.final_logit_softcapping),
            (None, None)
        );
    }

    #[test]
    fn gemma2_defaults_to_alternating_layers_and_soft_caps() {
        let c = family("gemma2", 4, "").unwrap();
        let (s, f) = (LayerType::Sliding, LayerType::Full);
        assert_eq!(c.layer_types, [s, f, s, f]);
        assert_eq!(
            (
                c.sliding_window,
                c.attn_logit_softcapping,
                c.final_logit_softcapping
            ),
            (Some(4096), Some(50.0), Some(30.0))
        );
        assert_eq!(c.rope_local_theta, None);
    }

    /// MistralConfig's window is 4096 when absent; `null` turns it off (Mistral 7B v0.2+).
    #[test]
    fn mistral_window_absent_null_or_given() {
        let all = |c: &ModelConfig, t| c.layer_types.iter().all(|&k| k == t);
        let absent = family("mistral", 2, "").unwrap();
        assert!(absent.sliding_window == Some(4096) && all(&absent, LayerType::Sliding));
        let null = family("mistral", 2, r#", "sliding_window": null"#).unwrap();
        assert!(null.sliding_window.is_none() && all(&null, LayerType::Full));
        let given = family("mistral", 2, r#", "sliding_window": 7"#).unwrap();
        assert_eq!(given.sliding_window, Some(7));
    }

    /// Qwen's window applies only with use_sliding_window, from layer max_window_layers on.
    #[test]
    fn qwen_window_needs_use_sliding_window() {
        let off = family("qwen3", 3, r#", "sliding_window": 4"#).unwrap();
        assert_eq!((off.sliding_window, off.head_dim), (None, 128));
        let on = family(
            "qwen2",
            3,
            r#", "use_sliding_window": true, "sliding_window": 4, "max_window_layers": 1"#,
        )
        .unwrap();
        let (s, f) = (LayerType::Sliding, LayerType::Full);
        assert_eq!(
            (on.sliding_window, on.layer_types),
            (Some(4), vec![f, s, s])
        );
        assert!(on.attention_bias);
    }

    #[test]
    fn unknown_or_multimodal_model_types_are_refused() {
        let err = format!("{:#}", family("phi3", 1, "").unwrap_err());
        assert!(
            err.contains("\"phi3\"")
                && err.contains("llama, mistral, qwen2, qwen3, gemma2, gemma3_text"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            family("gemma3", 1, r#", "text_config": {}"#).unwrap_err()
        );
        assert!(
            err.contains("multimodal") && err.contains("gemma3_text"),
            "{err}"
        );
        let err = format!(
            "{:#}",
            family("gemma3_text", 1, r#", "hidden_activation": "gelu""#).unwrap_err()
        );
        assert!(
            err.contains("hidden_activation") && err.contains("gelu_pytorch_tanh"),
            "{err}"
        );
    }

    /// A corrupt layer count is refused before a per-layer table is allocated.
    #[test]
    fn implausible_layer_counts_are_refused() {
        let err = format!("{:#}", family("gemma3_text", 1 << 40, "").unwrap_err());
        assert!(
            err.contains("num_hidden_layers") && err.contains("not a plausible"),
            "{err}"
        );
    }

    /// Every fixture's config survives being written and read back.
    #[test]
    fn hf_json_round_trips_every_family() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in [
            "tiny-llama",
            "tiny-qwen2",
            "tiny-qwen3",
            "tiny-mistral",
            "tiny-gemma2",
            "tiny-gemma3",
        ] {
            let c = ModelConfig::from_hf_config(&fixtures.join(name).join("config.json")).unwrap();
            let back = ModelConfig::from_hf_json(&c.to_hf_json().unwrap().to_string()).unwrap();
            assert_eq!(back, c, "{name}");
        }
    }
}
