//! Weights packed for inference, in 16 bits (bf16, f16) or block-quantized (GGUF's
//! Q8_0, Q4_0, Q4_K).
//!
//! Generating a token reads every weight once: on a CPU that is a memory-bound
//! matrix-vector product, so weights held in 16 bits make it up to twice as fast and the
//! model half as large, and in 8.5 or 4.5 bits (a block of 32 values sharing one f16
//! scale) faster and smaller again. Activations, the KV cache and every sum stay f32
//! ("weight-only" precision): the only rounding is the weights' own.
//!
//! A [`PackedMatrix`] holds a weight as `[out, in]` rows, the layout PyTorch's
//! `nn.Linear` and `nn.Embedding` share, so one matrix serves a linear layer (`x · Mᵀ`),
//! an embedding lookup (rows of `M`) and a tied output head (`x · Mᵀ` again).
//!
//! A model gets its packed weights through [`packed_param`]: the parameter stays a Burn
//! parameter, but lazy, its f32 value computed from the packed matrix only if something
//! asks for it (saving, training, a backend without these kernels). Until then
//! [`linear`](crate::linear), [`embedding`](crate::embedding) and
//! [`unembed`](crate::unembed) find the packed matrix by the parameter's id and compute
//! from it; once the f32 value exists they use that, as they always did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use burn::module::{Param, ParamId};
use burn::prelude::*;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::autocast::current_precision;
use crate::cpu::{CpuBackend, with_cpu_backend};
use crate::huge_pages::HugePageBytes;
use crate::quant::{BLOCK_SIZE, BlockQ4_0, BlockQ4_K, BlockQ8_0, QuantBlock, SUPER_BLOCK};
use crate::{Dtype, amx, bf16_gemm, panel_dot};

/// A packed format for weight matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// bfloat16: f32's range, 8 bits of mantissa; converting to f32 is a shift.
    Bf16,
    /// IEEE half: 11 bits of mantissa, range ±65504.
    F16,
    /// GGUF's Q8_0: blocks of 32 signed bytes and an f16 scale (8.5 bits per weight).
    Q8_0,
    /// GGUF's Q4_0: blocks of 32 four-bit values and an f16 scale (4.5 bits per weight).
    Q4_0,
    /// GGUF's Q4_K: super-blocks of 256 four-bit values in eight sub-blocks, each with a
    /// 6-bit scale and minimum (4.5 bits per weight).
    #[allow(non_camel_case_types)] // GGUF's name
    Q4_K,
}

impl WeightFormat {
    /// Every format.
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_K,
    ];

    /// Whether rows of `k` values can be held in this format: any for bf16 and f16,
    /// whole blocks of [`BLOCK_SIZE`] (Q8_0, Q4_0) or [`SUPER_BLOCK`] (Q4_K) for the
    /// quantized formats (as in GGUF).
    pub fn holds_rows_of(self, k: usize) -> bool {
        match self {
            Self::Bf16 | Self::F16 => true,
            Self::Q8_0 | Self::Q4_0 => k.is_multiple_of(BLOCK_SIZE),
            Self::Q4_K => k.is_multiple_of(SUPER_BLOCK),
        }
    }

    /// The format rows of `k` values are held in when this one is asked for: this one
    /// if it holds them; for Q4_K rows that are not whole super-blocks, Q8_0 (llama.cpp
    /// falls back to a format of 32-value blocks too, Q5_0, which Ember does not have:
    /// the larger one keeps the quality asked for); `None` (stay f32) if no block format
    /// holds them, as in GGUF.
    pub fn for_rows_of(self, k: usize) -> Option<Self> {
        match self {
            _ if self.holds_rows_of(k) => Some(self),
            Self::Q4_K => Self::Q8_0.for_rows_of(k),
            _ => None,
        }
    }
}

/// How a matrix's rows are stored: in the order its products read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Panels of four rows, for the AVX kernels (`panel_dot.rs`).
    Panels,
    /// Groups of 32 rows in AMX's tiles (`amx.rs`): bf16 on CPUs that have them.
    Tiles,
}

impl Layout {
    /// Tiles for bf16 where AMX is available, panels otherwise.
    fn for_format(format: WeightFormat) -> Self {
        if format == WeightFormat::Bf16 && amx::available() {
            Self::Tiles
        } else {
            Self::Panels
        }
    }

    /// Rows stored together (the last group padded with zero rows).
    fn group_rows(self) -> usize {
        match self {
            Self::Panels => panel_dot::PANEL_ROWS,
            Self::Tiles => amx::GROUP_ROWS,
        }
    }

    /// Bytes of one group of rows of `k` values in `format`.
    fn group_bytes(self, format: WeightFormat, k: usize) -> usize {
        match self {
            Self::Panels => panel_dot::panel_bytes(format, k),
            Self::Tiles => amx::group_bytes(k),
        }
    }

    /// Writes value `c` of row `r` of `group` (16-bit `bits`).
    fn put_half(self, group: &mut [u8], r: usize, c: usize, bits: u16) {
        match self {
            Self::Panels => panel_dot::put_half(group, r, c, bits),
            Self::Tiles => amx::put(group, r, c, bits),
        }
    }
}

/// A matrix of packed weights, `[rows, cols]` (a weight's `[out, in]`), stored in
/// groups of rows in the order the products read them: panels of four rows, or, for
/// bf16 on CPUs with AMX, the tiles' groups of 32 (`Layout`).
#[derive(Debug)]
pub struct PackedMatrix {
    format: WeightFormat,
    layout: Layout,
    rows: usize,
    cols: usize,
    groups: HugePageBytes,
}

impl PackedMatrix {
    /// `values` (row-major `[rows, cols]`) rounded to `format` (to nearest even, as
    /// PyTorch's `.to(dtype)` does) or quantized (as llama.cpp's reference quantizer
    /// does, block by block along each row).
    ///
    /// # Panics
    /// If `format` cannot hold rows of `cols` values ([`WeightFormat::holds_rows_of`]).
    pub fn from_f32(format: WeightFormat, rows: usize, cols: usize, values: &[f32]) -> Self {
        assert_eq!(values.len(), rows * cols, "{rows} x {cols} values");
        Self::from_fn(Layout::for_format(format), format, rows, cols, |r, c| {
            values[r * cols + c]
        })
    }

    /// The transpose of `values` (row-major `[cols, rows]`) in `format`: a
    /// `[rows, cols]` matrix from a weight stored the other way round.
    ///
    /// # Panics
    /// As [`PackedMatrix::from_f32`].
    pub fn from_f32_transposed(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Self {
        assert_eq!(values.len(), rows * cols, "{cols} x {rows} values");
        Self::from_fn(Layout::for_format(format), format, rows, cols, |r, c| {
            values[c * rows + r]
        })
    }

    /// A `[rows, cols]` matrix in `format` whose rows are read part by part:
    /// `read(first..end)` gives rows `first..end` (row-major f32), at most
    /// `rows_per_part` of them at a time (rounded up to whole panels), so that a large
    /// weight never exists whole in f32. Stops at the first error `read` returns.
    ///
    /// # Panics
    /// As [`PackedMatrix::from_f32`]; if a part is not `cols` values per row.
    pub fn from_row_parts<E>(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        rows_per_part: usize,
        mut read: impl FnMut(std::ops::Range<usize>) -> Result<Vec<f32>, E>,
    ) -> Result<Self, E> {
        let mut matrix = Self::zeroed(Layout::for_format(format), format, rows, cols);
        let layout = matrix.layout;
        let step = rows_per_part.max(1).next_multiple_of(layout.group_rows());
        let group = layout.group_bytes(format, cols);
        for first in (0..rows).step_by(step) {
            let end = (first + step).min(rows);
            let values = read(first..end)?;
            assert_eq!(values.len(), (end - first) * cols, "rows {first}..{end}");
            let groups = &mut matrix.groups
                [first / layout.group_rows() * group..end.div_ceil(layout.group_rows()) * group];
            fill(layout, format, cols, end - first, groups, |r, c| {
                values[r * cols + c]
            });
        }
        Ok(matrix)
    }

    /// A `[rows, cols]` matrix from rows already in `format` as GGUF stores them
    /// (`row(r)`: row `r`'s bf16 or f16 values, or its Q8_0, Q4_0 or Q4_K blocks,
    /// little-endian): a GGUF file's tensor taken as it is, neither rounded nor
    /// quantized again.
    ///
    /// # Panics
    /// As [`PackedMatrix::from_f32`]; if a row is not `cols` values of `format`.
    pub fn from_gguf_rows<'a>(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        row: impl Fn(usize) -> &'a [u8] + Sync,
    ) -> Self {
        let mut matrix = Self::zeroed(Layout::for_format(format), format, rows, cols);
        let layout = matrix.layout;
        let group = layout.group_bytes(format, cols);
        if group == 0 {
            return matrix;
        }
        matrix
            .groups
            .par_chunks_mut(group)
            .enumerate()
            .for_each(|(p, out)| {
                let first = p * layout.group_rows();
                for r in first..(first + layout.group_rows()).min(rows) {
                    let (bytes, at) = (row(r), r - first);
                    match format {
                        WeightFormat::Bf16 | WeightFormat::F16 => {
                            assert_eq!(bytes.len(), 2 * cols, "row {r}: {cols} 16-bit values");
                            for (c, v) in bytes.chunks_exact(2).enumerate() {
                                layout.put_half(out, at, c, u16::from_le_bytes([v[0], v[1]]));
                            }
                        }
                        WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                            let q8 = format == WeightFormat::Q8_0;
                            let each = if q8 {
                                BlockQ8_0::BYTES
                            } else {
                                BlockQ4_0::BYTES
                            };
                            assert_eq!(bytes.len(), cols / BLOCK_SIZE * each, "row {r}: blocks");
                            for (b, block) in bytes.chunks_exact(each).enumerate() {
                                let (scale, ints) = if q8 {
                                    BlockQ8_0::read_bytes(block).scale_and_ints()
                                } else {
                                    BlockQ4_0::read_bytes(block).scale_and_ints()
                                };
                                panel_dot::put_block(format, out, at, b, scale, &ints);
                            }
                        }
                        WeightFormat::Q4_K => {
                            assert_eq!(
                                bytes.len(),
                                cols / SUPER_BLOCK * BlockQ4_K::BYTES,
                                "row {r}: Q4_K blocks"
                            );
                            for (s, block) in bytes.chunks_exact(BlockQ4_K::BYTES).enumerate() {
                                panel_dot::put_super_block(
                                    out,
                                    at,
                                    s,
                                    &BlockQ4_K::read_bytes(block),
                                );
                            }
                        }
                    }
                }
            });
        matrix
    }

    /// A `[rows, cols]` matrix of zeros in `format`, laid out in `layout`.
    fn zeroed(layout: Layout, format: WeightFormat, rows: usize, cols: usize) -> Self {
        assert!(
            format.holds_rows_of(cols),
            "{format:?} rows of {cols} values are not whole blocks"
        );
        assert!(layout == Layout::Panels || format == WeightFormat::Bf16);
        let group = layout.group_bytes(format, cols);
        Self {
            format,
            layout,
            rows,
            cols,
            groups: HugePageBytes::zeroed(rows.div_ceil(layout.group_rows()) * group),
        }
    }

    /// The matrix of `value(r, c)` in `format`, laid out in `layout`.
    fn from_fn(
        layout: Layout,
        format: WeightFormat,
        rows: usize,
        cols: usize,
        value: impl Fn(usize, usize) -> f32 + Sync,
    ) -> Self {
        let mut matrix = Self::zeroed(layout, format, rows, cols);
        fill(layout, format, cols, rows, &mut matrix.groups, value);
        matrix
    }

    /// [`PackedMatrix::from_f32`] in panels whatever the CPU, for the AVX kernels'
    /// tests.
    #[cfg(test)]
    pub(crate) fn in_panels(
        format: WeightFormat,
        rows: usize,
        cols: usize,
        values: &[f32],
    ) -> Self {
        assert_eq!(values.len(), rows * cols, "{rows} x {cols} values");
        Self::from_fn(Layout::Panels, format, rows, cols, |r, c| {
            values[r * cols + c]
        })
    }

    /// The format.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    /// `[rows, cols]`.
    pub fn dims(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.groups.len()
    }

    /// The groups holding rows `rows` (starting at a group's first row).
    fn groups_of(&self, rows: &std::ops::Range<usize>) -> &[u8] {
        let each = self.layout.group_rows();
        assert!(rows.start.is_multiple_of(each) && rows.end <= self.rows);
        let group = self.layout.group_bytes(self.format, self.cols);
        &self.groups[rows.start / each * group..rows.end.div_ceil(each) * group]
    }

    /// Rows `rows` (starting at a panel's first row) for the AVX kernels.
    ///
    /// # Panics
    /// If the matrix is not in panels.
    pub(crate) fn panel_rows(&self, rows: std::ops::Range<usize>) -> panel_dot::PanelRows<'_> {
        assert_eq!(self.layout, Layout::Panels, "the matrix is in AMX tiles");
        panel_dot::PanelRows {
            format: self.format,
            panels: self.groups_of(&rows),
            rows: rows.len(),
            k: self.cols,
        }
    }

    /// Row `r` as f32 into `out` (`cols` long).
    fn row_into(&self, r: usize, out: &mut [f32]) {
        let (each, group) = (
            self.layout.group_rows(),
            self.layout.group_bytes(self.format, self.cols),
        );
        let panel = &self.groups[r / each * group..][..group];
        let row = r % each;
        match self.format {
            WeightFormat::Bf16 if self.layout == Layout::Tiles => {
                for (c, out) in out[..self.cols].iter_mut().enumerate() {
                    *out = bf16::from_bits(amx::get(panel, row, c)).to_f32();
                }
            }
            WeightFormat::Bf16 | WeightFormat::F16 => {
                for (v, out) in out[..self.cols].chunks_mut(panel_dot::LANES).enumerate() {
                    let values = panel_dot::half_vector(self.format, panel, row, v);
                    out.copy_from_slice(&values[..out.len()]);
                }
            }
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                for (b, out) in out[..self.cols].chunks_exact_mut(BLOCK_SIZE).enumerate() {
                    let (scale, ints) = panel_dot::block(self.format, panel, row, b);
                    let d = f16::from_bits(scale).to_f32();
                    for (o, &q) in out.iter_mut().zip(&ints) {
                        *o = f32::from(q) * d;
                    }
                }
            }
            WeightFormat::Q4_K => {
                for (s, out) in out[..self.cols].chunks_exact_mut(SUPER_BLOCK).enumerate() {
                    panel_dot::super_block(panel, row, s)
                        .dequantize(out.try_into().expect("a super-block"));
                }
            }
        }
    }

    /// Every value as f32, row-major: the weights the products compute with.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        if self.cols > 0 {
            out.par_chunks_mut(self.cols)
                .enumerate()
                .for_each(|(r, row)| self.row_into(r, row));
        }
        out
    }
}

/// Writes `rows` rows of `value(r, c)` (`r` counted from the first row of `groups`)
/// into `groups` in `format` and `layout`, group by group in parallel, in place (no
/// per-thread pieces that the allocator would keep).
fn fill(
    layout: Layout,
    format: WeightFormat,
    cols: usize,
    rows: usize,
    groups: &mut [u8],
    value: impl Fn(usize, usize) -> f32 + Sync,
) {
    let group = layout.group_bytes(format, cols);
    if group == 0 {
        return;
    }
    groups
        .par_chunks_mut(group)
        .enumerate()
        .for_each(|(p, out)| {
            let first = p * layout.group_rows();
            for r in first..(first + layout.group_rows()).min(rows) {
                let row = r - first;
                match format {
                    WeightFormat::Bf16 | WeightFormat::F16 => {
                        for c in 0..cols {
                            let bits = to_half_bits(format, value(r, c));
                            layout.put_half(out, row, c, bits);
                        }
                    }
                    WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
                        for b in 0..cols / BLOCK_SIZE {
                            let values = std::array::from_fn(|i| value(r, b * BLOCK_SIZE + i));
                            let (scale, ints) = match format {
                                WeightFormat::Q8_0 => {
                                    BlockQ8_0::quantize_block(&values).scale_and_ints()
                                }
                                _ => BlockQ4_0::quantize_block(&values).scale_and_ints(),
                            };
                            panel_dot::put_block(format, out, row, b, scale, &ints);
                        }
                    }
                    WeightFormat::Q4_K => {
                        for s in 0..cols / SUPER_BLOCK {
                            let values = std::array::from_fn(|i| value(r, s * SUPER_BLOCK + i));
                            let block = BlockQ4_K::quantize(&values);
                            panel_dot::put_super_block(out, row, s, &block);
                        }
                    }
                }
            }
        });
}

/// `v` rounded to bf16 or f16 (to nearest even), as bits.
fn to_half_bits(format: WeightFormat, v: f32) -> u16 {
    match format {
        WeightFormat::Bf16 => bf16::from_f32(v).to_bits(),
        _ => f16::from_f32(v).to_bits(),
    }
}

/// The packed matrices of live lazy parameters, by parameter id. Weak: the strong
/// reference is the parameter's initializer, so a matrix leaves with its model, and
/// stops being used the moment its parameter's f32 value is computed.
fn registry() -> &'static Mutex<HashMap<ParamId, Weak<PackedMatrix>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<ParamId, Weak<PackedMatrix>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// A lazy parameter standing for `matrix`, with `id`: its f32 value, computed only when
/// asked for, is `matrix` (`[out, in]`), transposed when `transposed` (a Burn `Linear`
/// weight is `[in, out]`). The kernels compute from `matrix` until then.
pub fn packed_param<const D: usize>(
    id: ParamId,
    matrix: PackedMatrix,
    transposed: bool,
    device: &Device,
    require_grad: bool,
) -> Param<Tensor<D>> {
    assert_eq!(D, 2, "packed weights are matrices");
    let [rows, cols] = matrix.dims();
    let shape = if transposed {
        [cols, rows]
    } else {
        [rows, cols]
    };
    let matrix = Arc::new(matrix);
    {
        let mut registry = registry().lock().expect("packed weight registry");
        registry.retain(|_, m| m.strong_count() > 0);
        registry.insert(id, Arc::downgrade(&matrix));
    }
    Param::uninitialized(
        id,
        move |device, require_grad| {
            let values = TensorData::new(matrix.to_f32(), [rows, cols]);
            let tensor = Tensor::<2>::from_data(values, device);
            let tensor = if transposed {
                tensor.transpose()
            } else {
                tensor
            };
            let tensor: Tensor<D> = tensor.reshape(Shape::from(shape.to_vec()));
            tensor.set_require_grad(require_grad)
        },
        device.clone(),
        require_grad,
        shape.into(),
    )
}

/// The packed matrix `param` stands for, while its f32 value has not been computed and
/// no LoRA adapter modifies it.
pub fn packed_matrix<const D: usize>(param: &Param<Tensor<D>>) -> Option<Arc<PackedMatrix>> {
    if param.is_initialized() || param.adapter().is_some() {
        return None;
    }
    registry()
        .lock()
        .expect("packed weight registry")
        .get(&param.id)
        .and_then(Weak::upgrade)
}

/// `x · Mᵀ (+ bias)`: a linear layer with packed weights `m` (`[out, in]`).
///
/// # Shapes
/// - x: `[..., in]`
/// - returns `[..., out]`
pub fn linear_packed<const D: usize>(
    x: Tensor<D>,
    m: &PackedMatrix,
    bias: Option<Tensor<1>>,
) -> Tensor<D> {
    let [out_features, in_features] = m.dims();
    let mut dims = x.dims();
    assert_eq!(
        dims[D - 1],
        in_features,
        "linear layer of {in_features} inputs given {dims:?}"
    );
    let rows: usize = dims[..D - 1].iter().product();
    let x = x.reshape([rows, in_features]);
    // On the CPU backends every row's result is the bits it has alone (the dot products
    // of `crate::panel_dot`, or AMX's tiles of `crate::amx`), so a server's whole step,
    // prompt chunks and decoding tokens together, reads the weights once.
    let mut y = match with_cpu_backend!(&x, B => product_on::<B>(&x, m)).flatten() {
        Some(y) => y,
        None => match crate::rows::layout_for(rows) {
            Some(layout) => crate::rows::by_layout(
                x,
                &layout,
                |single| crate::rows::each_row(single, |row| product_in_f32(row, m)),
                |chunk| product_in_f32(chunk, m),
            ),
            None => product_in_f32(x, m),
        },
    };
    if let Some(bias) = bias {
        y = y + bias.unsqueeze::<2>();
    }
    dims[D - 1] = out_features;
    y.reshape(dims)
}

/// `x · Mᵀ` (`[rows, in]` → `[rows, out]`) on backends other than the CPU ones (and
/// for tensors that track gradients): with the weights as f32.
fn product_in_f32(x: Tensor<2>, m: &PackedMatrix) -> Tensor<2> {
    let device = x.device();
    x.matmul(Tensor::<2>::from_data(TensorData::new(m.to_f32(), m.dims()), &device).transpose())
}

/// Rows `ids` of `m`: an embedding lookup.
///
/// # Shapes
/// - ids: `[batch, seq]`
/// - returns `[batch, seq, cols]`
pub fn embedding_packed(ids: Tensor<2, Int>, m: &PackedMatrix) -> Tensor<3> {
    let [batch, seq] = ids.dims();
    let [rows, cols] = m.dims();
    let device = ids.device();
    let ids = ids
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .expect("integer ids");
    let mut out = vec![0.0f32; ids.len() * cols];
    for (&id, row) in ids.iter().zip(out.chunks_mut(cols.max(1))) {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < rows)
            .unwrap_or_else(|| panic!("token id {id} outside an embedding of {rows} rows"));
        m.row_into(id, row);
    }
    Tensor::from_data(TensorData::new(out, [batch, seq, cols]), &device)
}

/// Plain (untracked) `x` on CPU backend `B`: the product through the slice kernel.
fn product_on<B: CpuBackend>(x: &Tensor<2>, m: &PackedMatrix) -> Option<Tensor<2>> {
    let x = B::plain(x)?;
    let [tokens, _] = B::shape(&x)[..] else {
        return None;
    };
    let values = product(&B::values(&x), tokens, m);
    Some(B::from_plain(B::new_tensor(&[tokens, m.dims()[0]], values)))
}

/// Output rows per task: one task reads 64 weight rows (whole groups).
const ROWS_PER_TASK: usize = 64;
const _: () = assert!(
    ROWS_PER_TASK.is_multiple_of(panel_dot::PANEL_ROWS)
        && ROWS_PER_TASK.is_multiple_of(amx::GROUP_ROWS)
);

/// Activations prepared, once for every task, for the products of a layout.
enum Prepared<'a> {
    /// As the AVX kernels take them (quantized for quantized weights).
    Panels(panel_dot::Activations<'a>),
    /// Split into three bf16 parts each for AMX's tiles.
    Tiles(amx::Parts),
}

/// `x · Mᵀ`, row-major `[tokens, out]`, on every core; each row's result the bits it has
/// alone ([`crate::panel_dot`], [`crate::amx`]).
///
/// Under [`crate::autocast`]'s bf16, products of bf16 weights round the activations to
/// bf16 first (the arithmetic of PyTorch's bf16 models and of llama.cpp's BF16 GGUFs),
/// and take `vdpbf16ps` where the CPU has it: twice the multiply-adds per instruction of
/// the f32 kernels, which a server's batch and prompts are bound by. Each token is still
/// rounded and summed alone, so batches stay invariant.
fn product(x: &[f32], tokens: usize, m: &PackedMatrix) -> Vec<f32> {
    let [out_features, in_features] = m.dims();
    let in_bf16 = m.format == WeightFormat::Bf16 && current_precision() == Dtype::Bf16;
    let rounded: Vec<f32>;
    let x = if in_bf16 {
        rounded = x
            .iter()
            .map(|&v| f32::from_bits(u32::from(bf16_gemm::to_bf16_bits(v)) << 16))
            .collect();
        &rounded
    } else {
        x
    };
    let x = match m.layout {
        Layout::Panels => {
            let x = panel_dot::Activations::new(m.format, x, tokens, in_features);
            Prepared::Panels(if in_bf16 { x.in_bf16() } else { x })
        }
        // The tiles take the rounded activations as they are (their second and third
        // parts zero): the same products, no faster.
        Layout::Tiles => Prepared::Tiles(amx::Parts::new(x, tokens, in_features)),
    };
    if tokens == 1 {
        // Decoding: each task writes its rows' dot products in place.
        let mut out = vec![0.0f32; out_features];
        out.par_chunks_mut(ROWS_PER_TASK)
            .enumerate()
            .for_each(|(task, chunk)| {
                let first = task * ROWS_PER_TASK;
                let block = block_product(&x, m, first..first + chunk.len());
                chunk.copy_from_slice(&block);
            });
        return out;
    }
    // Each task's block, stored `[tokens, its rows]`.
    let blocks: Vec<(usize, Vec<f32>)> = (0..out_features.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let first = task * ROWS_PER_TASK;
            let last = (first + ROWS_PER_TASK).min(out_features);
            (first, block_product(&x, m, first..last))
        })
        .collect();
    let mut out = vec![0.0f32; tokens * out_features];
    for (first, block) in blocks {
        let n = block.len() / tokens.max(1);
        for (t, row) in block.chunks_exact(n.max(1)).enumerate() {
            out[t * out_features + first..][..n].copy_from_slice(row);
        }
    }
    out
}

/// `x · M[rows]ᵀ`, stored `[tokens, rows]`.
fn block_product(x: &Prepared, m: &PackedMatrix, rows: std::ops::Range<usize>) -> Vec<f32> {
    let tokens = match x {
        Prepared::Panels(x) => x.tokens,
        Prepared::Tiles(x) => x.tokens,
    };
    let mut out = vec![0.0f32; rows.len() * tokens];
    // Tasks start at multiples of ROWS_PER_TASK, so at a group's first row.
    match x {
        Prepared::Panels(x) => panel_dot::panel_dots(x, &m.panel_rows(rows), &mut out),
        Prepared::Tiles(x) => amx::dots(x, m.groups_of(&rows), rows.len(), &mut out),
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::tests::assert_close;
    use burn::tensor::Distribution;

    fn rounded(kind: WeightFormat, values: &[f32]) -> Vec<f32> {
        PackedMatrix::from_f32(kind, 1, values.len(), values).to_f32()
    }

    #[test]
    // The expected values are written as PyTorch prints them (exact in binary).
    #[allow(clippy::excessive_precision)]
    fn rounding_is_to_nearest_even_as_in_pytorch() {
        // torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, 1/3, 70000.0]).to(torch.bfloat16)
        let values = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            1.0 / 3.0,
            70000.0,
        ];
        assert_eq!(
            rounded(WeightFormat::Bf16, &values),
            [1.0, 1.015625, 0.333984375, 70144.0]
        );
        // ... .to(torch.float16): 70000 overflows to inf.
        assert_eq!(
            rounded(WeightFormat::F16, &values),
            [1.00390625, 1.01171875, 0.333251953125, f32::INFINITY]
        );
    }

    const FORMATS: [WeightFormat; 5] = WeightFormat::ALL;

    /// The product equals Burn's matmul with the packed weights as f32, for decoding
    /// (one token), short prompts and long ones (blocks of many tokens), odd
    /// sizes included, in every format.
    #[test]
    fn product_matches_the_matmul_of_the_packed_weights() {
        let _rng = crate::tests::device_rng();
        let device = Device::ndarray();
        for kind in FORMATS {
            for tokens in [1, 3, panel_dot::WIDEN_FROM_TOKENS + 5] {
                // The smallest of these the format holds.
                let inp = [
                    3 * crate::panel_dot::LANES + 5,
                    3 * BLOCK_SIZE,
                    2 * SUPER_BLOCK,
                ]
                .into_iter()
                .find(|&k| kind.holds_rows_of(k))
                .unwrap();
                let out = ROWS_PER_TASK * 2 + 7;
                let w = Tensor::<2>::random([out, inp], Distribution::Normal(0.0, 1.0), &device);
                let x =
                    Tensor::<3>::random([1, tokens, inp], Distribution::Normal(0.0, 1.0), &device);
                let bias = Tensor::<1>::random([out], Distribution::Default, &device);
                let values = w.into_data().into_vec::<f32>().unwrap();
                let m = PackedMatrix::from_f32(kind, out, inp, &values);
                let w_rounded =
                    Tensor::<2>::from_data(TensorData::new(m.to_f32(), [out, inp]), &device);
                // The activations as the products take them (quantized to Q8_0 for
                // quantized weights).
                let x_values = x.to_data().into_vec::<f32>().unwrap();
                let a = panel_dot::Activations::new(kind, &x_values, tokens, inp);
                let x_computed = Tensor::<3>::from_data(
                    TensorData::new(a.dequantized(), [1, tokens, inp]),
                    &device,
                );
                let want = x_computed.matmul(w_rounded.transpose().unsqueeze())
                    + bias.clone().unsqueeze::<3>();
                assert_close(linear_packed(x, &m, Some(bias)), want, 1e-4);
            }
        }
    }

    /// Under bf16 autocast a product of bf16 weights multiplies the activations rounded
    /// to bf16 (to nearest even) and sums in f32: within f32 rounding of the exact sum of
    /// those products, not the f32 activations' product, and each token's outputs have
    /// the bits they have alone, for 1 to 19 tokens (whole and partial blocks of eight),
    /// a tail of `k` past the last vector of eight and a panel of padding rows.
    #[test]
    fn bf16_products_round_the_activations_and_keep_each_token_alone() {
        let (rows, k) = (ROWS_PER_TASK + 6, 4 * panel_dot::LANES + 3);
        let values: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 613.0)
            .collect();
        let m = PackedMatrix::from_f32(WeightFormat::Bf16, rows, k, &values);
        let w = m.to_f32();
        let tokens = 19;
        let x: Vec<f32> = (0..tokens * k)
            .map(|i| ((i * 104_729 % 4099) as f32 - 2049.0) / 977.0)
            .collect();
        let exact = product(&x, tokens, &m);
        let _bf16 = crate::autocast(Dtype::Bf16);
        let batched = product(&x, tokens, &m);
        let rounded = |v: f32| f64::from(bf16::from_f32(v).to_f32());
        for t in 0..tokens {
            let token = &x[t * k..(t + 1) * k];
            let alone = product(token, 1, &m);
            // The block of eight tokens that holds token t, as a product of its own.
            let block = t / 8 * 8..(t / 8 * 8 + 8).min(tokens);
            let in_block = product(&x[block.start * k..block.end * k], block.len(), &m);
            for r in 0..rows {
                let got = batched[t * rows + r];
                assert_eq!(got.to_bits(), alone[r].to_bits(), "token {t}, row {r}");
                assert_eq!(
                    got.to_bits(),
                    in_block[(t % 8) * rows + r].to_bits(),
                    "token {t}, row {r}"
                );
                let row = &w[r * k..(r + 1) * k];
                let want: f64 = row
                    .iter()
                    .zip(token)
                    .map(|(&w, &x)| f64::from(w) * rounded(x))
                    .sum();
                let scale: f64 = row
                    .iter()
                    .zip(token)
                    .map(|(&w, &x)| (f64::from(w) * rounded(x)).abs())
                    .sum();
                assert!(
                    (f64::from(got) - want).abs() <= 1e-6 * scale,
                    "token {t}, row {r}: {got} against {want}"
                );
            }
        }
        let differing = exact.iter().zip(&batched).filter(|(a, b)| a != b).count();
        assert!(
            differing > exact.len() / 2,
            "{differing} of {} outputs changed",
            exact.len()
        );
    }

    /// A quantized matrix holds, row by row, GGUF's blocks of that row (llama.cpp's
    /// reference quantizer, checked against its bytes in `quant`): the same scales and
    /// integers, so the same dequantized values, transposed or not, and GGUF's size.
    #[test]
    fn quantized_rows_are_the_gguf_blocks_of_each_row() {
        for (format, cols, block_bytes) in [
            (WeightFormat::Q8_0, 3 * BLOCK_SIZE, BlockQ8_0::BYTES),
            (WeightFormat::Q4_0, 3 * BLOCK_SIZE, BlockQ4_0::BYTES),
            (WeightFormat::Q4_K, 2 * SUPER_BLOCK, BlockQ4_K::BYTES),
        ] {
            let rows = 6;
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i % 5) as f32)
                .collect();
            let transposed: Vec<f32> = (0..cols * rows)
                .map(|i| values[(i % rows) * cols + i / rows])
                .collect();
            let mut want = vec![0.0f32; rows * cols];
            for (row, out) in values.chunks(cols).zip(want.chunks_mut(cols)) {
                match format {
                    WeightFormat::Q8_0 => {
                        BlockQ8_0::dequantize_row(&BlockQ8_0::quantize_row(row).unwrap(), out)
                    }
                    WeightFormat::Q4_0 => {
                        BlockQ4_0::dequantize_row(&BlockQ4_0::quantize_row(row).unwrap(), out)
                    }
                    _ => {
                        for (x, out) in row
                            .chunks_exact(SUPER_BLOCK)
                            .zip(out.chunks_exact_mut(SUPER_BLOCK))
                        {
                            BlockQ4_K::quantize(x.try_into().unwrap())
                                .dequantize(out.try_into().unwrap());
                        }
                    }
                }
            }
            let m = PackedMatrix::from_f32(format, rows, cols, &values);
            assert_eq!(m.to_f32(), want, "{format:?}");
            let t = PackedMatrix::from_f32_transposed(format, rows, cols, &transposed);
            assert_eq!(t.to_f32(), want, "{format:?} transposed");
            // Whole panels of four rows (the last two rows padding).
            let blocks_per_row = cols
                / if format == WeightFormat::Q4_K {
                    256
                } else {
                    32
                };
            assert_eq!(m.size_bytes(), 8 * blocks_per_row * block_bytes);
        }
    }

    /// A matrix made from GGUF's rows in each format is the matrix made from the
    /// values those rows hold.
    #[test]
    fn gguf_rows_are_taken_as_they_are() {
        let (rows, cols) = (6, SUPER_BLOCK);
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.61).sin()).collect();
        for format in FORMATS {
            let made = PackedMatrix::from_f32(format, rows, cols, &values);
            let gguf_rows: Vec<Vec<u8>> = values
                .chunks(cols)
                .map(|row| match format {
                    WeightFormat::Bf16 => row
                        .iter()
                        .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                    WeightFormat::F16 => row
                        .iter()
                        .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                        .collect(),
                    WeightFormat::Q8_0 => {
                        BlockQ8_0::to_bytes(&BlockQ8_0::quantize_row(row).unwrap())
                    }
                    WeightFormat::Q4_0 => {
                        BlockQ4_0::to_bytes(&BlockQ4_0::quantize_row(row).unwrap())
                    }
                    WeightFormat::Q4_K => {
                        let mut out = vec![0u8; BlockQ4_K::BYTES];
                        BlockQ4_K::quantize(row.try_into().unwrap()).write_bytes(&mut out);
                        out
                    }
                })
                .collect();
            let taken = PackedMatrix::from_gguf_rows(format, rows, cols, |r| &gguf_rows[r]);
            assert_eq!(*taken.groups, *made.groups, "{format:?}");
        }
    }

    /// Q4_K holds rows of whole super-blocks, and asked for shorter rows gives Q8_0's
    /// blocks of 32; rows that are not whole blocks of 32 stay f32.
    #[test]
    fn rows_not_of_whole_blocks_fall_back() {
        let q4_k = WeightFormat::Q4_K;
        assert_eq!(q4_k.for_rows_of(512), Some(WeightFormat::Q4_K));
        assert_eq!(q4_k.for_rows_of(96), Some(WeightFormat::Q8_0));
        assert_eq!(q4_k.for_rows_of(48), None);
        assert_eq!(WeightFormat::Q4_0.for_rows_of(48), None);
        assert_eq!(WeightFormat::Bf16.for_rows_of(5), Some(WeightFormat::Bf16));
    }

    /// Read part by part, the matrix is the one made at once, in every format; a
    /// part's error stops the reading.
    #[test]
    fn a_matrix_read_in_parts_is_the_matrix_read_at_once() {
        let (rows, cols) = (37, SUPER_BLOCK);
        let values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        for format in FORMATS {
            let whole = PackedMatrix::from_f32(format, rows, cols, &values);
            let mut parts = Vec::new();
            let parted = PackedMatrix::from_row_parts(format, rows, cols, 10, |range| {
                parts.push(range.clone());
                Ok::<_, ()>(values[range.start * cols..range.end * cols].to_vec())
            })
            .unwrap();
            assert_eq!(*parted.groups, *whole.groups, "{format:?}");
            // Parts of whole groups of rows: panels of 4, or AMX's groups of 32.
            let expected = match parted.layout {
                Layout::Panels => vec![0..12, 12..24, 24..36, 36..37],
                Layout::Tiles => vec![0..32, 32..37],
            };
            assert_eq!(parts, expected, "{format:?}");
        }
        let failed = PackedMatrix::from_row_parts(WeightFormat::Q8_0, rows, cols, 8, |range| {
            if range.start > 0 {
                Err("bad part")
            } else {
                Ok(vec![0.0; 8 * cols])
            }
        });
        assert_eq!(failed.unwrap_err(), "bad part");
    }

    #[test]
    #[should_panic(expected = "rows of 33 values are not whole blocks")]
    fn quantized_rows_must_be_whole_blocks() {
        PackedMatrix::from_f32(WeightFormat::Q8_0, 1, 33, &[0.5; 33]);
    }

    #[test]
    fn a_transposed_matrix_reads_the_values_by_columns() {
        let values: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let m = PackedMatrix::from_f32_transposed(WeightFormat::Bf16, 3, 2, &values);
        assert_eq!(m.dims(), [3, 2]);
        assert_eq!(m.to_f32(), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn embedding_reads_rows() {
        let device = Device::ndarray();
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();
        let m = PackedMatrix::from_f32(WeightFormat::Bf16, 4, 3, &values);
        let ids = Tensor::<2, Int>::from_ints([[3, 0]], &device);
        embedding_packed(ids, &m).into_data().assert_eq(
            &TensorData::from([[[4.5f32, 5.0, 5.5], [0.0, 0.5, 1.0]]]),
            true,
        );
    }

    /// A packed parameter computes from its matrix until its f32 value is asked for,
    /// which then is the matrix (transposed for a Linear weight); the matrix goes with
    /// the last copy of the model.
    #[test]
    fn packed_parameters_are_lazy_and_leave_with_their_model() {
        let device = Device::ndarray();
        let values: Vec<f32> = (0..6).map(|v| v as f32).collect();
        let id = ParamId::new();
        let param: Param<Tensor<2>> = packed_param(
            id,
            PackedMatrix::from_f32(WeightFormat::Bf16, 2, 3, &values),
            true,
            &device,
            false,
        );
        assert_eq!(param.lazy_shape().to_vec(), [3, 2]);
        assert!(packed_matrix(&param).is_some());
        let copy = param.clone();
        copy.val().into_data().assert_eq(
            &TensorData::from([[0.0f32, 3.0], [1.0, 4.0], [2.0, 5.0]]),
            true,
        );
        assert!(
            packed_matrix(&param).is_none(),
            "the f32 value is used from now on"
        );

        let param: Param<Tensor<2>> = packed_param(
            ParamId::new(),
            PackedMatrix::from_f32(WeightFormat::Bf16, 2, 3, &values),
            false,
            &device,
            false,
        );
        let weak = Arc::downgrade(&packed_matrix(&param).unwrap());
        drop(param);
        assert!(weak.upgrade().is_none());
    }
}
