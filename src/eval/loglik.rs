//! Log-likelihood scoring, the primitive under every judge-free metric: the next-token
//! distribution after a prompt, and the log-probability of a continuation.

use crate::lm::Lm;
use crate::model::{Forward, ForwardInput, LogitsFor};
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

/// `log P(continuation | prefix)` summed over the continuation's tokens, for each pair, and the
/// number of continuation tokens (for length-normalised scores), through `lm`'s adapters and
/// steering (at every token). Pairs are batched `batch_size` at a time with right
/// padding.
pub fn continuation_logprobs(
    lm: Lm,
    pairs: &[(Vec<u32>, Vec<u32>)],
    batch_size: usize,
) -> Result<Vec<(f32, usize)>> {
    ensure!(
        pairs.iter().all(|(p, c)| !p.is_empty() && !c.is_empty()),
        "empty prefix or continuation"
    );
    let device = lm.device();
    let vocab = lm.config().vocab_size;
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(p, c)| [p.as_slice(), c].concat())
            .collect();
        let t = seqs.iter().map(Vec::len).max().unwrap_or(0);
        let input = ForwardInput::right_padded(&seqs, &device);
        let logits = lm
            .forward(&input, Forward::logits(LogitsFor::All))?
            .logits
            .expect("LogitsFor::All returns logits");
        let lp: Vec<f32> = log_softmax(logits.cast(DType::F32), 2)
            .into_data()
            .convert::<f32>()
            .try_into_vec()?;
        for (r, (prefix, cont)) in chunk.iter().enumerate() {
            let total = cont
                .iter()
                .enumerate()
                .map(|(k, &tok)| {
                    let at = prefix.len() + k - 1;
                    lp[(r * t + at) * vocab + tok as usize]
                })
                .sum();
            out.push((total, cont.len()));
        }
    }
    Ok(out)
}
