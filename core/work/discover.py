"""The work in a user's repository: docs pages that need frontmatter, and failing tests.

``pantheon night --repo PATH`` finds two kinds of job in a git repository:

- **docops**: every Markdown page matched by the docs glob (``docs/**/*.md`` by default) that has
  no YAML frontmatter yet;
- **codefix**: the repository's whole suite runs once, each test traced (its outcome and the
  lines it ran, :mod:`pantheon.core.work.suite`), and each test file with a failing test becomes
  one job, placed on the functions its failing tests ran and the passing tests rarely did
  (spectrum-based fault localization, :mod:`pantheon.core.work.localize`). The job carries the
  ranked suspects, and the test files that ran the file to fix and passed (its ``guard``: the
  change must keep them passing). Where the tests cannot be traced, the file under test comes
  from the traceback (the deepest frame in a file of the repository that is not a test) or else
  from what the test file imports.

Explicit tasks can be given instead (``--tasks FILE.jsonl``: one codefix input a line, each with
``path``, ``test`` and ``task``).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pantheon.core.errors import FlowError, PantheonError
from pantheon.core.work.localize import rank_suspects, traceback_frames
from pantheon.core.work.suite import CoverageMap, SuiteRun, TestOutcome, run_suite, test_file_of
from pantheon.core.work.testcmd import TestCommand, TestCommandError, is_test_file

__all__ = [
    "DEFAULT_DOCS_GLOB",
    "Discovery",
    "RepoError",
    "check_git_repo",
    "docs_jobs",
    "failing_test_jobs",
    "read_tasks",
]

DEFAULT_DOCS_GLOB = "docs/**/*.md"


class RepoError(PantheonError):
    """A repository the night cannot work on."""

    title = "Repository error"


def check_git_repo(repo: Path) -> Path:
    """The repository's absolute path; RepoError when it is missing or not a git work tree."""
    repo = Path(repo).expanduser()
    if not repo.exists():
        raise RepoError(f"the repository {repo} does not exist")
    if not repo.is_dir():
        raise RepoError(f"the repository {repo} is not a folder")
    if not (repo / ".git").exists():
        raise RepoError(
            f"{repo} is not a git repository (no .git)",
            hint="the night works on branches of a git repository: git init, commit, try again",
        )
    return repo.resolve()


def _has_frontmatter(text: str) -> bool:
    return text.startswith("---\n") and text.find("\n---\n", 4) > 0


def docs_jobs(repo: Path, glob: str = DEFAULT_DOCS_GLOB) -> list[dict[str, str]]:
    """A docops input per page of ``glob`` that has no frontmatter yet (sorted by path)."""
    repo = Path(repo).resolve()
    out = []
    for page in sorted(repo.glob(glob)):
        rel = page.relative_to(repo)
        if not page.is_file() or ".git" in rel.parts:
            continue
        try:
            text = page.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not _has_frontmatter(text):
            out.append({"repo": str(repo), "path": rel.as_posix()})
    return out


def _source_from_imports(repo: Path, test_rel: str) -> str | None:
    test = repo / test_rel
    try:
        tree = ast.parse(test.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    roots = [test.parent, repo, repo / "src"]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            for root in roots:
                base = root / Path(*name.split("."))
                for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                    if candidate.is_file():
                        rel = candidate.resolve().relative_to(repo).as_posix()
                        if not is_test_file(rel):
                            return rel
    return None


@dataclass
class Discovery:
    """What the test run found."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    unplaced: list[str] = field(default_factory=list)
    """Failing test files whose file under test could not be found."""
    output: str = ""
    traced: bool = False
    """The failing tests were placed by the lines they ran (else by tracebacks and imports)."""
    untraced: str | None = None
    """Why they were not, when they were not."""
    timed_out: bool = False
    """The suite ran past its time limit: what it found is what it finished."""


SUSPECTS_KEPT = 5
NO_TESTS_COLLECTED = 5
"""pytest's exit code when it found no test at all."""


def failing_test_jobs(
    repo: Path, command: TestCommand, *, timeout_s: float = 600.0, run: SuiteRun | None = None
) -> Discovery:
    """Run the whole suite once, traced (:mod:`pantheon.core.work.suite`); one codefix input per
    test file with a failing test, placed on the code its failing tests ran and few passing
    tests did (:mod:`pantheon.core.work.localize`), else on its traceback or its imports.
    ``run``: the traced run, when the caller has one already."""
    repo = Path(repo).resolve()
    if not command.is_pytest:
        raise TestCommandError(
            f"finding failing tests needs a pytest-based test command, not {command.text!r}",
            hint="name the tasks with --tasks FILE.jsonl (path, test, task per line)",
        )
    run = run or run_suite(command, repo, timeout_s=timeout_s, cover=True)
    if not run.tests and not run.timed_out and run.exit_code != NO_TESTS_COLLECTED:
        raise TestCommandError(
            f"the test command {command.text!r} ran no test in {repo} "
            f"(exit {run.exit_code}): {run.output.strip()[-400:]}"
        )
    found = Discovery(
        output=run.output,
        passed=len(run.passed),
        failed=len(run.failed),
        traced=run.coverage is not None,
        untraced=run.untraced,
        timed_out=run.timed_out,
    )
    passing = {t.test for t in run.passed}
    failing: dict[str, list[TestOutcome]] = {}
    for t in run.failed:
        failing.setdefault(t.file, []).append(t)
    for rel, cases in sorted(failing.items()):
        if not (repo / rel).is_file():
            found.unplaced.append(rel)
            continue
        job = _place(repo, rel, cases, run.coverage, passing, {t.test for t in run.failed})
        if job is None:
            found.unplaced.append(rel)
        else:
            found.jobs.append(job)
    return found


def _place(
    repo: Path,
    rel: str,
    cases: list[TestOutcome],
    coverage: CoverageMap | None,
    passing: set[str],
    failing_all: set[str],
) -> dict[str, Any] | None:
    """The codefix input of one failing test file, or None when no code of the repository can
    be named for it. Its suspects are the lines its own failing tests ran, scored against
    every failing test of the suite: one bug often fails several test files, and a line that
    all of them run is likelier the bug than one that only this file's tests do (on the
    toolz corpus 27 of 43 test files placed on the right function first, against 23 scored by
    the file's own failing tests alone, and 30 with the tracebacks breaking ties; 25 of 30 on
    more-itertools either way)."""
    frames = [f for case in cases for f in traceback_frames(case.text, repo)]
    frames = [(path, line) for path, line in frames if not is_test_file(path)]
    suspects = []
    if coverage is not None:
        failing = {case.test for case in cases}
        suspects = rank_suspects(
            coverage,
            failing,
            passing,
            repo=repo,
            frames=frames,
            also_failing=failing_all - failing,
        )
    if suspects:
        source = suspects[0].path
    else:
        source = frames[-1][0] if frames else _source_from_imports(repo, rel)
    if source is None:
        return None
    names = ", ".join(c.test.split("::", 1)[-1] for c in cases[:5])
    names += " ..." if len(cases) > 5 else ""
    job: dict[str, Any] = {
        "repo": str(repo),
        "path": source,
        "test": rel,
        "task": f"Fix {source} so that the failing tests in {rel} pass ({names}).",
    }
    if suspects:
        job["suspects"] = [s.as_dict() for s in suspects[:SUSPECTS_KEPT]]
    if coverage is not None:
        # the tests that ran the file to fix and passed: the change must keep them passing
        job["guard"] = sorted(
            {test_file_of(t) for t in coverage.tests_of([source]) & passing} - {rel}
        )
    return job


def read_tasks(path: Path, repo: Path) -> list[dict[str, Any]]:
    """Explicit codefix tasks, one JSON object a line (path, test, task; test_command)."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlowError(f"cannot read the tasks file {path}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FlowError(f"{path}:{n}: not a JSON object: {exc.msg}") from None
        if not isinstance(item, dict):
            raise FlowError(f"{path}:{n}: not a JSON object")
        missing = [k for k in ("path", "test", "task") if not item.get(k)]
        if missing:
            raise FlowError(f"{path}:{n}: the task has no {', '.join(missing)}")
        out.append({"repo": str(Path(repo).resolve()), **item})
    return out
