//! writeback: signed, reviewable changesets that bring PoliteMail lists into Microsoft Entra ID groups.
//!
//! The library holds all of the product's logic; `src/main.rs` only runs [`cli::run`]. Data flows one way:
//!
//! ```text
//! plan:  source (PoliteMail CSV | API) + directory (Entra CSV | Graph) → reconcile → plan → encode → sign
//! apply: plan bytes → verify → decode → gates → executor (Graph writes) → journal → receipt
//! audit: files → verify → cross-check plans, receipts and journals
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// Output goes through `terminal::write_stdout`/`write_stderr` (the `out!`/`outln!`/`eout!`/`eoutln!` macros),
// which stop quietly on a closed pipe where `println!` panics.
#![cfg_attr(not(test), warn(clippy::print_stdout, clippy::print_stderr))]

pub mod apply;
pub mod approvals;
pub mod archive;
pub mod atomic_write;
pub mod audit;
pub mod cli;
pub mod config;
pub mod directory;
pub mod doctor;
pub mod error;
pub mod export;
#[cfg(test)]
mod fixtures;
pub mod folders;
pub mod http;
pub mod identity;
pub mod interrupt;
pub mod ledger;
pub mod pacing;
pub mod phases;
pub mod plan;
pub mod planning;
pub mod progress;
pub mod reconcile;
pub mod report;
pub mod retry;
pub mod signin;
pub mod source;
pub mod tabular;
pub mod terminal;
pub mod trust;

pub use error::{Error, Result};

/// The tool name and version written into plans and receipts, e.g. `writeback 0.1.0`.
pub fn tool_version() -> String {
    format!("writeback {}", env!("CARGO_PKG_VERSION"))
}
