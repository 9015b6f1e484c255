//! Token embeddings and the tied output head, for f32 weights or half ones.
//!
//! Both read an `nn.Embedding`'s `[vocab, d]` matrix: the lookup takes rows of it, a tied
//! head multiplies by its transpose. With [half weights](crate::packed_weights) both read
//! the 16-bit rows without ever computing the f32 matrix.

use burn::nn::Embedding;
use burn::prelude::*;

use crate::packed_weights::{embedding_packed, linear_packed, packed_matrix};

/// Rows `ids` of the embedding matrix.
///
/// # Shapes
/// - ids: `[batch, seq]`
/// - returns `[batch, seq, d]`
pub fn embedding(layer: &Embedding, ids: Tensor<2, Int>) -> Tensor<3> {
    match packed_matrix(&layer.weight) {
        Some(m) => embedding_packed(ids, &m),
        None => layer.forward(ids),
    }
}

/// `x · Eᵀ`: logits of a head tied to the embedding `layer` (row by row within
/// [`crate::with_row_layout`], as [`crate::linear`]).
///
/// # Shapes
/// - x: `[batch, seq, d]`
/// - returns `[batch, seq, vocab]`
pub fn unembed(layer: &Embedding, x: Tensor<3>) -> Tensor<3> {
    if let Some(m) = packed_matrix(&layer.weight) {
        return linear_packed(x, &m, None);
    }
    let [batch, seq, d] = x.dims();
    let x = x.reshape([batch * seq, d]);
    let product = |x: Tensor<2>| crate::matmul(x, layer.weight.val().transpose());
    let logits = match crate::rows::layout_for(batch * seq) {
        Some(layout) => crate::rows::by_layout(
            x,
            &layout,
            |single| crate::rows::each_row(single, product),
            product,
        ),
        None => product(x),
    };
    let vocab = logits.dims()[1];
    logits.reshape([batch, seq, vocab])
}
