//! The correspondence between a model's parameters and the tensors of a Hub checkpoint,
//! declared once per architecture and read by both loading and saving.
//!
//! A [`NameTable`] maps each parameter path of an Ember module (as Burn's module
//! visitors name it: `h.0.attn.c_attn.weight`) to a Hub tensor name and a [`Layout`].
//! [`load_parameters`] walks a freshly built (lazily initialised, so never drawn)
//! model and gives every parameter the tensor the table names, built once from the
//! decoded values; [`collect_parameters`] walks a trained model and produces the Hub
//! tensors. Every missing, mis-shaped or unexpected tensor is reported by name, all at
//! once, and nothing is loaded half-way.

use std::collections::BTreeSet;
use std::ops::Range;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use regex::Regex;

use ember_kernels::Dtype;
use ember_kernels::packed_weights::{PackedMatrix, WeightFormat};

use super::WeightsError;
use super::tensors::TensorSource;
use crate::precision::{Containers, PackedRole};

/// How a Hub tensor is laid out relative to Ember's parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The same shape and order.
    Same,
    /// The transpose: PyTorch's `nn.Linear` stores `[out, in]`, Burn's `Linear` `[in, out]`.
    Transposed,
}

/// Parameter path → Hub name rules of one architecture; the first rule that matches a
/// path applies.
#[derive(Debug, Clone)]
pub struct NameTable {
    rules: Vec<(Regex, String, Layout)>,
    ignored: Vec<Regex>,
}

impl NameTable {
    /// A table from `(path pattern, Hub name template, layout)` rules (regular
    /// expressions; the template may use `$1`...), and patterns of Hub tensors that are
    /// not parameters (buffers old checkpoints carry) and are skipped when loading.
    pub fn new(rules: &[(&str, &str, Layout)], ignored: &[&str]) -> Self {
        let compile = |p: &str| Regex::new(p).expect("a valid pattern in a name table");
        Self {
            rules: rules
                .iter()
                .map(|&(pattern, template, layout)| {
                    (compile(pattern), template.to_string(), layout)
                })
                .collect(),
            ignored: ignored.iter().map(|p| compile(p)).collect(),
        }
    }

    /// The Hub name and layout of parameter `path`.
    pub fn hub_name(&self, path: &str) -> (String, Layout) {
        for (pattern, template, layout) in &self.rules {
            if let Some(captures) = pattern.captures(path) {
                let mut name = String::new();
                captures.expand(template, &mut name);
                return (name, *layout);
            }
        }
        (path.to_string(), Layout::Same)
    }

    /// Whether Hub tensor `name` is a buffer to skip.
    pub fn is_ignored(&self, name: &str) -> bool {
        self.ignored.iter().any(|p| p.is_match(name))
    }
}

/// Tracks the dotted path of the parameter being visited.
#[derive(Default)]
struct PathTracker {
    parts: Vec<String>,
}

impl PathTracker {
    fn enter(&mut self, name: &str) {
        self.parts.push(name.to_string());
    }

    fn exit(&mut self) {
        self.parts.pop();
    }

    fn path(&self) -> String {
        self.parts.join(".")
    }
}

/// Gives every float parameter of `model` its Hub tensor.
struct Loader<'a> {
    table: &'a NameTable,
    source: &'a dyn TensorSource,
    device: Device,
    /// Weight matrices are held in this packed format, if any.
    format: Option<WeightFormat>,
    path: PathTracker,
    containers: Containers,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name);
        self.containers.enter(name, container_type);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
        self.containers.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (name, layout) = self.table.hub_name(&self.path.path());
        let expected = param.lazy_shape().to_vec();
        let hub_shape = match layout {
            Layout::Same => expected.clone(),
            Layout::Transposed => expected.iter().rev().copied().collect(),
        };
        let Some(shape) = self.source.shape(&name) else {
            self.problems
                .push(format!("missing tensor {name} {hub_shape:?}"));
            return param;
        };
        self.used.insert(name.clone());
        if shape != hub_shape {
            self.problems.push(format!(
                "tensor {name} has shape {shape:?}, expected {hub_shape:?}"
            ));
            return param;
        }
        if !self.problems.is_empty() {
            // The load fails anyway: do not spend memory on more tensors.
            return param;
        }
        if let (Some(role), Some(matrix)) =
            (self.containers.packed_role(), self.source.packed(&name))
        {
            // Already packed in the source (a GGUF file's quantized matrix): as it is.
            return match matrix {
                Ok(matrix) => role.param(&param, matrix, &self.device),
                Err(e) => {
                    let chain = ember_data::error_chain(&e);
                    self.problems.push(format!("tensor {name}: {chain}"));
                    param
                }
            };
        }
        let packed = match (self.format, self.containers.packed_role(), &expected[..]) {
            (Some(format), Some(role), &[rows, cols]) => role
                .format_for(format, [rows, cols])
                .map(|format| (format, role)),
            _ => None,
        };
        if let Some((format, role)) = packed {
            // Straight from the file's values to the packed format, part by part: no
            // f32 tensor is built. The packed matrix is `[out, in]`, a Linear weight's
            // transpose and an Embedding's self.
            let (a, b) = (hub_shape[0], hub_shape[1]);
            let transpose = (role == PackedRole::LinearWeight) == (layout == Layout::Same);
            let matrix = if transpose {
                self.read_checked(&name)
                    .map(|values| PackedMatrix::from_f32_transposed(format, b, a, &values))
            } else {
                // The file's rows are the matrix's: read a few MB of them at a time.
                PackedMatrix::from_row_parts(format, a, b, PART_VALUES / b.max(1), |rows| {
                    self.read_part_checked(&name, rows.start * b..rows.end * b)
                })
            };
            return match matrix {
                Ok(matrix) => role.param(&param, matrix, &self.device),
                Err(problem) => {
                    self.problems.push(problem);
                    param
                }
            };
        }
        let values = match self.read_checked(&name) {
            Ok(values) => values,
            Err(problem) => {
                self.problems.push(problem);
                return param;
            }
        };
        let tensor = Tensor::<D>::from_data(TensorData::new(values, hub_shape), &self.device);
        let tensor = match layout {
            Layout::Same => tensor,
            // A view: the values keep PyTorch's order, the kernels read through strides.
            Layout::Transposed => tensor.transpose(),
        };
        let id = param.id;
        param.transform_for_load(tensor, id)
    }
}

/// Values read at a time when a weight is converted to a packed format part by part
/// (16 MB of f32).
const PART_VALUES: usize = 1 << 22;

impl Loader<'_> {
    /// The values of tensor `name`, or the problem with them.
    fn read_checked(&self, name: &str) -> Result<Vec<f32>, String> {
        let values = self
            .source
            .read(name)
            .map_err(|e| format!("tensor {name}: {}", ember_data::error_chain(&e)))?;
        finite(name, values)
    }

    /// Values `range` of tensor `name`, or the problem with them.
    fn read_part_checked(&self, name: &str, range: Range<usize>) -> Result<Vec<f32>, String> {
        let values = self
            .source
            .read_part(name, range)
            .map_err(|e| format!("tensor {name}: {}", ember_data::error_chain(&e)))?;
        finite(name, values)
    }
}

/// `values` if all are finite: a diverged or corrupt checkpoint computes NaN
/// everywhere, so say where it is.
fn finite(name: &str, values: Vec<f32>) -> Result<Vec<f32>, String> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(bad) => Err(format!("tensor {name} holds {bad} values")),
        None => Ok(values),
    }
}

/// Loads every float parameter of `model` (built on `device`, its parameters not yet
/// drawn) from `source` as `table` maps them, the matrices of linear layers and
/// embeddings in `dtype`. Hub tensors that no parameter uses and that the table does
/// not ignore, or that `also_used` lists, are errors.
pub fn load_parameters<M: Module>(
    model: M,
    table: &NameTable,
    source: &dyn TensorSource,
    device: &Device,
    dtype: Dtype,
    also_used: &[&str],
) -> Result<M, WeightsError> {
    let mut loader = Loader {
        table,
        source,
        device: device.clone(),
        format: dtype.weight_format(),
        path: PathTracker::default(),
        containers: Containers::default(),
        used: also_used.iter().map(|s| s.to_string()).collect(),
        problems: Vec::new(),
    };
    let model = model.map(&mut loader);
    let unexpected: Vec<String> = source
        .names()
        .into_iter()
        .filter(|name| !loader.used.contains(name) && !table.is_ignored(name))
        .map(|name| format!("unexpected tensor {name}"))
        .collect();
    loader.problems.extend(unexpected);
    if loader.problems.is_empty() {
        Ok(model)
    } else {
        // Every problem counts, the first few are named: a wrong architecture would
        // otherwise name every tensor of the model.
        const NAMED: usize = 8;
        let mut problems = loader.problems[..loader.problems.len().min(NAMED)].join("; ");
        if loader.problems.len() > NAMED {
            problems += &format!(" (and {} more)", loader.problems.len() - NAMED);
        }
        Err(WeightsError::Mismatch {
            path: source.origin().to_path_buf(),
            problems,
        })
    }
}

/// Collects the float parameters of a model under their Hub names, in the Hub's
/// layout.
struct Collector<'a> {
    table: &'a NameTable,
    path: PathTracker,
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.enter(name);
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (name, layout) = self.table.hub_name(&self.path.path());
        let tensor = param.val();
        let data = match layout {
            Layout::Same => tensor.into_data(),
            Layout::Transposed => tensor.transpose().into_data(),
        };
        let shape = data.shape().to_vec();
        let values = data
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("float parameters convert to f32");
        self.tensors.push((name, shape, values));
    }
}

/// `(Hub name, shape, row-major values)` of every float parameter of `model`, as
/// `table` maps them (LoRA adapters are expected to be merged first).
pub fn collect_parameters<M: Module>(
    model: &M,
    table: &NameTable,
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut collector = Collector {
        table,
        path: PathTracker::default(),
        tensors: Vec::new(),
    };
    model.visit(&mut collector);
    collector.tensors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_matching_rule_names_the_tensor() {
        let table = NameTable::new(
            &[
                (r"^lm_head\.weight$", "lm_head.weight", Layout::Transposed),
                (r"^(.*)\.gamma$", "transformer.$1.weight", Layout::Same),
                (r"^(.*)$", "transformer.$1", Layout::Same),
            ],
            &[r"\.attn\.bias$"],
        );
        assert_eq!(
            table.hub_name("lm_head.weight"),
            ("lm_head.weight".into(), Layout::Transposed)
        );
        assert_eq!(
            table.hub_name("h.3.ln_1.gamma"),
            ("transformer.h.3.ln_1.weight".into(), Layout::Same)
        );
        assert_eq!(
            table.hub_name("wte.weight"),
            ("transformer.wte.weight".into(), Layout::Same)
        );
        assert!(table.is_ignored("transformer.h.0.attn.bias"));
        assert!(!table.is_ignored("transformer.h.0.attn.c_attn.bias"));
    }
}
