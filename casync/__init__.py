"""casync: a git-like, content-addressed, versioned data store on IPLD, for fleets of
edge sites that sync over slow, flaky links.  See README.md and docs/."""

from casync.errors import CasyncError
from casync.repo.repository import Repository

__all__ = ["CasyncError", "Repository", "__version__"]

__version__ = "0.1.0"
