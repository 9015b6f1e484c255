//! Loading and saving weights (chapter 5.5).
//!
//! Three sources are understood, all through [`load_model`]:
//! - a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`), the layout
//!   users download from the Hub. GPT-2 stores its projections as `Conv1D` weights,
//!   `[in, out]`, which is already Burn's `Linear` layout, and `c_attn` holds Q, K, V
//!   side by side, which is Ember's layout too: they load as they are;
//! - the book's PyTorch state dict (`torch.save(model.state_dict())`, `.pth`): names
//!   `tok_emb`, `trf_blocks.N.att.W_query`, ..., `nn.Linear` weights `[out, in]`, which
//!   are transposed, and Q, K, V concatenated into `c_attn`;
//! - Ember's own checkpoints, which are Hugging Face directories with one more key in
//!   `config.json` (`"ember"`: the full [`GptConfig`]), so other tools can read them.
//!
//! Every tensor is checked by name and shape: a missing, unexpected or mis-shaped
//! tensor is reported by name, never loaded half-way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::prelude::*;
use serde_json::Value;

use crate::config::GptConfig;
use crate::gpt::GptModel;

/// Errors while reading or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file that is not in the expected format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Tensors missing, unexpected or of the wrong shape.
    #[error("{path}: {problems}")]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Every problem found, `; `-separated.
        problems: String,
    },
    /// The path is none of the understood forms.
    #[error("{0}")]
    Source(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WeightsError + '_ {
    move |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A tensor as read from a file: row-major float32 values and a shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// The transpose of a matrix.
    fn transposed(&self) -> RawTensor {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let mut data = vec![0.0; self.data.len()];
        for r in 0..rows {
            for c in 0..cols {
                data[c * rows + r] = self.data[r * cols + c];
            }
        }
        RawTensor {
            shape: vec![cols, rows],
            data,
        }
    }

    /// Matrices `[rows, c_i]` side by side into `[rows, sum c_i]`.
    fn concat_columns(parts: &[RawTensor]) -> RawTensor {
        let rows = parts[0].shape[0];
        let cols: usize = parts.iter().map(|p| p.shape[1]).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            for p in parts {
                let c = p.shape[1];
                data.extend_from_slice(&p.data[r * c..(r + 1) * c]);
            }
        }
        RawTensor {
            shape: vec![rows, cols],
            data,
        }
    }

    fn concat_vectors(parts: &[RawTensor]) -> RawTensor {
        let data: Vec<f32> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        RawTensor {
            shape: vec![data.len()],
            data,
        }
    }

    fn to_tensor<const D: usize>(&self, device: &Device) -> Param<Tensor<D>> {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(self.data.clone(), self.shape.clone()),
            device,
        ))
    }

    fn from_tensor<const D: usize>(tensor: Tensor<D>) -> RawTensor {
        let data = tensor.into_data();
        RawTensor {
            shape: data.shape().to_vec(),
            data: data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .expect("float tensor"),
        }
    }
}

fn bytes_to_f32(bytes: &[u8], dtype: &str) -> Option<Vec<f32>> {
    let chunks = |n: usize| bytes.chunks_exact(n);
    Some(match dtype {
        "F32" => chunks(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        "F64" => chunks(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        "F16" => chunks(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        "BF16" => chunks(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Every floating-point tensor of a `.safetensors` file (f32, f64, f16, bf16; other
/// dtypes, such as the causal-mask buffers of old checkpoints, are skipped).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    let file = File::open(path).map_err(io_error(path))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file
    // changed underneath would at worst give wrong values, which the shape checks and
    // the caller's tests catch.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io_error(path))?;
    let tensors =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| WeightsError::Format {
            path: path.to_path_buf(),
            message: format!("not a valid safetensors file: {e}"),
        })?;
    let mut out = BTreeMap::new();
    for (name, view) in tensors.tensors() {
        let dtype = format!("{:?}", view.dtype());
        if let Some(data) = bytes_to_f32(view.data(), &dtype) {
            out.insert(
                name,
                RawTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
    }
    Ok(out)
}

/// Every floating-point tensor of a PyTorch `torch.save` file.
pub fn read_pth(path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| WeightsError::Format {
        path: path.to_path_buf(),
        message: format!("not a readable PyTorch checkpoint: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for (name, tensor) in reader.into_tensors() {
        let dtype = match format!("{:?}", tensor.dtype()).as_str() {
            "F32" => "F32",
            "F64" => "F64",
            "F16" => "F16",
            "BF16" => "BF16",
            _ => continue,
        };
        let bytes = tensor.read().map_err(io_error(path))?;
        let data = bytes_to_f32(&bytes, dtype).expect("dtype checked above");
        out.insert(
            name,
            RawTensor {
                shape: tensor.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Takes tensors out of a name → tensor map, checking shapes and collecting every
/// problem so the error lists them all at once.
struct TensorTable {
    tensors: BTreeMap<String, RawTensor>,
    problems: Vec<String>,
}

impl TensorTable {
    fn take(&mut self, name: &str, shape: &[usize]) -> Option<RawTensor> {
        match self.tensors.remove(name) {
            None => {
                self.problems
                    .push(format!("missing tensor {name} {shape:?}"));
                None
            }
            Some(t) if t.shape != shape => {
                self.problems.push(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    t.shape
                ));
                None
            }
            Some(t) => Some(t),
        }
    }

    fn finish(mut self, path: &Path, ignore: impl Fn(&str) -> bool) -> Result<(), WeightsError> {
        let extra: Vec<String> = std::mem::take(&mut self.tensors)
            .into_keys()
            .filter(|name| !ignore(name))
            .map(|name| format!("unexpected tensor {name}"))
            .collect();
        self.problems.extend(extra);
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch {
                path: path.to_path_buf(),
                problems: self.problems.join("; "),
            })
        }
    }
}

/// The tensors of one model in Ember's (= GPT-2's) layout and names, without the
/// `transformer.` prefix: `wte.weight`, `h.0.attn.c_attn.weight`, ..., and
/// `lm_head.weight` as `[d, vocab]` when the head is untied.
fn set_parameters(
    config: &GptConfig,
    mut take: impl FnMut(&str, &[usize]) -> Option<RawTensor>,
    device: &Device,
) -> GptModel {
    let mut model = config.init(device);
    let (v, c, d) = (config.vocab_size, config.context_length, config.emb_dim);
    macro_rules! set {
        ($param:expr, $name:expr, $shape:expr) => {
            if let Some(t) = take(&$name, &$shape) {
                $param = t.to_tensor(device);
            }
        };
    }
    set!(model.wte.weight, "wte.weight".to_string(), [v, d]);
    set!(model.wpe.weight, "wpe.weight".to_string(), [c, d]);
    for (i, block) in model.h.iter_mut().enumerate() {
        let p = |s: &str| format!("h.{i}.{s}");
        set!(block.ln_1.gamma, p("ln_1.weight"), [d]);
        if let Some(beta) = block.ln_1.beta.as_mut() {
            set!(*beta, p("ln_1.bias"), [d]);
        }
        set!(
            block.attn.c_attn.weight,
            p("attn.c_attn.weight"),
            [d, 3 * d]
        );
        if let Some(bias) = block.attn.c_attn.bias.as_mut() {
            set!(*bias, p("attn.c_attn.bias"), [3 * d]);
        }
        set!(block.attn.c_proj.weight, p("attn.c_proj.weight"), [d, d]);
        if let Some(bias) = block.attn.c_proj.bias.as_mut() {
            set!(*bias, p("attn.c_proj.bias"), [d]);
        }
        set!(block.ln_2.gamma, p("ln_2.weight"), [d]);
        if let Some(beta) = block.ln_2.beta.as_mut() {
            set!(*beta, p("ln_2.bias"), [d]);
        }
        set!(block.mlp.c_fc.weight, p("mlp.c_fc.weight"), [d, 4 * d]);
        if let Some(bias) = block.mlp.c_fc.bias.as_mut() {
            set!(*bias, p("mlp.c_fc.bias"), [4 * d]);
        }
        set!(block.mlp.c_proj.weight, p("mlp.c_proj.weight"), [4 * d, d]);
        if let Some(bias) = block.mlp.c_proj.bias.as_mut() {
            set!(*bias, p("mlp.c_proj.bias"), [d]);
        }
    }
    set!(model.ln_f.gamma, "ln_f.weight".to_string(), [d]);
    if let Some(beta) = model.ln_f.beta.as_mut() {
        set!(*beta, "ln_f.bias".to_string(), [d]);
    }
    if let Some(head) = model.lm_head.as_mut() {
        set!(head.weight, "lm_head.weight".to_string(), [d, v]);
    }
    model
}

/// The model's tensors under Hugging Face GPT-2 names (`transformer.` prefix, an untied
/// head as `lm_head.weight [vocab, d]`).
pub fn hf_tensors(model: &GptModel) -> BTreeMap<String, RawTensor> {
    let mut out = BTreeMap::new();
    let mut put = |name: String, t: RawTensor| {
        out.insert(name, t);
    };
    let tp = |s: &str| format!("transformer.{s}");
    put(
        tp("wte.weight"),
        RawTensor::from_tensor(model.wte.weight.val()),
    );
    put(
        tp("wpe.weight"),
        RawTensor::from_tensor(model.wpe.weight.val()),
    );
    let norm = |put: &mut dyn FnMut(String, RawTensor), name: String, ln: &burn::nn::LayerNorm| {
        put(
            format!("{name}.weight"),
            RawTensor::from_tensor(ln.gamma.val()),
        );
        if let Some(beta) = &ln.beta {
            put(format!("{name}.bias"), RawTensor::from_tensor(beta.val()));
        }
    };
    let linear = |put: &mut dyn FnMut(String, RawTensor), name: String, l: &burn::nn::Linear| {
        put(
            format!("{name}.weight"),
            RawTensor::from_tensor(l.weight.val()),
        );
        if let Some(bias) = &l.bias {
            put(format!("{name}.bias"), RawTensor::from_tensor(bias.val()));
        }
    };
    for (i, block) in model.h.iter().enumerate() {
        let p = |s: &str| tp(&format!("h.{i}.{s}"));
        norm(&mut put, p("ln_1"), &block.ln_1);
        linear(&mut put, p("attn.c_attn"), &block.attn.c_attn);
        linear(&mut put, p("attn.c_proj"), &block.attn.c_proj);
        norm(&mut put, p("ln_2"), &block.ln_2);
        linear(&mut put, p("mlp.c_fc"), &block.mlp.c_fc);
        linear(&mut put, p("mlp.c_proj"), &block.mlp.c_proj);
    }
    norm(&mut put, tp("ln_f"), &model.ln_f);
    if let Some(head) = &model.lm_head {
        // nn.Linear layout, as transformers' GPT2LMHeadModel stores it.
        put(
            "lm_head.weight".to_string(),
            RawTensor::from_tensor(head.weight.val()).transposed(),
        );
    }
    out
}

/// Build a model from Hugging Face GPT-2 tensors (with or without the `transformer.`
/// prefix; the old checkpoints' `attn.bias`/`attn.masked_bias` buffers are ignored).
pub fn model_from_hf_tensors(
    config: &GptConfig,
    tensors: BTreeMap<String, RawTensor>,
    path: &Path,
    device: &Device,
) -> Result<GptModel, WeightsError> {
    let mut tensors: BTreeMap<String, RawTensor> = tensors
        .into_iter()
        .map(|(k, v)| {
            (
                k.strip_prefix("transformer.")
                    .map(str::to_string)
                    .unwrap_or(k),
                v,
            )
        })
        .collect();
    let d = config.emb_dim;
    if let Some(head) = tensors.remove("lm_head.weight") {
        if config.tie_embeddings {
            // transformers sometimes writes the tied head out; it must be the embedding.
            if tensors
                .get("wte.weight")
                .is_some_and(|wte| wte.data != head.data)
            {
                return Err(WeightsError::Mismatch {
                    path: path.to_path_buf(),
                    problems: "lm_head.weight differs from wte.weight but the config ties them"
                        .into(),
                });
            }
        } else if head.shape == [config.vocab_size, d] {
            tensors.insert("lm_head.weight".into(), head.transposed());
        } else {
            tensors.insert("lm_head.weight".into(), head);
        }
    }
    let mut table = TensorTable {
        tensors,
        problems: Vec::new(),
    };
    let model = set_parameters(config, |n, s| table.take(n, s), device);
    // `h.N.attn.bias` / `h.N.attn.masked_bias` are causal-mask buffers of old
    // checkpoints, not parameters (`c_attn.bias` does not match the suffix).
    table.finish(path, |name| {
        name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
    })?;
    Ok(model)
}

/// Build a model from the book's `GPTModel` state dict.
pub fn model_from_book_tensors(
    config: &GptConfig,
    tensors: BTreeMap<String, RawTensor>,
    path: &Path,
    device: &Device,
) -> Result<GptModel, WeightsError> {
    let (v, d) = (config.vocab_size, config.emb_dim);
    let mut book = TensorTable {
        tensors,
        problems: Vec::new(),
    };
    let mut hf = BTreeMap::new();
    let mut put = |name: String, t: Option<RawTensor>| {
        if let Some(t) = t {
            hf.insert(name, t);
        }
    };
    put("wte.weight".into(), book.take("tok_emb.weight", &[v, d]));
    put(
        "wpe.weight".into(),
        book.take("pos_emb.weight", &[config.context_length, d]),
    );
    for i in 0..config.n_layers {
        let b = |s: &str| format!("trf_blocks.{i}.{s}");
        let h = |s: &str| format!("h.{i}.{s}");
        let qkv: Vec<Option<RawTensor>> = ["W_query", "W_key", "W_value"]
            .iter()
            .map(|w| {
                book.take(&b(&format!("att.{w}.weight")), &[d, d])
                    .map(|t| t.transposed())
            })
            .collect();
        if qkv.iter().all(Option::is_some) {
            let parts: Vec<RawTensor> = qkv.into_iter().flatten().collect();
            put(
                h("attn.c_attn.weight"),
                Some(RawTensor::concat_columns(&parts)),
            );
        }
        if config.qkv_bias {
            let biases: Vec<Option<RawTensor>> = ["W_query", "W_key", "W_value"]
                .iter()
                .map(|w| book.take(&b(&format!("att.{w}.bias")), &[d]))
                .collect();
            if biases.iter().all(Option::is_some) {
                let parts: Vec<RawTensor> = biases.into_iter().flatten().collect();
                put(
                    h("attn.c_attn.bias"),
                    Some(RawTensor::concat_vectors(&parts)),
                );
            }
        }
        let linear = |book: &mut TensorTable, from: &str, d_in: usize, d_out: usize| {
            (
                book.take(&b(&format!("{from}.weight")), &[d_out, d_in])
                    .map(|t| t.transposed()),
                book.take(&b(&format!("{from}.bias")), &[d_out]),
            )
        };
        let (w, bias) = linear(&mut book, "att.out_proj", d, d);
        put(h("attn.c_proj.weight"), w);
        put(h("attn.c_proj.bias"), bias);
        let (w, bias) = linear(&mut book, "ff.layers.0", d, 4 * d);
        put(h("mlp.c_fc.weight"), w);
        put(h("mlp.c_fc.bias"), bias);
        let (w, bias) = linear(&mut book, "ff.layers.2", 4 * d, d);
        put(h("mlp.c_proj.weight"), w);
        put(h("mlp.c_proj.bias"), bias);
        for (from, to) in [("norm1", "ln_1"), ("norm2", "ln_2")] {
            put(
                h(&format!("{to}.weight")),
                book.take(&b(&format!("{from}.scale")), &[d]),
            );
            put(
                h(&format!("{to}.bias")),
                book.take(&b(&format!("{from}.shift")), &[d]),
            );
        }
    }
    put("ln_f.weight".into(), book.take("final_norm.scale", &[d]));
    put("ln_f.bias".into(), book.take("final_norm.shift", &[d]));
    let head = book.take("out_head.weight", &[v, d]);
    if config.tie_embeddings {
        if let (Some(head), Some(wte)) = (&head, hf.get("wte.weight"))
            && head.data != wte.data
        {
            book.problems.push(
                "out_head.weight differs from tok_emb.weight but the config ties them".into(),
            );
        }
    } else {
        put("lm_head.weight".into(), head.map(|t| t.transposed()));
    }
    book.finish(path, |name| name.ends_with(".att.mask"))?;
    let mut table = TensorTable {
        tensors: hf,
        problems: Vec::new(),
    };
    let model = set_parameters(config, |n, s| table.take(n, s), device);
    table.finish(path, |_| false)?;
    Ok(model)
}

/// Reads a `config.json`: Ember's own (with an `"ember"` key holding a [`GptConfig`])
/// or a Hugging Face GPT-2 one (`n_embd`, `n_layer`, ...; QKV bias on, head tied).
pub fn read_config_json(path: &Path) -> Result<GptConfig, WeightsError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    let format = |message: String| WeightsError::Format {
        path: path.to_path_buf(),
        message,
    };
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format(format!("invalid JSON: {e}")))?;
    if let Some(ember) = json.get("ember") {
        return serde_json::from_value(ember.clone())
            .map_err(|e| format(format!("invalid \"ember\" config: {e}")));
    }
    let get = |key: &str| -> Result<usize, WeightsError> {
        json.get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| format(format!("missing or non-integer \"{key}\"")))
    };
    if let Some(act) = json.get("activation_function").and_then(Value::as_str)
        && !matches!(act, "gelu_new" | "gelu_pytorch_tanh")
    {
        return Err(format(format!(
            "activation_function \"{act}\" is not supported (GPT-2 uses gelu_new)"
        )));
    }
    let config = GptConfig {
        vocab_size: get("vocab_size")?,
        context_length: get("n_positions")?,
        emb_dim: get("n_embd")?,
        n_heads: get("n_head")?,
        n_layers: get("n_layer")?,
        drop_rate: json
            .get("resid_pdrop")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        qkv_bias: true,
        tie_embeddings: json
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        weight_init: Default::default(),
    };
    config.validate().map_err(|e| format(e.to_string()))?;
    Ok(config)
}

/// What [`load_model`] found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face GPT-2 directory.
    HuggingFace,
    /// An Ember checkpoint directory.
    Ember,
    /// The book's `.pth` state dict.
    BookPth,
}

/// A model and what it was loaded from.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model, on the requested device.
    pub model: GptModel,
    /// Its configuration.
    pub config: GptConfig,
    /// The kind of source.
    pub source: ModelSource,
}

/// Load a model from a Hugging Face or Ember directory (or the `model.safetensors`
/// inside one), or from a book `.pth` file.
///
/// `config` is required for a `.pth` file (the book's state dict has no config; the
/// shapes are checked against it) and overrides `config.json` elsewhere when given.
pub fn load_model(
    path: &Path,
    config: Option<&GptConfig>,
    device: &Device,
) -> Result<LoadedModel, WeightsError> {
    let is_pth = path
        .extension()
        .is_some_and(|e| e == "pth" || e == "pt" || e == "bin");
    if is_pth {
        let config = config.ok_or_else(|| {
            WeightsError::Source(format!(
                "{}: a .pth state dict holds no configuration; pass a preset or a config.json",
                path.display()
            ))
        })?;
        let tensors = read_pth(path)?;
        let model = model_from_book_tensors(config, tensors, path, device)?;
        return Ok(LoadedModel {
            model,
            config: config.clone(),
            source: ModelSource::BookPth,
        });
    }
    let (dir, weights) = if path.is_dir() {
        (path.to_path_buf(), path.join("model.safetensors"))
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            path.to_path_buf(),
        )
    } else if !path.exists() {
        return Err(WeightsError::Source(format!(
            "{}: no such file or directory",
            path.display()
        )));
    } else {
        return Err(WeightsError::Source(format!(
            "{}: expected a model directory (config.json + model.safetensors), a .safetensors file or a .pth file",
            path.display()
        )));
    };
    let config_path = dir.join("config.json");
    let (config, source) = match config {
        Some(c) => (c.clone(), ModelSource::HuggingFace),
        None => {
            let c = read_config_json(&config_path)?;
            let text = std::fs::read_to_string(&config_path).unwrap_or_default();
            let source = if text.contains("\"ember\"") {
                ModelSource::Ember
            } else {
                ModelSource::HuggingFace
            };
            (c, source)
        }
    };
    let tensors = read_safetensors(&weights)?;
    let model = model_from_hf_tensors(&config, tensors, &weights, device)?;
    Ok(LoadedModel {
        model,
        config,
        source,
    })
}

/// Write `bytes` to `path` atomically: a temporary file in the same directory, synced,
/// then renamed over the target, so a crash never leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), std::io::Error> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Save `model` as an Ember checkpoint directory: `model.safetensors` with Hugging Face
/// GPT-2 names and a `config.json` that transformers understands, plus the full
/// [`GptConfig`] under `"ember"`. Each file is written atomically.
pub fn save_checkpoint(model: &GptModel, dir: &Path) -> Result<(), WeightsError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let config = model.config();
    let tensors = hf_tensors(model);
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let bytes = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, bytes, t.shape)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WeightsError::Source(format!("cannot serialise tensors: {e}")))?;
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let serialized = safetensors::serialize(views, Some(metadata))
        .map_err(|e| WeightsError::Source(format!("cannot serialise tensors: {e}")))?;
    let weights = dir.join("model.safetensors");
    write_atomic(&weights, &serialized).map_err(io_error(&weights))?;
    let hf_config = serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.emb_dim,
        "n_head": config.n_heads,
        "n_layer": config.n_layers,
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.drop_rate,
        "embd_pdrop": config.drop_rate,
        "attn_pdrop": config.drop_rate,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "ember": config,
    });
    let config_path = dir.join("config.json");
    write_atomic(
        &config_path,
        serde_json::to_string_pretty(&hf_config)
            .expect("serialisable")
            .as_bytes(),
    )
    .map_err(io_error(&config_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;

    fn logits(model: &GptModel, device: &Device) -> Vec<f32> {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 2], [1, 4]), device);
        model
            .forward(ids)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn checkpoints_round_trip_tied_and_untied() {
        let device = Device::ndarray();
        let dir = tempfile::tempdir().unwrap();
        for tied in [true, false] {
            let config = GptConfig {
                vocab_size: 40,
                context_length: 8,
                emb_dim: 16,
                n_heads: 2,
                n_layers: 2,
                drop_rate: 0.0,
                qkv_bias: !tied,
                tie_embeddings: tied,
                weight_init: Default::default(),
            };
            let model = config.init(&device);
            let path = dir.path().join(format!("tied-{tied}"));
            save_checkpoint(&model, &path).unwrap();
            let loaded = load_model(&path, None, &device).unwrap();
            assert_eq!(loaded.source, ModelSource::Ember);
            assert_eq!(loaded.config, config);
            assert_eq!(logits(&model, &device), logits(&loaded.model, &device));
        }
    }

    #[test]
    fn mismatches_are_all_named() {
        let device = Device::ndarray();
        let config = GptConfig {
            vocab_size: 40,
            context_length: 8,
            emb_dim: 16,
            n_heads: 2,
            n_layers: 1,
            drop_rate: 0.0,
            qkv_bias: true,
            tie_embeddings: true,
            weight_init: Default::default(),
        };
        let mut tensors = hf_tensors(&config.init(&device));
        tensors.remove("transformer.ln_f.bias");
        tensors.insert(
            "transformer.wpe.weight".into(),
            RawTensor {
                shape: vec![4, 16],
                data: vec![0.0; 64],
            },
        );
        tensors.insert(
            "transformer.h.0.extra".into(),
            RawTensor {
                shape: vec![1],
                data: vec![0.0],
            },
        );
        let err = model_from_hf_tensors(&config, tensors, Path::new("m.safetensors"), &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.safetensors: "), "{err}");
        assert!(
            err.contains("tensor wpe.weight has shape [4, 16], expected [8, 16]"),
            "{err}"
        );
        assert!(err.contains("missing tensor ln_f.bias [16]"), "{err}");
        assert!(err.contains("unexpected tensor h.0.extra"), "{err}");
    }

    #[test]
    fn corrupt_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors: not a valid safetensors file"),
            "{err}"
        );
        std::fs::write(dir.path().join("config.json"), "{\"n_embd\": 4").unwrap();
        let err = load_model(dir.path(), None, &Device::ndarray())
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json: invalid JSON"), "{err}");
    }
}
