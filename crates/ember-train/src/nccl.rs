//! [`Collective`] whose sums run on NCCL between GPUs, the ranks started by MPI
//! (`mpirun -np N ember pretrain --all-reduce nccl ...`), as llm.c does: rank 0 makes
//! NCCL's unique id and MPI hands it to the others, every rank opens the communicator
//! on its node-local GPU, and the gradients' buckets are summed there. MPI keeps the
//! rest: the arrival check before every exchange (so a late rank is still named within
//! the time limit), barriers and the gather of checkpoints to rank 0.
//!
//! The trainer hands the collective its gradients in host memory (the backends give no
//! common access to device memory), so each bucket is copied to the GPU, summed by
//! NCCL and copied back; on a GPU backend that is one more round trip through host
//! memory than PyTorch's DDP makes. The CUDA driver and NCCL are loaded when the
//! collective is made (cudarc's dynamic loading), so this builds on machines without
//! CUDA, and where they are missing the run stops with a one-line error.

use std::cell::RefCell;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use crate::collective::{Collective, CollectiveError};
use crate::mpi::{BUCKET, MpiCollective};

/// NCCL's sums over the ranks of an MPI job: [`NcclComm::open`], then
/// [`NcclCollective::new`].
pub struct NcclCollective {
    mpi: MpiCollective,
    nccl: NcclComm,
}

/// One rank's NCCL communicator, on its GPU, with the device buffer buckets are
/// summed in.
pub struct NcclComm {
    comm: Comm,
    stream: Arc<CudaStream>,
    /// Allocated at the first exchange.
    buffer: RefCell<Option<CudaSlice<f32>>>,
}

impl NcclComm {
    /// Opens NCCL on GPU `gpu` of this node for the ranks of `mpi`. Every rank calls
    /// this at the same point (it exchanges NCCL's id); a rank that fails should end
    /// the job ([`MpiCollective::abort`]), since the others wait for it.
    pub fn open(mpi: &MpiCollective, gpu: usize) -> Result<Self, CollectiveError> {
        let rank = mpi.rank();
        let failed = |message: String| CollectiveError::Failed {
            rank,
            what: "NCCL initialisation".into(),
            message,
        };
        libraries_present().map_err(failed)?;
        let context =
            CudaContext::new(gpu).map_err(|e| failed(format!("GPU {gpu} of this node: {e}")))?;
        let stream = context.default_stream();
        let mut id = [0u8; 128];
        if rank == 0 {
            let made = Id::new().map_err(|e| failed(format!("making the unique id: {e:?}")))?;
            for (byte, c) in id.iter_mut().zip(made.internal()) {
                *byte = *c as u8;
            }
        }
        mpi.broadcast_from_root(&mut id, "NCCL's unique id")?;
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(stream.clone(), rank, mpi.size(), id)
            .map_err(|e| failed(format!("opening the communicator on GPU {gpu}: {e:?}")))?;
        Ok(Self {
            comm,
            stream,
            buffer: RefCell::new(None),
        })
    }

    /// Sums `values` over the ranks through the GPU, a bucket at a time.
    fn sum(&self, values: &mut [f32]) -> Result<(), String> {
        let mut buffer = self.buffer.borrow_mut();
        if buffer.is_none() {
            let len = values.len().clamp(1, BUCKET);
            *buffer = Some(
                self.stream
                    .alloc_zeros::<f32>(len)
                    .map_err(|e| e.to_string())?,
            );
        }
        let buffer = buffer.as_mut().expect("allocated above");
        for bucket in values.chunks_mut(buffer.len()) {
            let mut view = buffer.slice_mut(..bucket.len());
            self.stream
                .memcpy_htod(&*bucket, &mut view)
                .map_err(|e| e.to_string())?;
            self.comm
                .all_reduce_in_place(&mut view, &ReduceOp::Sum)
                .map_err(|e| format!("ncclAllReduce: {e:?}"))?;
            self.stream
                .memcpy_dtoh(&view, bucket)
                .map_err(|e| e.to_string())?;
        }
        self.stream.synchronize().map_err(|e| e.to_string())
    }
}

impl NcclCollective {
    /// The collective of `mpi`'s ranks whose sums run on `nccl`.
    pub fn new(mpi: MpiCollective, nccl: NcclComm) -> Self {
        Self { mpi, nccl }
    }

    /// The MPI job underneath (for ending it: [`MpiCollective::abort`]).
    pub fn mpi(&self) -> &MpiCollective {
        &self.mpi
    }
}

/// Whether the CUDA driver and NCCL (in that order) can be loaded.
fn loadable() -> (bool, bool) {
    // SAFETY: these only try to open the shared libraries (dlopen).
    unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nccl::sys::is_culib_present(),
        )
    }
}

/// Whether the CUDA driver and NCCL can be loaded; the error names what is missing.
pub fn libraries_present() -> Result<(), String> {
    let (driver, nccl) = loadable();
    let mut missing = Vec::new();
    if !driver {
        missing.push("the CUDA driver (libcuda.so.1: an NVIDIA GPU's driver)");
    }
    if !nccl {
        missing
            .push("NCCL (libnccl.so.2: apt libnccl2, or pip nvidia-nccl-cu12 on LD_LIBRARY_PATH)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("cannot load {}", missing.join(" or ")))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn all_reduce_sum(&self, values: &mut [f32], what: &str) -> Result<(), CollectiveError> {
        // Every rank arrives first (named if late), then NCCL sums: an NCCL call that a
        // rank never makes would wait forever.
        self.mpi.barrier(what)?;
        self.nccl
            .sum(values)
            .map_err(|message| CollectiveError::Failed {
                rank: self.rank(),
                what: what.to_string(),
                message,
            })
    }

    fn barrier(&self, what: &str) -> Result<(), CollectiveError> {
        self.mpi.barrier(what)
    }

    fn gather_to_root(&self, bytes: &[u8], what: &str) -> Result<Vec<Vec<u8>>, CollectiveError> {
        self.mpi.gather_to_root(bytes, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without an NVIDIA driver or NCCL (this one, CI) the check names
    /// what is missing instead of cudarc's panic at first use.
    #[test]
    fn missing_libraries_are_named() {
        let (driver, nccl) = loadable();
        match libraries_present() {
            Ok(()) => assert!(driver && nccl),
            Err(message) => {
                assert!(message.starts_with("cannot load "), "{message}");
                assert_eq!(message.contains("libcuda.so.1"), !driver, "{message}");
                assert_eq!(message.contains("libnccl.so.2"), !nccl, "{message}");
            }
        }
    }
}
