//! Test support shared by the end-to-end tests: stateful local fakes of Microsoft Graph and PoliteMail.
//!
//! Use from a test file with `mod support;` and `use support::fake_graph::{FakeGraph, Seed};`.
#![allow(dead_code)]

pub mod fake_az;
pub mod fake_graph;
pub mod fake_politemail;
pub mod http_serve;
