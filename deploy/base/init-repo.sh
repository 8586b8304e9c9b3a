#!/bin/sh
# The agent's init container. Sites of one fleet must hold ONE repository (two `casync init`s
# make two unrelated ones, which refuse to sync), so only the fleet's first site makes it:
#   - CASYNC_FIRST_SITE=true (the base's hub), or a configuration with nothing to clone from
#     (no [peers], static discovery: a single-node site): `casync init --bare` with the
#     agent's site.replica at site.repository;
#   - any other site starts without one, and the agent clones it from the first peer that
#     answers (docs/configuration.md, site.repository).
# A no-op once the repository exists. The keys are read with the agent's own parser, so a
# configuration the agent would refuse stops here too. CASYNC_REPLICA takes site.replica's
# place, as `casync agent --replica` does (edge: the node's name).
set -eu
config="${CASYNC_CONFIG:-/etc/casync/casync.toml}"
settings="$(python3 - "$config" "${CASYNC_REPLICA:-}" <<'PY'
import sys
from pathlib import Path

from casync.agent.config import load_config
from casync.errors import CasyncError

try:
    cfg = load_config(Path(sys.argv[1]), {"replica": sys.argv[2]} if sys.argv[2] else None)
except CasyncError as exc:
    sys.exit(f"casync-init: error: {exc.message}")
alone = not cfg.peers and cfg.discovery.mode == "static"
print(cfg.repository, cfg.replica, cfg.branch, "alone" if alone else "peers")
PY
)"
set -- $settings
repo="$1" replica="$2" branch="$3" peers="$4"
if [ -e "$repo/.casync" ]; then
    echo "casync-init: $repo is already a repository" >&2
    exit 0
fi
if [ "${CASYNC_FIRST_SITE:-false}" != true ] && [ "$peers" != alone ]; then
    echo "casync-init: no repository at $repo: the agent clones it from a peer as replica $replica" >&2
    exit 0
fi
exec casync init --bare --replica "$replica" --branch "$branch" "$repo"
