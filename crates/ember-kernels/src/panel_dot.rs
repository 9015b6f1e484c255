//! Dot products of activations with rows of packed weights (bf16, f16, Q8_0, Q4_0 or
//! Q4_K),
//! a block of tokens against a block of rows at a time, each output the same arithmetic
//! in every block; and the layouts of the weights that let decoding read them as one
//! stream.
//!
//! Decoding one token reads each weight once: memory-bound, so fewer bytes per weight is
//! what goes faster, as long as the arithmetic per weight keeps up. A server decoding
//! several sequences at once reads each weight once for all of them, and then the
//! arithmetic decides the speed: a weight loaded into a register should serve several
//! tokens, and a token's activations several rows. That is what a blocked matrix product
//! does; what it usually does not do is keep each output's rounding independent of the
//! block: `gemm` picks its method by shape. Here every output `x[t] · w[r]` is, in
//! whatever block it is computed, the same sequence of operations, so a token's result
//! has the same bits decoded alone or beside fifteen others, which is what makes a
//! server's batches invariant ([`crate::rows`]), and the same on AVX2 and AVX-512
//! machines:
//!
//! - **bf16, f16**: the weights widened to f32 (exactly), the activations f32; eight
//!   accumulator lanes, lane `i` summing `w[8j + i] * x[8j + i]` over `j` in order (fused
//!   on CPUs with FMA), the lanes added pairwise (`i + 4`, then `i + 2`, then `i + 1`),
//!   then the last `k mod 8` products added one by one.
//! - **bf16 under bf16 autocast** (`serve --precision bf16`): the activations rounded to
//!   bf16 (in `packed_weights`), then on AVX512_BF16 `vdpbf16ps` (`avx512_bf16.rs`):
//!   each 32-bit lane sums pairs of consecutive products, four lanes per row added
//!   pairwise at the end; elsewhere the f32 kernels above multiply the rounded values.
//! - **Q8_0, Q4_0**: as llama.cpp computes them, the activations quantized too, each
//!   token's 32-value blocks to Q8_0 (`d_x · q_x`, as its reference quantizer does), and
//!   each block's product of integers summed exactly in eight 32-bit lanes (lane `i`:
//!   values `4i..4i + 4`; AVX2's `maddubs`/`madd`), each lane converted to f32 and
//!   added, times `d_w · d_x`, into eight f32 lanes block after block (fused), then the
//!   lanes added pairwise. Widening every weight to f32 instead costs three
//!   instructions per eight weights more than the memory saves (measured: Q4_0 decoded
//!   no faster than Q8_0); the integer products do 32 at a time. Q4_0's codes `c` are
//!   multiplied as they are, unsigned, and `8 · Σ q_x` of each lane, computed once per
//!   token, taken off: `Σ (c - 8) q_x` exactly, two instructions fewer per block.
//! - **Q4_K**: as llama.cpp computes it, the activations quantized per 256 values (its
//!   Q8_K: one f32 scale `d_x` per super-block), and in each lane the codes' products
//!   with them, times each sub-block's 6-bit scale, summed over the super-block in 32
//!   bits (exact); that sum times `d_w · d_x` added into the f32 lanes (fused); then the
//!   minimums' part taken off the same lanes, lane `j` holding sub-block `j`'s
//!   `m_j · Σ q_x` (exact; the sub-blocks' `Σ q_x` computed once per token) times
//!   `dmin · d_x` (fused).
//!
//! **Panels.** A block reads [`PANEL_ROWS`] rows at once. Stored row after row, those
//! would be four memory streams 2-6 KB long each, which the hardware prefetcher follows
//! late (measured: a decoding step 12% slower than one row at a time). So a matrix is
//! stored in panels of four rows, each one contiguous stream in the order the kernel
//! reads it (the last panel padded with zero rows):
//! - bf16, f16: eight values of row 0, eight of row 1, of row 2, of row 3, then each
//!   row's next eight, ... (each row padded with zeros to a multiple of eight);
//! - Q8_0, Q4_0 (rows of whole 32-value blocks, GGUF's): per block of the four rows,
//!   their four f16 scales, then the values: for Q8_0 each row's 32 signed bytes; for
//!   Q4_0 two pairs of rows, 32 bytes each, byte `i` holding value `i` of the pair's
//!   first row in its low nibble and of its second row in its high one, as 4-bit codes
//!   `q + 8` (a mask, or a shift and a mask, of one load gives a row's 32 codes in
//!   order);
//! - Q4_K (rows of whole 256-value super-blocks): per super-block, the four rows'
//!   GGUF blocks one after the other (144 bytes each).
//!
//! Blocks are 2 tokens × 4 rows (8 accumulators: no spills in AVX2's 16 registers) and
//! 1 token × 4 rows. With 16-bit weights and [`WIDEN_FROM_TOKENS`] tokens or more (a
//! prompt's chunk, a server's batch), `k` is taken in chunks of 256: each panel's chunk
//! widened to f32 once (not once per block of tokens), then 3 tokens × 4 rows of f32
//! products at a time, each output's lanes carried from chunk to chunk, the chunks of
//! the activations and of the panel staying in cache (the same values, the same
//! arithmetic per output, so the same bits). On AVX-512, 16-bit weights take
//! [`avx512`]'s blocks of 8 tokens × 4 rows, the same arithmetic at twice the width.
//!
//! Every product of packed weights takes these dot products, prompts too: measured on
//! a Xeon with AVX-512, they read a Qwen3-0.6B-shape prompt 1.3x (1,024 tokens) to 4.5x
//! (16 tokens) faster than converting the weights to f32 for `gemm` did. Except bf16
//! weights on CPUs with AMX: those are stored in tiles and multiplied there
//! ([`crate::amx`]; the same invariance, other bits).

use crate::packed_weights::WeightFormat;
use crate::quant::{
    BLOCK_SIZE, BlockQ4_K, BlockQ8_0, QuantBlock, SUB_BLOCK, SUB_BLOCKS, SUPER_BLOCK,
};

/// Tokens from which the AVX2 kernel widens each chunk of 16-bit weights to f32 once
/// instead of in every block (AVX-512's blocks of 8 tokens never do: [`avx512`]). Below
/// it (a server's decoding steps, up to 15 sequences) the weights are read once per pass
/// as one stream and memory decides: measured on Zen 3, 8 sequences decoded 10-25%
/// slower through the widened chunks, while prompts were read 1.1-1.3x faster.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const WIDEN_FROM_TOKENS: usize = 16;

/// Accumulator lanes of every dot product (one AVX2 vector of f32), and the values of a
/// 16-bit row stored together in a panel.
pub(crate) const LANES: usize = 8;

/// Rows per panel (and per block).
pub(crate) const PANEL_ROWS: usize = 4;

/// Bytes of the four f16 scales that begin each block of a quantized panel.
const SCALE_BYTES: usize = 2 * PANEL_ROWS;

/// Bytes of one block of a quantized panel: the scales, then the values (a byte per
/// value for Q8_0, half a byte for Q4_0).
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
        WeightFormat::Q4_K => k / SUPER_BLOCK * PANEL_ROWS * BlockQ4_K::BYTES,
    }
}

/// Where row `r`'s super-block `s` is in a Q4_K panel.
#[inline]
fn super_block_offset(r: usize, s: usize) -> usize {
    (s * PANEL_ROWS + r) * BlockQ4_K::BYTES
}

/// Writes super-block `s` of row `r` of a Q4_K panel.
pub(crate) fn put_super_block(panel: &mut [u8], r: usize, s: usize, block: &BlockQ4_K) {
    block.write_bytes(&mut panel[super_block_offset(r, s)..][..BlockQ4_K::BYTES]);
}

/// Super-block `s` of row `r` of a Q4_K panel.
pub(crate) fn super_block(panel: &[u8], r: usize, s: usize) -> BlockQ4_K {
    BlockQ4_K::read_bytes(&panel[super_block_offset(r, s)..][..BlockQ4_K::BYTES])
}

/// Where, in a half-precision panel, value `c` of the panel's row `r` is (in bytes).
#[inline]
fn half_offset(r: usize, c: usize) -> usize {
    2 * (((c / LANES) * PANEL_ROWS + r) * LANES + c % LANES)
}

/// Where the f16 scale of row `r`'s block `b` is in a quantized panel.
#[inline]
fn scale_offset(format: WeightFormat, r: usize, b: usize) -> usize {
    b * block_group_bytes(format) + 2 * r
}

/// Where the values of row `r`'s block `b` are in a quantized panel (32 bytes; for
/// Q4_0 shared with the other row of its pair, `r` in the high nibbles when odd).
#[inline]
fn values_offset(format: WeightFormat, r: usize, b: usize) -> usize {
    let row = match format {
        WeightFormat::Q4_0 => r / 2,
        _ => r,
    };
    b * block_group_bytes(format) + SCALE_BYTES + row * BLOCK_SIZE
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
    let at = values_offset(format, r, b);
    let out = &mut panel[at..at + BLOCK_SIZE];
    for (byte, &q) in out.iter_mut().zip(values) {
        *byte = match format {
            WeightFormat::Q4_0 if r % 2 == 1 => (*byte & 0x0F) | (((q + 8) as u8) << 4),
            WeightFormat::Q4_0 => (*byte & 0xF0) | (q + 8) as u8,
            _ => q as u8,
        };
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
    let bytes = &panel[values_offset(format, r, b)..][..BLOCK_SIZE];
    let values = std::array::from_fn(|i| match format {
        WeightFormat::Q4_0 if r % 2 == 1 => (bytes[i] >> 4) as i8 - 8,
        WeightFormat::Q4_0 => (bytes[i] & 0x0F) as i8 - 8,
        _ => bytes[i] as i8,
    });
    (scale, values)
}

/// Vector `v` (values `8v..8v + 8`, zeros past the row's end) of row `r` of a bf16
/// or f16 panel, widened to f32.
pub(crate) fn half_vector(format: WeightFormat, panel: &[u8], r: usize, v: usize) -> [f32; LANES] {
    let at = half_offset(r, v * LANES);
    std::array::from_fn(|i| {
        let bits = u16::from_le_bytes([panel[at + 2 * i], panel[at + 2 * i + 1]]);
        widen_half(format, bits)
    })
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

/// `tokens` rows of activations (`[tokens, k]`) as the products of a format take them:
/// f32, for Q8_0 and Q4_0 each token's blocks of 32 quantized to Q8_0, for Q4_K each
/// token's blocks of 256 quantized to Q8_K.
pub(crate) struct Activations<'a> {
    /// The values.
    pub values: &'a [f32],
    /// Rows.
    pub tokens: usize,
    /// Values per row.
    pub k: usize,
    /// For quantized weights: the integers of every block, `[tokens, k]`.
    ints: Vec<i8>,
    /// ... each block's scale (as f32), `[tokens, k / block]`,
    scales: Vec<f32>,
    /// ... and sums of the integers: for Q4_0 `8 · Σ q` over each of a block's eight
    /// lanes (values `4i..4i + 4`), what Q4_0's offset of 8 takes off a product of codes,
    /// `[tokens, k / 32, LANES]`; for Q4_K `Σ q` over each sub-block of 32, what the
    /// minimums multiply, `[tokens, k / 32]`.
    sums: Vec<i32>,
    /// For bf16 products ([`Activations::in_bf16`]): `values` as bf16 bits, `[tokens,
    /// k]` (empty otherwise).
    bf16: Vec<u16>,
}

/// Values per quantized block of activations for weights in `format` (0: f32).
fn activation_block(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Bf16 | WeightFormat::F16 => 0,
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => BLOCK_SIZE,
        WeightFormat::Q4_K => SUPER_BLOCK,
    }
}

/// ggml's `quantize_row_q8_K_ref` for one super-block: the scale and the integers
/// (`iscale = -127 / max` of the value of largest magnitude, signed; `q = min(127,
/// nearest(iscale · x))`, ties to even; the scale `1 / iscale`).
fn quantize_q8_k(values: &[f32], ints: &mut Vec<i8>) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in values {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        ints.extend(std::iter::repeat_n(0, values.len()));
        return 0.0;
    }
    let iscale = -127.0 / max;
    ints.extend(
        values
            .iter()
            .map(|&v| ((iscale * v).round_ties_even() as i32).min(127) as i8),
    );
    1.0 / iscale
}

impl<'a> Activations<'a> {
    /// `values` (`[tokens, k]`) for products with weights in `format`.
    pub(crate) fn new(format: WeightFormat, values: &'a [f32], tokens: usize, k: usize) -> Self {
        assert_eq!(values.len(), tokens * k, "activations are [{tokens}, {k}]");
        let (mut ints, mut scales, mut sums) = (Vec::new(), Vec::new(), Vec::new());
        let block = activation_block(format);
        if block > 0 && k > 0 {
            assert!(
                format.holds_rows_of(k),
                "rows of {k} are not whole {format:?} blocks"
            );
            ints.reserve(values.len());
            scales.reserve(values.len() / block);
            for chunk in values.chunks_exact(block) {
                let first = ints.len();
                if format == WeightFormat::Q4_K {
                    scales.push(quantize_q8_k(chunk, &mut ints));
                } else {
                    let quantized = BlockQ8_0::quantize_block(chunk.try_into().expect("a block"));
                    let (d, q) = quantized.scale_and_ints();
                    scales.push(half::f16::from_bits(d).to_f32());
                    ints.extend_from_slice(&q);
                }
                let q = &ints[first..];
                match format {
                    WeightFormat::Q4_0 => sums.extend(
                        q.chunks_exact(4)
                            .map(|lane| 8 * lane.iter().map(|&v| i32::from(v)).sum::<i32>()),
                    ),
                    WeightFormat::Q4_K => sums.extend(
                        q.chunks_exact(SUB_BLOCK)
                            .map(|sub| sub.iter().map(|&v| i32::from(v)).sum::<i32>()),
                    ),
                    _ => {}
                }
            }
        }
        Self {
            values,
            tokens,
            k,
            ints,
            scales,
            sums,
            bf16: Vec::new(),
        }
    }

    /// For the products of bf16 weights under [`crate::autocast`]'s bf16: `values`,
    /// already rounded to bf16, are kept as bits too, for `vdpbf16ps` where the CPU has
    /// it (elsewhere the f32 kernels multiply the rounded values: the same products,
    /// their sums in another order).
    pub(crate) fn in_bf16(mut self) -> Self {
        debug_assert!(
            self.values.iter().all(|v| v.to_bits() & 0xFFFF == 0),
            "activations rounded to bf16"
        );
        self.bf16 = self
            .values
            .iter()
            .map(|v| (v.to_bits() >> 16) as u16)
            .collect();
        self
    }

    /// The values the products compute with: `values`, or the quantized blocks'
    /// `d · q`.
    #[cfg(test)]
    pub(crate) fn dequantized(&self) -> Vec<f32> {
        if self.ints.is_empty() {
            return self.values.to_vec();
        }
        let block = self.k * self.tokens / self.scales.len();
        self.ints
            .iter()
            .enumerate()
            .map(|(i, &q)| f32::from(q) * self.scales[i / block])
            .collect()
    }

    /// The activations of tokens `t0..t0 + n`.
    fn tokens(&self, t0: usize, n: usize) -> TokenRows<'_> {
        let k = self.k;
        let per_token = |len: usize| {
            let each = len / self.tokens.max(1);
            t0 * each..(t0 + n) * each
        };
        TokenRows {
            values: &self.values[t0 * k..(t0 + n) * k],
            ints: &self.ints[per_token(self.ints.len())],
            scales: &self.scales[per_token(self.scales.len())],
            sums: &self.sums[per_token(self.sums.len())],
        }
    }
}

/// Some tokens' rows of [`Activations`].
struct TokenRows<'a> {
    values: &'a [f32],
    ints: &'a [i8],
    scales: &'a [f32],
    sums: &'a [i32],
}

/// `out[t * rows + r] = x[t] · w[r]` for the rows of `x` and of `w`, as the module
/// describes.
pub(crate) fn panel_dots(x: &Activations, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        format,
        panels,
        rows,
        k,
    } = *w;
    let tokens = x.tokens;
    assert_eq!(x.k, k, "activations of {} against rows of {k}", x.k);
    assert!(
        format.holds_rows_of(k),
        "{format:?} rows of {k} values are not whole blocks"
    );
    let quantized = activation_block(format) > 0;
    assert_eq!(
        x.ints.len(),
        if quantized { tokens * k } else { 0 },
        "activations prepared for {format:?}"
    );
    assert_eq!(
        panels.len(),
        rows.div_ceil(PANEL_ROWS) * panel_bytes(format, k),
        "weights are {rows} rows of {k} in panels"
    );
    assert_eq!(out.len(), rows * tokens, "the output is [{tokens}, {rows}]");
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        // SAFETY: the CPU has the instructions of each kernel; the slices' lengths were
        // checked.
        unsafe {
            match format {
                WeightFormat::Bf16 if !x.bf16.is_empty() && avx512_bf16::available() => {
                    avx512_bf16::bf16_dots(&x.bf16, tokens, w, out)
                }
                WeightFormat::Bf16 if avx512::available() => {
                    avx512::half_dots::<true>(x.values, tokens, w, out)
                }
                WeightFormat::F16 if avx512::available() => {
                    avx512::half_dots::<false>(x.values, tokens, w, out)
                }
                _ => x86::panel_dots(x, w, out),
            }
        }
    } else {
        portable(x, w, out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    portable(x, w, out);
    add_tails(x, w, out);
}

/// Adds to every output the products past the last whole vector, one by one (bf16 and
/// f16 only: quantized rows are whole blocks).
fn add_tails(x: &Activations, w: &PanelRows, out: &mut [f32]) {
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
        let tail = half_vector(
            format,
            &panels[r / PANEL_ROWS * panel..][..panel],
            r % PANEL_ROWS,
            full / LANES,
        );
        for t in 0..x.tokens {
            let mut sum = 0.0f32;
            for (&wv, &xv) in tail.iter().zip(&x.values[t * k + full..(t + 1) * k]) {
                sum += wv * xv;
            }
            out[t * rows + r] += sum;
        }
    }
}

/// Without vector instructions: the same order, the integer sums the same, the f32
/// multiply-adds unfused (a fused one is a libm call without the instruction).
fn portable(x: &Activations, w: &PanelRows, out: &mut [f32]) {
    let PanelRows {
        format,
        panels,
        rows,
        k,
    } = *w;
    let tokens = x.tokens;
    let panel = panel_bytes(format, k);
    for r in 0..rows {
        let panel = &panels[r / PANEL_ROWS * panel..][..panel];
        let row = r % PANEL_ROWS;
        for t in 0..tokens {
            let TokenRows {
                values,
                ints,
                scales,
                sums,
            } = x.tokens(t, 1);
            let mut acc = [0.0f32; LANES];
            match format {
                WeightFormat::Bf16 | WeightFormat::F16 => {
                    for v in 0..k / LANES {
                        let w = half_vector(format, panel, row, v);
                        for i in 0..LANES {
                            acc[i] += w[i] * values[v * LANES + i];
                        }
                    }
                }
                WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                    for (b, &d_x) in scales.iter().enumerate() {
                        let (d_w, q_w) = block(format, panel, row, b);
                        let d = half::f16::from_bits(d_w).to_f32() * d_x;
                        let q_x = &ints[b * BLOCK_SIZE..(b + 1) * BLOCK_SIZE];
                        for (i, acc) in acc.iter_mut().enumerate() {
                            let lane: i32 = (4 * i..4 * i + 4)
                                .map(|j| i32::from(q_w[j]) * i32::from(q_x[j]))
                                .sum();
                            *acc += lane as f32 * d;
                        }
                    }
                }
                WeightFormat::Q4_K => {
                    for (s, &d_x) in scales.iter().enumerate() {
                        let block = super_block(panel, row, s);
                        let (sc, m) = block.scales_and_mins();
                        let q_x = &ints[s * SUPER_BLOCK..(s + 1) * SUPER_BLOCK];
                        let mut lanes = [0i32; LANES];
                        for (i, lane) in lanes.iter_mut().enumerate() {
                            for (j, &sc) in sc.iter().enumerate() {
                                let products: i32 = (4 * i..4 * i + 4)
                                    .map(|l| j * SUB_BLOCK + l)
                                    .map(|v| i32::from(block.code(v)) * i32::from(q_x[v]))
                                    .sum();
                                *lane += i32::from(sc) * products;
                            }
                        }
                        let d = half::f16::from_bits(block.d).to_f32() * d_x;
                        for (acc, &lane) in acc.iter_mut().zip(&lanes) {
                            *acc += lane as f32 * d;
                        }
                        let dmin = half::f16::from_bits(block.dmin).to_f32() * d_x;
                        let sub_sums = &sums[s * SUB_BLOCKS..(s + 1) * SUB_BLOCKS];
                        for ((acc, &m), &sum) in acc.iter_mut().zip(&m).zip(sub_sums) {
                            *acc -= (i32::from(m) * sum) as f32 * dmin;
                        }
                    }
                }
            }
            out[t * rows + r] = crate::simd::pairwise_sum(acc);
        }
    }
}

/// For each panel of `w` and each run of up to `B` of the `tokens` tokens, `dots(panel,
/// t0, t, sums)` fills `sums[i][r]` for token `t0 + i` and the panel's row `r`; written
/// to `out[(t0 + i) * rows + row]`, the padding rows left out.
#[cfg(target_arch = "x86_64")]
fn by_blocks<const B: usize>(
    tokens: usize,
    w: &PanelRows,
    out: &mut [f32],
    mut dots: impl FnMut(&[u8], usize, usize, &mut [[f32; PANEL_ROWS]; B]),
) {
    by_panel_groups::<B, 1>(tokens, w, out, |panel, _, t0, t, sums| {
        dots(panel, t0, t, &mut sums[0])
    });
}

/// [`by_blocks`] over up to `P` successive panels at once: `dots(panels, n, t0, t,
/// sums)` fills `sums[p][i][r]` for the `n` panels in `panels` (`P`, the last group
/// fewer), token `t0 + i` and row `r` of panel `p`. Reading several panels side by side
/// is several memory streams at once, which the hardware prefetchers follow further
/// ahead than one.
#[cfg(target_arch = "x86_64")]
fn by_panel_groups<const B: usize, const P: usize>(
    tokens: usize,
    w: &PanelRows,
    out: &mut [f32],
    mut dots: impl FnMut(&[u8], usize, usize, usize, &mut [[[f32; PANEL_ROWS]; B]; P]),
) {
    let mut sums = [[[0.0f32; PANEL_ROWS]; B]; P];
    let bytes = panel_bytes(w.format, w.k).max(1);
    for (g, group) in w.panels.chunks(P * bytes).enumerate() {
        let n = group.len() / bytes;
        let mut t0 = 0;
        while t0 < tokens {
            let t = (tokens - t0).min(B);
            dots(group, n, t0, t, &mut sums);
            for (p, sums) in sums.iter().take(n).enumerate() {
                let first = (g * P + p) * PANEL_ROWS;
                let real = (w.rows - first).min(PANEL_ROWS);
                for (i, sums) in sums.iter().take(t).enumerate() {
                    out[(t0 + i) * w.rows + first..][..real].copy_from_slice(&sums[..real]);
                }
            }
            t0 += t;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx512_bf16;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{
        Activations, BLOCK_SIZE, BlockQ4_K, LANES, PANEL_ROWS, PanelRows, SCALE_BYTES, SUB_BLOCK,
        SUB_BLOCKS, SUPER_BLOCK, TokenRows, WIDEN_FROM_TOKENS, WeightFormat, block_group_bytes,
        panel_bytes,
    };
    use crate::quant::unpack_scale_and_min_words;

    /// `shuffle_epi8` masks that fill a vector with 16-bit word `j` of each half.
    const SCALE_WORDS: [[u8; 32]; SUB_BLOCKS] = {
        let mut masks = [[0u8; 32]; SUB_BLOCKS];
        let mut j = 0;
        while j < SUB_BLOCKS {
            let mut i = 0;
            while i < 32 {
                masks[j][i] = (2 * j + i % 2) as u8;
                i += 1;
            }
            j += 1;
        }
        masks
    };

    /// How far ahead of the block being multiplied the quantized kernel prefetches.
    pub(super) const PREFETCH_BYTES: usize = 1024;

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
    /// The CPU has AVX2, FMA and F16C; `x`, `w` and `out` have the lengths
    /// [`super::panel_dots`] checks.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panel_dots(x: &Activations, w: &PanelRows, out: &mut [f32]) {
        let (format, k, tokens) = (w.format, w.k, x.tokens);
        if matches!(format, WeightFormat::Bf16 | WeightFormat::F16) && tokens >= WIDEN_FROM_TOKENS {
            // SAFETY: as this function's.
            unsafe {
                match format {
                    WeightFormat::Bf16 => widened_dots::<true>(x.values, tokens, w, out),
                    _ => widened_dots::<false>(x.values, tokens, w, out),
                }
            }
            return;
        }
        super::by_blocks::<2>(tokens, w, out, |panel, t0, t, block| {
            let rows_of_x = x.tokens(t0, t);
            let values = rows_of_x.values;
            // SAFETY: the CPU has AVX2, FMA and F16C (as this function's caller
            // promises); the activations hold `t` tokens of `k`, `panel` one panel of `k`
            // in `format`.
            unsafe {
                match (t, format) {
                    (2, WeightFormat::Bf16) => dots::<2, true>(values, panel, k, block),
                    (2, WeightFormat::F16) => dots::<2, false>(values, panel, k, block),
                    (2, WeightFormat::Q8_0) => int_dots::<2, false>(&rows_of_x, panel, k, block),
                    (2, WeightFormat::Q4_0) => int_dots::<2, true>(&rows_of_x, panel, k, block),
                    (_, WeightFormat::Bf16) => dots::<1, true>(values, panel, k, block),
                    (_, WeightFormat::F16) => dots::<1, false>(values, panel, k, block),
                    (_, WeightFormat::Q8_0) => int_dots::<1, false>(&rows_of_x, panel, k, block),
                    (_, WeightFormat::Q4_0) => int_dots::<1, true>(&rows_of_x, panel, k, block),
                    (2, WeightFormat::Q4_K) => q4_k_dots::<2>(&rows_of_x, panel, k, block),
                    (_, WeightFormat::Q4_K) => q4_k_dots::<1>(&rows_of_x, panel, k, block),
                }
            }
        });
    }

    /// The lanes of `a` added pairwise (`crate::simd::pairwise_sum`'s order).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) fn pairwise(a: __m256) -> f32 {
        let four = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
        let one = _mm_add_ss(two, _mm_shuffle_ps::<1>(two, two));
        _mm_cvtss_f32(one)
    }

    /// Eight 16-bit values (bf16 if `BF16`, else f16) from `at`, widened to f32
    /// (exactly).
    ///
    /// # Safety
    /// `at` is followed by 16 readable bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn widen8<const BF16: bool>(at: *const u8) -> __m256 {
        // SAFETY: as the caller promises.
        let bits = unsafe { _mm_loadu_si128(at as *const __m128i) };
        if BF16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        } else {
            _mm256_cvtph_ps(bits)
        }
    }

    /// Values of `k` per chunk of [`widened_dots`].
    const WIDE_CHUNK: usize = 256;

    /// Tokens per block of [`widened_dots`]: 3 tokens × 4 rows, 12 accumulators, 3
    /// activation vectors and a weight vector, AVX2's 16 registers.
    const WIDE_TOKENS: usize = 3;

    /// The whole vectors of every output of 16-bit rows (bf16 if `BF16`, else f16) with
    /// `tokens` tokens, `k` in chunks of [`WIDE_CHUNK`]: for each chunk, each panel's
    /// part widened to f32 (4 KB, in L1 while every token passes over it), then
    /// [`WIDE_TOKENS`] tokens × the panel's rows at a time, each output's eight lanes
    /// carried from chunk to chunk; the chunk of the activations (1 KB a token) is read
    /// again for each panel, from L2 for a few hundred tokens. Each lane is the same
    /// chain of multiply-adds as in [`dots`], so the same bits.
    ///
    /// # Safety
    /// As [`panel_dots`], `w` in bf16 (`BF16`) or f16.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widened_dots<const BF16: bool>(
        x: &[f32],
        tokens: usize,
        w: &PanelRows,
        out: &mut [f32],
    ) {
        let PanelRows {
            format,
            panels,
            rows,
            k,
        } = *w;
        let panel_len = panel_bytes(format, k);
        let vectors = k / LANES;
        let panel_count = rows.div_ceil(PANEL_ROWS);
        // Lanes of output (token t, row r) at [(panel * tokens + t) * PANEL_ROWS + r % 4].
        let mut acc = vec![_mm256_setzero_ps(); panel_count * tokens * PANEL_ROWS];
        let mut wide = [0.0f32; WIDE_CHUNK * PANEL_ROWS];
        let mut v0 = 0;
        while v0 < vectors {
            let n = (vectors - v0).min(WIDE_CHUNK / LANES);
            for p in 0..panel_count {
                let part = &panels[p * panel_len + 2 * v0 * PANEL_ROWS * LANES..];
                for (i, lanes) in wide[..n * PANEL_ROWS * LANES]
                    .chunks_exact_mut(LANES)
                    .enumerate()
                {
                    // The next panel's chunk, a 64-byte line per four vectors (a hint: an
                    // address past the panels is harmless).
                    if i % 4 == 0 {
                        _mm_prefetch::<_MM_HINT_T0>(
                            part.as_ptr().wrapping_add(panel_len + 2 * LANES * i) as *const i8,
                        );
                    }
                    // SAFETY: the panel holds `PANEL_ROWS * vectors` vectors of 16 bytes
                    // from its start; these are vectors `v0 * PANEL_ROWS + i`.
                    unsafe {
                        _mm256_storeu_ps(
                            lanes.as_mut_ptr(),
                            widen8::<BF16>(part.as_ptr().add(2 * LANES * i)),
                        )
                    };
                }
                let acc_p = &mut acc[p * tokens * PANEL_ROWS..][..tokens * PANEL_ROWS];
                let mut t0 = 0;
                while t0 < tokens {
                    let t = (tokens - t0).min(WIDE_TOKENS);
                    let x_t = &x[t0 * k + v0 * LANES..];
                    let acc_t = &mut acc_p[t0 * PANEL_ROWS..][..t * PANEL_ROWS];
                    // SAFETY: `x_t` holds `t` tokens' `n` vectors at strides of `k`, `wide`
                    // `n` vectors of each row.
                    unsafe {
                        match t {
                            3 => wide_block::<3>(x_t, k, &wide, n, acc_t),
                            2 => wide_block::<2>(x_t, k, &wide, n, acc_t),
                            _ => wide_block::<1>(x_t, k, &wide, n, acc_t),
                        }
                    }
                    t0 += t;
                }
            }
            v0 += n;
        }
        for p in 0..panel_count {
            let first = p * PANEL_ROWS;
            let real = (rows - first).min(PANEL_ROWS);
            for t in 0..tokens {
                for r in 0..real {
                    out[t * rows + first + r] = pairwise(acc[(p * tokens + t) * PANEL_ROWS + r]);
                }
            }
        }
    }

    /// `T` tokens' next `n` vectors against a widened chunk of a panel's rows, continuing
    /// their lanes in `acc` (`[T][PANEL_ROWS]`).
    ///
    /// # Safety
    /// `x` holds `T` tokens at strides of `k`, each with `n` vectors from its start;
    /// `wide` `n` vectors of each row, interleaved as in a panel.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn wide_block<const T: usize>(
        x: &[f32],
        k: usize,
        wide: &[f32],
        n: usize,
        acc: &mut [__m256],
    ) {
        let mut a = [[_mm256_setzero_ps(); PANEL_ROWS]; T];
        for (t, a_t) in a.iter_mut().enumerate() {
            a_t.copy_from_slice(&acc[t * PANEL_ROWS..(t + 1) * PANEL_ROWS]);
        }
        let (x, w) = (x.as_ptr(), wide.as_ptr());
        for v in 0..n {
            let mut xv = [_mm256_setzero_ps(); T];
            for (t, xv) in xv.iter_mut().enumerate() {
                // SAFETY: vector `v` of token `t` is at `t * k + v * LANES`.
                *xv = unsafe { _mm256_loadu_ps(x.add(t * k + v * LANES)) };
            }
            for r in 0..PANEL_ROWS {
                // SAFETY: vector `v` of row `r` is at `(v * PANEL_ROWS + r) * LANES`.
                let wv = unsafe { _mm256_loadu_ps(w.add((v * PANEL_ROWS + r) * LANES)) };
                for (a_t, &xv) in a.iter_mut().zip(&xv) {
                    a_t[r] = _mm256_fmadd_ps(wv, xv, a_t[r]);
                }
            }
        }
        for (t, a_t) in a.iter().enumerate() {
            acc[t * PANEL_ROWS..(t + 1) * PANEL_ROWS].copy_from_slice(a_t);
        }
    }

    /// `T` tokens × one panel's rows of 16-bit weights over the whole vectors of `k`.
    ///
    /// # Safety
    /// As [`panel_dots`]; `x` holds `T` tokens of `k`, `panel` one panel in bf16 (`BF16`)
    /// or f16.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn dots<const T: usize, const BF16: bool>(
        x: &[f32],
        panel: &[u8],
        k: usize,
        out: &mut [[f32; PANEL_ROWS]; 2],
    ) {
        let mut acc = [[_mm256_setzero_ps(); PANEL_ROWS]; T];
        let (x, w) = (x.as_ptr(), panel.as_ptr());
        for v in 0..k / LANES {
            // One 64-byte line per step: ask for the one PREFETCH_BYTES ahead (a hint:
            // an address past the panel is harmless).
            _mm_prefetch::<_MM_HINT_T0>(
                w.wrapping_add(2 * v * PANEL_ROWS * LANES + PREFETCH_BYTES) as *const i8,
            );
            // SAFETY: the panel holds `PANEL_ROWS` rows of `k.div_ceil(LANES)` vectors
            // of 16-bit values, interleaved.
            let wv: [__m256; PANEL_ROWS] = std::array::from_fn(|r| unsafe {
                widen8::<BF16>(w.add(2 * (v * PANEL_ROWS + r) * LANES))
            });
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
                *o = pairwise(a);
            }
        }
    }

    /// `T` tokens of Q8_0 activations × one panel's rows of Q8_0 or (`Q4`) Q4_0
    /// weights.
    ///
    /// # Safety
    /// As [`panel_dots`]; `x` holds `T` tokens of `k`, `panel` one panel.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn int_dots<const T: usize, const Q4: bool>(
        x: &TokenRows,
        panel: &[u8],
        k: usize,
        out: &mut [[f32; PANEL_ROWS]; 2],
    ) {
        let format = if Q4 {
            WeightFormat::Q4_0
        } else {
            WeightFormat::Q8_0
        };
        let group_bytes = block_group_bytes(format);
        let blocks = k / BLOCK_SIZE;
        let mut acc = [[_mm256_setzero_ps(); PANEL_ROWS]; T];
        let ones = _mm256_set1_epi16(1);
        let low_nibbles = _mm256_set1_epi8(0x0F);
        for b in 0..blocks {
            // SAFETY: the panel holds `blocks` groups of `group_bytes`.
            let group = unsafe { panel.as_ptr().add(b * group_bytes) };
            // The hardware prefetcher alone falls behind the integer products (measured:
            // loads of the weights stalled decoding at 19 GB/s); ask for the lines
            // PREFETCH_BYTES ahead (a hint: an address past the panel is harmless).
            _mm_prefetch::<_MM_HINT_T0>(group.wrapping_add(PREFETCH_BYTES) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(group.wrapping_add(PREFETCH_BYTES + 64) as *const i8);
            // SAFETY: each group begins with four f16 scales.
            let d_w = _mm_cvtph_ps(unsafe { _mm_loadl_epi64(group as *const __m128i) });
            // `d_w · d_x` of each row and token, read back one at a time as broadcasts.
            let mut d = [[0.0f32; PANEL_ROWS]; T];
            let mut q_x = [_mm256_setzero_si256(); T];
            let mut offsets = [_mm256_setzero_si256(); T];
            for t in 0..T {
                // SAFETY: `d[t]` holds four f32.
                unsafe {
                    _mm_storeu_ps(
                        d[t].as_mut_ptr(),
                        _mm_mul_ps(d_w, _mm_set1_ps(x.scales[t * blocks + b])),
                    );
                }
                // SAFETY: token `t`'s block `b` is 32 bytes at `t * k + b * 32`, its lane
                // offsets eight i32 at `(t * blocks + b) * 8`.
                unsafe {
                    q_x[t] = _mm256_loadu_si256(
                        x.ints.as_ptr().add(t * k + b * BLOCK_SIZE) as *const __m256i
                    );
                    if Q4 {
                        offsets[t] = _mm256_loadu_si256(
                            x.sums.as_ptr().add((t * blocks + b) * LANES) as *const __m256i,
                        );
                    }
                }
            }
            // SAFETY: the values follow the scales, 32 bytes per row (Q8_0) or pair of
            // rows (Q4_0).
            let values = unsafe { group.add(SCALE_BYTES) };
            for r in 0..PANEL_ROWS {
                // The row's weights as unsigned bytes: Q4_0's codes, or |w| for Q8_0
                // (`maddubs` multiplies unsigned by signed bytes).
                let (unsigned, w) = if Q4 {
                    // SAFETY: as above.
                    let bytes = unsafe {
                        _mm256_loadu_si256(values.add(r / 2 * BLOCK_SIZE) as *const __m256i)
                    };
                    let codes = if r % 2 == 0 {
                        _mm256_and_si256(bytes, low_nibbles)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low_nibbles)
                    };
                    (codes, codes)
                } else {
                    // SAFETY: as above.
                    let w =
                        unsafe { _mm256_loadu_si256(values.add(r * BLOCK_SIZE) as *const __m256i) };
                    (_mm256_sign_epi8(w, w), w)
                };
                for t in 0..T {
                    // Products of pairs added into 16 bits (at most 2 · 128 · 127: no
                    // saturation), pairs of those into 32 bits by `madd` with ones; for
                    // Q4_0 less 8 · Σ q_x per lane, for Q8_0 q_x taking w's sign.
                    let lanes = if Q4 {
                        let pairs = _mm256_maddubs_epi16(unsigned, q_x[t]);
                        _mm256_sub_epi32(_mm256_madd_epi16(pairs, ones), offsets[t])
                    } else {
                        let pairs = _mm256_maddubs_epi16(unsigned, _mm256_sign_epi8(q_x[t], w));
                        _mm256_madd_epi16(pairs, ones)
                    };
                    let d = _mm256_set1_ps(d[t][r]);
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), d, acc[t][r]);
                }
            }
        }
        for (acc_t, out_t) in acc.iter().zip(out.iter_mut()) {
            for (&a, o) in acc_t.iter().zip(out_t.iter_mut()) {
                *o = pairwise(a);
            }
        }
    }

    /// `T` tokens of Q8_K activations × one panel's rows of Q4_K weights.
    ///
    /// # Safety
    /// As [`panel_dots`]; `x` holds `T` tokens of `k`, `panel` one panel.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    #[allow(clippy::needless_range_loop)] // `r` picks a row's block and accumulators
    unsafe fn q4_k_dots<const T: usize>(
        x: &TokenRows,
        panel: &[u8],
        k: usize,
        out: &mut [[f32; PANEL_ROWS]; 2],
    ) {
        let super_blocks = k / SUPER_BLOCK;
        let group_bytes = PANEL_ROWS * BlockQ4_K::BYTES;
        let mut acc = [[_mm256_setzero_ps(); PANEL_ROWS]; T];
        let low_nibbles = _mm256_set1_epi8(0x0F);
        for s in 0..super_blocks {
            // SAFETY: the panel holds `super_blocks` groups of four rows' blocks.
            let group = unsafe { panel.as_ptr().add(s * group_bytes) };
            for line in (0..group_bytes).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(group.wrapping_add(PREFETCH_BYTES + line) as *const i8);
            }
            for r in 0..PANEL_ROWS {
                // SAFETY: row `r`'s block is 144 bytes from `r * 144`: d, dmin, the
                // packed scales, the codes.
                let (d_w, dmin, packed) = unsafe {
                    let block = group.add(r * BlockQ4_K::BYTES);
                    let halves = (block as *const i32).read_unaligned();
                    let both = _mm_cvtph_ps(_mm_cvtsi32_si128(halves));
                    (
                        _mm_cvtss_f32(both),
                        _mm_cvtss_f32(_mm_shuffle_ps::<1>(both, both)),
                        (block.add(4) as *const [u8; 12]).read_unaligned(),
                    )
                };
                let (sc, m) = unpack_scale_and_min_words(&packed);
                let m = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(m as i64));
                // The eight scales as 16-bit words, in both halves.
                let sc =
                    _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
                let mut sums = [_mm256_setzero_si256(); T];
                for c in 0..SUB_BLOCKS / 2 {
                    // SAFETY: chunk `c` of the codes is 32 bytes from byte 16 + 32c.
                    let codes = unsafe {
                        _mm256_loadu_si256(
                            group.add(r * BlockQ4_K::BYTES + 16 + c * SUB_BLOCK) as *const __m256i
                        )
                    };
                    let low = _mm256_and_si256(codes, low_nibbles);
                    let high = _mm256_and_si256(_mm256_srli_epi16::<4>(codes), low_nibbles);
                    // SAFETY: `SCALE_WORDS` holds a mask per sub-block.
                    let (sc_low, sc_high) = unsafe {
                        (
                            _mm256_shuffle_epi8(
                                sc,
                                _mm256_loadu_si256(SCALE_WORDS[2 * c].as_ptr() as *const __m256i),
                            ),
                            _mm256_shuffle_epi8(
                                sc,
                                _mm256_loadu_si256(
                                    SCALE_WORDS[2 * c + 1].as_ptr() as *const __m256i
                                ),
                            ),
                        )
                    };
                    for (t, sum) in sums.iter_mut().enumerate() {
                        let at = t * k + s * SUPER_BLOCK + 2 * c * SUB_BLOCK;
                        // SAFETY: token `t`'s sub-blocks 2c and 2c + 1 are 64 bytes at `at`.
                        let (x_low, x_high) = unsafe {
                            let q = x.ints.as_ptr().add(at);
                            (
                                _mm256_loadu_si256(q as *const __m256i),
                                _mm256_loadu_si256(q.add(SUB_BLOCK) as *const __m256i),
                            )
                        };
                        // Codes times q_x in pairs (at most 2 · 15 · 128: no saturation),
                        // pairs of those times the sub-block's scale into 32 bits.
                        let low = _mm256_madd_epi16(_mm256_maddubs_epi16(low, x_low), sc_low);
                        let high = _mm256_madd_epi16(_mm256_maddubs_epi16(high, x_high), sc_high);
                        *sum = _mm256_add_epi32(*sum, _mm256_add_epi32(low, high));
                    }
                }
                for t in 0..T {
                    // SAFETY: token `t` has `super_blocks` scales, and `super_blocks`
                    // super-blocks of eight sums.
                    let (d_x, sub_sums) = unsafe {
                        let at = t * super_blocks + s;
                        (
                            *x.scales.get_unchecked(at),
                            _mm256_loadu_si256(
                                x.sums.as_ptr().add(at * SUB_BLOCKS) as *const __m256i
                            ),
                        )
                    };
                    let d = _mm256_set1_ps(d_w * d_x);
                    acc[t][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[t]), d, acc[t][r]);
                    let mins = _mm256_cvtepi32_ps(_mm256_mullo_epi32(m, sub_sums));
                    acc[t][r] = _mm256_fnmadd_ps(mins, _mm256_set1_ps(dmin * d_x), acc[t][r]);
                }
            }
        }
        for (acc_t, out_t) in acc.iter().zip(out.iter_mut()) {
            for (&a, o) in acc_t.iter().zip(out_t.iter_mut()) {
                *o = pairwise(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed_weights::PackedMatrix;

    const FORMATS: [WeightFormat; 5] = WeightFormat::ALL;

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
        let [rows, k] = w.dims();
        let mut out = vec![f32::NAN; rows * tokens];
        let x = Activations::new(w.format(), x, tokens, k);
        panel_dots(&x, &w.panel_rows(0..rows), &mut out);
        out
    }

    /// Inner sizes with and without a tail for the 16-bit formats, whole blocks for the
    /// quantized ones.
    fn inner(format: WeightFormat, k: usize) -> usize {
        let block = activation_block(format).max(1);
        k.div_ceil(block) * block
    }

    /// Every output equals the exact product of the packed (rounded or quantized)
    /// weights with the activations as the format computes with them (f32, or for the
    /// quantized formats quantized to Q8_0 as llama.cpp does), within f32's rounding of
    /// a sum of `k` terms; and for the quantized formats the activations' rounding moves
    /// it no more than half a step of each block. For every block shape and its
    /// remainders, a last panel full and not, every format; on the vector path and the
    /// portable one.
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
                let w = PackedMatrix::in_panels(format, rows, k, &w_values);
                let packed = w.to_f32();
                let x_computed = Activations::new(format, &x, tokens, k).dequantized();
                let mut slow = vec![0.0; rows * tokens];
                let panels = w.panel_rows(0..rows);
                let activations = Activations::new(format, &x, tokens, k);
                portable(&activations, &panels, &mut slow);
                add_tails(&activations, &panels, &mut slow);
                for (name, got) in [("vector", dots(&x, tokens, &w)), ("portable", slow)] {
                    for r in 0..rows {
                        for t in 0..tokens {
                            let dot = |x: &[f32]| -> f64 {
                                (0..k)
                                    .map(|c| packed[r * k + c] as f64 * x[t * k + c] as f64)
                                    .sum()
                            };
                            let exact = dot(&x_computed);
                            let got = got[t * rows + r] as f64;
                            assert!(
                                (got - exact).abs() <= 1e-5 * (k as f64).sqrt(),
                                "{name} {format:?} [{tokens}x{k}]·[{rows}x{k}]ᵀ at ({t}, {r}): {got} vs {exact}"
                            );
                            let unquantized = dot(&x);
                            // Half a step of |x|'s largest in each block (1/127 of it).
                            let quantized = x_computed != x;
                            let n = activation_block(format);
                            let moved: f64 = (0..k)
                                .filter(|_| quantized)
                                .map(|c| {
                                    let block = &x[t * k + c / n * n..][..n];
                                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                                    (packed[r * k + c] as f64).abs() * amax as f64 / 254.0
                                })
                                .sum();
                            assert!(
                                (got - unquantized).abs()
                                    <= moved * 1.01 + 1e-5 * (k as f64).sqrt(),
                                "{name} {format:?} at ({t}, {r}): {got} vs {unquantized}"
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
                    // for Q4_0 a whole step: its codes reach 8 steps below zero, 7 above;
                    // for Q4_K a step of a sub-block's range (2 / 15), which the fit
                    // may trade for a smaller error elsewhere.
                    let bound = match format {
                        WeightFormat::Bf16 => 2f32.powi(-9),
                        WeightFormat::F16 => 2f32.powi(-12),
                        WeightFormat::Q8_0 => (0.5 + 127.0 / 2048.0) / 127.0,
                        WeightFormat::Q4_0 => (1.0 + 8.0 / 2048.0) / 8.0,
                        WeightFormat::Q4_K => 2.0 / 15.0,
                    };
                    assert!(worst <= bound, "{format:?}: off by {worst}");
                }
            }
        }
    }

    /// On a CPU with AVX-512, its 16-bit products have the bits of AVX2's, in blocks of
    /// every size either takes (1 to 15 tokens, and widened from 16), over rows with a
    /// last panel short and `k` with a tail.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_and_avx2_give_the_same_bits() {
        if !avx512::available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for format in [WeightFormat::Bf16, WeightFormat::F16] {
            for tokens in [1, 2, 3, 7, 8, 9, 15, 16, 17, 25] {
                let (rows, k) = (13, 603);
                let x = values(tokens * k, 5);
                let w = PackedMatrix::in_panels(format, rows, k, &values(rows * k, 6));
                let fast = dots(&x, tokens, &w);
                let mut avx2 = vec![f32::NAN; rows * tokens];
                let (activations, panels) = (
                    Activations::new(format, &x, tokens, k),
                    w.panel_rows(0..rows),
                );
                // SAFETY: the CPU has AVX-512, so AVX2, FMA and F16C; the lengths match.
                unsafe { x86::panel_dots(&activations, &panels, &mut avx2) };
                add_tails(&activations, &panels, &mut avx2);
                for (i, (a, b)) in fast.iter().zip(&avx2).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{format:?} {tokens} tokens, output {i}"
                    );
                }
            }
        }
    }

    /// A token's outputs have the same bits whatever tokens and rows it is computed
    /// with: alone against one row, or in a block of 17 tokens against 29 rows (for the
    /// 16-bit formats the widened products, over three chunks of `k`, the last short,
    /// and a last block of 2 tokens).
    #[test]
    fn each_output_is_the_same_bits_in_any_block() {
        for format in FORMATS {
            let (tokens, rows, k) = (17, 29, inner(format, 603));
            let x = values(tokens * k, 3);
            let w_values = values(rows * k, 4);
            let all = dots(
                &x,
                tokens,
                &PackedMatrix::in_panels(format, rows, k, &w_values),
            );
            for t in 0..tokens {
                let x_t = &x[t * k..(t + 1) * k];
                for r in 0..rows {
                    let row = PackedMatrix::in_panels(format, 1, k, &w_values[r * k..(r + 1) * k]);
                    let alone = dots(x_t, 1, &row);
                    assert_eq!(
                        all[t * rows + r].to_bits(),
                        alone[0].to_bits(),
                        "{format:?} token {t} row {r}"
                    );
                }
            }
        }
    }
}
