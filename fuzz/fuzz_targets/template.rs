//! cargo-fuzz target: arbitrary bytes as template input through goldsmith's real loader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goldsmith::fuzzing::template(data));
