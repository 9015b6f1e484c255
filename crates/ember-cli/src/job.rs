//! The processes of a training job: one, or the ranks an MPI launcher started
//! (`mpirun -np N ember pretrain ...`; the `mpi` feature).

use std::time::Duration;

use anyhow::Result;
use ember_train::Collective;
use ember_train::collective::launched;

/// This process's place in the job.
pub struct Job {
    #[cfg(feature = "mpi")]
    mpi: Option<ember_train::mpi::MpiCollective>,
}

impl Job {
    /// Joins the job the launcher started (MPI is initialised here, on the thread that
    /// trains), or is a job of one process. `timeout`: the longest a rank waits for the
    /// others at an exchange before the job ends naming the late ranks.
    pub fn start(timeout: Duration) -> Result<Self> {
        #[cfg(feature = "mpi")]
        {
            let mpi = ember_train::mpi::MpiCollective::from_launcher(timeout)?;
            if let Some(mpi) = &mpi {
                tracing::info!(rank = mpi.rank(), ranks = mpi.size(), "joined the MPI job");
            }
            Ok(Self { mpi })
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = timeout;
            match launched() {
                Some(launch) if launch.size > 1 => anyhow::bail!(
                    "started as rank {} of {} processes by an MPI launcher, but this ember was built \
                     without MPI: build it with `cargo build --release -p ember-cli --features mpi`",
                    launch.rank,
                    launch.size
                ),
                _ => Ok(Self {}),
            }
        }
    }

    /// The ranks, when there are several.
    pub fn collective(&self) -> Option<&dyn Collective> {
        #[cfg(feature = "mpi")]
        {
            self.mpi
                .as_ref()
                .filter(|m| m.size() > 1)
                .map(|m| m as &dyn Collective)
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
        if let (Err(error), Some(mpi)) = (&result, &self.mpi)
            && mpi.size() > 1
            && !crate::args::run::is_interrupt(error)
        {
            let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
            let message = format!("rank {}: {}", mpi.rank(), chain.join(": "));
            mpi.abort(&message, 2);
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
