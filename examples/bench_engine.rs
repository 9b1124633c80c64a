//! Prefill and decode throughput and peak memory of the engine on the default model, measured
//! as `bench/bench_transformers.py` measures transformers: prefill = one forward with logits for
//! every position, batch 1 and 8 × 128 tokens, median of 3 runs after a warm-up; decode =
//! 63 / (t(64 new tokens) - t(1 new token)) after a 128-token prompt.
//!
//! `cargo run --release --example bench_engine [-- --device cpu|cuda] [--prefill-only]`
//! Progress and readable lines go to stderr, one JSON line to stdout (`bench/compare.sh prefill`
//! runs it beside `bench/bench_transformers.py --json`).

mod common;

use burn::tensor::DType;
use persona_train::generate::Specials;
use persona_train::generate::{generate, Sampling};
use persona_train::lm::Lm;
use persona_train::loader::LoadedModel;
use persona_train::model::Forward;
use persona_train::model::{ForwardInput, LogitsFor};
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Prefill tokens/s at `batch` × `prompt`.
fn prefill(m: &LoadedModel, prompt: &[u32], batch: usize) -> f64 {
    let device = m.model.device();
    let input = ForwardInput::dense(&vec![prompt.to_vec(); batch], 0, &device);
    let run = || {
        let out = m
            .model
            .forward(&input, Forward::logits(LogitsFor::All))
            .unwrap();
        let _ = out.logits.unwrap().into_data();
    };
    run();
    let times: Vec<f64> = (0..3)
        .map(|_| {
            let t = Instant::now();
            run();
            t.elapsed().as_secs_f64()
        })
        .collect();
    (batch * prompt.len()) as f64 / median(times)
}

/// Greedy decode tokens/s after `prompt`, prefill and first token excluded.
fn decode(m: &LoadedModel, prompt: &[u32]) -> f64 {
    let timed = |new: usize| {
        let sampling = Sampling {
            max_new_tokens: new,
            ..Sampling::default()
        };
        let t = Instant::now();
        let out = generate(
            Lm::new(&m.model),
            &[prompt.to_vec()],
            &Specials::default(),
            &sampling,
        )
        .unwrap();
        assert_eq!(out[0].len(), new);
        t.elapsed().as_secs_f64()
    };
    timed(4);
    let one = median((0..3).map(|_| timed(1)).collect());
    let full = median((0..3).map(|_| timed(64)).collect());
    63.0 / (full - one)
}

fn main() -> anyhow::Result<()> {
    persona_train::device::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let device_spec = args
        .iter()
        .position(|a| a == "--device")
        .map_or("cpu", |i| args[i + 1].as_str());
    let device = persona_train::device::parse(device_spec)?;
    let files = persona_train::source::resolve_default()?;
    let t0 = Instant::now();
    let m = persona_train::loader::load(&files, &device, DType::F32)?;
    let load_s = t0.elapsed().as_secs_f64();
    eprintln!("load: {load_s:.2} s");

    // Deterministic token ids that are ordinary vocabulary entries.
    let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + (i * 37) % 20000).collect();
    let b1 = prefill(&m, &prompt, 1);
    eprintln!("prefill b=1 x 128: {b1:.0} tokens/s");
    let b8 = prefill(&m, &prompt, 8);
    eprintln!("prefill b=8 x 128: {b8:.0} tokens/s");
    let decode = (!args.iter().any(|a| a == "--prefill-only")).then(|| decode(&m, &prompt));
    if let Some(d) = decode {
        eprintln!("decode b=1, 128-token prompt, 64 new: {d:.1} tokens/s");
    }
    eprintln!("peak RSS: {:.0} MiB", common::peak_rss_mib());
    let round = |x: f64| (x * 10.0).round() / 10.0;
    println!(
        "{}",
        serde_json::json!({
            "bench": "persona_train_engine",
            "load_s": round(load_s),
            "prefill_b1_tokens_per_s": round(b1),
            "prefill_b8_tokens_per_s": round(b8),
            "decode_tokens_per_s": decode.map(round),
            "peak_rss_mb": common::peak_rss_mib().round(),
            "threads": std::thread::available_parallelism().map_or(0, |n| n.get()),
        })
    );
    Ok(())
}
