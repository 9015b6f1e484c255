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
//! every block of tokens, so a token has the same bits alone or batched. Several tokens
//! are multiplied by three panels at a time ([`GROUP_PANELS`]), each row's sums the same
//! as one panel at a time.

use std::arch::x86_64::*;

use super::avx512::store_row_sums;
use super::x86::PREFETCH_BYTES;
use super::{LANES, PANEL_ROWS, PanelRows};

/// Tokens per block: each weight step loaded once for eight tokens.
const BLOCK_TOKENS: usize = 8;

/// Panels read side by side for two tokens or more: three memory streams, and 8 tokens
/// × 3 panels = 24 accumulators, with the three weight vectors and a token's activations
/// 28 of the 32 registers. Each broadcast of a token's activations then serves three
/// weight vectors, not one. In C on one Zen 4 core, 8 tokens over 600 MB of bf16 panels
/// read 8.2 GB/s one panel at a time, 11.7 two, 14.3 three; with the weights in L1, a
/// `vdpbf16ps` every 0.41 ns with one panel, every 0.29 (the instruction's throughput)
/// with two or more. One token stays one panel at a time: it is memory-bound, and three
/// streams read it slower (two threads, 200 matrices of 3,072 × 1,024: 24-27 GB/s
/// against 30-32; docs/serving.md, "Three panels at a time").
const GROUP_PANELS: usize = 3;

/// How far ahead each stream of a group is prefetched, into L2 (`prefetcht1`): on Zen 4,
/// two threads, 8 tokens over the same matrices read 19-24 GB/s against 16-20 with
/// `prefetcht0` 1 KiB ahead (in C, 12 rows: 25-30 against 22-26 with no prefetch).
const GROUP_PREFETCH_BYTES: usize = 2048;

/// A block's sums: `[panel][token][row]`.
type Sums = [[[f32; PANEL_ROWS]; BLOCK_TOKENS]];

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
    if tokens == 1 {
        // Decoding one sequence: memory-bound, one panel at a time (below).
        super::by_panel_groups::<BLOCK_TOKENS, 1>(tokens, w, out, |panel, _, _, _, b| {
            // SAFETY: the CPU has the instructions (as this function's caller promises);
            // `x` holds one token of `k`, `panel` one bf16 panel of `k`.
            unsafe { dots::<1, 1>(x, panel, k, PREFETCH_BYTES, b) }
        });
        return;
    }
    // More than one block of tokens reads each group once per block: from memory the
    // first time, then from L1. Prefetching the next group's same line instead of this
    // group's next ones has it in L2 by its first block, so no block waits on memory
    // (criterion `packed_products`, 36 tokens: 7.6-7.8 GiB/s without, 8.1-8.8 with).
    let ahead = if tokens > BLOCK_TOKENS {
        GROUP_PANELS * super::panel_bytes(w.format, k)
    } else {
        GROUP_PREFETCH_BYTES
    };
    super::by_panel_groups::<BLOCK_TOKENS, GROUP_PANELS>(tokens, w, out, |group, n, t0, t, b| {
        let x_t = &x[t0 * k..(t0 + t) * k];
        // SAFETY: the CPU has the instructions (as this function's caller promises);
        // `x_t` holds `t` tokens of `k`, `group` `n` bf16 panels of `k`.
        unsafe {
            match n {
                3 => tokens_of::<3>(x_t, t, group, k, ahead, b),
                2 => tokens_of::<2>(x_t, t, group, k, ahead, b),
                _ => tokens_of::<1>(x_t, t, group, k, ahead, b),
            }
        }
    });
}

/// [`dots`] of `t` tokens (1 to 8) and `P` panels.
///
/// # Safety
/// As [`dots`]'.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn tokens_of<const P: usize>(
    x: &[u16],
    t: usize,
    group: &[u8],
    k: usize,
    ahead: usize,
    b: &mut Sums,
) {
    // SAFETY: as this function's caller promises.
    unsafe {
        match t {
            8 => dots::<8, P>(x, group, k, ahead, b),
            7 => dots::<7, P>(x, group, k, ahead, b),
            6 => dots::<6, P>(x, group, k, ahead, b),
            5 => dots::<5, P>(x, group, k, ahead, b),
            4 => dots::<4, P>(x, group, k, ahead, b),
            3 => dots::<3, P>(x, group, k, ahead, b),
            2 => dots::<2, P>(x, group, k, ahead, b),
            _ => dots::<1, P>(x, group, k, ahead, b),
        }
    }
}

/// `T` tokens × `P` panels' rows over the whole vectors of `k`, each panel's line `ahead`
/// bytes on prefetched.
///
/// # Safety
/// [`available`]; `x` holds `T` tokens of `k` bf16 values, `group` `P` bf16 panels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
unsafe fn dots<const T: usize, const P: usize>(
    x: &[u16],
    group: &[u8],
    k: usize,
    ahead: usize,
    out: &mut Sums,
) {
    let mut acc = [[_mm512_setzero_ps(); T]; P];
    let panel_bytes = group.len() / P;
    let (x, w) = (x.as_ptr(), group.as_ptr());
    for v in 0..k / LANES {
        let at = 2 * v * PANEL_ROWS * LANES;
        let weights: [__m512bh; P] = std::array::from_fn(|p| {
            let step = w.wrapping_add(p * panel_bytes + at);
            // One 64-byte line per step and panel: ask for one `ahead` (a hint: an
            // address past the panels is harmless), into L1 for one token, into L2 for
            // several (measured at GROUP_PREFETCH_BYTES).
            if P == 1 {
                _mm_prefetch::<_MM_HINT_T0>(step.wrapping_add(ahead) as *const i8);
            } else {
                _mm_prefetch::<_MM_HINT_T1>(step.wrapping_add(ahead) as *const i8);
            }
            // SAFETY: panel `p` holds 64 bytes of the four rows' vector `v` at `at`.
            unsafe { std::mem::transmute(_mm512_loadu_si512(step as *const __m512i)) }
        });
        for t in 0..T {
            // SAFETY: token `t` has `k` values from `x + t * k`; the same bits, read as
            // pairs of bf16.
            let eight: __m512bh = unsafe {
                std::mem::transmute(_mm512_broadcast_i32x4(_mm_loadu_si128(
                    x.add(t * k + v * LANES) as *const __m128i,
                )))
            };
            for (acc, &weights) in acc.iter_mut().zip(&weights) {
                acc[t] = _mm512_dpbf16_ps(acc[t], weights, eight);
            }
        }
    }
    for (acc, out) in acc.iter().zip(out.iter_mut()) {
        for (fours, out) in acc.chunks(4).zip(out.chunks_mut(4)) {
            // SAFETY: the CPU has AVX-512 (as this function's caller promises).
            unsafe { store_row_sums::<true>(fours, out) };
        }
    }
}
