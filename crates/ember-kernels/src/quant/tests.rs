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
