"""The work in a user's repository: docs pages that need frontmatter, and failing tests.

``pantheon night --repo PATH`` finds two kinds of job in a git repository:

- **docops**: every Markdown page matched by the docs glob (``docs/**/*.md`` by default) that has
  no YAML frontmatter yet;
- **codefix**: the repository's test command runs once (with JUnit XML output, so nothing is
  guessed from pytest's text), and each test file with a failing test becomes one job, with the
  file under test found from the traceback (the deepest frame in a file of the repository that is
  not a test) or else from what the test file imports.

Explicit tasks can be given instead (``--tasks FILE.jsonl``: one codefix input a line, each with
``path``, ``test`` and ``task``).
"""

from __future__ import annotations

import ast
import json
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pantheon.core.errors import FlowError, PantheonError
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


_FRAME = re.compile(r"^([^\s:][^:\n]*\.py):(\d+)", re.MULTILINE)


def _source_from_traceback(repo: Path, text: str) -> str | None:
    found = None
    for match in _FRAME.finditer(text):
        candidate = Path(match.group(1))
        path = candidate if candidate.is_absolute() else repo / candidate
        try:
            rel = path.resolve().relative_to(repo).as_posix()
        except (ValueError, OSError):
            continue
        if path.is_file() and not is_test_file(rel):
            found = rel  # the deepest frame wins
    return found


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

    jobs: list[dict[str, str]] = field(default_factory=list)
    passed: int = 0
    failed: int = 0
    unplaced: list[str] = field(default_factory=list)
    """Failing test files whose file under test could not be found."""
    output: str = ""


def failing_test_jobs(repo: Path, command: TestCommand, *, timeout_s: float = 600.0) -> Discovery:
    """Run the test command once (in its sandbox, with a CPU limit as long as ``timeout_s``: the
    whole suite runs in one process); one codefix input per test file with a failing test."""
    repo = Path(repo).resolve()
    if not command.is_pytest:
        raise TestCommandError(
            f"finding failing tests needs a pytest-based test command, not {command.text!r}",
            hint="name the tasks with --tasks FILE.jsonl (path, test, task per line)",
        )
    with tempfile.TemporaryDirectory(prefix="pantheon-discover-") as tmp:
        xml = Path(tmp) / "junit.xml"
        sandbox = command.sandbox
        if sandbox is not None:
            sandbox = sandbox.with_limits(cpu_s=max(sandbox.limits.cpu_s, int(timeout_s) + 1))
        probe = replace(
            command,
            text=f"{command.text} -q -o junit_family=xunit1 --junit-xml={xml}",
            sandbox=sandbox,
        )
        run = probe.run(repo, timeout_s=timeout_s, writable=[Path(tmp)])
        found = Discovery(output=run.output)
        if not xml.is_file():
            raise TestCommandError(
                f"the test command {command.text!r} wrote no test report in {repo} "
                f"(exit {run.exit_code}): {run.output.strip()[-400:]}"
            )
        try:
            root = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise TestCommandError(
                f"the test report of {command.text!r} is unreadable: {exc}"
            ) from None
    failing: dict[str, list[tuple[str, str]]] = {}
    for case in root.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            if case.find("skipped") is None:
                found.passed += 1
            continue
        found.failed += 1
        rel = case.get("file") or ""
        if not rel:
            # a collection error names the module in classname
            rel = (case.get("classname") or "").replace(".", "/") + ".py"
        text = (problem.get("message") or "") + "\n" + (problem.text or "")
        failing.setdefault(rel, []).append((case.get("name") or "?", text))
    for rel, cases in sorted(failing.items()):
        if not (repo / rel).is_file():
            found.unplaced.append(rel)
            continue
        source = None
        for _, text in cases:
            source = source or _source_from_traceback(repo, text)
        source = source or _source_from_imports(repo, rel)
        if source is None:
            found.unplaced.append(rel)
            continue
        names = ", ".join(name for name, _ in cases[:5]) + (" ..." if len(cases) > 5 else "")
        found.jobs.append(
            {
                "repo": str(repo),
                "path": source,
                "test": rel,
                "task": f"Fix {source} so that the failing tests in {rel} pass ({names}).",
            }
        )
    return found


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
