//! The Entra "Download members" export reader (bytes in). Never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = writeback::directory::entra_csv::parse_members(data, Path::new("fuzz.csv"));
});
