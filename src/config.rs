//! `writeback.toml`: sync mappings and defaults.
