//! GGUF's Q4_0: 32 four-bit values (offset by 8) and one f16 scale per block.

use super::{BLOCK_SIZE, QuantBlock, f16_bits, f16_value};

/// A Q4_0 block: `values[i] ≈ d · (q[i] - 8)`, with `d = m / -8` for the value `m` of
/// largest magnitude (so `m` itself is exact) and the 4-bit `q` packed two per byte:
/// value `i` in the low nibble of byte `i`, value `i + 16` in its high nibble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The packed 4-bit values.
    pub qs: [u8; BLOCK_SIZE / 2],
}

impl BlockQ4_0 {
    /// Value `i`'s 4-bit code, 0..=15.
    #[inline(always)]
    fn code(&self, i: usize) -> u8 {
        let byte = self.qs[i % (BLOCK_SIZE / 2)];
        if i < BLOCK_SIZE / 2 {
            byte & 0x0F
        } else {
            byte >> 4
        }
    }
}

impl QuantBlock for BlockQ4_0 {
    const BYTES: usize = 2 + BLOCK_SIZE / 2;

    fn quantize_block(values: &[f32; BLOCK_SIZE]) -> Self {
        // ggml's `quantize_row_q4_0_ref`: the first value of largest magnitude, signed,
        // sets the scale.
        let mut max = 0.0f32;
        for &v in values {
            if v.abs() > max.abs() {
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let code = |v: f32| ((v * id + 8.5) as u8).min(15);
        let half = BLOCK_SIZE / 2;
        Self {
            d: f16_bits(d),
            qs: std::array::from_fn(|i| code(values[i]) | (code(values[i + half]) << 4)),
        }
    }

    fn dequantize_block(&self, out: &mut [f32; BLOCK_SIZE]) {
        let d = f16_value(self.d);
        for (i, o) in out.iter_mut().enumerate() {
            *o = f32::from(self.code(i) as i8 - 8) * d;
        }
    }

    fn write_bytes(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..Self::BYTES].copy_from_slice(&self.qs);
    }

    fn read_bytes(bytes: &[u8]) -> Self {
        Self {
            d: u16::from_le_bytes([bytes[0], bytes[1]]),
            qs: std::array::from_fn(|i| bytes[2 + i]),
        }
    }

    fn scale_and_ints(&self) -> (u16, [i8; BLOCK_SIZE]) {
        (self.d, std::array::from_fn(|i| self.code(i) as i8 - 8))
    }
}
