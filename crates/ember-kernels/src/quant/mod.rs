//! Block-quantized weights in GGUF's formats, for inference on the CPU: a weight row is
//! cut into blocks of 32 values that share one f16 scale, and each value is kept in 8
//! bits ([`BlockQ8_0`], 34 bytes per block, 8.5 bits per weight) or 4 bits
//! ([`BlockQ4_0`], 18 bytes, 4.5 bits per weight); or into super-blocks of 256 whose
//! eight sub-blocks of 32 each have a 6-bit scale and a 6-bit minimum ([`BlockQ4_K`],
//! 144 bytes, 4.5 bits per weight, and much of Q4_0's error gone).
//!
//! Quantizing gives exactly the bytes llama.cpp's reference quantizers
//! (`ggml-quants.c`; for Q8_0 and Q4_0 mirrored by the `gguf` Python package) give, so
//! the blocks are GGUF's own, written and read without conversion. For products, a
//! matrix keeps its blocks' scales and integers rearranged in panels of rows
//! ([`PackedMatrix`](crate::packed_weights::PackedMatrix)), and the products quantize
//! the activations too and multiply integers, as llama.cpp does
//! (`panel_dot.rs`). Decoding reads the weights once per token, so 8.5 or 4.5 bits
//! per weight instead of 16 is where the speed comes from.

mod q4_0;
mod q4_k;
mod q6_k;
mod q8_0;

pub use q4_0::BlockQ4_0;
pub(crate) use q4_k::unpack_scale_and_min_words;
pub use q4_k::{BlockQ4_K, SUB_BLOCK, SUB_BLOCKS, SUPER_BLOCK};
pub use q6_k::BlockQ6_K;
pub use q8_0::BlockQ8_0;

/// Values per block in GGUF's Q8_0 and Q4_0 formats.
pub const BLOCK_SIZE: usize = 32;

/// A row whose length is not a whole number of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotWholeBlocks {
    /// The row's length.
    pub len: usize,
}

impl std::fmt::Display for NotWholeBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} values are not whole blocks of {BLOCK_SIZE}",
            self.len
        )
    }
}

impl std::error::Error for NotWholeBlocks {}

/// A GGUF block format: quantizing, dequantizing, its bytes and the dot product of f32
/// activations with a row of blocks.
pub trait QuantBlock: Copy + Send + Sync + Sized {
    /// Bytes of one block in a GGUF file.
    const BYTES: usize;

    /// One block of [`BLOCK_SIZE`] values, as ggml's reference quantizer makes it.
    fn quantize_block(values: &[f32; BLOCK_SIZE]) -> Self;

    /// The block's values, `d · q`.
    fn dequantize_block(&self, out: &mut [f32; BLOCK_SIZE]);

    /// The block as GGUF stores it (little-endian).
    fn write_bytes(&self, out: &mut [u8]);

    /// A block from GGUF's bytes.
    fn read_bytes(bytes: &[u8]) -> Self;

    /// The f16 scale's bits and the 32 integers `q` (`values[i] = d · q[i]`).
    fn scale_and_ints(&self) -> (u16, [i8; BLOCK_SIZE]);

    /// A row of values quantized block by block.
    fn quantize_row(values: &[f32]) -> Result<Vec<Self>, NotWholeBlocks> {
        if !values.len().is_multiple_of(BLOCK_SIZE) {
            return Err(NotWholeBlocks { len: values.len() });
        }
        Ok(values
            .chunks_exact(BLOCK_SIZE)
            .map(|chunk| Self::quantize_block(chunk.try_into().expect("a whole block")))
            .collect())
    }

    /// A row of blocks dequantized into `out` (`blocks.len() · BLOCK_SIZE` values).
    fn dequantize_row(blocks: &[Self], out: &mut [f32]) {
        assert_eq!(out.len(), blocks.len() * BLOCK_SIZE, "one output per value");
        for (block, chunk) in blocks.iter().zip(out.chunks_exact_mut(BLOCK_SIZE)) {
            block.dequantize_block(chunk.try_into().expect("a whole block"));
        }
    }

    /// Blocks from GGUF's bytes (a whole number of blocks).
    fn from_bytes(bytes: &[u8]) -> Option<Vec<Self>> {
        bytes.len().is_multiple_of(Self::BYTES).then(|| {
            bytes
                .chunks_exact(Self::BYTES)
                .map(Self::read_bytes)
                .collect()
        })
    }

    /// The blocks as GGUF stores them.
    fn to_bytes(blocks: &[Self]) -> Vec<u8> {
        let mut out = vec![0u8; blocks.len() * Self::BYTES];
        for (block, chunk) in blocks.iter().zip(out.chunks_exact_mut(Self::BYTES)) {
            block.write_bytes(chunk);
        }
        out
    }
}

/// C's `roundf`: halves away from zero (Rust's `f32::round`), as ggml rounds.
#[inline]
fn round_half_away(v: f32) -> f32 {
    v.round()
}

/// `f32` to IEEE half bits, to nearest even, as numpy's and ggml's conversions do.
#[inline]
fn f16_bits(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

#[inline]
fn f16_value(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[cfg(test)]
mod tests;
