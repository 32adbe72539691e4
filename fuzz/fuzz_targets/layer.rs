//! cargo-fuzz target: arbitrary bytes as layer input through goldsmith's real loader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goldsmith::fuzzing::layer(data));
