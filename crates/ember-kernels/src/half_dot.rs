//! Dot products of f32 activations with rows of 16-bit weights, a block of tokens
//! against a block of rows at a time, each output the same arithmetic in every block;
//! and the layout of the weights that lets decoding read them as one stream.
//!
//! Decoding one token reads each weight once: memory-bound. A server decoding several
//! sequences at once reads each weight once for all of them, and then the arithmetic
//! decides the speed: a weight loaded (and converted from bf16 or f16) into a register
//! should serve several tokens, and a token's activations several rows, so that a fused
//! multiply-add costs well under one load. That is what a blocked matrix product does;
//! what it usually does not do is keep each output's rounding independent of the block:
//! `gemm` picks its method by shape. Here every output `x[t] · w[r]` is, in whatever
//! block it is computed, the same sequence of operations: eight accumulator lanes, lane
//! `i` summing `w[8j + i] * x[8j + i]` over `j` in order (fused on CPUs with FMA), the
//! lanes added pairwise (`i + 4`, then `i + 2`, then `i + 1`), then the last `k mod 8`
//! products added one by one. So a token's result has the same bits decoded alone or
//! beside fifteen others, which is what makes a server's batches invariant
//! ([`crate::rows`]), and the same on AVX2 and AVX-512 machines.
//!
//! **Panels.** A block reads [`PANEL_ROWS`] rows at once. Stored row after row, those
//! would be four memory streams 2-6 KB long each, which the hardware prefetcher follows
//! late (measured: a decoding step 12% slower than one row at a time). So a matrix is
//! stored in panels of four rows, interleaved eight values at a time (row 0's first
//! eight, row 1's, row 2's, row 3's, then each row's next eight...; the last panel
//! padded with zero rows, each row with zeros to a multiple of eight): a panel is one
//! contiguous stream, read in the order the kernel uses it. Blocks are 2 tokens × 4 rows
//! (8 accumulators, 4 converted weight vectors, 1 activation vector: no spills in
//! AVX2's 16 registers, 0.75 loads per multiply-add) and 1 token × 4 rows.

use crate::half_weights::HalfKind;

/// Accumulator lanes of every dot product (one AVX2 vector of f32), and the values of a
/// row stored together in a panel.
pub(crate) const LANES: usize = 8;

/// Rows per panel (and per block).
pub(crate) const PANEL_ROWS: usize = 4;

/// 16-bit values of one panel of rows `k` long.
pub(crate) fn panel_len(k: usize) -> usize {
    PANEL_ROWS * k.div_ceil(LANES) * LANES
}

/// Where value `c` of row `r` of a matrix of rows `k` long is in its panels.
#[inline]
pub(crate) fn panel_index(k: usize, r: usize, c: usize) -> usize {
    (r / PANEL_ROWS) * panel_len(k)
        + ((c / LANES) * PANEL_ROWS + r % PANEL_ROWS) * LANES
        + c % LANES
}

/// Rows of 16-bit weights in panels.
pub(crate) struct PanelRows<'a> {
    /// The format.
    pub kind: HalfKind,
    /// `rows.div_ceil(PANEL_ROWS)` panels, laid out as the module says.
    pub panels: &'a [u16],
    /// Rows (the last panel's padding not counted).
    pub rows: usize,
    /// Values per row.
    pub k: usize,
}

/// `out[r * tokens + t] = x[t] · w[r]` for `tokens` rows of `x` (`[tokens, k]`) and
/// the rows of `w`, as the module describes.
pub(crate) fn half_dots(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        panels, rows, k, ..
    } = *w;
    assert_eq!(x.len(), tokens * k, "activations are [{tokens}, {k}]");
    assert_eq!(
        panels.len(),
        rows.div_ceil(PANEL_ROWS) * panel_len(k),
        "weights are {rows} rows of {k} in panels"
    );
    assert_eq!(out.len(), rows * tokens, "the output is [{rows}, {tokens}]");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C; the slices' lengths were checked.
        unsafe { x86::half_dots(x, tokens, w, out) };
    } else {
        portable(x, tokens, w, out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable(x, tokens, w, out);
    add_tails(x, tokens, w, out);
}

/// Adds to every output the products past the last whole vector, one by one.
fn add_tails(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        kind,
        panels,
        rows,
        k,
    } = *w;
    let full = k / LANES * LANES;
    if full == k {
        return;
    }
    for r in 0..rows {
        for t in 0..tokens {
            let mut sum = 0.0f32;
            for (c, &xv) in (full..k).zip(&x[t * k + full..(t + 1) * k]) {
                sum += widen(kind, panels[panel_index(k, r, c)]) * xv;
            }
            out[r * tokens + t] += sum;
        }
    }
}

/// One weight as f32.
fn widen(kind: HalfKind, bits: u16) -> f32 {
    match kind {
        HalfKind::Bf16 => f32::from_bits((bits as u32) << 16),
        HalfKind::F16 => half::f16::from_bits(bits).to_f32(),
    }
}

/// Without vector instructions: the same order over the whole vectors of `k`, unfused
/// multiply-adds (a fused one is a libm call without the instruction).
fn portable(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        kind,
        panels,
        rows,
        k,
    } = *w;
    let full = k / LANES * LANES;
    for r in 0..rows {
        for t in 0..tokens {
            let x_row = &x[t * k..(t + 1) * k];
            let mut acc = [0.0f32; LANES];
            for j in (0..full).step_by(LANES) {
                let w = &panels[panel_index(k, r, j)..][..LANES];
                for i in 0..LANES {
                    acc[i] += widen(kind, w[i]) * x_row[j + i];
                }
            }
            out[r * tokens + t] = crate::simd::pairwise_sum(acc);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{HalfKind, LANES, PANEL_ROWS, PanelRows, panel_len};

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
    /// [`super::half_dots`] checks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn half_dots(x: &[f32], tokens: usize, w: &PanelRows, out: &mut [f32]) {
        let PanelRows {
            kind,
            panels,
            rows,
            k,
        } = *w;
        let bf16 = kind == HalfKind::Bf16;
        let mut block = [[0.0f32; PANEL_ROWS]; 2];
        for (p, panel) in panels.chunks_exact(panel_len(k).max(1)).enumerate() {
            let first = p * PANEL_ROWS;
            let real = (rows - first).min(PANEL_ROWS);
            let mut t0 = 0;
            while t0 < tokens {
                let t = (tokens - t0).min(2);
                let x_block = &x[t0 * k..(t0 + t) * k];
                // SAFETY: `x_block` holds `t` tokens of `k`, `panel` one panel of `k`.
                unsafe {
                    match (t, bf16) {
                        (2, true) => dots::<2, true>(x_block, panel, k, &mut block),
                        (2, false) => dots::<2, false>(x_block, panel, k, &mut block),
                        (_, true) => dots::<1, true>(x_block, panel, k, &mut block),
                        (_, false) => dots::<1, false>(x_block, panel, k, &mut block),
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
    /// As [`half_dots`]; `x` holds `T` tokens of `k`, `panel` one panel.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dots<const T: usize, const BF16: bool>(
        x: &[f32],
        panel: &[u16],
        k: usize,
        out: &mut [[f32; PANEL_ROWS]; 2],
    ) {
        let mut acc = [[_mm256_setzero_ps(); PANEL_ROWS]; T];
        let (x, w) = (x.as_ptr(), panel.as_ptr());
        for v in 0..k / LANES {
            let mut wv = [_mm256_setzero_ps(); PANEL_ROWS];
            for (r, vector) in wv.iter_mut().enumerate() {
                // SAFETY: the panel holds `PANEL_ROWS` rows of `k.div_ceil(LANES)`
                // vectors, interleaved.
                let bits = unsafe {
                    _mm_loadu_si128(w.add((v * PANEL_ROWS + r) * LANES) as *const __m128i)
                };
                *vector = if BF16 {
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
                } else {
                    _mm256_cvtph_ps(bits)
                };
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                // SAFETY: token `t` has `k` activations from `x + t * k`.
                let xv = unsafe { _mm256_loadu_ps(x.add(t * k + v * LANES)) };
                for (a, &vector) in acc_t.iter_mut().zip(&wv) {
                    *a = _mm256_fmadd_ps(vector, xv, *a);
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

    /// `rows` rows of `k` values (row-major) rounded to `kind`, in panels.
    fn panels(kind: HalfKind, values: &[f32], rows: usize, k: usize) -> Vec<u16> {
        let mut out = vec![0u16; rows.div_ceil(PANEL_ROWS) * panel_len(k)];
        for r in 0..rows {
            for c in 0..k {
                let v = values[r * k + c];
                out[panel_index(k, r, c)] = match kind {
                    HalfKind::Bf16 => half::bf16::from_f32(v).to_bits(),
                    HalfKind::F16 => half::f16::from_f32(v).to_bits(),
                };
            }
        }
        out
    }

    fn dots(
        x: &[f32],
        tokens: usize,
        kind: HalfKind,
        w: &[u16],
        rows: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut out = vec![f32::NAN; rows * tokens];
        half_dots(
            x,
            tokens,
            &PanelRows {
                kind,
                panels: w,
                rows,
                k,
            },
            &mut out,
        );
        out
    }

    /// Every output equals the exact product of the rounded weights (within f32's
    /// rounding of a sum of `k` terms), for every block shape and its remainders, inner
    /// sizes with and without a tail, a last panel full and not, both formats; on the
    /// vector path and the portable one.
    #[test]
    fn dots_equal_the_exact_products() {
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            for (tokens, rows, k) in [
                (1, 1, 8),
                (5, 13, 64),
                (9, 25, 37),
                (16, 12, 1024),
                (3, 7, 5),
            ] {
                let x = values(tokens * k, 1);
                let w_values = values(rows * k, 2);
                let w = panels(kind, &w_values, rows, k);
                let mut slow = vec![0.0; rows * tokens];
                let rows_of_w = PanelRows {
                    kind,
                    panels: &w,
                    rows,
                    k,
                };
                portable(&x, tokens, &rows_of_w, &mut slow);
                add_tails(&x, tokens, &rows_of_w, &mut slow);
                for (name, got) in [
                    ("vector", dots(&x, tokens, kind, &w, rows, k)),
                    ("portable", slow),
                ] {
                    for r in 0..rows {
                        for t in 0..tokens {
                            let exact: f64 = (0..k)
                                .map(|c| {
                                    widen(kind, w[panel_index(k, r, c)]) as f64
                                        * x[t * k + c] as f64
                                })
                                .sum();
                            let rounded = widen(kind, w[panel_index(k, r, 0)]);
                            assert!(
                                (rounded - w_values[r * k]).abs() <= 1e-2,
                                "the panel holds row {r}"
                            );
                            let got = got[r * tokens + t] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-5 * (k as f64).sqrt(),
                                "{name} {kind:?} [{tokens}x{k}]·[{rows}x{k}]ᵀ at ({t}, {r}): {got} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A token's outputs have the same bits whatever tokens and rows it is computed
    /// with: alone against one row, or in a block of 11 tokens against 29 rows.
    #[test]
    fn each_output_is_the_same_bits_in_any_block() {
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let (tokens, rows, k) = (11, 29, 203);
            let x = values(tokens * k, 3);
            let w_values = values(rows * k, 4);
            let all = dots(&x, tokens, kind, &panels(kind, &w_values, rows, k), rows, k);
            for t in 0..tokens {
                let x_t = &x[t * k..(t + 1) * k];
                for r in 0..rows {
                    let row = panels(kind, &w_values[r * k..(r + 1) * k], 1, k);
                    let alone = dots(x_t, 1, kind, &row, 1, k);
                    assert_eq!(
                        all[r * tokens + t].to_bits(),
                        alone[0].to_bits(),
                        "{kind:?} token {t} row {r}"
                    );
                }
            }
        }
    }
}
