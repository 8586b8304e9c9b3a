#!/usr/bin/env bash
# Build the pinned IPFS Cluster peer daemon and its CLI (the cluster-remote tests) into a local cache.
#
# Usage: .ci/build-cluster.sh
#
# Prints the absolute path of the directory holding `ipfs-cluster-service` and `ipfs-cluster-ctl`
# on stdout (that one line only); progress and errors go to stderr.
#
# Environment:
#   CASYNC_CLUSTER_VERSION  version to build (default: v1.1.6, the version the tests pin)
#   CASYNC_CLUSTER_CACHE    cache root (default: $HOME/.cache/casync/cluster, outside the repo); the
#                           binaries go to $CASYNC_CLUSTER_CACHE/<version>/{ipfs-cluster-service,ipfs-cluster-ctl}
#
# `go install github.com/ipfs-cluster/ipfs-cluster/cmd/...@VERSION` is refused here (it asks the proxy
# for the version list), so this downloads the module (`go mod download -json`) and builds both
# commands inside a writable copy of its source, where its own go.mod and go.sum are the main module.
# The copy lives under $HOME/.cache/casync/cluster-build (kept: the Go build cache makes a rebuild
# cheap). Nothing is rebuilt when both binaries exist and run. A build takes about 4 minutes on 2 cores.
set -euo pipefail

log() { printf 'build-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 0 ]] || { log "usage: $0   (takes no arguments)"; exit 2; }

version="${CASYNC_CLUSTER_VERSION:-v1.1.6}"
[[ "$version" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || die "bad ipfs-cluster version '$version' (expected e.g. v1.1.6)"
home="${HOME:?HOME is not set (or set CASYNC_CLUSTER_CACHE)}"
cache_root="${CASYNC_CLUSTER_CACHE:-$home/.cache/casync/cluster}"
out_dir="$cache_root/$version"
build_root="${cache_root%/*}/cluster-build"
module="github.com/ipfs-cluster/ipfs-cluster"

binaries_ok() {
    [[ -x "$out_dir/ipfs-cluster-service" && -x "$out_dir/ipfs-cluster-ctl" ]] \
        && "$out_dir/ipfs-cluster-service" --version >/dev/null 2>&1 \
        && "$out_dir/ipfs-cluster-ctl" --version >/dev/null 2>&1
}

if binaries_ok; then
    printf '%s\n' "$out_dir"
    exit 0
fi
command -v go >/dev/null 2>&1 || die "'go' not found in PATH (needed to build ipfs-cluster $version)"
mkdir -p "$out_dir" "$build_root"

# Serialise concurrent builds (parallel test workers, two CI runs) on the same cache.
exec 9>"$out_dir/.build.lock"
flock 9
if binaries_ok; then
    printf '%s\n' "$out_dir"
    exit 0
fi

start=$SECONDS
log "building ipfs-cluster $version into $out_dir (about 4 minutes)"
modjson="$(cd "$build_root" && GOFLAGS=-mod=mod go mod download -json "$module@$version")" \
    || die "go mod download $module@$version failed"
moddir="$(printf '%s\n' "$modjson" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
[[ -n "$moddir" && -d "$moddir" ]] || die "could not locate the module directory of $module@$version"

src="$build_root/$version"
chmod -R u+w "$src" 2>/dev/null || true
rm -rf "$src"
cp -R "$moddir" "$src"
chmod -R u+w "$src"

export CGO_ENABLED="${CGO_ENABLED:-0}"
for cmd in ipfs-cluster-service ipfs-cluster-ctl; do
    (cd "$src" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$src/$cmd.new" "./cmd/$cmd") >&2 \
        || die "go build of $module/cmd/$cmd@$version failed"
    "$src/$cmd.new" --version >/dev/null || die "built $cmd does not run"
done
for cmd in ipfs-cluster-service ipfs-cluster-ctl; do
    mv -f "$src/$cmd.new" "$out_dir/$cmd"
done
{
    echo "ipfs-cluster $version"
    echo "go $(go env GOVERSION)"
    echo "build_seconds $((SECONDS - start))"
} >"$out_dir/BUILD-INFO"
log "built $("$out_dir/ipfs-cluster-service" --version) in $((SECONDS - start))s"
printf '%s\n' "$out_dir"
