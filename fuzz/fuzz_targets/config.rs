//! Configuration files, as arbitrary UTF-8: see `ksense_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| ksense_fuzz::config(bytes));
