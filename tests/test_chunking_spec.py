"""docs/design.md §2 is enough to cut files as casync does: the cut-point algorithm written
from its text, with the gear table and masks read out of the document, agrees with casync's
chunker, and the pinned test vectors hold for both."""

from __future__ import annotations

import io
import re
from pathlib import Path

import blake3
import pytest

from casync.model.chunking import CDC_AVG_PARAM, CDC_MAX, CDC_MIN, chunker_for

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"
U64 = (1 << 64) - 1

VECTORS = {  # (blake3 XOF key or None for zeros, length) -> chunk lengths, as in §2.2
    (b"casync chunking vector 0", 4 << 20): [470174, 334531, 209805, 358726, 200210, 133719, 376784, 99338,
                                             441328, 227166, 262380, 272477, 188863, 308271, 310532],
    (b"casync chunking test vector", 4 << 20): [264017, 200366, 215970, 265513, 259274, 326709, 256175, 225900,
                                                424267, 294824, 494888, 295353, 208809, 225905, 200391, 35943],
    (None, 5 << 19): [1048576, 1048576, 524288],
    (b"casync chunking vector 0", CDC_MIN): [CDC_MIN],
    (b"casync chunking vector 0", CDC_MIN + 1): [CDC_MIN + 1],
}


def _spec() -> tuple[list[int], dict[str, int]]:
    """The gear table and the parameter table of §2.1/§2.3, parsed from the document."""
    text = DESIGN.read_text()
    block = re.search(r"```gear\n(.*?)```", text, re.S)
    assert block is not None, "design.md §2.3 lost its gear block"
    gear: list[int] = []
    for line in block.group(1).splitlines():
        index, _, values = line.partition(":")
        assert int(index) == len(gear)
        gear += [int(v, 16) for v in values.split()]
    params = {}
    for name in ("MIN", "AVG", "MAX"):
        found = re.search(rf"^\| `{name}` \| ([\d ]+) \(", text, re.M)
        assert found is not None, name
        params[name] = int(found.group(1).replace(" ", ""))
    for name in ("MASK_S", "MASK_L"):
        found = re.search(rf"^\| `{name}` .*`(0x[0-9a-f]{{16}})`", text, re.M)
        assert found is not None, name
        params[name] = int(found.group(1), 16)
    return gear, params


def _spec_cuts(data: bytes, gear: list[int], p: dict[str, int]) -> list[int]:
    """§2.1's pseudocode, one byte at a time."""
    out, offset, total = [], 0, len(data)
    while offset < total:
        n = total - offset
        length = n
        if n > p["MIN"]:
            end = min(n, p["MAX"])
            center = min(p["AVG"], end)
            s, m, e = p["MIN"] // 2 * 2, center // 2 * 2, end // 2 * 2
            h, length = 0, end
            for i in range(s, e):
                h = (2 * h + gear[data[offset + i]]) & U64
                if h & (p["MASK_S"] if i < m else p["MASK_L"]) == 0:
                    length = i
                    break
        out.append(length)
        offset += length
    return out


def _input(key: bytes | None, length: int) -> bytes:
    return bytes(length) if key is None else blake3.blake3(key).digest(length=length)


def _casync_cuts(data: bytes) -> list[int]:
    return [len(c) for c in chunker_for("cdc").chunks(io.BytesIO(data))]


def test_the_documented_parameters_are_the_chunkers() -> None:
    gear, p = _spec()
    assert len(gear) == 256 and len(set(gear)) == 256 and all(0 <= g <= U64 for g in gear)
    assert (p["MIN"], p["AVG"], p["MAX"]) == (CDC_MIN, CDC_AVG_PARAM, CDC_MAX)
    assert bin(p["MASK_S"]).count("1") == 19 and bin(p["MASK_L"]).count("1") == 17


@pytest.mark.parametrize(("key", "length"), list(VECTORS))
def test_vectors_hold_for_casync_and_for_the_spec(key: bytes | None, length: int) -> None:
    data = _input(key, length)
    assert _casync_cuts(data) == VECTORS[(key, length)]
    assert _spec_cuts(data, *_spec()) == VECTORS[(key, length)]


def test_the_spec_agrees_on_edited_and_odd_sized_inputs() -> None:
    """Beyond the pinned vectors: an insertion, an odd length (the unhashed last byte) and a
    tail shorter than AVG (the centre moves to the end)."""
    base = _input(b"casync chunking vector 0", 3 << 20)
    gear, p = _spec()
    for data in (base[:1_500_000] + b"x" + base[1_500_000:], base[: (1 << 20) + 131_071], base[:150_001]):
        assert _spec_cuts(data, gear, p) == _casync_cuts(data)
