//! The architecture hyper-parameters shared by Llama and Qwen2.
//!
//! Both families are one implementation: they differ only by q/k/v bias, tied embeddings and
//! rope scaling, which are flags here. Loaders fill this from `config.json` or GGUF metadata.

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
}

impl Architecture {
    /// Maps the names used by HF `model_type` and GGUF `general.architecture`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
        }
    }

    /// The transformers class of the causal LM (`architectures` in `config.json`).
    pub fn hf_class(self) -> &'static str {
        match self {
            Self::Llama => "LlamaForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// How the rotary base frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Llama3(Llama3RopeScaling),
    /// Per-frequency divisors, as GGUF files store Llama 3 scaling (`rope_freqs.weight`).
    FreqFactors(Vec<f32>),
}

/// Llama 3's frequency-dependent rescaling of the rotary base frequencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Qwen2 has biases on q/k/v; Llama has none.
    pub attention_bias: bool,
    pub max_position_embeddings: usize,
}

impl ModelConfig {
    /// Checks the invariants the forward pass relies on, so a bad checkpoint fails at load.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                problems.push(format!("{name} must be positive"));
            }
        }
        if self.num_kv_heads > 0 && !self.num_heads.is_multiple_of(self.num_kv_heads) {
            problems.push(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            problems.push(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            problems.push(format!("rope_theta ({}) must be positive", self.rope_theta));
        }
        // eps ≤ 0 divides by zero on an all-zero row (padding, a dead channel): NaN downstream.
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            problems.push(format!(
                "rms_norm_eps ({}) must be a positive number",
                self.rms_norm_eps
            ));
        }
        if self.max_position_embeddings == 0 {
            problems.push("max_position_embeddings must be positive".into());
        }
        if let Some(RopeScaling::FreqFactors(f)) = &self.rope_scaling {
            if f.len() != self.head_dim / 2 {
                problems.push(format!(
                    "rope frequency factors: {} values for head_dim {}",
                    f.len(),
                    self.head_dim
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("{}", problems.join("; "))
        }
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
        let rope_scaling = match &self.rope_scaling {
            None => None,
            Some(RopeScaling::Llama3(s)) => Some(*s),
            Some(RopeScaling::FreqFactors(f)) => {
                llama3_from_freq_factors(f, self.rope_theta, self.head_dim).context(
                    "rope frequency factors (GGUF rope_freqs.weight) cannot be written as a Hugging Face rope_scaling",
                )?
            }
        };
        let rope_scaling = match rope_scaling {
            None => serde_json::Value::Null,
            Some(s) => serde_json::json!({
                "rope_type": "llama3",
                "factor": f32_json(s.factor),
                "low_freq_factor": f32_json(s.low_freq_factor),
                "high_freq_factor": f32_json(s.high_freq_factor),
                "original_max_position_embeddings": s.original_max_position_embeddings,
            }),
        };
        let mut v = serde_json::json!({
            "architectures": [self.architecture.hf_class()],
            "model_type": self.architecture.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": f64_json(self.rms_norm_eps),
            "rope_theta": f32_json(self.rope_theta),
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float32",
            "use_cache": true,
        });
        if self.architecture == Architecture::Llama {
            v["attention_bias"] = self.attention_bias.into();
            v["mlp_bias"] = false.into();
        }
        Ok(v)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read model config {}", path.display()))?;
        Self::from_hf_json(&text)
            .with_context(|| format!("invalid model config {}", path.display()))
    }

    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text)?;
        let model_type = raw.model_type.as_deref().unwrap_or("");
        let architecture = Architecture::from_name(model_type).with_context(|| {
            format!(
                "field model_type: unknown architecture {model_type:?} (supported: llama, qwen2; architectures = {:?})",
                raw.architectures
            )
        })?;
        // transformers ≥ 5 writes `rope_parameters` (theta and scaling together); older
        // configs have `rope_theta` and `rope_scaling`.
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(10_000.0);
        let rope_scaling = match raw.rope_parameters.or(raw.rope_scaling) {
            None => None,
            Some(s) => s.scaling()?,
        };
        let num_heads = raw.num_attention_heads;
        let config = Self {
            architecture,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads,
            num_kv_heads: raw.num_key_value_heads.unwrap_or(num_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size.checked_div(num_heads).unwrap_or(0)),
            rope_theta,
            rope_scaling,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: raw
                .attention_bias
                .unwrap_or(architecture == Architecture::Qwen2),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
        };
        config.validate()?;
        Ok(config)
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
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    rope_parameters: Option<HfRopeScaling>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
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
    fn scaling(self) -> Result<Option<RopeScaling>> {
        let kind = self.rope_type.or(self.kind).unwrap_or_default();
        Ok(match kind.as_str() {
            "llama3" => Some(RopeScaling::Llama3(Llama3RopeScaling {
                factor: self.factor.context("field rope_scaling.factor missing")?,
                low_freq_factor: self.low_freq_factor.context("field rope_scaling.low_freq_factor missing")?,
                high_freq_factor: self
                    .high_freq_factor
                    .context("field rope_scaling.high_freq_factor missing")?,
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .context("field rope_scaling.original_max_position_embeddings missing")?,
            })),
            "default" | "" => None,
            other => bail!("field rope_scaling.rope_type: unsupported rope scaling {other:?} (supported: llama3)"),
        })
    }
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
}
