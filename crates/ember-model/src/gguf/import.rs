//! A GGUF file as a model (`--model FILE.gguf` on every model command): llama.cpp's
//! files and Ember's own exports of GPT-2, Llama 3 and Qwen3, their hyperparameters and
//! tokenizer read from the metadata, their tensors under Ember's Hub names. Matrices
//! stored in bf16, f16, Q8_0, Q4_0 or Q4_K are taken as they are (packed, never
//! rounded or quantized again, whatever `--dtype` says); Q6_K ones (in llama.cpp's
//! Q4_K_M files) are held in Q8_0, the nearest format Ember computes with; f32 ones
//! follow `--dtype`.

use std::collections::HashMap;
use std::path::Path;

use ember_kernels::packed_weights::{PackedMatrix, WeightFormat};
use ember_kernels::quant::{BlockQ4_0, BlockQ4_K, BlockQ6_K, BlockQ8_0, QuantBlock, SUPER_BLOCK};
use serde_json::{Value as Json, json};

use super::export::llama3_factors;
use super::file::{GgmlType, GgufFile, TensorInfo, Value};
use super::names::{Rearrange, mappings, rearrange};
use super::vocab::tokenizer_parts;
use crate::layers::Llama3Scaling;
use crate::model::ModelConfig;
use crate::weights::tensors::decode_floats;
use crate::weights::{TensorSource, WeightsError};

/// A GGUF file read as a model: its configuration and its tensors by Hub name.
#[derive(Debug)]
pub struct GgufModel {
    file: GgufFile,
    /// The configuration, as a Hub `config.json` would give it.
    pub hub_config: Json,
    /// The configuration.
    pub config: ModelConfig,
    /// Hub name -> (the GGUF tensor's index, how its values were rearranged).
    by_hub: HashMap<String, (usize, Rearrange)>,
}

impl GgufModel {
    /// Reads `path`'s metadata and maps its tensors (their values stay on disk).
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let file = GgufFile::open(path)?;
        let hub_config = hub_config(&file).map_err(|e| WeightsError::format(path, e))?;
        let config = ModelConfig::from_json(&hub_config, path)?;
        let maps = mappings(&config, "transformer.", &|m| file.tensor(&m.gguf).is_some())
            .ok_or_else(|| WeightsError::format(path, "not an architecture Ember reads as GGUF"))?;
        let by_hub = maps
            .into_iter()
            .map(|m| {
                let index = file
                    .tensors
                    .iter()
                    .position(|t| t.name == m.gguf)
                    .expect("kept");
                (m.hub, (index, m.rearrange))
            })
            .collect();
        Ok(Self {
            file,
            hub_config,
            config,
            by_hub,
        })
    }

    /// The model's tokenizer, from the file's `tokenizer.ggml.*` metadata.
    pub fn tokenizer(&self) -> Result<ember_tokenizer::ModelTokenizer, WeightsError> {
        let path = self.file.path();
        let (json, tokenizer_config) =
            tokenizer_parts(&self.file).map_err(|e| WeightsError::format(path, e))?;
        let to_error =
            |e: ember_tokenizer::TokenizerError| WeightsError::format(path, e.to_string());
        let tokenizer = ember_tokenizer::HubTokenizer::from_json_bytes(
            &format!("{}'s tokenizer", path.display()),
            json.to_string().as_bytes(),
        )
        .map_err(to_error)?;
        let gpt2 = matches!(self.config, ModelConfig::Gpt2(_));
        ember_tokenizer::ModelTokenizer::from_parts(
            tokenizer,
            Some(tokenizer_config),
            None,
            &self.hub_config,
            gpt2,
        )
        .map_err(to_error)
    }

    fn info(&self, name: &str) -> Option<(&TensorInfo, Rearrange)> {
        let &(index, rearrange) = self.by_hub.get(name)?;
        Some((&self.file.tensors[index], rearrange))
    }
}

/// The Hub `config.json` of the model `file` holds.
fn hub_config(file: &GgufFile) -> Result<Json, String> {
    let arch = file
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or("no general.architecture")?
        .to_string();
    if !matches!(arch.as_str(), "gpt2" | "llama" | "qwen3") {
        return Err(format!(
            "GGUF architecture \"{arch}\": Ember reads gpt2, llama and qwen3"
        ));
    }
    let int = |key: &str| -> Result<u64, String> {
        file.get(&format!("{arch}.{key}"))
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("no {arch}.{key}"))
    };
    // f32 values as the decimal that rounds to them (1e-5, not 9.99999974e-6): what the
    // Hub's configuration said before the file rounded it.
    let float = |key: &str| match file.get(&format!("{arch}.{key}")) {
        Some(Value::F32(v)) => v.to_string().parse::<f64>().ok(),
        Some(other) => other.as_f64(),
        None => None,
    };
    let vocab = match file.get("tokenizer.ggml.tokens") {
        Some(Value::Array(tokens)) => tokens.len(),
        _ => return Err("no tokenizer.ggml.tokens".into()),
    };
    let tied = file.tensor("output.weight").is_none();
    let id = |key: &str| file.get(key).and_then(Value::as_u64);
    let mut config = match arch.as_str() {
        "gpt2" => {
            let n_embd = int("embedding_length")?;
            if int("feed_forward_length").is_ok_and(|f| f != 4 * n_embd) {
                return Err("a GPT-2 whose MLP is not 4 times its width".into());
            }
            json!({
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "n_embd": n_embd,
                "n_layer": int("block_count")?,
                "n_head": int("attention.head_count")?,
                "n_positions": int("context_length")?,
                "n_ctx": int("context_length")?,
                "layer_norm_epsilon": float("attention.layer_norm_epsilon").unwrap_or(1e-5),
                "activation_function": "gelu_new",
                "vocab_size": vocab,
                "tie_word_embeddings": tied,
            })
        }
        "llama" | "qwen3" => {
            let (hidden, heads) = (int("embedding_length")?, int("attention.head_count")?);
            let head_dim = int("attention.key_length").unwrap_or(hidden / heads.max(1));
            let mut config = json!({
                "model_type": arch,
                "architectures": [if arch == "llama" { "LlamaForCausalLM" } else { "Qwen3ForCausalLM" }],
                "hidden_size": hidden,
                "intermediate_size": int("feed_forward_length")?,
                "num_hidden_layers": int("block_count")?,
                "num_attention_heads": heads,
                "num_key_value_heads": int("attention.head_count_kv").unwrap_or(heads),
                "head_dim": head_dim,
                "max_position_embeddings": int("context_length")?,
                "rms_norm_eps": float("attention.layer_norm_rms_epsilon").ok_or_else(|| format!("no {arch}.attention.layer_norm_rms_epsilon"))?,
                "rope_theta": float("rope.freq_base").unwrap_or(10_000.0),
                "attention_bias": file.tensor("blk.0.attn_q.bias").is_some(),
                "vocab_size": vocab,
                "tie_word_embeddings": tied,
            });
            if let Some(factors) = file.tensor("rope_freqs.weight") {
                let factors = dequantize(file, factors);
                let theta = float("rope.freq_base").unwrap_or(10_000.0);
                config["rope_scaling"] = llama3_scaling(&factors, theta, head_dim as usize)?;
            }
            if file
                .get(&format!("{arch}.rope.scaling.type"))
                .and_then(Value::as_str)
                == Some("linear")
            {
                config["rope_scaling"] = json!({
                    "rope_type": "linear",
                    "factor": float("rope.scaling.factor").unwrap_or(1.0),
                });
            }
            config
        }
        _ => unreachable!("checked above"),
    };
    if let Some(bos) = id("tokenizer.ggml.bos_token_id") {
        config["bos_token_id"] = bos.into();
    }
    // The end of text, and the end of a turn where it differs (Llama 3's <|eot_id|>).
    let ends: Vec<u64> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
        .iter()
        .filter_map(|key| id(key))
        .fold(Vec::new(), |mut ends, e| {
            if !ends.contains(&e) {
                ends.push(e);
            }
            ends
        });
    match ends[..] {
        [] => {}
        [eos] => config["eos_token_id"] = eos.into(),
        _ => config["eos_token_id"] = ends.into(),
    }
    Ok(config)
}

/// Llama 3's rope scaling whose factors `rope_freqs.weight` holds: the GGUF file keeps
/// the factors, transformers' configuration (and Ember's) the four numbers that make
/// them; found among Llama 3's (low 1, high 4; the original context a power of two).
fn llama3_scaling(factors: &[f32], theta: f64, head_dim: usize) -> Result<Json, String> {
    let factor = f64::from(*factors.last().ok_or("an empty rope_freqs.weight")?);
    for shift in 4..=20 {
        let scaling = Llama3Scaling {
            factor,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 1 << shift,
        };
        let made = llama3_factors(theta, head_dim, &scaling);
        if made.len() == factors.len()
            && made
                .iter()
                .zip(factors)
                .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs())
        {
            return Ok(json!({
                "rope_type": "llama3",
                "factor": factor,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 1u64 << shift,
            }));
        }
    }
    Err(
        "rope_freqs.weight is not Llama 3's rope scaling (low_freq_factor 1, high_freq_factor 4)"
            .into(),
    )
}

/// A tensor's values as f32, in the file's order.
fn dequantize(file: &GgufFile, info: &TensorInfo) -> Vec<f32> {
    dequantize_bytes(info.ggml_type, file.bytes(info))
}

/// Whole rows' bytes of `ggml_type` as f32.
fn dequantize_bytes(ggml_type: GgmlType, bytes: &[u8]) -> Vec<f32> {
    match ggml_type {
        // Floats decode as safetensors' do.
        GgmlType::F32 => decode_floats(bytes, safetensors::Dtype::F32),
        GgmlType::F16 => decode_floats(bytes, safetensors::Dtype::F16),
        GgmlType::Bf16 => decode_floats(bytes, safetensors::Dtype::BF16),
        GgmlType::Q8_0 => dequantize_blocks::<BlockQ8_0>(bytes),
        GgmlType::Q4_0 => dequantize_blocks::<BlockQ4_0>(bytes),
        GgmlType::Q4_K => dequantize_super_blocks(bytes, BlockQ4_K::BYTES, |block, out| {
            BlockQ4_K::read_bytes(block).dequantize(out)
        }),
        GgmlType::Q6_K => dequantize_super_blocks(bytes, BlockQ6_K::BYTES, |block, out| {
            BlockQ6_K::new(block).dequantize(out)
        }),
    }
}

/// Super-blocks of 256 values, `block_bytes` each, dequantized one by one.
fn dequantize_super_blocks(
    bytes: &[u8],
    block_bytes: usize,
    dequantize: impl Fn(&[u8], &mut [f32; SUPER_BLOCK]),
) -> Vec<f32> {
    let mut out = vec![0.0f32; bytes.len() / block_bytes * SUPER_BLOCK];
    for (block, out) in bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(SUPER_BLOCK))
    {
        dequantize(block, out.try_into().expect("a super-block"));
    }
    out
}

fn dequantize_blocks<B: QuantBlock>(bytes: &[u8]) -> Vec<f32> {
    let blocks = B::from_bytes(bytes).expect("whole blocks, checked when opened");
    let mut out = vec![0.0f32; blocks.len() * ember_kernels::quant::BLOCK_SIZE];
    B::dequantize_row(&blocks, &mut out);
    out
}

/// The Hub shape of a GGUF tensor.
fn hub_shape(info: &TensorInfo, rearrange: Rearrange) -> Vec<usize> {
    let dims: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
    match (&dims[..], rearrange) {
        // GGUF's [out, in] rows of a Conv1D weight stored [in, out].
        (&[cols, rows], Rearrange::Transpose) => vec![cols, rows],
        (&[cols, rows], _) => vec![rows, cols],
        _ => dims,
    }
}

impl TensorSource for GgufModel {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|(info, r)| hub_shape(info, r))
    }

    fn read_part(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        let (info, how) = self
            .info(name)
            .ok_or_else(|| WeightsError::format(self.file.path(), format!("no tensor {name}")))?;
        let rows = info.dims.get(1).map_or(1, |&r| r as usize);
        if how == Rearrange::Same {
            // Only the rows the part covers (a large matrix is read part by part).
            let cols = info.dims[0] as usize;
            let row_bytes = info.ggml_type.row_bytes(cols as u64).expect("checked") as usize;
            let (first, last) = (range.start / cols.max(1), range.end.div_ceil(cols.max(1)));
            let bytes = self.file.bytes(info);
            let values = bytes
                .get(first * row_bytes..last * row_bytes)
                .map(|rows| dequantize_bytes(info.ggml_type, rows))
                .unwrap_or_default();
            let within = range.start - first * cols..range.end - first * cols;
            return values.get(within).map(<[f32]>::to_vec).ok_or_else(|| {
                WeightsError::format(
                    self.file.path(),
                    format!(
                        "values {range:?} of tensor {name} ({} rows of {cols})",
                        rows
                    ),
                )
            });
        }
        let values = dequantize(&self.file, info);
        let values = match how {
            Rearrange::Same => unreachable!("read above"),
            // GGUF's rows back to the Hub's: the transpose back, the halves apart.
            Rearrange::Transpose => rearrange(&values, rows, how, true),
            Rearrange::InterleaveHalves { .. } => rearrange(&values, rows, how, false),
        };
        values
            .get(range.clone())
            .map(<[f32]>::to_vec)
            .ok_or_else(|| {
                WeightsError::format(
                    self.file.path(),
                    format!(
                        "values {range:?} of tensor {name} ({} values)",
                        values.len()
                    ),
                )
            })
    }

    fn names(&self) -> Vec<String> {
        self.by_hub.keys().cloned().collect()
    }

    fn origin(&self) -> &Path {
        self.file.path()
    }

    fn packed(&self, name: &str) -> Option<Result<PackedMatrix, WeightsError>> {
        let (info, how) = self.info(name)?;
        let format = match info.ggml_type {
            GgmlType::F32 => return None,
            GgmlType::F16 => WeightFormat::F16,
            GgmlType::Bf16 => WeightFormat::Bf16,
            GgmlType::Q8_0 => WeightFormat::Q8_0,
            GgmlType::Q4_0 => WeightFormat::Q4_0,
            GgmlType::Q4_K => WeightFormat::Q4_K,
            GgmlType::Q6_K => WeightFormat::Q8_0,
        };
        let [cols, rows] = info.dims[..] else {
            return None;
        };
        let (rows, cols) = (rows as usize, cols as usize);
        let row_bytes = info
            .ggml_type
            .row_bytes(cols as u64)
            .expect("checked when opened") as usize;
        let bytes = self.file.bytes(info);
        // GGUF's rows are the packed matrix's `[out, in]` rows (a Conv1D weight's too);
        // Llama's query and key rows are interleaved per head: row `r` of the Hub's
        // order is GGUF's `h·d + 2i + j` for `r = h·d + j·d/2 + i`.
        let gguf_row = move |r: usize| match how {
            Rearrange::InterleaveHalves { heads } => {
                let d = rows / heads;
                let (h, within) = (r / d, r % d);
                let (j, i) = (within / (d / 2), within % (d / 2));
                h * d + 2 * i + j
            }
            _ => r,
        };
        let row = |r: usize| {
            let g = gguf_row(r);
            &bytes[g * row_bytes..(g + 1) * row_bytes]
        };
        let matrix = if info.ggml_type == GgmlType::Q6_K {
            // No Q6_K kernel: its values (6.6 bits) quantized again to Q8_0 (8.5), row
            // by row as they are read.
            PackedMatrix::from_row_parts(format, rows, cols, 256, |range| {
                Ok::<_, std::convert::Infallible>(
                    range
                        .flat_map(|r| dequantize_bytes(GgmlType::Q6_K, row(r)))
                        .collect(),
                )
            })
            .unwrap_or_else(|never| match never {})
        } else {
            PackedMatrix::from_gguf_rows(format, rows, cols, row)
        };
        self.file.release(info, 0..bytes.len());
        Some(Ok(matrix))
    }
}
