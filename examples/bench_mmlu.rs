//! MMLU throughput of the evaluator on the default model (SmolLM2-135M-Instruct), measured as
//! `bench/bench_mmlu.py` measures transformers: the 200 questions of
//! tests/fixtures/mmlu/golden.json, 0-shot, per batch size one timed `mmlu::evaluate` (prompt
//! building, tokenization, forward passes, scoring; not the model load) after a warmup on the
//! longest prompts.
//! `cargo run --release --example bench_mmlu [-- --device cpu|cuda] [--batch 1,8] [--questions N]`
//! (`--questions N`: the first N only). Readable lines go to stderr, one JSON line to stdout
//! (`bench/compare.sh mmlu` runs it beside `bench/bench_mmlu.py --json`).

use burn::tensor::DType;
use persona_train::eval::mmlu::{self, MmluConfig, Question};
use persona_train::lm::Lm;
use std::collections::HashMap;
use std::time::Instant;

fn arg<'a>(args: &'a [String], name: &str, default: &'a str) -> &'a str {
    args.iter()
        .position(|a| a == name)
        .map_or(default, |i| args[i + 1].as_str())
}

fn main() -> anyhow::Result<()> {
    persona_train::device::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let device = persona_train::device::parse(arg(&args, "--device", "cpu"))?;
    let m = persona_train::loader::load(
        &persona_train::source::resolve_default()?,
        &device,
        DType::F32,
    )?;

    let golden: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/mmlu/golden.json"
    ))?)?;
    let (all, _) = mmlu::load(mmlu::DEFAULT_SOURCE)?;
    let by_line: HashMap<String, &Question> = all
        .iter()
        .map(|q| (q.origin.rsplit(':').next().unwrap().to_string(), q))
        .collect();
    let questions: Vec<Question> = golden["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| by_line[&g["line"].to_string()].clone())
        .take(arg(&args, "--questions", "200").parse()?)
        .collect();
    let tokens: usize = questions
        .iter()
        .map(|q| {
            m.tokenizer
                .encode(&mmlu::prompt(q, &[]), true)
                .map(|t| t.len())
        })
        .sum::<anyhow::Result<usize>>()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut result = serde_json::json!({
        "bench": "persona_train_mmlu",
        "questions": questions.len(),
        "threads": threads,
    });
    eprintln!(
        "{} questions, {tokens} prompt tokens (mean {:.0}); {} rayon threads",
        questions.len(),
        tokens as f64 / questions.len() as f64,
        threads
    );

    for batch in arg(&args, "--batch", "1,8").split(',') {
        let cfg = MmluConfig {
            batch_size: batch.parse()?,
            ..MmluConfig::default()
        };
        let mut longest = questions.clone();
        longest.sort_by_key(|q| std::cmp::Reverse(mmlu::prompt(q, &[]).len()));
        longest.truncate(cfg.batch_size);
        mmlu::evaluate(Lm::new(&m.model), &m.tokenizer, &longest, None, &cfg)?; // warmup
        let t = Instant::now();
        let report = mmlu::evaluate(Lm::new(&m.model), &m.tokenizer, &questions, None, &cfg)?;
        let secs = t.elapsed().as_secs_f64();
        let per_s = questions.len() as f64 / secs;
        result[format!("batch_{batch}_questions_per_s")] =
            ((per_s * 1000.0).round() / 1000.0).into();
        result[format!("batch_{batch}_accuracy")] = report.micro.into();
        eprintln!(
            "persona-train batch {batch}: {:.2} questions/s, {:.0} prompt tokens/s ({secs:.1} s); \
             accuracy {:.3}",
            per_s,
            tokens as f64 / secs,
            report.micro
        );
    }
    println!("{result}");
    Ok(())
}
