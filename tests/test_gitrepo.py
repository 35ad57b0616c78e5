"""Jobs on their own branches and worktrees of a real git repository; real merges."""

from __future__ import annotations

import pytest
from helpers import git

from pantheon.core.work.git import GitError, GitRepo


@pytest.fixture
def repo(tmp_path):
    root = tmp_path / "target"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "dev@example.org")
    git(root, "config", "user.name", "Dev")
    (root / "a.md").write_text("# A\n\nfirst line\n")
    (root / "b.md").write_text("# B\n")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "start")
    return GitRepo(root)


def job(repo, tmp_path, name, edits):
    wt = repo.worktree(f"pantheon/docops/{name}", "main", tmp_path / "wt" / name)
    for path, text in edits.items():
        (wt / path).write_text(text)
    repo.commit_all(wt, f"job {name}")
    return wt


@pytest.mark.parametrize("checked_out", [True, False], ids=["in-worktree", "ref-only"])
def test_each_job_has_its_branch_and_worktree_and_merges(repo, tmp_path, checked_out):
    if not checked_out:
        git(repo.path, "checkout", "-q", "-b", "elsewhere")
    one = job(repo, tmp_path, "1", {"a.md": "---\ntitle: A\n---\n# A\n\nfirst line\n"})
    two = job(repo, tmp_path, "2", {"b.md": "---\ntitle: B\n---\n# B\n"})
    assert one != two and (one / "a.md").read_text() != (two / "a.md").read_text()
    assert repo.changed_files("pantheon/docops/1", "main") == ["a.md"]
    for name in ("1", "2"):
        result = repo.merge(f"pantheon/docops/{name}", "main")
        assert result.merged and not result.conflict
    shown = git(repo.path, "show", "main:a.md") + git(repo.path, "show", "main:b.md")
    assert "title: A" in shown and "title: B" in shown
    parents = git(repo.path, "rev-list", "--parents", "-n", "1", "main").split()
    assert len(parents) == 3, "a real merge commit"
    again = repo.merge("pantheon/docops/1", "main")
    assert again.merged and again.reason == "already merged"


@pytest.mark.parametrize("checked_out", [True, False], ids=["in-worktree", "ref-only"])
def test_a_conflict_merges_nothing_and_names_the_files(repo, tmp_path, checked_out):
    if not checked_out:
        git(repo.path, "checkout", "-q", "-b", "elsewhere")
    job(repo, tmp_path, "1", {"a.md": "# A\n\none way\n"})
    job(repo, tmp_path, "2", {"a.md": "# A\n\nanother way\n"})
    assert repo.merge("pantheon/docops/1", "main").merged
    before = repo.tip("main")
    result = repo.merge("pantheon/docops/2", "main")
    assert not result.merged and result.conflict == ["a.md"]
    assert repo.tip("main") == before
    assert repo.has_branch("pantheon/docops/2"), "the branch waits for the morning"
    if checked_out:
        assert git(repo.path, "status", "--porcelain") == "", "no half-merged working tree"


def test_a_target_that_moved_on_during_the_night(repo, tmp_path):
    job(repo, tmp_path, "1", {"a.md": "# A\n\nfirst line\n\nmore\n"})
    (repo.path / "c.md").write_text("# C\n")
    git(repo.path, "add", "-A")
    git(repo.path, "commit", "-qm", "someone else")
    assert repo.merge("pantheon/docops/1", "main").merged
    assert (repo.path / "c.md").exists() and "more" in (repo.path / "a.md").read_text()


def test_a_worktree_is_reused_when_the_job_resumes(repo, tmp_path):
    first = repo.worktree("pantheon/docops/9", "main", tmp_path / "wt" / "9")
    (first / "note.md").write_text("half done")
    again = repo.worktree("pantheon/docops/9", "main", tmp_path / "wt" / "9")
    assert again == first and (again / "note.md").read_text() == "half done"
    assert repo.commit_all(again, "x") is not None
    assert repo.commit_all(again, "nothing new") is None


def test_not_a_repository_and_a_missing_target(tmp_path, repo):
    with pytest.raises(GitError, match="is not a git repository"):
        GitRepo(tmp_path)
    with pytest.raises(GitError, match="target branch 'trunk' does not exist"):
        repo.worktree("pantheon/x/1", "trunk", tmp_path / "wt" / "x")


def test_jobs_making_and_dropping_worktrees_at_once_never_trip_over_each_other(repo, tmp_path):
    """``git worktree list`` fails ("failed to read .git/worktrees/…/commondir") when it reads
    while another job adds a worktree: every worktree operation takes the same lock."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> None:
        for round_ in range(3):
            name = f"j{i}-{round_}"
            wt = repo.worktree(f"pantheon/docops/{name}", "main", tmp_path / "wt" / name)
            assert repo.worktrees()[f"pantheon/docops/{name}"] == wt.resolve()
            repo.remove_worktree(wt)
            repo.delete_branch(f"pantheon/docops/{name}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))  # re-raises the first GitError
    assert set(repo.worktrees()) == {"main"}
