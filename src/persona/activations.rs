//! Activations averaged over a chat's response, its prompt and its last prompt token, at every
//! layer: what persona vectors are differences of and what projections read.

use crate::lm::Lm;
use crate::model::{Forward, ForwardInput};
use crate::persona::vector::KINDS;
use anyhow::Result;
use std::collections::BTreeMap;
use std::ops::Range;

/// Hidden states at every layer averaged three ways: over the response tokens, over the prompt
/// tokens, and the last prompt token alone. `ids` is one rendered chat, `response` its span.
pub fn activation_averages(lm: Lm, ids: &[u32], response: Range<usize>) -> Result<Activations> {
    let (start, end) = (response.start, response.end);
    anyhow::ensure!(
        start > 0 && end > start && end <= ids.len(),
        "empty prompt or response (span {start}..{end} of {})",
        ids.len()
    );
    let out = lm.forward(
        &ForwardInput::dense(&[ids.to_vec()], 0, &lm.device()),
        Forward::hidden_states(),
    )?;
    let mut acts: Activations = KINDS.iter().map(|&k| (k, Vec::new())).collect();
    for h in out.hidden_states {
        let [_, t, d] = h.dims();
        let h = h.reshape([t, d]);
        let mean = |range: Range<usize>| -> Result<Vec<f32>> {
            Ok(h.clone()
                .slice([range])
                .mean_dim(0)
                .into_data()
                .convert::<f32>()
                .try_into_vec()?)
        };
        for (kind, rows) in acts.iter_mut() {
            rows.push(match *kind {
                "response_avg" => mean(start..end)?,
                "prompt_avg" => mean(0..start)?,
                _ => mean(start - 1..start)?,
            });
        }
    }
    Ok(acts)
}

/// Per kind, `[layers + 1][hidden]`.
pub type Activations = BTreeMap<&'static str, Vec<Vec<f32>>>;

/// The persona vector: mean of the positive activations minus mean of the negative ones, raw
/// (not normalized), accumulated in f64.
pub fn mean_difference(
    pos: &[Activations],
    neg: &[Activations],
) -> BTreeMap<String, Vec<Vec<f32>>> {
    let mean = |acts: &[Activations], kind: &str| -> Vec<Vec<f64>> {
        let mut sum: Vec<Vec<f64>> = Vec::new();
        for a in acts {
            let rows = &a[kind];
            if sum.is_empty() {
                sum = rows.iter().map(|r| vec![0.0; r.len()]).collect();
            }
            for (s, r) in sum.iter_mut().zip(rows) {
                s.iter_mut().zip(r).for_each(|(s, &x)| *s += x as f64);
            }
        }
        let n = acts.len().max(1) as f64;
        sum.into_iter()
            .map(|r| r.into_iter().map(|x| x / n).collect())
            .collect()
    };
    KINDS
        .iter()
        .map(|&kind| {
            let (p, q) = (mean(pos, kind), mean(neg, kind));
            let diff = p
                .iter()
                .zip(&q)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y) as f32).collect())
                .collect();
            (kind.to_owned(), diff)
        })
        .collect()
}
