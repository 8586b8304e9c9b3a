#!/usr/bin/env bash
# Build the pinned kustomize (v5.8.2) from its Go module into a cache outside the repo.
#
# Usage: .ci/build-kustomize.sh
#
# Prints the absolute path of the `kustomize` binary on stdout (that one line only);
# progress and errors go to stderr. Idempotent: nothing is rebuilt when the cached binary
# runs and reports the pinned version. Concurrent calls are serialised with flock.
#
# Environment:
#   CASYNC_KUSTOMIZE_VERSION  version to build (default v5.8.2)
#   CASYNC_KUSTOMIZE_CACHE    cache root (default $HOME/.cache/casync/kustomize); the binary
#                             is put at $CASYNC_KUSTOMIZE_CACHE/<version>/kustomize
#
# `go install sigs.k8s.io/kustomize/kustomize/v5@VERSION` is tried first; Go refuses it when
# the module's go.mod has replace directives, so the fallback builds the downloaded module
# source inside a writable copy of it (its own go.mod/go.sum are then the main module).
set -euo pipefail

log() { printf 'build-kustomize: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 0 ]] || { log "usage: $0   (takes no arguments)"; exit 2; }

version="${CASYNC_KUSTOMIZE_VERSION:-v5.8.2}"
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "bad kustomize version '$version' (expected e.g. v5.8.2)"
module="sigs.k8s.io/kustomize/kustomize/v5"
out_dir="${CASYNC_KUSTOMIZE_CACHE:-$HOME/.cache/casync/kustomize}/$version"
bin="$out_dir/kustomize"

# `kustomize version` prints e.g. "v5.8.2" for a release built from its module.
binary_ok() { [[ -x "$bin" ]] && [[ "$("$bin" version 2>/dev/null)" == *"${version#v}"* ]]; }

if binary_ok; then
    printf '%s\n' "$bin"
    exit 0
fi
command -v go >/dev/null 2>&1 || die "'go' not found in PATH (needed to build kustomize $version)"
mkdir -p "$out_dir"
exec 9>"$out_dir/.build.lock"
flock 9
if binary_ok; then  # another process built it while we waited for the lock
    printf '%s\n' "$bin"
    exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/casync-kustomize-build.XXXXXX")"
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

export CGO_ENABLED=0
# The version string kustomize prints comes from this variable (its provenance package).
ldflags="-s -w -X sigs.k8s.io/kustomize/api/provenance.version=$version"
start=$SECONDS
log "building kustomize $version into $bin"

mkdir -p "$work/gobin"
if (cd "$work" && GOBIN="$work/gobin" go install -trimpath -ldflags "$ldflags" "$module@$version") \
        2>"$work/install.log"; then
    mv -f "$work/gobin/kustomize" "$work/kustomize.new"
else
    cat "$work/install.log" >&2 2>/dev/null || true
    log "go install refused; building a copy of the downloaded module source instead"
    modjson="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$module@$version")" \
        || die "go mod download $module@$version failed"
    moddir="$(printf '%s\n' "$modjson" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
    [[ -n "$moddir" && -d "$moddir" ]] || die "could not locate the module directory of $module@$version"
    cp -R "$moddir" "$work/src"
    chmod -R u+w "$work/src"
    (cd "$work/src" && go build -mod=mod -trimpath -ldflags "$ldflags" -o "$work/kustomize.new" .) >&2 \
        || die "go build of $module@$version failed"
fi

"$work/kustomize.new" version >/dev/null 2>&1 || die "the built binary does not run"
mv -f "$work/kustomize.new" "$bin"
binary_ok || die "built binary reports '$("$bin" version 2>&1)', not $version"
log "built kustomize $("$bin" version) in $((SECONDS - start))s"
printf '%s\n' "$bin"
