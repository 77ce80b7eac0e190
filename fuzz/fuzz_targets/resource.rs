//! A conf.d resource file: TOML syntax, shapes, every field's parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| confera::fuzzing::resource(data));
