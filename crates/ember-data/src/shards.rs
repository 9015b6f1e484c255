//! Token shards for corpora bigger than memory (the nanoGPT / llm.c approach).
//!
//! [`prepare_corpus`] tokenizes text once and writes `train_000000.bin`, `train_000001.bin`, ...,
//! `val_000000.bin`, ... in llm.c's format: a header of 256 little-endian `i32`
//! (`[20240520, 1, num_tokens, 0, ...]`, 1024 bytes) followed by `num_tokens` little-endian `u16`
//! token ids. [`ShardDataset`] memory-maps them and serves sliding windows over the concatenated
//! token stream of a split.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use ember_tokenizer::{END_OF_TEXT_ID, Gpt2Tokenizer, Tokenizer};
use memmap2::Mmap;
use rayon::prelude::*;
use serde::Deserialize;

use crate::window::{check_window_args, num_sliding_windows};
use crate::{DataError, WindowSource};

/// Magic number in the first header int (llm.c's token-file magic).
pub const SHARD_MAGIC: i32 = 20240520;
/// Shard format version (second header int).
pub const SHARD_VERSION: i32 = 1;
/// Number of `i32` in the header.
pub const HEADER_INTS: usize = 256;
/// Header size in bytes.
pub const HEADER_BYTES: usize = HEADER_INTS * 4;

/// Target size of the pieces a large `.txt` document is cut into for parallel tokenization.
const TXT_CHUNK_BYTES: usize = 1 << 20;
/// Text volume of `.jsonl` documents tokenized together in one parallel batch.
const JSONL_BATCH_BYTES: usize = 16 << 20;

/// Options of [`prepare_corpus`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrepareOptions {
    /// Fraction (in `[0, 1)`) held out for validation: the last documents, or the last tokens when
    /// the input is a single document. Any positive fraction holds out at least one document
    /// (token) and keeps at least one for training.
    pub val_fraction: f64,
    /// Tokens per shard file (the last shard of a split may hold fewer).
    pub shard_tokens: usize,
    /// Show a progress bar (bytes read, rate, ETA) on stderr.
    pub progress: bool,
}

impl Default for PrepareOptions {
    /// 10% validation, 100M tokens per shard (llm.c's FineWeb shard size), no progress bar.
    fn default() -> Self {
        Self {
            val_fraction: 0.1,
            shard_tokens: 100_000_000,
            progress: false,
        }
    }
}

/// What [`prepare_corpus`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareSummary {
    /// Input files read, in processing order.
    pub input_files: Vec<PathBuf>,
    /// Number of documents (a `.txt` file or a non-blank `.jsonl` line each).
    pub num_documents: usize,
    /// Documents in the validation split (0 when a single document was split by tokens).
    pub val_documents: usize,
    /// Tokens written to the train split (including `<|endoftext|>` separators).
    pub train_tokens: u64,
    /// Tokens written to the validation split.
    pub val_tokens: u64,
    /// Train shard paths, in order.
    pub train_shards: Vec<PathBuf>,
    /// Validation shard paths, in order.
    pub val_shards: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum InputKind {
    Txt,
    Jsonl,
}

fn input_kind(path: &Path) -> Option<InputKind> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("txt") => Some(InputKind::Txt),
        Some("jsonl") => Some(InputKind::Jsonl),
        _ => None,
    }
}

/// The input files: `input` itself, or every `.txt`/`.jsonl` below the directory `input`, sorted.
fn collect_inputs(input: &Path) -> Result<Vec<(PathBuf, InputKind)>, DataError> {
    let meta = std::fs::metadata(input).map_err(|e| DataError::io(input, e))?;
    if meta.is_file() {
        let kind = input_kind(input).ok_or_else(|| DataError::UnsupportedInput {
            path: input.to_path_buf(),
        })?;
        return Ok(vec![(input.to_path_buf(), kind)]);
    }
    if !meta.is_dir() {
        return Err(DataError::UnsupportedInput {
            path: input.to_path_buf(),
        });
    }
    let mut files = Vec::new();
    let mut stack = vec![input.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| DataError::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DataError::io(&dir, e))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| DataError::io(&path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if let Some(kind) = input_kind(&path) {
                files.push((path, kind));
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(DataError::EmptyInput {
            path: input.to_path_buf(),
            message: "no .txt or .jsonl files found".into(),
        });
    }
    Ok(files)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Counts the documents of a file (pass 1).
fn count_documents(path: &Path, kind: InputKind) -> Result<usize, DataError> {
    match kind {
        InputKind::Txt => Ok(1),
        InputKind::Jsonl => {
            let file = File::open(path).map_err(|e| DataError::io(path, e))?;
            let mut reader = BufReader::new(file);
            let mut line = Vec::new();
            let mut n = 0;
            loop {
                line.clear();
                let read = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| DataError::io(path, e))?;
                if read == 0 {
                    return Ok(n);
                }
                if !is_blank(&line) {
                    n += 1;
                }
            }
        }
    }
}

/// Cuts `text` into pieces of about `target` bytes whose token sequences concatenate to the tokens
/// of the whole text.
///
/// Cuts are made only just before a whitespace character that follows a non-whitespace one
/// (preferably at a paragraph break `\n\n`). GPT-2's pre-tokenizer always ends a piece there and
/// its matching from that point on does not depend on what precedes, so tokenizing the pieces
/// separately gives exactly the same ids.
pub(crate) fn chunk_text(text: &str, target: usize) -> Vec<&str> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let target = target.max(1);
    while text.len() - start > target {
        let from = start + target;
        let cut = find_cut(text, from, "\n\n").or_else(|| find_cut(text, from, "\n"));
        let cut = cut.or_else(|| find_cut(text, from, " "));
        match cut {
            Some(c) => {
                chunks.push(&text[start..c]);
                start = c;
            }
            None => break,
        }
    }
    chunks.push(&text[start..]);
    chunks
}

/// First position `p >= from` where `text[p..]` starts with `pat` (whitespace) and the character
/// before `p` is not whitespace.
fn find_cut(text: &str, from: usize, pat: &str) -> Option<usize> {
    let mut pos = from;
    while pos < text.len() {
        // `pat` is ASCII, so any match position is a char boundary; `from` may not be.
        let rel = text.as_bytes()[pos..]
            .windows(pat.len())
            .position(|w| w == pat.as_bytes())?;
        let p = pos + rel;
        if let Some(prev) = text[..p].chars().next_back()
            && !prev.is_whitespace()
        {
            return Some(p);
        }
        pos = p + 1;
    }
    None
}

/// Writes one split's shards.
struct ShardWriter<'a> {
    dir: &'a Path,
    split: &'static str,
    shard_tokens: usize,
    buffer: Vec<u16>,
    shards: Vec<PathBuf>,
    total: u64,
    has_document: bool,
}

impl<'a> ShardWriter<'a> {
    fn new(dir: &'a Path, split: &'static str, shard_tokens: usize) -> Self {
        Self {
            dir,
            split,
            shard_tokens,
            buffer: Vec::with_capacity(shard_tokens.min(1 << 24)),
            shards: Vec::new(),
            total: 0,
            has_document: false,
        }
    }

    /// Appends a document, preceded by `<|endoftext|>` unless it is the split's first one.
    /// Empty documents are skipped entirely.
    fn push_document(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        if tokens.is_empty() {
            return Ok(());
        }
        if self.has_document {
            self.push_tokens(&[END_OF_TEXT_ID])?;
        }
        self.has_document = true;
        self.push_tokens(tokens)
    }

    fn push_tokens(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        for &t in tokens {
            let t16 = u16::try_from(t).map_err(|_| DataError::TokenTooLarge { id: t })?;
            self.buffer.push(t16);
            if self.buffer.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("{}_{:06}.bin", self.split, self.shards.len()));
        write_shard(&path, &self.buffer)?;
        tracing::debug!(path = %path.display(), tokens = self.buffer.len(), "wrote shard");
        self.total += self.buffer.len() as u64;
        self.buffer.clear();
        self.shards.push(path);
        Ok(())
    }
}

/// Writes `tokens` as a shard file at `path`, atomically ([`crate::files::write_atomic`]).
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<(), DataError> {
    let num = i32::try_from(tokens.len()).map_err(|_| {
        DataError::InvalidArgument(format!(
            "{}: {} tokens do not fit the shard header",
            path.display(),
            tokens.len()
        ))
    })?;
    let mut bytes = Vec::with_capacity(HEADER_BYTES + 2 * tokens.len());
    let mut header = [0i32; HEADER_INTS];
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = num;
    for h in header {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    for &t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    crate::files::write_atomic(path, &bytes).map_err(|e| DataError::io(path, e))
}

/// Reads a whole shard file into memory (validating it like [`ShardDataset::open`]).
pub fn read_shard(path: &Path) -> Result<Vec<u16>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let n = validate_shard(path, &bytes)?;
    Ok(bytes[HEADER_BYTES..HEADER_BYTES + 2 * n]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect())
}

/// Checks a shard's header and size; returns its token count.
fn validate_shard(path: &Path, bytes: &[u8]) -> Result<usize, DataError> {
    let bad = |message: String| DataError::BadShard {
        path: path.to_path_buf(),
        message,
    };
    if bytes.len() < HEADER_BYTES {
        return Err(bad(format!(
            "truncated header: {} bytes, expected at least {HEADER_BYTES}",
            bytes.len()
        )));
    }
    let int = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    if int(0) != SHARD_MAGIC {
        return Err(bad(format!(
            "bad magic number {} (expected {SHARD_MAGIC})",
            int(0)
        )));
    }
    if int(1) != SHARD_VERSION {
        return Err(bad(format!(
            "unsupported version {} (expected {SHARD_VERSION})",
            int(1)
        )));
    }
    let n = usize::try_from(int(2)).map_err(|_| bad(format!("negative token count {}", int(2))))?;
    let expected = HEADER_BYTES + 2 * n;
    if bytes.len() < expected {
        return Err(bad(format!(
            "truncated: header says {n} tokens ({expected} bytes) but the file has {} bytes",
            bytes.len()
        )));
    }
    if bytes.len() > expected {
        return Err(bad(format!(
            "{} unexpected trailing bytes after {n} tokens",
            bytes.len() - expected
        )));
    }
    Ok(n)
}

/// Removes `{train,val}_NNNNNN.bin` files left over from an earlier run.
fn remove_old_shards(dir: &Path) -> Result<(), DataError> {
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ["train", "val"]
            .iter()
            .any(|split| shard_index(&name, split).is_some())
        {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| DataError::io(&path, e))?;
        }
    }
    Ok(())
}

/// `Some(index)` if `name` is `{split}_{index}.bin`.
fn shard_index(name: &str, split: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(split)?
        .strip_prefix('_')?
        .strip_suffix(".bin")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Deserialize)]
struct JsonlLine {
    text: String,
}

/// Tokenizes a corpus into train/val token shards in `output_dir` (created if needed; existing
/// `train_*.bin` / `val_*.bin` there are removed first).
///
/// * `input`: a `.txt` file (one document), a `.jsonl` file (one document per non-blank line,
///   taken from its `"text"` field) or a directory searched recursively for such files, processed
///   in sorted path order.
/// * Documents are joined with `<|endoftext|>` (50256) *between* them (a single document gives
///   exactly its own tokens); `<|endoftext|>` written inside a text is also encoded as 50256.
/// * Validation split: the last `val_fraction` of the documents, or of the tokens when the input
///   is a single document.
/// * Tokenization runs in parallel (rayon) over documents, and over paragraph-aligned pieces of
///   large `.txt` documents; the output does not depend on the number of threads.
///
/// Errors name the offending file: invalid UTF-8, malformed `.jsonl` lines, empty input.
pub fn prepare_corpus(
    input: &Path,
    output_dir: &Path,
    tokenizer: &Gpt2Tokenizer,
    options: PrepareOptions,
) -> Result<PrepareSummary, DataError> {
    if !(0.0..1.0).contains(&options.val_fraction) {
        return Err(DataError::InvalidArgument(format!(
            "val_fraction must be in [0, 1), got {}",
            options.val_fraction
        )));
    }
    if options.shard_tokens == 0 || options.shard_tokens > i32::MAX as usize {
        return Err(DataError::InvalidArgument(format!(
            "shard_tokens must be in 1..={}, got {}",
            i32::MAX,
            options.shard_tokens
        )));
    }
    let files = collect_inputs(input)?;

    // Pass 1: count documents (for the document-level validation split) and bytes (progress).
    let mut num_documents = 0;
    let mut total_bytes = 0u64;
    for (path, kind) in &files {
        num_documents += count_documents(path, *kind)?;
        total_bytes += std::fs::metadata(path)
            .map_err(|e| DataError::io(path, e))?
            .len();
    }
    if num_documents == 0 {
        return Err(DataError::EmptyInput {
            path: input.to_path_buf(),
            message: "no documents".into(),
        });
    }
    let val_documents = if num_documents == 1 {
        0
    } else {
        split_count(num_documents, options.val_fraction)
    };
    let train_documents = num_documents - val_documents;

    std::fs::create_dir_all(output_dir).map_err(|e| DataError::io(output_dir, e))?;
    remove_old_shards(output_dir)?;

    let progress = crate::progress::bar(
        options.progress,
        Some(total_bytes),
        "{spinner} tokenizing [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
    );

    let mut train = ShardWriter::new(output_dir, "train", options.shard_tokens);
    let mut val = ShardWriter::new(output_dir, "val", options.shard_tokens);
    let mut doc_index = 0usize;

    let mut emit = |docs: Vec<Vec<u32>>| -> Result<(), DataError> {
        for tokens in docs {
            if num_documents == 1 {
                // Single document: split by tokens.
                let n_val = split_count(tokens.len(), options.val_fraction);
                let (t, v) = tokens.split_at(tokens.len() - n_val);
                train.push_document(t)?;
                val.push_document(v)?;
            } else if doc_index < train_documents {
                train.push_document(&tokens)?;
            } else {
                val.push_document(&tokens)?;
            }
            doc_index += 1;
        }
        Ok(())
    };

    for (path, kind) in &files {
        match kind {
            InputKind::Txt => {
                let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
                let text = String::from_utf8(bytes).map_err(|e| DataError::InvalidUtf8 {
                    path: path.clone(),
                    offset: e.utf8_error().valid_up_to(),
                })?;
                let pieces = chunk_text(&text, TXT_CHUNK_BYTES);
                let encoded = pieces
                    .par_iter()
                    .map(|p| encode(tokenizer, p, path))
                    .collect::<Result<Vec<_>, _>>()?;
                emit(vec![encoded.concat()])?;
                progress.inc(text.len() as u64);
            }
            InputKind::Jsonl => {
                let file = File::open(path).map_err(|e| DataError::io(path, e))?;
                let mut reader = BufReader::new(file);
                let mut batch: Vec<String> = Vec::new();
                let mut batch_bytes = 0usize;
                let mut line = Vec::new();
                let mut lineno = 0usize;
                loop {
                    line.clear();
                    let read = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| DataError::io(path, e))?;
                    if read > 0 {
                        lineno += 1;
                        progress.inc(read as u64);
                        if !is_blank(&line) {
                            let s = std::str::from_utf8(&line).map_err(|e| DataError::Json {
                                path: path.clone(),
                                line: lineno,
                                message: format!(
                                    "invalid UTF-8 at byte {} of the line",
                                    e.valid_up_to()
                                ),
                            })?;
                            let doc: JsonlLine =
                                serde_json::from_str(s).map_err(|e| DataError::Json {
                                    path: path.clone(),
                                    line: lineno,
                                    message: format!(
                                        "expected a JSON object with a string \"text\" field: {e}"
                                    ),
                                })?;
                            batch_bytes += doc.text.len();
                            batch.push(doc.text);
                        }
                    }
                    if (read == 0 && !batch.is_empty()) || batch_bytes >= JSONL_BATCH_BYTES {
                        let docs = batch
                            .par_iter()
                            .map(|t| encode(tokenizer, t, path))
                            .collect::<Result<Vec<_>, _>>()?;
                        emit(docs)?;
                        batch.clear();
                        batch_bytes = 0;
                    }
                    if read == 0 {
                        break;
                    }
                }
            }
        }
    }
    train.flush()?;
    val.flush()?;
    progress.finish_and_clear();

    if train.total == 0 {
        return Err(DataError::EmptyInput {
            path: input.to_path_buf(),
            message: "no tokens in the training split (is the input empty?)".into(),
        });
    }
    tracing::info!(
        documents = num_documents,
        train_tokens = train.total,
        val_tokens = val.total,
        train_shards = train.shards.len(),
        val_shards = val.shards.len(),
        "prepared corpus"
    );
    Ok(PrepareSummary {
        input_files: files.into_iter().map(|(p, _)| p).collect(),
        num_documents,
        val_documents,
        train_tokens: train.total,
        val_tokens: val.total,
        train_shards: train.shards,
        val_shards: val.shards,
    })
}

/// Items held out for a fraction: `round(n * fraction)`, at least 1 if `fraction > 0` and
/// at most `n - 1` (so training keeps at least one).
fn split_count(n: usize, fraction: f64) -> usize {
    if fraction <= 0.0 || n < 2 {
        return 0;
    }
    ((n as f64 * fraction).round() as usize).clamp(1, n - 1)
}

fn encode(tokenizer: &Gpt2Tokenizer, text: &str, path: &Path) -> Result<Vec<u32>, DataError> {
    tokenizer
        .encode(text, true)
        .map_err(|source| DataError::Tokenize {
            path: path.to_path_buf(),
            source,
        })
}

/// One memory-mapped shard.
struct Shard {
    path: PathBuf,
    map: Mmap,
    num_tokens: usize,
    /// Index of its first token in the split's token stream.
    start: usize,
}

/// The token stream of one split (`train`, `val`, ...) stored as `{split}_*.bin` shards,
/// memory-mapped, with sliding windows of `max_length` tokens every `stride` tokens over the
/// concatenated stream (windows may span shard boundaries).
pub struct ShardDataset {
    shards: Vec<Shard>,
    num_tokens: usize,
    max_length: usize,
    stride: usize,
}

impl std::fmt::Debug for ShardDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardDataset")
            .field(
                "shards",
                &self.shards.iter().map(|s| &s.path).collect::<Vec<_>>(),
            )
            .field("num_tokens", &self.num_tokens)
            .field("max_length", &self.max_length)
            .field("stride", &self.stride)
            .finish()
    }
}

impl ShardDataset {
    /// Opens every `{split}_NNNNNN.bin` in `dir` (in index order) and validates their headers and
    /// sizes. Errors name the bad file; errors too if there are no shards or not more than
    /// `max_length` tokens in total.
    pub fn open(
        dir: impl AsRef<Path>,
        split: &str,
        max_length: usize,
        stride: usize,
    ) -> Result<Self, DataError> {
        let dir = dir.as_ref();
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let entry = entry.map_err(|e| DataError::io(dir, e))?;
            if let Some(i) = shard_index(&entry.file_name().to_string_lossy(), split) {
                paths.push((i, entry.path()));
            }
        }
        paths.sort();
        if paths.is_empty() {
            return Err(DataError::NoShards {
                dir: dir.to_path_buf(),
                split: split.to_owned(),
            });
        }
        let mut shards = Vec::with_capacity(paths.len());
        let mut start = 0;
        for (_, path) in paths {
            let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let len = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
            if len < HEADER_BYTES as u64 {
                return Err(DataError::BadShard {
                    path,
                    message: format!(
                        "truncated header: {len} bytes, expected at least {HEADER_BYTES}"
                    ),
                });
            }
            // SAFETY: the file is opened read-only; like every reader of memory-mapped data we
            // rely on no other process truncating or rewriting it while it is mapped (shards are
            // only ever replaced by an atomic rename, which leaves this mapping intact).
            let map = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
            let num_tokens = validate_shard(&path, &map)?;
            shards.push(Shard {
                path,
                map,
                num_tokens,
                start,
            });
            start += num_tokens;
        }
        check_window_args(start, max_length, stride)?;
        Ok(Self {
            shards,
            num_tokens: start,
            max_length,
            stride,
        })
    }

    /// Total tokens in the split.
    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// Paths of the shards, in order.
    pub fn shard_paths(&self) -> Vec<&Path> {
        self.shards.iter().map(|s| s.path.as_path()).collect()
    }

    /// Window length.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Distance between window starts.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Tokens `start..start + len` of the split's stream.
    pub fn tokens(&self, start: usize, len: usize) -> Result<Vec<u32>, DataError> {
        let end = start.checked_add(len).filter(|&e| e <= self.num_tokens);
        let Some(end) = end else {
            return Err(DataError::OutOfRange {
                what: "token",
                index: start.saturating_add(len),
                len: self.num_tokens,
            });
        };
        let mut out = Vec::with_capacity(len);
        let mut pos = start;
        // First shard containing `pos`.
        let mut si = self
            .shards
            .partition_point(|s| s.start + s.num_tokens <= pos);
        while pos < end {
            let shard = &self.shards[si];
            let local = pos - shard.start;
            let take = (shard.num_tokens - local).min(end - pos);
            let bytes = &shard.map[HEADER_BYTES + 2 * local..HEADER_BYTES + 2 * (local + take)];
            out.extend(
                bytes
                    .chunks_exact(2)
                    .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))),
            );
            pos += take;
            si += 1;
        }
        Ok(out)
    }

    /// The `(input, target)` window of `max_length` tokens starting at token `start` (any offset,
    /// not only multiples of the stride; useful for nanoGPT-style random sampling).
    pub fn window_at(
        &self,
        start: usize,
        max_length: usize,
    ) -> Result<(Vec<u32>, Vec<u32>), DataError> {
        let tokens = self.tokens(start, max_length + 1)?;
        Ok((tokens[..max_length].to_vec(), tokens[1..].to_vec()))
    }
}

impl WindowSource for ShardDataset {
    fn num_windows(&self) -> usize {
        num_sliding_windows(self.num_tokens, self.max_length, self.stride)
    }

    fn seq_len(&self) -> usize {
        self.max_length
    }

    fn window(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        let n = self.num_windows();
        assert!(i < n, "window index {i} out of range (num_windows {n})");
        self.window_at(i * self.stride, self.max_length)
            .expect("in-range window of a validated shard set")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_to_the_same_tokens() {
        let tok = Gpt2Tokenizer::gpt2().unwrap();
        let text = "First paragraph, with words.  \n\nSecond one\n\n\n  indented third.\nline \t\n\
                    end   of text ... 123 456\u{3000}x  y\n\n";
        let whole = tok.encode(text, true).unwrap();
        for target in 1..text.len() {
            let chunks = chunk_text(text, target);
            assert_eq!(chunks.concat(), text);
            let joined: Vec<u32> = chunks
                .iter()
                .flat_map(|c| tok.encode(c, true).unwrap())
                .collect();
            assert_eq!(joined, whole, "target {target}: {chunks:?}");
        }
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_index("train_000012.bin", "train"), Some(12));
        assert_eq!(shard_index("train_x.bin", "train"), None);
        assert_eq!(shard_index("val_000000.bin", "train"), None);
        assert_eq!(shard_index(".train_000000.bin.tmp", "train"), None);
    }

    #[test]
    fn split_counts() {
        assert_eq!(split_count(10, 0.1), 1);
        assert_eq!(split_count(10, 0.0), 0);
        assert_eq!(split_count(2, 0.9), 1);
        assert_eq!(split_count(100, 0.004), 1);
        assert_eq!(split_count(1, 0.5), 0);
    }
}
