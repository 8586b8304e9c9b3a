#!/usr/bin/env bash
# Build the pinned etcd server, etcdctl and etcdutl (strong branches: the tests, and the backups of
# docs/operations.md) into a local cache.
#
# Usage: .ci/build-etcd.sh
#
# Prints the absolute path of the directory holding `etcd`, `etcdctl` and `etcdutl` on stdout (that one
# line only); progress and errors go to stderr.
#
# Environment:
#   CASYNC_ETCD_VERSION  version to build (default: v3.6.16, the version the tests pin)
#   CASYNC_ETCD_CACHE    cache root (default: $HOME/.cache/casync/etcd, outside the repo); the
#                        binaries go to $CASYNC_ETCD_CACHE/<version>/{etcd,etcdctl,etcdutl}
#
# `go install go.etcd.io/etcd/server/v3@VERSION` is refused because that module's go.mod has
# replace lines, so this builds from a throw-away wrapper module that requires the server
# (its root package is `main`), etcdctl and etcdutl at the same version; the replace lines of a
# dependency do not apply there. Nothing is rebuilt when the three binaries exist and run.
# A build takes about 2 minutes on 2 cores.
set -euo pipefail

log() { printf 'build-etcd: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 0 ]] || { log "usage: $0   (takes no arguments)"; exit 2; }

version="${CASYNC_ETCD_VERSION:-v3.6.16}"
[[ "$version" =~ ^v3\.[0-9]+\.[0-9]+$ ]] || die "bad etcd version '$version' (expected e.g. v3.6.16)"
cache_root="${CASYNC_ETCD_CACHE:-${HOME:?HOME is not set (or set CASYNC_ETCD_CACHE)}/.cache/casync/etcd}"
out_dir="$cache_root/$version"

binaries_ok() {
    [[ -x "$out_dir/etcd" && -x "$out_dir/etcdctl" && -x "$out_dir/etcdutl" ]] \
        && "$out_dir/etcd" --version >/dev/null 2>&1 && "$out_dir/etcdctl" version >/dev/null 2>&1 \
        && "$out_dir/etcdutl" version >/dev/null 2>&1
}

if binaries_ok; then
    printf '%s\n' "$out_dir"
    exit 0
fi
command -v go >/dev/null 2>&1 || die "'go' not found in PATH (needed to build etcd $version)"
mkdir -p "$out_dir"

# Serialise concurrent builds (parallel test workers, two CI runs) on the same cache.
exec 9>"$out_dir/.build.lock"
flock 9
if binaries_ok; then
    printf '%s\n' "$out_dir"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/casync-etcd-build.XXXXXX")"
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start=$SECONDS
log "building etcd $version into $out_dir (about 2 minutes)"
cat >"$work/go.mod" <<GOMOD
module casync.invalid/etcdbuild

go 1.24

require (
	go.etcd.io/etcd/etcdctl/v3 $version
	go.etcd.io/etcd/etcdutl/v3 $version
	go.etcd.io/etcd/server/v3 $version
)
GOMOD
# A file importing both main packages' modules keeps `go mod tidy` from dropping them.
cat >"$work/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
GO
export CGO_ENABLED="${CGO_ENABLED:-0}"
(cd "$work" && GOFLAGS=-mod=mod go mod tidy) >&2 || die "go mod tidy for etcd $version failed"
(cd "$work" && go build -mod=mod -trimpath -ldflags "-s -w" -o "$work/etcd.new" go.etcd.io/etcd/server/v3) >&2 \
    || die "go build of go.etcd.io/etcd/server/v3@$version failed"
(cd "$work" && go build -mod=mod -trimpath -ldflags "-s -w" -o "$work/etcdctl.new" go.etcd.io/etcd/etcdctl/v3) >&2 \
    || die "go build of go.etcd.io/etcd/etcdctl/v3@$version failed"
(cd "$work" && go build -mod=mod -trimpath -ldflags "-s -w" -o "$work/etcdutl.new" go.etcd.io/etcd/etcdutl/v3) >&2 \
    || die "go build of go.etcd.io/etcd/etcdutl/v3@$version failed"
"$work/etcd.new" --version >/dev/null || die "built etcd does not run"
"$work/etcdctl.new" version >/dev/null || die "built etcdctl does not run"
"$work/etcdutl.new" version >/dev/null || die "built etcdutl does not run"
mv -f "$work/etcd.new" "$out_dir/etcd"
mv -f "$work/etcdctl.new" "$out_dir/etcdctl"
mv -f "$work/etcdutl.new" "$out_dir/etcdutl"
{
    echo "etcd $version"
    echo "go $(go env GOVERSION)"
    echo "build_seconds $((SECONDS - start))"
} >"$out_dir/BUILD-INFO"
log "built $("$out_dir/etcd" --version | head -n1) in $((SECONDS - start))s"
printf '%s\n' "$out_dir"
