//! A template: compiled with confera's functions and filters, then rendered
//! against a small store with a secret key, and the output redacted.
#![no_main]

use std::sync::OnceLock;

use confera::fuzzing::Scratch;
use libfuzzer_sys::fuzz_target;

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    SCRATCH
        .get_or_init(|| Scratch::new().expect("create the scratch directory"))
        .template(data);
});
