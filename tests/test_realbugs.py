"""Bugs planted in a real library's code, caught by its own tests, and placed by discovery."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from pantheon.core.work.discover import failing_test_jobs
from pantheon.core.work.realbugs import Library, bug_repo, lay_out, plant, read_bugs, write_bugs
from pantheon.core.work.testcmd import resolve_test_command

LIB = Library("tinystats", "0.1", ("tinystats", "tests"))


def _sdist(tmp_path):
    """An unpacked source distribution: a package, its tests, and files the repo leaves out."""
    src = tmp_path / "tinystats-0.1"
    (src / "tinystats").mkdir(parents=True)
    (src / "tests").mkdir()
    (src / "tinystats" / "__init__.py").write_text("")
    (src / "tinystats" / "core.py").write_text(
        textwrap.dedent(
            """
            def mean(xs):
                return sum(xs) / len(xs)


            def spread(xs):
                return max(xs) - min(xs)


            def total(xs, start=0):
                return start + sum(xs)
            """
        ).lstrip()
    )
    (src / "tests" / "test_core.py").write_text(
        textwrap.dedent(
            """
            from tinystats.core import mean, spread, total

            def test_mean():
                assert mean([1, 2, 3]) == 2

            def test_spread():
                assert spread([4, 1, 9]) == 8

            def test_total():
                assert total([1, 2], 10) == 13
            """
        ).lstrip()
    )
    (src / "PKG-INFO").write_text("Name: tinystats\n")
    return src


def test_bugs_are_planted_deterministically_and_each_fails_a_passing_test(tmp_path):
    repo = lay_out(LIB, _sdist(tmp_path), tmp_path / "repo")
    assert not (repo / "PKG-INFO").exists() and (repo / "tests" / "test_core.py").is_file()
    command = resolve_test_command(repo)
    bugs = plant(LIB, repo, command, count=3, seed=7)
    assert len(bugs) == 3
    assert len({b.function for b in bugs}) == 3, "one bug a function"
    assert plant(LIB, repo, command, count=3, seed=7) == bugs, "the same from the same seed"
    assert (
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo
        ).returncode
        == 0
    ), "the library is left as it was"
    write_bugs(tmp_path / "bugs.jsonl", bugs)
    assert read_bugs(tmp_path / "bugs.jsonl") == bugs

    for n, bug in enumerate(bugs):
        clone = bug_repo(repo, bug, tmp_path / f"bug{n}")
        found = failing_test_jobs(clone, resolve_test_command(clone))
        [job] = found.jobs
        assert job["test"] == "tests/test_core.py" and job["path"] == "tinystats/core.py"
        assert (job["suspects"][0]["path"], job["suspects"][0]["name"]) == (
            "tinystats/core.py",
            bug.function,
        ), bug
