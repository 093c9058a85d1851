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
  rustfmt --edition 2021 --check backend-linux-kmod/*.rs backend-linux-kmod/binding/*.rs backend-linux-kmod/forwarder/*.rs backend-linux-kmod/examples/*/*.rs
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
  stage "the declared MSRV ($MSRV): the published crates' libraries (hosted, with std) and the no_std build"
  # Libraries only: test-only dependencies (trybuild, clap in the simulator's CLI) may
  # need a newer toolchain than the crates a kernel builds.
  CARGO_TARGET_DIR=target/msrv cargo "+$MSRV" check -p notifier-core -p notifier-conformance \
    --lib --features notifier-core/std
  CARGO_TARGET_DIR=target/msrv cargo "+$MSRV" build -p notifier-core -p notifier-conformance \
    --target x86_64-unknown-none
fi

if ! skip package; then
  stage "cargo package of the publishable crates, and the packaged core's tests outside the repository"
  # Verifying the suite's package builds it against the core's package through a local
  # overlay registry, which cargo unpacks under $CARGO_HOME/registry/src and reuses if an
  # earlier run on this machine left a copy of the same version there: remove those
  # stale copies of our own crates first (nothing else is ever named so).
  rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/notifier-core-[0-9]* \
    "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/notifier-conformance-[0-9]*
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
  stage "tests: core cases, export registry, differential corpus, conformance suite on the simulator (both modes) and its teeth, zero allocations, doctests, the example consumer through the public runner"
  # Includes examples/consumer-check: a third-party consumer through
  # notifier_conformance::run_consumer on the simulator, and its broken variants caught.
  cargo test --workspace
  cargo bench -p notifier-benches --no-run
fi

if ! skip loom; then
  stage "loom models"
  # Debug assertions on: the core's internal invariants (debug_assert!) are checked in
  # every explored schedule.
  RUSTFLAGS="--cfg loom -C debug-assertions" CARGO_TARGET_DIR=target/loom \
    cargo test -p notifier-core --test loom --release -- --test-threads=1
fi

if ! skip miri; then
  stage "miri"
  CARGO_TARGET_DIR=target/miri cargo +nightly miri setup >/dev/null
  # Isolation off: the differential test reads its corpus from fuzz/corpus. Leak
  # checking stays on, except for hardening.rs, whose C-16 tests leak on purpose (an
  # invalidation leaked with mem::forget stays in flight for ever, so its address space
  # and subscribers are leaked with it).
  tests=()
  for f in notifier-core/tests/*.rs; do
    n=$(basename "$f" .rs)
    [ "$n" = hardening ] || tests+=(--test "$n")
  done
  MIRIFLAGS="-Zmiri-disable-isolation" CARGO_TARGET_DIR=target/miri \
    cargo +nightly miri test -p notifier-core --lib "${tests[@]}"
  MIRIFLAGS="-Zmiri-disable-isolation" CARGO_TARGET_DIR=target/miri \
    cargo +nightly miri test -p notifier-core --doc
  MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-ignore-leaks" CARGO_TARGET_DIR=target/miri \
    cargo +nightly miri test -p notifier-core --test hardening
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
  stage "notifier-sim: default run (timed), every scenario, every broken consumer explained and drawn (PNG checked), bad input"
  cargo build --release -p backend-sim
  # rsvg-convert renders the timelines to PNG, as a reader would see them.
  if ! command -v rsvg-convert >/dev/null; then
    SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends librsvg2-bin
  fi
  sim=target/release/notifier-sim
  check=backend-sim/scripts/check-timeline.py
  out=$(mktemp -d)
  draw() { rsvg-convert "$1/timeline.svg" -o "$1/timeline.png" && python3 "$check" "$1/timeline.svg" "$1/timeline.png" "$2"; }
  t0=$(date +%s%N)
  "$sim" --seed 1 --out "$out/default"
  echo "default run: $(( ($(date +%s%N) - t0) / 1000000 )) ms (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  draw "$out/default" none
  python3 - "$out/default/report.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["schema_version"] == 1, j["schema_version"]
# The default run exercises every primary operation and every consumer.
assert all(n > 0 for n in j["primary_operations"].values()), j["primary_operations"]
c = j["callbacks"]
for k in ("kvm: faults installed", "device-tlb: invalidate_secondary_tlbs", "exporter: revoke messages",
          "mirror: faults installed", "two-pass devices: sequence retries"):
    assert c[k] > 0, (k, c)
PY
  for s in kvm-reclaim exporter-race interval-mirror churn export-designs; do
    "$sim" --scenario "$s" --seed 2 --ops 300 --out "$out/$s" >/dev/null
  done
  rsvg-convert "$out/export-designs/timeline.svg" -o "$out/export-designs/timeline.png"
  # Each broken consumer: caught (exit 1), explained from both sides, drawn in its lane.
  # Which seeds lose the race depends on the code: the first of eight that does counts.
  while read -r twin lane; do
    rc=0
    for seed in 1 2 3 4 5 6 7 8; do
      set +e
      "$sim" --seed "$seed" --broken "$twin" --out "$out/$twin" >"$out/$twin.txt" 2>/dev/null
      rc=$?
      set -e
      [ "$rc" -eq 0 ] || break
    done
    if [ "$rc" -ne 1 ] || ! grep -q "STALE TRANSLATION" "$out/$twin.txt" \
        || ! grep -q "reads the primary entry" "$out/$twin.txt" \
        || ! grep -q "installs" "$out/$twin.txt"; then
      cat "$out/$twin.txt"; echo "notifier-sim did not catch and explain $twin (exit $rc)"; exit 1
    fi
    echo "$twin: caught with seed $seed"
    draw "$out/$twin" "$lane"
  done <<'TWINS'
kvm-ignores-seq kvm
kvm-flush-after-end kvm
kvm-caches-past-release kvm
device-tlb-ignores-flush device-tlb
exporter-ignores-invalidation importers
mirror-ignores-seq mirror
two-pass-skips-finish two-pass
TWINS
  for bad in "--scenario nope" "--ops 0" "--vcpus 0" "--threads 4" "--threads=4" "--seed x" "--broken nope" "--sed 1"; do
    set +e
    # shellcheck disable=SC2086
    "$sim" $bad --out "$out/bad" >/dev/null 2>"$out/bad.txt"
    rc=$?
    set -e
    if [ "$rc" -ne 2 ] || [ "$(wc -l <"$out/bad.txt")" -ne 1 ]; then
      cat "$out/bad.txt"; echo "notifier-sim $bad: exit $rc, expected 2 and one line"; exit 1
    fi
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
