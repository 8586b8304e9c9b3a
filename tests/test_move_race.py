"""A file written while a pull or push moves the checked-out branch (the fleet's sync agent
runs while people edit).  The move is checked by a dry run, the branch moves, then the files
follow and are checked again; a file the user wrote in between, where the move writes, makes
that second check refuse.  The branch used to stay moved with the files behind, and the user's
next commit was refused ("branch main moved since the working tree was checked out").  Now the
branch goes back, nothing of the user's is touched, and the next round tries again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casync import Repository, porcelain
from casync.errors import WorktreeDirty
from casync.model.cid import Cid
from casync.worktree.state import checked_out, interrupted_move, merge_in_progress, moved_since_checkout

from .conftest import age, write

_MINE = b"the user's own shared.txt, written while the agent pulled\n"


def _write_after_dry_run(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, path: Path) -> list[bool]:
    """Wrap ``module.name`` (a worktree update) so that right after its dry run the user
    writes ``path``: the window between the check and the move."""
    real: Callable[..., Any] = getattr(module, name)
    fired: list[bool] = []

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        if kwargs.get("dry_run"):
            path.write_bytes(_MINE)
            fired.append(True)
        return out
    monkeypatch.setattr(module, name, wrapped)
    return fired


def _branch_adding_shared(repo: Repository) -> Cid:
    """main at one commit; branch other = main + shared.txt (another site's commit)."""
    write(repo.root, "notes.txt", "notes\n")
    age(repo.root)
    base = porcelain.commit(repo, "base")
    repo.update_branch("other", None, repo.resolve("main"), "branch")
    with repo.transaction(branch="other", message="shared from the hub") as tx:
        tx.write("shared.txt", b"the hub's shared.txt\n")
    return repo.resolve(base)


def _assert_nothing_moved(repo: Repository, head: Cid) -> None:
    assert repo.resolve("main") == head
    assert (repo.root / "shared.txt").read_bytes() == _MINE
    assert moved_since_checkout(repo) is None and interrupted_move(repo) is None
    assert checked_out(repo).commit == head
    assert not merge_in_progress(repo)


def test_a_fast_forward_refused_after_the_branch_moved_moves_it_back(repo: Repository,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import casync.worktree.merging as merging

    head = _branch_adding_shared(repo)
    fired = _write_after_dry_run(monkeypatch, merging, "move_worktree", repo.root / "shared.txt")
    with pytest.raises(WorktreeDirty) as err:
        porcelain.merge(repo, "other")
    assert fired and "shared.txt" in err.value.message
    _assert_nothing_moved(repo, head)
    assert repo.refs.reflog("heads/main")[-1].reason.endswith("undone, the working tree changed meanwhile")
    monkeypatch.undo()
    mine = porcelain.commit(repo, "mine")  # was refused: "branch main moved since ... checked out"
    assert repo.load_commit(repo.resolve(mine)).parents == (head,)
    outcome = porcelain.merge(repo, "other")  # the next round: a real merge now, both sides kept
    assert outcome.kind == "merged"


def test_a_merge_refused_after_the_branch_moved_moves_it_back(repo: Repository,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import casync.worktree.merging as merging

    _branch_adding_shared(repo)
    write(repo.root, "notes.txt", "notes, edited here\n")
    age(repo.root)
    head = repo.resolve(porcelain.commit(repo, "local edit"))
    fired = _write_after_dry_run(monkeypatch, merging, "move_worktree", repo.root / "shared.txt")
    with pytest.raises(WorktreeDirty):
        porcelain.merge(repo, "other")
    assert fired
    _assert_nothing_moved(repo, head)
    assert (repo.root / "notes.txt").read_text() == "notes, edited here\n"


def test_a_merge_that_stops_for_conflicts_and_is_refused_leaves_no_merge_state(
        repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    import casync.worktree.merging as merging

    _branch_adding_shared(repo)
    with repo.transaction(branch="other", message="theirs") as tx:
        tx.write("notes.txt", b"theirs\n")
    write(repo.root, "notes.txt", "ours\n")
    age(repo.root)
    head = repo.resolve(porcelain.commit(repo, "ours"))
    fired = _write_after_dry_run(monkeypatch, merging, "move_worktree", repo.root / "shared.txt")
    with pytest.raises(WorktreeDirty):
        porcelain.merge(repo, "other", policy="manual")
    assert fired
    _assert_nothing_moved(repo, head)  # no stopped merge whose files were never written
    assert (repo.root / "notes.txt").read_text() == "ours\n"


def test_a_push_into_the_checked_out_branch_refused_after_it_moved_moves_it_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import casync.transports.peer.service as service
    from casync.transports.peer.exchange import LocalPeer, fetch_from, push_to

    origin = Repository.init(tmp_path / "origin", replica="origin")
    site = Repository.init(tmp_path / "site", replica="site", repository_id=origin.repo_id, bare=True)
    try:
        write(origin.root, "notes.txt", "notes\n")
        age(origin.root)
        head = origin.resolve(porcelain.commit(origin, "first"))
        peer = LocalPeer(str(origin.root))
        fetch_from(site, peer, "origin")
        site.update_branch("main", None, site.refs.get_ref("remotes/origin/main"), "track")
        with site.transaction(branch="main", message="from the site") as tx:
            tx.write("shared.txt", b"the site's shared.txt\n")
        fired = _write_after_dry_run(monkeypatch, service, "move_worktree", origin.root / "shared.txt")
        with pytest.raises(WorktreeDirty):
            push_to(site, peer, "origin", "main")
        peer.close()
        assert fired
        _assert_nothing_moved(origin, head)
        monkeypatch.undo()
        porcelain.commit(origin, "origin's own shared.txt")  # was refused as a commit on a moved branch
    finally:
        origin.close()
        site.close()
