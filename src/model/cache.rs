//! Key/value cache for incremental decoding.

use super::config::ModelConfig;
use burn::tensor::Tensor;

/// Keys and values of every layer after rotary embedding, with KV heads not yet repeated
/// (`[batch, kv_heads, columns, head_dim]`), so memory grows with KV heads, not query heads.
///
/// Columns line up across layers from the right: the newest key is in the last column of every
/// layer. A global layer keeps all [`KvCache::len`] columns; a local (sliding-window) layer
/// keeps only the newest `window - 1`, all that a later query can see, so its memory stays
/// bounded however long the sequence grows.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    /// Per layer, the most columns it keeps (`None`: all; at least 1, so no tensor is empty).
    keep: Vec<Option<usize>>,
    /// Columns of the whole sequence, what a global layer holds.
    len: usize,
}

impl KvCache {
    pub fn new(config: &ModelConfig) -> Self {
        let keep = (0..config.num_layers)
            .map(|l| config.window(l).map(|w| w.saturating_sub(1).max(1)))
            .collect();
        Self {
            layers: vec![None; config.num_layers],
            keep,
            len: 0,
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Columns `layer` holds: the newest `min(len, keep)`.
    pub(crate) fn held(&self, layer: usize) -> usize {
        self.keep[layer].map_or(self.len, |k| k.min(self.len))
    }

    /// Appends this step's keys and values for `layer` and returns those the step attends to:
    /// the layer's held columns followed by the new ones. Call [`KvCache::advance`] once every
    /// layer has appended.
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
        let stored = match self.keep[layer] {
            Some(keep) => (newest(k.clone(), keep), newest(v.clone(), keep)),
            None => (k.clone(), v.clone()),
        };
        self.layers[layer] = Some(stored);
        (k, v)
    }

    /// Counts the `columns` every layer appended in this pass.
    pub(crate) fn advance(&mut self, columns: usize) {
        self.len += columns;
    }
}

/// The newest `n` columns of `t` (all of them when it has fewer).
fn newest(t: Tensor<4>, n: usize) -> Tensor<4> {
    let [b, h, cols, d] = t.dims();
    if cols <= n {
        return t;
    }
    t.slice([0..b, 0..h, cols - n..cols, 0..d])
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
        self.len -= n.min(self.len);
        for l in 0..self.layers.len() {
            let held = self.held(l);
            if let Some((k, v)) = &mut self.layers[l] {
                *k = newest(k.clone(), held);
                *v = newest(v.clone(), held);
            }
        }
    }

    /// Puts `other`'s rows after this cache's rows. The shorter cache is padded on the left with
    /// zero columns so both keep their newest key in the last column; returns how many columns
    /// each side got (`(ours, theirs)`), which the caller must add to its key masks as padding.
    pub fn merge(&mut self, other: KvCache) -> (usize, usize) {
        if self.layers.iter().all(Option::is_none) {
            *self = other;
            return (0, 0);
        }
        if other.layers.iter().all(Option::is_none) {
            return (0, 0);
        }
        let (ours, theirs) = (self.len, other.len);
        self.len = ours.max(theirs);
        let pad = |t: Tensor<4>, width: usize| {
            let [b, h, cols, d] = t.dims();
            if cols == width {
                return t;
            }
            let zeros = Tensor::<4>::zeros([b, h, width - cols, d], &t.device()).cast(t.dtype());
            Tensor::cat(vec![zeros, t], 2)
        };
        for (l, theirs_layer) in other.layers.into_iter().enumerate() {
            let width = self.held(l);
            let (Some((k, v)), Some((ok, ov))) = (self.layers[l].take(), theirs_layer) else {
                unreachable!("both caches hold every layer")
            };
            let k = Tensor::cat(vec![pad(k, width), pad(ok, width)], 0);
            let v = Tensor::cat(vec![pad(v, width), pad(ov, width)], 0);
            self.layers[l] = Some((k, v));
        }
        (self.len - ours, self.len - theirs)
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
            keep: vec![None],
            len: cols,
        }
    }

    fn keys(c: &KvCache) -> Vec<f32> {
        layer_keys(c, 0)
    }

    fn layer_keys(c: &KvCache, layer: usize) -> Vec<f32> {
        c.layers[layer]
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
        let mut empty = KvCache {
            layers: vec![None],
            keep: vec![None],
            len: 0,
        };
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

    /// A local layer holds only its newest columns, aligned on the right with the global ones,
    /// through appends, merges and trims.
    #[test]
    fn a_windowed_layer_keeps_its_newest_columns() {
        let one = |rows, cols, base| cache(rows, cols, base).layers[0].take().unwrap().0;
        let windowed = || KvCache {
            layers: vec![None, None],
            keep: vec![None, Some(2)],
            len: 0,
        };
        let mut c = windowed();
        for layer in 0..2 {
            let (k, _) = c.append(layer, one(1, 4, 0.0), one(1, 4, 0.0));
            assert_eq!(k.dims()[2], 4, "a pass attends to all its own columns");
        }
        c.advance(4);
        assert_eq!((c.len(), c.held(0), c.held(1)), (4, 4, 2));
        assert_eq!(layer_keys(&c, 1), vec![2.0, 3.0]);
        let (k, _) = c.append(1, one(1, 1, 9.0), one(1, 1, 9.0));
        assert_eq!(k.dims()[2], 3, "held columns then the new one");

        let mut c = windowed();
        c.append(0, one(1, 4, 0.0), one(1, 4, 0.0));
        c.append(1, one(1, 4, 0.0), one(1, 4, 0.0));
        c.advance(4);
        let mut other = windowed();
        other.append(0, one(1, 1, 100.0), one(1, 1, 100.0));
        other.append(1, one(1, 1, 100.0), one(1, 1, 100.0));
        other.advance(1);
        assert_eq!(c.merge(other), (0, 3));
        assert_eq!(layer_keys(&c, 1), vec![2.0, 3.0, 0.0, 100.0]);
        c.trim_front(3);
        assert_eq!((c.len(), c.held(1)), (1, 1));
        assert_eq!(layer_keys(&c, 0), vec![3.0, 100.0]);
        assert_eq!(layer_keys(&c, 1), vec![3.0, 100.0]);
    }
}
