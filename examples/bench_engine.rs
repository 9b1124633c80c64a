//! Prefill and decode throughput and peak memory of the engine on the default model, measured
//! as `bench/bench_transformers.py` measures transformers: prefill = one forward with logits for
//! every position; decode = 63 / (t(64 new tokens) - t(1 new token)) after a 128-token prompt.
//! `cargo run --release --example bench_engine [-- --device cpu|cuda]`; numbers go into
//! BENCHMARKS.md beside `bench/bench_transformers.py` run on the same machine.

mod common;

use burn::tensor::DType;
use persona_train::generate::Specials;
use persona_train::generate::{generate, Sampling};
use persona_train::lm::Lm;
use persona_train::model::Forward;
use persona_train::model::{ForwardInput, LogitsFor};
use std::time::Instant;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
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
    println!("load: {:.2} s", t0.elapsed().as_secs_f64());

    // Deterministic token ids that are ordinary vocabulary entries.
    let prompt: Vec<u32> = (0..128u32).map(|i| 1000 + (i * 37) % 20000).collect();
    for batch in [1usize, 8] {
        let input = ForwardInput::dense(&vec![prompt.clone(); batch], 0, &device);
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
        println!(
            "prefill b={batch} x 128: {:.0} tokens/s",
            (batch * 128) as f64 / median(times)
        );
    }

    let timed = |new: usize| {
        let sampling = Sampling {
            max_new_tokens: new,
            ..Sampling::default()
        };
        let t = Instant::now();
        let out = generate(
            Lm::new(&m.model),
            std::slice::from_ref(&prompt),
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
    println!(
        "decode b=1, 128-token prompt, 64 new: {:.1} tokens/s",
        63.0 / (full - one)
    );
    println!("peak RSS: {:.0} MiB", common::peak_rss_mib());
    Ok(())
}
