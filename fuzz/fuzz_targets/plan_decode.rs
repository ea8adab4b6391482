//! The plan reader: any bytes either decode to a plan that re-encodes and decodes to the same value, or fail with
//! an error. Never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use writeback::plan::{self, PlanFormat};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = plan::decode(data) {
        // A plan that decodes is valid, and both encodings carry it losslessly.
        for format in [PlanFormat::Json, PlanFormat::Csv] {
            let again = plan::decode(&plan::encode(&p, format)).expect("a decoded plan re-encodes to a readable plan");
            assert_eq!(again, p, "{format:?} round trip changed the plan");
        }
    }
});
