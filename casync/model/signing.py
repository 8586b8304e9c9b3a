"""Commit signatures: ed25519 over a commit's signing bytes (docs/design.md §4.2).

Pure: keys arrive as bytes and text, nothing is read from disk here (the repository reads
its key files, :mod:`casync.repo.keys`).  The signature is the 64-byte ed25519 signature of
:meth:`Commit.signing_bytes` — the commit's canonical DAG-CBOR without ``sig`` — stored as the
commit's ``sig`` field; a verifier decodes the commit, re-encodes it without ``sig`` and
checks those bytes against the public keys trusted for the commit's ``replica``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from casync.errors import InvalidObject, UsageError
from casync.model.commit import Commit
from casync.model.names import is_replica_name

if TYPE_CHECKING:  # imported where a key is used: cryptography is ~6 ms of every command's start-up
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["KEY_TYPE", "SIGNATURE_SIZE", "SignatureStatus", "Verdict", "format_signer_line", "generate_seed",
           "key_id", "parse_signers", "public_key", "sign_commit", "verify_commit"]

KEY_TYPE = "ed25519"
SIGNATURE_SIZE = 64
_SEED_SIZE = 32

SignatureStatus = Literal["valid", "invalid", "unsigned", "unknown-key"]


@dataclass(frozen=True)
class Verdict:
    """What a commit's signature says: ``valid`` (by ``key_id``), ``invalid`` (the bytes do
    not verify under any key trusted for the replica, or are not a signature), ``unsigned``,
    or ``unknown-key`` (signed, but no key is trusted for its replica)."""

    status: SignatureStatus
    key_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "valid"

    def to_json(self) -> dict[str, str | None]:
        return {"status": self.status, "key_id": self.key_id}


def generate_seed() -> bytes:
    """A new private key: the 32-byte ed25519 seed (RFC 8032)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes_raw()


def _private(seed: bytes) -> Ed25519PrivateKey:
    if len(seed) != _SEED_SIZE:
        raise UsageError(f"an ed25519 private key is {_SEED_SIZE} bytes, not {len(seed)}")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a seed."""
    return _private(seed).public_key().public_bytes_raw()


def key_id(public: bytes) -> str:
    """A short, stable name for a public key: ``ed25519:`` and the first 16 hex digits of
    the SHA-256 of its 32 raw bytes."""
    import hashlib  # OpenSSL: loaded by the commands that name keys, not at every start-up

    return f"{KEY_TYPE}:{hashlib.sha256(public).hexdigest()[:16]}"


def sign_commit(commit: Commit, seed: bytes) -> Commit:
    """``commit`` with ``sig`` set to the ed25519 signature of its signing bytes."""
    return dataclasses.replace(commit, signature=_private(seed).sign(commit.signing_bytes()))


def verify_commit(commit: Commit, trusted: Mapping[str, Iterable[bytes]]) -> Verdict:
    """Check ``commit``'s signature against the public keys ``trusted`` for its replica."""
    if commit.signature is None:
        return Verdict("unsigned")
    keys = list(trusted.get(commit.replica, ()))
    if not keys:
        return Verdict("unknown-key")
    if len(commit.signature) != SIGNATURE_SIZE:
        return Verdict("invalid")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    message = commit.signing_bytes()
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(commit.signature, message)
        except (InvalidSignature, ValueError):
            continue
        return Verdict("valid", key_id(key))
    return Verdict("invalid")


def format_signer_line(replica: str, public: bytes) -> str:
    """One trusted-signers line: ``REPLICA ed25519 BASE64-KEY`` (what ``casync key export`` prints)."""
    return f"{replica} {KEY_TYPE} {base64.b64encode(public).decode()}"


def parse_signers(text: str, where: str = "trusted signers") -> dict[str, list[bytes]]:
    """Parse a trusted-signers file: per line ``REPLICA ed25519 BASE64-KEY``; blank lines and
    lines starting with ``#`` are skipped.  A malformed line is an error naming it, since a
    silently skipped key would make good commits look forged."""
    out: dict[str, list[bytes]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3 or parts[1] != KEY_TYPE or not is_replica_name(parts[0]):
            raise InvalidObject(f"{where}:{number}: expected 'REPLICA {KEY_TYPE} BASE64-KEY'")
        try:
            key = base64.b64decode(parts[2], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidObject(f"{where}:{number}: the key is not base64") from None
        if len(key) != 32:
            raise InvalidObject(f"{where}:{number}: an ed25519 public key is 32 bytes, not {len(key)}")
        out.setdefault(parts[0], []).append(key)
    return out
