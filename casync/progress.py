"""Progress reporting hooks: the library reports, the CLI decides how to draw."""

from __future__ import annotations

from typing import Protocol

__all__ = ["NULL_PROGRESS", "Progress"]


class Progress(Protocol):
    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class _NullProgress:
    def start(self, label: str, total: int | None) -> None:
        return None

    def advance(self, n: int) -> None:
        return None

    def finish(self) -> None:
        return None


NULL_PROGRESS: Progress = _NullProgress()
