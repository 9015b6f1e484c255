//! Where weights come from: the Hub's safetensors files (one, or shards listed in
//! `model.safetensors.index.json`), read through memory maps, or tensors already in
//! memory (the book's `.pth`, after its Q/K/V fusion).
//!
//! Values are decoded to f32 one tensor at a time, straight from the mapped bytes, and
//! the pages of a decoded tensor are handed back to the kernel at once, so loading holds
//! the model once (in f32) plus the one tensor being decoded, not a second copy of the
//! file.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::Dtype;

use super::WeightsError;

/// Something that holds named tensors.
pub trait TensorSource {
    /// The shape of tensor `name`, if there is one.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The values of tensor `name`, row-major, as f32.
    fn read(&self, name: &str) -> Result<Vec<f32>, WeightsError> {
        let len = self.shape(name).map_or(0, |shape| shape.iter().product());
        self.read_part(name, 0..len)
    }
    /// Values `range` (row-major positions) of tensor `name`, as f32: a part of what
    /// [`TensorSource::read`] gives, for converting a large tensor piece by piece.
    fn read_part(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, WeightsError>;
    /// Every tensor name.
    fn names(&self) -> Vec<String>;
    /// What to name in errors (a file or a directory).
    fn origin(&self) -> &Path;
    /// Matrix `name` as the source already holds it packed, `[out, in]` (a GGUF file's
    /// bf16, f16 or quantized tensors): taken as it is for a linear layer's or an
    /// embedding's weight, whatever dtype was asked for, never rounded or quantized
    /// again. `None` (the default): the source holds values, converted as asked.
    fn packed(
        &self,
        _name: &str,
    ) -> Option<Result<ember_kernels::packed_weights::PackedMatrix, WeightsError>> {
        None
    }
}

/// One tensor held in memory: row-major f32 values and a shape.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl RawTensor {
    /// The transpose of a matrix.
    pub fn transposed(&self) -> RawTensor {
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
}

/// Tensors held in memory, by name.
#[derive(Debug, Clone)]
pub struct MemoryTensors {
    /// The tensors.
    pub tensors: BTreeMap<String, RawTensor>,
    /// Where they came from.
    pub origin: PathBuf,
}

impl TensorSource for MemoryTensors {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }

    fn read_part(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| WeightsError::format(&self.origin, format!("no tensor {name}")))?;
        let len = tensor.data.len();
        tensor
            .data
            .get(range.clone())
            .map(<[f32]>::to_vec)
            .ok_or_else(|| {
                WeightsError::format(
                    &self.origin,
                    format!("tensor {name} has {len} values, not {range:?}"),
                )
            })
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }

    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// One mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    map: Mmap,
    /// Where the data section starts (after the 8-byte length and the JSON header).
    data_start: usize,
}

/// Where one tensor's bytes are.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the file's data section.
    range: (usize, usize),
}

/// The tensors of one or more safetensors files, memory-mapped.
pub struct SafetensorsFiles {
    origin: PathBuf,
    files: Vec<MappedFile>,
    entries: BTreeMap<String, Entry>,
}

/// The index of a sharded checkpoint (`model.safetensors.index.json`).
#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// The name of the single weights file of a Hub directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The name of the index of a sharded Hub directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

impl SafetensorsFiles {
    /// The weights of a model directory (`model.safetensors`, or the shards its
    /// `model.safetensors.index.json` lists) or of one `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        if !path.is_dir() {
            return Self::from_files(path, &[path.to_path_buf()]);
        }
        let single = path.join(WEIGHTS_FILE);
        let index = path.join(INDEX_FILE);
        if single.exists() {
            return Self::from_files(&single, std::slice::from_ref(&single));
        }
        if !index.exists() {
            return Err(WeightsError::format(
                path,
                format!("no {WEIGHTS_FILE} and no {INDEX_FILE}"),
            ));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| WeightsError::io(&index, e))?;
        let parsed: ShardIndex = serde_json::from_str(&text)
            .map_err(|e| WeightsError::format(&index, format!("invalid shard index: {e}")))?;
        let mut shard_names: Vec<&String> = parsed.weight_map.values().collect();
        shard_names.sort();
        shard_names.dedup();
        let mut shards = Vec::new();
        for name in shard_names {
            // The index names files beside it; anything else is refused.
            if name.contains('/') || name.contains('\\') || name == ".." {
                return Err(WeightsError::format(
                    &index,
                    format!("shard \"{name}\" is not a file name"),
                ));
            }
            shards.push(path.join(name));
        }
        let files = Self::from_files(&index, &shards)?;
        let missing: Vec<&String> = parsed
            .weight_map
            .keys()
            .filter(|name| !files.entries.contains_key(*name))
            .collect();
        if let Some(first) = missing.first() {
            return Err(WeightsError::format(
                &index,
                format!(
                    "{} tensor(s) listed but in no shard, e.g. {first}",
                    missing.len()
                ),
            ));
        }
        Ok(files)
    }

    fn from_files(origin: &Path, paths: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut entries = BTreeMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
            // SAFETY: the map is read-only; a file changed underneath would at worst give
            // wrong values (checked files are verified against their checksums first).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))?;
            let (header_len, metadata) =
                safetensors::SafeTensors::read_metadata(&map).map_err(|e| {
                    WeightsError::format(path, format!("not a valid safetensors file: {e}"))
                })?;
            for (name, info) in metadata.tensors() {
                let entry = Entry {
                    file: index,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    range: info.data_offsets,
                };
                if entries.insert(name.clone(), entry).is_some() {
                    return Err(WeightsError::format(
                        path,
                        format!("tensor {name} appears in more than one shard"),
                    ));
                }
            }
            files.push(MappedFile {
                path: path.clone(),
                map,
                data_start: 8 + header_len,
            });
        }
        Ok(Self {
            origin: origin.to_path_buf(),
            files,
            entries,
        })
    }

    /// The files read.
    pub fn paths(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }
}

impl TensorSource for SafetensorsFiles {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn read_part(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| WeightsError::format(&self.origin, format!("no tensor {name}")))?;
        let file = &self.files[entry.file];
        let unsupported = || {
            WeightsError::format(
                &file.path,
                format!(
                    "tensor {name} is {:?}; floating-point weights (F32, F16, BF16, F64) are supported",
                    entry.dtype
                ),
            )
        };
        let size = value_bytes(entry.dtype).ok_or_else(unsupported)?;
        let (first, last) = (
            entry.range.0 + range.start * size,
            entry.range.0 + range.end * size,
        );
        if range.start > range.end || last > entry.range.1 {
            return Err(WeightsError::format(
                &file.path,
                format!("tensor {name} has no values {range:?}"),
            ));
        }
        let (start, end) = (file.data_start + first, file.data_start + last);
        let values = decode(&file.map[start..end], entry.dtype).ok_or_else(unsupported)?;
        // The decoded copy is what the model keeps: give the mapped pages back.
        // SAFETY: DONTNEED on a read-only file mapping only drops cached pages; a later
        // access reads them from the file again.
        unsafe {
            let _ = file.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                end - start,
            );
        }
        Ok(values)
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// Every floating-point tensor of a `.safetensors` file, in memory (for reference
/// fixtures; models load through [`SafetensorsFiles`] one tensor at a time).
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, RawTensor>, WeightsError> {
    let files = SafetensorsFiles::open(path)?;
    let mut out = BTreeMap::new();
    for name in files.names() {
        let entry = &files.entries[&name];
        if decode(&[], entry.dtype).is_none() {
            continue; // integer tensors are not weights
        }
        let shape = entry.shape.clone();
        out.insert(
            name.clone(),
            RawTensor {
                shape,
                data: files.read(&name)?,
            },
        );
    }
    Ok(out)
}

/// Bytes of one value of a float `dtype`; `None` for the others.
fn value_bytes(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F64 => Some(8),
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// Little-endian values of float `dtype` as f32 (what GGUF's float tensors hold too).
///
/// # Panics
/// For a dtype that is not a float.
pub(crate) fn decode_floats(bytes: &[u8], dtype: Dtype) -> Vec<f32> {
    decode(bytes, dtype).expect("a float dtype")
}

/// Little-endian values of `dtype` as f32; `None` for non-float dtypes.
fn decode(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    const CHUNK: usize = 1 << 16;
    fn convert<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32 + Sync) -> Vec<f32> {
        let mut out = Vec::with_capacity(bytes.len() / N);
        bytes
            .par_chunks_exact(N)
            .with_min_len(CHUNK)
            .map(|b| f(b.try_into().expect("chunk of N bytes")))
            .collect_into_vec(&mut out);
        out
    }
    Some(match dtype {
        Dtype::F32 => convert::<4>(bytes, f32::from_le_bytes),
        Dtype::F64 => convert::<8>(bytes, |b| f64::from_le_bytes(b) as f32),
        Dtype::F16 => convert::<2>(bytes, |b| half::f16::from_le_bytes(b).to_f32()),
        Dtype::BF16 => convert::<2>(bytes, |b| half::bf16::from_le_bytes(b).to_f32()),
        _ => return None,
    })
}

/// Writes `tensors` (name, shape, row-major f32 values) as one safetensors file.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) -> Result<(), WeightsError> {
    let bytes: Vec<(&String, &Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name,
                shape,
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(Dtype::F32, (*shape).clone(), data)
                .map(|view| ((*name).clone(), view))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WeightsError::format(path, format!("cannot serialise tensors: {e}")))?;
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let serialized = safetensors::serialize(views, Some(metadata))
        .map_err(|e| WeightsError::format(path, format!("cannot serialise tensors: {e}")))?;
    ember_data::files::write_atomic(path, &serialized).map_err(|e| WeightsError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_dtype_decodes() {
        let one_and_a_half = |dtype| match dtype {
            Dtype::F32 => 1.5f32.to_le_bytes().to_vec(),
            Dtype::F64 => 1.5f64.to_le_bytes().to_vec(),
            Dtype::F16 => half::f16::from_f32(1.5).to_le_bytes().to_vec(),
            Dtype::BF16 => half::bf16::from_f32(1.5).to_le_bytes().to_vec(),
            _ => unreachable!(),
        };
        for dtype in [Dtype::F32, Dtype::F64, Dtype::F16, Dtype::BF16] {
            assert_eq!(
                decode(&one_and_a_half(dtype), dtype),
                Some(vec![1.5]),
                "{dtype:?}"
            );
        }
        assert_eq!(decode(&[1, 0, 0, 0], Dtype::I32), None);
    }

    #[test]
    fn files_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_safetensors(&path, &[("a".into(), vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])]).unwrap();
        let files = SafetensorsFiles::open(dir.path()).unwrap();
        assert_eq!(files.shape("a"), Some(vec![2, 2]));
        assert_eq!(files.read("a").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(files.read_part("a", 1..3).unwrap(), vec![2.0, 3.0]);
        let err = files.read_part("a", 3..5).unwrap_err().to_string();
        assert!(err.contains("tensor a has no values 3..5"), "{err}");
        assert_eq!(files.names(), vec!["a".to_string()]);
        std::fs::write(&path, b"not a safetensors file").unwrap();
        let err = SafetensorsFiles::open(&path).err().unwrap();
        assert!(
            ember_data::error_chain(&err)
                .contains("model.safetensors: not a valid safetensors file"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = SafetensorsFiles::open(empty.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no model.safetensors and no model.safetensors.index.json"),
            "{err}"
        );
    }
}
