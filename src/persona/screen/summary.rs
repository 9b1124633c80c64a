//! Statistics of the scores, and which samples a filter drops.

use super::SampleScore;
use serde::{Deserialize, Serialize};

/// Distribution of one score over a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub n: usize,
    pub mean: f32,
    pub std: f32,
    pub min: f32,
    pub p5: f32,
    pub p25: f32,
    pub p50: f32,
    pub p75: f32,
    pub p95: f32,
    pub max: f32,
}

impl Stats {
    /// `None` for no values. Percentiles interpolate linearly (numpy's default); std is the
    /// population standard deviation.
    pub fn of(values: &[f32]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = values.iter().map(|&x| x as f64).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let q = |p: f64| {
            let at = p * (v.len() - 1) as f64;
            let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
            (v[lo] + (v[hi] - v[lo]) * (at - lo as f64)) as f32
        };
        Some(Self {
            n: v.len(),
            mean: mean as f32,
            std: var.sqrt() as f32,
            min: v[0] as f32,
            p5: q(0.05),
            p25: q(0.25),
            p50: q(0.5),
            p75: q(0.75),
            p95: q(0.95),
            max: v[v.len() - 1] as f32,
        })
    }
}

/// One dataset's row of the summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub dataset: String,
    pub samples: usize,
    /// The dataset-level projection difference: the mean of the samples' ΔP.
    pub delta_p: Option<f32>,
    pub delta: Option<Stats>,
    pub proxy: Option<Stats>,
    pub response_projection: Option<Stats>,
    pub base_projection: Option<Stats>,
    pub prompt_last_projection: Option<Stats>,
    /// Samples whose base answer was empty (no ΔP).
    pub without_base_answer: usize,
    /// Samples a filter dropped.
    pub dropped: usize,
}

pub fn summarize(scores: &[SampleScore], dropped: usize) -> DatasetSummary {
    let col = |f: &dyn Fn(&SampleScore) -> Option<f32>| -> Vec<f32> {
        scores.iter().filter_map(f).collect()
    };
    let delta = Stats::of(&col(&|s| s.delta));
    let generated = scores.iter().any(|s| s.base_answer.is_some());
    DatasetSummary {
        dataset: scores
            .first()
            .map_or_else(String::new, |s| s.dataset.clone()),
        samples: scores.len(),
        delta_p: delta.as_ref().map(|d| d.mean),
        delta,
        proxy: Stats::of(&col(&|s| Some(s.proxy))),
        response_projection: Stats::of(&col(&|s| Some(s.response_projection))),
        base_projection: Stats::of(&col(&|s| s.base_projection)),
        prompt_last_projection: Stats::of(&col(&|s| Some(s.prompt_last_projection))),
        without_base_answer: if generated {
            scores.iter().filter(|s| s.delta.is_none()).count()
        } else {
            0
        },
        dropped,
    }
}

/// Which samples a filter drops: the `drop_top` highest keys, and every key above `threshold`.
/// Samples without a key (no base answer) are never dropped. Returns one flag per sample, in the
/// order given.
pub fn drop_mask(
    keys: &[Option<f32>],
    drop_top: Option<usize>,
    threshold: Option<f32>,
) -> Vec<bool> {
    let mut drop: Vec<bool> = keys
        .iter()
        .map(|k| threshold.is_some_and(|t| k.is_some_and(|k| k > t)))
        .collect();
    if let Some(n) = drop_top {
        let mut order: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].is_some()).collect();
        order.sort_by(|&a, &b| keys[b].unwrap().total_cmp(&keys[a].unwrap()));
        for &i in order.iter().take(n) {
            drop[i] = true;
        }
    }
    drop
}

/// The area under the ROC curve of `scores` separating `positive` from the rest (ties count
/// half): the probability that a random positive outscores a random negative.
pub fn auroc(positive: &[f32], negative: &[f32]) -> f64 {
    let mut wins = 0.0;
    for &p in positive {
        for &n in negative {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (positive.len() * negative.len()).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_match_numpy() {
        // numpy.percentile([1, 2, 3, 4, 10], [5, 25, 50, 75, 95]) = 1.2, 2, 3, 4, 8.8
        let s = Stats::of(&[4.0, 1.0, 10.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.max), (5, 4.0, 1.0, 10.0));
        assert!(
            (s.p5 - 1.2).abs() < 1e-6 && (s.p95 - 8.8).abs() < 1e-5,
            "{s:?}"
        );
        assert_eq!((s.p25, s.p50, s.p75), (2.0, 3.0, 4.0));
        assert!((s.std - 10f32.sqrt()).abs() < 1e-6);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn filters_drop_the_top_and_above_the_threshold() {
        let keys = [Some(1.0), None, Some(5.0), Some(3.0), Some(-2.0)];
        assert_eq!(
            drop_mask(&keys, Some(2), None),
            [false, false, true, true, false]
        );
        assert_eq!(
            drop_mask(&keys, None, Some(0.5)),
            [true, false, true, true, false]
        );
        assert_eq!(
            drop_mask(&keys, Some(10), None),
            [true, false, true, true, true]
        );
        assert_eq!(drop_mask(&keys, None, None), [false; 5]);
    }

    #[test]
    fn auroc_counts_pairs() {
        assert_eq!(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        assert_eq!(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        assert_eq!(auroc(&[1.0, 3.0], &[2.0, 2.0]), 0.5);
        assert_eq!(auroc(&[2.0], &[2.0]), 0.5);
    }
}
