//! libFuzzer target: kvmbox::fuzzing::qga (what it reads is said there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmbox::fuzzing::qga(data));
