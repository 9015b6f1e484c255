//! GGUF's Q6_K, read only: super-blocks of 256 six-bit values in sixteen groups of 16,
//! each group with a signed 8-bit scale, one f16 scale per super-block (210 bytes: 6.56
//! bits per weight). llama.cpp's `Q4_K_M` files keep some matrices in it (the output
//! head, half the value projections and MLP down projections), so reading those files
//! needs it; Ember holds such matrices in Q8_0.

use super::f16_value;
use super::q4_k::SUPER_BLOCK;

/// A Q6_K super-block as GGUF stores it: the codes' low four bits (`ql`, 128 bytes),
/// their high two bits (`qh`, 64 bytes), the sixteen scales, then `d`.
#[allow(non_camel_case_types)] // GGUF's name
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ6_K<'a> {
    bytes: &'a [u8],
}

impl<'a> BlockQ6_K<'a> {
    /// Bytes of one super-block in a GGUF file.
    pub const BYTES: usize = 128 + 64 + 16 + 2;

    /// The super-block in `bytes` (its first [`BlockQ6_K::BYTES`]).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes: &bytes[..Self::BYTES],
        }
    }

    /// The values, as ggml's `dequantize_row_q6_K` computes them: `(d · scale) · (q - 32)`.
    pub fn dequantize(&self, out: &mut [f32; SUPER_BLOCK]) {
        let (ql, rest) = self.bytes.split_at(128);
        let (qh, rest) = rest.split_at(64);
        let (scales, d) = rest.split_at(16);
        let d = f16_value(u16::from_le_bytes([d[0], d[1]]));
        for half in 0..2 {
            let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
            let sc = |i: usize| f32::from(scales[8 * half + i] as i8);
            let y = &mut out[128 * half..];
            for l in 0..32 {
                let is = l / 16;
                let q = |low: u8, shift: u32| {
                    f32::from(((low & 0xF) | (((qh[l] >> shift) & 3) << 4)) as i8 - 32)
                };
                y[l] = d * sc(is) * q(ql[l], 0);
                y[l + 32] = d * sc(is + 2) * q(ql[l + 32], 2);
                y[l + 64] = d * sc(is + 4) * q(ql[l] >> 4, 4);
                y[l + 96] = d * sc(is + 6) * q(ql[l + 32] >> 4, 6);
            }
        }
    }
}
