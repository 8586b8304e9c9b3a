#!/usr/bin/env bash
# Build the pinned Kubo (go-ipfs) daemon from its Go module into a local cache.
#
# Usage: ipfs/build-kubo.sh
#
# Prints the absolute path of the `ipfs` binary on stdout (that one line only);
# all progress and errors go to stderr.
#
# Environment:
#   CASYNC_KUBO_VERSION   version to build (default: contents of ipfs/KUBO_VERSION)
#   CASYNC_KUBO_CACHE     cache root (default: $HOME/.cache/casync/kubo, outside the
#                         repo); the binary is put at $CASYNC_KUBO_CACHE/<version>/ipfs
#   CASYNC_KUBO_GOTOOLCHAIN  Go toolchain to use when the module needs a newer Go
#                         than the local one (default: go1.27.3 for go 1.27.x)
#   GOTOOLCHAIN           honoured as usual if set to something other than "local"
#   CASYNC_KUBO_REPLACE_FALLBACK  space-separated MODULE@VERSION list used when a
#                         replace target in Kubo's go.mod cannot be downloaded
#                         (default: github.com/libp2p/go-libp2p@v0.50.0, see below)
#
# Nothing is rebuilt if the binary already exists and `ipfs version` works.
# A full build takes several minutes on 2 cores (see ipfs/README.md).
set -euo pipefail

log() { printf 'build-kubo: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ $# -gt 0 ]]; then
    case "$1" in
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 0 ;;
        *) log "usage: $0   (takes no arguments)"; exit 2 ;;
    esac
fi

version="${CASYNC_KUBO_VERSION:-}"
if [[ -z "$version" ]]; then
    [[ -r "$script_dir/KUBO_VERSION" ]] || die "missing $script_dir/KUBO_VERSION"
    version="$(tr -d ' \t\r\n' < "$script_dir/KUBO_VERSION")"
fi
[[ "$version" =~ ^v[0-9]+\.[0-9]+\.[0-9]+([-.+][0-9A-Za-z.-]+)?$ ]] \
    || die "bad Kubo version '$version' (expected e.g. v0.43.1)"

cache_root="${CASYNC_KUBO_CACHE:-${HOME:?HOME is not set (or set CASYNC_KUBO_CACHE)}/.cache/casync/kubo}"
out_dir="$cache_root/$version"
bin="$out_dir/ipfs"
module="github.com/ipfs/kubo"

binary_ok() { [[ -x "$bin" ]] && "$bin" version >/dev/null 2>&1; }

if binary_ok; then
    printf '%s\n' "$bin"
    exit 0
fi

command -v go >/dev/null 2>&1 || die "'go' not found in PATH (Go >= 1.26 is needed to build Kubo $version)"
mkdir -p "$out_dir"

# Serialise concurrent builds (e.g. parallel test workers) on the same cache.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$out_dir/.build.lock"
    flock 9
    if binary_ok; then
        printf '%s\n' "$bin"
        exit 0
    fi
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/casync-kubo-build.XXXXXX")"
cleanup() { chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# "go1.26.8" -> "1.26.8"
local_go="$(go env GOVERSION)"; local_go="${local_go#go}"; local_go="${local_go%%[ -]*}"

# version_gt A B: true if dotted version A > B.
version_gt() { [[ "$1" != "$2" && "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n1)" == "$1" ]]; }

# Pick a toolchain when the module's go.mod needs a newer Go than ours.
choose_toolchain() {
    local gomod="$1" need
    need="$(awk '$1 == "go" { print $2; exit }' "$gomod")"
    [[ -n "$need" ]] || return 0
    if [[ -n "${GOTOOLCHAIN:-}" && "${GOTOOLCHAIN}" != "local" ]]; then
        log "using GOTOOLCHAIN=$GOTOOLCHAIN from the environment (module needs go $need)"
        return 0
    fi
    if version_gt "$need" "$local_go"; then
        local tc="${CASYNC_KUBO_GOTOOLCHAIN:-}"
        if [[ -z "$tc" ]]; then
            case "$need" in
                1.27|1.27.*) tc="go1.27.3" ;;
                *) tc="go$need" ;;
            esac
        fi
        log "module needs go $need, local is go$local_go: exporting GOTOOLCHAIN=$tc"
        export GOTOOLCHAIN="$tc"
    fi
}

export CGO_ENABLED="${CGO_ENABLED:-0}"
ldflags="-s -w"
start=$SECONDS
log "building Kubo $version into $bin (this can take several minutes)"

# Step 0: fetch the module (cheap if cached) to learn its Go requirement.
modjson="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$module@$version")" \
    || die "go mod download $module@$version failed"
moddir="$(printf '%s\n' "$modjson" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
[[ -n "$moddir" && -d "$moddir" ]] || die "could not locate module dir for $module@$version"
choose_toolchain "$moddir/go.mod"

# Module replace directives of a go.mod, one "OLD NEW NEWVERSION" per line
# (directory replacements, which have no version, are skipped).
go_mod_replaces() {
    awk '
        /^replace[ \t]*\(/ { inblock = 1; next }
        inblock && /^\)/    { inblock = 0; next }
        /^replace[ \t]/     { sub(/^replace[ \t]+/, ""); line = $0 }
        inblock              { line = $0 }
        line != "" {
            sub(/\/\/.*/, "", line); n = split(line, f, /[ \t]+/); i = 1
            while (i <= n && f[i] == "") i++
            old = f[i]; i++
            if (f[i] != "=>") { j = i; i++ } # "OLD VERSION => ..."
            i++; new = f[i]; ver = f[i + 1]
            if (ver != "") print old, new, ver
            line = ""
        }' "$1"
}

# Upstream releases to use when a replace target cannot be downloaded.
# go-libp2p v0.50.0 is the first release requiring quic-go >= v0.62.0 and
# webtransport-go >= v0.13.0, the condition under which Kubo's go.mod says its
# fork replace can be dropped.
replace_fallback="${CASYNC_KUBO_REPLACE_FALLBACK:-github.com/libp2p/go-libp2p@v0.50.0}"

built=0
# Step 1: plain `go install`. Refused when go.mod has replace directives
# (Kubo v0.43.1 replaces go-libp2p), in which case we fall back to step 2.
gobin="$work/gobin"
mkdir -p "$gobin"
if (cd "$work" && GOBIN="$gobin" go install -trimpath -ldflags "$ldflags" "$module/cmd/ipfs@$version") \
        2>"$work/install.log"; then
    cat "$work/install.log" >&2
    mv -f "$gobin/ipfs" "$work/ipfs.new"
    built=1
else
    cat "$work/install.log" >&2
    log "go install refused/failed; building from a copy of the module source instead"
fi

# Step 2: build inside a writable copy of the module, so its go.mod (with
# replace directives and go.sum) is the main module.
substituted=""
if [[ $built -eq 0 ]]; then
    src="$work/src"
    cp -R "$moddir" "$src"
    chmod -R u+w "$src"
    modflag=""
    # A replace target that the module proxy cannot serve (Kubo v0.43.1
    # replaces go-libp2p with a developer's fork that is not on the proxy)
    # makes the build impossible offline. For such modules, drop the replace
    # and require the upstream release named in $replace_fallback instead.
    while read -r old new newver; do
        [[ -n "$old" && -n "$newver" ]] || continue
        if (cd "$work" && go mod download "$new@$newver") >/dev/null 2>&1; then
            continue
        fi
        fb=""
        for entry in $replace_fallback; do
            [[ "${entry%@*}" == "$old" ]] && fb="${entry#*@}"
        done
        [[ -n "$fb" ]] || die "replace target $new@$newver (for $old) is not downloadable and no fallback is set in CASYNC_KUBO_REPLACE_FALLBACK"
        log "WARNING: replace target $new@$newver is not downloadable; building with upstream $old@$fb instead"
        (cd "$src" && go mod edit -dropreplace="$old" -require="$old@$fb") || die "go mod edit failed"
        substituted="$substituted $old@$fb"
        modflag="-mod=mod"
    done < <(go_mod_replaces "$src/go.mod")
    (cd "$src" && go build $modflag -trimpath -ldflags "$ldflags" -o "$work/ipfs.new" ./cmd/ipfs) >&2 \
        || die "go build of $module@$version failed"
fi

"$work/ipfs.new" version >/dev/null 2>&1 || die "built binary does not run: $work/ipfs.new"
mv -f "$work/ipfs.new" "$bin"
{
    echo "kubo $version"
    echo "go $(go env GOVERSION) (GOTOOLCHAIN=${GOTOOLCHAIN:-})"
    echo "substituted:${substituted:- none}"
    echo "build_seconds $((SECONDS - start))"
} >"$out_dir/BUILD-INFO"
log "built $("$bin" version) in $((SECONDS - start))s"
printf '%s\n' "$bin"
