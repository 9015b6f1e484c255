//! Products of bf16 weights on Intel's AMX tiles (Xeon Sapphire Rapids and later), with
//! the activations' f32 values kept whole.
//!
//! An AMX instruction `tdpbf16ps` multiplies a 16 × 32 tile of bf16 values by a 32 × 16
//! one and adds the products into a 16 × 16 tile of f32 sums: 16,384 floating-point
//! operations in one instruction, 1,024 per cycle, six times what a core's two AVX-512
//! FMA units do in f32 (measured on the 2-core Xeon of docs/serving.md: 2.9 TFLOP/s on
//! one core). A prompt is a matrix product bounded by arithmetic (a server's step of
//! several sequences partly), so this is where it goes faster.
//!
//! Its inputs are bf16, and the activations are f32: rounding them to bf16, as
//! transformers and llama.cpp do for bf16 models, would change every result in its
//! third digit. Instead each activation `x` is split into three bf16 values,
//! `x = h + m + l` exactly: `h` is `x` with the low 16 bits of its f32 cleared (its
//! first 8 significant bits), `m` the same of `x - h` (the next 8), `l` what is left
//! (at most 8 bits, so a bf16 exactly). bf16 weights times bf16 parts are exact in f32,
//! so `w · x = w · h + w · m + w · l` loses nothing before the sums, which are f32 as in
//! the other kernels. It costs three products where one would do; with six times the
//! arithmetic, that is still twice the f32 rate in principle. Measured (docs/serving.md,
//! Qwen3-0.6B's shape): prompts of 36 and 256 tokens read 1.3x and 1.8x faster than by
//! the AVX-512 kernels, decoding as fast (one sequence) or a little faster (eight).
//!
//! The parts are rows of the first tile: `[h of every token; m of every token; l of
//! every token]`, and an output is `(w · h + w · m) + w · l`, its three sums each
//! accumulated along `k` in one fixed order whatever the other rows of the tiles are.
//! So a token's result has the same bits alone or in a batch, and a row's the same in
//! any group: the invariance servers need ([`crate::rows`]). (They are not the bits of
//! the AVX kernels of [`crate::panel_dot`]: another order of the same f32 sums.)
//!
//! **Layout.** The second tile of `tdpbf16ps` holds, in each 64-byte row `p`, two
//! consecutive values `k = 2p, 2p + 1` of each of 16 weight rows. A matrix is stored in
//! groups of [`GROUP_ROWS`] = 32 weight rows (the last padded with zero rows), each
//! group, for every 32 values of `k` (rows padded with zeros to a multiple of 32), the
//! tile of its first 16 rows and then of its next 16: 2 KB, read in the order they are
//! stored, one stream per group.
//!
//! **Blocks.** Eight tile registers: four 16 × 16 sums, two tiles of activation parts
//! and two of weights, so a block is 32 part rows × 32 weight rows, each tile loaded
//! serving two products. An activation tile holds only the part rows there are (a
//! decoding token's are three: configured as three rows, not sixteen, decoding one
//! sequence went from 18.4-19.0 to 19.3 new tokens/s and eight from 91.5-93.1 to 95.8).

use std::sync::OnceLock;

/// Weight rows per group: two tiles' worth.
pub(crate) const GROUP_ROWS: usize = 32;

/// Rows of a tile (weight rows of a weight tile, part rows of an activation tile).
const TILE_ROWS: usize = 16;

/// Values of `k` per tile.
const TILE_K: usize = 32;

/// Bytes of one weight tile.
const TILE_BYTES: usize = TILE_ROWS * TILE_K * 2;

/// Values per row once padded to whole tiles.
pub(crate) fn padded_k(k: usize) -> usize {
    k.next_multiple_of(TILE_K)
}

/// Bytes of a group of [`GROUP_ROWS`] rows of `k` values.
pub(crate) fn group_bytes(k: usize) -> usize {
    GROUP_ROWS * padded_k(k) * 2
}

/// Where value `c` of a group's row `r` is, in bf16 values from the group's start.
#[inline]
fn index(r: usize, c: usize) -> usize {
    let (tile, row) = (r / TILE_ROWS, r % TILE_ROWS);
    let (step, pair, half) = (c / TILE_K, c % TILE_K / 2, c % 2);
    ((step * 2 + tile) * TILE_ROWS + pair) * TILE_ROWS * 2 + row * 2 + half
}

/// Writes value `c` of row `r` of `group` (bf16 bits).
pub(crate) fn put(group: &mut [u8], r: usize, c: usize, bits: u16) {
    let at = 2 * index(r, c);
    group[at..at + 2].copy_from_slice(&bits.to_le_bytes());
}

/// Value `c` of row `r` of `group` (bf16 bits).
pub(crate) fn get(group: &[u8], r: usize, c: usize) -> u16 {
    let at = 2 * index(r, c);
    u16::from_le_bytes([group[at], group[at + 1]])
}

/// Whether this process can use AMX's bf16 tiles: the CPU has them, Linux lets the
/// process use them (it asks, once), and `EMBER_AMX` is not `0` (which keeps bf16
/// weights on the AVX kernels, e.g. to compare).
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var_os("EMBER_AMX").is_none_or(|v| v != "0") && detect())
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    use std::arch::x86_64::{__cpuid_count, __get_cpuid_max};
    // Linux's arch_prctl requests (asm/prctl.h) and the tile data's XSAVE feature.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    #[allow(unused_unsafe)] // safe functions since Rust 1.87, unsafe before
    let (max_leaf, leaf7) = unsafe { (__get_cpuid_max(0).0, __cpuid_count(7, 0)) };
    let (amx_bf16, amx_tile) = (1 << 22, 1 << 24);
    max_leaf >= 7
        && leaf7.edx & amx_bf16 != 0
        && leaf7.edx & amx_tile != 0
        // SAFETY: a system call with two integer arguments; it changes only whether
        // this process may use the tile registers.
        && unsafe {
            libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
        } == 0
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// `tokens` rows of f32 activations as the tiles take them: each split into three bf16
/// parts (the module's `h`, `m`, `l`), stored as part rows `[h; m; l]` (`3 · tokens`
/// rows; a tile holds as many as there are), each [`padded_k`] long. (Stored tile by
/// tile instead, each tile's 1 KB contiguous: a 256-token prompt took 0.92 s against
/// 0.84, and eight sequences decoded at 88 new tokens/s against 96.)
pub(crate) struct Parts {
    values: Vec<u16>,
    /// Activation rows.
    pub tokens: usize,
    /// Values per row (before padding).
    pub k: usize,
}

impl Parts {
    /// The parts of `values` (`[tokens, k]`).
    pub(crate) fn new(values: &[f32], tokens: usize, k: usize) -> Self {
        assert_eq!(values.len(), tokens * k, "activations are [{tokens}, {k}]");
        let kp = padded_k(k);
        // Each value split once; each row's values past `k` stay zero.
        let mut parts = vec![0u16; 3 * tokens * kp];
        let (high, rest) = parts.split_at_mut(tokens * kp);
        let (middle, low) = rest.split_at_mut(tokens * kp);
        for (t, row) in values.chunks_exact(k.max(1)).take(tokens).enumerate() {
            let at = t * kp..t * kp + k;
            let (h, m, l) = (&mut high[at.clone()], &mut middle[at.clone()], &mut low[at]);
            for (c, &x) in row.iter().enumerate() {
                [h[c], m[c], l[c]] = split(x);
            }
        }
        Self {
            values: parts,
            tokens,
            k,
        }
    }
}

/// `x` as three bf16 values (bits) that add up to it exactly (for finite `x` whose
/// parts are not subnormal, which the tiles read as zero: `|x|` above about 1e-33).
#[inline]
fn split(x: f32) -> [u16; 3] {
    let high = |v: f32| f32::from_bits(v.to_bits() & 0xffff_0000);
    let h = high(x);
    let rest = x - h; // exact: the low 16 bits of x's significand
    let m = high(rest);
    let l = rest - m; // exact, and at most 8 significant bits: a bf16
    [h, m, l].map(|v| (v.to_bits() >> 16) as u16)
}

/// `out[t * rows + r] = x[t] · w[r]` for every token of `x` and each of the `rows`
/// weight rows held in `groups` (whole groups of [`group_bytes`]), as the module
/// describes.
///
/// # Panics
/// If AMX is not [`available`] or the lengths disagree.
pub(crate) fn dots(x: &Parts, groups: &[u8], rows: usize, out: &mut [f32]) {
    assert!(available(), "AMX tiles are not available");
    let k = padded_k(x.k);
    assert_eq!(
        groups.len(),
        rows.div_ceil(GROUP_ROWS) * group_bytes(x.k),
        "weights are {rows} rows of {} in groups",
        x.k
    );
    assert_eq!(
        out.len(),
        rows * x.tokens,
        "the output is [{}, {rows}]",
        x.tokens
    );
    assert_eq!(x.values.len(), 3 * x.tokens * k);
    if rows == 0 || x.tokens == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Each group's 32 columns of sums for every part row.
        let rows_of_parts = 3 * x.tokens;
        let mut sums = vec![0.0f32; rows_of_parts * GROUP_ROWS];
        for (g, group) in groups.chunks_exact(group_bytes(x.k)).enumerate() {
            // SAFETY: available(); `group` is k / 32 steps of two weight tiles, the
            // parts `3 · tokens` rows of `k`, `sums` as many rows of 32.
            unsafe { tiles::group_sums(&x.values, rows_of_parts, k, group, &mut sums) };
            let first = g * GROUP_ROWS;
            let n = GROUP_ROWS.min(rows - first);
            let t = x.tokens;
            for token in 0..t {
                let (h, m, l) = (
                    &sums[token * GROUP_ROWS..][..n],
                    &sums[(t + token) * GROUP_ROWS..][..n],
                    &sums[(2 * t + token) * GROUP_ROWS..][..n],
                );
                let out = &mut out[token * rows + first..][..n];
                for (((o, &h), &m), &l) in out.iter_mut().zip(h).zip(m).zip(l) {
                    *o = (h + m) + l;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use std::arch::asm;

    use super::{GROUP_ROWS, TILE_BYTES, TILE_K, TILE_ROWS};

    /// How far ahead of the step being multiplied the weights are prefetched: one step
    /// (measured, Qwen3-0.6B's shape in bf16, new tokens/s decoding 1 / 8 sequences:
    /// 19.0 / 93.1 at 2 KB, 18.4 / 85.4 at 4 KB, 18.1 / 87.6 at 8 KB; without, 13.7 /
    /// 79.2, against 18.4 / 92.1 through the AVX-512 kernels).
    const PREFETCH_AHEAD: usize = 2 * TILE_BYTES;

    /// A tile configuration (`ldtilecfg`'s 64 bytes, palette 1): registers 0-1 the
    /// sums of the block's first activation tile, 2-3 of its second, 4-5 those tiles
    /// (as many rows as they hold: a decoding token's three parts are three rows, not
    /// sixteen), 6-7 weights; every row 64 bytes.
    #[repr(C, align(64))]
    struct Config {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        bytes_per_row: [u16; 16],
        rows: [u8; 16],
    }

    impl Config {
        /// For a block of `first` and `second` (0: none) activation rows.
        fn new(first: usize, second: usize) -> Self {
            let (first, second) = (first as u8, second as u8);
            let rows = [first, first, second, second, first, second, 16, 16];
            let mut config = Self {
                palette: 1,
                start_row: 0,
                reserved: [0; 14],
                bytes_per_row: [0; 16],
                rows: [0; 16],
            };
            for (i, &r) in rows.iter().enumerate() {
                config.rows[i] = r;
                config.bytes_per_row[i] = if r > 0 { 64 } else { 0 };
            }
            config
        }
    }

    /// `sums[p * 32 + j]` = part row `p` · weight row `j` of `group`, for every part row.
    ///
    /// # Safety
    /// AMX is available to this process; `parts` holds `rows` rows of `k` (a multiple
    /// of 32) bf16 values, `group` `k / 32` steps of two weight tiles, `sums` `rows × 32`
    /// values.
    pub(super) unsafe fn group_sums(
        parts: &[u16],
        rows: usize,
        k: usize,
        group: &[u8],
        sums: &mut [f32],
    ) {
        debug_assert!(k.is_multiple_of(TILE_K));
        debug_assert!(parts.len() >= rows * k && sums.len() >= rows * GROUP_ROWS);
        debug_assert_eq!(group.len(), k / TILE_K * 2 * TILE_BYTES);
        let part_stride = 2 * k;
        let sum_stride = 4 * GROUP_ROWS;
        // SAFETY (every block below): the tiles read and write inside the slices, as the
        // function's contract says; the tile registers are used by no compiled code.
        unsafe {
            let mut loaded = (0, 0);
            for block in (0..rows).step_by(2 * TILE_ROWS) {
                let first = TILE_ROWS.min(rows - block);
                let second = TILE_ROWS.min(rows - block - first);
                let two = second > 0;
                if (first, second) != loaded {
                    let config = Config::new(first, second);
                    asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly));
                    loaded = (first, second);
                }
                asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
                if two {
                    asm!("tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                }
                let part_rows = parts.as_ptr().add(block * k);
                for step in 0..k / TILE_K {
                    let weights = group.as_ptr().add(step * 2 * TILE_BYTES);
                    if block == 0 {
                        // The first block reads the group from memory: the hardware
                        // prefetcher alone leaves the tile loads waiting.
                        let next = weights.wrapping_add(PREFETCH_AHEAD);
                        for line in (0..2 * TILE_BYTES).step_by(64) {
                            asm!(
                                "prefetcht0 [{}]",
                                in(reg) next.wrapping_add(line),
                                options(nostack, readonly, preserves_flags)
                            );
                        }
                    }
                    let a0 = part_rows.add(step * TILE_K);
                    // Each load just before the first product that needs it: the tiles
                    // are not renamed, so a load waits for the products still reading
                    // its register (measured in C, 36 tokens, weights read from memory:
                    // 10% faster than four loads, then four products). The registers
                    // keep their values from one `asm!` to the next.
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        a0 = in(reg) a0,
                        b0 = in(reg) weights,
                        b1 = in(reg) weights.add(TILE_BYTES),
                        sa = in(reg) part_stride,
                        sb = in(reg) 64usize,
                        options(nostack, readonly),
                    );
                    if two {
                        asm!(
                            "tileloadd tmm5, [{a1} + {sa}*1]",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            a1 = in(reg) a0.add(TILE_ROWS * k),
                            sa = in(reg) part_stride,
                            options(nostack, readonly),
                        );
                    }
                }
                let out = sums.as_mut_ptr().add(block * GROUP_ROWS);
                asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    c0 = in(reg) out,
                    c1 = in(reg) out.add(TILE_ROWS),
                    s = in(reg) sum_stride,
                    options(nostack),
                );
                if two {
                    asm!(
                        "tilestored [{c2} + {s}*1], tmm2",
                        "tilestored [{c3} + {s}*1], tmm3",
                        c2 = in(reg) out.add(TILE_ROWS * GROUP_ROWS),
                        c3 = in(reg) out.add(TILE_ROWS * GROUP_ROWS + TILE_ROWS),
                        s = in(reg) sum_stride,
                        options(nostack),
                    );
                }
            }
            asm!("tilerelease", options(nostack, nomem));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Magnitudes over six decades, both signs.
                let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
                let scale = 10f32.powi((state % 7) as i32 - 3);
                (unit - 0.5) * scale
            })
            .collect()
    }

    fn bf16_bits(v: f32) -> u16 {
        half::bf16::from_f32(v).to_bits()
    }

    fn widen(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }

    /// `rows` rows of `k` bf16 weights in groups.
    fn groups(weights: &[u16], rows: usize, k: usize) -> Vec<u8> {
        let mut out = vec![0u8; rows.div_ceil(GROUP_ROWS) * group_bytes(k)];
        for r in 0..rows {
            let group = &mut out[r / GROUP_ROWS * group_bytes(k)..][..group_bytes(k)];
            for c in 0..k {
                put(group, r % GROUP_ROWS, c, weights[r * k + c]);
            }
        }
        out
    }

    fn tile_dots(x: &[f32], tokens: usize, weights: &[u16], rows: usize, k: usize) -> Vec<f32> {
        let mut out = vec![0.0; tokens * rows];
        dots(
            &Parts::new(x, tokens, k),
            &groups(weights, rows, k),
            rows,
            &mut out,
        );
        out
    }

    #[test]
    fn the_parts_add_up_to_each_activation_exactly() {
        let mut cases = values(10_000, 1);
        cases.extend([
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN,
            1e-30,
            -3.0e38,
            0.1,
            1.0 / 3.0,
        ]);
        for x in cases {
            let [h, m, l] = split(x).map(widen);
            assert_eq!(
                f64::from(h) + f64::from(m) + f64::from(l),
                f64::from(x),
                "{x:e}"
            );
            assert_eq!((h + m) + l, x, "{x:e}");
        }
    }

    #[test]
    fn a_value_is_stored_where_the_tiles_read_it() {
        let k = 70; // 3 steps, the last padded
        let mut group = vec![0u8; group_bytes(k)];
        for r in 0..GROUP_ROWS {
            for c in 0..k {
                put(&mut group, r, c, (r * 1000 + c) as u16);
            }
        }
        for r in 0..GROUP_ROWS {
            for c in 0..k {
                assert_eq!(get(&group, r, c), (r * 1000 + c) as u16);
            }
        }
        // Row 17's values 34 and 35 are the second tile of step 1, its row 1, their
        // pair's place 1.
        let at = (TILE_BYTES * 3 + 64 + 4) / 2;
        assert_eq!(index(17, 34), at);
        assert_eq!(index(17, 35), at + 1);
    }

    #[test]
    fn tile_products_equal_the_exact_products_within_f32_sums() {
        if !available() {
            eprintln!("skipped: no AMX tiles on this CPU");
            return;
        }
        for (tokens, rows, k) in [
            (1, 1, 1),
            (1, 40, 100),
            (5, 33, 64),
            (6, 64, 1024),
            (11, 70, 333),
        ] {
            let x = values(tokens * k, 2);
            let w: Vec<u16> = values(rows * k, 3).into_iter().map(bf16_bits).collect();
            let out = tile_dots(&x, tokens, &w, rows, k);
            for t in 0..tokens {
                for r in 0..rows {
                    let (mut exact, mut magnitude) = (0.0f64, 0.0f64);
                    for c in 0..k {
                        let p = f64::from(widen(w[r * k + c])) * f64::from(x[t * k + c]);
                        exact += p;
                        magnitude += p.abs();
                    }
                    // Three f32 sums of k terms, then two additions.
                    let bound = (k as f64 + 3.0) * f64::from(f32::EPSILON) * magnitude;
                    let got = f64::from(out[t * rows + r]);
                    assert!(
                        (got - exact).abs() <= bound,
                        "{tokens} x {rows} x {k}, [{t}, {r}]: {got} against {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn each_output_is_the_same_bits_in_any_batch_and_group() {
        if !available() {
            eprintln!("skipped: no AMX tiles on this CPU");
            return;
        }
        let (tokens, rows, k) = (40, 70, 200);
        let x = values(tokens * k, 4);
        let w: Vec<u16> = values(rows * k, 5).into_iter().map(bf16_bits).collect();
        let all = tile_dots(&x, tokens, &w, rows, k);
        for t in [0, 5, 17, 39] {
            let alone = tile_dots(&x[t * k..(t + 1) * k], 1, &w, rows, k);
            assert_eq!(alone, &all[t * rows..(t + 1) * rows], "token {t} alone");
            for r in [0, 31, 32, 69] {
                let one = tile_dots(&x[t * k..(t + 1) * k], 1, &w[r * k..(r + 1) * k], 1, k);
                assert_eq!(one[0].to_bits(), all[t * rows + r].to_bits(), "[{t}, {r}]");
            }
        }
    }
}
