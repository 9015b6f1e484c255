//! The precision a model's weights are held in for inference ([`Dtype`], the one
//! vocabulary of number formats, from `ember_kernels`).
//!
//! `f32` is the default and the only precision that trains. `bf16` and `f16` keep the
//! matrices of linear layers and embeddings in 16 bits ([`ember_kernels::half_weights`]):
//! half the memory, and generation on a CPU, which reads every weight once per token,
//! up to twice as fast. Norms, biases, activations and the KV cache stay f32.

use burn::module::{Module, ModuleMapper, Param};
use burn::prelude::*;
use ember_kernels::Dtype;
use ember_kernels::half_weights::{HalfKind, HalfMatrix, half_param};

/// How a parameter is held in half precision, by the module that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HalfRole {
    /// A `Linear` weight (`[in, out]`): the half matrix is its transpose.
    LinearWeight,
    /// An `Embedding` weight (`[vocab, d]`): the half matrix is the weight itself.
    EmbeddingWeight,
}

impl HalfRole {
    /// The role of parameter `name` of a module of `container_type` (as Burn's module
    /// visitors name it: `Struct:Linear`), if it is held in half precision.
    pub(crate) fn of(container_type: &str, name: &str) -> Option<Self> {
        match (container_type, name) {
            ("Struct:Linear", "weight") => Some(Self::LinearWeight),
            ("Struct:Embedding", "weight") => Some(Self::EmbeddingWeight),
            _ => None,
        }
    }

    /// The half parameter standing for `param`, from `matrix` (`[out, in]`).
    pub(crate) fn param<const D: usize>(
        self,
        param: &Param<Tensor<D>>,
        matrix: HalfMatrix,
        device: &Device,
    ) -> Param<Tensor<D>> {
        // Trainable, as a freshly built parameter is: its f32 value, if ever computed on
        // an autodiff device, can be trained (it cannot be on any other).
        half_param(param.id, matrix, self == Self::LinearWeight, device, true)
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

    /// The half role of the parameter being mapped.
    pub(crate) fn half_role(&self) -> Option<HalfRole> {
        let (name, container) = self.0.last()?;
        HalfRole::of(container, name)
    }
}

/// Converts a built model's weight matrices to `kind`, one at a time.
struct ToHalf {
    kind: HalfKind,
    containers: Containers,
}

impl ModuleMapper for ToHalf {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.containers.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let role = match self.containers.half_role() {
            Some(role) if D == 2 => role,
            _ => return param,
        };
        let value = param.val();
        let device = value.device();
        let [rows, cols] = value.dims()[..] else {
            return param;
        };
        let values = value
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32 values");
        let matrix = match role {
            HalfRole::LinearWeight => {
                HalfMatrix::from_f32_transposed(self.kind, cols, rows, &values)
            }
            HalfRole::EmbeddingWeight => HalfMatrix::from_f32(self.kind, rows, cols, &values),
        };
        role.param(&param, matrix, &device)
    }
}

/// `model` with the matrices of its linear layers and embeddings held in `dtype` (a
/// no-op for f32): for inference; training asks for the f32 values, which are then
/// computed from the 16-bit ones.
pub fn with_weight_dtype<M: Module>(model: M, dtype: Dtype) -> M {
    match dtype.half_kind() {
        None => model,
        Some(kind) => model.map(&mut ToHalf {
            kind,
            containers: Containers::default(),
        }),
    }
}
