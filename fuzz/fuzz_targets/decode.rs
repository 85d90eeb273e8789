//! Ring-buffer records from the probes, as arbitrary bytes: see `ksense_fuzz::decode`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| ksense_fuzz::decode(bytes));
