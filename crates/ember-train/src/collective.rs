//! Data parallelism across processes: what the trainer needs of the processes of a
//! job ([`Collective`]), and the exchanges it makes through it.
//!
//! Every process (rank) runs the same run with the same configuration, draws the same
//! initial weights and walks the same epoch plan; each takes its share of every
//! micro-batch ([`rank_rows`]), computes its part of the loss weighted by that share,
//! and the gradients are summed over the ranks ([`reduce_gradients`]) before one
//! identical optimizer step on every rank. So N ranks with batch B/N each train as one
//! process with batch B. Rank 0 alone writes the run directory.
//!
//! The MPI implementation is `mpi::MpiCollective` (feature `mpi`).

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorData;

/// The processes of a data-parallel job.
///
/// Every rank calls the same exchanges in the same order; an implementation that can
/// tell a rank is gone (or late beyond a limit) says so with an error naming it, or ends
/// the job itself.
pub trait Collective {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;

    /// The number of processes.
    fn size(&self) -> usize;

    /// Sums `values` over every rank, in place: every rank gets the same sums. `what`
    /// names the exchange in errors ("the gradients of step 12").
    fn all_reduce_sum(&self, values: &mut [f32], what: &str) -> Result<(), CollectiveError>;

    /// Returns once every rank has called it.
    fn barrier(&self, what: &str) -> Result<(), CollectiveError>;

    /// Every rank's `bytes`, in rank order, on rank 0 (nothing on the others).
    fn gather_to_root(&self, bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>, CollectiveError>;
}

/// An exchange between the ranks that failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// Ranks did not arrive at an exchange within the time limit.
    #[error("rank {rank}: rank(s) {missing:?} did not reach {what} within {seconds} s")]
    Timeout {
        /// The rank that waited.
        rank: usize,
        /// The ranks it waited for.
        missing: Vec<usize>,
        /// The exchange.
        what: String,
        /// The limit.
        seconds: u64,
    },
    /// The transport failed.
    #[error("rank {rank}: {what}: {message}")]
    Failed {
        /// The rank that saw the failure.
        rank: usize,
        /// The exchange.
        what: String,
        /// What failed.
        message: String,
    },
}

/// This rank's rows of a micro-batch, and where they start in it: `rows` cut into
/// `size` equal parts (the batch size is a multiple of the number of ranks), part
/// `rank`. All of `rows` without a collective.
pub fn rank_rows<'r>(
    rows: &'r [usize],
    collective: Option<&dyn Collective>,
) -> (&'r [usize], usize) {
    match collective {
        Some(c) if c.size() > 1 => {
            let part = rows.len().div_ceil(c.size());
            let start = (c.rank() * part).min(rows.len());
            (&rows[start..(start + part).min(rows.len())], start)
        }
        _ => (rows, 0),
    }
}

/// What an MPI launcher (Open MPI's mpirun, MPICH's Hydra, PMIx, Slurm's srun) told
/// this process in its environment: readable before MPI is initialised, and without
/// MPI compiled in (to refuse a launch that would run N unconnected copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank.
    pub rank: usize,
    /// The number of processes (1 when the launcher does not say).
    pub size: usize,
    /// This process's rank among those on its machine, when the launcher says (each
    /// rank's GPU).
    pub local_rank: Option<usize>,
}

/// The launch this process belongs to, if a launcher started it.
pub fn launched() -> Option<Launch> {
    let first = |names: &[&str]| {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok()?.trim().parse::<usize>().ok())
    };
    let rank = first(&[
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ])?;
    let size = first(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]).unwrap_or(1);
    let local_rank = first(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMIX_LOCAL_RANK",
        "SLURM_LOCALID",
    ]);
    Some(Launch {
        rank,
        size,
        local_rank,
    })
}

/// The GPU of this process: its rank among those of its machine when a launcher
/// started it (one GPU per rank), the first otherwise.
pub fn local_gpu() -> usize {
    launched().and_then(|launch| launch.local_rank).unwrap_or(0)
}

/// Whether any rank raised its `flag` (an interrupt: every rank then stops after the
/// same step).
pub fn any_rank(
    flag: bool,
    collective: &dyn Collective,
    what: &str,
) -> Result<bool, CollectiveError> {
    let mut value = [f32::from(u8::from(flag))];
    collective.all_reduce_sum(&mut value, what)?;
    Ok(value[0] > 0.0)
}

/// Sums every rank's gradients of `module`'s trainable parameters, and `scalars` (the
/// step's loss) beside them; afterwards every rank holds the sums.
///
/// The gradients travel in f32, in buckets of consecutive parameters of about
/// [`BUCKET_VALUES`] values (what one exchange holds beside the gradients, rather than a
/// copy of them all), each with one presence flag per parameter: a parameter that got a
/// gradient on any rank gets the sum (a rank without one adds zeros), and one that got
/// none anywhere stays without, as on one process (AdamW then leaves it as it is).
/// Frozen parameters are not sent.
pub fn reduce_gradients<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    scalars: &mut [f32],
    collective: &dyn Collective,
    what: &str,
) -> Result<(), CollectiveError> {
    let started = std::time::Instant::now();
    let params = trainable(module);
    let device = module.devices().first().map(|d| d.clone().inner());
    let (Some(device), false) = (device, params.is_empty()) else {
        return collective.all_reduce_sum(scalars, what);
    };
    let mut exchanged = std::time::Duration::ZERO;
    for (index, bucket) in buckets(&params).into_iter().enumerate() {
        let values: usize = params[bucket.clone()].iter().map(|(_, len)| len).sum();
        let extra = if index == 0 { scalars.len() } else { 0 };
        let mut gather = Gather {
            grads: &mut *grads,
            cursor: BucketCursor::new(bucket.clone()),
            buffer: Vec::with_capacity(extra + values + bucket.len()),
            flags: Vec::with_capacity(bucket.len()),
        };
        gather.buffer.extend_from_slice(&scalars[..extra]);
        module.visit(&mut gather);
        let Gather {
            mut buffer, flags, ..
        } = gather;
        buffer.extend_from_slice(&flags);
        let exchange = std::time::Instant::now();
        collective.all_reduce_sum(&mut buffer, what)?;
        exchanged += exchange.elapsed();
        scalars[..extra].copy_from_slice(&buffer[..extra]);
        let (values, flags) = buffer[extra..].split_at(values);
        module.visit(&mut Scatter {
            grads: &mut *grads,
            cursor: BucketCursor::new(bucket),
            flags,
            values,
            offset: 0,
            device: device.clone(),
        });
    }
    tracing::debug!(
        exchange_s = exchanged.as_secs_f64(),
        copies_s = (started.elapsed() - exchanged).as_secs_f64(),
        "{what} summed over {} ranks",
        collective.size()
    );
    Ok(())
}

/// Values in one bucket of parameters exchanged at once (32 MB of f32): large enough
/// that an exchange's fixed cost does not count, small beside a model.
pub const BUCKET_VALUES: usize = 8 << 20;

/// `module`'s trainable parameters in order, with their numbers of values.
pub(crate) fn trainable<M: Module>(module: &M) -> Vec<(ParamId, usize)> {
    struct Trainable(Vec<(ParamId, usize)>);
    impl ModuleVisitor for Trainable {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.val().is_require_grad() {
                self.0.push((param.id, param.lazy_shape().num_elements()));
            }
        }
    }
    let mut list = Trainable(Vec::new());
    module.visit(&mut list);
    list.0
}

/// Consecutive runs of `params` of at most [`BUCKET_VALUES`] values (a larger
/// parameter alone), by index.
pub(crate) fn buckets(params: &[(ParamId, usize)]) -> Vec<std::ops::Range<usize>> {
    let mut buckets = Vec::new();
    let (mut start, mut values) = (0, 0);
    for (i, (_, len)) in params.iter().enumerate() {
        if i > start && values + len > BUCKET_VALUES {
            buckets.push(start..i);
            (start, values) = (i, 0);
        }
        values += len;
    }
    if start < params.len() {
        buckets.push(start..params.len());
    }
    buckets
}

/// Follows a pass over a module's parameters to pick out one bucket's.
pub(crate) struct BucketCursor {
    /// The bucket, by index among the trainable parameters.
    bucket: std::ops::Range<usize>,
    /// The index of the next trainable parameter.
    next: usize,
}

impl BucketCursor {
    pub(crate) fn new(bucket: std::ops::Range<usize>) -> Self {
        Self { bucket, next: 0 }
    }

    /// The place in the bucket of `param`, the pass's next parameter, if it is a
    /// trainable one of the bucket.
    pub(crate) fn place<const D: usize>(&mut self, param: &Param<Tensor<D>>) -> Option<usize> {
        if !param.val().is_require_grad() {
            return None;
        }
        let index = self.next;
        self.next += 1;
        self.bucket
            .contains(&index)
            .then(|| index - self.bucket.start)
    }
}

/// Takes the gradients of one bucket's trainable parameters out of `grads`.
struct Gather<'a> {
    grads: &'a mut GradientsParams,
    cursor: BucketCursor,
    buffer: Vec<f32>,
    flags: Vec<f32>,
}

impl ModuleVisitor for Gather<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.cursor.place(param).is_none() {
            return;
        }
        match self.grads.remove::<D>(param.id) {
            Some(grad) => {
                let data = grad.into_data().convert::<f32>();
                self.flags.push(1.0);
                self.buffer.extend_from_slice(
                    data.as_slice::<f32>()
                        .expect("a gradient converted to f32 reads as f32"),
                );
            }
            None => {
                self.flags.push(0.0);
                let len = param.lazy_shape().num_elements();
                self.buffer.resize(self.buffer.len() + len, 0.0);
            }
        }
    }
}

/// Puts one bucket's summed gradients back, in the order [`Gather`] took them.
struct Scatter<'a> {
    grads: &'a mut GradientsParams,
    cursor: BucketCursor,
    flags: &'a [f32],
    values: &'a [f32],
    offset: usize,
    device: Device,
}

impl ModuleVisitor for Scatter<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(place) = self.cursor.place(param) else {
            return;
        };
        let shape = param.lazy_shape();
        let len = shape.num_elements();
        let values = &self.values[self.offset..self.offset + len];
        self.offset += len;
        if self.flags[place] > 0.0 {
            let data = TensorData::new(values.to_vec(), shape);
            self.grads
                .register(param.id, Tensor::<D>::from_data(data, &self.device));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Barrier, Mutex};

    use super::*;

    /// `size` ranks in one process, one thread each: the sum of what every rank
    /// contributed, handed back to each (for tests of the trainer's exchanges).
    pub(crate) struct ThreadGroup {
        rank: usize,
        shared: Arc<Shared>,
    }

    struct Shared {
        size: usize,
        barrier: Barrier,
        sum: Mutex<Vec<f32>>,
        gathered: Mutex<Vec<Vec<u8>>>,
    }

    impl ThreadGroup {
        pub(crate) fn new(size: usize) -> Vec<ThreadGroup> {
            let shared = Arc::new(Shared {
                size,
                barrier: Barrier::new(size),
                sum: Mutex::new(Vec::new()),
                gathered: Mutex::new(vec![Vec::new(); size]),
            });
            (0..size)
                .map(|rank| ThreadGroup {
                    rank,
                    shared: shared.clone(),
                })
                .collect()
        }
    }

    impl Collective for ThreadGroup {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.shared.size
        }
        fn all_reduce_sum(&self, values: &mut [f32], _what: &str) -> Result<(), CollectiveError> {
            if self.rank == 0 {
                *self.shared.sum.lock().unwrap() = vec![0.0; values.len()];
            }
            self.shared.barrier.wait();
            // Ranks add in turn, so the sums are the same on every run.
            for turn in 0..self.shared.size {
                if turn == self.rank {
                    let mut sum = self.shared.sum.lock().unwrap();
                    for (s, v) in sum.iter_mut().zip(values.iter()) {
                        *s += v;
                    }
                }
                self.shared.barrier.wait();
            }
            values.copy_from_slice(&self.shared.sum.lock().unwrap());
            self.shared.barrier.wait();
            Ok(())
        }
        fn barrier(&self, _what: &str) -> Result<(), CollectiveError> {
            self.shared.barrier.wait();
            Ok(())
        }
        fn gather_to_root(
            &self,
            bytes: &[u8],
            _what: &str,
        ) -> Result<Vec<Vec<u8>>, CollectiveError> {
            self.shared.gathered.lock().unwrap()[self.rank] = bytes.to_vec();
            self.shared.barrier.wait();
            let all = match self.rank {
                0 => self.shared.gathered.lock().unwrap().clone(),
                _ => Vec::new(),
            };
            self.shared.barrier.wait();
            Ok(all)
        }
    }

    #[test]
    fn ranks_take_consecutive_equal_parts() {
        let rows: Vec<usize> = (10..18).collect();
        let group = ThreadGroup::new(4);
        let parts: Vec<(&[usize], usize)> =
            group.iter().map(|g| rank_rows(&rows, Some(g))).collect();
        assert_eq!(
            parts,
            [
                (&[10, 11][..], 0),
                (&[12, 13], 2),
                (&[14, 15], 4),
                (&[16, 17], 6)
            ]
        );
        assert_eq!(rank_rows(&rows, None), (&rows[..], 0));
    }

    #[test]
    fn any_rank_sees_one_raised_flag() {
        let group = ThreadGroup::new(3);
        let seen: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|g| s.spawn(move || any_rank(g.rank() == 2, g, "flag").unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(seen, [true, true, true]);
    }
}
