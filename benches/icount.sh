#!/usr/bin/env bash
# Instructions per start+end pair in each state of `benches/src/bin/icount.rs`, counted
# with callgrind: (count at 11 000 pairs - count at 1 000 pairs) / 10 000. Repeatable on
# a loaded machine. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p notifier-benches --bin icount
bin=target/release/icount
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for state in none excluded object one sixteen intervals; do
  a=$(count "$state" 1000)
  b=$(count "$state" 11000)
  echo "$state: $(((b - a) / 10000)) instructions per pair"
done
