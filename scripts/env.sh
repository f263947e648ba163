# Sourced by the scripts: where the binary goes and where the Alpine
# minirootfs comes from when this machine cannot reach Alpine's CDN.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=$PATH:/usr/local/go/bin
if [ -z "${SMOLVM_ALPINE_SOURCE:-}" ] && [ -d "$root/../shared/alpine" ]; then
	export SMOLVM_ALPINE_SOURCE="$root/../shared/alpine"
fi
