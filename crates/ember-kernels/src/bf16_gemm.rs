//! Matrix products of bf16-rounded operands with f32 sums: the arithmetic of PyTorch's
//! bf16 autocast for `matmul` and `linear`, for mixed-precision training on the CPU.
//!
//! Both operands are rounded to bf16 (to nearest even, as `.to(torch.bfloat16)` does);
//! every product of two bf16 numbers is exact in f32 and every sum is kept in f32; the
//! result is f32. Rounding the operands is the only loss against an f32 product.
//!
//! On a CPU with AVX512_BF16 (Zen 4, Sapphire Rapids and later, detected at run time) the
//! product runs on `vdpbf16ps`, which multiplies pairs of bf16 numbers and adds both
//! products to an f32 sum: twice the multiply-adds of an f32 FMA per instruction, from
//! operands half the size. The operands are packed once per product into the layout that
//! instruction reads (pairs of consecutive `k` in one 32-bit lane), as BLIS packs its
//! panels. Elsewhere the same rounding is applied and the f32 `gemm` multiplies the
//! rounded values ([`product_emulated`]): the same numbers up to the order of the f32
//! sums, without the speed.

use rayon::prelude::*;

use crate::cpu::MatrixView;

/// `a · b` with both operands rounded to bf16 and the sums in f32, on every core.
///
/// # Shapes
/// - a: `[m, k]`, b: `[k, n]`; returns `[m, n]` row-major.
pub(crate) fn product(a: MatrixView<'_>, b: MatrixView<'_>) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_bf16_instructions() {
        // SAFETY: the CPU has the instructions the kernel is compiled for.
        return unsafe { avx512::product(a, b) };
    }
    product_emulated(a, b)
}

/// Whether this CPU multiplies bf16 numbers in hardware (AVX512_BF16).
pub(crate) fn has_bf16_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The same product through the f32 `gemm` of copies of the operands rounded to bf16.
pub(crate) fn product_emulated(a: MatrixView<'_>, b: MatrixView<'_>) -> Vec<f32> {
    crate::matmul::rounded_product(a, b, crate::Dtype::Bf16)
}

/// `v` rounded to the nearest bf16 (ties to even), as bits; NaN stays NaN.
#[inline(always)]
pub(crate) fn to_bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Two bf16 values in one 32-bit lane, the first in the low half: `(lo, hi)`.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16_bits(lo)) | (u32::from(to_bf16_bits(hi)) << 16)
}

/// Rows of the output one micro-kernel call computes (one broadcast each per pair).
const MR: usize = 12;
/// Columns of the output one micro-kernel call computes (two 16-lane registers).
const NR: usize = 32;
/// Pairs of `k` per cache block: a 16 KiB panel of `b` stays in L1 while the panels
/// of `a` stream past it.
const KC_PAIRS: usize = 128;
/// Rows of one task's block of `a` (48 KiB of bf16 at `KC_PAIRS`: L2).
const MC: usize = 8 * MR;
/// Columns of one task's block of `b` (256 KiB at `KC_PAIRS`: L2).
const NC: usize = 16 * NR;

/// `a` packed into panels of `MR` rows: for each panel, for each pair `p` of `k`, the
/// `MR` lanes `(a[i, 2p], a[i, 2p+1])`.
fn pack_a(a: MatrixView<'_>, pairs: usize, packed: &mut [u32]) {
    pack::<MR>(a, pairs, packed)
}

/// `b` packed into panels of `NR` columns: for each panel, for each pair `p` of `k`, the
/// `NR` lanes `(b[2p, j], b[2p+1, j])`.
fn pack_b(b: MatrixView<'_>, pairs: usize, packed: &mut [u32]) {
    pack::<NR>(b.t(), pairs, packed)
}

/// Length of `lanes` packed in panels of `width` with `pairs` pairs each.
fn packed_len(lanes: usize, width: usize, pairs: usize) -> usize {
    lanes.div_ceil(width) * pairs * width
}

thread_local! {
    /// Packed operands, kept between products: a training step makes hundreds, and
    /// fresh buffers would each be page-faulted in (and zeroed) by the kernel again.
    static SCRATCH: std::cell::RefCell<(Vec<u32>, Vec<u32>)> = Default::default();
}

/// `f` given buffers of `a_len` and `b_len` lanes from this thread's scratch (their
/// contents are whatever was there before), or fresh ones if a product on this thread
/// holds the scratch already (one started by a rayon task this thread ran meanwhile).
fn with_scratch<R>(a_len: usize, b_len: usize, f: impl FnOnce(&mut [u32], &mut [u32]) -> R) -> R {
    SCRATCH.with(|scratch| {
        let Ok(mut held) = scratch.try_borrow_mut() else {
            return f(&mut vec![0; a_len], &mut vec![0; b_len]);
        };
        let (a, b) = &mut *held;
        for (buffer, len) in [(&mut *a, a_len), (&mut *b, b_len)] {
            if buffer.len() < len {
                buffer.resize(len, 0);
            }
        }
        f(&mut a[..a_len], &mut b[..b_len])
    })
}

/// Pairs of `k` per block when packing from rows contiguous in `k`: the block's
/// output (`PACK_PAIRS · W` lanes) stays in L1 while the rows are read.
const PACK_PAIRS: usize = 64;

/// `x` (`[lanes, k]`) rounded to bf16 and packed into panels of `W` lanes: for each
/// panel, for each pair `p`, the `W` lanes `(x[l, 2p], x[l, 2p+1])`, a `k` past the
/// last as zero. Lanes past the last are left as they were: the kernel never stores
/// the outputs they feed. The two layouts operands come in (lanes contiguous, or `k`
/// contiguous) are read along their contiguous dimension; the rounding loops over
/// slices, which the compiler vectorises.
fn pack<const W: usize>(x: MatrixView<'_>, pairs: usize, packed: &mut [u32]) {
    debug_assert_eq!(packed.len(), packed_len(x.dims.0, W, pairs));
    packed
        .par_chunks_mut(pairs * W)
        .enumerate()
        .for_each(|(panel, out)| {
            #[cfg(target_arch = "x86_64")]
            if has_bf16_instructions() {
                // SAFETY: the CPU has the instructions.
                return unsafe { avx512::pack_panel::<W>(x, pairs, panel, out) };
            }
            pack_panel::<W>(x, pairs, panel, out)
        });
}

/// Panel `panel` of [`pack`] into `out`; inlined into a copy compiled for AVX-512,
/// where the rounding loops vectorise sixteen lanes wide.
#[inline(always)]
fn pack_panel<const W: usize>(x: MatrixView<'_>, pairs: usize, panel: usize, out: &mut [u32]) {
    let (lanes, k) = x.dims;
    let first = panel * W;
    let width = W.min(lanes - first);
    // SAFETY (the slices below): `MatrixView`'s contract makes every element
    // inside `dims` readable; a stride of 1 makes a run of them contiguous.
    if x.row_stride == 1 {
        // Lanes contiguous: columns 2p and 2p+1 of the panel's lanes.
        let column = |c: usize| unsafe {
            std::slice::from_raw_parts(
                x.ptr.offset(first as isize + c as isize * x.col_stride),
                width,
            )
        };
        for (p, out) in out.chunks_exact_mut(W).enumerate() {
            let lo = column(2 * p);
            if 2 * p + 1 < k {
                let hi = column(2 * p + 1);
                for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
                    *o = pair(l, h);
                }
            } else {
                for (o, &l) in out.iter_mut().zip(lo) {
                    *o = pair(l, 0.0);
                }
            }
        }
    } else if x.col_stride == 1 {
        // `k` contiguous: each lane's row, rounded in one pass, gives consecutive
        // pairs, which go to the lane's place in each pair's group.
        let mut halves = [0u16; 2 * PACK_PAIRS];
        for p0 in (0..pairs).step_by(PACK_PAIRS) {
            let count = PACK_PAIRS.min(pairs - p0);
            for j in 0..width {
                let row = unsafe {
                    std::slice::from_raw_parts(x.ptr.offset((first + j) as isize * x.row_stride), k)
                };
                let row = &row[2 * p0..k.min(2 * (p0 + count))];
                for (h, &v) in halves.iter_mut().zip(row) {
                    *h = to_bf16_bits(v);
                }
                // An odd `k`'s last pair is completed with zero.
                halves[row.len()..2 * count].fill(0);
                for (p, two) in halves[..2 * count].chunks_exact(2).enumerate() {
                    out[(p0 + p) * W + j] = u32::from(two[0]) | (u32::from(two[1]) << 16);
                }
            }
        }
    } else {
        for p in 0..pairs {
            for j in 0..width {
                let hi = if 2 * p + 1 < k {
                    x.at(first + j, 2 * p + 1)
                } else {
                    0.0
                };
                out[p * W + j] = pair(x.at(first + j, 2 * p), hi);
            }
        }
    }
}

/// The output's address, shared by the tasks that write disjoint blocks of it.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own block of rows and columns.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The address `offset` elements in (a method, so that closures capture the
    /// whole `OutPtr` rather than its raw pointer).
    ///
    /// # Safety
    /// `offset` must lie inside the output.
    unsafe fn offset(self, offset: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(offset) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    /// # Safety
    /// The CPU must have AVX512F and AVX512_BF16.
    pub(super) unsafe fn product(a: MatrixView<'_>, b: MatrixView<'_>) -> Vec<f32> {
        let ((m, k), (k2, n)) = (a.dims, b.dims);
        assert_eq!(k, k2, "matrix product of [{m}, {k}] and [{k2}, {n}]");
        if m == 0 || n == 0 || k == 0 {
            return vec![0.0; m * n];
        }
        let pairs = k.div_ceil(2);
        let mut out: Vec<f32> = Vec::with_capacity(m * n);
        let c = OutPtr(out.as_mut_ptr());
        let (a_len, b_len) = (packed_len(m, MR, pairs), packed_len(n, NR, pairs));
        with_scratch(a_len, b_len, |a_packed, b_packed| {
            rayon::join(|| pack_a(a, pairs, a_packed), || pack_b(b, pairs, b_packed));
            let (a_packed, b_packed) = (&*a_packed, &*b_packed);
            let (row_blocks, col_blocks) = (m.div_ceil(MC), n.div_ceil(NC));
            (0..row_blocks * col_blocks)
                .into_par_iter()
                .for_each(|task| {
                    // Column-block major: the tasks that run together share one block of
                    // `b` (the larger operand, for an output head) while it is in cache.
                    let (rb, cb) = (task % row_blocks, task / row_blocks);
                    for p0 in (0..pairs).step_by(KC_PAIRS) {
                        let kc = KC_PAIRS.min(pairs - p0);
                        for col in (cb * NC..n.min((cb + 1) * NC)).step_by(NR) {
                            let b_panel = &b_packed[(col / NR) * pairs * NR + p0 * NR..];
                            for row in (rb * MC..m.min((rb + 1) * MC)).step_by(MR) {
                                let a_panel = &a_packed[(row / MR) * pairs * MR + p0 * MR..];
                                // SAFETY: the panels hold `kc` pairs from `p0`; the output
                                // block starts at (row, col) and the kernel writes only the
                                // rows and columns inside `m` and `n`; the CPU has the
                                // instructions (the caller's contract).
                                unsafe {
                                    kernel(
                                        kc,
                                        a_panel.as_ptr(),
                                        b_panel.as_ptr(),
                                        c.offset(row * n + col),
                                        n,
                                        MR.min(m - row),
                                        NR.min(n - col),
                                        p0 > 0,
                                    );
                                }
                            }
                        }
                    }
                });
        });
        // SAFETY: the first block of `k` stored every element of every task's block,
        // and the tasks cover the output.
        unsafe { out.set_len(m * n) };
        out
    }

    /// [`pack_panel`] compiled for the CPUs that run [`kernel`].
    ///
    /// # Safety
    /// The CPU must have AVX512F, AVX512BW and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn pack_panel<const W: usize>(
        x: MatrixView<'_>,
        pairs: usize,
        panel: usize,
        out: &mut [u32],
    ) {
        super::pack_panel::<W>(x, pairs, panel, out)
    }

    /// `c[..rows, ..cols] (+)= a_panel · b_panel` over `pairs` pairs of `k`, the sums
    /// started from `c` when `accumulate`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        pairs: usize,
        a: *const u32,
        b: *const u32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..pairs {
            // SAFETY (this block): the panels hold `pairs` groups of NR and MR lanes.
            unsafe {
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
                let a_row = a.add(p * MR);
                for (i, acc_i) in acc.iter_mut().enumerate() {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a_row.add(i) as i32));
                    acc_i[0] = _mm512_dpbf16_ps(acc_i[0], ai, b0);
                    acc_i[1] = _mm512_dpbf16_ps(acc_i[1], ai, b1);
                }
            }
        }
        let mask = |from: usize| -> __mmask16 {
            let n = cols.saturating_sub(from).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let masks = [mask(0), mask(16)];
        for (i, acc_i) in acc.iter().enumerate().take(rows) {
            for (half, (&sum, &m)) in acc_i.iter().zip(&masks).enumerate() {
                // SAFETY: the masks keep the loads and stores inside the row's `cols`.
                unsafe {
                    let dst = c.add(i * ldc + half * 16);
                    let value = if accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), sum)
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(dst, m, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(values: &[f32], dims: (usize, usize)) -> MatrixView<'_> {
        MatrixView::new(values.as_ptr(), dims, dims.1 as isize, 1)
    }

    fn bf16(v: f32) -> f64 {
        f64::from(f32::from_bits(u32::from(to_bf16_bits(v)) << 16))
    }

    /// The exact product of the rounded operands, and the sum of |terms| that bounds
    /// the error of summing them in f32.
    fn exact(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> (Vec<f64>, Vec<f64>) {
        let mut exact = vec![0.0; m * n];
        let mut scale = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let t = bf16(a[i * k + p]) * bf16(b[p * n + j]);
                    exact[i * n + j] += t;
                    scale[i * n + j] += t.abs();
                }
            }
        }
        (exact, scale)
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        // A small LCG: values in [-2, 2) with every mantissa bit in use.
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        let one = 1.0f32.to_bits();
        // Halfway between 1 and the next bf16 (1 + 2^-7): ties go to even (1).
        assert_eq!(to_bf16_bits(f32::from_bits(one + 0x8000)), 0x3F80);
        assert_eq!(to_bf16_bits(f32::from_bits(one + 0x8001)), 0x3F81);
        // Halfway above an odd bf16 goes up to the even one.
        assert_eq!(to_bf16_bits(f32::from_bits(one + 0x1_8000)), 0x3F82);
        assert_eq!(to_bf16_bits(f32::INFINITY), 0x7F80);
        assert_eq!(to_bf16_bits(f32::MAX), 0x7F80);
        assert!(f32::from_bits(u32::from(to_bf16_bits(f32::NAN)) << 16).is_nan());
        for v in values(1000, 7) {
            assert_eq!(to_bf16_bits(v), half::bf16::from_f32(v).to_bits());
        }
    }

    /// Odd and uneven sizes (partial panels, a `k` past one cache block, an odd `k`)
    /// against the exact product of the rounded operands, on the path this CPU takes
    /// and on the emulated one.
    #[test]
    fn products_of_rounded_operands_sum_in_f32() {
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (30, 301, 70),
            (97, 2, 40),
            (5, 515, 3),
        ] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let (want, scale) = exact(&a, &b, (m, k, n));
            for got in [
                product(view(&a, (m, k)), view(&b, (k, n))),
                product_emulated(view(&a, (m, k)), view(&b, (k, n))),
            ] {
                for ((&g, &w), &s) in got.iter().zip(&want).zip(&scale) {
                    let bound = s * 2.0 * k as f64 * f64::from(f32::EPSILON) + 1e-30;
                    assert!(
                        (f64::from(g) - w).abs() <= bound,
                        "[{m}, {k}] x [{k}, {n}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// Transposed operands are read through their strides.
    #[test]
    fn transposed_operands_read_by_stride() {
        let (m, k, n) = (20, 45, 37);
        let (a, b) = (values(m * k, 3), values(k * n, 4));
        let want = product(view(&a, (m, k)), view(&b, (k, n)));
        // The same matrices stored transposed: aᵀ is [k, m], bᵀ is [n, k].
        let mut a_t = vec![0.0; m * k];
        let mut b_t = vec![0.0; k * n];
        for i in 0..m {
            for p in 0..k {
                a_t[p * m + i] = a[i * k + p];
            }
        }
        for p in 0..k {
            for j in 0..n {
                b_t[j * k + p] = b[p * n + j];
            }
        }
        let got = product(view(&a_t, (k, m)).t(), view(&b_t, (n, k)).t());
        assert_eq!(got, want);
    }
}
