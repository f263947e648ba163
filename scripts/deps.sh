#!/usr/bin/env bash
# Installs what smolvm needs on a Debian host, skipping what is there:
# QEMU, a guest kernel, e2fsprogs (mke2fs/resize2fs), and test tools.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

have_cmd qemu-system-x86_64 || need+=(qemu-system-x86)
# qemu-img: copy-on-write disks for snapshot clones.
have_cmd qemu-img || need+=(qemu-utils)
# The generic kernel has 9p, which host folder mounts need; the cloud one does not.
compgen -G "/boot/vmlinuz-*[0-9]-amd64" >/dev/null || need+=(linux-image-amd64)
compgen -G '/boot/vmlinuz-*-cloud-amd64' >/dev/null || need+=(linux-image-cloud-amd64)
have_cmd mke2fs && have_cmd resize2fs || need+=(e2fsprogs)
have_cmd ssh || need+=(openssh-client)
have_cmd cpio || need+=(cpio)
have_cmd ip || need+=(iproute2)
have_cmd nft || need+=(nftables)
# socat relays a user-mode guest's connections to its egress proxy when
# QEMU runs as a user who may not run the smolvm CLI (as root).
have_cmd socat || need+=(socat)
have_pkg busybox-static || need+=(busybox-static)
have_cmd mmdebstrap || need+=(mmdebstrap)
# The Python client's tests: pytest, and venv for the offline `pip install ./python` test.
have_pkg python3-pytest || need+=(python3-pytest)
have_pkg python3-venv || need+=(python3-venv)
# scripts/bench.sh -api times curl against the API too.
have_cmd curl || need+=(curl)

if ((${#need[@]})); then
	echo "installing: ${need[*]}" >&2
	sudo=""
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

if ! have_cmd go; then
	[ -x /usr/local/go/bin/go ] && export PATH=$PATH:/usr/local/go/bin
	have_cmd go || { echo "Go 1.26 or newer is needed: https://go.dev/doc/install" >&2; exit 1; }
fi
