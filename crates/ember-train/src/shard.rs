//! The optimizer's state sharded across the ranks (ZeRO stage 1,
//! `train.shard_optimizer`).
//!
//! AdamW keeps two moments per weight: twice the model's size, the largest part of a
//! training process's memory after the activations. With the state sharded, each rank
//! owns a run of consecutive parameters (about 1/N of the values) and keeps their
//! moments only: after the gradients are summed (every rank still sees all of them, for
//! the global norm and clipping), each rank steps AdamW on the parameters it owns, and
//! the new weights are shared. AdamW works value by value, so this is exactly the
//! unsharded step. Checkpoints hold the whole state: the ranks send theirs to rank 0,
//! which writes one file, so a sharded run resumes with any number of ranks, sharded or
//! not. (The ranks of a new run draw their parameters' ids apart, so the states travel
//! keyed by the parameters' order and rank 0 keys them by its ids, which the
//! checkpoint's model carries.)
//!
//! Ownership is by whole parameter (Burn's optimizer keeps its state per parameter), so
//! a rank holds at least the moments of its largest parameter; the weights are shared
//! by sums in which only the owner adds non-zeros (twice the bytes of an all-gather),
//! in buckets of parameters, as the gradients are.

use std::collections::{BTreeMap, HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::{Bytes, TensorData};

use crate::collective::{BucketCursor, Collective, CollectiveError, buckets, trainable};
use crate::error::TrainError;

/// Which trainable parameters this rank owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owners {
    owned: HashSet<ParamId>,
}

impl Owners {
    /// Cuts `module`'s trainable parameters, in their order, into `collective.size()`
    /// runs of about equal numbers of values; this rank owns run `collective.rank()`.
    /// Every rank computes the same cut.
    pub fn new<M: Module>(module: &M, collective: &dyn Collective) -> Self {
        let params = trainable(module);
        let total: usize = params.iter().map(|(_, len)| len).sum();
        let (rank, size) = (collective.rank(), collective.size().max(1));
        let mut owned = HashSet::new();
        let mut before = 0;
        for (id, len) in params {
            // The run whose share of the values holds this parameter's middle.
            let middle = before + len / 2;
            if middle * size / total.max(1) == rank {
                owned.insert(id);
            }
            before += len;
        }
        Self { owned }
    }

    /// Whether this rank owns parameter `id`.
    pub fn owns(&self, id: ParamId) -> bool {
        self.owned.contains(&id)
    }

    /// Removes the gradients of the parameters other ranks own: the optimizer then
    /// steps (and keeps state for) this rank's parameters only.
    pub fn keep_own<M: Module>(&self, module: &M, grads: &mut GradientsParams) {
        module.visit(&mut DropOthers {
            owners: self,
            grads,
        });
    }

    /// Every trainable parameter of `module` with its owner's values: sums over the
    /// ranks, bucket by bucket of parameters, in which only the owner contributes.
    pub fn share_weights<M: Module>(
        &self,
        mut module: M,
        collective: &dyn Collective,
        what: &str,
    ) -> Result<M, CollectiveError> {
        let started = std::time::Instant::now();
        let params = trainable(&module);
        for bucket in buckets(&params) {
            let values = params[bucket.clone()].iter().map(|(_, len)| len).sum();
            let mut gather = OwnValues {
                owners: self,
                cursor: BucketCursor::new(bucket.clone()),
                values: Vec::with_capacity(values),
            };
            module = module.map(&mut gather);
            let mut values = gather.values;
            collective.all_reduce_sum(&mut values, what)?;
            module = module.map(&mut SetValues {
                owners: self,
                cursor: BucketCursor::new(bucket),
                values: &values,
                offset: 0,
            });
        }
        tracing::debug!(seconds = started.elapsed().as_secs_f64(), "{what} shared");
        Ok(module)
    }

    /// The state of the parameters this rank owns, out of `optimizer`'s (after a
    /// checkpoint of the whole state is loaded).
    pub fn retain_own(&self, optimizer: ModuleOptimizer) -> Result<ModuleOptimizer, TrainError> {
        let bytes = optimizer.into_bytes().map_err(corrupt)?;
        tracing::debug!(
            owned = self.owned.len(),
            "keeping the optimizer state of this rank's parameters"
        );
        let kept = filter_state(bytes, |id| self.owned.contains(&ParamId::from(id)))?;
        optimizer.from_bytes(kept).map_err(corrupt)
    }
}

fn corrupt(e: impl std::fmt::Display) -> TrainError {
    TrainError::Corrupt {
        path: "optimizer state".into(),
        message: e.to_string(),
    }
}

/// `optimizer`'s state with each parameter named by its place in `module` instead of
/// its id: the ranks of a new run draw their parameters' ids apart, so their states
/// meet on the parameters' order ([`merge_states`]).
pub fn state_by_position<M: Module>(
    module: &M,
    optimizer: &ModuleOptimizer,
) -> Result<Vec<u8>, TrainError> {
    let positions: HashMap<u64, u64> = param_ids(module)
        .into_iter()
        .enumerate()
        .map(|(k, id)| (id.val(), k as u64))
        .collect();
    let bytes = optimizer.into_bytes().map_err(corrupt)?;
    Ok(rewrite_state(bytes, |id| positions.get(&id).copied())?.to_vec())
}

/// The states of `parts` ([`state_by_position`] of each rank, holding disjoint
/// parameters) as one serialised optimizer keyed by `module`'s parameter ids.
pub fn merge_states<M: Module>(module: &M, parts: Vec<Vec<u8>>) -> Result<Bytes, TrainError> {
    let ids: Vec<u64> = param_ids(module).into_iter().map(|id| id.val()).collect();
    let mut tensors = Vec::new();
    let mut scalars = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for part in parts {
        let part = rewrite_state(Bytes::from_bytes_vec(part), |k| {
            ids.get(k as usize).copied()
        })?;
        let reader = burn_pack::Reader::from_bytes(part).map_err(corrupt)?;
        scalars.extend(reader.scalars().clone());
        metadata.extend(reader.metadata().clone());
        tensors.extend(reader.into_tensors().map_err(corrupt)?);
    }
    write_state(tensors, &scalars, &metadata)
}

/// `bytes` (a serialised optimizer) with each parameter's state under `rename(its id)`,
/// and without the states of those `rename` gives no name.
fn filter_state(bytes: Bytes, keep: impl Fn(u64) -> bool) -> Result<Bytes, TrainError> {
    rewrite_state(bytes, |id| keep(id).then_some(id))
}

/// `bytes` (a serialised optimizer) with each parameter's state keyed by `rename(its
/// id)`, and without the states `rename` maps to nothing. Scalars and metadata are keyed
/// `"{id}"` or `"{id}.{name}"`, tensors `"{id}.{name}"` with the id beside.
fn rewrite_state(bytes: Bytes, rename: impl Fn(u64) -> Option<u64>) -> Result<Bytes, TrainError> {
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(corrupt)?;
    let renamed = |key: &str| -> Option<String> {
        let (id, rest) = match key.split_once('.') {
            Some((id, rest)) => (id, Some(rest)),
            None => (key, None),
        };
        let Ok(id) = id.parse::<u64>() else {
            return Some(key.to_string());
        };
        let new = rename(id)?;
        Some(match rest {
            Some(rest) => format!("{new}.{rest}"),
            None => new.to_string(),
        })
    };
    let scalars = reader
        .scalars()
        .iter()
        .filter_map(|(k, v)| Some((renamed(k)?, *v)))
        .collect();
    let metadata = reader
        .metadata()
        .iter()
        .filter_map(|(k, v)| Some((renamed(k)?, v.clone())))
        .collect();
    let mut tensors = Vec::new();
    for tensor in reader.into_tensors().map_err(corrupt)? {
        let Some(name) = renamed(&tensor.name) else {
            continue;
        };
        let param_id = match tensor.param_id {
            Some(id) => match rename(id) {
                Some(new) => Some(new),
                None => continue,
            },
            None => None,
        };
        let (_, dtype, shape, _, data) = tensor.into_parts().map_err(corrupt)?;
        tensors.push(burn_pack::Tensor::new(name, dtype, shape, param_id, data));
    }
    write_state(tensors, &scalars, &metadata)
}

/// Every float parameter's id, in `module`'s order (the same on every rank).
fn param_ids<M: Module>(module: &M) -> Vec<ParamId> {
    struct Ids(Vec<ParamId>);
    impl ModuleVisitor for Ids {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

fn write_state(
    tensors: Vec<burn_pack::Tensor>,
    scalars: &BTreeMap<String, burn_pack::Scalar>,
    metadata: &BTreeMap<String, String>,
) -> Result<Bytes, TrainError> {
    let mut writer = burn_pack::Writer::new(tensors);
    for (key, value) in scalars {
        writer = writer.with_scalar(key, *value);
    }
    for (key, value) in metadata {
        writer = writer.with_metadata(key, value);
    }
    writer.into_bytes().map_err(corrupt)
}

struct DropOthers<'a> {
    owners: &'a Owners,
    grads: &'a mut GradientsParams,
}

impl ModuleVisitor for DropOthers<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !self.owners.owns(param.id) {
            self.grads.remove::<D>(param.id);
        }
    }
}

/// The trainable parameters' values in order, zeros for those of other ranks.
///
/// A mapper, not a visitor: a tensor read while its parameter still holds it is copied
/// value by value (Burn's ndarray backend: seconds for gpt2-small), one taken out of its
/// parameter is read whole, and put back.
struct OwnValues<'a> {
    owners: &'a Owners,
    cursor: BucketCursor,
    values: Vec<f32>,
}

impl ModuleMapper for OwnValues<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.cursor.place(&param).is_none() {
            return param;
        }
        if !self.owners.owns(param.id) {
            let len = param.lazy_shape().num_elements();
            self.values.resize(self.values.len() + len, 0.0);
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let device = tensor.device();
        let data = tensor.into_data();
        match data.as_slice::<f32>() {
            Ok(values) => self.values.extend_from_slice(values),
            // Weights are f32 (mixed precision keeps f32 masters); any other is widened.
            Err(_) => self.values.extend(data.iter::<f32>()),
        }
        let tensor = Tensor::<D>::from_data(data, &device).require_grad();
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// Sets every trainable parameter of other ranks from the shared values, in
/// [`OwnValues`]' order.
struct SetValues<'a> {
    owners: &'a Owners,
    cursor: BucketCursor,
    values: &'a [f32],
    offset: usize,
}

impl ModuleMapper for SetValues<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.cursor.place(&param).is_none() {
            return param;
        }
        let shape = param.lazy_shape();
        let len = shape.num_elements();
        let values = &self.values[self.offset..self.offset + len];
        self.offset += len;
        if self.owners.owns(param.id) {
            return param;
        }
        param.map(|tensor| {
            let device = tensor.device();
            let dtype = tensor.dtype();
            Tensor::<D>::from_data(
                TensorData::new(values.to_vec(), shape).convert_dtype(dtype),
                &device,
            )
            .require_grad()
        })
    }
}

#[cfg(test)]
mod tests {
    // Burn 0.22 deprecates its ndarray backend; Ember's tests still run on it.
    #![allow(deprecated)]
    use burn::nn::{Linear, LinearConfig};

    use super::*;
    use crate::collective::tests::ThreadGroup;
    use crate::optim::AdamWSettings;

    fn gradients(model: &Vec<Linear>, device: &Device) -> GradientsParams {
        let x = Tensor::<2>::from_data([[0.5f32, -1.0, 2.0, 0.25]], device);
        let y = model[1].forward(model[0].forward(x));
        GradientsParams::from_grads(y.sum().backward(), model)
    }

    /// Two ranks own disjoint halves of the parameters; each keeps the optimizer's
    /// state of its own; the states merged step exactly as the whole did.
    #[test]
    fn a_state_split_by_owner_and_merged_steps_as_the_whole() {
        let device = Device::ndarray().autodiff();
        let model = vec![
            LinearConfig::new(4, 6).init(&device),
            LinearConfig::new(6, 3).init(&device),
        ];
        let fresh = || AdamWSettings::default().init();
        let mut whole = fresh();
        let model = whole.step(1e-2, model.clone(), gradients(&model, &device));
        let bytes = whole.into_bytes().unwrap();

        let group = ThreadGroup::new(2);
        let owners: Vec<Owners> = group.iter().map(|g| Owners::new(&model, g)).collect();
        for id in &param_ids(&model) {
            let count = owners.iter().filter(|o| o.owns(*id)).count();
            assert_eq!(count, 1, "every parameter has one owner");
        }
        assert!(owners.iter().all(|o| !o.owned.is_empty()));

        // Each rank's shard, named by position; then merged under the ids of a copy
        // whose parameters were drawn apart (as another rank's are).
        let shards: Vec<Vec<u8>> = owners
            .iter()
            .map(|o| {
                let own = o
                    .retain_own(fresh().from_bytes(bytes.clone()).unwrap())
                    .unwrap();
                state_by_position(&model, &own).unwrap()
            })
            .collect();
        assert!(shards.iter().all(|s| s.len() < bytes.len()));
        let other: Vec<Linear> = model
            .iter()
            .map(|l| Linear {
                weight: Param::from_tensor(l.weight.val()),
                bias: l.bias.as_ref().map(|b| Param::from_tensor(b.val())),
            })
            .collect();
        assert_ne!(param_ids(&other), param_ids(&model));
        let mut merged = fresh()
            .from_bytes(merge_states(&other, shards).unwrap())
            .unwrap();
        let mut again = fresh().from_bytes(bytes).unwrap();
        let a = merged.step(1e-2, other.clone(), gradients(&other, &device));
        let b = again.step(1e-2, model.clone(), gradients(&model, &device));
        for (x, y) in a.iter().zip(&b) {
            x.weight
                .val()
                .into_data()
                .assert_eq(&y.weight.val().into_data(), true);
        }
    }
}
