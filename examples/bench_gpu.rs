//! LoRA training, prefill and decode throughput at the shapes people fine-tune, with random
//! weights (no download): `--shape qwen2.5-7b | llama-3.1-8b | smollm2-135m`.
//!
//! `cargo run --release --features cuda --example bench_gpu -- --shape qwen2.5-7b --device cuda
//!  --dtype bf16 [--r 32] [--batch 8] [--seq 512] [--steps 6] [--checkpointing] [--peak-tflops 989]`
//!
//! Prints one JSON line: training tokens/s (LoRA r on all seven projections, every token a
//! target, AdamW; the first step, which compiles kernels, is not timed), MFU against
//! `--peak-tflops` (the card's dense bf16 peak; the H200's is 989) with the usual `6·N` FLOPs per
//! token of N base parameters plus attention, prefill tokens/s (batch × seq, logits of the last
//! position) and decode tokens/s (batch rows, 64 new tokens after a 128-token prompt), and the
//! start-up memory estimate. `bench/gpu.sh` runs it and samples the GPU's memory with nvidia-smi.

use burn::tensor::TensorData;
use persona_train::data::Example;
use persona_train::generate::Specials;
use persona_train::generate::{generate, Sampling};
use persona_train::lm::Lm;
use persona_train::model::lora::{Adapters, LoraConfig};
use persona_train::model::Forward;
use persona_train::model::{CausalLm, ForwardInput, LogitsFor, ModelConfig, ParamSource};
use persona_train::recipe::OptimConfig;
use persona_train::train::loss::Batch;
use persona_train::train::memory::{base_parameters, MemoryEstimate};
use persona_train::train::optim::AdamW;
use persona_train::train::{optimizer_step, params, trainable};
use std::time::Instant;

/// `config.json` of each shape, as the Hub has it.
fn shape(name: &str) -> anyhow::Result<&'static str> {
    Ok(match name {
        "qwen2.5-7b" => {
            r#"{"model_type": "qwen2", "vocab_size": 152064, "hidden_size": 3584,
            "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": false}"#
        }
        "llama-3.1-8b" => {
            r#"{"model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 131072, "rope_theta": 500000.0,
            "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "rms_norm_eps": 1e-5, "tie_word_embeddings": false}"#
        }
        "smollm2-135m" => {
            r#"{"model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5, "tie_word_embeddings": true}"#
        }
        other => anyhow::bail!("unknown --shape {other} (qwen2.5-7b, llama-3.1-8b, smollm2-135m)"),
    })
}

/// Small random weights (norms 1), generated per tensor: nothing is downloaded or stored.
struct RandomWeights;

impl ParamSource for RandomWeights {
    fn get(&self, name: &str, shape: &[usize]) -> anyhow::Result<TensorData> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else {
            let mut x = name.len() as u64 * 0x9E37_79B9_7F4A_7C15 + n as u64;
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
                })
                .collect()
        };
        Ok(TensorData::new(values, shape.to_vec()))
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{name} needs a value")),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let shape_name: String = arg(&args, "--shape", "smollm2-135m".to_string())?;
    let device = persona_train::device::parse(&arg(&args, "--device", "cpu".to_string())?)?;
    let dtype = persona_train::device::parse_dtype(&arg(&args, "--dtype", "bf16".to_string())?)?;
    let (r, batch, seq, steps): (usize, usize, usize, usize) = (
        arg(&args, "--r", 32)?,
        arg(&args, "--batch", 8)?,
        arg(&args, "--seq", 512)?,
        arg(&args, "--steps", 6)?,
    );
    let peak_tflops: f64 = arg(&args, "--peak-tflops", 989.0)?;
    let config_path = std::env::temp_dir().join(format!("bench_gpu_{shape_name}.json"));
    std::fs::write(&config_path, shape(&shape_name)?)?;
    let config = ModelConfig::from_hf_config(&config_path)?;
    let t0 = Instant::now();
    let model = CausalLm::load(&config, &RandomWeights, &device, dtype)?;
    let load_s = t0.elapsed().as_secs_f64();

    let cfg = OptimConfig {
        lr: 1e-5,
        gradient_checkpointing: args.iter().any(|a| a == "--checkpointing"),
        ..OptimConfig::default()
    };
    let lora = LoraConfig {
        r,
        alpha: 2.0 * r as f32,
        ..LoraConfig::default()
    };
    let mut adapters =
        Adapters::init(&lora, &config, 0, &device)?.map(|_, _, _, t| trainable(t, &cfg));
    let estimate = MemoryEstimate::new(&config, dtype, &adapters, batch, seq, batch * (seq - 1));
    eprintln!("{shape_name}: {}", estimate.describe());
    let examples: Vec<Example> = (0..batch)
        .map(|row| Example {
            ids: (0..seq)
                .map(|i| (1000 + (i * 37 + row * 101) % 20000) as u32)
                .collect(),
            targets: (0..seq).map(|i| i > 0).collect(),
            origin: format!("row {row}"),
        })
        .collect();
    let micro = [Batch::new(&examples.iter().collect::<Vec<_>>(), &device)];
    let mut optimizer = AdamW::new(&params(&adapters), &cfg);
    let mut timed = 0.0;
    for step in 0..steps {
        let t = Instant::now();
        let done = optimizer_step(&model, None, adapters, &micro, &mut optimizer, cfg.lr)?;
        adapters = done.adapters;
        eprintln!(
            "step {step}: loss {:.4}, {:.2} s",
            done.loss,
            t.elapsed().as_secs_f64()
        );
        if step > 0 {
            timed += t.elapsed().as_secs_f64();
        }
    }
    let train_tps = (batch * seq * (steps - 1)) as f64 / timed;
    let n = base_parameters(&config) as f64;
    // 6·N per token, plus attention's 6·layers·seq·heads·head_dim (forward and backward).
    let attn = 6.0 * (config.num_layers * seq * config.num_heads * config.head_dim) as f64;
    let mfu = train_tps * (6.0 * n + attn) / (peak_tflops * 1e12);

    let prompts: Vec<Vec<u32>> = examples.iter().map(|e| e.ids.clone()).collect();
    let input = ForwardInput::dense(&prompts, 0, &device);
    let prefill = || -> anyhow::Result<f64> {
        let t = Instant::now();
        let out = model.forward(&input, Forward::logits(LogitsFor::Last))?;
        let _ = out.logits.expect("last logits").into_data();
        Ok(t.elapsed().as_secs_f64())
    };
    prefill()?;
    let prefill_tps = (batch * seq) as f64 / prefill()?;
    let short: Vec<Vec<u32>> = prompts.iter().map(|p| p[..128].to_vec()).collect();
    let decode = |new: usize| -> anyhow::Result<f64> {
        let sampling = Sampling {
            max_new_tokens: new,
            ..Sampling::default()
        };
        let t = Instant::now();
        generate(Lm::new(&model), &short, &Specials::default(), &sampling)?;
        Ok(t.elapsed().as_secs_f64())
    };
    decode(2)?;
    let decode_tps = (batch * 63) as f64 / (decode(64)? - decode(1)?);
    println!(
        "{}",
        serde_json::json!({
            "bench": "persona_train_gpu", "shape": shape_name, "dtype": format!("{dtype:?}"),
            "params": n, "lora_r": r, "batch": batch, "seq": seq,
            "gradient_checkpointing": cfg.gradient_checkpointing, "load_s": load_s,
            "train_tokens_per_s": train_tps, "mfu": mfu, "peak_tflops": peak_tflops,
            "prefill_tokens_per_s": prefill_tps, "decode_tokens_per_s": decode_tps,
            "memory_estimate_gib": estimate.total() / (1u64 << 30) as f64,
        })
    );
    Ok(())
}
