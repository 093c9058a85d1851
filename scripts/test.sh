#!/usr/bin/env bash
# The project's test command (README: "Testing"). Installs what it needs, then runs
# every check in order and stops at the first failure. CI runs exactly this
# (.ci/run). Set NOTIFIER_SKIP to a space-separated list of stage names to skip
# stages locally (CI never sets it): fmt clippy test loom miri none
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { [[ " ${NOTIFIER_SKIP:-} " == *" $1 "* ]]; }
stage() { echo; echo "=== $1"; }

stage "prerequisites"
rustup component add clippy rustfmt >/dev/null
rustup target add x86_64-unknown-none >/dev/null
rustup component add miri rust-src --toolchain nightly >/dev/null

if ! skip fmt; then
  stage "fmt"
  cargo fmt --all --check
fi

if ! skip clippy; then
  stage "clippy"
  cargo clippy -p notifier-core --all-targets -- -D warnings
  cargo clippy -p notifier-core --no-default-features -- -D warnings
fi

if ! skip none; then
  stage "no_std build for x86_64-unknown-none (core only, no alloc)"
  cargo build -p notifier-core --target x86_64-unknown-none
fi

if ! skip test; then
  stage "unit tests and doctests"
  cargo test -p notifier-core
fi

if ! skip loom; then
  stage "loom models"
  RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p notifier-core --test loom --release -- --test-threads=1
fi

if ! skip miri; then
  stage "miri"
  CARGO_TARGET_DIR=target/miri cargo +nightly miri setup >/dev/null
  # Isolation off: the differential test reads its corpus from fuzz/corpus.
  MIRIFLAGS="-Zmiri-disable-isolation" CARGO_TARGET_DIR=target/miri \
    cargo +nightly miri test -p notifier-core
fi

echo
echo "all checks passed"
