//! Sampling answers to questions and having a judge score them, as extraction, the layer sweep
//! and trait scores all do: the chat, the seeds, the answers, the scores, the answer's span.

use crate::generate::{generate_seeded, Sampling, Specials};
use crate::judge::{rubric, Judge};
use crate::lm::Lm;
use crate::tokenizer::{ChatMessage, Tokenizer};
use anyhow::{ensure, Context, Result};
use std::ops::Range;

/// An optional system prompt, the question as the user's message, and the answer when given.
pub fn chat(system: Option<&str>, question: &str, answer: Option<&str>) -> Vec<ChatMessage> {
    let system = system.map(|s| ChatMessage::new("system", s));
    let answer = answer.map(|a| ChatMessage::new("assistant", a));
    system
        .into_iter()
        .chain([ChatMessage::new("user", question)])
        .chain(answer)
        .collect()
}

/// A sampling seed for one answer from the run's seed and the answer's coordinates, so that it
/// does not depend on which other answers are generated with it, or in which order.
pub fn mix_seed(base: u64, coordinates: &[u64]) -> u64 {
    coordinates.iter().fold(base, |h, &x| {
        (h ^ x).wrapping_mul(0x100000001b3).rotate_left(17)
    })
}

/// Sampled answers to `prompts` (chat-rendered token ids), one seed each, as text.
pub fn generate_answers(
    lm: Lm,
    tok: &Tokenizer,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    sampling: &Sampling,
) -> Result<Vec<String>> {
    let ids = generate_seeded(lm, prompts, seeds, &Specials::of(tok), sampling)?;
    ids.iter().map(|ids| tok.decode(ids, true)).collect()
}

/// The judge's (trait, coherence) scores of each (question, answer), the trait judged with
/// `trait_rubric`.
pub fn judge_answers<'q>(
    judge: &dyn Judge,
    trait_rubric: &str,
    answers: impl Iterator<Item = (&'q str, &'q str)> + Clone,
) -> Result<Vec<(Option<f32>, Option<f32>)>> {
    let fill = |template: &str| -> Vec<String> {
        answers
            .clone()
            .map(|(q, a)| rubric::fill(template, q, a))
            .collect()
    };
    let (trait_prompts, coherence_prompts) = (fill(trait_rubric), fill(rubric::COHERENCE));
    let traits = judge.score(&trait_prompts)?;
    let coherence = judge.score(&coherence_prompts)?;
    let n = trait_prompts.len();
    ensure!(
        traits.len() == n && coherence.len() == n,
        "the judge returned {} and {} scores for {n} answers",
        traits.len(),
        coherence.len(),
    );
    Ok(traits.into_iter().zip(coherence).collect())
}

/// A chat ending with an assistant message, rendered, and that message's span in it (empty when
/// the message has no tokens).
pub fn response_span(
    tok: &Tokenizer,
    messages: &[ChatMessage],
) -> Result<(Vec<u32>, Range<usize>)> {
    let enc = tok.encode_chat(messages, false)?;
    let start = enc
        .response_start
        .context("rendered chat has no assistant span")?;
    let end = enc.response_end.unwrap_or(enc.ids.len());
    Ok((enc.ids, start..end))
}
