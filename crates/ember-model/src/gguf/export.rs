//! `ember export --gguf`: a model directory (Hub layout: Ember's saved models, the
//! Hub's downloads) as one GGUF file that llama.cpp, Ollama and LM Studio run, with its
//! weights in f32, f16, bf16 or quantized (Q8_0, Q4_0, Q4_K, the same bytes llama.cpp's
//! quantizer makes), its hyperparameters and its tokenizer in the metadata.

use std::path::Path;

use half::{bf16, f16};
use rayon::prelude::*;

use ember_kernels::Dtype;
use ember_kernels::packed_weights::WeightFormat;
use ember_kernels::quant::{BlockQ4_0, BlockQ4_K, BlockQ8_0, QuantBlock, SUPER_BLOCK};

use super::file::{GgmlType, TensorInfo, TensorOut, Value, write_gguf};
use super::names::{Rearrange, gguf_architecture, gpt2_prefix, mappings, rearrange};
use super::vocab::{SpecialIds, vocab_metadata};
use crate::gpt2::GptConfig;
use crate::layers::Llama3Scaling;
use crate::llama::LlamaConfig;
use crate::model::ModelConfig;
use crate::weights::{SafetensorsFiles, TensorSource, WeightsError, read_config_value};

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    /// `general.architecture`.
    pub architecture: &'static str,
    /// Tensors written, of each ggml type.
    pub tensors: Vec<(GgmlType, usize)>,
    /// The file's size.
    pub bytes: u64,
}

/// llama.cpp's `general.file_type` (`llama_ftype`) of a dtype: the type most matrices
/// have (Q4_K as llama-quantize's `Q4_K`, which names Q4_K_M).
fn file_type(dtype: Dtype) -> u32 {
    match dtype {
        Dtype::F32 => 0,
        Dtype::F16 => 1,
        Dtype::Q4_0 => 2,
        Dtype::Q8_0 => 7,
        Dtype::Q4_K => 15,
        Dtype::Bf16 => 32,
    }
}

/// The ggml type a matrix with rows of `cols` values is written in for `dtype`.
fn matrix_type(dtype: Dtype, cols: usize) -> GgmlType {
    match dtype.weight_format().and_then(|f| f.for_rows_of(cols)) {
        None => GgmlType::F32,
        Some(WeightFormat::Bf16) => GgmlType::Bf16,
        Some(WeightFormat::F16) => GgmlType::F16,
        Some(WeightFormat::Q8_0) => GgmlType::Q8_0,
        Some(WeightFormat::Q4_0) => GgmlType::Q4_0,
        Some(WeightFormat::Q4_K) => GgmlType::Q4_K,
    }
}

/// `values` (rows of `cols`) in `ggml_type`'s bytes, rows in parallel.
pub(crate) fn encode(values: &[f32], cols: usize, ggml_type: GgmlType) -> Vec<u8> {
    let row_bytes = ggml_type.row_bytes(cols as u64).expect("whole blocks") as usize;
    let rows = values.len().checked_div(cols).unwrap_or(0);
    let mut out = vec![0u8; rows * row_bytes];
    if rows == 0 {
        return out;
    }
    out.par_chunks_mut(row_bytes)
        .zip(values.par_chunks(cols))
        .for_each(|(out, row)| match ggml_type {
            GgmlType::F32 => {
                for (o, v) in out.chunks_exact_mut(4).zip(row) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
            }
            GgmlType::F16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(row) {
                    o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
                }
            }
            GgmlType::Bf16 => {
                for (o, v) in out.chunks_exact_mut(2).zip(row) {
                    o.copy_from_slice(&bf16::from_f32(*v).to_le_bytes());
                }
            }
            GgmlType::Q8_0 => {
                out.copy_from_slice(&BlockQ8_0::to_bytes(&BlockQ8_0::quantize_row(row).unwrap()))
            }
            GgmlType::Q4_0 => {
                out.copy_from_slice(&BlockQ4_0::to_bytes(&BlockQ4_0::quantize_row(row).unwrap()))
            }
            GgmlType::Q6_K => unreachable!("Ember writes no Q6_K"),
            GgmlType::Q4_K => {
                for (o, x) in out
                    .chunks_exact_mut(BlockQ4_K::BYTES)
                    .zip(row.chunks_exact(SUPER_BLOCK))
                {
                    BlockQ4_K::quantize(x.try_into().expect("a super-block")).write_bytes(o);
                }
            }
        });
    out
}

fn u32_of(v: usize) -> Value {
    Value::U32(v as u32)
}

/// The hyperparameters llama.cpp reads for `arch`.
fn hyperparameters(
    arch: &str,
    config: &ModelConfig,
    hub: &serde_json::Value,
) -> Vec<(String, Value)> {
    let key = |k: &str| format!("{arch}.{k}");
    match config {
        ModelConfig::Gpt2(GptConfig {
            context_length,
            emb_dim,
            n_heads,
            n_layers,
            ..
        }) => vec![
            (key("context_length"), u32_of(*context_length)),
            (key("embedding_length"), u32_of(*emb_dim)),
            (key("feed_forward_length"), u32_of(4 * emb_dim)),
            (key("block_count"), u32_of(*n_layers)),
            (key("attention.head_count"), u32_of(*n_heads)),
            (
                key("attention.layer_norm_epsilon"),
                Value::F32(hub["layer_norm_epsilon"].as_f64().unwrap_or(1e-5) as f32),
            ),
        ],
        ModelConfig::Llama(c) => {
            let mut out = vec![
                (key("context_length"), u32_of(c.max_position_embeddings)),
                (key("embedding_length"), u32_of(c.hidden_size)),
                (key("block_count"), u32_of(c.num_hidden_layers)),
                (key("feed_forward_length"), u32_of(c.intermediate_size)),
                (key("attention.head_count"), u32_of(c.num_attention_heads)),
                (
                    key("attention.head_count_kv"),
                    u32_of(c.num_key_value_heads),
                ),
                (key("rope.freq_base"), Value::F32(c.rope.theta as f32)),
                (
                    key("attention.layer_norm_rms_epsilon"),
                    Value::F32(c.rms_norm_eps as f32),
                ),
                (key("attention.key_length"), u32_of(c.head_dim)),
                (key("attention.value_length"), u32_of(c.head_dim)),
                (key("rope.dimension_count"), u32_of(c.head_dim)),
            ];
            if let Some(factor) = c.rope.linear {
                out.push((key("rope.scaling.type"), Value::String("linear".into())));
                out.push((key("rope.scaling.factor"), Value::F32(factor as f32)));
            }
            out
        }
        _ => Vec::new(),
    }
}

/// Llama 3's rope scaling as llama.cpp takes it: a `rope_freqs.weight` tensor of one
/// factor per frequency.
fn rope_factors(c: &LlamaConfig) -> Option<Vec<f32>> {
    let scaling = c.rope.llama3.as_ref()?;
    Some(llama3_factors(c.rope.theta, c.head_dim, scaling))
}

/// The factors of Llama 3's rope scaling, one per frequency of a head `dim` wide (the
/// converter's `generate_extra_tensors`, in f32 as torch computes it there).
pub(crate) fn llama3_factors(theta: f64, dim: usize, s: &Llama3Scaling) -> Vec<f32> {
    let old = s.original_max_position_embeddings as f32;
    let (low, high) = (
        old / s.low_freq_factor as f32,
        old / s.high_freq_factor as f32,
    );
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / (theta as f32).powf((2 * i) as f32 / dim as f32);
            let wavelen = 2.0 * std::f32::consts::PI / freq;
            if wavelen < high {
                1.0
            } else if wavelen > low {
                s.factor as f32
            } else {
                let smooth = (old / wavelen - s.low_freq_factor as f32)
                    / (s.high_freq_factor - s.low_freq_factor) as f32;
                1.0 / ((1.0 - smooth) / s.factor as f32 + smooth)
            }
        })
        .collect()
}

/// Writes the model at `model` (a Hub-layout directory) to `out` as GGUF, its
/// matrices in `dtype` (1-D tensors stay f32, as llama.cpp's tools keep them; a
/// quantized format holds only rows of whole blocks, the others stay f32 or, for Q4_K,
/// take Q8_0). Nothing is written at `out` unless the whole file is.
pub fn export_gguf(model: &Path, out: &Path, dtype: Dtype) -> Result<ExportSummary, WeightsError> {
    let (hub_json, config_path) = read_config_value(model)?;
    let dir = config_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let config = ModelConfig::from_json(&hub_json, &config_path)?;
    let architecture = gguf_architecture(&config).ok_or_else(|| {
        WeightsError::format(
            &config_path,
            format!(
                "GGUF export takes GPT-2, Llama and Qwen3 models; this is {}",
                config.model_type()
            ),
        )
    })?;
    let source = SafetensorsFiles::open(&dir)?;
    let maps = mappings(&config, gpt2_prefix(&source), &|m| {
        source.shape(&m.hub).is_some()
    })
    .expect("a mapped architecture");

    let gpt2 = matches!(config, ModelConfig::Gpt2(_));
    let tokenizer =
        ember_tokenizer::ModelTokenizer::from_dir(&dir, &hub_json, gpt2).map_err(|source| {
            WeightsError::Tokenizer {
                dir: dir.clone(),
                source,
            }
        })?;
    let tokenizer_error =
        |e: ember_tokenizer::TokenizerError| WeightsError::format(&dir, e.to_string());
    let tokenizer_json: serde_json::Value =
        serde_json::from_str(&tokenizer.tokenizer().to_json().map_err(tokenizer_error)?)
            .map_err(|e| WeightsError::format(&dir, e.to_string()))?;
    let config_id = |key: &str| hub_json[key].as_u64().map(|v| v as u32);
    let bos = tokenizer.bos_id().or_else(|| config_id("bos_token_id"));
    let add_bos = match bos {
        Some(bos) => {
            tokenizer
                .tokenizer()
                .encode_default("a")
                .map_err(tokenizer_error)?
                .first()
                == Some(&bos)
        }
        None => false,
    };
    let special = SpecialIds {
        bos,
        eos: tokenizer
            .eos_ids()
            .first()
            .copied()
            .or_else(|| config_id("eos_token_id")),
        eot: tokenizer.eos_ids().get(1).copied(),
        add_bos,
    };
    let vocab = vocab_metadata(&tokenizer_json, config.vocab_size(), &special)
        .map_err(|e| WeightsError::format(&dir, format!("tokenizer: {e}")))?;

    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String(architecture.into()),
        ),
        ("general.type".to_string(), Value::String("model".into())),
        ("general.name".to_string(), Value::String(name)),
    ];
    metadata.extend(hyperparameters(architecture, &config, &hub_json));
    metadata.extend(vocab);
    if let Some(template) = tokenizer.chat_template() {
        metadata.push((
            "tokenizer.chat_template".to_string(),
            Value::String(template.source().to_string()),
        ));
    }
    if !dtype.is_float() {
        metadata.push(("general.quantization_version".to_string(), Value::U32(2)));
    }
    metadata.push((
        "general.file_type".to_string(),
        Value::U32(file_type(dtype)),
    ));

    let mut tensors = Vec::with_capacity(maps.len() + 1);
    if let ModelConfig::Llama(c) = &config
        && let Some(factors) = rope_factors(c)
    {
        let n = factors.len();
        tensors.push(TensorOut {
            info: TensorInfo {
                name: "rope_freqs.weight".into(),
                dims: vec![n as u64],
                ggml_type: GgmlType::F32,
                offset: 0,
            },
            bytes: Box::new(move || Ok(encode(&factors, n, GgmlType::F32))),
        });
    }
    for map in maps {
        let shape = source.shape(&map.hub).expect("mapped tensors exist");
        let (rows, cols) = match (&shape[..], map.rearrange) {
            (&[n], _) => (1, n),
            (&[a, b], Rearrange::Transpose) => (b, a),
            (&[a, b], _) => (a, b),
            _ => {
                return Err(WeightsError::format(
                    source.origin(),
                    format!(
                        "tensor {} has shape {shape:?}, not a vector or a matrix",
                        map.hub
                    ),
                ));
            }
        };
        let ggml_type = if shape.len() == 1 || (map.keep_float && !dtype.is_float()) {
            GgmlType::F32
        } else {
            matrix_type(dtype, cols)
        };
        let dims = if shape.len() == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        let source = &source;
        tensors.push(TensorOut {
            info: TensorInfo {
                name: map.gguf.clone(),
                dims,
                ggml_type,
                offset: 0,
            },
            bytes: Box::new(move || {
                let values = source.read(&map.hub)?;
                // The Hub's rows: `shape[0]`.
                let values = rearrange(&values, shape[0], map.rearrange, true);
                Ok(encode(&values, cols, ggml_type))
            }),
        });
    }
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in &tensors {
        match counts.iter_mut().find(|(ty, _)| *ty == t.info.ggml_type) {
            Some((_, n)) => *n += 1,
            None => counts.push((t.info.ggml_type, 1)),
        }
    }
    write_gguf(out, &metadata, tensors)?;
    let bytes = std::fs::metadata(out)
        .map_err(|source| WeightsError::Io {
            path: out.to_path_buf(),
            source,
        })?
        .len();
    Ok(ExportSummary {
        architecture,
        tensors: counts,
        bytes,
    })
}
