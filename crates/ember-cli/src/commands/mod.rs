//! One file per `ember` subcommand: its flags (a clap `Args` struct) and the function
//! that runs it; [`Command`] lists them and dispatches.

pub mod bench;
pub mod chat;
pub mod classify;
pub mod detokenize;
pub mod download;
pub mod export;
pub mod finetune_dpo;
pub mod finetune_instruct;
pub mod finetune_spam;
pub mod generate;
pub mod info;
pub mod judge;
pub mod perplexity;
pub mod prepare;
pub mod pretrain;
pub mod serve;
pub mod tokenize;

use anyhow::Result;

use crate::backend;

/// The subcommands of `ember`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the token ids of the UTF-8 text on standard input.
    Tokenize(tokenize::TokenizeArgs),
    /// Print the text of the token ids on standard input.
    Detokenize(detokenize::DetokenizeArgs),
    /// Tokenize a text corpus (file or directory of .txt/.jsonl) into uint16 shards.
    Prepare(prepare::PrepareArgs),
    /// Show a model configuration: parameters and size.
    Info(info::InfoArgs),
    /// Continue a prompt.
    Generate(generate::GenerateArgs),
    /// Mean next-token loss and perplexity of a text file.
    Perplexity(perplexity::PerplexityArgs),
    /// Pretrain a GPT (chapter 5, appendix D).
    Pretrain(pretrain::PretrainArgs),
    /// Fine-tune a spam classifier on the SMS Spam Collection (chapter 6, appendix E).
    FinetuneSpam(finetune_spam::SpamArgs),
    /// Fine-tune a GPT to follow instructions, then answer the test entries (chapter 7).
    FinetuneInstruct(finetune_instruct::InstructArgs),
    /// Tune a model on preference pairs with DPO against a frozen copy of itself (the
    /// chapter 7 bonus).
    FinetuneDpo(finetune_dpo::DpoArgs),
    /// Classify a text with a classifier made by `ember finetune-spam`.
    Classify(classify::ClassifyArgs),
    /// Measure training and generation speed (same settings and JSON keys as
    /// bench/torch_gpt_bench.py).
    Bench(bench::BenchArgs),
    /// Download a model from the Hugging Face Hub (or a server laid out like it):
    /// resumable, checksum- and size-verified.
    Download(download::DownloadArgs),
    /// Write a model as one GGUF file (f32, f16, bf16, q8_0, q4_0, q4_k) for llama.cpp,
    /// Ollama and LM Studio.
    Export(export::ExportArgs),
    /// Score model responses 0-100 with an LLM judge (Ollama or OpenAI-compatible).
    Judge(judge::JudgeArgs),
    /// Talk to a model: the conversation is rendered with its chat template (the book's
    /// Alpaca prompt for GPT-2 models without one) and each answer streams back. An
    /// empty line or `exit` quits; `--message` answers one message and exits.
    Chat(chat::ChatArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, with a chat page at `/`.
    Serve(serve::ServeArgs),
    /// List the backends compiled into this binary.
    Backends,
}

impl Command {
    /// Runs the command on the backend named `backend` (the first compiled in when
    /// `None`); the device is made only by commands that compute.
    pub fn run(self, backend: Option<&str>) -> Result<()> {
        if let Some(name) = backend {
            backend::check(name)?;
        }
        let device = || backend::device(backend);
        match self {
            Self::Tokenize(args) => tokenize::run(&args),
            Self::Detokenize(args) => detokenize::run(&args),
            Self::Prepare(args) => prepare::run(&args),
            Self::Info(args) => info::run(&args),
            Self::Export(args) => export::run(&args),
            Self::Generate(args) => generate::run(&args, &device()?),
            Self::Perplexity(args) => perplexity::run(&args, &device()?),
            Self::Pretrain(args) => pretrain::run(args, &device()?),
            Self::FinetuneSpam(args) => finetune_spam::run(args, &device()?),
            Self::FinetuneInstruct(args) => finetune_instruct::run(args, &device()?),
            Self::FinetuneDpo(args) => finetune_dpo::run(args, &device()?),
            Self::Classify(args) => classify::run(&args, &device()?),
            Self::Bench(args) => {
                let name = backend
                    .map(str::to_string)
                    .or_else(|| std::env::var("EMBER_BACKEND").ok())
                    .unwrap_or_else(|| {
                        backend::available()
                            .first()
                            .map_or("none", |v| v)
                            .to_string()
                    });
                let record = bench::run(&args, &name, &device()?)?;
                println!("{record}");
                Ok(())
            }
            Self::Download(args) => download::run(args),
            Self::Judge(args) => judge::run(args),
            Self::Chat(args) => chat::run(&args, &device()?),
            Self::Serve(args) => serve::run(&args, &device()?),
            Self::Backends => {
                println!("{}", backend::available().join("\n"));
                Ok(())
            }
        }
    }
}
