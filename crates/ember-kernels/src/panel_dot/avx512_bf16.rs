//! bf16 weights times activations rounded to bf16 ([`crate::autocast`]'s bf16 products)
//! on `vdpbf16ps` (AVX512_BF16: Zen 4, Sapphire Rapids and later): each instruction
//! multiplies 32 pairs of bf16 numbers and adds them into 16 f32 sums, twice the
//! multiply-adds of an f32 FMA, and the weights need no widening.
//!
//! The panels need no layout of their own: a 64-byte step of a panel is 32-bit lanes
//! 0-3 holding row 0's next eight values as four pairs of consecutive `k`, lanes 4-7 row
//! 1's, 8-11 row 2's, 12-15 row 3's, which is what the instruction reads against a
//! token's eight activations repeated in each 128-bit quarter. Lane `l` of row `r =
//! l / 4` sums, step after step in order, the pairs `k = 8j + 2(l mod 4)` and the next
//! one; at the end each row's four lanes are added pairwise, then the last `k mod 8`
//! products one by one (by the caller). Every token's sums are the same operations in
//! every block of tokens, so a token has the same bits alone or batched.

use std::arch::x86_64::*;

use super::{LANES, PANEL_ROWS, PanelRows};

/// Tokens per block: eight accumulators, each weight step loaded once for eight
/// tokens.
const BLOCK_TOKENS: usize = 8;

/// Whether this CPU has the AVX-512 the kernel uses, `vdpbf16ps` included.
pub(super) fn available() -> bool {
    super::avx512::available() && crate::bf16_gemm::has_bf16_instructions()
}

/// The whole vectors of every output of bf16 rows against `x`, the activations as bf16
/// bits (`[tokens, k]`), written `out[t * rows + r]` (the tail is added by the caller).
///
/// # Safety
/// [`available`]; `x` (`[tokens, k]`), `w` and `out` have the lengths
/// [`super::panel_dots`] checks, `w` in bf16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn bf16_dots(x: &[u16], tokens: usize, w: &PanelRows, out: &mut [f32]) {
    let k = w.k;
    super::by_blocks::<BLOCK_TOKENS>(tokens, w, out, |panel, t0, t, b| {
        let x_t = &x[t0 * k..(t0 + t) * k];
        // SAFETY: the CPU has the instructions (as this function's caller promises);
        // `x_t` holds `t` tokens of `k`, `panel` one bf16 panel of `k`.
        unsafe {
            match t {
                8 => dots::<8>(x_t, panel, k, b),
                7 => dots::<7>(x_t, panel, k, b),
                6 => dots::<6>(x_t, panel, k, b),
                5 => dots::<5>(x_t, panel, k, b),
                4 => dots::<4>(x_t, panel, k, b),
                3 => dots::<3>(x_t, panel, k, b),
                2 => dots::<2>(x_t, panel, k, b),
                _ => dots::<1>(x_t, panel, k, b),
            }
        }
    });
}

/// `T` tokens × one panel's rows over the whole vectors of `k`.
///
/// # Safety
/// [`available`]; `x` holds `T` tokens of `k` bf16 values, `panel` one bf16 panel.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn dots<const T: usize>(
    x: &[u16],
    panel: &[u8],
    k: usize,
    out: &mut [[f32; PANEL_ROWS]; BLOCK_TOKENS],
) {
    let mut acc = [_mm512_setzero_ps(); T];
    let (x, w) = (x.as_ptr(), panel.as_ptr());
    for v in 0..k / LANES {
        let at = 2 * v * PANEL_ROWS * LANES;
        // One 64-byte line per step: ask for the one PREFETCH_BYTES ahead (a hint: an
        // address past the panel is harmless).
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(at + super::x86::PREFETCH_BYTES) as *const i8);
        // SAFETY: the panel holds 64 bytes of the four rows' vector `v` at `at`; token
        // `t` has `k` values from `x + t * k`.
        let weights: __m512bh =
            unsafe { std::mem::transmute(_mm512_loadu_si512(w.add(at) as *const __m512i)) };
        for (t, acc) in acc.iter_mut().enumerate() {
            // SAFETY: as above; the same bits, read as pairs of bf16.
            let eight: __m512bh = unsafe {
                std::mem::transmute(_mm512_broadcast_i32x4(_mm_loadu_si128(
                    x.add(t * k + v * LANES) as *const __m128i,
                )))
            };
            *acc = _mm512_dpbf16_ps(*acc, weights, eight);
        }
    }
    for (acc, out) in acc.iter().zip(out.iter_mut()) {
        let mut lanes = [0.0f32; 16];
        // SAFETY: 16 f32 to a 16-f32 array.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *acc) };
        for (r, four) in lanes.chunks_exact(4).enumerate() {
            out[r] = (four[0] + four[1]) + (four[2] + four[3]);
        }
    }
}
