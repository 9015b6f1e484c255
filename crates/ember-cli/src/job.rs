//! The processes of a training job: one, or the ranks an MPI launcher started
//! (`mpirun -np N ember pretrain ...`; the `mpi` feature), their gradients summed by MPI
//! or, between GPUs, by NCCL (`--all-reduce nccl`; the `nccl` feature).

use std::time::Duration;

use anyhow::Result;
use ember_train::Collective;
use ember_train::collective::launched;

/// What sums the ranks' gradients (`--all-reduce`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AllReduce {
    /// MPI, through host memory (CPU or GPU training).
    #[default]
    Mpi,
    /// NCCL, on each rank's GPU; MPI starts the ranks and hands over NCCL's id.
    Nccl,
}

/// The ranks' exchanges.
#[cfg(feature = "mpi")]
enum Transport {
    Mpi(ember_train::mpi::MpiCollective),
    #[cfg(feature = "nccl")]
    Nccl(ember_train::nccl::NcclCollective),
}

#[cfg(feature = "mpi")]
impl Transport {
    fn collective(&self) -> &dyn Collective {
        match self {
            Self::Mpi(mpi) => mpi,
            #[cfg(feature = "nccl")]
            Self::Nccl(nccl) => nccl,
        }
    }

    /// The MPI job underneath, which ends every rank.
    fn mpi(&self) -> &ember_train::mpi::MpiCollective {
        match self {
            Self::Mpi(mpi) => mpi,
            #[cfg(feature = "nccl")]
            Self::Nccl(nccl) => nccl.mpi(),
        }
    }

    /// Sums on NCCL between the GPUs, each rank on its node-local GPU; a rank that
    /// cannot open NCCL ends the job naming the cause.
    fn nccl(mpi: ember_train::mpi::MpiCollective) -> Result<Self> {
        #[cfg(feature = "nccl")]
        {
            let gpu = ember_train::collective::local_gpu();
            match ember_train::nccl::NcclComm::open(&mpi, gpu) {
                Ok(comm) => {
                    tracing::info!(rank = mpi.rank(), gpu, "the gradients are summed on NCCL");
                    Ok(Self::Nccl(ember_train::nccl::NcclCollective::new(
                        mpi, comm,
                    )))
                }
                // The other ranks wait for this one: end them all.
                Err(error) => mpi.abort(&error, 2),
            }
        }
        #[cfg(not(feature = "nccl"))]
        {
            let _ = mpi;
            anyhow::bail!(
                "--all-reduce nccl: this ember was built without NCCL; build it with \
                 `cargo build --release -p ember-cli --features nccl`"
            )
        }
    }
}

/// This process's place in the job.
pub struct Job {
    #[cfg(feature = "mpi")]
    transport: Option<Transport>,
}

impl Job {
    /// Joins the job the launcher started (MPI is initialised here, on the thread that
    /// trains), or is a job of one process. `timeout`: the longest a rank waits for the
    /// others at an exchange before the job ends naming the late ranks; `all_reduce`:
    /// what sums the gradients.
    pub fn start(timeout: Duration, all_reduce: AllReduce) -> Result<Self> {
        #[cfg(feature = "mpi")]
        {
            let Some(mpi) = ember_train::mpi::MpiCollective::from_launcher(timeout)? else {
                return Ok(Self { transport: None });
            };
            tracing::info!(rank = mpi.rank(), ranks = mpi.size(), "joined the MPI job");
            let transport = match all_reduce {
                AllReduce::Mpi => Transport::Mpi(mpi),
                AllReduce::Nccl if mpi.size() == 1 => Transport::Mpi(mpi),
                AllReduce::Nccl => Transport::nccl(mpi)?,
            };
            Ok(Self {
                transport: Some(transport),
            })
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = timeout;
            match launched() {
                Some(launch) if launch.size > 1 => anyhow::bail!(
                    "started as rank {} of {} processes by an MPI launcher, but this ember was built \
                     without MPI: build it with `cargo build --release -p ember-cli --features {}`",
                    launch.rank,
                    launch.size,
                    if all_reduce == AllReduce::Nccl {
                        "nccl"
                    } else {
                        "mpi"
                    }
                ),
                _ => Ok(Self {}),
            }
        }
    }

    /// The ranks, when there are several.
    pub fn collective(&self) -> Option<&dyn Collective> {
        #[cfg(feature = "mpi")]
        {
            self.transport
                .as_ref()
                .map(Transport::collective)
                .filter(|c| c.size() > 1)
        }
        #[cfg(not(feature = "mpi"))]
        None
    }

    /// Whether this process reports (prints results): one process, or rank 0.
    pub fn reports(&self) -> bool {
        self.collective().is_none_or(|c| c.rank() == 0)
    }

    /// Passes `result` on; an error on one rank of several (other than an interrupt,
    /// which every rank sees at the same step) ends every rank: the others would
    /// otherwise wait for it at the next exchange until the time limit.
    pub fn finish<T>(&self, result: Result<T>) -> Result<T> {
        #[cfg(feature = "mpi")]
        if let (Err(error), Some(transport)) = (&result, &self.transport)
            && transport.collective().size() > 1
            && !crate::args::run::is_interrupt(error)
        {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            let rank = transport.collective().rank();
            transport
                .mpi()
                .abort(&format!("rank {rank}: {}", chain.join(": ")), 2);
        }
        result
    }
}

/// The default filter of the log for this process: `info`, `warn` on the ranks after
/// the first of a launched job, so that the log says each thing once.
pub fn default_log_level() -> &'static str {
    match launched() {
        Some(launch) if launch.rank > 0 => "warn",
        _ => "info",
    }
}
