"""A new site from a USB stick: `casync clone FILE.car DIR` and `casync init --repository-id`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from casync import Repository

from .conftest import Cli, write


def _site_with_bundle(tmp_path: Path) -> tuple[Cli, bytes]:
    Cli(tmp_path)("init", "a", "--replica", "site-a", "--hash", "sha2-256", "--chunker", "fixed")
    a = Cli(tmp_path / "a")
    data = os.urandom(300_000)
    write(a.cwd, "data/sensor.bin", data)
    write(a.cwd, "run.sh", "#!/bin/sh\n", mode=0o755)
    a("commit", "-m", "one")
    write(a.cwd, "notes.txt", "second\n")
    a("commit", "-m", "two")
    a("branch", "field")
    a("bundle", "create", "../usb.car", "main", "field")
    return a, data


def test_clone_from_a_bundle_makes_a_new_replica_of_the_same_repository(tmp_path: Path) -> None:
    a, data = _site_with_bundle(tmp_path)
    out = json.loads(Cli(tmp_path)("clone", "usb.car", "b", "--replica", "site-b", "--json").stdout)
    assert out["branch"] == "main" and out["replica"] == "site-b" and out["commits"] == 2
    b = Cli(tmp_path / "b")
    assert (b.cwd / "data/sensor.bin").read_bytes() == data
    assert os.access(b.cwd / "run.sh", os.X_OK)
    with Repository.open(a.cwd) as ra, Repository.open(b.cwd) as rb:
        assert (rb.repo_id, rb.hash_name, rb.chunker_name) == (ra.repo_id, "sha2-256", "fixed")
        assert rb.branches() == {"main": ra.branches()["main"]}
        assert rb.refs.get_ref("bundles/field") == ra.branches()["field"]
    assert json.loads(b("status", "--json").stdout)["clean"]
    b("fsck")
    # the new site syncs with the old one like any clone
    write(b.cwd, "from-b.txt", "b\n")
    b("commit", "-m", "from b")
    b("sync", "../a")
    assert (a.cwd / "from-b.txt").read_text() == "b\n"


def test_clone_from_a_bundle_refuses_what_cannot_start_a_site(tmp_path: Path) -> None:
    a, _data = _site_with_bundle(tmp_path)
    r = Cli(tmp_path)("clone", "usb.car", "b", "--replica", "site-a", ok=False)  # the source's own id
    assert r.exit_code == 2 and "replica 'site-a' is already in use" in r.stderr and "hint:" in r.stderr
    assert not (tmp_path / "b").exists()
    r = Cli(tmp_path)("clone", "usb.car", "b", "--branch", "nope", ok=False)
    assert r.exit_code == 2 and "has no branch 'nope'" in r.stderr and "field, main" in r.stderr
    write(a.cwd, "three.txt", "3")
    a("commit", "-m", "three")
    a("bundle", "create", "../since.car", "main", "--since", "main~1")
    r = Cli(tmp_path)("clone", "since.car", "c", ok=False)
    assert r.exit_code == 2 and "made with --since" in r.stderr and "hint: create a full bundle" in r.stderr
    assert not (tmp_path / "c").exists()
    damaged = bytearray((tmp_path / "usb.car").read_bytes())
    damaged[len(damaged) // 2] ^= 1
    (tmp_path / "bad.car").write_bytes(bytes(damaged))
    r = Cli(tmp_path)("clone", "bad.car", "d", ok=False)
    assert r.exit_code == 1 and "is damaged" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_init_with_a_repository_id_then_unbundle(tmp_path: Path) -> None:
    a, data = _site_with_bundle(tmp_path)
    with Repository.open(a.cwd) as ra:
        repo_id = ra.repo_id
    Cli(tmp_path)("init", "c", "--replica", "site-c", "--repository-id", repo_id, "--hash", "sha2-256",
                  "--chunker", "fixed")
    c = Cli(tmp_path / "c")
    c("bundle", "unbundle", "../usb.car")
    c("merge", "bundles/main")
    assert (c.cwd / "data/sensor.bin").read_bytes() == data
    r = Cli(tmp_path)("init", "d", "--repository-id", "../evil", ok=False)
    assert r.exit_code == 2 and "invalid repository id" in r.stderr
