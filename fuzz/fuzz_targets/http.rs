//! libFuzzer target: kvmbox::fuzzing::http (what it reads is said there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmbox::fuzzing::http(data));
