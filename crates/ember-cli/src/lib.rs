//! The `ember` command line: every chapter's pipeline behind one binary, a thin shell
//! over the library crates.
//!
//! [`commands`] holds one file per subcommand (its flags and what it runs) and the
//! [`commands::Command`] list; [`args`] the flags several share (`--model`, the run
//! options, sampling, `--tokenizer`); [`backend`] turns a backend name into a Burn
//! `Device`. The binary's `main` parses arguments, sets up logging and the thread pool,
//! and turns errors into a one-line message and a non-zero exit code.

pub mod args;
pub mod backend;
pub mod commands;
pub mod job;
