//! The GGUF container (version 3, little-endian), as llama.cpp's `gguf.cpp` and the
//! `gguf` Python package read and write it: a header, typed key-value metadata in
//! order, tensor descriptors (name, dimensions innermost first, ggml type, offset), then
//! the tensors' bytes, each aligned (32 bytes unless `general.alignment` says otherwise).
//!
//! Written here rather than taken from a crate: the crates on crates.io either keep the
//! metadata in a hash map (gguf-rs-lib: the same model exported twice gives different
//! bytes, and keys leave in an order llama.cpp's tools never write) or only read. The
//! format is 150 lines; what Ember needs of it is reading tensors part by part from a
//! memory map and writing files deterministically, tensor by tensor.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::weights::WeightsError;

/// "GGUF", little-endian.
const MAGIC: [u8; 4] = *b"GGUF";
const VERSION: u32 = 3;
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value (GGUF's types, by their names).
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Elements of one type (an empty array is written as one of u8).
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::String(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// An unsigned integer of any width (what llama.cpp's writers are loose about).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// A float of either width.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        match self {
            Self::U8(v) => out.write_all(&[*v]),
            Self::I8(v) => out.write_all(&v.to_le_bytes()),
            Self::U16(v) => out.write_all(&v.to_le_bytes()),
            Self::I16(v) => out.write_all(&v.to_le_bytes()),
            Self::U32(v) => out.write_all(&v.to_le_bytes()),
            Self::I32(v) => out.write_all(&v.to_le_bytes()),
            Self::F32(v) => out.write_all(&v.to_le_bytes()),
            Self::Bool(v) => out.write_all(&[u8::from(*v)]),
            Self::String(s) => write_string(out, s),
            Self::Array(values) => {
                let element = values.first().map_or(0, Value::type_id);
                out.write_all(&element.to_le_bytes())?;
                out.write_all(&(values.len() as u64).to_le_bytes())?;
                values.iter().try_for_each(|v| v.write(out))
            }
            Self::U64(v) => out.write_all(&v.to_le_bytes()),
            Self::I64(v) => out.write_all(&v.to_le_bytes()),
            Self::F64(v) => out.write_all(&v.to_le_bytes()),
        }
    }
}

fn write_string(out: &mut impl Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

/// A ggml tensor type Ember reads or writes (ggml's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q8_0,
    #[allow(non_camel_case_types)] // ggml's name
    Q4_K,
    /// Read only (llama.cpp's Q4_K_M files hold some matrices in it).
    #[allow(non_camel_case_types)] // ggml's name
    Q6_K,
    Bf16,
}

impl GgmlType {
    /// ggml's number for the type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
            Self::Q4_K => 12,
            Self::Q6_K => 14,
            Self::Bf16 => 30,
        }
    }

    /// The type of ggml's number, if Ember reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        [
            Self::F32,
            Self::F16,
            Self::Q4_0,
            Self::Q8_0,
            Self::Q4_K,
            Self::Q6_K,
            Self::Bf16,
        ]
        .into_iter()
        .find(|t| t.id() == id)
    }

    /// Values per block and bytes per block.
    pub fn block(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q8_0 => (32, 34),
            Self::Q4_K => (256, 144),
            Self::Q6_K => (256, 210),
        }
    }

    /// Bytes of a row of `n` values (`None` if not whole blocks).
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        let (values, bytes) = self.block();
        n.is_multiple_of(values).then(|| n / values * bytes)
    }
}

/// A tensor's descriptor.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, innermost (a row's length) first, as ggml counts them.
    pub dims: Vec<u64>,
    /// Its type.
    pub ggml_type: GgmlType,
    /// Where its bytes start, from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Bytes of the tensor.
    pub fn bytes(&self) -> u64 {
        let rows: u64 = self.dims.iter().skip(1).product();
        self.ggml_type
            .row_bytes(self.dims.first().copied().unwrap_or(1))
            .unwrap_or(0)
            * rows
    }
}

/// A GGUF file read: its metadata and descriptors, its tensors' bytes mapped.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// Metadata, in the file's order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor descriptors, in the file's order.
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: Mmap,
}

/// Reads little-endian values from a byte slice, failing with the position.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("ends early (at byte {}, {n} more needed)", self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len())
            .ok_or_else(|| format!("a length of {n} at byte {} is past the file", self.at - 8))
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.len()?;
        let at = self.at;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))
    }

    fn value(&mut self, type_id: u32, depth: usize) -> Result<Value, String> {
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => Value::Bool(self.array::<1>()?[0] != 0),
            8 => Value::String(self.string()?),
            9 if depth < 4 => {
                let element = self.u32()?;
                let n = self.len()?;
                let mut values = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    values.push(self.value(element, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(format!(
                    "unknown value type {other} at byte {}",
                    self.at - 4
                ));
            }
        })
    }
}

impl GgufFile {
    /// Reads `path`'s header, metadata and descriptors (the tensors stay on disk, mapped).
    pub fn open(path: &Path) -> Result<Self, WeightsError> {
        let io = |source| WeightsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the file is only read; a file changed underneath while loading gives
        // wrong values, as with safetensors' maps, never unsoundness in Ember's code.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (metadata, tensors, data_start) =
            Self::parse(&map).map_err(|message| WeightsError::format(path, message))?;
        Ok(Self {
            path: path.to_path_buf(),
            metadata,
            tensors,
            data_start,
            map,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parse(bytes: &[u8]) -> Result<(Vec<(String, Value)>, Vec<TensorInfo>, usize), String> {
        let mut c = Cursor { bytes, at: 0 };
        if c.take(4).ok() != Some(&MAGIC[..]) {
            return Err("not a GGUF file (no GGUF magic)".into());
        }
        let version = c.u32()?;
        if version != VERSION && version != 2 {
            return Err(format!("GGUF version {version} (Ember reads 2 and 3)"));
        }
        let (n_tensors, n_kv) = (c.len()?, c.len()?);
        let mut metadata = Vec::with_capacity(n_kv);
        for _ in 0..n_kv {
            let key = c.string()?;
            let type_id = c.u32()?;
            let value = c
                .value(type_id, 0)
                .map_err(|e| format!("metadata {key}: {e}"))?;
            metadata.push((key, value));
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()?;
            if n_dims > 4 {
                return Err(format!(
                    "tensor {name} has {n_dims} dimensions (ggml has 4)"
                ));
            }
            let dims = (0..n_dims)
                .map(|_| c.u64())
                .collect::<Result<Vec<_>, _>>()?;
            let type_id = c.u32()?;
            let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| {
                format!(
                    "tensor {name} is of ggml type {type_id}, which Ember does not read \
                     (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q6_K)"
                )
            })?;
            let offset = c.u64()?;
            let info = TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            };
            if info.ggml_type.row_bytes(info.dims[0]).is_none() {
                return Err(format!(
                    "tensor {} has rows of {} values, not whole {:?} blocks",
                    info.name, info.dims[0], info.ggml_type
                ));
            }
            tensors.push(info);
        }
        let alignment = metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1);
        let data_start = (c.at as u64).next_multiple_of(alignment);
        for t in &tensors {
            let end = data_start + t.offset + t.bytes();
            if end > bytes.len() as u64 {
                return Err(format!(
                    "tensor {} ({} bytes at {}) is past the end of the file ({} bytes): truncated?",
                    t.name,
                    t.bytes(),
                    data_start + t.offset,
                    bytes.len()
                ));
            }
        }
        Ok((metadata, tensors, data_start as usize))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensor `name`'s descriptor.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of `info`'s tensor.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = self.data_start + info.offset as usize;
        &self.map[start..start + info.bytes() as usize]
    }

    /// Gives back the mapped pages of `info`'s bytes `range` once they are copied (what
    /// the model keeps is its own copy): a load's peak memory is then the model and a
    /// tensor, not the model and the file.
    pub fn release(&self, info: &TensorInfo, range: std::ops::Range<usize>) {
        let start = self.data_start + info.offset as usize + range.start;
        // SAFETY: DONTNEED on a read-only file mapping only drops this process's pages;
        // a later access reads them from the file again.
        unsafe {
            let _ = self.map.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                start,
                range.len(),
            );
        }
    }
}

/// A tensor to write: its descriptor (offset ignored) and its bytes, made when asked.
pub struct TensorOut<'a> {
    /// Name, dimensions (innermost first) and type.
    pub info: TensorInfo,
    /// Makes the tensor's bytes (called once, in the file's order).
    pub bytes: Box<dyn FnOnce() -> Result<Vec<u8>, WeightsError> + 'a>,
}

/// Writes a GGUF file at `path`: `metadata` in its order, then `tensors` in theirs,
/// each tensor's bytes made just before they are written (one tensor in memory at a
/// time). Written to a temporary file beside `path` and renamed, so a failure leaves no
/// half-written file.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: Vec<TensorOut<'_>>,
) -> Result<(), WeightsError> {
    let io = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let partial = path.with_extension("gguf.partial");
    let result = (|| {
        let mut out =
            BufWriter::with_capacity(1 << 20, std::fs::File::create(&partial).map_err(io)?);
        let mut header = Vec::new();
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&VERSION.to_le_bytes());
        header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            write_string(&mut header, key).map_err(io)?;
            header.extend_from_slice(&value.type_id().to_le_bytes());
            value.write(&mut header).map_err(io)?;
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(tensors.len());
        for t in &tensors {
            write_string(&mut header, &t.info.name).map_err(io)?;
            header.extend_from_slice(&(t.info.dims.len() as u32).to_le_bytes());
            for d in &t.info.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.info.ggml_type.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + t.info.bytes()).next_multiple_of(DEFAULT_ALIGNMENT);
        }
        let data_start = (header.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
        header.resize(data_start as usize, 0);
        out.write_all(&header).map_err(io)?;
        let mut written = 0u64;
        for (t, offset) in tensors.into_iter().zip(offsets) {
            let want = t.info.bytes();
            let name = t.info.name.clone();
            let bytes = (t.bytes)()?;
            if bytes.len() as u64 != want {
                return Err(WeightsError::format(
                    path,
                    format!("tensor {name}: {} bytes made, {want} declared", bytes.len()),
                ));
            }
            out.write_all(&vec![0u8; (offset - written) as usize])
                .map_err(io)?;
            out.write_all(&bytes).map_err(io)?;
            written = offset + want;
        }
        let end = written.next_multiple_of(DEFAULT_ALIGNMENT);
        out.write_all(&vec![0u8; (end - written) as usize])
            .map_err(io)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)
    })();
    match result {
        Ok(()) => std::fs::rename(&partial, path).map_err(io),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> PathBuf {
        let path = dir.join("t.gguf");
        let metadata = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_string(), Value::U32(2)),
            ("llama.rope.freq_base".to_string(), Value::F32(5e5)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("Ġb".into())]),
            ),
            (
                "tokenizer.ggml.add_bos_token".to_string(),
                Value::Bool(true),
            ),
        ];
        let tensors = vec![
            TensorOut {
                info: TensorInfo {
                    name: "norm.weight".into(),
                    dims: vec![3],
                    ggml_type: GgmlType::F32,
                    offset: 0,
                },
                bytes: Box::new(|| {
                    Ok([1.0f32, 2.0, 3.0]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect())
                }),
            },
            TensorOut {
                info: TensorInfo {
                    name: "w".into(),
                    dims: vec![32, 2],
                    ggml_type: GgmlType::Q8_0,
                    offset: 0,
                },
                bytes: Box::new(|| Ok((0..68u8).collect())),
            },
        ];
        write_gguf(&path, &metadata, tensors).unwrap();
        path
    }

    /// What is written reads back: metadata in order, descriptors with aligned offsets,
    /// the bytes; and the same input gives the same bytes.
    #[test]
    fn a_written_file_reads_back_and_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.metadata.len(), 5);
        assert_eq!(file.metadata[0].0, "general.architecture");
        assert_eq!(
            file.get("llama.block_count").and_then(Value::as_u64),
            Some(2)
        );
        assert_eq!(
            file.get("llama.rope.freq_base").and_then(Value::as_f64),
            Some(5e5)
        );
        assert_eq!(file.tensors[1].offset, 32);
        assert_eq!(file.bytes(&file.tensors[1]), (0..68u8).collect::<Vec<_>>());
        let norm = file.bytes(file.tensor("norm.weight").unwrap());
        assert_eq!(&norm[4..8], &2.0f32.to_le_bytes());
        let first = std::fs::read(&path).unwrap();
        let again = sample(dir.path());
        assert_eq!(std::fs::read(again).unwrap(), first);
        assert!(first.len().is_multiple_of(32));
    }

    /// A truncated file, another format, or an unknown tensor type is a one-line error
    /// naming the problem.
    #[test]
    fn bad_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.gguf");
        std::fs::write(&cut, &bytes[..bytes.len() - 40]).unwrap();
        let err = GgufFile::open(&cut).unwrap_err().to_string();
        assert!(
            err.contains("tensor w") && err.contains("truncated"),
            "{err}"
        );
        std::fs::write(&cut, &bytes[..50]).unwrap();
        let err = GgufFile::open(&cut).unwrap_err().to_string();
        assert!(err.contains("ends early"), "{err}");
        std::fs::write(&cut, b"PK\x03\x04 not gguf").unwrap();
        let err = GgufFile::open(&cut).unwrap_err().to_string();
        assert!(err.ends_with("not a GGUF file (no GGUF magic)"), "{err}");
        // ggml type 11 (Q3_K) in the second descriptor.
        let mut odd = bytes.clone();
        let name_at = bytes
            .windows(1 + 8)
            .position(|w| w == b"\x01\x00\x00\x00\x00\x00\x00\x00w")
            .unwrap()
            + 9;
        let type_at = name_at + 4 + 16;
        odd[type_at..type_at + 4].copy_from_slice(&11u32.to_le_bytes());
        std::fs::write(&cut, &odd).unwrap();
        let err = GgufFile::open(&cut).unwrap_err().to_string();
        assert!(err.contains("tensor w is of ggml type 11"), "{err}");
    }
}
