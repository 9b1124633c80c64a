//! Load test of `persona-train serve` on the default model: 16 concurrent clients, each sending
//! `--requests` streamed greedy chat completions (the evaluation questions of
//! datasets/traits/evil.json, `--max-tokens` each), over HTTP to an in-process server.
//! Prints latency p50/p99, time to first token p50/p99 and generated tokens/s (all completion
//! tokens / wall time). `bench/bench_serve_transformers.py` times transformers' batched greedy
//! generation of the same prompts for comparison.
//!
//! `cargo run --release --example bench_serve [-- --clients 16 --requests 4 --max-tokens 32]`

mod common;

use burn::tensor::DType;
use serde_json::{json, Value};
use std::io::BufRead;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .map_or(default, |i| args[i + 1].parse().expect("a number"))
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

struct Sample {
    latency: f64,
    ttft: f64,
    tokens: usize,
}

/// One streamed request: (latency, time to the first token, completion tokens).
fn request(agent: &ureq::Agent, url: &str, question: &str, max_tokens: usize) -> Sample {
    let body = json!({
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let mut r = agent.post(url).send(body.to_string()).expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let (mut ttft, mut tokens) = (None, 0);
    for line in std::io::BufReader::new(r.body_mut().as_reader()).lines() {
        let line = line.expect("stream");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).expect("JSON chunk");
        if ttft.is_none()
            && chunk["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        {
            ttft = Some(start.elapsed().as_secs_f64());
        }
        if let Some(n) = chunk["usage"]["completion_tokens"].as_u64() {
            tokens = n as usize;
        }
    }
    let latency = start.elapsed().as_secs_f64();
    Sample {
        latency,
        ttft: ttft.unwrap_or(latency),
        tokens,
    }
}

fn main() -> anyhow::Result<()> {
    persona_train::device::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let clients = arg(&args, "--clients", 16);
    let requests = arg(&args, "--requests", 4);
    let max_tokens = arg(&args, "--max-tokens", 32);

    let traits = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/traits/evil.json");
    let questions: Vec<String> = serde_json::from_str::<Value>(&std::fs::read_to_string(traits)?)?
        ["questions"]
        .as_array()
        .expect("questions")
        .iter()
        .map(|q| q.as_str().expect("a question").to_string())
        .collect();

    let lm = persona_train::loader::load(
        &persona_train::source::resolve_default()?,
        &burn::tensor::Device::flex(),
        DType::F32,
    )?;
    let server = persona_train::serve::start(
        lm,
        persona_train::serve::ServeConfig {
            port: 0,
            max_batch: clients,
            ..Default::default()
        },
    )?;
    let url = format!("{}/chat/completions", server.base_url());
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .new_agent();
    // Warm-up: one request alone.
    request(&agent, &url, &questions[0], 4);

    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (agent, url, barrier) = (agent.clone(), url.clone(), barrier.clone());
            let questions = questions.clone();
            std::thread::spawn(move || {
                barrier.wait();
                (0..requests)
                    .map(|i| {
                        let q = &questions[(c + i * clients) % questions.len()];
                        request(&agent, &url, q, max_tokens)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let samples: Vec<Sample> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    let wall = start.elapsed().as_secs_f64();

    let tokens: usize = samples.iter().map(|s| s.tokens).sum();
    let mut latency: Vec<f64> = samples.iter().map(|s| s.latency).collect();
    let mut ttft: Vec<f64> = samples.iter().map(|s| s.ttft).collect();
    println!(
        "{clients} clients x {requests} requests, max_tokens {max_tokens}: {} requests, {tokens} completion tokens in {wall:.1} s",
        samples.len()
    );
    println!(
        "latency p50 {:.2} s, p99 {:.2} s",
        percentile(&mut latency, 0.5),
        percentile(&mut latency, 0.99)
    );
    println!(
        "time to first token p50 {:.2} s, p99 {:.2} s",
        percentile(&mut ttft, 0.5),
        percentile(&mut ttft, 0.99)
    );
    println!("generated {:.1} tokens/s", tokens as f64 / wall);
    println!("peak RSS: {:.0} MiB", common::peak_rss_mib());
    server.shutdown()
}
