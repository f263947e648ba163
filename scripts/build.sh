#!/usr/bin/env bash
# Builds bin/smolvm: a static binary with the small guest agent embedded
# (cmd/smolvm-agent), plus bin/smolvm-agent for programs using the library
# (SMOLVM_AGENT).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$root"
flags=(-trimpath -ldflags="-s -w")
CGO_ENABLED=0 go build "${flags[@]}" -o bin/smolvm-agent ./cmd/smolvm-agent
cp bin/smolvm-agent internal/agentbin/smolvm-agent
CGO_ENABLED=0 go build "${flags[@]}" -tags embedagent -o bin/smolvm ./cmd/smolvm
