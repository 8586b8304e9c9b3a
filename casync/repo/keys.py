"""Signing keys on disk: this replica's private key and the trusted-signers file.

The private key lives in ``.casync/keys/<replica>.ed25519`` (mode 0600, the directory
0700): never in a block, so no push, bundle or clone can carry it.  Its content is one line,
the base64 of the 32-byte ed25519 seed.  The trusted signers are the file the config key
``trusted_signers`` names (lines ``REPLICA ed25519 BASE64-KEY``, :func:`casync.model.signing.parse_signers`)
plus this replica's own public key, so a repository trusts what it signed itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from casync.errors import InvalidObject, StateRefused, UsageError
from casync.model.names import REPO_DIR
from casync.model.signing import generate_seed, parse_signers, public_key
from casync.settings import trusted_signers_path

__all__ = ["generate_key", "key_file", "load_seed", "trusted_keys"]


def key_file(root: Path, replica: str) -> Path:
    """Where ``replica``'s private key is kept in the repository at ``root``."""
    return root / REPO_DIR / "keys" / f"{replica}.ed25519"


def generate_key(root: Path, replica: str, force: bool = False) -> bytes:
    """Make and store a new private key for ``replica``; return its public key.  An existing
    key is kept unless ``force`` (a lost key cannot be recovered: commits it signed verify
    only where its public key stays trusted)."""
    path = key_file(root, replica)
    if path.exists() and not force:
        raise StateRefused(f"replica {replica} already has a signing key ({path})",
                           hint="'casync key export' prints its public key; --force replaces it")
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    seed = generate_seed()
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(seed) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return public_key(seed)


def load_seed(root: Path, replica: str) -> bytes | None:
    """``replica``'s private key seed, or None when it has none."""
    path = key_file(root, replica)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    if path.stat().st_mode & 0o077:
        raise StateRefused(f"signing key {path} is readable by others",
                           hint=f"chmod 600 {path}")
    try:
        seed = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if len(seed) != 32:
        raise StateRefused(f"signing key {path} is not a casync key (base64 of 32 bytes)",
                           hint="'casync key generate --force' makes a new one")
    return seed


def trusted_keys(root: Path, replica: str, config: Mapping[str, Any]) -> dict[str, list[bytes]]:
    """Public keys trusted per replica: the ``trusted_signers`` file and this replica's own key."""
    out: dict[str, list[bytes]] = {}
    name = trusted_signers_path(config)
    if name is not None:
        path = (root / Path(name).expanduser()).resolve()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UsageError(f"trusted signers file {path} does not exist (config trusted_signers)",
                             hint="create it with lines from 'casync key export', or unset the key") from None
        except UnicodeDecodeError:
            raise UsageError(f"trusted signers file {path} is not UTF-8 text") from None
        try:
            out = parse_signers(text, str(path))
        except InvalidObject as exc:
            raise UsageError(exc.message, hint="each line: REPLICA ed25519 BASE64-KEY ('casync key export')") \
                from None
    seed = load_seed(root, replica)
    if seed is not None:
        own = public_key(seed)
        if own not in out.get(replica, []):
            out.setdefault(replica, []).append(own)
    return out
