#!/usr/bin/env bash
# Throwaway, loopback-only Kubo node for development and tests.
#
# Usage:
#   ipfs/dev-node.sh start DIR   init (if needed) an IPFS repo in DIR, start the
#                                daemon, print on stdout exactly:
#                                  CASYNC_IPFS_API=http://127.0.0.1:PORT
#                                  CASYNC_IPFS_GATEWAY=http://127.0.0.1:PORT
#   ipfs/dev-node.sh stop DIR    stop the daemon started in DIR
#
# DIR is used as IPFS_PATH; the daemon logs to DIR/daemon.log and its pid is in
# DIR/daemon.pid. Use `eval "$(ipfs/dev-node.sh start DIR)"` or
# `export $(ipfs/dev-node.sh start DIR)` to load the variables.
#
# The node listens on free 127.0.0.1 ports only (API, Gateway, Swarm TCP),
# has no bootstrap peers, no DHT (Routing.Type=none), no MDNS, no AutoConf,
# no AutoTLS, no telemetry. Peers must be connected explicitly
# (`ipfs swarm connect`), after which bitswap works between them.
#
# Environment:
#   CASYNC_KUBO_BIN            use this ipfs binary instead of building one
#   CASYNC_KUBO_START_TIMEOUT  seconds to wait for the API (default 60)
#   (plus the variables of build-kubo.sh)
set -euo pipefail

prog="dev-node.sh"
log() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() {
    printf 'usage: %s start DIR | stop DIR\n' "$0" >&2
    exit 2
}

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[[ $# -eq 2 ]] || usage
cmd="$1"
[[ -n "$2" ]] || usage
case "$cmd" in start|stop) ;; *) usage ;; esac

# Nodes must never talk beyond loopback, and never report anywhere.
export IPFS_TELEMETRY=off
export DO_NOT_TRACK=1

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# True if PID is (still) an `ipfs daemon` process: guards against pid reuse.
is_ipfs_daemon() {
    local pid="$1" cmdline
    pid_alive "$pid" || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 0   # cannot check: trust the pid file
    cmdline="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *ipfs*daemon* ]]
}

read_pid() { [[ -f "$1/daemon.pid" ]] && tr -dc '0-9' < "$1/daemon.pid" || true; }

do_stop() {
    local dir="$1" pid i
    if [[ ! -d "$dir" ]]; then
        log "nothing to stop: $dir does not exist"
        return 0
    fi
    pid="$(read_pid "$dir")"
    if [[ -z "$pid" ]]; then
        log "nothing to stop: no pid file in $dir"
        rm -f "$dir/daemon.pid"
        return 0
    fi
    if ! is_ipfs_daemon "$pid"; then
        log "daemon (pid $pid) is not running; removing stale pid file"
        rm -f "$dir/daemon.pid"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do          # up to 15 s for a clean shutdown
        pid_alive "$pid" || break
        sleep 0.1
    done
    if pid_alive "$pid"; then
        log "daemon (pid $pid) ignored SIGTERM for 15s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            pid_alive "$pid" || break
            sleep 0.1
        done
        pid_alive "$pid" && die "could not kill daemon pid $pid"
        rm -f "$dir/repo.lock"
    fi
    rm -f "$dir/daemon.pid"
    log "stopped daemon (pid $pid) in $dir"
}

# Print three distinct free loopback TCP ports (API, Gateway, Swarm).
free_ports() {
    python3 - <<'EOF'
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

# The ports a DIR's node used last time, if all three are free again: a restarted
# dev node keeps its URLs, so remotes configured against it keep working.
previous_ports() {
    [[ -f "$1/config" ]] || return 1
    python3 - "$1/config" <<'EOF'
import json, re, socket, sys

try:
    with open(sys.argv[1]) as f:
        addrs = json.load(f).get("Addresses", {})
except (OSError, ValueError):
    sys.exit(1)

def port(value):
    value = value[0] if isinstance(value, list) and value else value
    m = re.search(r"/tcp/(\d+)$", value) if isinstance(value, str) else None
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None  # 0: "any port" (a fresh init)

ports = [port(addrs.get(k)) for k in ("API", "Gateway", "Swarm")]
if None in ports:
    sys.exit(1)
for p in ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        sys.exit(1)
    finally:
        s.close()
print(*ports)
EOF
}

# With CASYNC_KUBO_API_AUTH (bearer:TOKEN or basic:USER:PASSWORD) the node requires RPC
# authorization, as configure.sh sets it up for production; casync sends the same
# variable's secret. Without it, any earlier authorization is removed.
auth_header() {
    local secret="${CASYNC_KUBO_API_AUTH:-}"
    case "$secret" in
        "") ;;
        bearer:*) printf 'Authorization: Bearer %s' "${secret#bearer:}" ;;
        basic:*:*) printf 'Authorization: Basic %s' "$(printf '%s' "${secret#basic:}" | base64 -w0)" ;;
        *) die "CASYNC_KUBO_API_AUTH must be bearer:TOKEN or basic:USER:PASSWORD" ;;
    esac
}

api_answers() {
    local header
    header="$(auth_header)"
    curl -fsS -o /dev/null --max-time 2 -X POST ${header:+-H "$header"} "$1/api/v0/id" 2>/dev/null
}

do_start() {
    local dir="$1" ipfs pid api_port gw_port swarm_port api gw attempt i timeout
    command -v python3 >/dev/null 2>&1 || die "python3 is required (to pick free ports)"
    command -v curl >/dev/null 2>&1 || die "curl is required (to probe the API)"

    mkdir -p "$dir" || die "cannot create $dir"
    dir="$(cd "$dir" && pwd)"

    pid="$(read_pid "$dir")"
    if [[ -n "$pid" ]] && is_ipfs_daemon "$pid"; then
        die "a daemon (pid $pid) is already running in $dir; run '$0 stop $dir' first"
    fi
    rm -f "$dir/daemon.pid"

    if [[ -n "${CASYNC_KUBO_BIN:-}" ]]; then
        ipfs="$CASYNC_KUBO_BIN"
    else
        ipfs="$("$script_dir/build-kubo.sh")" || die "building Kubo failed (see messages above)"
    fi
    [[ -x "$ipfs" ]] || die "ipfs binary not executable: $ipfs"

    export IPFS_PATH="$dir"
    if [[ ! -f "$dir/config" ]]; then
        # test profile: loopback addresses, no bootstrap, no MDNS, AutoConf,
        # AutoTLS off, no DNS/delegated routers.
        "$ipfs" init --profile test --empty-repo >"$dir/init.log" 2>&1 \
            || { cat "$dir/init.log" >&2; die "ipfs init failed in $dir"; }
    fi

    cfg() { "$ipfs" config --json "$1" "$2" >/dev/null || die "ipfs config $1 failed"; }
    # Settings that do not depend on the ports (re-applied on every start so a
    # reused DIR is always in the expected state).
    cfg Bootstrap '[]'
    cfg Routing.Type '"none"'                 # no DHT at all; peers via swarm connect
    cfg Discovery.MDNS.Enabled false
    cfg AutoConf.Enabled false                # never fetch remote autoconf JSON
    cfg AutoTLS.Enabled false                 # no p2p-forge / ACME
    cfg Swarm.DisableNatPortMap true          # no UPnP / NAT-PMP
    cfg Swarm.RelayClient.Enabled false
    cfg Swarm.RelayService.Enabled false
    cfg AutoNAT.ServiceMode '"disabled"'
    cfg Addresses.Announce '[]'
    cfg Addresses.NoAnnounce '[]'
    cfg Provide.Enabled false                 # nothing to announce to without routing
    cfg HTTPRetrieval.Enabled false           # no HTTP providers without routing
    cfg Gateway.NoFetch false                 # dev gateway may fetch from peers
    cfg Gateway.DeserializedResponses true
    cfg Plugins.Plugins '{"telemetry": {"Config": {"Mode": "off"}}}'
    auth_header >/dev/null   # validates CASYNC_KUBO_API_AUTH
    if [[ -n "${CASYNC_KUBO_API_AUTH:-}" ]]; then
        [[ "$CASYNC_KUBO_API_AUTH" =~ ^[A-Za-z0-9._~+/=:@-]+$ ]] || die "unexpected characters in CASYNC_KUBO_API_AUTH"
        cfg API.Authorizations "{\"casync\": {\"AuthSecret\": \"$CASYNC_KUBO_API_AUTH\", \"AllowedPaths\": [\"/api/v0\"]}}"
    else
        cfg API.Authorizations '{}'
    fi

    timeout="${CASYNC_KUBO_START_TIMEOUT:-60}"
    [[ "$timeout" =~ ^[0-9]+$ ]] || die "CASYNC_KUBO_START_TIMEOUT must be an integer (seconds)"

    local reuse
    reuse="$(previous_ports "$dir" || true)"
    for attempt in 1 2 3; do
        if [[ "$attempt" == 1 && -n "$reuse" ]]; then
            read -r api_port gw_port swarm_port <<<"$reuse"
        else
            read -r api_port gw_port swarm_port < <(free_ports) || die "could not pick free ports"
        fi
        cfg Addresses.API "\"/ip4/127.0.0.1/tcp/$api_port\""
        cfg Addresses.Gateway "\"/ip4/127.0.0.1/tcp/$gw_port\""
        cfg Addresses.Swarm "[\"/ip4/127.0.0.1/tcp/$swarm_port\"]"
        api="http://127.0.0.1:$api_port"
        gw="http://127.0.0.1:$gw_port"

        # Detach fully: own session, no inherited stdin/stdout, so callers that
        # capture our stdout (e.g. subprocess.run) do not wait on the daemon.
        : >"$dir/daemon.log"
        setsid "$ipfs" daemon --enable-gc=false --migrate=false \
            </dev/null >>"$dir/daemon.log" 2>&1 9>&- &
        pid=$!
        echo "$pid" >"$dir/daemon.pid"

        for ((i = 0; i < timeout * 5; i++)); do
            if ! pid_alive "$pid"; then
                break
            fi
            if api_answers "$api"; then
                printf 'CASYNC_IPFS_API=%s\n' "$api"
                printf 'CASYNC_IPFS_GATEWAY=%s\n' "$gw"
                log "daemon pid $pid, IPFS_PATH=$dir, swarm /ip4/127.0.0.1/tcp/$swarm_port, log $dir/daemon.log"
                return 0
            fi
            sleep 0.2
        done

        if pid_alive "$pid"; then
            log "API did not answer within ${timeout}s; last log lines:"
            tail -n 20 "$dir/daemon.log" >&2 || true
            do_stop "$dir"
            die "daemon failed to start in $dir"
        fi
        rm -f "$dir/daemon.pid"
        if grep -qi 'address already in use' "$dir/daemon.log" && [[ $attempt -lt 3 ]]; then
            log "port race (address already in use); retrying with new ports"
            continue
        fi
        log "daemon exited early; last log lines:"
        tail -n 20 "$dir/daemon.log" >&2 || true
        die "daemon failed to start in $dir"
    done
    die "daemon failed to start in $dir"
}

case "$cmd" in
    start) do_start "$2" ;;
    stop) do_stop "$2" ;;
esac
