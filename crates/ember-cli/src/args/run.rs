//! What every training subcommand shares: the run options, the configuration from a
//! preset, a TOML file and `--set` overrides (or from the run being resumed), and the
//! Ctrl-C flag.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use burn::prelude::Device;
use ember_train::{RunConfig, RunMode, RunOptions};

use crate::job::{AllReduce, Job};

/// Options of every training run.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// TOML file overriding the preset (unknown keys are errors).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Run directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop after this many optimizer steps in total.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Continue the run in this directory (in place).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Override a setting: `--set train.lr=1e-3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
    /// Start the run over in a directory that holds one (its run files are removed).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Train data-parallel on these devices, one model replica each, every batch split
    /// across them: `cpu,cpu`, `cuda:0,cuda:1` (they also choose the backend).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub devices: Vec<String>,
    /// Under `mpirun`: the longest a rank waits for the others at an exchange (a step's
    /// gradients, rank 0's evaluations and checkpoints included) before the job ends
    /// naming the ranks that did not arrive.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub rank_timeout: u64,
    /// Under `mpirun`: what sums the ranks' gradients, `mpi` (through host memory) or
    /// `nccl` (on each rank's GPU, the node-local rank's; built with `--features nccl`).
    #[arg(long, value_enum, default_value_t = AllReduce::Mpi)]
    pub all_reduce: AllReduce,
}

impl RunArgs {
    /// The devices of `--devices` (none without it).
    pub fn devices(&self) -> Result<Vec<Device>> {
        crate::backend::devices(&self.devices)
    }

    /// The job of this run's processes (one, or the ranks `mpirun` started).
    pub fn job(&self) -> Result<Job> {
        Job::start(Duration::from_secs(self.rank_timeout), self.all_reduce)
    }

    /// The run's options: resume, start over or new; progress bars unless `--quiet`
    /// (on rank 0 only); data-parallel on `devices` (from [`RunArgs::devices`]) and
    /// across the ranks of `job`.
    pub fn options<'a>(
        &self,
        interrupt: &'a AtomicBool,
        devices: &'a [Device],
        job: &'a Job,
    ) -> RunOptions<'a> {
        let mode = if self.resume.is_some() {
            RunMode::Resume
        } else if self.overwrite {
            RunMode::Overwrite
        } else {
            RunMode::New
        };
        RunOptions {
            mode,
            progress: !self.quiet && job.reports(),
            interrupt,
            devices,
            collective: job.collective(),
        }
    }

    /// The configuration and run directory: the resumed run's saved configuration, or
    /// `base` overlaid with `--config`; then `edit` (subcommand flags) and `--set`.
    pub fn resolve<C: RunConfig>(
        &self,
        base: C,
        default_out: &str,
        edit: impl FnOnce(&mut C),
    ) -> Result<(C, PathBuf)> {
        let (mut config, run_dir) = match &self.resume {
            Some(run_dir) => {
                let path = run_dir.join("config.toml");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{}: not a run directory", run_dir.display()))?;
                let config: C = toml::from_str(&text)
                    .map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
                if self.out.as_ref().is_some_and(|o| o != run_dir) {
                    bail!("--resume continues a run in place; leave out --out");
                }
                if self.config.is_some() {
                    bail!(
                        "--resume reads the run's own config.toml; leave out --config (use --set)"
                    );
                }
                let mut config = config;
                // An earlier --max-steps ends the earlier invocation, not this one.
                config.train_mut().max_steps = None;
                (config, run_dir.clone())
            }
            None => {
                let config = match &self.config {
                    Some(path) => C::from_toml_file(path, &base)?,
                    None => base,
                };
                let out = self
                    .out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(default_out));
                (config, out)
            }
        };
        edit(&mut config);
        let mut config = config.with_overrides(&self.set)?;
        config.check()?;
        if let Some(max_steps) = self.max_steps {
            config.train_mut().max_steps = Some(max_steps);
        }
        Ok((config, run_dir))
    }
}

/// The signal that interrupted the run (0: none), for the exit code.
static RECEIVED_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// A flag raised by Ctrl-C (SIGINT) or SIGTERM: the run finishes its step, writes a
/// checkpoint and stops, and the process exits with 128 + the signal (130, 143). A
/// second signal while that happens ends the process at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for signal in signals.forever() {
                    if flag.swap(true, Ordering::SeqCst) {
                        std::process::exit(128 + signal);
                    }
                    RECEIVED_SIGNAL.store(signal, Ordering::SeqCst);
                    eprintln!(
                        "\ninterrupted: finishing the step and writing a checkpoint (interrupt again to abort)"
                    );
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGINT/SIGTERM; an interrupt ends the run without a checkpoint")
        }
    }
    interrupt
}

/// Whether `error` is a run stopped by a signal after its checkpoint.
pub fn is_interrupt(error: &anyhow::Error) -> bool {
    use ember_finetune::FinetuneError;
    use ember_train::TrainError;
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<TrainError>(),
            Some(TrainError::Interrupted { .. })
        ) || matches!(
            cause.downcast_ref::<FinetuneError>(),
            Some(FinetuneError::Train(TrainError::Interrupted { .. }))
        )
    })
}

/// The exit code of a run that stopped on a signal: 128 + the signal (130 for Ctrl-C).
pub fn interrupted_exit_code() -> u8 {
    match RECEIVED_SIGNAL.load(Ordering::SeqCst) {
        0 => 130,
        signal => (128 + signal).clamp(1, 255) as u8,
    }
}

/// `x.xxx` or `-`.
pub fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.3}"))
}

/// Puts `--base` or `--from-scratch` over the configuration's `base` (the two flags
/// exclude each other).
pub fn override_base(slot: &mut Option<PathBuf>, base: Option<&PathBuf>, from_scratch: bool) {
    if let Some(base) = base {
        *slot = Some(base.clone());
    }
    if from_scratch {
        *slot = None;
    }
}

/// The base model of a resolved configuration: a new run says where it starts (a base
/// model from the flag, `--config` or `--set base=...`, or `--from-scratch`), and a Hub
/// repository id becomes its snapshot in the Hugging Face cache before the run starts,
/// so the run's config.toml names the files it started from.
pub fn checked_base(
    base: Option<PathBuf>,
    run: &RunArgs,
    from_scratch: bool,
) -> Result<Option<PathBuf>> {
    if run.resume.is_none() && base.is_none() && !from_scratch {
        bail!(
            "pass --base MODEL (a GPT-2 directory, a checkpoint or a pretraining run) or --from-scratch"
        );
    }
    base.as_deref()
        .map(crate::args::model::resolve_model)
        .transpose()
}
