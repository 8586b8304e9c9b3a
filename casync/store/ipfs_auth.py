"""Credentials and environment for Kubo's RPC API: the Authorization header from
CASYNC_KUBO_API_AUTH, and whether requests' per-request environment lookups matter."""

from __future__ import annotations

import base64
import os
import urllib.request

from casync.errors import UsageError

__all__ = ["auth_headers", "environment_matters"]


def auth_headers(secret: str, variable: str = "CASYNC_KUBO_API_AUTH",
                 where: str = "the node's API.Authorizations AuthSecret") -> dict[str, str]:
    """The Authorization header for a Kubo node with ``API.Authorizations``: the same
    secret its ``AuthSecret`` holds (``bearer:TOKEN`` or ``basic:USER:PASSWORD``), given in
    CASYNC_KUBO_API_AUTH as ipfs/config/configure.sh takes it (a secret never goes in URLs,
    which end up in the config and in messages); ``variable`` and ``where`` name another
    service's variable and secret (IPFS Cluster's REST API) in the error."""
    if not secret:
        return {}
    kind, _, value = secret.partition(":")
    if kind == "bearer" and value:
        return {"Authorization": f"Bearer {value}"}
    if kind == "basic" and ":" in value:
        return {"Authorization": "Basic " + base64.b64encode(value.encode()).decode()}
    raise UsageError(f"{variable} must be bearer:TOKEN or basic:USER:PASSWORD", hint=f"the same value as {where}")


def environment_matters(url: str) -> bool:
    """Whether requests' per-request environment lookup could change a request to ``url``:
    a proxy variable or a netrc file is set, or (for https) a CA bundle variable."""
    if urllib.request.getproxies():
        return True
    variables = ("NETRC", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if url.startswith("https:") else ("NETRC",)
    if any(os.environ.get(v) for v in variables):
        return True
    home = os.path.expanduser("~")
    return any(os.path.exists(os.path.join(home, n)) for n in (".netrc", "_netrc"))
