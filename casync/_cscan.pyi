from collections.abc import Callable

def walk(root: str, ignored: Callable[[str, bool], bool] | None,
         unstorable: Callable[[str], str | None]) -> tuple[bytes, list[str]]: ...
