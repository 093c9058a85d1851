//! What the types must forbid (C-22), checked by compiling code that does it and
//! expecting the compiler's refusal: each `tests/ui/c22_*.rs` is one misuse, and its
//! `.stderr` the error it must get. The error text is that of the toolchain the test
//! command uses (stable); on another compiler the wording, not the verdict, may differ.
//! Refresh a changed message with `TRYBUILD=overwrite cargo test -p notifier-core
//! --test compile_fail`, then read the new `.stderr` before committing it.
#![cfg(not(any(miri, loom)))]

#[test]
fn c22_misuses_do_not_compile() {
    trybuild::TestCases::new().compile_fail("tests/ui/c22_*.rs");
}
