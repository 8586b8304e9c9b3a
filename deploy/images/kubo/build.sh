#!/usr/bin/env bash
# Build the casync/kubo:<version> image (FROM scratch) into the local Docker engine.
#
# Usage: deploy/images/kubo/build.sh      (prints the image tag on stdout, progress on stderr)
#
# The build context is assembled in a temp dir: the pinned Kubo from ipfs/build-kubo.sh
# (checked to be static: CGO_ENABLED=0, no ELF interpreter), casync-kubo-start built from
# start/ with CGO_ENABLED=0 (stdlib only; Go's build cache makes rebuilds ~1 s), the host's CA
# bundle if it has one (Kubo's AutoConf fetches over HTTPS), an empty /tmp and /data/ipfs.
# Nothing is pulled (FROM scratch) and nothing is written to the repo.
# DOCKER_HOST is honoured as usual (.ci/docker.sh start prints one).
set -euo pipefail

log() { printf 'build-kubo-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../../.." && pwd)"
[[ $# -eq 0 ]] || { log "usage: $0   (takes no arguments)"; exit 2; }

version="$(tr -d ' \t\r\n' < "$repo_root/ipfs/KUBO_VERSION")"
tag="casync/kubo:$version"
command -v docker >/dev/null 2>&1 || die "'docker' (the client) not found in PATH"
command -v go >/dev/null 2>&1 || die "'go' not found in PATH (needed for casync-kubo-start)"

kubo="$(bash "$repo_root/ipfs/build-kubo.sh")"
go version -m "$kubo" | grep -q 'CGO_ENABLED=0' || die "$kubo was not built with CGO_ENABLED=0"
if ldd "$kubo" >/dev/null 2>&1; then die "$kubo is dynamically linked; a FROM scratch image needs a static binary"; fi

ctx="$(mktemp -d "${TMPDIR:-/tmp}/casync-kubo-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/usr/local/bin" "$ctx/rootfs/tmp" "$ctx/data/ipfs"
chmod 1777 "$ctx/rootfs/tmp"
chmod 0755 "$ctx/data/ipfs"
cp "$kubo" "$ctx/rootfs/usr/local/bin/ipfs"
(cd "$here/start" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$ctx/rootfs/usr/local/bin/casync-kubo-start" .) \
    || die "building casync-kubo-start failed"
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
    mkdir -p "$ctx/rootfs/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
fi
cp "$here/Dockerfile" "$ctx/Dockerfile"

start=$SECONDS
docker build --quiet --build-arg "KUBO_VERSION=$version" -t "$tag" "$ctx" >&2 || die "docker build failed"
log "built $tag in $((SECONDS - start))s"
printf '%s\n' "$tag"
