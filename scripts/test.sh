#!/usr/bin/env bash
# Installs what is missing, builds, vets, and runs every test, including
# the ones that boot real VMs.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$root/scripts/deps.sh"
cd "$root"
"$root/scripts/build.sh"
# Every go.mod of the module graph into the module cache: the README
# program's test builds a fresh module offline (GOPROXY=off), which needs
# them all, while building smolvm itself fetches only some.
go mod graph >/dev/null
go vet ./...
unformatted=$(gofmt -l $(git ls-files '*.go'))
[ -z "$unformatted" ] || { echo "gofmt needed: $unformatted" >&2; exit 1; }
go test -count=1 -p 2 -timeout 25m "$@" ./...
# The Python client (python/tests) against the bin/smolvm built above, with
# Debian's python3 and pytest (a python3 earlier on PATH may lack pytest).
py=python3; [ -x /usr/bin/python3 ] && py=/usr/bin/python3
SMOLVM_BIN="$root/bin/smolvm" "$py" -m pytest -q -p no:cacheprovider "$root/python/tests"
