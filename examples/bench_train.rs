//! LoRA training throughput and peak memory on the default model, measured as
//! `bench/bench_peft_train.py` measures PyTorch + PEFT: r = 16, alpha = 32, all seven targets,
//! batch 4 x 256 random tokens (all of them targets), AdamW; tokens/s = batch·seq·steps / time
//! over the timed steps (the first step is warmup).
//!
//! `cargo run --release --example bench_train -- [--steps N] [--steer] [--monitor] [--checkpointing]`
//! `--steer` adds all-layer preventative steering (random vector, coef 1); `--monitor` also runs
//! the per-step probe (20 prompts of the sycophancy artifacts) after every step.

mod common;

use burn::tensor::{DType, Device};
use persona_train::data::Example;
use persona_train::lm::Lm;
use persona_train::model::lora::{Adapters, LoraConfig};
use persona_train::persona::probes::{ProbeSet, ProbeSpec};
use persona_train::recipe::OptimConfig;
use persona_train::steering::{Positions, SteerLayers, Steering};
use persona_train::train::loss::Batch;
use persona_train::train::memory::MemoryEstimate;
use persona_train::train::optim::AdamW;
use persona_train::train::{inference, optimizer_step, params, trainable};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    persona_train::device::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let steps: usize = args
        .iter()
        .position(|a| a == "--steps")
        .map_or(Ok(6), |i| args[i + 1].parse())?;
    let device = Device::flex();
    let m = persona_train::loader::load(
        &persona_train::source::resolve_default()?,
        &device,
        DType::F32,
    )?;
    let c = m.model.config().clone();
    let rss_after_load = common::peak_rss_mib();

    let (batch, seq) = (4usize, 256usize);
    let examples: Vec<Example> = (0..batch)
        .map(|r| Example {
            ids: (0..seq)
                .map(|i| (1000 + (i * 37 + r * 101) % 20000) as u32)
                .collect(),
            targets: (0..seq).map(|i| i > 0).collect(),
            origin: format!("bench row {r}"),
        })
        .collect();
    let micro = [Batch::new(&examples.iter().collect::<Vec<_>>(), &device)];

    let vector: Vec<Vec<f32>> = (0..=c.num_layers)
        .map(|l| {
            (0..c.hidden_size)
                .map(|i| ((l * 31 + i * 7) % 13) as f32 / 13.0 - 0.5)
                .collect()
        })
        .collect();
    let steering = flag("--steer")
        .then(|| {
            Steering::new(
                &vector,
                SteerLayers::All,
                1.0,
                Positions::All,
                c.num_layers,
                c.hidden_size,
            )
        })
        .transpose()?;
    let monitor = if flag("--monitor") {
        let artifacts = persona_train::persona::artifacts::TraitArtifacts::load(
            std::path::Path::new("datasets/traits/sycophancy.json"),
        )?;
        let prompts: Vec<String> = artifacts.eval_questions.into_iter().take(20).collect();
        let cache = std::env::temp_dir().join("bench_train_probes.jsonl");
        let spec = ProbeSpec {
            trait_name: "bench",
            vector: &vector,
            layers: (1..=c.num_layers).collect(),
            main_layer: 20,
            response_tokens: 32,
        };
        Some(ProbeSet::new(
            &m.model,
            &m.tokenizer,
            spec,
            &prompts,
            &cache,
        )?)
    } else {
        None
    };

    let lora = LoraConfig::default();
    let cfg = OptimConfig {
        lr: 1e-4,
        gradient_checkpointing: flag("--checkpointing"),
        ..OptimConfig::default()
    };
    let mut adapters = Adapters::init(&lora, &c, 0, &device)?.map(|_, _, _, t| trainable(t, &cfg));
    let estimate = MemoryEstimate::new(
        &c,
        m.model.dtype(),
        &adapters,
        batch,
        seq,
        batch * (seq - 1),
    );
    eprintln!("{}", estimate.describe());
    let mut optimizer = AdamW::new(&params(&adapters), &cfg);
    let mut timed = 0.0;
    let mut losses = Vec::new();
    for step in 0..steps {
        let t = Instant::now();
        let done = optimizer_step(
            &m.model,
            steering.as_ref(),
            adapters,
            &micro,
            &mut optimizer,
            cfg.lr,
        )?;
        adapters = done.adapters;
        if let Some(mon) = &monitor {
            mon.measure(Lm::new(&m.model).with_adapters(Some(&inference(&adapters))))?;
        }
        losses.push(done.loss);
        if step > 0 {
            timed += t.elapsed().as_secs_f64();
        }
    }
    let tokens = (batch * seq * (steps - 1)) as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "persona_train_lora_train",
            "steer": steering.is_some(),
            "monitor": monitor.is_some(),
            "tokens_per_s": (tokens / timed * 100.0).round() / 100.0,
            "s_per_step": timed / (steps - 1) as f64,
            "peak_rss_mb": common::peak_rss_mib().round(),
            "peak_rss_after_load_mb": rss_after_load.round(),
            "steps": steps,
            "loss_first": losses[0],
            "loss_last": losses[steps - 1],
            "threads": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    );
    Ok(())
}
