//! `cargo +nightly fuzz run differential`: random call sequences on the core and on the
//! reference model; any difference panics (see `../driver.rs`).
#![no_main]

#[path = "../driver.rs"]
mod driver;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    driver::run(data);
});
