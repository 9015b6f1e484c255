//! GGUF's Q4_K: super-blocks of 256 values in eight sub-blocks of 32, each sub-block
//! with its own 6-bit scale and 6-bit minimum, those scaled by two f16 numbers per
//! super-block (144 bytes per 256 values: 4.5 bits per weight, as Q4_0, but with a
//! minimum per 32 values that lets the 16 levels cover the values' range rather than a
//! range symmetric about zero).

use super::{f16_bits, f16_value};

/// Values per Q4_K super-block.
pub const SUPER_BLOCK: usize = 256;

/// Values per sub-block (one scale and one minimum each).
pub const SUB_BLOCK: usize = 32;

/// Sub-blocks per super-block.
pub const SUB_BLOCKS: usize = SUPER_BLOCK / SUB_BLOCK;

/// A Q4_K super-block: value `i` of sub-block `j` is
/// `d · sc[j] · q[i] - dmin · m[j]` with 4-bit codes `q` and 6-bit `sc`, `m`.
///
/// As GGUF stores it: the eight scales and eight minimums packed into 12 bytes (the
/// first four of each in the low six bits of bytes `0..4` and `4..8`, the last four in
/// the nibbles of bytes `8..12` with their top two bits in the top bits of bytes
/// `0..8`), and the codes two per byte: byte `l` of the 32-byte chunk `c` holds value `l`
/// of sub-block `2c` in its low nibble and of sub-block `2c + 1` in its high one.
#[allow(non_camel_case_types)] // GGUF's name
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockQ4_K {
    /// The scales' scale, as f16 bits.
    pub d: u16,
    /// The minimums' scale, as f16 bits.
    pub dmin: u16,
    /// The packed 6-bit scales and minimums.
    pub scales: [u8; 12],
    /// The packed 4-bit codes.
    pub qs: [u8; SUPER_BLOCK / 2],
}

impl BlockQ4_K {
    /// Bytes of one super-block in a GGUF file.
    pub const BYTES: usize = 4 + 12 + SUPER_BLOCK / 2;

    /// One super-block, as ggml's reference quantizer (`quantize_row_q4_K_ref`, what
    /// `llama-quantize` runs without an importance matrix) makes it: each sub-block's
    /// scale and minimum fitted by a weighted least-squares search, then both quantized
    /// to 6 bits against the largest of each, and the codes recomputed with the
    /// quantized ones.
    pub fn quantize(x: &[f32; SUPER_BLOCK]) -> Self {
        let mut codes = [0u8; SUPER_BLOCK];
        let mut scales = [0.0f32; SUB_BLOCKS];
        let mut mins = [0.0f32; SUB_BLOCKS];
        let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
        for j in 0..SUB_BLOCKS {
            let x = &x[j * SUB_BLOCK..][..SUB_BLOCK];
            let sum_x2 = x.iter().fold(0.0f32, |s, &v| s + v * v);
            let av_x = (sum_x2 / SUB_BLOCK as f32).sqrt();
            let weights: [f32; SUB_BLOCK] = std::array::from_fn(|l| av_x + x[l].abs());
            let (scale, min, fitted) = fit_scale_and_min(x, &weights);
            codes[j * SUB_BLOCK..][..SUB_BLOCK].copy_from_slice(&fitted);
            scales[j] = scale;
            mins[j] = min;
            max_scale = max_scale.max_ggml(scale);
            max_min = max_min.max_ggml(min);
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut block = Self {
            d: f16_bits(max_scale / 63.0),
            dmin: f16_bits(max_min / 63.0),
            scales: [0; 12],
            qs: [0; SUPER_BLOCK / 2],
        };
        for j in 0..SUB_BLOCKS {
            // C's conversion of the int to uint8_t, then the clamp.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            let s = &mut block.scales;
            if j < 4 {
                s[j] = ls;
                s[j + 4] = lm;
            } else {
                s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
                s[j - 4] |= (ls >> 4) << 6;
                s[j] |= (lm >> 4) << 6;
            }
        }
        let (d, dmin) = (f16_value(block.d), f16_value(block.dmin));
        let (sc, m) = block.scales_and_mins();
        for j in 0..SUB_BLOCKS {
            let d = d * f32::from(sc[j]);
            if d == 0.0 {
                // The fitted codes stand (their values are all `-dmin · m` now).
                continue;
            }
            let dm = dmin * f32::from(m[j]);
            for i in 0..SUB_BLOCK {
                codes[j * SUB_BLOCK + i] =
                    nearest_int((x[j * SUB_BLOCK + i] + dm) / d).clamp(0, 15) as u8;
            }
        }
        for (c, chunk) in block.qs.chunks_exact_mut(SUB_BLOCK).enumerate() {
            for (l, byte) in chunk.iter_mut().enumerate() {
                *byte = codes[2 * c * SUB_BLOCK + l] | (codes[(2 * c + 1) * SUB_BLOCK + l] << 4);
            }
        }
        block
    }

    /// The eight 6-bit scales and the eight 6-bit minimums (ggml's `get_scale_min_k4`).
    pub fn scales_and_mins(&self) -> ([u8; SUB_BLOCKS], [u8; SUB_BLOCKS]) {
        unpack_scales_and_mins(&self.scales)
    }

    /// Value `i`'s 4-bit code, 0..=15.
    #[inline]
    pub fn code(&self, i: usize) -> u8 {
        let (j, l) = (i / SUB_BLOCK, i % SUB_BLOCK);
        let byte = self.qs[j / 2 * SUB_BLOCK + l];
        if j % 2 == 0 { byte & 0x0F } else { byte >> 4 }
    }

    /// The super-block's values, `d · sc · q - dmin · m`.
    pub fn dequantize(&self, out: &mut [f32; SUPER_BLOCK]) {
        let (d, dmin) = (f16_value(self.d), f16_value(self.dmin));
        let (sc, m) = self.scales_and_mins();
        for (i, o) in out.iter_mut().enumerate() {
            let j = i / SUB_BLOCK;
            *o = d * f32::from(sc[j]) * f32::from(self.code(i)) - dmin * f32::from(m[j]);
        }
    }

    /// The super-block as GGUF stores it (little-endian).
    pub fn write_bytes(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        out[4..16].copy_from_slice(&self.scales);
        out[16..Self::BYTES].copy_from_slice(&self.qs);
    }

    /// A super-block from GGUF's bytes.
    pub fn read_bytes(bytes: &[u8]) -> Self {
        Self {
            d: u16::from_le_bytes([bytes[0], bytes[1]]),
            dmin: u16::from_le_bytes([bytes[2], bytes[3]]),
            scales: std::array::from_fn(|i| bytes[4 + i]),
            qs: std::array::from_fn(|i| bytes[16 + i]),
        }
    }
}

/// A super-block's packed scales and minimums unpacked (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(crate) fn unpack_scales_and_mins(q: &[u8; 12]) -> ([u8; SUB_BLOCKS], [u8; SUB_BLOCKS]) {
    let (sc, m) = unpack_scale_and_min_words(q);
    (sc.to_le_bytes(), m.to_le_bytes())
}

/// [`unpack_scales_and_mins`] a 32-bit word at a time, as ggml's vector kernels do:
/// bytes `0..4` hold the first four scales (and in their top bits the last four's),
/// `4..8` the first four minimums (and the last four's top bits), `8..12` the last four
/// of each in their nibbles. The eight scales and the eight minimums, a byte each.
#[inline(always)]
pub(crate) fn unpack_scale_and_min_words(q: &[u8; 12]) -> (u64, u64) {
    const LOW_6: u32 = 0x3F3F_3F3F;
    const LOW_4: u32 = 0x0F0F_0F0F;
    const LOW_2: u32 = 0x0303_0303;
    let word = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
    let (a, b, c) = (word(0), word(1), word(2));
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    (
        join(a & LOW_6, (c & LOW_4) | (((a >> 6) & LOW_2) << 4)),
        join(b & LOW_6, ((c >> 4) & LOW_4) | (((b >> 6) & LOW_2) << 4)),
    )
}

/// ggml's `max` of the quantizer: `if (v > m) m = v`.
trait MaxGgml {
    fn max_ggml(self, v: f32) -> f32;
}

impl MaxGgml for f32 {
    fn max_ggml(self, v: f32) -> f32 {
        if v > self { v } else { self }
    }
}

/// ggml's `nearest_int`: to nearest, ties to even, by adding 1.5 · 2^23 (valid for
/// |v| < 2^22, as ggml's callers keep it).
#[inline]
fn nearest_int(v: f32) -> i32 {
    let biased = v + 12_582_912.0;
    (biased.to_bits() as i32 & 0x007F_FFFF) - 0x0040_0000
}

/// ggml's `make_qkx2_quants(32, 15, x, weights, .., -1, 0.1, 20, false)`: the scale
/// and (negated, so non-negative) minimum of 4-bit codes for `x` that minimize the
/// weighted squared error, searched over 21 candidate ranges, and the codes.
fn fit_scale_and_min(x: &[f32], weights: &[f32; SUB_BLOCK]) -> (f32, f32, [u8; SUB_BLOCK]) {
    const NMAX: f32 = 15.0;
    let (rmin, rdelta, nstep) = (-1.0f32, 0.1f32, 20);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..SUB_BLOCK {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let mut best = [0u8; SUB_BLOCK];
    if max == min {
        return (0.0, -min, best);
    }
    // `min` changes as better fits are found, and later candidates start from it (as in
    // ggml).
    let code = |iscale: f32, v: f32, min: f32| nearest_int(iscale * (v - min)).clamp(0, 15);
    let mut iscale = NMAX / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..SUB_BLOCK {
        best[i] = code(iscale, x[i], min) as u8;
        let l = f32::from(best[i]);
        let diff = scale * l + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut codes = [0.0f32; SUB_BLOCK];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + NMAX) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..SUB_BLOCK {
            let l = code(iscale, x[i], min) as f32;
            codes[i] = l;
            let w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..SUB_BLOCK {
                let diff = this_scale * codes[i] + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                best = codes.map(|l| l as u8);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min, best)
}
