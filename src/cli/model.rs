//! Commands that run a model directly: `generate`, `forward`, `merge`.

use super::args::{ModelArgs, SamplingArgs, SteerArgs};
use crate::generate::{generate, Sampling, Specials};
use crate::lm::Lm;
use crate::loader::{peft, ModelSpec};
use crate::model::{Forward, ForwardInput, LogitsFor};
use crate::tensor_file::{self, Values};
use crate::tokenizer::ChatMessage;
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, conflicts_with = "raw")]
    system: Option<String>,
    #[arg(long)]
    prompt: String,
    /// Continue --prompt as plain text, without the chat template (base models have none),
    /// and print only the continuation.
    #[arg(long)]
    raw: bool,
    /// Default: 256 tokens, greedy, top-p 1, seed 0.
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    steer: SteerArgs,
}

pub fn generate_reply(a: GenerateArgs) -> Result<()> {
    let m = a.model.spec().load()?;
    let prompt = if a.raw {
        // As `tokenizer(prompt)` in transformers: with the BOS the tokenizer adds, if any.
        m.tokenizer.encode(&a.prompt, true)?
    } else {
        ensure!(
            m.tokenizer.has_chat_template(),
            "`generate` chats through the model's chat template, and `{}` has none (a base \
             model?); pass --raw to continue --prompt as plain text",
            a.model.spec().source
        );
        let mut messages = Vec::new();
        if let Some(system) = a.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", a.prompt));
        m.tokenizer.encode_chat(&messages, true)?.ids
    };
    let sampling = a.sampling.over(Sampling::default());
    let steering = a
        .steer
        .spec()?
        .map(|s| s.build(m.model.config()))
        .transpose()?;
    let lm = Lm::new(&m.model).with_steering(steering.as_ref());
    let reply = generate(
        lm,
        std::slice::from_ref(&prompt),
        &Specials::of(&m.tokenizer),
        &sampling,
    )?;
    let text = match a.raw {
        true => m.tokenizer.decode_continuation(&prompt, &reply[0])?,
        false => m.tokenizer.decode(&reply[0], true)?,
    };
    println!("{text}");
    Ok(())
}

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: String,
    /// A LoRA adapter directory (PEFT format, e.g. a training checkpoint) applied to the model.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

/// Writes the input ids, logits and every hidden state of one pass over `--text`.
pub fn forward(a: ForwardArgs) -> Result<()> {
    let m = a.model.spec().load()?;
    let ids = m.tokenizer.encode(&a.text, true)?;
    ensure!(!ids.is_empty(), "--text tokenizes to no tokens");
    let device = m.model.device();
    let adapters = match &a.adapter {
        Some(dir) => Some(peft::load(dir, m.model.config(), &device)?),
        None => None,
    };
    let pass = Forward {
        hidden_states: true,
        ..Forward::logits(LogitsFor::All)
    };
    let lm = Lm::new(&m.model).with_adapters(adapters.as_ref());
    let out = lm.forward(
        &ForwardInput::dense(std::slice::from_ref(&ids), 0, &device),
        pass,
    )?;
    let logits = out.logits.context("forward returned no logits")?;
    let [_, t, vocab] = logits.dims();
    let logits: Vec<f32> = logits.into_data().convert::<f32>().try_into_vec()?;
    let layers = out.hidden_states.len();
    let hidden = m.model.config().hidden_size;
    let mut states = Vec::with_capacity(layers * t * hidden);
    for h in out.hidden_states {
        states.extend(h.into_data().convert::<f32>().try_into_vec::<f32>()?);
    }
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let tensors = [
        ("input_ids", Values::I64(&ids), vec![t]),
        ("logits", Values::F32(&logits), vec![t, vocab]),
        (
            "hidden_states",
            Values::F32(&states),
            vec![layers, t, hidden],
        ),
    ];
    tensor_file::write(&a.out, &tensors, None)
}

#[derive(Args)]
pub struct MergeArgs {
    /// The adapter: a training checkpoint (`<run>/step-N`), a run directory (its latest
    /// checkpoint is taken) or any PEFT LoRA adapter directory.
    #[arg(long, value_name = "DIR")]
    adapter: PathBuf,
    /// The base model (any model source); default: the adapter's `base_model_name_or_path`.
    #[arg(long, value_name = "SRC")]
    model: Option<String>,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The directory to write (must not exist, or be empty): f32 `model.safetensors`,
    /// `config.json`, tokenizer files and `generation_config.json`.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let adapter = if a.adapter.join("adapter_config.json").is_file() {
        a.adapter.clone()
    } else {
        let latest = crate::train::checkpoint::list(&a.adapter)?.pop();
        let (_, dir) = latest.with_context(|| {
            format!(
                "{}: no adapter_config.json and no step-N checkpoints; --adapter takes an adapter directory, a checkpoint or a run directory",
                a.adapter.display()
            )
        })?;
        eprintln!("using the latest checkpoint, {}", dir.display());
        dir
    };
    let spec = ModelSpec {
        source: match a.model {
            Some(spec) => spec,
            None => crate::merge::adapter_base_model(&adapter)?,
        },
        device: a.device,
        dtype: "f32".into(),
    };
    let m = spec.load()?;
    crate::merge::merge(&m, &adapter, &a.out)
        .with_context(|| format!("merging {} into {}", adapter.display(), spec.source))?;
    eprintln!(
        "wrote {} ({} merged with {})",
        a.out.display(),
        spec.source,
        adapter.display()
    );
    Ok(())
}
