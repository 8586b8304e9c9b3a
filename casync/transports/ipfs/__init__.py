"""IPFS remotes: configuration, head records and the linked index, push, fetch, pull, clone
and gateway URLs.

See ``docs/remotes.md`` for the design (head records, discovery across nodes,
what push sends and how fetch stays resumable).
"""

from __future__ import annotations

from casync.store.ipfs import DEFAULT_RETRY, RetryPolicy
from casync.transports.config import (
    Remote,
    RemoteUrl,
    add_remote,
    get_remote,
    is_ipfs_url,
    list_remotes,
    parse_url,
    remove_remote,
    set_remote,
    write_remote,
)
from casync.transports.ipfs.clone import CloneResult, clone, gateway_url, is_published
from casync.transports.ipfs.fetch import DagFetcher, FetchResult, HeadFailure, PullResult, fetch, pull
from casync.transports.ipfs.push import PushResult, missing_blocks, push
from casync.transports.ipfs.records import BranchHead, HeadRecord, RemoteNode, connect

__all__ = [
    "DEFAULT_RETRY",
    "BranchHead",
    "CloneResult",
    "DagFetcher",
    "FetchResult",
    "HeadFailure",
    "HeadRecord",
    "PullResult",
    "PushResult",
    "Remote",
    "RemoteNode",
    "RemoteUrl",
    "RetryPolicy",
    "add_remote",
    "clone",
    "connect",
    "fetch",
    "gateway_url",
    "is_published",
    "get_remote",
    "is_ipfs_url",
    "list_remotes",
    "missing_blocks",
    "parse_url",
    "pull",
    "push",
    "remove_remote",
    "set_remote",
    "write_remote",
]
