//! Attention for inference in tiles with an online softmax, so that its memory does not
//! grow with the number of queries times the number of keys.
//!
//! The plain formulation holds `softmax(QKᵀ/√d)` whole: `[heads, queries, keys]`, which
//! for a 16k-token prompt of a 16-head model is 16 GiB. Here each task takes a tile of
//! one head's queries and walks its visible keys a tile at a time: the scores of one
//! tile pair (`TILE_Q × TILE_K`), the running maximum and sum of each query's
//! exponentials, and its output so far, rescaled whenever the maximum grows
//! (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"; the tiling
//! of Dao et al. 2022, "FlashAttention", here for CPU caches). Memory per task is a few
//! hundred KiB whatever the lengths; key tiles wholly hidden by the causal mask or by a
//! sliding window are never computed.
//!
//! Grouped-query attention reads each key/value head in place for all the query heads
//! that share it (no repeated copies), and the mask is aligned at the bottom right, so
//! queries that continue a cached sequence see every earlier key. Inference only: the
//! training path (weights kept for the backward pass, dropout) is
//! [`causal_attention`](crate::causal_attention).

use burn::prelude::*;
use rayon::prelude::*;

use crate::cpu::{CpuBackend, MatrixView, Strided, with_cpu_backend};
use crate::exp::exp;
use crate::matmul::gemm_into_on_this_thread;
use crate::simd::widest_fn;

/// Queries per task.
const TILE_Q: usize = 64;
/// Keys per step of a task: the scores of a tile pair, 64 KiB, stay in L2.
const TILE_K: usize = 256;

/// Causal attention of `seq_q` queries over `seq_k >= seq_q` keys, query `i` at position
/// `seq_k - seq_q + i` seeing the keys up to its own position and, with `window`, only
/// the last `window` of them, itself included. Keys and values may have fewer heads than
/// the queries (grouped-query attention: query head `h` reads key/value head
/// `h / (heads / kv_heads)`).
///
/// Returns `None` where the kernel does not run: tensors of another backend, tensors
/// tracked for a backward pass, or shapes that do not fit together. The caller then
/// computes the plain formulation.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`
/// - k, v: `[batch, kv_heads, seq_k, head_dim]`
/// - returns `[batch, heads, seq_q, head_dim]`
pub fn tiled_attention(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    window: Option<usize>,
) -> Option<Tensor<4>> {
    tiled_attention_over(q, k, v, 0..k.dims()[2], window)
}

/// [`tiled_attention`] over positions `keys` of `k` and `v` (a KV cache's buffers), read
/// in place: the same result as over `k.narrow(2, ..)`, without the copy.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`
/// - k, v: `[batch, kv_heads, room, head_dim]`, `keys.end <= room`
/// - returns `[batch, heads, seq_q, head_dim]`
pub fn tiled_attention_over(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    keys: std::ops::Range<usize>,
    window: Option<usize>,
) -> Option<Tensor<4>> {
    let [batch, heads, seq_q, head_dim] = q.dims();
    let [k_batch, kv_heads, room, k_dim] = k.dims();
    let fits = k.dims() == v.dims()
        && k_batch == batch
        && k_dim == head_dim
        && kv_heads > 0
        && heads.is_multiple_of(kv_heads)
        && keys.start <= keys.end
        && keys.end <= room
        && keys.len() >= seq_q;
    if !fits {
        return None;
    }
    let window = window.unwrap_or(usize::MAX).max(1);
    with_cpu_backend!(q, B => tiled_on::<B>(q, k, v, keys, window)).flatten()
}

fn tiled_on<B: CpuBackend>(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    keys: std::ops::Range<usize>,
    window: usize,
) -> Option<Tensor<4>> {
    let (q, k, v) = (B::plain(q)?, B::plain(k)?, B::plain(v)?);
    let shape = B::shape(&q);
    let k_view = B::strided(&k).narrow(2, keys.clone());
    let v_view = B::strided(&v).narrow(2, keys);
    let out = attend(&B::strided(&q), &k_view, &v_view, window);
    Some(B::from_plain(B::new_tensor(&shape, out)))
}

/// Every head's output, row-major `[batch, heads, seq_q, head_dim]`.
fn attend(q: &Strided<'_>, k: &Strided<'_>, v: &Strided<'_>, window: usize) -> Vec<f32> {
    let [_, heads, seq_q, head_dim] = q.dims[..] else {
        unreachable!("checked by the caller")
    };
    let [_, kv_heads, seq_k, _] = k.dims[..] else {
        unreachable!("checked by the caller")
    };
    let mut out = vec![0.0f32; q.dims.iter().product()];
    if out.is_empty() {
        return out;
    }
    let groups = heads / kv_heads;
    let tile_rows = TILE_Q.min(seq_q);
    out.par_chunks_mut(seq_q * head_dim)
        .enumerate()
        .for_each(|(head, head_out)| {
            let (batch, h) = (head / heads, head % heads);
            let kv = batch * kv_heads + h / groups;
            let layout = Head {
                q: q.matrix_at(head),
                k: k.matrix_at(kv),
                v: v.matrix_at(kv),
                offset: seq_k - seq_q,
                window,
            };
            head_out
                .par_chunks_mut(tile_rows * head_dim)
                .enumerate()
                .for_each_init(
                    || Scratch::new(tile_rows),
                    |scratch, (tile, out)| layout.query_tile(tile * tile_rows, scratch, out),
                );
        });
    out
}

/// One head: its queries, the key/value head they read, and where the queries sit.
struct Head<'a> {
    q: MatrixView<'a>,
    k: MatrixView<'a>,
    v: MatrixView<'a>,
    /// Position of query 0 (keys before it are the cached sequence).
    offset: usize,
    window: usize,
}

/// A task's working memory, reused across its tiles.
struct Scratch {
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    fn new(rows: usize) -> Self {
        Self {
            scores: vec![0.0; rows * TILE_K],
            max: vec![0.0; rows],
            sum: vec![0.0; rows],
        }
    }
}

impl Head<'_> {
    /// The first key query `i` sees.
    fn first_visible(&self, i: usize) -> usize {
        (self.offset + i + 1).saturating_sub(self.window)
    }

    /// Queries `first..first + out.len() / head_dim` into `out`.
    fn query_tile(&self, first: usize, scratch: &mut Scratch, out: &mut [f32]) {
        let head_dim = self.q.dims.1;
        let rows = out.len() / head_dim;
        let queries = self.q.rows(first, rows);
        let scale = (head_dim as f32).sqrt();
        let (max, sum) = (&mut scratch.max[..rows], &mut scratch.sum[..rows]);
        max.fill(f32::NEG_INFINITY);
        sum.fill(0.0);
        out.fill(0.0);
        // A decoding step's one query, as a slice for `row_dots`.
        let query: Vec<f32> = match rows {
            1 => (0..head_dim).map(|c| queries.at(0, c)).collect(),
            _ => Vec::new(),
        };
        // Keys from the first that the tile's first query sees to its last query's own.
        let end = self.offset + first + rows;
        let mut start = self.first_visible(first);
        while start < end {
            let cols = TILE_K.min(end - start);
            let scores = &mut scratch.scores[..rows * cols];
            let (keys, values) = (self.k.rows(start, cols), self.v.rows(start, cols));
            // A decoding step's one query: dot products and scaled additions of rows
            // (`gemm` would pack the tile of keys first, for one row of output).
            let one_row = rows == 1 && keys.col_stride == 1 && values.col_stride == 1;
            if one_row {
                // SAFETY: the views address `cols` rows of `head_dim` contiguous values.
                unsafe { row_dots(&query, &keys, scores) };
            } else {
                gemm_into_on_this_thread(queries, keys.t(), scores, false);
            }
            for (r, (row, acc)) in scores
                .chunks_exact_mut(cols)
                .zip(out.chunks_exact_mut(head_dim))
                .enumerate()
            {
                // Query `first + r` sees keys lo..=hi; in this tile, columns from..to.
                let (lo, hi) = (self.first_visible(first + r), self.offset + first + r);
                let from = lo.saturating_sub(start).min(cols);
                let to = (hi + 1).saturating_sub(start).min(cols);
                online_softmax_row(row, from, to, scale, &mut max[r], &mut sum[r], acc);
            }
            if one_row {
                // SAFETY: as above.
                unsafe { add_scaled_rows(scores, &values, out) };
            } else {
                let weights = MatrixView::new(scores.as_ptr(), (rows, cols), cols as isize, 1);
                gemm_into_on_this_thread(weights, values, out, true);
            }
            start += cols;
        }
        for (acc, &sum) in out.chunks_exact_mut(head_dim).zip(sum.iter()) {
            acc.iter_mut().for_each(|x| *x /= sum);
        }
    }
}

/// `scores[j] = q · keys[j]` for each row of `keys` (rows of contiguous values).
///
/// # Safety
/// `keys` addresses `scores.len()` rows of `q.len()` contiguous values.
unsafe fn row_dots(q: &[f32], keys: &MatrixView<'_>, scores: &mut [f32]) {
    for (j, score) in scores.iter_mut().enumerate() {
        // SAFETY: row `j` holds `q.len()` values from its first.
        let key = unsafe {
            std::slice::from_raw_parts(keys.ptr.offset(j as isize * keys.row_stride), q.len())
        };
        *score = dot(q, key);
    }
}

/// `out += Σ_j weights[j] · values[j]` over the rows of `values`.
///
/// # Safety
/// `values` addresses `weights.len()` rows of `out.len()` contiguous values.
unsafe fn add_scaled_rows(weights: &[f32], values: &MatrixView<'_>, out: &mut [f32]) {
    for (j, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        // SAFETY: row `j` holds `out.len()` values from its first.
        let value = unsafe {
            std::slice::from_raw_parts(values.ptr.offset(j as isize * values.row_stride), out.len())
        };
        add_scaled(w, value, out);
    }
}

widest_fn! {
    /// `a · b` in 32 lanes (four independent vectors of eight: the additions of one
    /// lane wait for each other, not those of the others), summed pairwise.
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut lanes = [0.0f32; 32];
        let (a32, b32) = (a.chunks_exact(32), b.chunks_exact(32));
        let tail: f32 = a32
            .remainder()
            .iter()
            .zip(b32.remainder())
            .map(|(x, y)| x * y)
            .sum();
        for (x, y) in a32.zip(b32) {
            for i in 0..32 {
                lanes[i] += x[i] * y[i];
            }
        }
        crate::simd::pairwise_sum(lanes) + tail
    }
}

widest_fn! {
    /// `out += w · row`.
    fn add_scaled(w: f32, row: &[f32], out: &mut [f32]) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += w * v;
        }
    }
}

widest_fn! {
    /// One query's scores over a key tile, `row[from..to]` visible: turns them into
    /// `exp(score / scale - max)` (0 where hidden) with `max` the running maximum, and
    /// rescales the running `sum` of exponentials and the output so far `acc` to it.
    fn online_softmax_row(
        row: &mut [f32],
        from: usize,
        to: usize,
        scale: f32,
        max: &mut f32,
        sum: &mut f32,
        acc: &mut [f32],
    ) {
        if from >= to {
            row.fill(0.0);
            return;
        }
        let mut tile_max = f32::NEG_INFINITY;
        for s in &mut row[from..to] {
            *s /= scale;
            tile_max = tile_max.max(*s);
        }
        let new_max = max.max(tile_max);
        if new_max > *max {
            // exp(-inf) = 0 on the first visible tile: nothing to rescale.
            let shrink = exp(*max - new_max);
            *sum *= shrink;
            acc.iter_mut().for_each(|x| *x *= shrink);
            *max = new_max;
        }
        let mut tile_sum = 0.0;
        for s in &mut row[from..to] {
            *s = exp(*s - new_max);
            tile_sum += *s;
        }
        *sum += tile_sum;
        row[..from].fill(0.0);
        row[to..].fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    use super::*;
    use crate::tests::assert_close;

    /// softmax(QKᵀ/√d, hidden at −∞) · V over the whole score matrix, keys and values
    /// repeated for grouped heads: what the kernel must equal.
    fn plain(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, window: usize) -> Tensor<4> {
        let [batch, heads, seq_q, head_dim] = q.dims();
        let [_, kv_heads, seq_k, _] = k.dims();
        let repeat = |x: Tensor<4>| {
            let heads_of: Vec<Tensor<4>> = (0..heads)
                .map(|h| x.clone().narrow(1, h / (heads / kv_heads), 1))
                .collect();
            Tensor::cat(heads_of, 1)
        };
        let offset = seq_k - seq_q;
        let hidden: Vec<bool> = (0..seq_q)
            .flat_map(|i| {
                (0..seq_k).map(move |j| j > i + offset || j.saturating_add(window) <= i + offset)
            })
            .collect();
        let mask =
            Tensor::<2, Bool>::from_data(TensorData::new(hidden, [seq_q, seq_k]), &q.device())
                .reshape([1, 1, seq_q, seq_k])
                .expand([batch, heads, seq_q, seq_k]);
        let scores = q.matmul(repeat(k).swap_dims(2, 3)) / (head_dim as f64).sqrt();
        softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3).matmul(repeat(v))
    }

    fn random(dims: [usize; 4], device: &Device) -> Tensor<4> {
        Tensor::random(dims, Distribution::Normal(0.0, 2.0), device)
    }

    /// Against the plain formulation: square (a prompt), a chunk and one query
    /// continuing a cache, grouped heads, windows shorter and longer than a key tile,
    /// lengths across several query and key tiles; queries read through the strides of
    /// a fused projection.
    #[test]
    fn equals_the_whole_score_matrix_softmax() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        device.seed(11);
        let (batch, heads, kv_heads, head_dim) = (2, 4, 2, 16);
        for (seq_q, seq_k, window) in [
            (600, 600, usize::MAX),
            (70, 700, usize::MAX),
            (1, 531, usize::MAX),
            (300, 300, 100),
            (90, 800, 300),
            (1, 900, 257),
            (5, 5, usize::MAX),
        ] {
            let q = random([batch, seq_q, heads, head_dim], &device).swap_dims(1, 2);
            let k = random([batch, kv_heads, seq_k, head_dim], &device);
            let v = random([batch, kv_heads, seq_k, head_dim], &device);
            let got = tiled_attention(&q, &k, &v, Some(window)).expect("runs on ndarray");
            assert_close(got, plain(q, k, v, window), 2e-5);
        }
    }

    /// Shapes that do not fit together, and tensors tracked for a backward pass, are
    /// left to the caller.
    #[test]
    fn declines_what_it_does_not_compute() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        let q = random([1, 4, 8, 16], &device);
        let k = random([1, 3, 8, 16], &device);
        assert!(tiled_attention(&q, &k, &k, None).is_none());
        let short = random([1, 2, 7, 16], &device);
        assert!(tiled_attention(&q, &short, &short, None).is_none());
        let tracked = Device::ndarray().autodiff();
        let q = random([1, 2, 8, 16], &tracked).require_grad();
        assert!(tiled_attention(&q, &q, &q, None).is_none());
        let room = random([1, 2, 20, 16], &device);
        let q = random([1, 4, 3, 16], &device);
        assert!(tiled_attention_over(&q, &room, &room, 15..21, None).is_none());
        assert!(tiled_attention_over(&q, &room, &room, 5..7, None).is_none());
    }

    /// Over positions of a buffer, read in place, the bits of the positions copied out.
    #[test]
    fn over_a_range_is_over_its_copy() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        let q = random([2, 4, 3, 16], &device);
        let (k, v) = (
            random([2, 2, 40, 16], &device),
            random([2, 2, 40, 16], &device),
        );
        for window in [None, Some(4)] {
            let got = tiled_attention_over(&q, &k, &v, 7..30, window).unwrap();
            let want = tiled_attention(
                &q,
                &k.clone().narrow(2, 7, 23),
                &v.clone().narrow(2, 7, 23),
                window,
            )
            .unwrap();
            got.into_data().assert_eq(&want.into_data(), true);
        }
    }
}
