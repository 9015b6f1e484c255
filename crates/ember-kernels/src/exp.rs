//! An `exp` that the compiler vectorises, for the kernels' softmax and GELU passes.
//!
//! `f32::exp` is a call into the C library per element, which no loop around it can
//! vectorise: in the cross-entropy over 50,257 classes it was a quarter of a tiny-preset
//! training step (perf, 2-core Zen 4). This is Cephes' `expf` (Moshier): `x = n·ln 2 + r`
//! with `n` rounded to nearest and `|r| ≤ ln 2 / 2`, `exp(r)` by a degree-5 polynomial,
//! `2ⁿ` through the exponent bits; plain arithmetic and selects, so the loops that call
//! it run four to sixteen lanes wide. Its error is within 2 ulp of `f32::exp` (tested).

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n·LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `exp` is under f32's smallest normal number: 0.
const UNDERFLOW: f32 = -87.336_55;
/// Above this `exp` overflows: infinity.
const OVERFLOW: f32 = 88.722_84;
/// Adding and subtracting 1.5·2²³ rounds an f32 of magnitude below 2²² to an integer
/// (ties to even), without a rounding instruction the baseline x86-64 lacks; the sum
/// holds that integer in its low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `eˣ`: 0 below -87.34, infinity above 88.72, NaN for NaN. Between 88 and 88.72 it
/// returns e⁸⁸ (the kernels take it of `x ≤ 0`, and GELU's `tanh`, which reads a result
/// that large as -1 either way).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let clamped = x.clamp(UNDERFLOW, 88.0);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n lies in -126..=127 after the clamp: a normal power of two, whose exponent
    // field is n + 127. n is read from `shifted`'s bits (`shifted = 1.5·2²³ + n`), not
    // converted with `as i32`: that conversion saturates and maps NaN to 0, which LLVM
    // compiles lane by lane, and the loops calling `exp` ran scalar (perf, 2026-12-07).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    let value = y * scale;
    if x < UNDERFLOW {
        0.0
    } else if x > OVERFLOW {
        f32::INFINITY
    } else if x.is_nan() {
        x
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn within_two_ulp_of_the_c_library_and_exact_at_the_edges() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            worst = worst.max(ulps(exp(x), x.exp()));
            x += 0.000_37;
        }
        for x in [0.0f32, -0.0, 1e-8, -1e-8, 1.0, -1.0, 0.5, -0.5, 10.0, -10.0] {
            worst = worst.max(ulps(exp(x), x.exp()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }
}
