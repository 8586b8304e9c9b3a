#!/bin/sh
# Production Kubo configuration for casync.
#
# Applies casync's settings to an IPFS repo ($IPFS_PATH), idempotently. Two ways
# to use it:
#   * In the official ipfs/kubo image: mount it into /container-init.d/ (the
#     image's start script runs it after `ipfs init`, before `ipfs daemon`, on
#     every start). Executed if it has the x bit, sourced otherwise; both work:
#     it is POSIX sh (the image is busybox), keeps its variables and options in
#     a subshell and never exits the caller on success.
#   * By hand: IPFS_PATH=/data/ipfs ipfs/config/configure.sh
#     (initialises the repo with the server profile if it has no config yet).
#
# Run the daemon with `ipfs daemon --enable-gc` so StorageMax is enforced.
# See ipfs/README.md for the reasoning behind each setting.
#
# Environment (all optional):
#   IPFS_BIN                    ipfs binary (default: ipfs in PATH)
#   CASYNC_KUBO_API_ADDRS       space-separated RPC API multiaddrs
#                               (default /ip4/127.0.0.1/tcp/5001). Unspecified
#                               addresses (0.0.0.0, ::) are refused: the RPC API
#                               is admin-level. For other pods use the pod IP,
#                               e.g. "/ip4/127.0.0.1/tcp/5001 /ip4/$POD_IP/tcp/5001",
#                               plus a NetworkPolicy and CASYNC_KUBO_API_AUTH.
#   CASYNC_KUBO_API_AUTH        RPC auth secret, "bearer:TOKEN" or
#                               "basic:USER:PASSWORD" (sets API.Authorizations)
#   CASYNC_KUBO_GATEWAY_ADDRS   gateway multiaddrs (default /ip4/0.0.0.0/tcp/8080)
#   CASYNC_KUBO_STORAGE_MAX     Datastore.StorageMax (default 100GB)
#   CASYNC_KUBO_GC_WATERMARK    Datastore.StorageGCWatermark, percent (default 90)
#   CASYNC_KUBO_GC_PERIOD       Datastore.GCPeriod (default 1h)
#   CASYNC_KUBO_MAX_MEMORY      Swarm.ResourceMgr.MaxMemory, e.g. 2GB; set it to
#                               about half the container memory limit (Kubo
#                               sizes itself from host RAM, not the cgroup)
#   CASYNC_KUBO_ROUTING_TYPE    Routing.Type (default: leave Kubo's "auto")
#   CASYNC_KUBO_INIT_PROFILE    profiles for `ipfs init` when there is no repo yet
#                               (default server; tests use server,test)
#
# The casync/kubo image (deploy/images/kubo) does the same at every start with its
# entrypoint, casync-kubo-start, which reads these same variables; keep both in step
# (tests/test_kubo_image.py compares the configs they produce).

casync_kubo_configure() (
    set -eu
    ipfs="${IPFS_BIN:-ipfs}"
    say() { printf 'casync-kubo-config: %s\n' "$*" >&2; }
    fail() { say "error: $*"; exit 1; }
    cfg() { "$ipfs" config --json "$1" "$2" >/dev/null || fail "ipfs config $1 failed"; }

    # "a b" -> ["a","b"], accepting only plain multiaddr characters.
    maddr_list() {
        out=""
        for a in $1; do
            case "$a" in
                /*) ;;
                *) fail "not a multiaddr: $a" ;;
            esac
            case "$a" in
                *[!A-Za-z0-9./:_-]*) fail "unexpected characters in multiaddr: $a" ;;
            esac
            out="${out:+$out,}\"$a\""
        done
        [ -n "$out" ] || fail "empty multiaddr list"
        printf '[%s]' "$out"
    }

    command -v "$ipfs" >/dev/null 2>&1 || fail "ipfs binary not found ($ipfs)"
    repo="${IPFS_PATH:-$HOME/.ipfs}"
    if [ ! -e "$repo/config" ]; then
        # flatfs (Kubo's default datastore) + server profile; see ipfs/README.md.
        profile="${CASYNC_KUBO_INIT_PROFILE:-server}"
        say "no repo at $repo: ipfs init --profile $profile"
        "$ipfs" init --profile "$profile" --empty-repo >&2 || fail "ipfs init failed"
    fi

    # server profile: no MDNS, no UPnP/NAT-PMP, do not announce or dial
    # private/loopback ranges. Idempotent (entries are deduplicated).
    "$ipfs" config profile apply server >/dev/null || fail "applying the server profile failed"

    # --- Datastore -------------------------------------------------------
    spec="$("$ipfs" config Datastore.Spec 2>/dev/null || true)"
    case "$spec" in
        *flatfs*) ;;
        *) say "WARNING: repo datastore is not flatfs; casync expects flatfs (chosen at init)" ;;
    esac
    cfg Datastore.StorageMax "\"${CASYNC_KUBO_STORAGE_MAX:-100GB}\""
    wm="${CASYNC_KUBO_GC_WATERMARK:-90}"
    case "$wm" in *[!0-9]*|'') fail "CASYNC_KUBO_GC_WATERMARK must be an integer percent" ;; esac
    cfg Datastore.StorageGCWatermark "$wm"
    cfg Datastore.GCPeriod "\"${CASYNC_KUBO_GC_PERIOD:-1h}\""

    # --- RPC API: admin-level, never on an unspecified address ------------
    api_addrs="${CASYNC_KUBO_API_ADDRS:-/ip4/127.0.0.1/tcp/5001}"
    for a in $api_addrs; do
        case "$a" in
            /ip4/0.0.0.0/*|/ip6/::/*|/ip6/0:0:0:0:0:0:0:0/*|/ip6/::0/*)
                fail "refusing to bind the RPC API to $a (admin-level API; use 127.0.0.1 or the pod IP)" ;;
        esac
    done
    cfg Addresses.API "$(maddr_list "$api_addrs")"
    if [ -n "${CASYNC_KUBO_API_AUTH:-}" ]; then
        case "$CASYNC_KUBO_API_AUTH" in
            bearer:*|basic:*) ;;
            *) fail "CASYNC_KUBO_API_AUTH must start with bearer: or basic:" ;;
        esac
        case "$CASYNC_KUBO_API_AUTH" in
            *[!A-Za-z0-9._~+/=:@-]*) fail "unexpected characters in CASYNC_KUBO_API_AUTH" ;;
        esac
        cfg API.Authorizations "{\"casync\": {\"AuthSecret\": \"$CASYNC_KUBO_API_AUTH\", \"AllowedPaths\": [\"/api/v0\"]}}"
    fi

    # --- Gateway: serve only what this node has --------------------------
    cfg Addresses.Gateway "$(maddr_list "${CASYNC_KUBO_GATEWAY_ADDRS:-/ip4/0.0.0.0/tcp/8080}")"
    cfg Gateway.NoFetch true                 # never fetch from the network for a request
    cfg Gateway.DeserializedResponses true   # serve files, not only raw blocks/CARs
    cfg Gateway.NoDNSLink true               # no DNS lookups driven by Host headers
    cfg Gateway.ExposeRoutingAPI false       # not a public /routing/v1 endpoint
    cfg Gateway.RootRedirect '""'

    # --- Content defaults matching what casync passes to /api/v0/add ------
    cfg Import.CidVersion 1
    cfg Import.UnixFSRawLeaves true
    cfg Import.HashFunction '"blake3"'

    # --- No phoning home ---------------------------------------------------
    cfg AutoTLS.Enabled false                # no p2p-forge / ACME registration
    cfg Plugins.Plugins '{"telemetry": {"Config": {"Mode": "off"}}}'

    # --- Optional knobs ----------------------------------------------------
    if [ -n "${CASYNC_KUBO_MAX_MEMORY:-}" ]; then
        cfg Swarm.ResourceMgr.MaxMemory "\"$CASYNC_KUBO_MAX_MEMORY\""
    fi
    if [ -n "${CASYNC_KUBO_ROUTING_TYPE:-}" ]; then
        cfg Routing.Type "\"$CASYNC_KUBO_ROUTING_TYPE\""
    fi

    say "applied casync Kubo configuration to $repo"
)

casync_kubo_configure
