"""The code-fix harness's parts on real files and real processes: the reply forms, the test
command, the discovery of failing tests in a real git repository, and the generated corpus."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import git

from pantheon.core.errors import FlowError
from pantheon.core.run.demo import corpus_tasks
from pantheon.core.work.codecorpus import check_tasks, mutants_of
from pantheon.core.work.codefix import failure_excerpt
from pantheon.core.work.discover import (
    RepoError,
    check_git_repo,
    docs_jobs,
    failing_test_jobs,
    read_tasks,
)
from pantheon.core.work.edits import CandidateError, FixForm, apply_reply
from pantheon.core.work.testcmd import TestCommandError, check_runnable, resolve_test_command

ORIGINAL = textwrap.dedent(
    """\
    import math


    def area(r):
        \"\"\"The area of a circle.\"\"\"
        return math.pi * r * 2


    def perimeter(r):
        return 2 * math.pi * r
    """
)


def test_a_whole_file_in_a_python_block_is_the_fix():
    fixed = ORIGINAL.replace("r * 2", "r ** 2")
    assert apply_reply(FixForm.WHOLE_FILE, f"Here:\n```python\n{fixed}```\n", ORIGINAL) == fixed


def test_a_reply_with_only_the_corrected_function_is_spliced_into_the_file():
    reply = "```python\ndef area(r):\n    return math.pi * r ** 2\n```"
    fixed = apply_reply(FixForm.WHOLE_FILE, reply, ORIGINAL)
    assert "return math.pi * r ** 2" in fixed
    assert fixed.startswith("import math\n") and "def perimeter(r):" in fixed


def test_search_replace_blocks_apply_even_without_trailing_spaces():
    reply = (
        "<<<<<<< SEARCH\n    return math.pi * r * 2\n=======\n"
        "    return math.pi * r ** 2\n>>>>>>> REPLACE\n"
    )
    assert apply_reply(FixForm.SEARCH_REPLACE, reply, ORIGINAL) == ORIGINAL.replace(
        "r * 2", "r ** 2"
    )
    loose = reply.replace("    return math.pi * r * 2\n", "    return math.pi * r * 2   \n")
    assert "r ** 2" in apply_reply(FixForm.SEARCH_REPLACE, loose, ORIGINAL)


@pytest.mark.parametrize(
    ("form", "reply", "why"),
    [
        (FixForm.WHOLE_FILE, "", "empty"),
        (FixForm.WHOLE_FILE, "The bug is on line 6: use r ** 2.", "no ```python code block"),
        (FixForm.WHOLE_FILE, "```python\ndef area(r:\n    return 1\n```", "does not parse"),
        (FixForm.WHOLE_FILE, f"```python\n{ORIGINAL}```", "changes nothing"),
        (FixForm.WHOLE_FILE, "```python\ndef volume(r):\n    return r\n```", "none of the file"),
        (FixForm.SEARCH_REPLACE, "just use r ** 2", "no SEARCH/REPLACE block"),
        (
            FixForm.SEARCH_REPLACE,
            "<<<<<<< SEARCH\nreturn nothing\n=======\nreturn 1\n>>>>>>> REPLACE",
            "occurs 0 times",
        ),
        (
            FixForm.SEARCH_REPLACE,
            "<<<<<<< SEARCH\n    return math.pi * r * 2\n=======\n    return (\n>>>>>>> REPLACE",
            "does not parse",
        ),
    ],
)
def test_garbage_replies_are_refused_with_the_reason(form, reply, why):
    with pytest.raises(CandidateError, match=why.replace("(", r"\(")):
        apply_reply(form, reply, ORIGINAL)


def test_the_failure_excerpt_is_pytests_failures_section():
    output = (
        "============ test session starts ============\nplatform linux\ncollected 1 item\n\n"
        "t.py F\n\n================= FAILURES =================\n___ test_x ___\n\n"
        "    def test_x():\n>       assert f(2) == 4\nE       assert 5 == 4\n\nt.py:3: "
        "AssertionError\n======== short test summary info ========\nFAILED t.py::test_x\n"
    )
    excerpt = failure_excerpt(output)
    assert "assert 5 == 4" in excerpt and "platform linux" not in excerpt
    assert "short test summary" not in excerpt


@pytest.fixture
def user_repo(tmp_path):
    """A small real project: a package under src/, tests that pass and tests that fail."""
    repo = tmp_path / "proj"
    (repo / "src" / "geometry").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "docs" / "guide").mkdir(parents=True)
    (repo / "src" / "geometry" / "__init__.py").write_text("")
    (repo / "src" / "geometry" / "shapes.py").write_text(ORIGINAL)
    (repo / "src" / "geometry" / "units.py").write_text(
        "def cm(x):\n    if x < 0:\n        raise ValueError(x)\n    return x * 100\n"
    )
    (repo / "tests" / "conftest.py").write_text(
        "import sys, pathlib\nsys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'src'))\n"
    )
    (repo / "tests" / "test_shapes.py").write_text(
        "from geometry.shapes import area, perimeter\n\n"
        "def test_area():\n    assert round(area(1), 2) == 3.14\n\n"
        "def test_perimeter():\n    assert round(perimeter(1), 2) == 6.28\n"
    )
    (repo / "tests" / "test_units.py").write_text(
        "from geometry import units\n\ndef test_cm():\n    assert units.cm(-1) == -100\n"
    )
    (repo / "tests" / "test_ok.py").write_text("def test_fine():\n    assert True\n")
    (repo / "docs" / "index.md").write_text("# Geometry\n\nAreas and perimeters.\n")
    (repo / "docs" / "guide" / "units.md").write_text("# Units\n\nCentimetres.\n")
    (repo / "docs" / "done.md").write_text("---\ntitle: Done\n---\n# Done\n")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def test_discovery_finds_docs_recursively_and_one_job_per_failing_test_file(user_repo):
    assert [d["path"] for d in docs_jobs(user_repo)] == ["docs/guide/units.md", "docs/index.md"]
    assert [d["path"] for d in docs_jobs(user_repo, "docs/*.md")] == ["docs/index.md"]
    found = failing_test_jobs(user_repo, resolve_test_command(user_repo))
    assert found.failed == 2 and found.passed == 2
    by_test = {j["test"]: j for j in found.jobs}
    assert set(by_test) == {"tests/test_shapes.py", "tests/test_units.py"}
    # from what the test imports (an assertion in the test itself)
    assert by_test["tests/test_shapes.py"]["path"] == "src/geometry/shapes.py"
    assert "test_area" in by_test["tests/test_shapes.py"]["task"]
    # from the traceback (the exception is raised inside the file under test)
    assert by_test["tests/test_units.py"]["path"] == "src/geometry/units.py"
    assert not found.unplaced


def test_a_repository_with_no_failing_tests_says_so(user_repo):
    (user_repo / "tests" / "test_shapes.py").unlink()
    (user_repo / "tests" / "test_units.py").unlink()
    found = failing_test_jobs(user_repo, resolve_test_command(user_repo))
    assert found.jobs == [] and found.failed == 0 and found.passed == 1


def test_the_test_command_comes_from_pyproject_and_runs_in_the_repos_environment(user_repo):
    assert resolve_test_command(user_repo).source == "default"
    (user_repo / "pyproject.toml").write_text('[tool.pantheon]\ntest = "python -m pytest -x"\n')
    command = resolve_test_command(user_repo)
    assert command.source == "pyproject.toml [tool.pantheon]"
    assert command.argv("tests/test_ok.py")[1:] == ["-m", "pytest", "-x", "tests/test_ok.py"]
    assert command.run(user_repo, "tests/test_ok.py").passed
    assert not command.run(user_repo, "tests/test_units.py").passed
    assert resolve_test_command(user_repo, "make test").source == "the job's input"
    (user_repo / "pyproject.toml").write_text("[tool.pantheon\n")
    with pytest.raises(TestCommandError, match="not valid TOML"):
        resolve_test_command(user_repo)


def test_a_test_command_that_cannot_run_is_one_clear_error(user_repo, tmp_path):
    with pytest.raises(TestCommandError, match="'nosuchtool' is not installed"):
        check_runnable(resolve_test_command(user_repo, "nosuchtool --all"), user_repo)
    # the repository's own environment, without pytest in it
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(user_repo / ".venv")], check=True
    )
    command = resolve_test_command(user_repo)
    assert command.python == str(user_repo / ".venv" / "bin" / "python")
    with pytest.raises(TestCommandError, match="pytest is not installed"):
        check_runnable(command, user_repo)


def test_a_folder_that_is_not_a_git_repository_is_refused(tmp_path):
    with pytest.raises(RepoError, match="does not exist"):
        check_git_repo(tmp_path / "nope")
    with pytest.raises(RepoError, match="not a git repository"):
        check_git_repo(tmp_path)


def test_explicit_tasks_are_read_and_checked(tmp_path, user_repo):
    good = tmp_path / "tasks.jsonl"
    good.write_text(
        json.dumps({"path": "src/geometry/shapes.py", "test": "tests/test_shapes.py", "task": "x"})
        + "\n\n"
    )
    [task] = read_tasks(good, user_repo)
    assert task["repo"] == str(user_repo.resolve())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.py", "task": "x"}\nnot json\n')
    with pytest.raises(FlowError, match=r"bad.jsonl:1: the task has no test"):
        read_tasks(bad, user_repo)


def test_mutants_change_one_expression_and_keep_the_rest_of_the_file():
    source = "def f(a, b):\n    # keep me\n    return a - b if a < b else not a\n"
    found = list(mutants_of(source, 1))
    operators = {m.operator for m in found}
    assert {"flipped comparison", "swapped operands", "wrong operator", "dropped negation"} <= (
        operators
    )
    for m in found:
        assert "# keep me" in m.source and m.source != source
        assert len(m.source.splitlines()) == len(source.splitlines())
    flip = next(m for m in found if m.operator == "flipped comparison")
    assert flip.before == "a < b" and flip.after == "a <= b"


def test_every_shipped_mutant_fails_its_tests_and_every_original_passes():
    tasks = corpus_tasks()
    assert len(tasks) >= 300 and len({t["origin"] for t in tasks}) >= 140
    assert len({t["id"] for t in tasks}) == len(tasks)
    results = check_tasks(tasks)
    assert all(original for original, _ in results), "an original fails its tests"
    assert all(mutant_fails for _, mutant_fails in results), "a mutant passes its tests"


def test_a_worktree_inside_another_project_does_not_take_its_pytest_configuration(tmp_path):
    outer = tmp_path / "outer"
    inner = outer / "artifacts" / "worktrees" / "job"
    inner.mkdir(parents=True)
    # the outer project's strict configuration would fail the inner run outright
    (outer / "pyproject.toml").write_text(
        '[tool.pytest.ini_options]\nfilterwarnings = ["error"]\nno_such_option = 1\n'
        'addopts = "--no-such-flag"\n'
    )
    (inner / "test_x.py").write_text("def test_x():\n    assert True\n")
    run = resolve_test_command(inner).run(inner, "test_x.py")
    assert run.passed, run.output
    # a repository's own configuration is still used
    (inner / "pytest.ini").write_text("[pytest]\naddopts = -k nothing_matches\n")
    assert not resolve_test_command(inner).run(inner, "test_x.py").passed
