"""``python -m casync`` and the ``casync`` console script (pyproject.toml) run the CLI.

The cyclic garbage collector is paused before anything else is imported and resumed once
the command's module is (casync.cli.main.console), with what the imports built frozen: it
lives until the process exits, so tracing it (some 30 collections while click, the
repository code and the command load, and its share of every later one) is wasted on a
command such as ``status`` or ``log`` that is mostly start-up (issue 15; ~5 ms of a 60 ms
``casync log``).  Only this entry does it: importing casync.cli.main leaves the GC alone.
"""

import gc

__all__ = ["run"]


def run() -> None:
    gc.disable()
    from casync.cli.main import console  # click and the rest, imported with the collector off

    console()


if __name__ == "__main__":
    run()
