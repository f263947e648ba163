#!/usr/bin/env bash
# The demo: an auto-configured VM prints `uname -a` from inside the guest
# and is deleted again.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$root/scripts/deps.sh"
cd "$root"
"$root/scripts/build.sh"
./bin/smolvm run -- uname -a
