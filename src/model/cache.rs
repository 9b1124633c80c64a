//! Key/value cache for incremental decoding.

use burn::tensor::Tensor;

/// Keys and values of every layer after rotary embedding, with KV heads not yet repeated
/// (`[batch, kv_heads, seq, head_dim]`), so memory grows with KV heads, not query heads.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends this step's keys and values for `layer` and returns the full sequence.
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>) {
        let (k, v) = match self.layers[layer].take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        self.layers[layer] = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// Row and column surgery for continuous batching, where requests join and leave a running
/// batch. Rows are left-padded: every row's newest key is in the last column, and a row shorter
/// than the batch has padding (masked keys, stored as zeros) in its first columns.
impl KvCache {
    /// Keeps only `rows` (indices into the batch, in the order given).
    pub fn select_rows(&mut self, rows: &[usize]) {
        for (k, v) in self.layers.iter_mut().flatten() {
            let device = k.device();
            let index = Tensor::<1, burn::tensor::Int>::from_data(
                burn::tensor::TensorData::new(
                    rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                    [rows.len()],
                ),
                &device,
            );
            *k = k.clone().select(0, index.clone());
            *v = v.clone().select(0, index);
        }
    }

    /// Drops the first `n` columns (positions that every row has as padding).
    pub fn trim_front(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let [b, h, t, d] = k.dims();
            *k = k.clone().slice([0..b, 0..h, n..t, 0..d]);
            *v = v.clone().slice([0..b, 0..h, n..t, 0..d]);
        }
    }

    /// Puts `other`'s rows after this cache's rows. The shorter cache is padded on the left with
    /// zero columns so both keep their newest key in the last column; returns how many columns
    /// each side got (`(ours, theirs)`), which the caller must add to its key masks as padding.
    pub fn merge(&mut self, other: KvCache) -> (usize, usize) {
        if self.layers.iter().all(Option::is_none) {
            self.layers = other.layers;
            return (0, 0);
        }
        if other.layers.iter().all(Option::is_none) {
            return (0, 0);
        }
        let (ours, theirs) = (self.len(), other.len());
        let width = ours.max(theirs);
        let pad = |t: Tensor<4>, n: usize| {
            if n == 0 {
                return t;
            }
            let [b, h, _, d] = t.dims();
            let zeros = Tensor::<4>::zeros([b, h, n, d], &t.device()).cast(t.dtype());
            Tensor::cat(vec![zeros, t], 2)
        };
        for (mine, theirs_layer) in self.layers.iter_mut().zip(other.layers) {
            let (Some((k, v)), Some((ok, ov))) = (mine.take(), theirs_layer) else {
                unreachable!("both caches hold every layer")
            };
            let k = Tensor::cat(vec![pad(k, width - ours), pad(ok, width - theirs)], 0);
            let v = Tensor::cat(vec![pad(v, width - ours), pad(ov, width - theirs)], 0);
            *mine = Some((k, v));
        }
        (width - ours, width - theirs)
    }

    /// Number of rows in the batch (0 when nothing is cached).
    pub fn rows(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// A one-layer cache of `rows` rows whose every key/value equals `base + row * 10 + column`.
    fn cache(rows: usize, cols: usize, base: f32) -> KvCache {
        let values: Vec<f32> = (0..rows)
            .flat_map(|r| (0..cols).map(move |c| base + (r * 10 + c) as f32))
            .collect();
        let t =
            Tensor::<4>::from_data(TensorData::new(values, [rows, 1, cols, 1]), &Device::flex());
        KvCache {
            layers: vec![Some((t.clone(), t))],
        }
    }

    fn keys(c: &KvCache) -> Vec<f32> {
        c.layers[0]
            .as_ref()
            .unwrap()
            .0
            .clone()
            .into_data()
            .convert::<f32>()
            .try_into_vec()
            .unwrap()
    }

    #[test]
    fn select_rows_keeps_the_chosen_rows_in_order() {
        let mut c = cache(3, 2, 0.0);
        c.select_rows(&[2, 0]);
        assert_eq!(keys(&c), vec![20.0, 21.0, 0.0, 1.0]);
        assert_eq!((c.rows(), c.len()), (2, 2));
    }

    #[test]
    fn merge_left_pads_the_shorter_cache() {
        let mut a = cache(1, 3, 0.0);
        let pads = a.merge(cache(2, 1, 100.0));
        assert_eq!(pads, (0, 2));
        assert_eq!(
            keys(&a),
            vec![0.0, 1.0, 2.0, 0.0, 0.0, 100.0, 0.0, 0.0, 110.0]
        );
        let mut b = cache(1, 1, 100.0);
        assert_eq!(b.merge(cache(1, 2, 0.0)), (1, 0));
        assert_eq!(keys(&b), vec![0.0, 100.0, 0.0, 1.0]);
    }

    #[test]
    fn merge_into_an_empty_cache_takes_the_other() {
        let mut empty = KvCache::new(1);
        assert_eq!(empty.merge(cache(2, 2, 0.0)), (0, 0));
        assert_eq!((empty.rows(), empty.len()), (2, 2));
    }

    #[test]
    fn trim_front_drops_leading_columns() {
        let mut c = cache(2, 3, 0.0);
        c.trim_front(2);
        assert_eq!(keys(&c), vec![2.0, 12.0]);
        assert_eq!(c.len(), 1);
    }
}
