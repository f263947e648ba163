#!/usr/bin/env bash
# Cold start against the bare-QEMU floor, and command round trip against
# OpenSSH, measured side by side. Extra arguments go to the bench program.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$root/scripts/deps.sh"
cd "$root"
"$root/scripts/build.sh"
export SMOLVM_AGENT=$root/bin/smolvm-agent
export SMOLVM_HOME=${SMOLVM_HOME:-$(mktemp -d)}
go run ./bench "$@"
