use super::*;

/// The f32 values and the GGUF bytes the `gguf` Python package made of them
/// (scripts/reference/quant_reference.py).
fn fixture(name: &str) -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/quant/");
    std::fs::read(format!("{path}{name}")).unwrap()
}

fn values() -> Vec<f32> {
    fixture("values.f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Quantizing gives llama.cpp's bytes, and reading them back gives the same blocks.
fn quantizes_as_ggml<B: QuantBlock + PartialEq + std::fmt::Debug>(golden: &str) {
    let values = values();
    let blocks = B::quantize_row(&values).unwrap();
    let want = fixture(golden);
    let got = B::to_bytes(&blocks);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got
        .chunks_exact(B::BYTES)
        .zip(want.chunks_exact(B::BYTES))
        .enumerate()
    {
        assert_eq!(
            g,
            w,
            "{golden}: block {i} of values {:?}",
            &values[i * 32..i * 32 + 32]
        );
    }
    assert_eq!(B::from_bytes(&want).unwrap(), blocks);
    assert!(B::from_bytes(&want[1..]).is_none());
}

#[test]
fn q8_0_quantizes_as_ggml() {
    quantizes_as_ggml::<BlockQ8_0>("q8_0.bin");
}

#[test]
fn q4_0_quantizes_as_ggml() {
    quantizes_as_ggml::<BlockQ4_0>("q4_0.bin");
}

/// A block's scale and integers are its dequantized values: `d · q`.
fn ints_are_the_dequantized_values<B: QuantBlock>() {
    for block in B::quantize_row(&values()).unwrap() {
        let mut dequantized = [0.0f32; BLOCK_SIZE];
        block.dequantize_block(&mut dequantized);
        let (d, q) = block.scale_and_ints();
        let from_ints = q.map(|q| f32::from(q) * f16_value(d));
        assert_eq!(from_ints, dequantized);
    }
}

#[test]
fn q8_0_ints_are_the_dequantized_values() {
    ints_are_the_dequantized_values::<BlockQ8_0>();
}

#[test]
fn q4_0_ints_are_the_dequantized_values() {
    ints_are_the_dequantized_values::<BlockQ4_0>();
}

/// Dequantized values stay within half a step of the originals (a step being the
/// block's f16 scale), for blocks whose scale is a normal f16 (the fixture's first 24:
/// values of magnitude 1, 0.02 and 3000; at 0.001 the scale is subnormal in f16 and
/// keeps fewer bits).
#[test]
fn q8_0_keeps_each_value_within_half_a_step() {
    let values = values();
    let blocks = BlockQ8_0::quantize_row(&values[..24 * 32]).unwrap();
    let mut back = vec![0.0f32; 24 * 32];
    BlockQ8_0::dequantize_row(&blocks, &mut back);
    for (i, block) in blocks.iter().enumerate() {
        let step = f16_value(block.d);
        for j in i * 32..(i + 1) * 32 {
            // f16's rounding of the scale moves the largest value by up to 127 · 2^-11 steps.
            assert!(
                (back[j] - values[j]).abs() <= step * (0.5 + 127.0 / 2048.0) + 1e-12,
                "value {j}: {} -> {} (step {step})",
                values[j],
                back[j]
            );
        }
    }
}

#[test]
fn rows_must_be_whole_blocks() {
    let err = BlockQ8_0::quantize_row(&[1.0; 33]).unwrap_err();
    assert_eq!(err.to_string(), "33 values are not whole blocks of 32");
    assert!(BlockQ4_0::quantize_row(&[]).unwrap().is_empty());
}

/// Q4_K: llama.cpp's bytes (scripts/reference/q4_k_reference.py ran its
/// `quantize_row_q4_K_ref`), super-block by super-block; read back, the same blocks.
#[test]
fn q4_k_quantizes_as_ggml() {
    let values = values();
    let want = fixture("q4_k.bin");
    assert_eq!(want.len(), values.len() / SUPER_BLOCK * BlockQ4_K::BYTES);
    for (i, (x, w)) in values
        .chunks_exact(SUPER_BLOCK)
        .zip(want.chunks_exact(BlockQ4_K::BYTES))
        .enumerate()
    {
        let block = BlockQ4_K::quantize(x.try_into().unwrap());
        let mut got = [0u8; BlockQ4_K::BYTES];
        block.write_bytes(&mut got);
        assert_eq!(got[..], w[..], "super-block {i}");
        assert_eq!(BlockQ4_K::read_bytes(w), block);
    }
}

/// Q4_K's dequantized values are `d · sc · q - dmin · m`, and on ordinary values (the
/// fixture's first four super-blocks: magnitudes 1, 0.02, 3000 and 0.001) within one
/// step of the originals, where a step is the sub-block's scale `d · sc` (the fit trades
/// a little of the largest value's error for the rest's).
#[test]
fn q4_k_keeps_values_within_a_step_of_their_sub_block() {
    let values = values();
    for x in values.chunks_exact(SUPER_BLOCK).take(4) {
        let block = BlockQ4_K::quantize(x.try_into().unwrap());
        let mut back = [0.0f32; SUPER_BLOCK];
        block.dequantize(&mut back);
        let (sc, m) = block.scales_and_mins();
        for (i, (&v, &b)) in x.iter().zip(&back).enumerate() {
            let j = i / SUB_BLOCK;
            let step = f16_value(block.d) * f32::from(sc[j]);
            let by_hand = step * f32::from(block.code(i)) - f16_value(block.dmin) * f32::from(m[j]);
            assert_eq!(b, by_hand, "value {i}");
            assert!((v - b).abs() <= step, "value {i}: {v} -> {b} (step {step})");
        }
    }
}

/// The word-at-a-time unpacking of Q4_K's scales and minimums is ggml's
/// `get_scale_min_k4`, for every bit pattern of each byte.
#[test]
fn q4_k_scales_unpack_as_get_scale_min_k4() {
    fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
        if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        }
    }
    for seed in 0..4096u32 {
        let q: [u8; 12] = std::array::from_fn(|i| {
            (seed.wrapping_mul(2_654_435_761).rotate_left(i as u32 * 3) >> 8) as u8
                ^ (i as u8).wrapping_mul(37)
        });
        let (sc, m) = q4_k::unpack_scales_and_mins(&q);
        for j in 0..SUB_BLOCKS {
            assert_eq!(
                (sc[j], m[j]),
                get_scale_min_k4(j, &q),
                "{q:?} sub-block {j}"
            );
        }
    }
}

/// Q6_K's values are libggml's `dequantize_row_q6_K` of its blocks, bit for bit (the
/// blocks and values from scripts/reference/q4_k_reference.py).
#[test]
fn q6_k_dequantizes_as_ggml() {
    let bytes = fixture("q6_k.bin");
    let want: Vec<f32> = fixture("q6_k.f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(bytes.len() / BlockQ6_K::BYTES * SUPER_BLOCK, want.len());
    for (i, (block, want)) in bytes
        .chunks_exact(BlockQ6_K::BYTES)
        .zip(want.chunks_exact(SUPER_BLOCK))
        .enumerate()
    {
        let mut got = [0.0f32; SUPER_BLOCK];
        BlockQ6_K::new(block).dequantize(&mut got);
        let same = got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "super-block {i}");
    }
}
