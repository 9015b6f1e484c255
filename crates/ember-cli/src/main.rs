//! `ember`: tokenize, prepare, inspect, generate, evaluate and pretrain GPT models.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ember_cli::commands::Command;

// Training allocates and frees tensors of tens of megabytes every step; glibc's malloc
// hands each back to the kernel and faults it in again (a fifth of a step's time,
// measured with perf). mimalloc keeps them, once told not to purge: see
// `keep_freed_memory`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tells mimalloc to keep freed memory mapped instead of returning it to the kernel after
/// 10 ms (its default), so the next step's tensors reuse pages that are already faulted
/// in: gpt2-small training steps went from 16.8 to 13.1 s on the 2-core CPU, where the
/// kernel had spent a fifth of the time zeroing fresh pages. The cost is that the
/// process keeps its peak memory until it exits. `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_ARENA_EAGER_COMMIT` in the environment still win.
fn keep_freed_memory() {
    // Indices in mimalloc's `mi_option_t` (the same in its v2 and v3 headers).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    for (option, variable, value) in [
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1),
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT", 1),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: called once at the start of main, before any other thread exists.
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

#[derive(Parser)]
#[command(
    name = "ember",
    version,
    about = "GPT models from scratch, in Rust on Burn"
)]
struct Cli {
    /// Compute backend (default: the first compiled in; see `ember backends`).
    #[arg(long, global = true)]
    backend: Option<String>,
    #[command(subcommand)]
    command: Command,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    cli.command.run(cli.backend.as_deref())
}

/// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM) for a run stopped by one after
/// its checkpoint, so `ember pretrain ... && next-step` does not go on; 2 for every
/// other error.
fn exit_code(error: &anyhow::Error) -> u8 {
    if ember_cli::args::run::is_interrupt(error) {
        ember_cli::args::run::interrupted_exit_code()
    } else {
        2
    }
}

/// Prints the process's peak resident memory (`VmHWM`) to stderr: how the tests and
/// benchmarks see what a command needed at most.
fn report_peak_rss() {
    match ember_cli::commands::bench::peak_rss_mib() {
        Some(mib) => eprintln!("peak RSS: {} MiB", mib as u64),
        None => eprintln!("peak RSS: unknown"),
    }
}

/// Runs `command` on one of rayon's worker threads rather than on the main thread.
///
/// The kernels split their work with rayon. Called from the main thread, each split
/// wakes the pool's workers (one per core) and puts the main thread to sleep; between
/// splits the workers spin while the main thread runs Burn's single-threaded
/// operations, so three threads share two cores. Called from a worker, the caller takes
/// a share of the work itself and the others steal the rest: as many threads as cores,
/// no hand-off. KV-cached generation of a 0.6B model went from 12 to 14-15 new tokens/s
/// on 2 cores. Workers get the main thread's stack size, for deep autodiff graphs.
fn on_the_thread_pool<R: Send>(command: impl FnOnce() -> R + Send) -> R {
    let built = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    if let Err(e) = built {
        tracing::debug!("rayon's pool was already built: {e}");
    }
    rayon::scope(|_| command())
}

fn main() -> ExitCode {
    keep_freed_memory();
    // EMBER_LOG, else RUST_LOG, else info; colours only on a terminal.
    let filter = tracing_subscriber::EnvFilter::try_from_env("EMBER_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(
            |_| tracing_subscriber::EnvFilter::new(ember_cli::job::default_log_level()),
        );
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The server's generation thread enters the pool itself; its async runtime must not
    // hold one of the pool's workers.
    let result = if matches!(cli.command, Command::Serve(_)) {
        run(cli)
    } else {
        on_the_thread_pool(move || run(cli))
    };
    if std::env::var_os("EMBER_REPORT_PEAK_RSS").is_some() {
        report_peak_rss();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(exit_code(&e))
        }
    }
}
