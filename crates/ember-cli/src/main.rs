//! `ember`: tokenize, prepare, inspect, generate, evaluate and pretrain GPT models.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ember_cli::model_arg::resolve_model;
use ember_cli::{backend, commands};
use ember_model::GptConfig;

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

#[derive(Subcommand)]
enum Command {
    /// Print the token ids of the UTF-8 text on standard input.
    Tokenize {
        /// `gpt2` or the path of a tokenizer.json.
        #[arg(long, default_value = "gpt2")]
        tokenizer: String,
        /// Encode `<|endoftext|>` as its special id (otherwise it is an error).
        #[arg(long)]
        allow_special: bool,
        /// Print `{"ids": [...]}`.
        #[arg(long)]
        json: bool,
    },
    /// Print the text of the token ids on standard input.
    Detokenize {
        /// `gpt2` or the path of a tokenizer.json.
        #[arg(long, default_value = "gpt2")]
        tokenizer: String,
    },
    /// Tokenize a text corpus (file or directory of .txt/.jsonl) into uint16 shards.
    Prepare {
        /// A .txt or .jsonl file, or a directory of them.
        #[arg(long)]
        input: PathBuf,
        /// Directory for train_*.bin and val_*.bin.
        #[arg(long)]
        output: PathBuf,
        /// Fraction of the documents kept for validation.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Tokens per shard.
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: usize,
        /// `gpt2` or the path of a tokenizer.json.
        #[arg(long, default_value = "gpt2")]
        tokenizer: String,
    },
    /// Show a model configuration: parameters and size.
    Info {
        /// Architecture preset.
        #[arg(long, default_value = "gpt2-small")]
        preset: String,
        /// A model to describe instead of a preset: a model directory, a run directory,
        /// or a Hub repository id OWNER/NAME[@REVISION] that is no path here (from the
        /// Hugging Face cache, downloaded into it if need be).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Continue a prompt.
    Generate(ember_cli::text::GenerateArgs),
    /// Mean next-token loss and perplexity of a text file.
    Perplexity(ember_cli::text::PerplexityArgs),
    /// Pretrain a GPT (chapter 5, appendix D).
    Pretrain(commands::PretrainArgs),
    /// Fine-tune a spam classifier on the SMS Spam Collection (chapter 6, appendix E).
    FinetuneSpam(ember_cli::finetune::SpamArgs),
    /// Fine-tune a GPT to follow instructions, then answer the test entries (chapter 7).
    FinetuneInstruct(ember_cli::finetune::InstructArgs),
    /// Tune a model on preference pairs with DPO against a frozen copy of itself (the
    /// chapter 7 bonus).
    FinetuneDpo(ember_cli::finetune::DpoArgs),
    /// Classify a text with a classifier made by `ember finetune-spam`.
    Classify {
        /// The classifier (its run directory or its model/ directory, or a Hub
        /// repository id OWNER/NAME[@REVISION] that is no path here).
        #[arg(long)]
        model: PathBuf,
        /// Print `{"label": ..., "probabilities": {...}}`.
        #[arg(long)]
        json: bool,
        /// The text.
        text: String,
    },
    /// Measure training and generation speed (same settings and JSON keys as
    /// bench/torch_gpt_bench.py).
    Bench(ember_cli::bench::BenchArgs),
    /// Download a model from the Hugging Face Hub (or a server laid out like it):
    /// resumable, checksum- and size-verified.
    Download(ember_cli::download::DownloadArgs),
    /// Score model responses 0-100 with an LLM judge (Ollama or OpenAI-compatible).
    Judge(ember_cli::judge::JudgeArgs),
    /// Talk to a model: the conversation is rendered with its chat template (the book's
    /// Alpaca prompt for GPT-2 models without one) and each answer streams back. An
    /// empty line or `exit` quits; `--message` answers one message and exits.
    Chat(ember_cli::text::ChatArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, with a chat page at `/`.
    Serve(ember_cli::serve::ServeArgs),
    /// List the backends compiled into this binary.
    Backends,
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(name) = &cli.backend {
        backend::check(name)?;
    }
    let device = || backend::device(cli.backend.as_deref());
    match cli.command {
        Command::Tokenize {
            tokenizer,
            allow_special,
            json,
        } => commands::tokenize(&tokenizer, allow_special, json),
        Command::Detokenize { tokenizer } => commands::detokenize(&tokenizer),
        Command::Prepare {
            input,
            output,
            val_fraction,
            shard_tokens,
            tokenizer,
        } => commands::prepare(&input, &output, val_fraction, shard_tokens, &tokenizer),
        Command::Info {
            preset,
            model,
            json,
        } => {
            // A model is described from its config.json, checked against its weights,
            // without being built.
            let config = match model {
                Some(model) => {
                    let path = resolve_model(&model)?;
                    ember_model::describe_model(&path)
                        .with_context(|| format!("cannot describe the model {}", model.display()))?
                        .0
                }
                None => ember_model::ModelConfig::Gpt2(GptConfig::preset(&preset)?),
            };
            commands::info(&config, json)
        }
        Command::Generate(args) => ember_cli::text::generate_text(&args, &device()?),
        Command::Perplexity(args) => ember_cli::text::perplexity(&args, &device()?),
        Command::Pretrain(args) => commands::pretrain(args, &device()?),
        Command::FinetuneSpam(args) => ember_cli::finetune::spam(args, &device()?),
        Command::FinetuneInstruct(args) => ember_cli::finetune::instruct(args, &device()?),
        Command::FinetuneDpo(args) => ember_cli::finetune::dpo(args, &device()?),
        Command::Classify { model, json, text } => {
            let path = resolve_model(&model)?;
            ember_cli::finetune::classify(&path, &text, json, &device()?)
        }
        Command::Bench(args) => {
            let name = cli
                .backend
                .clone()
                .or_else(|| std::env::var("EMBER_BACKEND").ok())
                .unwrap_or_else(|| {
                    backend::available()
                        .first()
                        .map_or("none", |v| v)
                        .to_string()
                });
            let record = ember_cli::bench::run(&args, &name, &device()?)?;
            println!("{record}");
            Ok(())
        }
        Command::Download(args) => ember_cli::download::run(args),
        Command::Judge(args) => ember_cli::judge::run(args),
        Command::Chat(args) => ember_cli::text::chat(&args, &device()?),
        Command::Serve(args) => ember_cli::serve::run(&args, &device()?),
        Command::Backends => {
            println!("{}", backend::available().join("\n"));
            Ok(())
        }
    }
}

/// 128 + the signal (130 for Ctrl-C, 143 for SIGTERM) for a run stopped by one after
/// its checkpoint, so `ember pretrain ... && next-step` does not go on; 2 for every
/// other error.
fn exit_code(error: &anyhow::Error) -> u8 {
    use ember_finetune::FinetuneError;
    use ember_train::TrainError;
    let interrupted = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<TrainError>(),
            Some(TrainError::Interrupted { .. })
        ) || matches!(
            cause.downcast_ref::<FinetuneError>(),
            Some(FinetuneError::Train(TrainError::Interrupted { .. }))
        )
    });
    if interrupted {
        ember_cli::runs::interrupted_exit_code()
    } else {
        2
    }
}

/// Prints the process's peak resident memory (`VmHWM`) to stderr: how the tests and
/// benchmarks see what a command needed at most.
fn report_peak_rss() {
    match ember_cli::bench::peak_rss_mib() {
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
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
