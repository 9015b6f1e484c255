//! The flags several subcommands share, and what they resolve to.

pub mod model;
pub mod run;
pub mod sampling;
pub mod tokenizer;
