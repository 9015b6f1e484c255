//! The precision a model's weights are held in for inference ([`Dtype`], the one
//! vocabulary of number formats, from `ember_kernels`).
//!
//! `f32` is the default and the only precision that trains. `bf16` and `f16` keep the
//! matrices of linear layers and embeddings in 16 bits, `q8_0` and `q4_0` in GGUF's
//! blocks of 32 values with one f16 scale ([`ember_kernels::packed_weights`]): half the
//! memory or less, and generation on a CPU, which reads every weight once per token,
//! faster by as much; `q4_k` in GGUF's super-blocks of 256 with a 6-bit scale and
//! minimum per 32 values. Norms, biases, activations and the KV cache stay f32.
//!
//! A quantized format holds rows of whole blocks only (GGUF's rule): a matrix whose rows
//! are not a multiple of 32 long stays f32, as it would in a GGUF file; in q4_k, rows
//! that are not a multiple of 256 long are held in q8_0.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use ember_kernels::Dtype;
use ember_kernels::packed_weights::{PackedMatrix, WeightFormat, packed_param};

/// How a parameter is held packed, by the module that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PackedRole {
    /// A `Linear` weight (`[in, out]`): the packed matrix is its transpose.
    LinearWeight,
    /// An `Embedding` weight (`[vocab, d]`): the packed matrix is the weight itself.
    EmbeddingWeight,
}

impl PackedRole {
    /// The role of parameter `name` of a module of `container_type` (as Burn's module
    /// visitors name it: `Struct:Linear`), if it is held packed.
    pub(crate) fn of(container_type: &str, name: &str) -> Option<Self> {
        match (container_type, name) {
            ("Struct:Linear", "weight") => Some(Self::LinearWeight),
            ("Struct:Embedding", "weight") => Some(Self::EmbeddingWeight),
            _ => None,
        }
    }

    /// The format a Burn parameter of `dims` in this role is held in when `format` is
    /// asked for ([`WeightFormat::for_rows_of`] its packed rows, `[out, in]`; `None`:
    /// it stays f32).
    pub(crate) fn format_for(self, format: WeightFormat, dims: [usize; 2]) -> Option<WeightFormat> {
        let row_len = match self {
            Self::LinearWeight => dims[0],
            Self::EmbeddingWeight => dims[1],
        };
        format.for_rows_of(row_len)
    }

    /// The packed parameter standing for `param`, from `matrix` (`[out, in]`).
    pub(crate) fn param<const D: usize>(
        self,
        param: &Param<Tensor<D>>,
        matrix: PackedMatrix,
        device: &Device,
    ) -> Param<Tensor<D>> {
        // Trainable, as a freshly built parameter is: its f32 value, if ever computed on
        // an autodiff device, can be trained (it cannot be on any other).
        packed_param(param.id, matrix, self == Self::LinearWeight, device, true)
    }
}

/// Tracks the `(field name, container type)` of the modules a mapper is inside; the
/// last one entered before a parameter is the parameter's own field.
#[derive(Default)]
pub(crate) struct Containers(Vec<(String, String)>);

impl Containers {
    pub(crate) fn enter(&mut self, name: &str, container_type: &str) {
        self.0.push((name.to_string(), container_type.to_string()));
    }

    pub(crate) fn exit(&mut self) {
        self.0.pop();
    }

    /// The packed role of the parameter being mapped.
    pub(crate) fn packed_role(&self) -> Option<PackedRole> {
        let (name, container) = self.0.last()?;
        PackedRole::of(container, name)
    }
}

/// Converts a built model's weight matrices to `format`, one at a time.
struct ToPacked {
    format: WeightFormat,
    containers: Containers,
}

impl ModuleMapper for ToPacked {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.containers.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let role = match self.containers.packed_role() {
            Some(role) if D == 2 => role,
            _ => return param,
        };
        let value = param.val();
        let device = value.device();
        let [rows, cols] = value.dims()[..] else {
            return param;
        };
        let Some(format) = role.format_for(self.format, [rows, cols]) else {
            return param;
        };
        let values = value
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 values");
        let matrix = match role {
            PackedRole::LinearWeight => {
                PackedMatrix::from_f32_transposed(format, cols, rows, &values)
            }
            PackedRole::EmbeddingWeight => PackedMatrix::from_f32(format, rows, cols, &values),
        };
        role.param(&param, matrix, &device)
    }
}

/// `model` with the matrices of its linear layers and embeddings held in `dtype` (a
/// no-op for f32): for inference; training asks for the f32 values, which are then
/// computed from the packed ones.
pub fn with_weight_dtype<M: Module>(model: M, dtype: Dtype) -> M {
    match dtype.weight_format() {
        None => model,
        Some(format) => model.map(&mut ToPacked {
            format,
            containers: Containers::default(),
        }),
    }
}
