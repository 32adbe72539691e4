//! cargo-fuzz target: arbitrary bytes as config input through goldsmith's real loader.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| goldsmith::fuzzing::config(data));
