//! Loading and saving weights (chapter 5.5).
//!
//! Three sources are understood, all through [`load_model`]:
//! - a Hugging Face model directory (`config.json` + `model.safetensors`, or shards
//!   listed in `model.safetensors.index.json`, stored as f32, f16 or bf16) of a GPT-2,
//!   Llama 3.x or Qwen3 model, the layout users download from the Hub;
//! - the book's PyTorch state dict (`.pth`), see [`book`];
//! - Ember's own saved models, which are Hugging Face directories with one more key in
//!   `config.json` and a `SHA256SUMS` manifest that is checked on load.
//!
//! Parameters and Hub tensors correspond through one declarative [`NameTable`] per
//! architecture ([`ArchitectureConfig::name_table`]: [`crate::gpt2::table`],
//! [`crate::llama::table`]), read by loading and saving alike. Every tensor is
//! checked by name and shape, and the configuration against the weights before anything
//! is allocated: a missing, unexpected or mis-shaped tensor is reported by name, never
//! loaded half-way.

mod random;
pub mod table;
pub mod tensors;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use ember_data::files::{CHECKSUMS_FILE, ChecksumError, verify_checksums, write_checksums};
use ember_kernels::Dtype;

pub use random::random_model;
pub use table::{Layout, NameTable, collect_parameters, load_parameters};
pub use tensors::{
    INDEX_FILE, MemoryTensors, RawTensor, SafetensorsFiles, TensorSource, WEIGHTS_FILE,
    read_safetensors, write_safetensors,
};

use crate::gpt2::{self, GptConfig, GptModel, book};
use crate::model::{
    Architecture, ArchitectureConfig, LanguageModel, ModelConfig, each_architecture,
};

/// Errors while reading or writing weights.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// A file could not be read or written (the cause follows in the chain).
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file that is not in the expected format.
    #[error("{}: {message}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Tensors missing, unexpected or of the wrong shape.
    #[error("{}: {problems}", path.display())]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// Every problem found, `; `-separated.
        problems: String,
    },
    /// A file of an Ember model that changed since it was written.
    #[error("integrity check failed")]
    Checksum(#[from] ChecksumError),
    /// A parameter holding NaN or infinite values, which is never saved.
    #[error("{}: parameter {tensor} holds NaN or infinite values; not saved", dir.display())]
    NonFinite {
        /// The directory that was to receive the model.
        dir: PathBuf,
        /// The parameter.
        tensor: String,
    },
    /// The model's tokenizer files could not be read.
    #[error("{}: the tokenizer", dir.display())]
    Tokenizer {
        /// The model directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: ember_tokenizer::TokenizerError,
    },
    /// The path is none of the understood forms.
    #[error("{}: {message}", path.display())]
    NotAModel {
        /// The path.
        path: PathBuf,
        /// What was expected.
        message: String,
    },
}

impl WeightsError {
    /// A [`WeightsError::Io`].
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A [`WeightsError::Format`].
    pub fn format(path: &Path, message: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// What [`load_model`] found at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face GPT-2 directory.
    HuggingFace,
    /// A model saved by Ember.
    Ember,
    /// The book's `.pth` state dict.
    BookPth,
    /// A GGUF file (llama.cpp's, or Ember's export).
    Gguf,
}

/// A model and what it was loaded from.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model, on the requested device.
    pub model: LanguageModel,
    /// Its configuration.
    pub config: ModelConfig,
    /// The kind of source.
    pub source: ModelSource,
    /// The directory it came from (its tokenizer files are there), the GGUF file (its
    /// tokenizer is in it), or `None` for a `.pth` file.
    pub dir: Option<PathBuf>,
}

impl LoadedModel {
    /// The model as GPT-2 (what the book's chapters train), or an error naming what it
    /// is instead.
    pub fn into_gpt2(self) -> Result<GptModel, WeightsError> {
        match self.model {
            LanguageModel::Gpt2(model) => Ok(model),
            other => Err(WeightsError::NotAModel {
                path: self.dir.unwrap_or_default(),
                message: format!(
                    "a {} model, where a GPT-2 model is needed",
                    other.config().model_type()
                ),
            }),
        }
    }
}

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    !path.is_dir()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Whether `path` names a book state dict (by its extension).
pub fn is_pth(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e == "pth" || e == "pt" || e == "bin")
}

/// The model directory a path stands for: a training run directory stands for the
/// model it exported (`RUN/model`); anything else for itself.
pub fn resolve_model_path(path: &Path) -> PathBuf {
    let exported = path.join("model");
    if path.is_dir() && !path.join("config.json").exists() && exported.is_dir() {
        exported
    } else {
        path.to_path_buf()
    }
}

/// Fails with the operating system's reason when `path` is there but cannot be
/// followed (a symbolic link that loops or points nowhere), which would otherwise read
/// as a missing file.
fn check_reachable(path: &Path) -> Result<(), WeightsError> {
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::metadata(path).map_err(|e| WeightsError::io(path, e))?;
    }
    Ok(())
}

/// The raw `config.json` of the model at `path` (a directory, a `.json` file under any
/// name, or a weights file beside `config.json`), and where it was.
pub fn read_config_value(path: &Path) -> Result<(serde_json::Value, PathBuf), WeightsError> {
    check_reachable(path)?;
    let dir = resolve_model_path(path);
    let config_path = if dir.is_dir() {
        dir.join("config.json")
    } else if dir.extension().is_some_and(|e| e == "json") {
        // A configuration file under any name (bench/configs/qwen3-0.6b.json).
        dir
    } else {
        dir.parent().unwrap_or(Path::new(".")).join("config.json")
    };
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| WeightsError::io(&config_path, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| WeightsError::format(&config_path, format!("invalid JSON: {e}")))?;
    Ok((json, config_path))
}

/// The architecture of the model at `path` (a directory or its `config.json`), read and
/// validated, without loading weights. `.pth` files hold none.
pub fn read_model_config(path: &Path) -> Result<(ModelConfig, ModelSource), WeightsError> {
    let (json, config_path) = read_config_value(path)?;
    let dir = config_path.parent().unwrap_or(Path::new("."));
    let source = if json.get(gpt2::EMBER_KEY).is_some() || dir.join(CHECKSUMS_FILE).exists() {
        ModelSource::Ember
    } else {
        ModelSource::HuggingFace
    };
    Ok((ModelConfig::from_json(&json, &config_path)?, source))
}

/// The configuration of the model at `path`, checked against its weights (their
/// checksums when Ember wrote them, and their sizes) without building the model.
pub fn describe_model(path: &Path) -> Result<(ModelConfig, ModelSource), WeightsError> {
    let dir = resolve_model_path(path);
    if is_pth(&dir) {
        return Err(WeightsError::NotAModel {
            path: dir,
            message: "a .pth state dict holds no configuration".into(),
        });
    }
    if is_gguf(&dir) {
        let gguf = crate::gguf::GgufModel::open(&dir)?;
        check_size(&gguf.config, &gguf)?;
        return Ok((gguf.config, ModelSource::Gguf));
    }
    let (config, source) = read_model_config(&dir)?;
    let weights_dir = if dir.is_dir() {
        dir.clone()
    } else {
        dir.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    verify_checksums(&weights_dir)?;
    check_size(&config, &SafetensorsFiles::open(&weights_dir)?)?;
    Ok((config, source))
}

/// The name table of an architecture, for the names `source` uses.
fn table_for(config: &ModelConfig, source: &dyn TensorSource) -> NameTable {
    each_architecture!(config, ModelConfig, c => c.name_table(Some(source)))
}

/// The tensors of `source` that stand for parameters `config` does not have (GPT-2's
/// zero QKV biases): they must be zero.
fn stand_ins(config: &ModelConfig, source: &dyn TensorSource) -> Vec<String> {
    each_architecture!(config, ModelConfig, c => c.stand_in_tensors(source))
}

/// The Hub name of the token embedding of `config`'s architecture.
fn embedding_tensor(config: &ModelConfig, table: &NameTable) -> String {
    fn of<C: ArchitectureConfig>(_: &C, table: &NameTable) -> String {
        table.hub_name(C::EMBEDDING).0
    }
    each_architecture!(config, ModelConfig, c => of(c, table))
}

/// Fails unless the weights hold exactly the parameters `config` describes (a tied
/// head may be stored too), before any model is built: a config that asks for more
/// than the file holds never allocates it.
fn check_size(config: &ModelConfig, source: &dyn TensorSource) -> Result<(), WeightsError> {
    let table = table_for(config, source);
    let stand_ins = stand_ins(config, source);
    let held: u128 = source
        .names()
        .iter()
        .filter(|n| !table.is_ignored(n) && !stand_ins.contains(n))
        .filter_map(|n| source.shape(n))
        .map(|s| s.iter().map(|&d| d as u128).product::<u128>())
        .sum();
    let wanted = config.num_params() as u128;
    let head = (config.vocab_size() as u128) * (config.hidden_size() as u128);
    if held == wanted || (config.tied() && held == wanted + head) {
        return Ok(());
    }
    Err(WeightsError::format(
        source.origin(),
        format!(
            "the configuration describes {wanted} parameters but the weights hold {held}: config.json does not belong to these weights"
        ),
    ))
}

/// Builds a model of `config`'s architecture from Hub-named tensors.
pub(crate) fn model_from_tensors(
    config: &ModelConfig,
    source: &dyn TensorSource,
    dtype: Dtype,
    device: &Device,
) -> Result<LanguageModel, WeightsError> {
    check_size(config, source)?;
    let table = table_for(config, source);
    let mut also_used = Vec::new();
    if config.tied() && source.shape("lm_head.weight").is_some() {
        // transformers sometimes writes the tied head out; it must be the embedding.
        let embedding = embedding_tensor(config, &table);
        if source.read("lm_head.weight")? != source.read(&embedding)? {
            return Err(WeightsError::Mismatch {
                path: source.origin().to_path_buf(),
                problems: format!(
                    "lm_head.weight differs from {embedding} but the config ties them"
                ),
            });
        }
        also_used.push("lm_head.weight".to_string());
    }
    let stand_ins = stand_ins(config, source);
    for name in &stand_ins {
        if source.read(name)?.iter().any(|&v| v != 0.0) {
            return Err(WeightsError::Mismatch {
                path: source.origin().to_path_buf(),
                problems: format!(
                    "{name} is not zero but stands for a parameter the config does not have"
                ),
            });
        }
    }
    also_used.extend(stand_ins);
    let also_used: Vec<&str> = also_used.iter().map(String::as_str).collect();
    // The parameters are not drawn: `load_parameters` gives each its tensor first.
    each_architecture!(config, ModelConfig, c => Ok(load_parameters(
        ArchitectureConfig::init(c, device),
        &table,
        source,
        device,
        dtype,
        &also_used,
    )?
    .into()))
}

/// Load a model from a Hugging Face or Ember directory (or the `model.safetensors`
/// inside one; a run directory stands for its `model/`), or from a book `.pth` file.
///
/// `shape` is required for a `.pth` file (the book's state dict has no config; the
/// shapes are checked against it) and, for a directory, replaces its `config.json` (a
/// GPT-2 model of that shape is expected).
pub fn load_model(
    path: &Path,
    shape: Option<&GptConfig>,
    device: &Device,
) -> Result<LoadedModel, WeightsError> {
    load_model_as(path, shape, Dtype::F32, device)
}

/// [`load_model`] with the matrices of linear layers and embeddings held in `dtype`,
/// converted from the file's values tensor by tensor (a bf16 model is never held in
/// f32 on the way).
pub fn load_model_as(
    path: &Path,
    shape: Option<&GptConfig>,
    dtype: Dtype,
    device: &Device,
) -> Result<LoadedModel, WeightsError> {
    check_reachable(path)?;
    let path = resolve_model_path(path);
    if is_pth(&path) {
        let config = shape.ok_or_else(|| WeightsError::NotAModel {
            path: path.clone(),
            message: "a .pth state dict holds no configuration; pass a preset or a config.json"
                .into(),
        })?;
        config
            .validate()
            .map_err(|e| WeightsError::format(&path, e.to_string()))?;
        let tensors = book::to_gpt2_tensors(config, book::read_pth(&path)?, &path)?;
        let config = ModelConfig::Gpt2(config.clone());
        let model = model_from_tensors(&config, &tensors, dtype, device)?;
        return Ok(LoadedModel {
            model,
            config,
            source: ModelSource::BookPth,
            dir: None,
        });
    }
    if !path.exists() {
        return Err(WeightsError::NotAModel {
            path,
            message: "no such file or directory".into(),
        });
    }
    if is_gguf(&path) {
        let gguf = crate::gguf::GgufModel::open(&path)?;
        let config = gguf.config.clone();
        let model = model_from_tensors(&config, &gguf, dtype, device)?;
        return Ok(LoadedModel {
            model,
            config,
            source: ModelSource::Gguf,
            dir: Some(path),
        });
    }
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if !path.is_dir() && !is_safetensors {
        return Err(WeightsError::NotAModel {
            path,
            message: "expected a model directory (config.json + model.safetensors), a .safetensors, .gguf or .pth file".into(),
        });
    }
    let dir = if path.is_dir() {
        path.clone()
    } else {
        path.parent().unwrap_or(Path::new(".")).to_path_buf()
    };
    let (config, source) = match shape {
        Some(c) => {
            c.validate()
                .map_err(|e| WeightsError::format(&path, e.to_string()))?;
            if let Ok((found, _)) = read_model_config(&dir)
                && !matches!(found, ModelConfig::Gpt2(_))
            {
                return Err(WeightsError::NotAModel {
                    path: dir,
                    message: format!(
                        "a {} model, where a GPT-2 model of the configured shape is needed",
                        found.model_type()
                    ),
                });
            }
            (ModelConfig::Gpt2(c.clone()), ModelSource::HuggingFace)
        }
        None => read_model_config(&dir)?,
    };
    // Ember's own models carry a manifest: a file changed since it was written is
    // refused before it is read.
    verify_checksums(&dir)?;
    let tensors = SafetensorsFiles::open(&path)?;
    let model = model_from_tensors(&config, &tensors, dtype, device)?;
    Ok(LoadedModel {
        model,
        config,
        source,
        dir: Some(dir),
    })
}

/// Save `model` as a Hugging Face directory that Ember and transformers both read:
/// `model.safetensors`, `config.json` (for GPT-2 with Ember's full config under
/// `"ember"`), the tokenizer's files, and a `SHA256SUMS` manifest. LoRA adapters are
/// merged first. A model holding NaN or infinite values is refused, so a diverged run
/// never replaces a good model. Each file is written atomically, the manifest last.
pub fn save_model(
    model: &LanguageModel,
    tokenizer: &ember_tokenizer::ModelTokenizer,
    dir: &Path,
) -> Result<(), WeightsError> {
    std::fs::create_dir_all(dir).map_err(|e| WeightsError::io(dir, e))?;
    let model = model.clone().materialize();
    let (tensors, config_json) = each_architecture!(&model, LanguageModel, m => (
        Architecture::hub_tensors(m),
        Architecture::config(m).to_hub_json(),
    ));
    if let Some((name, _, _)) = tensors
        .iter()
        .find(|(_, _, values)| values.iter().any(|v| !v.is_finite()))
    {
        return Err(WeightsError::NonFinite {
            dir: dir.to_path_buf(),
            tensor: name.clone(),
        });
    }
    // The old manifest goes first: a crash between the files leaves a directory that
    // is checked by nothing rather than one that fails its check.
    let manifest = dir.join(CHECKSUMS_FILE);
    if manifest.exists() {
        std::fs::remove_file(&manifest).map_err(|e| WeightsError::io(&manifest, e))?;
    }
    // A sharded checkpoint's index would shadow the single file written now.
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        std::fs::remove_file(&index).map_err(|e| WeightsError::io(&index, e))?;
    }
    write_safetensors(&dir.join(WEIGHTS_FILE), &tensors)?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        ember_data::files::write_atomic(&path, text.as_bytes())
            .map_err(|e| WeightsError::io(&path, e))
    };
    write(
        "config.json",
        &serde_json::to_string_pretty(&config_json).expect("JSON values serialise"),
    )?;
    let files = tokenizer
        .files()
        .map_err(|e| WeightsError::format(dir, format!("cannot save the tokenizer: {e}")))?;
    for (name, text) in &files {
        write(name, text)?;
    }
    let mut names = vec![WEIGHTS_FILE, "config.json"];
    names.extend(files.iter().map(|(name, _)| *name));
    write_checksums(dir, &names)?;
    Ok(())
}

/// The tokenizer of a loaded model: the files beside it, GPT-2's for a GPT-2 model
/// without them.
pub fn model_tokenizer(
    loaded: &LoadedModel,
) -> Result<ember_tokenizer::ModelTokenizer, WeightsError> {
    let gpt2 = matches!(loaded.config, ModelConfig::Gpt2(_));
    if let (ModelSource::Gguf, Some(file)) = (loaded.source, &loaded.dir) {
        return crate::gguf::GgufModel::open(file)?.tokenizer();
    }
    let Some(dir) = &loaded.dir else {
        return ember_tokenizer::ModelTokenizer::gpt2()
            .map_err(|e| WeightsError::format(Path::new("gpt2"), e.to_string()));
    };
    let config = read_config_value(dir)
        .map(|(json, _)| json)
        .unwrap_or_default();
    ember_tokenizer::ModelTokenizer::from_dir(dir, &config, gpt2).map_err(|e| {
        WeightsError::Tokenizer {
            dir: dir.clone(),
            source: e,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use ember_data::error_chain;

    fn logits(model: &GptModel, device: &Device) -> Vec<f32> {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 2], [1, 4]), device);
        model.forward(ids).into_data().to_vec::<f32>().unwrap()
    }

    fn save(model: &GptModel, dir: &Path) -> Result<(), WeightsError> {
        let tokenizer = ember_tokenizer::ModelTokenizer::gpt2().unwrap();
        save_model(&LanguageModel::Gpt2(model.clone()), &tokenizer, dir)
    }

    fn small(tied: bool, n_layers: usize) -> GptConfig {
        GptConfig {
            vocab_size: 40,
            context_length: 8,
            emb_dim: 16,
            n_heads: 2,
            n_layers,
            drop_rate: 0.0,
            qkv_bias: !tied,
            tie_embeddings: tied,
            weight_init: Default::default(),
        }
    }

    #[test]
    fn models_round_trip_tied_and_untied() {
        let device = Device::ndarray();
        let dir = tempfile::tempdir().unwrap();
        for tied in [true, false] {
            let config = small(tied, 2);
            let model = config.init(&device);
            let path = dir.path().join(format!("tied-{tied}"));
            save(&model, &path).unwrap();
            let loaded = load_model(&path, None, &device).unwrap();
            assert_eq!(loaded.source, ModelSource::Ember);
            assert_eq!(loaded.config, ModelConfig::Gpt2(config));
            let loaded = loaded.into_gpt2().unwrap();
            // An untied head loads as a transposed view: the products may round
            // differently in the last bit.
            let (a, b) = (logits(&model, &device), logits(&loaded, &device));
            assert!(
                a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
                "{a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn mismatches_are_all_named() {
        let device = Device::ndarray();
        let config = small(true, 1);
        let mut tensors: std::collections::BTreeMap<String, RawTensor> =
            collect_parameters(&config.init(&device), &gpt2::table(true))
                .into_iter()
                .map(|(name, shape, data)| (name, RawTensor { shape, data }))
                .collect();
        tensors.remove("transformer.ln_f.bias");
        let bias = tensors.remove("transformer.h.0.ln_2.bias").unwrap();
        tensors.insert(
            "transformer.wpe.weight".into(),
            RawTensor {
                shape: vec![4, 16],
                data: vec![0.0; 64],
            },
        );
        // The same number of values as the config describes, in the wrong places.
        tensors.insert("transformer.h.0.extra".into(), bias);
        let extra = RawTensor {
            shape: vec![16 + 64],
            data: vec![0.0; 16 + 64],
        };
        tensors.insert("transformer.h.0.filler".into(), extra);
        let source = MemoryTensors {
            tensors,
            origin: PathBuf::from("m.safetensors"),
        };
        let err = model_from_tensors(&ModelConfig::Gpt2(config), &source, Dtype::F32, &device)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("m.safetensors: "), "{err}");
        assert!(
            err.contains("tensor transformer.wpe.weight has shape [4, 16], expected [8, 16]"),
            "{err}"
        );
        assert!(
            err.contains("missing tensor transformer.ln_f.bias [16]"),
            "{err}"
        );
        assert!(
            err.contains("unexpected tensor transformer.h.0.extra"),
            "{err}"
        );
    }

    /// A symbolic link that loops is named with the system's reason, not taken for a
    /// missing file.
    #[cfg(unix)]
    #[test]
    fn a_looping_link_is_named_as_such() {
        let device = Device::ndarray();
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::os::unix::fs::symlink(&model, &model).unwrap();
        for err in [
            error_chain(&load_model(&model, None, &device).unwrap_err()),
            error_chain(&describe_model(&model).unwrap_err()),
        ] {
            assert!(err.contains("Too many levels of symbolic links"), "{err}");
            assert!(err.starts_with(&model.display().to_string()), "{err}");
        }
    }

    /// A checkpoint holding NaN or infinity is refused at load, naming the tensor.
    #[test]
    fn non_finite_weights_are_refused_at_load() {
        let device = Device::ndarray();
        let config = small(true, 1);
        for bad in [f32::NAN, f32::NEG_INFINITY] {
            let mut tensors: std::collections::BTreeMap<String, RawTensor> =
                collect_parameters(&config.init(&device), &gpt2::table(true))
                    .into_iter()
                    .map(|(name, shape, data)| (name, RawTensor { shape, data }))
                    .collect();
            tensors
                .get_mut("transformer.h.0.mlp.c_fc.weight")
                .unwrap()
                .data[7] = bad;
            let source = MemoryTensors {
                tensors,
                origin: PathBuf::from("m.safetensors"),
            };
            let err = model_from_tensors(
                &ModelConfig::Gpt2(config.clone()),
                &source,
                Dtype::Bf16,
                &device,
            )
            .unwrap_err()
            .to_string();
            assert_eq!(
                err,
                format!("m.safetensors: tensor transformer.h.0.mlp.c_fc.weight holds {bad} values")
            );
        }
    }

    #[test]
    fn corrupt_and_oversized_configs_are_refused_before_allocation() {
        let device = Device::ndarray();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\"n_embd\": 4").unwrap();
        let err = load_model(dir.path(), None, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json: invalid JSON"), "{err}");

        let model = small(true, 1).init(&device);
        save(&model, dir.path()).unwrap();
        let config = dir.path().join("config.json");
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
        json["ember"]["n_layers"] = serde_json::json!(100_000_000u64);
        std::fs::write(&config, json.to_string()).unwrap();
        // The manifest catches the edit...
        let err = error_chain(&load_model(dir.path(), None, &device).unwrap_err());
        assert!(err.contains("config.json is corrupt"), "{err}");
        // ... and without one the size check refuses it before building anything.
        std::fs::remove_file(dir.path().join(CHECKSUMS_FILE)).unwrap();
        let err = load_model(dir.path(), None, &device)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("config.json does not belong to these weights"),
            "{err}"
        );
        json["ember"]["n_layers"] = serde_json::json!(1);
        json["ember"]["n_heads"] = serde_json::json!(0);
        std::fs::write(&config, json.to_string()).unwrap();
        let err = load_model(dir.path(), None, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("n_heads must be positive"), "{err}");
    }

    #[test]
    fn non_finite_weights_never_replace_a_model() {
        let device = Device::ndarray();
        let dir = tempfile::tempdir().unwrap();
        let mut model = small(true, 1).init(&device);
        save(&model, dir.path()).unwrap();
        let before = std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap();
        model.ln_f.gamma = burn::module::Param::from_tensor(Tensor::full([16], f32::NAN, &device));
        let err = save(&model, dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("parameter transformer.ln_f.weight holds NaN"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(WEIGHTS_FILE)).unwrap(),
            before
        );
        load_model(dir.path(), None, &device).unwrap();
    }
}
