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
        if self.num_kv_heads > 0 && self.num_heads % self.num_kv_heads != 0 {
            problems.push(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            problems.push(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if !(self.rope_theta > 0.0) {
            problems.push(format!("rope_theta ({}) must be positive", self.rope_theta));
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
            Some(s) => {
                let kind = s.rope_type.or(s.kind).unwrap_or_default();
                match kind.as_str() {
                    "llama3" => Some(RopeScaling::Llama3(Llama3RopeScaling {
                        factor: s.factor.context("field rope_scaling.factor missing")?,
                        low_freq_factor: s.low_freq_factor.context("field rope_scaling.low_freq_factor missing")?,
                        high_freq_factor: s
                            .high_freq_factor
                            .context("field rope_scaling.high_freq_factor missing")?,
                        original_max_position_embeddings: s
                            .original_max_position_embeddings
                            .context("field rope_scaling.original_max_position_embeddings missing")?,
                    })),
                    "default" | "" => None,
                    other => bail!("field rope_scaling.rope_type: unsupported rope scaling {other:?} (supported: llama3)"),
                }
            }
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
            head_dim: raw.head_dim.unwrap_or(if num_heads == 0 {
                0
            } else {
                raw.hidden_size / num_heads
            }),
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
