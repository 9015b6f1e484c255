//! The 16-bit (bf16, f16) dot products on AVX-512: the same arithmetic as AVX2's, twice
//! the multiply-adds per instruction.
//!
//! An output's eight lanes stay eight lanes: a 16-lane register holds two rows' lanes
//! side by side, rows `2h` and `2h + 1` of a panel, which the panel already stores as 16
//! consecutive values (eight of one row, then eight of the next). Each token's eight
//! activations are broadcast to both halves. So lane `i` of row `r` is the same chain of
//! fused multiply-adds `w[8j + i] · x[8j + i]` as on AVX2, and its halves are added
//! pairwise the same way: the same bits on both, and in every block.
//!
//! With 32 registers a block is 8 tokens × 4 rows (16 accumulators), where AVX2 fits 2:
//! a server's batch of eight reads and widens each panel once per step, not four times,
//! and every widened weight serves eight tokens. More tokens (a prompt's chunk, a larger
//! batch) take blocks of eight over the same panel, read again from L1. Widening each
//! chunk of a panel once for all the tokens, as AVX2 does from 16 tokens, was no faster
//! here (a Xeon, Qwen3-0.6B's shape in bf16, two runs each: a 36-token prompt 0.20-0.21 s
//! against 0.22 s, 256 tokens 1.44-1.49 s against 1.45-1.62 s; 16 sequences decoded at
//! 104-107 new tokens/s against 92, 24 at 115 against 99).

use std::arch::x86_64::*;

use super::x86::PREFETCH_BYTES;
use super::{LANES, PANEL_ROWS, PanelRows};

/// Tokens per block.
const BLOCK_TOKENS: usize = 8;

/// Registers per token's block of outputs: rows 0-1, rows 2-3.
const HALVES: usize = PANEL_ROWS / 2;

/// Whether this CPU has the AVX-512 the kernels use (F, BW, DQ, VL) and F16C.
pub(super) fn available() -> bool {
    crate::simd::level() == 2 && super::x86::available()
}

/// The whole vectors of every output of bf16 (`BF16`) or f16 rows, written
/// `out[t * rows + r]` (the tail is added by the caller).
///
/// # Safety
/// [`available`]; `x` (`[tokens, k]`), `w` and `out` have the lengths
/// [`super::panel_dots`] checks.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
pub(super) unsafe fn half_dots<const BF16: bool>(
    x: &[f32],
    tokens: usize,
    w: &PanelRows,
    out: &mut [f32],
) {
    let k = w.k;
    super::by_blocks::<BLOCK_TOKENS>(tokens, w, out, |panel, t0, t, b| {
        let x_t = &x[t0 * k..(t0 + t) * k];
        // SAFETY: the CPU has AVX-512 (as this function's caller promises); `x_t` holds
        // `t` tokens of `k`, `panel` one panel of `k`.
        unsafe {
            match t {
                8 => dots::<8, BF16>(x_t, panel, k, b),
                7 => dots::<7, BF16>(x_t, panel, k, b),
                6 => dots::<6, BF16>(x_t, panel, k, b),
                5 => dots::<5, BF16>(x_t, panel, k, b),
                4 => dots::<4, BF16>(x_t, panel, k, b),
                3 => dots::<3, BF16>(x_t, panel, k, b),
                2 => dots::<2, BF16>(x_t, panel, k, b),
                _ => dots::<1, BF16>(x_t, panel, k, b),
            }
        }
    });
}

/// Sixteen 16-bit values (bf16 if `BF16`, else f16) from `at`, widened to f32
/// (exactly): in a panel, the next eight of two successive rows.
///
/// # Safety
/// `at` is followed by 32 readable bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn widen16<const BF16: bool>(at: *const u8) -> __m512 {
    // SAFETY: as the caller promises.
    let bits = unsafe { _mm256_loadu_si256(at as *const __m256i) };
    if BF16 {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
    } else {
        _mm512_cvtph_ps(bits)
    }
}

/// Eight activations from `at`, in both halves of a register.
///
/// # Safety
/// `at` is followed by eight readable f32.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn broadcast8(at: *const f32) -> __m512 {
    // SAFETY: as the caller promises.
    _mm512_broadcast_f32x8(unsafe { _mm256_loadu_ps(at) })
}

/// `T` tokens × one panel's rows over the whole vectors of `k`.
///
/// # Safety
/// [`available`]; `x` holds `T` tokens of `k`, `panel` one panel in bf16 (`BF16`) or
/// f16.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")]
#[inline]
unsafe fn dots<const T: usize, const BF16: bool>(
    x: &[f32],
    panel: &[u8],
    k: usize,
    out: &mut [[f32; PANEL_ROWS]; BLOCK_TOKENS],
) {
    let mut acc = [[_mm512_setzero_ps(); HALVES]; T];
    let (x, w) = (x.as_ptr(), panel.as_ptr());
    for v in 0..k / LANES {
        let at = 2 * v * PANEL_ROWS * LANES;
        // One 64-byte line per step: ask for the one PREFETCH_BYTES ahead (a hint: an
        // address past the panel is harmless).
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(at + PREFETCH_BYTES) as *const i8);
        // SAFETY: the panel holds `PANEL_ROWS` rows of `k.div_ceil(LANES)` vectors of
        // 16-bit values, interleaved: rows 0-1 of vector `v` at `at`, rows 2-3 after.
        let wv: [__m512; HALVES] =
            std::array::from_fn(|h| unsafe { widen16::<BF16>(w.add(at + 2 * h * 2 * LANES)) });
        for (t, acc_t) in acc.iter_mut().enumerate() {
            // SAFETY: token `t` has `k` activations from `x + t * k`.
            let xv = unsafe { broadcast8(x.add(t * k + v * LANES)) };
            for (a, &vector) in acc_t.iter_mut().zip(&wv) {
                *a = _mm512_fmadd_ps(vector, xv, *a);
            }
        }
    }
    // Each register's halves are two rows' lanes: the low half row 2h, the high 2h + 1.
    // A row's eight lanes added pairwise ([`pairwise`]'s order): first lane i + 4 into
    // lane i, which leaves each token's four rows of four lanes in one register.
    let rows: [__m512; T] = std::array::from_fn(|t| {
        let [low, high] = acc[t];
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(low, high),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(low, high),
        )
    });
    for (fours, out) in rows.chunks(4).zip(out.chunks_mut(4)) {
        // SAFETY: the CPU has AVX-512 (as this function's caller promises).
        unsafe { store_row_sums::<false>(fours, out) };
    }
}

/// Writes the rows' sums of up to four tokens' registers `fours`, each holding a token's
/// four rows in its four 128-bit quarters as four partial sums (lane `4r + i`), to
/// `out[j][r]` for token `j`: each sum `(l0 + l1) + (l2 + l3)` if `NEIGHBOURS`, else
/// `(l0 + l2) + (l1 + l3)`. The same additions in the same order as lane by lane, six
/// shuffles, three additions and a permutation for four tokens: storing each register
/// and adding its lanes one by one took a tenth of a block's time (docs/serving.md,
/// "Sums in registers").
///
/// # Safety
/// The CPU has AVX-512F; `fours` holds one to four registers, `out` at least as many
/// tokens.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_row_sums<const NEIGHBOURS: bool>(
    fours: &[__m512],
    out: &mut [[f32; PANEL_ROWS]],
) {
    assert!(
        (1..=4).contains(&fours.len()) && out.len() >= fours.len(),
        "one to four tokens"
    );
    let zero = _mm512_setzero_ps();
    let [a, b, c, d] = std::array::from_fn(|j| fours.get(j).copied().unwrap_or(zero));
    // Within quarter r: [a's first pair, a's second, b's first, b's second], the pairs
    // being lanes (0, 1) and (2, 3), or (0, 2) and (1, 3).
    let pairs = |a, b| {
        if NEIGHBOURS {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(a, b),
                _mm512_shuffle_ps::<0b11_01_11_01>(a, b),
            )
        } else {
            _mm512_add_ps(
                _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
            )
        }
    };
    let (ab, cd) = (pairs(a, b), pairs(c, d));
    // Row r of a, b, c, d in quarter r: lane 4r + j.
    let sums = _mm512_add_ps(
        _mm512_shuffle_ps::<0b10_00_10_00>(ab, cd),
        _mm512_shuffle_ps::<0b11_01_11_01>(ab, cd),
    );
    // Token j's rows side by side: lane 4j + r, as `out` lies.
    let by_token = _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
        sums,
    );
    // SAFETY: `out` holds at least `fours.len()` tokens' four rows, contiguous; the mask
    // writes those.
    unsafe {
        _mm512_mask_storeu_ps(
            out.as_mut_ptr() as *mut f32,
            ((1u32 << (4 * fours.len())) - 1) as __mmask16,
            by_token,
        )
    };
}
