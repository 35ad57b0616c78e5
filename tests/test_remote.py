"""Merges into a shared git remote: two hosts' clones of one bare repository, real git."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from helpers import docops_model, git, make_repo

from pantheon.core import Engine, JobQueue, default_registry, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.morning.report import build_summary
from pantheon.core.morning.review import Change, revert
from pantheon.core.work import remote as remote_mod
from pantheon.core.work.git import GitError, GitRepo, JobWorkspace
from pantheon.core.work.remote import land, sync_target


def _clone(bare: Path, to: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(bare), str(to)], check=True)
    git(to, "config", "user.email", "host@localhost")
    git(to, "config", "user.name", "host")
    return to


@pytest.fixture
def hosts(tmp_path):
    """A bare remote with one commit on main, and two hosts' clones of it."""
    seed = make_repo(
        tmp_path / "seed",
        {"a.txt": "one\n", "b.txt": "two\n", "docs/one.md": "# One\n\nOne page.\n"},
    )
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True)
    return bare, _clone(bare, tmp_path / "host-a"), _clone(bare, tmp_path / "host-b")


def _change(repo: Path, branch: str, rel: str, text: str) -> None:
    git(repo, "checkout", "-q", "-b", branch, "main")
    (repo / rel).write_text(text)
    git(repo, "commit", "-q", "-am", f"change {rel}")
    git(repo, "checkout", "-q", "main")


def _remote_file(bare: Path, rel: str) -> str:
    return git(bare, "show", f"main:{rel}")


def test_two_hosts_land_on_the_shared_main_and_each_merge_once(hosts):
    bare, a, b = hosts
    _change(a, "pantheon/x/1", "a.txt", "one, changed on a\n")
    _change(b, "pantheon/x/2", "b.txt", "two, changed on b\n")
    first = land(GitRepo(a), "pantheon/x/1", "main", "origin", "Merge 1")
    second = land(GitRepo(b), "pantheon/x/2", "main", "origin", "Merge 2")
    assert first.merged and second.merged and "merged into origin/main" in second.reason
    assert _remote_file(bare, "a.txt") == "one, changed on a"
    assert _remote_file(bare, "b.txt") == "two, changed on b"
    merges = git(bare, "log", "--merges", "--format=%s", "main").split("\n")
    assert sorted(merges) == ["Merge 1", "Merge 2"]
    assert GitRepo(b).tip("main") == second.commit, "the host's own main follows the remote"
    again = land(GitRepo(a), "pantheon/x/1", "main", "origin", "Merge 1")
    assert again.merged and "already merged" in again.reason
    assert len(git(bare, "log", "--merges", "--format=%s", "main").split("\n")) == 2


def test_a_host_overtaken_by_another_merges_again_on_top(hosts, monkeypatch):
    """Host b pushes between host a's fetch and push: a's push is refused, a fetches and
    merges on top; both changes are on the remote, each once."""
    bare, a, b = hosts
    _change(a, "pantheon/x/1", "a.txt", "one, changed on a\n")
    _change(b, "pantheon/x/2", "b.txt", "two, changed on b\n")
    real_tip = remote_mod.fetch_target
    overtaken = []

    def tip_then_b_pushes(repo, remote, target):
        tip = real_tip(repo, remote, target)
        if repo.path == a.resolve() and not overtaken:
            overtaken.append(land(GitRepo(b), "pantheon/x/2", "main", "origin", "Merge 2"))
        return tip

    monkeypatch.setattr(remote_mod, "fetch_target", tip_then_b_pushes)
    result = land(GitRepo(a), "pantheon/x/1", "main", "origin", "Merge 1")
    assert overtaken[0].merged
    assert result.merged and "again after 1 push(es) by another host" in result.reason
    assert _remote_file(bare, "a.txt") == "one, changed on a"
    assert _remote_file(bare, "b.txt") == "two, changed on b"
    merges = git(bare, "log", "--merges", "--format=%s", "main").split("\n")
    assert sorted(merges) == ["Merge 1", "Merge 2"]


def test_a_conflict_on_the_remote_lands_nothing_and_names_the_file(hosts):
    bare, a, b = hosts
    _change(a, "pantheon/x/1", "a.txt", "one, as a has it\n")
    _change(b, "pantheon/x/2", "a.txt", "one, as b has it\n")
    assert land(GitRepo(a), "pantheon/x/1", "main", "origin", "Merge 1").merged
    before = git(bare, "rev-parse", "main")
    result = land(GitRepo(b), "pantheon/x/2", "main", "origin", "Merge 2")
    assert not result.merged and result.conflict == ["a.txt"]
    assert git(bare, "rev-parse", "main") == before


def test_an_unreachable_remote_is_one_clear_error(hosts, tmp_path):
    _, a, _ = hosts
    git(a, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    _change(a, "pantheon/x/1", "a.txt", "changed\n")
    with pytest.raises(GitError) as caught:
        land(GitRepo(a), "pantheon/x/1", "main", "origin", "Merge 1")
    assert "cannot fetch 'main' from the remote 'origin'" in caught.value.message


def test_a_new_job_starts_from_the_remote_s_latest_main(hosts, tmp_path):
    _, a, b = hosts
    _change(b, "pantheon/x/2", "b.txt", "two, changed on b\n")
    assert land(GitRepo(b), "pantheon/x/2", "main", "origin", "Merge 2").merged
    job = JobWorkspace.open(
        a, flow="docops", job_id=7, target="main", root=tmp_path / "wt", remote="origin"
    )
    assert (job.path / "b.txt").read_text() == "two, changed on b\n"
    assert sync_target(GitRepo(a), "origin", "main") == GitRepo(a).tip("main")


def _night(artifacts: Path, repo: Path, paths: list[str]) -> None:
    registry = default_registry()
    flow = load_flow(packaged_flows_dir() / "docops.yaml", registry)
    with JobQueue(artifacts) as q:
        enqueue(q, flow, [{"repo": str(repo), "path": p, "remote": "origin"} for p in paths])
    llm, http = docops_model({"a": True, "b": True})

    async def go():
        await Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run()
        await http.aclose()

    asyncio.run(go())


def test_two_engines_with_their_own_clones_merge_into_one_remote(hosts, tmp_path):
    """Two hosts, each with its own clone and artifacts, drain their jobs: every merge lands on
    the shared remote once, and the morning review reverts one there."""
    bare, a, b = hosts
    for clone, name in ((a, "two"), (b, "three")):
        (clone / "docs" / f"{name}.md").write_text(f"# {name}\n\nA page.\n")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "page two")
    git(a, "push", "-q", "origin", "main")
    git(b, "pull", "-q", "--rebase", "origin", "main")
    git(b, "add", "-A")
    git(b, "commit", "-q", "-m", "page three")
    git(b, "push", "-q", "origin", "main")
    _night(tmp_path / "art-a", a, ["docs/one.md", "docs/two.md"])
    _night(tmp_path / "art-b", b, ["docs/three.md"])
    merged = git(bare, "log", "--merges", "--format=%P", "main").split("\n")
    assert len(merged) == 3 and len({parents.split()[1] for parents in merged}) == 3, merged
    for page in ("one", "two", "three"):
        assert _remote_file(bare, f"docs/{page}.md").startswith("---\n"), page
    [merged] = [
        Change(**{**c, "reviews": tuple(c["reviews"])})
        for c in build_summary(tmp_path / "art-b")["changes"]
        if c["state"] == "merged"
    ]
    assert merged.remote == "origin"
    decision = revert(tmp_path / "art-b", merged, by="tester")
    assert decision.action == "reverted"
    assert not _remote_file(bare, "docs/three.md").startswith("---\n"), "reverted on the remote"


def test_a_night_with_a_remote_it_cannot_reach_stops_before_queuing_anything(hosts, tmp_path):
    from helpers import pantheon

    _, a, _ = hosts
    artifacts = tmp_path / "art"
    out = pantheon(
        "night",
        "--repo",
        str(a),
        "--remote",
        "nowhere",
        "--headless",
        "--artifacts",
        str(artifacts),
    )
    assert out.returncode == 1
    assert "cannot fetch 'main' from the remote 'nowhere'" in out.stderr
    assert not (artifacts / "pantheon.db").exists()


def test_a_job_checked_for_an_earlier_landing_starts_from_that_one_fetch(
    hosts, tmp_path, monkeypatch
):
    _, a, b = hosts
    _change(b, "pantheon/x/2", "b.txt", "two, changed on b\n")
    assert land(GitRepo(b), "pantheon/x/2", "main", "origin", "Merge 2").merged
    fetches = []
    real = remote_mod.fetch_target
    monkeypatch.setattr(
        remote_mod, "fetch_target", lambda *args: fetches.append(args) or real(*args)
    )
    assert remote_mod.landed(GitRepo(a), "origin", "main", "pantheon/docops/7") is None
    job = JobWorkspace.open(
        a,
        flow="docops",
        job_id=7,
        target="main",
        root=tmp_path / "wt",
        remote="origin",
        synced=True,
    )
    assert (job.path / "b.txt").read_text() == "two, changed on b\n"
    assert len(fetches) == 1
