//! What people read: the review of a plan (summary and tables) that `plan`, `show` and `apply` print, and the
//! machine-readable shape of `show --json`.

pub mod apply;
pub mod audit;
pub mod check;
pub mod doctor;
pub mod html;
pub mod page;
pub mod plan;
pub mod review;

pub use review::{render_review, summary_table, SignatureStatus};
