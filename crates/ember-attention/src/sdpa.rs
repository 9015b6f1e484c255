//! Causal scaled dot-product attention, shared by GPT-2's layer and the grouped-query
//! attention of Llama and Qwen3: `softmax(QKᵀ/√d + causal mask) · V`.

use burn::nn::Dropout;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;

/// Causal attention of queries over keys and values, the mask aligned at the bottom
/// right so that queries which continue a cached sequence see every earlier key.
/// Keys and values may have fewer heads than the queries (grouped-query attention):
/// each is shared by `heads / kv_heads` consecutive query heads. `dropout`, when it is
/// active (training on an autodiff device), drops attention weights, as the book does.
///
/// On the CPU backends with Ember's kernels, inference (no tensor tracked for a backward
/// pass) runs through `ember_kernels::tiled_attention`, whose memory does not grow with
/// queries × keys and which reads shared key/value heads in place; square attention in
/// training through `ember_kernels::causal_attention`, dropout included. Elsewhere
/// Burn's fused kernel runs where it can (no dropout; a square mask, or one new query),
/// and the explicit formulation in the remaining cases.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`
/// - k, v: `[batch, kv_heads, seq_k, head_dim]`, `heads` a multiple of `kv_heads`,
///   `seq_k >= seq_q`
/// - returns `[batch, heads, seq_q, head_dim]`
pub fn causal_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    dropout: Option<&Dropout>,
) -> Tensor<4> {
    let dropout =
        dropout.filter(|d| d.prob > 0.0 && d.training.is_enabled() && q.device().is_autodiff());
    if dropout.is_none()
        && let Some(context) = ember_kernels::tiled_attention(&q, &k, &v, None)
    {
        return context;
    }
    let heads = q.dims()[1];
    let (k, v) = (repeat_kv(k, heads), repeat_kv(v, heads));
    let seq_q = q.dims()[2];
    let seq_k = k.dims()[2];
    if seq_q == seq_k
        && let Some(context) = ember_kernels::causal_attention(&q, &k, &v, dropout)
    {
        return context;
    }
    if dropout.is_some() {
        // Burn's fused kernel has no dropout; the book drops attention weights.
        return explicit_attention(q, k, v, dropout);
    }
    if seq_q == seq_k {
        let options = AttentionModuleOptions {
            is_causal: true,
            ..Default::default()
        };
        return attention(q, k, v, None, None, options);
    }
    // Queries that continue a cached sequence. Backends disagree on where a non-square
    // causal mask sits (libtorch aligns it top-left), so: one new query sees every key,
    // several get the explicit bottom-right mask.
    if seq_q == 1 {
        attention(q, k, v, None, None, AttentionModuleOptions::default())
    } else {
        explicit_attention(q, k, v, None)
    }
}

/// [`causal_attention`] in which each query sees only the last `window` positions,
/// itself included (Gemma's sliding-window layers; transformers' mask
/// `kv_idx > q_idx - sliding_window`). As there, the last query is the last key.
///
/// On the CPU backends with Ember's kernels this is `ember_kernels::tiled_attention`
/// with the window. Elsewhere keys no query can see are cut off first, so a decoding
/// step (one query) attends over `window` keys through the ordinary causal path; several
/// queries over more than `window` keys get the explicit formulation with a band mask.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`
/// - k, v: `[batch, kv_heads, seq_k, head_dim]`, `seq_k >= seq_q`
/// - returns `[batch, heads, seq_q, head_dim]`
pub fn sliding_window_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    window: usize,
) -> Tensor<4> {
    let window = window.max(1);
    if let Some(context) = ember_kernels::tiled_attention(&q, &k, &v, Some(window)) {
        return context;
    }
    let seq_q = q.dims()[2];
    let seq_k = k.dims()[2];
    // The first query sits at position seq_k - seq_q and sees keys after
    // seq_k - seq_q - window.
    let first = (seq_k - seq_q + 1).saturating_sub(window);
    let (k, v) = if first > 0 {
        (
            k.narrow(2, first, seq_k - first),
            v.narrow(2, first, seq_k - first),
        )
    } else {
        (k, v)
    };
    let seq_k = seq_k - first;
    if seq_k <= window {
        // No query is old enough for its window to hide anything.
        return causal_attention(q, k, v, None);
    }
    let heads = q.dims()[1];
    let (k, v) = (repeat_kv(k, heads), repeat_kv(v, heads));
    let offset = seq_k - seq_q;
    let hidden: Vec<bool> = (0..seq_q)
        .flat_map(|i| (0..seq_k).map(move |j| j > i + offset || j + window <= i + offset))
        .collect();
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(hidden, [seq_q, seq_k]), &q.device());
    masked_attention(q, k, v, mask, None)
}

/// Keys or values of `kv_heads` heads, each repeated for the `heads / kv_heads` query
/// heads that share it (a no-op without grouping).
///
/// # Shapes
/// - x: `[batch, kv_heads, seq, head_dim]` → `[batch, heads, seq, head_dim]`
pub fn repeat_kv(x: Tensor<4>, heads: usize) -> Tensor<4> {
    let [batch, kv_heads, seq, head_dim] = x.dims();
    if kv_heads == heads {
        return x;
    }
    assert!(
        heads.is_multiple_of(kv_heads),
        "{heads} query heads cannot share {kv_heads} key/value heads"
    );
    let groups = heads / kv_heads;
    x.unsqueeze_dim::<5>(2)
        .expand([batch, kv_heads, groups, seq, head_dim])
        .reshape([batch, heads, seq, head_dim])
}

/// softmax(QKᵀ/√d + causal mask) · V, with optional dropout on the weights: the plain
/// formulation, also what the fused kernel is tested against. The mask is aligned at the
/// bottom right.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`, k, v: `[batch, heads, seq_k, head_dim]`
/// - returns `[batch, heads, seq_q, head_dim]`
pub fn explicit_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    dropout: Option<&Dropout>,
) -> Tensor<4> {
    let [seq_q, seq_k] = [q.dims()[2], k.dims()[2]];
    // `tril_mask` is `true` above the (shifted) diagonal: the positions to hide.
    let offset = seq_k as i64 - seq_q as i64;
    let mask = Tensor::<2, Bool>::tril_mask([seq_q, seq_k], offset, &q.device());
    masked_attention(q, k, v, mask, dropout)
}

/// softmax(QKᵀ/√d, with the positions `hidden` marks at −∞) · V, with optional dropout
/// on the weights.
///
/// # Shapes
/// - q: `[batch, heads, seq_q, head_dim]`, k, v: `[batch, heads, seq_k, head_dim]`
/// - hidden: `[seq_q, seq_k]`
/// - returns `[batch, heads, seq_q, head_dim]`
fn masked_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    hidden: Tensor<2, Bool>,
    dropout: Option<&Dropout>,
) -> Tensor<4> {
    let [batch, heads, seq_q, head_dim] = q.dims();
    let seq_k = k.dims()[2];
    let scores = q.matmul(k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
    let mask = hidden
        .reshape([1, 1, seq_q, seq_k])
        .expand([batch, heads, seq_q, seq_k]);
    let mut weights = softmax(scores.mask_fill(mask, f32::NEG_INFINITY), 3);
    if let Some(dropout) = dropout {
        weights = ember_kernels::dropout(dropout, weights);
    }
    weights.matmul(v)
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Grouped-query attention equals ordinary attention with each key/value head copied
    /// for its query heads, by hand.
    #[test]
    fn shared_key_value_heads_equal_copied_ones() {
        let device = Device::ndarray();
        device.seed(3);
        let q = Tensor::<4>::random([2, 4, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([2, 2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<4>::random([2, 2, 5, 8], Distribution::Normal(0.0, 1.0), &device);
        let by_hand = |x: &Tensor<4>| {
            let heads: Vec<Tensor<4>> = (0..4).map(|h| x.clone().narrow(1, h / 2, 1)).collect();
            Tensor::cat(heads, 1)
        };
        let grouped = causal_attention(q.clone(), k.clone(), v.clone(), None);
        let copied = explicit_attention(q, by_hand(&k), by_hand(&v), None);
        grouped
            .into_data()
            .assert_approx_eq::<f32>(&copied.into_data(), Tolerance::absolute(1e-5));
    }

    /// Sliding-window attention equals, query by query, attention over the keys of its
    /// window alone; for a full pass, a continuation of a cached sequence and one
    /// decoding step.
    #[test]
    fn a_sliding_window_sees_exactly_its_last_positions() {
        let device = Device::ndarray();
        device.seed(5);
        let window = 3;
        let q = Tensor::<4>::random([1, 4, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        let k = Tensor::<4>::random([1, 2, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<4>::random([1, 2, 7, 8], Distribution::Normal(0.0, 1.0), &device);
        for seq_q in [7, 4, 1] {
            let queries = q.clone().narrow(2, 7 - seq_q, seq_q);
            let got = sliding_window_attention(queries.clone(), k.clone(), v.clone(), window);
            for i in 0..seq_q {
                let position = 7 - seq_q + i;
                let first = (position + 1).saturating_sub(window);
                let len = position + 1 - first;
                let one = explicit_attention(
                    queries.clone().narrow(2, i, 1),
                    repeat_kv(k.clone().narrow(2, first, len), 4),
                    repeat_kv(v.clone().narrow(2, first, len), 4),
                    None,
                );
                got.clone()
                    .narrow(2, i, 1)
                    .into_data()
                    .assert_approx_eq::<f32>(&one.into_data(), Tolerance::absolute(1e-5));
            }
        }
        // A window longer than the sequence is plain causal attention.
        sliding_window_attention(q.clone(), k.clone(), v.clone(), 7)
            .into_data()
            .assert_approx_eq::<f32>(
                &causal_attention(q, k, v, None).into_data(),
                Tolerance::absolute(1e-6),
            );
    }
}
