#!/bin/sh
# Initialise the agent's bare repository on the first start of a site; a no-op afterwards.
# The replica id is casync.toml's `replica`, or CASYNC_DEFAULT_REPLICA (the node name on edge
# nodes, where one configuration serves every node and each node is its own replica).
set -eu
repo="${CASYNC_REPO:-/data/repo}"
config="${CASYNC_CONFIG:-/etc/casync/casync.toml}"
if [ -e "$repo/.casync" ]; then
    echo "casync-init: $repo is already a repository" >&2
    exit 0
fi
replica="$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb")).get("replica", ""))' \
    "$config")"
replica="${replica:-${CASYNC_DEFAULT_REPLICA:-}}"
[ -n "$replica" ] || { echo "casync-init: error: no replica id (casync.toml: replica)" >&2; exit 1; }
exec casync init --bare --replica "$replica" "$repo"
