"""Start-up of the read commands (issue 15: ``casync status`` on 100,000 unchanged files must
not be slower than ``git status``; after the native walk, most of what is left is start-up).

No timing here: each test runs a command in a fresh interpreter and checks which modules it
imported, naming the heavy ones it must not need, so a top-level import that drags one back
in fails the test.  ``casync --help`` lists the commands from the table in casync.cli.main;
the table is checked against the real commands so it cannot drift.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click
import pytest

from casync.cli.main import _COMMANDS, _load_command, main
from tests.conftest import Cli, write

# Needed by no read command: the IPFS client and its codecs (~70 ms), ed25519 (cryptography),
# the chunker and compressor, the HTTP server and metrics, the remote, sync, merge and fsck
# code, other command groups, and the monitor daemon's ctypes/inotify side.
NOT_FOR_READS = frozenset({
    "cryptography", "ipfshttpclient", "multiformats", "pyfastcdc", "zstandard", "waitress", "prometheus_client",
    "shutil", "ctypes", "socket", "http.client", "importlib.metadata", "casync.transports", "casync.transfer",
    "casync.merge", "casync.repo.fsck", "casync.repo.mergebase", "casync.worktree.merging",
    "casync.worktree.monitord", "casync.worktree.inotify", "casync.cli.repo", "casync.cli.remote",
    "casync.cli.sync", "casync.cli.merge", "casync.cli.monitor",
})
# What changes or hashes a working tree (checkout, commit streaming, file snapshots, the
# scratch store, per-directory entry lookups): a clean status reads no file, so it needs none
# of it; the history commands never touch the working tree at all.
WORKTREE_WRITES = frozenset({
    "casync.worktree.checkout", "casync.worktree.stream", "casync.worktree.snapshot",
    "casync.worktree.content", "casync.worktree.edit", "casync.store.memory",
})

_RUN = ("import sys\nfrom casync.cli.main import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "sys.stdout.flush()\nsys.stderr.write('\\nmodules: ' + ' '.join(sorted(sys.modules)))\n")


def _modules(cwd: Path, *args: str) -> tuple[str, set[str]]:
    """What ``casync ARGS`` printed, and every module it had imported at its end."""
    r = subprocess.run([sys.executable, "-c", _RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, set(r.stderr.rpartition("\nmodules: ")[2].split())


def _loaded(loaded: set[str], names: frozenset[str]) -> list[str]:
    """The modules of ``names`` (packages with their submodules) found in ``loaded``."""
    return sorted(m for m in loaded if m in names or any(m.startswith(n + ".") for n in names))


@pytest.fixture
def clean(cli: Cli) -> Cli:
    """A committed working tree the stat cache vouches for (past the racily-clean second)."""
    cli("init")
    write(cli.cwd, "a.txt", "a\n")
    write(cli.cwd, "d/b.txt", "b\n")
    time.sleep(1.1)
    cli("commit", "-m", "one")
    return cli


@pytest.mark.parametrize("args", [("status",), ("status", "--json")])
def test_clean_status_loads_no_worktree_writer(clean: Cli, args: tuple[str, ...]) -> None:
    """A clean status is the stat cache's digest against the native walk's: it imports
    status, the monitor client and the state files, nothing of WORKTREE_WRITES or
    NOT_FOR_READS, and with no monitor running not even the C ``_socket``."""
    printed, loaded = _modules(clean.cwd, *args)
    assert ("nothing to commit" in printed) if args == ("status",) else '"clean": true' in printed
    assert {"casync.cli.tree", "casync.worktree.status", "casync.worktree.monitor"} <= loaded  # the listing is real
    assert not _loaded(loaded, NOT_FOR_READS | WORKTREE_WRITES | {"casync.cli.history", "_socket"})


def test_status_with_changes_still_works_without_them(clean: Cli) -> None:
    """The imports moved into the functions of ways 3 and 4 are there when a file changed."""
    write(clean.cwd, "a.txt", "changed\n")
    write(clean.cwd, "new.txt", "new\n")
    printed, loaded = _modules(clean.cwd, "status")
    assert "modified:  a.txt" in printed and "new:       new.txt" in printed
    assert "casync.worktree.snapshot" in loaded


@pytest.mark.parametrize("args", [("log", "-n", "1"), ("show", "HEAD"), ("cat", "HEAD:a.txt"), ("ls", "HEAD"),
                                  ("diff", "HEAD", "HEAD"), ("branch",)])
def test_read_commands_load_no_worktree_code(clean: Cli, args: tuple[str, ...]) -> None:
    """The history commands read blocks and refs: no working-tree module at all (status's
    walk, the monitor client) and nothing of NOT_FOR_READS."""
    _printed, loaded = _modules(clean.cwd, *args)
    assert "casync.cli.history" in loaded
    assert not _loaded(loaded, NOT_FOR_READS | WORKTREE_WRITES | {"casync.worktree", "casync.porcelain"})


def test_help_imports_no_command_module(tmp_path: Path) -> None:
    """``casync --help`` (and a bare ``casync``) print every command's summary from the
    table: no command module, no repository code."""
    printed, loaded = _modules(tmp_path, "--help")
    assert all(f"  {name} " in printed for name in _COMMANDS)
    assert not _loaded(loaded, frozenset({"casync.repo", "casync.store", "casync.worktree", "casync.porcelain"}))
    assert not [m for m in loaded if m.startswith("casync.cli.") and m not in ("casync.cli.main", "casync.cli.common")]


def test_table_matches_the_commands() -> None:
    """Each summary in _COMMANDS is what the real command's help shortens to, at any width,
    so ``--help`` from the table prints what it would print with every command loaded."""
    assert set(main.list_commands(click.Context(main))) == set(_COMMANDS)
    for name, (_module, _attr, summary) in _COMMANDS.items():
        real = _load_command(name)
        assert real is not None and not real.hidden and not real.short_help
        stand_in = click.Command(name, help=summary)
        for limit in (10, 30, 45, 60, 80, 200, 10_000):
            assert stand_in.get_short_help_str(limit) == real.get_short_help_str(limit), (name, limit)


@pytest.mark.parametrize("width", ["40", "80", "200"])
def test_help_from_the_table_equals_help_from_the_commands(tmp_path: Path, width: str) -> None:
    """The listing printed without loading a command equals click's listing of the loaded
    commands (same rows, same truncation at the terminal's width)."""
    env = {"COLUMNS": width, "PATH": ""}
    fresh = subprocess.run([sys.executable, "-m", "casync", "--help"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60, env=env)
    loaded_first = ("import sys\nfrom casync.cli.main import _COMMANDS, main, _lazy_get_command\nimport click\n"
                    "ctx = click.Context(main)\nfor name in _COMMANDS:\n    _lazy_get_command(ctx, name)\n"
                    "main(['--help'], prog_name='casync')\n")
    full = subprocess.run([sys.executable, "-c", loaded_first], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=env)
    assert fresh.returncode == 0 and full.returncode == 0, fresh.stderr + full.stderr
    assert "Commands:" in fresh.stdout and fresh.stdout == full.stdout


def test_version_is_the_installed_one() -> None:
    """``--version`` prints casync.__version__ (reading the package metadata costs ~20 ms);
    it must be the version pip installed."""
    from importlib.metadata import version

    from casync import __version__

    assert __version__ == version("casync")
    r = subprocess.run([sys.executable, "-m", "casync", "--version"], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == f"casync, version {__version__}"


def test_package_import_is_light() -> None:
    """``import casync`` loads no repository code; ``casync.Repository`` still works (PEP 562)."""
    code = ("import sys, casync\nassert 'casync.repo.repository' not in sys.modules\n"
            "from casync import Repository\nassert Repository is casync.Repository\n"
            "assert Repository.__module__ == 'casync.repo.repository'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_console_entry_pauses_the_gc_only_while_loading(clean: Cli) -> None:
    """The ``casync`` script (casync.__main__.run) imports with the cyclic GC off and then
    freezes what was built; the command itself runs with the GC on.  The in-process entry
    that tests and library callers use (casync.cli.main.main) leaves the GC as it was."""
    probe = ("import atexit, gc, sys\n"
             "import casync.worktree.status as st\n"
             "real = st.status\n"
             "def status(*a, **k):\n"
             "    print('during', gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)\n"
             "    return real(*a, **k)\n"
             "st.status = status\n"
             "atexit.register(lambda: print('after', gc.isenabled(), file=sys.stderr))\n")
    entry = probe + "sys.argv = ['casync', 'status']\nfrom casync.__main__ import run\nrun()\n"
    r = subprocess.run([sys.executable, "-c", entry], cwd=clean.cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nothing to commit" in r.stdout, r.stderr
    assert r.stderr.split() == ["during", "True", "True", "after", "True"]
    in_process = probe + "from casync.cli.main import main\nmain(['status'])\n"
    r = subprocess.run([sys.executable, "-c", in_process], cwd=clean.cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.split() == ["during", "True", "False", "after", "True"], r.stderr
