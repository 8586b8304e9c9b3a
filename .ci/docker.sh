#!/usr/bin/env bash
# A private Docker engine for the container tests: Debian's docker.io, loopback only.
#
#   .ci/docker.sh start DIR   install docker.io (if needed) and start dockerd in the background with
#                             everything under DIR (data root, exec root, socket, log, pid); prints
#                             DOCKER_HOST=unix://DIR/docker.sock
#   .ci/docker.sh stop DIR    stop that dockerd by its PID (TERM, KILL after 30 s), unmount what it
#                             left under DIR and remove DIR; a no-op when nothing runs
#
# The engine has no bridge, no iptables/ip6tables rules and no IP forwarding or masquerading:
# containers run with --network host (loopback ports) and nothing is ever pulled (no registry is
# reachable; images are built FROM scratch): the engine's proxy is a closed loopback port, so a
# pull fails at once without a DNS lookup. Other engineers may run apt at the same time, hence
# the dpkg lock timeout.
set -euo pipefail

log() { printf 'docker.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
usage() { log "usage: $0 start|stop DIR"; exit 2; }

[[ $# -eq 2 ]] || usage
cmd="$1"
dir="$2"
[[ "$dir" == /* ]] || die "DIR must be an absolute path: $dir"

install_engine() {
    local apt=(apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends docker.io)
    local made_policy=0
    # Never let the package start a system-wide dockerd (with a bridge and iptables rules).
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" >&2 || { [[ $made_policy -eq 0 ]] || rm -f /usr/sbin/policy-rc.d; die "apt-get install docker.io failed"; }
    fi
    [[ $made_policy -eq 0 ]] || rm -f /usr/sbin/policy-rc.d
}

alive() { [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; }

start() {
    local t0=$EPOCHREALTIME
    install_engine
    local dockerd=/usr/sbin/dockerd
    [[ -x "$dockerd" ]] || die "$dockerd missing after installing docker.io"
    if [[ -s "$dir/dockerd.pid" ]] && alive "$(cat "$dir/dockerd.pid")"; then
        die "a dockerd already runs for $dir (pid $(cat "$dir/dockerd.pid"))"
    fi
    mkdir -p "$dir/data" "$dir/exec"
    echo '{}' >"$dir/daemon.json"
    local sock="unix://$dir/docker.sock"
    # Should anything ask the engine to pull (an image missing locally), the request goes to a
    # closed loopback port instead of resolving and dialling a registry.
    local noreg=http://127.0.0.1:9
    HTTP_PROXY=$noreg HTTPS_PROXY=$noreg http_proxy=$noreg https_proxy=$noreg NO_PROXY= no_proxy= \
    "$dockerd" --config-file "$dir/daemon.json" --host "$sock" \
        --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/docker.pid" \
        --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --log-level=warn >"$dir/dockerd.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/dockerd.pid"
    local deadline=$((SECONDS + 60))
    until docker -H "$sock" version >/dev/null 2>&1; do
        if ! alive "$pid"; then tail -n 20 "$dir/dockerd.log" >&2; die "dockerd exited"; fi
        if ((SECONDS > deadline)); then tail -n 20 "$dir/dockerd.log" >&2; stop; die "dockerd did not answer within 60 s"; fi
        sleep 0.2
    done
    log "engine $(docker -H "$sock" version --format '{{.Server.Version}}') up (pid $pid) in $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s (install + start)"
    printf 'DOCKER_HOST=%s\n' "$sock"
}

stop() {
    [[ -d "$dir" ]] || return 0
    local pid=""
    [[ -s "$dir/dockerd.pid" ]] && pid="$(cat "$dir/dockerd.pid")"
    if alive "$pid"; then
        # Containers a failed test left behind first (their volumes too), then the engine, which
        # stops its containerd itself.
        local sock="unix://$dir/docker.sock" ids
        ids="$(timeout 30 docker -H "$sock" ps -aq 2>/dev/null || true)"
        # shellcheck disable=SC2086  # one id per word
        [[ -z "$ids" ]] || timeout 60 docker -H "$sock" rm -f -v $ids >/dev/null 2>&1 || true
        kill -TERM "$pid"
        local deadline=$((SECONDS + 30))
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
        if alive "$pid"; then log "dockerd $pid did not stop within 30 s: KILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    local cpid=""
    [[ -s "$dir/exec/containerd/containerd.pid" ]] && cpid="$(cat "$dir/exec/containerd/containerd.pid")"
    if alive "$cpid"; then kill -KILL "$cpid" 2>/dev/null || true; fi
    # Only after a KILL: the container shims of this engine (found by its exec root in their
    # arguments) and the containers' first processes (the shims' children, which take the rest of
    # their PID namespace with them).
    local p shims=() victims=()
    for p in /proc/[0-9]*; do
        if tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -q -- "-address $dir/exec/containerd/"; then
            shims+=("${p#/proc/}")
        fi
    done
    if ((${#shims[@]})); then
        for p in /proc/[0-9]*; do
            local ppid   # /proc/PID/stat: "pid (comm) state ppid ..."
            ppid="$(sed -e 's/^.*) //' 2>/dev/null <"$p/stat" | cut -d' ' -f2 || true)"
            if [[ " ${shims[*]} " == *" $ppid "* ]]; then victims+=("${p#/proc/}"); fi
        done
        kill -KILL "${victims[@]}" "${shims[@]}" 2>/dev/null || true
    fi
    # dockerd leaves its network namespace handle (and, if killed, overlay mounts) mounted under DIR.
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
    rm -rf "$dir"
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    *) usage ;;
esac
