//! GGUF's Q8_0: 32 signed bytes and one f16 scale per block.

use super::{BLOCK_SIZE, QuantBlock, f16_bits, f16_value, round_half_away};

/// A Q8_0 block: `values[i] ≈ d · qs[i]` with `d = max|values| / 127`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// The scale, as f16 bits.
    pub d: u16,
    /// The quantized values.
    pub qs: [i8; BLOCK_SIZE],
}

impl QuantBlock for BlockQ8_0 {
    const BYTES: usize = 2 + BLOCK_SIZE;

    fn quantize_block(values: &[f32; BLOCK_SIZE]) -> Self {
        // ggml's `quantize_row_q8_0_ref`: the f32 scale and its inverse, then each value
        // times the inverse, rounded half away from zero.
        let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        Self {
            d: f16_bits(d),
            qs: values.map(|v| round_half_away(v * id) as i8),
        }
    }

    fn dequantize_block(&self, out: &mut [f32; BLOCK_SIZE]) {
        let d = f16_value(self.d);
        for (o, &q) in out.iter_mut().zip(&self.qs) {
            *o = f32::from(q) * d;
        }
    }

    fn write_bytes(&self, out: &mut [u8]) {
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, &q) in out[2..Self::BYTES].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
    }

    fn read_bytes(bytes: &[u8]) -> Self {
        Self {
            d: u16::from_le_bytes([bytes[0], bytes[1]]),
            qs: std::array::from_fn(|i| bytes[2 + i] as i8),
        }
    }

    fn scale_and_ints(&self) -> (u16, [i8; BLOCK_SIZE]) {
        (self.d, self.qs)
    }
}
