"""casync: a git-like, content-addressed, versioned data store on IPLD, for fleets of
edge sites that sync over slow, flaky links.  See README.md and docs/.

``Repository`` is imported on first use (PEP 562): importing any ``casync.*`` module runs
this file first, and the repository's import chain is most of a small command's start-up,
which the commands that never open one (``--help``, ``monitor`` clients) need not pay.
"""

from __future__ import annotations

from casync.errors import CasyncError

TYPE_CHECKING = False  # typing's own costs ~2 ms; mypy reads any TYPE_CHECKING as true
if TYPE_CHECKING:
    from typing import Any

    from casync.repo.repository import Repository

__all__ = ["CasyncError", "Repository", "__version__"]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Repository":
        from casync.repo.repository import Repository

        return Repository
    raise AttributeError(f"module 'casync' has no attribute {name!r}")
