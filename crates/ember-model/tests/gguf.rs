//! GGUF out and in. `export_gguf`: the fixture architectures written as GGUF, read back
//! with Ember's GGUF reader: llama.cpp's tensor names, types and dimensions, the
//! checkpoint's values rearranged as llama.cpp's converter rearranges them (quantized
//! blocks the reference quantizer's), the hyperparameters and the tokenizer in the
//! metadata. `load_model_as` on a `.gguf` file: the model and tokenizer exported, as
//! they were. (`scripts/gguf/interop.sh` reads and writes the same files with the
//! `gguf` Python package; docs/models.md records llama.cpp running them.)
#![allow(deprecated)]

use burn::prelude::*;
use ember_kernels::quant::{BlockQ4_0, QuantBlock};
use ember_model::gguf::names::{Rearrange, rearrange};
use ember_model::gguf::{GgmlType, GgufFile, Value, export_gguf};
use ember_model::weights::{SafetensorsFiles, TensorSource};
use ember_model::{CausalLm, Dtype, load_model_as, model_tokenizer};

mod common;

use common::fixture;

fn export(name: &str, dtype: Dtype, dir: &tempfile::TempDir) -> GgufFile {
    let path = dir.path().join(format!("{name}-{dtype}.gguf"));
    export_gguf(&fixture(name), &path, dtype).unwrap();
    GgufFile::open(&path).unwrap()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn u64_of(file: &GgufFile, key: &str) -> u64 {
    file.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{key}"))
}

/// Llama 3 in f32: every tensor the checkpoint's, the query and key rows interleaved per
/// head, llama3 rope scaling as `rope_freqs.weight`; its hyperparameters, vocabulary,
/// special ids (a beginning-of-text token that encoding adds) and chat template.
#[test]
fn llama3_exports_its_tensors_hyperparameters_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let file = export("tiny-llama3", Dtype::F32, &dir);
    let hub = SafetensorsFiles::open(&fixture("tiny-llama3")).unwrap();
    assert_eq!(
        file.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(u64_of(&file, "llama.block_count"), 2);
    assert_eq!(u64_of(&file, "llama.attention.head_count"), 4);
    assert_eq!(u64_of(&file, "llama.embedding_length"), 64);
    assert_eq!(u64_of(&file, "general.file_type"), 0);
    let Some(Value::Array(tokens)) = file.get("tokenizer.ggml.tokens") else {
        panic!("no tokens")
    };
    assert_eq!(tokens.len(), 600);
    assert_eq!(tokens[0], Value::String("<|begin_of_text|>".into()));
    assert_eq!(u64_of(&file, "tokenizer.ggml.bos_token_id"), 0);
    assert_eq!(
        file.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    let template = file
        .get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .unwrap();
    assert!(template.starts_with("{{ bos_token }}"));

    let q = file.tensor("blk.1.attn_q.weight").unwrap();
    assert_eq!((q.ggml_type, q.dims.clone()), (GgmlType::F32, vec![64, 64]));
    let hub_q = hub.read("model.layers.1.self_attn.q_proj.weight").unwrap();
    let interleaved = rearrange(&hub_q, 64, Rearrange::InterleaveHalves { heads: 4 }, true);
    assert_eq!(f32s(file.bytes(q)), interleaved);
    assert_ne!(interleaved, hub_q);
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(
        f32s(file.bytes(embd)),
        hub.read("model.embed_tokens.weight").unwrap()
    );
    let factors = f32s(file.bytes(file.tensor("rope_freqs.weight").unwrap()));
    assert_eq!(factors.len(), 8);
    assert_eq!(factors[0], 1.0, "the highest frequency is kept");
    assert!(factors[7] > 1.0, "the lowest is scaled: {factors:?}");
    assert!(file.tensor("output.weight").is_none(), "the head is tied");
}

/// Qwen3 in q4_0: matrices are GGUF's Q4_0 blocks of each row (no interleaving: Qwen's
/// rotary embedding is llama.cpp's NEOX one), the norms f32.
#[test]
fn qwen3_exports_quantized_matrices_and_f32_norms() {
    let dir = tempfile::tempdir().unwrap();
    let file = export("tiny-qwen3", Dtype::Q4_0, &dir);
    let hub = SafetensorsFiles::open(&fixture("tiny-qwen3")).unwrap();
    assert_eq!(u64_of(&file, "qwen3.attention.head_count_kv"), 2);
    assert_eq!(u64_of(&file, "qwen3.attention.key_length"), 32);
    assert_eq!(u64_of(&file, "general.file_type"), 2);
    assert_eq!(u64_of(&file, "general.quantization_version"), 2);
    assert_eq!(
        file.get("tokenizer.ggml.pre"),
        Some(&Value::String("gpt-2".into()))
    );
    assert_eq!(
        file.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(false))
    );
    let k = file.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(
        (k.ggml_type, k.dims.clone()),
        (GgmlType::Q4_0, vec![64, 64])
    );
    let blocks =
        BlockQ4_0::quantize_row(&hub.read("model.layers.0.self_attn.k_proj.weight").unwrap())
            .unwrap();
    assert_eq!(file.bytes(k), BlockQ4_0::to_bytes(&blocks));
    let norm = file.tensor("blk.0.attn_k_norm.weight").unwrap();
    assert_eq!(norm.ggml_type, GgmlType::F32);
    assert_eq!(
        f32s(file.bytes(norm)),
        hub.read("model.layers.0.self_attn.k_norm.weight").unwrap()
    );
}

/// GPT-2 in q8_0: `Conv1D` weights transposed to rows of their outputs, the position
/// embeddings kept f32 (as llama-quantize keeps them), GPT-2's own tokenizer; in q4_k,
/// only the MLP projection (rows of 256) is Q4_K, the rest Q8_0.
#[test]
fn gpt2_exports_transposed_conv1d_weights() {
    let dir = tempfile::tempdir().unwrap();
    let file = export("tiny-gpt2-a", Dtype::Q8_0, &dir);
    let hub = SafetensorsFiles::open(&fixture("tiny-gpt2-a")).unwrap();
    assert_eq!(u64_of(&file, "gpt2.context_length"), 64);
    assert_eq!(u64_of(&file, "gpt2.feed_forward_length"), 256);
    let Some(Value::Array(tokens)) = file.get("tokenizer.ggml.tokens") else {
        panic!("no tokens")
    };
    assert_eq!(tokens.len(), 50257);
    assert_eq!(tokens[50256], Value::String("<|endoftext|>".into()));
    let qkv = file.tensor("blk.0.attn_qkv.weight").unwrap();
    assert_eq!(
        (qkv.ggml_type, qkv.dims.clone()),
        (GgmlType::Q8_0, vec![64, 192])
    );
    let pos = file.tensor("position_embd.weight").unwrap();
    assert_eq!(pos.ggml_type, GgmlType::F32);
    assert_eq!(
        f32s(file.bytes(pos)),
        hub.read("transformer.wpe.weight").unwrap()
    );
    let bias = file.tensor("blk.0.attn_qkv.bias").unwrap();
    assert_eq!(
        f32s(file.bytes(bias)),
        hub.read("transformer.h.0.attn.c_attn.bias").unwrap()
    );

    let file = export("tiny-gpt2-a", Dtype::Q4_K, &dir);
    let types = |name: &str| file.tensor(name).unwrap().ggml_type;
    assert_eq!(types("blk.0.ffn_down.weight"), GgmlType::Q4_K);
    assert_eq!(types("blk.0.ffn_up.weight"), GgmlType::Q8_0);
    assert_eq!(u64_of(&file, "general.file_type"), 15);
}

/// What cannot be exported is a one-line error naming it, and leaves nothing behind.
#[test]
fn unexportable_models_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.gguf");
    let err = export_gguf(&fixture("tiny-gemma3"), &out, Dtype::F32).unwrap_err();
    assert!(
        err.to_string()
            .contains("GGUF export takes GPT-2, Llama and Qwen3 models; this is gemma3"),
        "{err}"
    );
    let err = export_gguf(&dir.path().join("nothing"), &out, Dtype::F32).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

fn logits(path: &std::path::Path, dtype: Dtype, device: &Device) -> Vec<f32> {
    let model = load_model_as(path, None, dtype, device).unwrap().model;
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 7, 42, 3, 99, 5], [1, 6]), device);
    model.logits(ids).into_data().to_vec().unwrap()
}

/// An exported model loads back from its GGUF file as it was: the same logits, bit for
/// bit, as the checkpoint loaded in the same dtype (the GGUF's packed matrices taken as
/// they are, Llama's interleaved rows put back), and the same tokenizer: ids, special
/// ids, chat template. (GPT-2's quantized files keep its position embeddings f32, as
/// llama.cpp does, where `--dtype` quantizes them: f32 and bf16 are compared.)
#[test]
fn exported_models_load_back_as_they_were() {
    let device = Device::ndarray();
    let dir = tempfile::tempdir().unwrap();
    for (name, dtypes) in [
        (
            "tiny-llama3",
            &[
                Dtype::F32,
                Dtype::Bf16,
                Dtype::Q8_0,
                Dtype::Q4_0,
                Dtype::Q4_K,
            ][..],
        ),
        (
            "tiny-qwen3",
            &[Dtype::F32, Dtype::F16, Dtype::Q8_0, Dtype::Q4_0][..],
        ),
        ("tiny-gpt2-a", &[Dtype::F32, Dtype::Bf16][..]),
    ] {
        for &dtype in dtypes {
            let path = dir.path().join(format!("{name}-{dtype}.gguf"));
            export_gguf(&fixture(name), &path, dtype).unwrap();
            // The file's formats, whatever --dtype says.
            assert_eq!(
                logits(&path, Dtype::F32, &device),
                logits(&fixture(name), dtype, &device),
                "{name} {dtype}"
            );
        }
        let path = dir.path().join(format!("{name}-f32.gguf"));
        // An f32 file's matrices follow --dtype, as a checkpoint's do.
        assert_eq!(
            logits(&path, Dtype::Q8_0, &device),
            logits(&fixture(name), Dtype::Q8_0, &device),
            "{name} f32 file as q8_0"
        );
        let gguf = load_model_as(&path, None, Dtype::F32, &device).unwrap();
        let hub = load_model_as(&fixture(name), None, Dtype::F32, &device).unwrap();
        assert_eq!(gguf.config, hub.config, "{name}");
        let (ours, theirs) = (
            model_tokenizer(&gguf).unwrap(),
            model_tokenizer(&hub).unwrap(),
        );
        for text in [
            "Every effort moves you",
            " hello  world\n\n42",
            "<|im_start|>a<|endoftext|>",
        ] {
            assert_eq!(
                ours.encode(text).unwrap(),
                theirs.encode(text).unwrap(),
                "{name}: {text:?}"
            );
            let by_default =
                |t: &ember_tokenizer::ModelTokenizer| t.tokenizer().encode_default(text).unwrap();
            assert_eq!(by_default(&ours), by_default(&theirs), "{name}: {text:?}");
        }
        assert_eq!(ours.bos_id(), theirs.bos_id(), "{name}");
        assert_eq!(ours.eos_ids()[0], theirs.eos_ids()[0], "{name}");
        assert_eq!(
            ours.chat_template().map(|t| t.source().to_string()),
            theirs.chat_template().map(|t| t.source().to_string()),
            "{name}"
        );
    }
}

/// A GGUF file of an architecture or a tokenizer Ember does not read is a one-line
/// error naming it.
#[test]
fn unreadable_gguf_files_are_named_errors() {
    use ember_model::gguf::file::{TensorOut, write_gguf};
    let dir = tempfile::tempdir().unwrap();
    let device = Device::ndarray();
    let path = dir.path().join("falcon.gguf");
    let meta = vec![(
        "general.architecture".to_string(),
        Value::String("falcon".into()),
    )];
    write_gguf(&path, &meta, Vec::<TensorOut>::new()).unwrap();
    let err = load_model_as(&path, None, Dtype::F32, &device).unwrap_err();
    assert!(
        err.to_string()
            .contains("GGUF architecture \"falcon\": Ember reads gpt2, llama and qwen3"),
        "{err}"
    );
    // Ember's Qwen3 export with its vocabulary declared SentencePiece.
    let qwen = dir.path().join("q.gguf");
    export_gguf(&fixture("tiny-qwen3"), &qwen, Dtype::F32).unwrap();
    let file = GgufFile::open(&qwen).unwrap();
    let metadata: Vec<(String, Value)> = file
        .metadata
        .iter()
        .map(|(k, v)| match k.as_str() {
            "tokenizer.ggml.model" => (k.clone(), Value::String("llama".into())),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let tensors = file
        .tensors
        .iter()
        .map(|t| TensorOut {
            info: t.clone(),
            bytes: Box::new(|| Ok(file.bytes(t).to_vec())),
        })
        .collect();
    let spm = dir.path().join("spm.gguf");
    write_gguf(&spm, &metadata, tensors).unwrap();
    let loaded = load_model_as(&spm, None, Dtype::F32, &device).unwrap();
    let err = model_tokenizer(&loaded).unwrap_err();
    assert!(
        err.to_string()
            .contains("tokenizer.ggml.model \"llama\": Ember reads byte-level BPE"),
        "{err}"
    );
}

/// A Q6_K matrix (llama.cpp's Q4_K_M files hold some) is read as its values held in
/// Q8_0: tiny-gpt2-a's MLP projection (rows of 256) replaced by Q6_K blocks of libggml's
/// quantizer (the kernels' fixture).
#[test]
fn q6_k_matrices_are_held_in_q8_0() {
    use ember_kernels::packed_weights::{PackedMatrix, WeightFormat};
    use ember_kernels::quant::{BlockQ6_K, SUPER_BLOCK};
    use ember_model::gguf::GgufModel;
    use ember_model::gguf::file::{TensorOut, write_gguf};
    let dir = tempfile::tempdir().unwrap();
    let f32_file = dir.path().join("f32.gguf");
    export_gguf(&fixture("tiny-gpt2-a"), &f32_file, Dtype::F32).unwrap();
    let file = GgufFile::open(&f32_file).unwrap();
    let blocks = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../ember-kernels/tests/fixtures/quant/q6_k.bin"),
    )
    .unwrap();
    let target = "blk.0.ffn_down.weight";
    let rows = file.tensor(target).unwrap().dims[1] as usize;
    let q6: Vec<u8> = blocks
        .iter()
        .copied()
        .cycle()
        .take(rows * BlockQ6_K::BYTES)
        .collect();
    let tensors = file
        .tensors
        .iter()
        .map(|t| {
            let mut info = t.clone();
            let bytes = if t.name == target {
                info.ggml_type = GgmlType::Q6_K;
                q6.clone()
            } else {
                file.bytes(t).to_vec()
            };
            TensorOut {
                info,
                bytes: Box::new(move || Ok(bytes)),
            }
        })
        .collect();
    let q6_file = dir.path().join("q6.gguf");
    write_gguf(&q6_file, &file.metadata, tensors).unwrap();
    let model = GgufModel::open(&q6_file).unwrap();
    let packed = model
        .packed("transformer.h.0.mlp.c_proj.weight")
        .unwrap()
        .unwrap();
    let mut values = vec![0.0f32; rows * SUPER_BLOCK];
    for (block, out) in q6
        .chunks_exact(BlockQ6_K::BYTES)
        .zip(values.chunks_exact_mut(SUPER_BLOCK))
    {
        BlockQ6_K::new(block).dequantize(out.try_into().unwrap());
    }
    let want = PackedMatrix::from_f32(WeightFormat::Q8_0, rows, SUPER_BLOCK, &values);
    assert_eq!(packed.format(), WeightFormat::Q8_0);
    assert_eq!(packed.to_f32(), want.to_f32());
    // And the whole model loads and runs from it.
    let device = Device::ndarray();
    assert_eq!(logits(&q6_file, Dtype::F32, &device).len(), 6 * 50257);
}
