"""CID helpers.

Inside casync a CID is its **binary** form (``bytes``: version, codec, multihash).
Binary CIDs are cheap to hash, compare and use as LMDB keys; the text form
(CIDv1, multibase base32, ``b...``) is produced only at the edges.

The multiformats library is the authority for the encodings: the binary prefix for
each (codec, hash) pair is computed once by it and cached, and text CIDs from users
are parsed and validated by it.  Hashing itself calls blake3/hashlib directly, which
is ~30% faster than going through ``multihash.digest`` on 1 MiB blocks.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from functools import cache

import blake3

# multiformats is imported where it is used: it costs ~50 ms at start-up, and the hot
# paths (hashing, text CIDs, cached prefixes) never need it.
from casync.errors import BadVarint, CorruptBlock, UsageError

__all__ = [
    "DAG_CBOR",
    "DAG_PB",
    "HASHES",
    "RAW",
    "Cid",
    "cid_codec",
    "cid_hash",
    "is_empty_block",
    "cid_str",
    "compute_cid",
    "digest_fn",
    "parse_cid",
    "short",
    "is_cid",
    "is_cid_v0",
    "read_varint",
    "varint",
    "verify_block",
]

Cid = bytes
"""A binary CID: CIDv1 for everything casync writes; a CIDv0 (the 34-byte sha2-256
multihash of a dag-pb block) only where a DAG from elsewhere links with one, e.g. one
imported from ``ipfs add`` with its defaults.  Kept as it is: rewriting it would change the
bytes, and so the CIDs, of every block that links to it."""

_V0_PREFIX = b"\x12\x20"  # a CIDv0: sha2-256 multihash (dag-pb implied), no version byte

RAW = 0x55
DAG_PB = 0x70
DAG_CBOR = 0x71

_CODEC_NAMES = {RAW: "raw", DAG_PB: "dag-pb", DAG_CBOR: "dag-cbor"}


def _blake3(data: bytes | memoryview) -> bytes:
    return blake3.blake3(data).digest()


def _sha256(data: bytes | memoryview) -> bytes:
    import hashlib  # loads OpenSSL: only repositories and imports that use sha2-256 pay for it

    return hashlib.sha256(data).digest()


HASHES: dict[str, Callable[[bytes | memoryview], bytes]] = {"blake3": _blake3, "sha2-256": _sha256}
"""Supported multihash functions (both with 32-byte digests)."""


_MULTIHASH_CODES = {"blake3": 0x1E, "sha2-256": 0x12}  # multicodec table; both 32-byte digests


@cache
def _prefix(codec: int, hash_name: str) -> bytes:
    """The binary CID bytes that precede the digest: version 1, codec, multihash code and
    digest length, each an unsigned varint (tests check this against multiformats)."""
    return b"\x01" + varint(codec) + varint(_MULTIHASH_CODES[hash_name]) + varint(32)


@cache
def _known_prefixes() -> dict[bytes, tuple[int, str]]:
    return {_prefix(c, h): (c, h) for c in _CODEC_NAMES for h in HASHES} | {_V0_PREFIX: (DAG_PB, "sha2-256")}


def is_cid_v0(cid: Cid) -> bool:
    """``cid`` is a binary CIDv0 (see :data:`Cid`)."""
    return len(cid) == 34 and cid[:2] == _V0_PREFIX


_SMALL_VARINTS = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    """Unsigned LEB128 varint (multiformats unsigned-varint, protobuf varint, CAR lengths)."""
    if 0 <= n < 0x80:
        return _SMALL_VARINTS[n]
    if n < 0:
        raise ValueError("varint must be non-negative")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_varint(buf: bytes | memoryview, pos: int, what: str = "varint") -> tuple[int, int]:
    """The unsigned varint at ``buf[pos:]`` and the position after it.  The one reader for
    every format casync decodes (protobuf, CIDs, CAR lengths): minimal encodings of at
    most 64 bits only, else :class:`BadVarint` naming ``what``."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise BadVarint(f"truncated {what}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and shift:
                raise BadVarint(f"non-minimal {what}")
            return result, pos
        shift += 7
        if shift > 63:
            raise BadVarint(f"{what} too long")


def digest_fn(hash_name: str) -> Callable[[bytes | memoryview], bytes]:
    try:
        return HASHES[hash_name]
    except KeyError:
        raise UsageError(
            f"unsupported hash function {hash_name!r}", hint=f"use one of: {', '.join(HASHES)}"
        ) from None


def compute_cid(codec: int, data: bytes | memoryview, hash_name: str = "blake3") -> Cid:
    """The CIDv1 of ``data`` under ``codec`` and ``hash_name``."""
    return _prefix(codec, hash_name) + digest_fn(hash_name)(data)


@cache
def _empty_blocks() -> frozenset[Cid]:
    return frozenset(compute_cid(RAW, b"", h) for h in HASHES)


def is_empty_block(cid: Cid) -> bool:
    """Whether ``cid`` is the zero-length raw block (the content of an empty file) under a
    supported hash: its bytes are known, so it is never worth asking a node for (Kubo's
    bitswap never sends a zero-length block, it only answers "have")."""
    return cid in _empty_blocks()


def cid_hash(cid: Cid) -> str | None:
    """The name of the supported hash function ``cid`` was made with (None if another)."""
    known = _known_prefixes().get(cid[:-32])
    return known[1] if known is not None else None


def cid_codec(cid: Cid) -> int:
    """The codec of a binary CID (raw, dag-pb or dag-cbor)."""
    known = _known_prefixes().get(cid[:-32])
    if known is not None:
        return known[0]
    from multiformats import CID

    return int(CID.decode(cid).codec.code)


_NOT_A_CID = (ValueError, LookupError)
"""What ``multiformats.CID.decode`` raises for text or bytes that are not a CID (its
multibase, multicodec and multihash errors derive from these)."""


def verify_block(cid: Cid, data: bytes | memoryview, where: str = "store") -> None:
    """Raise :class:`CorruptBlock` unless ``data`` hashes to ``cid``.

    Called on every block read from disk or received from elsewhere.
    """
    known = _known_prefixes().get(cid[:-32])
    if known is None:
        from multiformats import CID

        try:
            parsed = CID.decode(cid)
            name = parsed.hashfun.name
            if name not in HASHES:
                raise CorruptBlock(cid_str(cid), where)
            ok = bytes(parsed.raw_digest) == HASHES[name](data)
        except CorruptBlock:
            raise
        except _NOT_A_CID:
            raise CorruptBlock(cid.hex(), where) from None
    else:
        ok = HASHES[known[1]](data) == cid[-32:]
    if not ok:
        raise CorruptBlock(cid_str(cid), where)


def is_cid(raw: bytes) -> bool:
    """``raw`` is a well-formed binary CID (any codec and hash multiformats knows)."""
    if raw[:-32] in _known_prefixes():
        return True
    from multiformats import CID

    try:
        return bytes(CID.decode(raw)) == raw
    except _NOT_A_CID:
        return False


def cid_str(cid: Cid) -> str:
    """Text form: multibase base32 (lower case, no padding), as Kubo prints CIDv1; a CIDv0
    as Kubo prints it too (base58btc, ``Qm...``), the only text form it has."""
    if is_cid_v0(cid):
        return _base58btc(cid)  # without importing multiformats (the status path prints CIDs)
    return "b" + base64.b32encode(cid).decode("ascii").lower().rstrip("=")


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58btc(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def short(cid: Cid, n: int = 20) -> str:
    """An abbreviated text CID for human output (the full form is what scripts get)."""
    s = cid_str(cid)
    return s[:n]


def parse_cid(text: str) -> Cid:
    """Parse a text CID; raise :class:`UsageError` naming it when it is not one.  casync's
    own form (base32, a prefix it writes) is decoded here: importing multiformats costs
    ~30 ms of start-up that 'casync status' would pay for reading one recorded CID."""
    if text[:1] == "b" and len(text) == 59 and text.islower():
        try:
            raw = base64.b32decode(text[1:].upper() + "=" * (-len(text[1:]) % 8))
        except ValueError:
            raw = b""
        if raw[:-32] in _known_prefixes() and cid_str(raw) == text:
            return raw
    from multiformats import CID

    try:
        return bytes(CID.decode(text))
    except _NOT_A_CID:
        raise UsageError(f"not a valid CID: {text!r}") from None
