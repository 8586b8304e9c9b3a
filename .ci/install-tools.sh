#!/usr/bin/env bash
# Install the tools the tests need besides Kubo, on a fresh Debian machine (run as root by .ci/run):
#   * promtool, from Debian's `prometheus` package (lands in /usr/bin/promtool);
#   * chromium, from Debian's package, for the status page's browser test (.ci/install-chromium.sh);
#   * kustomize v5.8.2, built from its Go module into $HOME/.cache/casync/kustomize/ (.ci/build-kustomize.sh).
# Idempotent: what is already there is not installed again. Prints nothing on stdout.
#
# The prometheus package also carries the Prometheus server and a service for it; the server is
# never started here: package scripts are told not to start services (policy-rc.d, see below).
set -euo pipefail

log() { printf 'install-tools: %s\n' "$*" >&2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v promtool >/dev/null 2>&1; then
    start=$SECONDS
    # invoke-rc.d asks /usr/sbin/policy-rc.d whether a package may start its service; exit code
    # 101 means "no". Put one in place only if the machine has none, and remove only that one.
    made_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    trap 'if [[ -n "$made_policy" ]]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends prometheus >&2 || {
        log "apt-get install failed; updating the package lists and retrying"
        apt-get -o DPkg::Lock::Timeout=600 update >&2
        apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends prometheus >&2
    }
    log "installed $(promtool --version 2>&1 | head -n1) in $((SECONDS - start))s"
fi
command -v promtool >/dev/null 2>&1 || { log "error: promtool is still not in PATH"; exit 1; }

bash "$here/build-kustomize.sh" >/dev/null
bash "$here/install-chromium.sh" >&2
