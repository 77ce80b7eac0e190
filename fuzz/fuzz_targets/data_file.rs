//! A data file for the file source: the first byte picks YAML, JSON or TOML,
//! the rest is the file.
#![no_main]

use std::sync::OnceLock;

use confera::fuzzing::{Scratch, DATA_EXTENSIONS};
use libfuzzer_sys::fuzz_target;

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let ext = DATA_EXTENSIONS[usize::from(selector) % DATA_EXTENSIONS.len()];
    SCRATCH
        .get_or_init(|| Scratch::new().expect("create the scratch directory"))
        .data_file(ext, text);
});
