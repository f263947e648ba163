#!/usr/bin/env bash
# The demo: an auto-configured VM prints `uname -a` from inside the guest
# and is deleted again.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$root/scripts/deps.sh"
cd "$root"
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o bin/smolvm ./cmd/smolvm
./bin/smolvm run -- uname -a
