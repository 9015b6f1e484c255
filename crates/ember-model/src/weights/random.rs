//! A model of a given architecture with random weights, built the way a checkpoint is
//! loaded: for benchmarks, whose speed does not depend on the values, and whose memory
//! should be what loading a real model of that shape and precision takes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use ember_kernels::Dtype;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::WeightsError;
use super::table::{Layout, NameTable};
use super::tensors::TensorSource;
use crate::model::{ArchitectureConfig, LanguageModel, ModelConfig, each_architecture};

/// Every parameter's Hub name and shape, read from a model whose parameters are never
/// drawn.
struct HubShapes<'a> {
    table: &'a NameTable,
    path: Vec<String>,
    shapes: BTreeMap<String, Vec<usize>>,
}

impl ModuleVisitor for HubShapes<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let (name, layout) = self.table.hub_name(&self.path.join("."));
        let mut shape = param.lazy_shape().to_vec();
        if layout == Layout::Transposed {
            shape.reverse();
        }
        self.shapes.insert(name, shape);
    }
}

/// Uniform values in ±0.02 (GPT-2's initial scale), the same for a name and seed.
struct RandomTensors {
    shapes: BTreeMap<String, Vec<usize>>,
    seed: u64,
    origin: PathBuf,
}

impl TensorSource for RandomTensors {
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.shapes.get(name).cloned()
    }

    fn read_part(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, WeightsError> {
        let shape = self
            .shapes
            .get(name)
            .ok_or_else(|| WeightsError::format(&self.origin, format!("no tensor {name}")))?;
        let len: usize = shape.iter().product();
        if range.start > range.end || range.end > len {
            return Err(WeightsError::format(
                &self.origin,
                format!("tensor {name} has {len} values, not {range:?}"),
            ));
        }
        let name_seed = name.bytes().fold(self.seed, |h, b| {
            h.wrapping_mul(0x100_0000_01b3) ^ u64::from(b)
        });
        // Chunks of CHUNK values, each from its own seed: any part is the same values.
        const CHUNK: usize = 1 << 16;
        let mut values = vec![0.0f32; range.len()];
        let mut pieces: Vec<(usize, &mut [f32])> = Vec::new();
        let mut rest = values.as_mut_slice();
        let mut at = range.start;
        while !rest.is_empty() {
            let n = (CHUNK - at % CHUNK).min(rest.len());
            let (piece, tail) = rest.split_at_mut(n);
            pieces.push((at, piece));
            rest = tail;
            at += n;
        }
        pieces.into_par_iter().for_each(|(at, piece)| {
            let chunk = at / CHUNK;
            let mut rng = ChaCha8Rng::seed_from_u64(name_seed.wrapping_add(chunk as u64));
            // Values before `at` in the chunk are drawn and dropped.
            for _ in chunk * CHUNK..at {
                let _: f32 = rng.random_range(-0.02..0.02);
            }
            piece
                .iter_mut()
                .for_each(|v| *v = rng.random_range(-0.02..0.02));
        });
        Ok(values)
    }

    fn names(&self) -> Vec<String> {
        self.shapes.keys().cloned().collect()
    }

    fn origin(&self) -> &Path {
        &self.origin
    }
}

/// A model of `config`'s architecture with random weights (uniform in ±0.02, from
/// `seed`) held in `dtype`, loaded tensor by tensor as a checkpoint is.
pub fn random_model(
    config: &ModelConfig,
    dtype: Dtype,
    seed: u64,
    device: &Device,
) -> Result<LanguageModel, WeightsError> {
    let table = each_architecture!(config, ModelConfig, c => c.name_table(None));
    let mut shapes = HubShapes {
        table: &table,
        path: Vec::new(),
        shapes: BTreeMap::new(),
    };
    // The architecture's own module, whose paths the table names (not the enum's).
    each_architecture!(config.init(device), LanguageModel, model => model.visit(&mut shapes));
    let source = RandomTensors {
        shapes: shapes.shapes,
        seed,
        origin: PathBuf::from("<random weights>"),
    };
    super::model_from_tensors(config, &source, dtype, device)
}

#[cfg(test)]
mod tests {
    #![allow(deprecated)]
    use super::*;
    use crate::GptConfig;
    use crate::model::CausalLm;

    #[test]
    fn random_models_have_every_parameter_and_depend_only_on_the_seed() {
        let device = Device::ndarray();
        let config = ModelConfig::Gpt2(GptConfig::preset("tiny").unwrap());
        let ids = Tensor::<2, Int>::from_ints([[1, 2, 3]], &device);
        let logits = |seed| {
            random_model(&config, Dtype::F32, seed, &device)
                .unwrap()
                .logits(ids.clone())
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let (a, b, c) = (logits(1), logits(1), logits(2));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Any part of a tensor is those values of the whole, across the chunks the
        // values are drawn in.
        let source = RandomTensors {
            shapes: [("w".to_string(), vec![3, 50_000])].into(),
            seed: 7,
            origin: PathBuf::from("<random>"),
        };
        let whole = source.read("w").unwrap();
        for range in [0..10, 65_530..65_540, 70_000..150_000] {
            assert_eq!(source.read_part("w", range.clone()).unwrap(), whole[range]);
        }
        assert!(a.iter().all(|v| v.is_finite() && v.abs() < 10.0));
    }
}
