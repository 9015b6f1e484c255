//! The `ember` command line: every chapter's pipeline behind one binary.
//!
//! `backend` turns a backend name into a Burn `Device`; `commands` holds one function
//! per subcommand. The binary's `main` parses arguments, sets up logging and turns
//! errors into a one-line message and a non-zero exit code.

pub mod backend;
pub mod bench;
pub mod commands;
pub mod download;
pub mod finetune;
pub mod judge;
pub mod model_arg;
pub mod runs;
pub mod serve;
pub mod text;
