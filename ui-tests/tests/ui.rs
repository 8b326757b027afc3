//! `#[checkpoint_handler]` as its users meet it: what compiles (`tests/ui/pass`, each also run)
//! and the error each mistake gets (`tests/ui/fail/*.rs` with their `.stderr` snapshots, one
//! mistake per file).
//!
//! The snapshots are the pinned toolchain's diagnostics (`rust-toolchain.toml`). After changing
//! the macro or the toolchain, regenerate them with
//! `TRYBUILD=overwrite cargo test -p checkpoint-ui-tests`, then read every changed `.stderr`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
