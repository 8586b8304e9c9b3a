"""MurmurHash3 x64 (128-bit, seed 0), first half: the hash UnixFS HAMT shards use
(multicodec ``murmur3-x64-64``, 0x22).

A HAMT places a name by the bits of this hash, so a second implementation has to
compute it bit for bit: the 64-bit value is ``h1`` of MurmurHash3_x64_128 over the name's
UTF-8 bytes with seed 0, written big-endian (what Kubo's HAMT reads its bucket indices
from, most significant byte first).  Written here from the published algorithm.
"""

from __future__ import annotations

__all__ = ["murmur3_x64_64"]

_M64 = (1 << 64) - 1
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _fmix(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _M64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _M64
    return k ^ (k >> 33)


def _mix_k1(k1: int) -> int:
    return (_rotl((k1 * _C1) & _M64, 31) * _C2) & _M64


def _mix_k2(k2: int) -> int:
    return (_rotl((k2 * _C2) & _M64, 33) * _C1) & _M64


def murmur3_x64_64(data: bytes) -> bytes:
    """The 8-byte big-endian ``h1`` of MurmurHash3_x64_128(data, seed=0)."""
    n = len(data)
    h1 = h2 = 0
    full = n - n % 16
    for i in range(0, full, 16):
        h1 ^= _mix_k1(int.from_bytes(data[i:i + 8], "little"))
        h1 = (_rotl(h1, 27) + h2) & _M64
        h1 = (h1 * 5 + 0x52DCE729) & _M64
        h2 ^= _mix_k2(int.from_bytes(data[i + 8:i + 16], "little"))
        h2 = (_rotl(h2, 31) + h1) & _M64
        h2 = (h2 * 5 + 0x38495AB5) & _M64
    tail = data[full:]
    if len(tail) > 8:
        h2 ^= _mix_k2(int.from_bytes(tail[8:], "little"))
    if tail:
        h1 ^= _mix_k1(int.from_bytes(tail[:8], "little"))
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & _M64
    h2 = (h2 + h1) & _M64
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 = (h1 + h2) & _M64
    return h1.to_bytes(8, "big")
