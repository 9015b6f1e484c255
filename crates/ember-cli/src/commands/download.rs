//! `ember download`: a model from the Hugging Face Hub (or any server laid out like it),
//! resumable and verified, through [`ember_hub`]: into a directory of one's choosing, or
//! into the Hugging Face cache, where `--model OWNER/NAME` finds it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use ember_hub::{DownloadOptions, cache_dir, download_into, download_model, endpoint_or_default};

/// Options of `ember download`.
#[derive(Debug, Clone, clap::Args)]
pub struct DownloadArgs {
    /// gpt2-small, gpt2-medium, gpt2-large or gpt2-xl.
    #[arg(long, default_value = "gpt2-small")]
    pub size: String,
    /// Destination directory (default models/SIZE; for --repo, the Hugging Face cache,
    /// shared with the Python tools, where `--model OWNER/NAME` finds it).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hub address (default $HF_ENDPOINT or https://huggingface.co).
    #[arg(long)]
    pub endpoint: Option<String>,
    /// A Hub repository, OWNER/NAME (GPT-2, Llama 3.x, Qwen3, Gemma 3), instead of a
    /// GPT-2 size.
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or commit.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Attempts per file for transient failures.
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Seconds a transfer may go without receiving a byte before it is retried.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

impl DownloadArgs {
    /// The library's options for these flags (`HF_TOKEN` from the environment), and
    /// whether the model goes into the Hugging Face cache rather than `out_dir`.
    pub fn options(&self) -> Result<(DownloadOptions, bool)> {
        let repo = match &self.repo {
            Some(repo) => repo.clone(),
            None => repo_for(&self.size)?.to_string(),
        };
        let endpoint = endpoint_or_default(self.endpoint.as_deref());
        let out_dir = self
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("models").join(&self.size));
        let mut options =
            DownloadOptions::new(&endpoint, &repo, &self.revision, out_dir).with_env_token();
        options.attempts = self.attempts.max(1);
        options.read_timeout = Duration::from_secs(self.timeout.max(1));
        Ok((options, self.repo.is_some() && self.out.is_none()))
    }
}

/// `ember download`: prints the model's directory.
pub fn run(args: DownloadArgs) -> Result<()> {
    let (mut options, into_cache) = args.options()?;
    let dir = if into_cache {
        download_into(&cache_dir(), &mut options)?
    } else {
        download_model(&options)?;
        options.out_dir.clone()
    };
    println!("{}", dir.display());
    Ok(())
}

/// The repositories of the four GPT-2 sizes.
pub fn repo_for(size: &str) -> Result<&'static str> {
    Ok(match size {
        "gpt2" | "gpt2-small" | "124M" => "openai-community/gpt2",
        "gpt2-medium" | "355M" => "openai-community/gpt2-medium",
        "gpt2-large" | "774M" => "openai-community/gpt2-large",
        "gpt2-xl" | "1558M" => "openai-community/gpt2-xl",
        other => {
            bail!("unknown GPT-2 size \"{other}\" (gpt2-small, gpt2-medium, gpt2-large, gpt2-xl)")
        }
    })
}
