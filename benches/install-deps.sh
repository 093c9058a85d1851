#!/usr/bin/env bash
# Installs the system packages the notifier-benches crate needs on a fresh Debian/Ubuntu
# machine: liburcu-dev (the C userspace RCU library, a baseline of the dispatch and
# read-side benchmarks; its build script links it) and a C compiler for the shim.
# Idempotent: does nothing when everything is already there.
set -euo pipefail
need=()
# Debian puts the headers under the multiarch directory (/usr/include/<triplet>/urcu).
have_urcu=
for h in /usr/include/urcu/urcu-memb.h /usr/include/*/urcu/urcu-memb.h /usr/local/include/urcu/urcu-memb.h; do
    [ -e "$h" ] && have_urcu=1
done
[ -n "$have_urcu" ] || need+=(liburcu-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
