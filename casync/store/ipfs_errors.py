"""How Kubo's failures become casync errors, decided once for every call path (the
ipfshttpclient calls and the raw ``block/get`` connection alike): connection refused/reset,
timeouts, broken responses and 5xx statuses without a Kubo error body are *transient*
(retried by :mod:`casync.store.retry`); Kubo command errors and 4xx are permanent, except
the errors of a node that is starting or shutting down (:data:`NODE_GOING_AWAY`).  Every
error names the node's URL."""

from __future__ import annotations

import json
import os
import socket

from casync.errors import RemoteAuthError, RemoteError, RemoteNotFound, RemoteTimeout, RemoteUnreachable

__all__ = ["NODE_GOING_AWAY", "DagImportRejected", "body_error", "command_error", "is_not_found", "raw_error", "reason",
           "status_error"]


_NOT_FOUND = ("not found", "could not find", "no such", "does not exist", "not pinned", "deadline exceeded")
"""Kubo's command errors carry only text: these mean "the node has no such block, pin or file"
(``deadline exceeded``: it could not find the block within the request's timeout).  This is the
one place casync reads Kubo's message text; everything else tells failures apart by type."""


def is_not_found(message: str) -> bool:
    m = message.lower()
    return any(marker in m for marker in _NOT_FOUND)


NODE_GOING_AWAY = ("repo not open",)
"""Kubo command errors that mean the node is shutting down (or not yet up), not that the
command is wrong: transient."""


class DagImportRejected(RemoteError):
    """``dag/import`` refused a block its codec cannot decode (a valid block all the same, which
    ``block/put`` stores as it is)."""


def command_error(where: str, what: str, message: str) -> RemoteError:
    """A Kubo command error: permanent, unless the node is going away (:data:`NODE_GOING_AWAY`)."""
    going_away = any(m in message for m in NODE_GOING_AWAY)
    if not going_away and "import failed at block" in message:
        return DagImportRejected(f"{where}: {what} failed: {message}")
    if not going_away and is_not_found(message):
        return RemoteNotFound(f"{where}: {what} failed: {message}")
    return RemoteError(f"{where}: {what} failed: {message}", transient=going_away)


def status_error(where: str, what: str, status: object) -> RemoteError:
    """An HTTP error status from the node: 5xx is transient (retried), the rest permanent."""
    if isinstance(status, int) and status >= 500:
        return RemoteError(f"{where} answered HTTP {status} ({what})", transient=True)
    hint = None
    if status == 404:
        hint = "is that the RPC API port? (the gateway port does not serve /api/v0)"
    elif status in (401, 403):
        hint = ("the node requires RPC authorization (API.Authorizations): set CASYNC_KUBO_API_AUTH to its "
                "AuthSecret (bearer:TOKEN or basic:USER:PASSWORD)" if not os.environ.get("CASYNC_KUBO_API_AUTH")
                else "the node refused CASYNC_KUBO_API_AUTH: check it against the node's API.Authorizations")
    if status in (401, 403):
        return RemoteAuthError(f"{where} answered HTTP {status} ({what})", hint=hint)
    return RemoteError(f"{where} answered HTTP {status} ({what})", hint=hint)


def reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Connection aborted", "Name or service not known",
                   "No route to host", "timed out", "Remote end closed"):
        if marker.lower() in text.lower():
            return marker.lower()
    return text if len(text) < 200 else text[:200] + "..."


def raw_error(where: str, exc: Exception, what: str) -> RemoteError:
    """A socket or HTTP-framing failure of a request (no answer to classify): transient."""
    if isinstance(exc, TimeoutError):
        return RemoteTimeout(f"the {where} did not answer in time ({what})",
                           hint="is it overloaded, or is that not its RPC API port (5001 by default)?")
    if isinstance(exc, ConnectionRefusedError | socket.gaierror):
        return RemoteUnreachable(f"cannot connect to the {where} ({what}): {reason(exc)}",
                                 hint="is the Kubo daemon running, and is that its RPC API port "
                                      "(see 'casync remote -v')?")
    return RemoteUnreachable(f"the connection to the {where} broke ({what}): {reason(exc)}")


def body_error(where: str, status: int, body: bytes, what: str) -> RemoteError:
    """A non-200 answer: Kubo's JSON ``Message`` is a command error, else the status decides."""
    try:
        message = json.loads(body).get("Message")
    except (ValueError, AttributeError, RecursionError):
        message = None
    if isinstance(message, str):
        return command_error(where, what, message)
    return status_error(where, what, status)
