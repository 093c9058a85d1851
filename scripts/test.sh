#!/usr/bin/env bash
# The project's test command (README: "Testing"). Installs what it needs, then runs
# every check in order and stops at the first failure. CI runs exactly this
# (.ci/run). Set NOTIFIER_SKIP to a space-separated list of stage names to skip
# stages locally (CI never sets it):
#   fmt clippy hermit-clippy none msrv package doc test loom miri fuzz tsan cli kmod hermit table
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { [[ " ${NOTIFIER_SKIP:-} " == *" $1 "* ]]; }
stage() { echo; echo "=== $1"; }
export DEBIAN_FRONTEND=noninteractive

stage "prerequisites"
rustup component add clippy rustfmt rust-src >/dev/null
rustup target add x86_64-unknown-none >/dev/null
rustup component add miri rust-src --toolchain nightly >/dev/null
# The Hermit workspace's loader is checked for x86_64-unknown-none with nightly.
rustup target add x86_64-unknown-none --toolchain nightly >/dev/null
# The declared MSRV (rust-version in Cargo.toml), for the msrv stage.
MSRV=1.85
skip msrv || rustup toolchain install "$MSRV" --profile minimal --target x86_64-unknown-none >/dev/null
# liburcu (the benchmarks' C baseline) and a C compiler.
bash benches/install-deps.sh

if ! skip fmt; then
  stage "fmt"
  cargo fmt --all --check
  rustfmt --edition 2021 --check fuzz/driver.rs fuzz/fuzz_targets/differential.rs
  # The Hermit workspace and the Linux module's Rust files (built by Kbuild, not cargo).
  cargo fmt --manifest-path backend-hermit/Cargo.toml --all --check
  rustfmt --edition 2021 --check backend-linux-kmod/*.rs
fi

if ! skip clippy; then
  stage "clippy"
  cargo clippy --workspace --all-targets -- -D warnings
  cargo clippy -p notifier-core --no-default-features -- -D warnings
fi

if ! skip hermit-clippy; then
  stage "clippy for the Hermit workspace (nightly; the image for x86_64-unknown-hermit, the loader for x86_64-unknown-none)"
  # In backend-hermit/ with --locked, as `cargo xtask hermit` builds it.
  (cd backend-hermit && export CARGO_TARGET_DIR=../target/hermit-clippy &&
    cargo +nightly clippy --locked -p backend-hermit -p notifier-hermit-image \
      --features notifier-hermit-image/suite --target x86_64-unknown-hermit \
      -Zbuild-std=core,compiler_builtins -Zbuild-std-features=compiler-builtins-mem \
      -- -D warnings &&
    cargo +nightly clippy --locked -p notifier-hermit-loader --target x86_64-unknown-none \
      -- -D warnings)
fi

if ! skip none; then
  stage "no_std build for x86_64-unknown-none (core and suite: no std, no alloc)"
  cargo build -p notifier-core -p notifier-conformance --target x86_64-unknown-none
fi

if ! skip msrv; then
  stage "the declared MSRV ($MSRV): the crates that declare it, all targets, and the no_std build"
  CARGO_TARGET_DIR=target/msrv cargo "+$MSRV" check -p notifier-core -p notifier-conformance \
    -p backend-sim --all-targets
  CARGO_TARGET_DIR=target/msrv cargo "+$MSRV" build -p notifier-core -p notifier-conformance \
    --target x86_64-unknown-none
fi

if ! skip package; then
  stage "cargo package of the publishable crates, and the packaged core's tests outside the repository"
  cargo package -p notifier-core -p notifier-conformance --allow-dirty
  pkg=$(mktemp -d)
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' notifier-core/Cargo.toml | head -1)
  tar -xzf "target/package/notifier-core-$version.crate" -C "$pkg"
  # Outside the workspace: no `fuzz/`, no path dev-dependency (the hosted platform is
  # the `std` feature).
  (cd "$pkg/notifier-core-$version" && CARGO_TARGET_DIR="$PWD/../target" cargo test --features std)
  rm -rf "$pkg"
fi

if ! skip doc; then
  stage "cargo doc with warnings denied (as docs.rs builds it: the std feature)"
  RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p notifier-core -p notifier-conformance \
    --features notifier-core/std
fi

if ! skip test; then
  stage "tests: core cases, export registry, differential corpus, conformance suite on the simulator (both modes) and its teeth, zero allocations, doctests"
  cargo test --workspace
  cargo bench -p notifier-benches --no-run
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

if ! skip fuzz; then
  stage "differential fuzzing (short run; the committed corpus is replayed by cargo test)"
  command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
  corpus=$(mktemp -d)
  cp fuzz/corpus/differential/* "$corpus"/
  (cd fuzz && cargo +nightly fuzz run differential "$corpus" -- -max_total_time=30 -max_len=512)
  rm -rf "$corpus"
fi

if ! skip tsan; then
  stage "ThreadSanitizer: the core's threaded tests and the suite on the simulator with real threads"
  tsan=(env RUSTFLAGS="-Zsanitizer=thread" CARGO_TARGET_DIR=target/tsan
        cargo +nightly test -Zbuild-std --target x86_64-unknown-linux-gnu)
  "${tsan[@]}" -p notifier-core --test cases --test export
  "${tsan[@]}" -p backend-sim --test suite threads
fi

if ! skip cli; then
  stage "notifier-sim: default scenario, every scenario, a broken consumer, bad input"
  cargo build --release -p backend-sim
  sim=target/release/notifier-sim
  out=$(mktemp -d)
  "$sim" --seed 1 --out "$out/default"
  test -s "$out/default/report.json" && test -s "$out/default/timeline.svg"
  for s in kvm-reclaim exporter-race interval-mirror churn export-designs; do
    "$sim" --scenario "$s" --seed 2 --ops 500 --out "$out/$s" >/dev/null
  done
  set +e
  "$sim" --seed 3 --ops 1500 --broken kvm-ignores-seq --out "$out/broken" >"$out/broken.txt"
  rc=$?
  set -e
  if [ "$rc" -ne 1 ] || ! grep -q "STALE TRANSLATION" "$out/broken.txt"; then
    echo "notifier-sim did not catch the broken consumer (exit $rc)"; exit 1
  fi
  for bad in "--scenario nope" "--ops 0" "--threads 0" "--seed x" "--broken nope"; do
    set +e
    # shellcheck disable=SC2086
    "$sim" $bad --out "$out/bad" >/dev/null 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 2 ]; then echo "notifier-sim $bad: exit $rc, expected 2"; exit 1; fi
  done
  rm -rf "$out"
fi

if ! skip kmod; then
  stage "Linux 6.12 module under QEMU (kernel cached in /var/cache/notifier-kmod)"
  cargo xtask kmod
fi

if ! skip hermit; then
  stage "Hermit unikernel under QEMU (kernel cached in /var/cache/notifier-hermit)"
  cargo xtask hermit
fi

if ! skip table; then
  stage "the suite case by case: simulator, Linux (core and reference mode), Hermit"
  # The kernel stages saved their suite lines; what they ran must be there.
  need=host
  skip kmod || need="$need,kmod,kmod-reference"
  skip hermit || need="$need,hermit"
  cargo xtask suite-table --require "$need"
fi

echo
echo "all checks passed"
