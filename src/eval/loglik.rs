//! Log-likelihood scoring, the primitive under every judge-free metric: the next-token
//! distribution after a prompt, and the log-probability of a continuation.

use crate::lm::Lm;
use crate::model::{Forward, ForwardInput, KvCache, LogitsFor};
use anyhow::{ensure, Result};
use burn::tensor::activation::log_softmax;
use burn::tensor::DType;

/// Log-probabilities over the vocabulary of the token after each prompt (`[prompts][vocab]`),
/// through `lm`'s adapters and inference-time steering (at every token). Prompts are
/// batched `batch_size` at a time with left padding.
pub fn next_token_logprobs(
    lm: Lm,
    prompts: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<Vec<f32>>> {
    ensure!(prompts.iter().all(|p| !p.is_empty()), "empty prompt");
    let vocab = lm.config().vocab_size;
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(batch_size.max(1)) {
        let input = ForwardInput::left_padded(chunk, 0, &lm.device());
        let logits = lm
            .forward(&input, Forward::logits(LogitsFor::Last))?
            .logits
            .expect("LogitsFor::Last returns logits");
        let b = chunk.len();
        let lp: Vec<f32> = log_softmax(logits.reshape([b, vocab]).cast(DType::F32), 1)
            .into_data()
            .convert::<f32>()
            .try_into_vec()?;
        out.extend(lp.chunks(vocab).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// `log P(continuation | prefix)` summed over the continuation's tokens, for continuations that
/// share one prefix, and the number of continuation tokens (for length-normalised scores),
/// through `lm`'s adapters and steering (at every token). The prefix runs once and its keys and
/// values serve every continuation; continuations are batched `batch_size` at a time with right
/// padding.
pub fn shared_prefix_logprobs(
    lm: Lm,
    prefix: &[u32],
    continuations: &[Vec<u32>],
    batch_size: usize,
) -> Result<Vec<(f32, usize)>> {
    ensure!(
        !prefix.is_empty() && continuations.iter().all(|c| !c.is_empty()),
        "empty prefix or continuation"
    );
    let device = lm.device();
    let vocab = lm.config().vocab_size;
    let mut cache = KvCache::new(lm.config());
    let pass = Forward {
        cache: Some(&mut cache),
        ..Forward::logits(LogitsFor::Last)
    };
    let logits = lm
        .forward(&ForwardInput::dense(&[prefix.to_vec()], 0, &device), pass)?
        .logits
        .expect("LogitsFor::Last returns logits");
    // The prefix's last position predicts every continuation's first token.
    let first: Vec<f32> = log_softmax(logits.reshape([1, vocab]).cast(DType::F32), 1)
        .into_data()
        .convert::<f32>()
        .try_into_vec()?;
    let mut out = Vec::with_capacity(continuations.len());
    for chunk in continuations.chunks(batch_size.max(1)) {
        let mut rows = cache.clone();
        rows.select_rows(&vec![0; chunk.len()]);
        let input = ForwardInput::right_padded_after(chunk, prefix.len(), &device);
        let pass = Forward {
            cache: Some(&mut rows),
            ..Forward::logits(LogitsFor::All)
        };
        let logits = lm
            .forward(&input, pass)?
            .logits
            .expect("LogitsFor::All returns logits");
        let t = logits.dims()[1];
        let lp: Vec<f32> = log_softmax(logits.cast(DType::F32), 2)
            .into_data()
            .convert::<f32>()
            .try_into_vec()?;
        for (r, cont) in chunk.iter().enumerate() {
            let rest: f32 = cont[1..]
                .iter()
                .enumerate()
                .map(|(k, &tok)| lp[(r * t + k) * vocab + tok as usize])
                .sum();
            out.push((first[cont[0] as usize] + rest, cont.len()));
        }
    }
    Ok(out)
}
