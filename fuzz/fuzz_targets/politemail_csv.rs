//! The PoliteMail list export reader (bytes in). Never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = writeback::source::politemail_csv::parse(data, Path::new("fuzz.csv"), None);
    let _ = writeback::source::politemail_csv::parse(data, Path::new("fuzz.csv"), Some("E-mail"));
});
