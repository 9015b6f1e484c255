//! Dot products of f32 activations with rows of packed weights (bf16, f16, Q8_0 or
//! Q4_0), a block of tokens against a block of rows at a time, each output the same
//! arithmetic in every block; and the layouts of the weights that let decoding read them
//! as one stream.
//!
//! Decoding one token reads each weight once: memory-bound, so fewer bytes per weight is
//! what goes faster. A server decoding several sequences at once reads each weight once
//! for all of them, and then the arithmetic decides the speed: a weight loaded (and
//! widened to f32) into a register should serve several tokens, and a token's
//! activations several rows, so that a fused multiply-add costs well under one load.
//! That is what a blocked matrix product does; what it usually does not do is keep each
//! output's rounding independent of the block: `gemm` picks its method by shape. Here
//! every output `x[t] · w[r]` is, in whatever block it is computed, the same sequence of
//! operations: eight accumulator lanes, lane `i` summing `w[8j + i] * x[8j + i]` over
//! `j` in order (fused on CPUs with FMA), the lanes added pairwise (`i + 4`, then
//! `i + 2`, then `i + 1`), then the last `k mod 8` products added one by one. So a
//! token's result has the same bits decoded alone or beside fifteen others, which is
//! what makes a server's batches invariant ([`crate::rows`]), and the same on AVX2 and
//! AVX-512 machines.
//!
//! Every format widens a weight to f32 exactly: bf16 and f16 are subsets of f32, and a
//! block-quantized weight `d · q` (an f16 scale times an integer of 8 or 4 bits) needs
//! at most 19 significant bits. So the products are those of the dequantized matrix in
//! f32, whatever the format, which is how the tests check them.
//!
//! **Panels.** A block reads [`PANEL_ROWS`] rows at once. Stored row after row, those
//! would be four memory streams 2-6 KB long each, which the hardware prefetcher follows
//! late (measured: a decoding step 12% slower than one row at a time). So a matrix is
//! stored in panels of four rows, each one contiguous stream in the order the kernel
//! reads it (the last panel padded with zero rows):
//! - bf16, f16: eight values of row 0, eight of row 1, of row 2, of row 3, then each
//!   row's next eight, ... (each row padded with zeros to a multiple of eight);
//! - Q8_0, Q4_0 (rows of whole 32-value blocks, GGUF's): per block of the four rows,
//!   their four f16 scales, then their values eight at a time in the same order as
//!   above, one signed byte each (Q8_0), or for Q4_0 sixteen at a time, four bits each
//!   offset by 8 as in GGUF, the first eight in the low nibbles of eight bytes and the
//!   next eight in the high ones (so a vector is a load, a mask or a shift, a convert).
//!
//! Blocks are 2 tokens × 4 rows (8 accumulators, 4 widened weight vectors, 1 activation
//! vector: no spills in AVX2's 16 registers, 0.75 loads per multiply-add) and 1 token ×
//! 4 rows.

use crate::packed_weights::WeightFormat;
use crate::quant::BLOCK_SIZE;

/// Accumulator lanes of every dot product (one AVX2 vector of f32), and the values of a
/// row stored together in a panel.
pub(crate) const LANES: usize = 8;

/// Rows per panel (and per block).
pub(crate) const PANEL_ROWS: usize = 4;

/// Vectors of [`LANES`] values per quantized block.
const VECTORS_PER_BLOCK: usize = BLOCK_SIZE / LANES;

/// Bytes of the four f16 scales that begin each block of a quantized panel.
const SCALE_BYTES: usize = 2 * PANEL_ROWS;

/// Bytes of one block of a quantized panel: the scales, then the values.
const fn block_group_bytes(format: WeightFormat) -> usize {
    SCALE_BYTES
        + match format {
            WeightFormat::Q4_0 => PANEL_ROWS * BLOCK_SIZE / 2,
            _ => PANEL_ROWS * BLOCK_SIZE,
        }
}

/// Bytes of one panel of rows `k` long (`k` whole blocks for the quantized formats).
pub(crate) fn panel_bytes(format: WeightFormat, k: usize) -> usize {
    match format {
        WeightFormat::Bf16 | WeightFormat::F16 => 2 * PANEL_ROWS * k.div_ceil(LANES) * LANES,
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => k / BLOCK_SIZE * block_group_bytes(format),
    }
}

/// Where, in a half-precision panel, value `c` of the panel's row `r` is (in bytes).
#[inline]
fn half_offset(r: usize, c: usize) -> usize {
    2 * (((c / LANES) * PANEL_ROWS + r) * LANES + c % LANES)
}

/// Where, in a quantized panel, the bytes of vector `v` (values `8v..8v + 8`) of the
/// panel's row `r` are, and for Q4_0 whether they are the high nibbles.
#[inline]
fn quant_offset(format: WeightFormat, r: usize, v: usize) -> (usize, bool) {
    let group = (v / VECTORS_PER_BLOCK) * block_group_bytes(format) + SCALE_BYTES;
    let j = v % VECTORS_PER_BLOCK;
    match format {
        WeightFormat::Q4_0 => (group + ((j / 2) * PANEL_ROWS + r) * LANES, j % 2 == 1),
        _ => (group + (j * PANEL_ROWS + r) * LANES, false),
    }
}

/// Where the f16 scale of row `r`'s block `b` is in a quantized panel.
#[inline]
fn scale_offset(format: WeightFormat, r: usize, b: usize) -> usize {
    b * block_group_bytes(format) + 2 * r
}

/// Writes value `c` of row `r` (of a panel of rows `k` long) in bf16 or f16.
pub(crate) fn put_half(panel: &mut [u8], r: usize, c: usize, bits: u16) {
    let at = half_offset(r, c);
    panel[at..at + 2].copy_from_slice(&bits.to_le_bytes());
}

/// Writes block `b` of row `r`: its f16 scale and its 32 integer values (`-128..=127`
/// for Q8_0, `-8..=7` for Q4_0).
pub(crate) fn put_block(
    format: WeightFormat,
    panel: &mut [u8],
    r: usize,
    b: usize,
    scale: u16,
    values: &[i8; BLOCK_SIZE],
) {
    let at = scale_offset(format, r, b);
    panel[at..at + 2].copy_from_slice(&scale.to_le_bytes());
    for (j, vector) in values.chunks_exact(LANES).enumerate() {
        let (at, high) = quant_offset(format, r, b * VECTORS_PER_BLOCK + j);
        for (byte, &q) in panel[at..at + LANES].iter_mut().zip(vector) {
            match format {
                WeightFormat::Q4_0 => {
                    let code = (q + 8) as u8;
                    *byte = if high {
                        (*byte & 0x0F) | (code << 4)
                    } else {
                        (*byte & 0xF0) | code
                    };
                }
                _ => *byte = q as u8,
            }
        }
    }
}

/// Block `b` of row `r` as written by [`put_block`]: the scale and the values.
pub(crate) fn block(
    format: WeightFormat,
    panel: &[u8],
    r: usize,
    b: usize,
) -> (u16, [i8; BLOCK_SIZE]) {
    let at = scale_offset(format, r, b);
    let scale = u16::from_le_bytes([panel[at], panel[at + 1]]);
    let mut values = [0i8; BLOCK_SIZE];
    for (j, vector) in values.chunks_exact_mut(LANES).enumerate() {
        let (at, high) = quant_offset(format, r, b * VECTORS_PER_BLOCK + j);
        for (q, &byte) in vector.iter_mut().zip(&panel[at..at + LANES]) {
            *q = match format {
                WeightFormat::Q4_0 if high => (byte >> 4) as i8 - 8,
                WeightFormat::Q4_0 => (byte & 0x0F) as i8 - 8,
                _ => byte as i8,
            };
        }
    }
    (scale, values)
}

/// Vector `v` (values `8v..8v + 8`, zeros past the row's end) of the panel's row `r`,
/// widened to f32 exactly.
pub(crate) fn vector(format: WeightFormat, panel: &[u8], r: usize, v: usize) -> [f32; LANES] {
    match format {
        WeightFormat::Bf16 | WeightFormat::F16 => {
            let at = half_offset(r, v * LANES);
            std::array::from_fn(|i| {
                let bits = u16::from_le_bytes([panel[at + 2 * i], panel[at + 2 * i + 1]]);
                widen_half(format, bits)
            })
        }
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
            let (scale, values) = block(format, panel, r, v / VECTORS_PER_BLOCK);
            let d = half::f16::from_bits(scale).to_f32();
            let first = (v % VECTORS_PER_BLOCK) * LANES;
            std::array::from_fn(|i| f32::from(values[first + i]) * d)
        }
    }
}

/// A bf16 or f16 value as f32.
fn widen_half(format: WeightFormat, bits: u16) -> f32 {
    match format {
        WeightFormat::Bf16 => f32::from_bits((bits as u32) << 16),
        _ => half::f16::from_bits(bits).to_f32(),
    }
}

/// Rows of packed weights in panels.
pub(crate) struct PanelRows<'a> {
    /// The format.
    pub format: WeightFormat,
    /// `rows.div_ceil(PANEL_ROWS)` panels of [`panel_bytes`], laid out as the module
    /// says.
    pub panels: &'a [u8],
    /// Rows (the last panel's padding not counted).
    pub rows: usize,
    /// Values per row.
    pub k: usize,
}

/// `out[r * tokens + t] = x[t] · w[r]` for `tokens` rows of `x` (`[tokens, k]`) and
/// the rows of `w`, as the module describes.
pub(crate) fn panel_dots(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        format,
        panels,
        rows,
        k,
    } = *w;
    assert_eq!(x.len(), tokens * k, "activations are [{tokens}, {k}]");
    assert!(
        format.holds_rows_of(k),
        "{format:?} rows of {k} values are not whole blocks"
    );
    assert_eq!(
        panels.len(),
        rows.div_ceil(PANEL_ROWS) * panel_bytes(format, k),
        "weights are {rows} rows of {k} in panels"
    );
    assert_eq!(out.len(), rows * tokens, "the output is [{rows}, {tokens}]");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C; the slices' lengths were checked.
        unsafe { x86::panel_dots(x, tokens, w, out) };
    } else {
        portable(x, tokens, w, out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable(x, tokens, w, out);
    add_tails(x, tokens, w, out);
}

/// Adds to every output the products past the last whole vector, one by one (bf16 and
/// f16 only: quantized rows are whole blocks).
fn add_tails(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        format,
        panels,
        rows,
        k,
    } = *w;
    let full = k / LANES * LANES;
    if full == k {
        return;
    }
    let panel = panel_bytes(format, k);
    for r in 0..rows {
        let tail = vector(
            format,
            &panels[r / PANEL_ROWS * panel..][..panel],
            r % PANEL_ROWS,
            full / LANES,
        );
        for t in 0..tokens {
            let mut sum = 0.0f32;
            for (&wv, &xv) in tail.iter().zip(&x[t * k + full..(t + 1) * k]) {
                sum += wv * xv;
            }
            out[r * tokens + t] += sum;
        }
    }
}

/// Without vector instructions: the same order over the whole vectors of `k`, unfused
/// multiply-adds (a fused one is a libm call without the instruction).
fn portable(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        format,
        panels,
        rows,
        k,
    } = *w;
    let panel = panel_bytes(format, k);
    for r in 0..rows {
        let panel = &panels[r / PANEL_ROWS * panel..][..panel];
        for t in 0..tokens {
            let x_row = &x[t * k..(t + 1) * k];
            let mut acc = [0.0f32; LANES];
            for v in 0..k / LANES {
                let w = vector(format, panel, r % PANEL_ROWS, v);
                for i in 0..LANES {
                    acc[i] += w[i] * x_row[v * LANES + i];
                }
            }
            out[r * tokens + t] = crate::simd::pairwise_sum(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        BLOCK_SIZE, LANES, PANEL_ROWS, PanelRows, SCALE_BYTES, VECTORS_PER_BLOCK, WeightFormat,
        block_group_bytes, panel_bytes,
    };

    // The formats as const parameters of the kernel.
    const BF16: u8 = 0;
    const F16: u8 = 1;
    const Q8_0: u8 = 2;
    const Q4_0: u8 = 3;

    pub(super) fn available() -> bool {
        use std::sync::OnceLock;
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        })
    }

    /// The whole vectors of every output (the tail is added by the caller).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `x`, `panels` and `out` have the lengths
    /// [`super::panel_dots`] checks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panel_dots(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
        let PanelRows {
            format,
            panels,
            rows,
            k,
        } = *w;
        let mut block = [[0.0f32; PANEL_ROWS]; 2];
        for (p, panel) in panels
            .chunks_exact(panel_bytes(format, k).max(1))
            .enumerate()
        {
            let first = p * PANEL_ROWS;
            let real = (rows - first).min(PANEL_ROWS);
            let mut t0 = 0;
            while t0 < tokens {
                let t = (tokens - t0).min(2);
                let x_block = &x[t0 * k..(t0 + t) * k];
                // SAFETY: `x_block` holds `t` tokens of `k`, `panel` one panel of `k`.
                unsafe {
                    let block = &mut block;
                    match (t, format) {
                        (2, WeightFormat::Bf16) => dots::<2, BF16>(x_block, panel, k, block),
                        (2, WeightFormat::F16) => dots::<2, F16>(x_block, panel, k, block),
                        (2, WeightFormat::Q8_0) => dots::<2, Q8_0>(x_block, panel, k, block),
                        (2, WeightFormat::Q4_0) => dots::<2, Q4_0>(x_block, panel, k, block),
                        (_, WeightFormat::Bf16) => dots::<1, BF16>(x_block, panel, k, block),
                        (_, WeightFormat::F16) => dots::<1, F16>(x_block, panel, k, block),
                        (_, WeightFormat::Q8_0) => dots::<1, Q8_0>(x_block, panel, k, block),
                        (_, WeightFormat::Q4_0) => dots::<1, Q4_0>(x_block, panel, k, block),
                    }
                }
                for (i, sums) in block.iter().take(t).enumerate() {
                    for (r, &sum) in sums.iter().take(real).enumerate() {
                        out[(first + r) * tokens + t0 + i] = sum;
                    }
                }
                t0 += t;
            }
        }
    }

    /// `T` tokens × one panel's rows over the whole vectors of `k`, each output's lanes
    /// added pairwise into `out[t][r]`.
    ///
    /// # Safety
    /// As [`panel_dots`]; `x` holds `T` tokens of `k`, `panel` one panel in format `F`.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dots<const T: usize, const F: u8>(
        x: &[f32],
        panel: &[u8],
        k: usize,
        out: &mut [[f32; PANEL_ROWS]; 2],
    ) {
        let mut acc = [[_mm256_setzero_ps(); PANEL_ROWS]; T];
        let (x, w) = (x.as_ptr(), panel.as_ptr());
        // One step: the weight vectors `wv` of the four rows times vector `v` of each
        // token (a macro: closures do not take the function's target features).
        macro_rules! step {
            ($v:expr, $wv:expr) => {
                for (t, acc_t) in acc.iter_mut().enumerate() {
                    // SAFETY: token `t` has `k` activations from `x + t * k`.
                    let xv = unsafe { _mm256_loadu_ps(x.add(t * k + $v * LANES)) };
                    for (a, &vector) in acc_t.iter_mut().zip(&$wv) {
                        *a = _mm256_fmadd_ps(vector, xv, *a);
                    }
                }
            };
        }
        if F == BF16 || F == F16 {
            for v in 0..k / LANES {
                let mut wv = [_mm256_setzero_ps(); PANEL_ROWS];
                for (r, vector) in wv.iter_mut().enumerate() {
                    // SAFETY: the panel holds `PANEL_ROWS` rows of `k.div_ceil(LANES)`
                    // vectors of 16-bit values, interleaved.
                    let bits = unsafe {
                        _mm_loadu_si128(w.add(2 * (v * PANEL_ROWS + r) * LANES) as *const __m128i)
                    };
                    *vector = if F == BF16 {
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
                    } else {
                        _mm256_cvtph_ps(bits)
                    };
                }
                step!(v, wv);
            }
        } else {
            let format = if F == Q8_0 {
                WeightFormat::Q8_0
            } else {
                WeightFormat::Q4_0
            };
            let group_bytes = block_group_bytes(format);
            for b in 0..k / BLOCK_SIZE {
                // SAFETY: the panel holds `k / BLOCK_SIZE` groups of `group_bytes`.
                let group = unsafe { w.add(b * group_bytes) };
                let mut scales = [0.0f32; PANEL_ROWS];
                // SAFETY: each group begins with four f16 scales.
                unsafe {
                    let bits = _mm_loadl_epi64(group as *const __m128i);
                    _mm_storeu_ps(scales.as_mut_ptr(), _mm_cvtph_ps(bits));
                }
                let mut d = [_mm256_setzero_ps(); PANEL_ROWS];
                for (d, &s) in d.iter_mut().zip(&scales) {
                    *d = _mm256_set1_ps(s);
                }
                // SAFETY: the values follow the scales.
                let values = unsafe { group.add(SCALE_BYTES) };
                for j in 0..VECTORS_PER_BLOCK {
                    let mut wv = [_mm256_setzero_ps(); PANEL_ROWS];
                    for (r, vector) in wv.iter_mut().enumerate() {
                        let ints = if F == Q8_0 {
                            // SAFETY: eight signed bytes per row and vector.
                            unsafe {
                                _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                                    values.add((j * PANEL_ROWS + r) * LANES) as *const __m128i,
                                ))
                            }
                        } else {
                            // SAFETY: eight bytes per row and pair of vectors.
                            let bytes = unsafe {
                                _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                                    values.add(((j / 2) * PANEL_ROWS + r) * LANES)
                                        as *const __m128i,
                                ))
                            };
                            let codes = if j % 2 == 0 {
                                _mm256_and_si256(bytes, _mm256_set1_epi32(0x0F))
                            } else {
                                _mm256_srli_epi32::<4>(bytes)
                            };
                            _mm256_sub_epi32(codes, _mm256_set1_epi32(8))
                        };
                        // Exact: at most 8 + 11 significant bits.
                        *vector = _mm256_mul_ps(_mm256_cvtepi32_ps(ints), d[r]);
                    }
                    step!(b * VECTORS_PER_BLOCK + j, wv);
                }
            }
        }
        for (acc_t, out_t) in acc.iter().zip(out.iter_mut()) {
            for (&a, o) in acc_t.iter().zip(out_t.iter_mut()) {
                // Lanes i + 4, then i + 2, then i + 1: `crate::simd::pairwise_sum`.
                let four = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
                let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
                let one = _mm_add_ss(two, _mm_shuffle_ps::<1>(two, two));
                *o = _mm_cvtss_f32(one);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed_weights::PackedMatrix;

    const FORMATS: [WeightFormat; 4] = [
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
    ];

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn dots(x: &[f32], tokens: usize, w: &PackedMatrix) -> Vec<f32> {
        let rows = w.dims()[0];
        let mut out = vec![f32::NAN; rows * tokens];
        panel_dots(x, tokens, &w.panel_rows(0..rows), &mut out);
        out
    }

    /// Inner sizes with and without a tail for the 16-bit formats, whole blocks for the
    /// quantized ones.
    fn inner(format: WeightFormat, k: usize) -> usize {
        if format.holds_rows_of(k) {
            k
        } else {
            k.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
        }
    }

    /// Every output equals the exact product of the packed (rounded or quantized)
    /// weights, within f32's rounding of a sum of `k` terms, for every block shape and
    /// its remainders, a last panel full and not, every format; on the vector path and
    /// the portable one.
    #[test]
    fn dots_equal_the_exact_products_of_the_packed_weights() {
        for format in FORMATS {
            for (tokens, rows, k) in [
                (1, 1, 8),
                (5, 13, 64),
                (9, 25, 37),
                (16, 12, 1024),
                (3, 7, 5),
            ] {
                let k = inner(format, k);
                let x = values(tokens * k, 1);
                let w_values = values(rows * k, 2);
                let w = PackedMatrix::from_f32(format, rows, k, &w_values);
                let packed = w.to_f32();
                let mut slow = vec![0.0; rows * tokens];
                let panels = w.panel_rows(0..rows);
                portable(&x, tokens, &panels, &mut slow);
                add_tails(&x, tokens, &panels, &mut slow);
                for (name, got) in [("vector", dots(&x, tokens, &w)), ("portable", slow)] {
                    for r in 0..rows {
                        for t in 0..tokens {
                            let exact: f64 = (0..k)
                                .map(|c| packed[r * k + c] as f64 * x[t * k + c] as f64)
                                .sum();
                            let got = got[r * tokens + t] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-5 * (k as f64).sqrt(),
                                "{name} {format:?} [{tokens}x{k}]·[{rows}x{k}]ᵀ at ({t}, {r}): {got} vs {exact}"
                            );
                        }
                    }
                    // And the packed weights are the values, rounded or quantized.
                    let worst = packed
                        .iter()
                        .zip(&w_values)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    // Half a unit in the last place; half a step of the largest scale
                    // (plus what f16's rounding of the scale moves the largest value);
                    // for Q4_0 a whole step: its codes reach 8 steps below zero, 7 above.
                    let bound = match format {
                        WeightFormat::Bf16 => 2f32.powi(-9),
                        WeightFormat::F16 => 2f32.powi(-12),
                        WeightFormat::Q8_0 => (0.5 + 127.0 / 2048.0) / 127.0,
                        WeightFormat::Q4_0 => (1.0 + 8.0 / 2048.0) / 8.0,
                    };
                    assert!(worst <= bound, "{format:?}: off by {worst}");
                }
            }
        }
    }

    /// A token's outputs have the same bits whatever tokens and rows it is computed
    /// with: alone against one row, or in a block of 11 tokens against 29 rows.
    #[test]
    fn each_output_is_the_same_bits_in_any_block() {
        for format in FORMATS {
            let (tokens, rows, k) = (11, 29, inner(format, 203));
            let x = values(tokens * k, 3);
            let w_values = values(rows * k, 4);
            let all = dots(
                &x,
                tokens,
                &PackedMatrix::from_f32(format, rows, k, &w_values),
            );
            for t in 0..tokens {
                let x_t = &x[t * k..(t + 1) * k];
                for r in 0..rows {
                    let row = PackedMatrix::from_f32(format, 1, k, &w_values[r * k..(r + 1) * k]);
                    let alone = dots(x_t, 1, &row);
                    assert_eq!(
                        all[r * tokens + t].to_bits(),
                        alone[0].to_bits(),
                        "{format:?} token {t} row {r}"
                    );
                }
            }
        }
    }
}
