//! What the end-to-end tests share, in one folder: running the real binary in a workspace of its own
//! ([`common`], re-exported here), and stateful local fakes of Microsoft Graph, its sign-in endpoint, the Azure
//! CLI and PoliteMail.
//!
//! Use from a test file with `mod support;`, then `use support::{workspace, writeback};` or
//! `use support::fake_graph::{FakeGraph, Seed};`.
#![allow(dead_code, unused_imports)]

pub mod common;
pub mod fake_az;
pub mod fake_graph;
pub mod fake_politemail;
pub mod http_serve;

pub use common::*;
