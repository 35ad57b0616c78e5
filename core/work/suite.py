"""A repository's test suite run once with a record of every test: its outcome, and (traced)
the lines of the repository it ran.

pytest loads Pantheon's plugin (:mod:`pantheon.core.work.tracer`) from a folder of its own put
on ``PYTHONPATH`` with a link to coverage.py beside it, so the repository's interpreter needs
nothing installed: its outcomes come per node id, and with ``cover=True`` coverage.py records
each test's lines under a context named by its node id (:class:`CoverageMap`). The run keeps
the sandbox and time limit of the test command; a run killed at its limit still gives every
test it finished (the plugin writes as it goes) and says it was cut.

A command that is not pytest cannot be traced: :func:`run_suite` raises
:class:`UntraceableError` and the callers fall back to what the output says.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from pantheon.core.errors import PantheonError
from pantheon.core.work.testcmd import TestCommand, is_test_file

__all__ = [
    "CoverageMap",
    "SuiteRun",
    "TestOutcome",
    "UntraceableError",
    "run_suite",
    "test_file_of",
]

Outcome = Literal["passed", "failed", "skipped"]


class UntraceableError(PantheonError):
    """The test command cannot be run with the tracing plugin (not pytest)."""

    title = "Untraceable tests"


def test_file_of(node: str) -> str:
    """The file of a pytest node id (``tests/test_x.py::TestA::test_b[1]`` → the path)."""
    return node.split("::", 1)[0]


@dataclass(frozen=True, slots=True)
class TestOutcome:
    test: str
    """The pytest node id."""
    outcome: Outcome
    text: str = ""
    """What pytest said of a failure (its traceback and assertion)."""
    __test__ = False

    @property
    def file(self) -> str:
        return test_file_of(self.test)


@dataclass(frozen=True)
class CoverageMap:
    """Which tests ran which lines of the repository's non-test files."""

    lines: Mapping[str, Mapping[int, frozenset[str]]]
    """Relative path → line → the node ids of the tests that ran it."""

    def tests_of(self, paths: Iterable[str]) -> set[str]:
        """The tests that ran any line of ``paths``."""
        out: set[str] = set()
        for path in paths:
            for tests in self.lines.get(path, {}).values():
                out |= tests
        return out

    @classmethod
    def read(cls, data_file: Path, repo: Path) -> CoverageMap:
        import coverage

        data = coverage.CoverageData(basename=str(data_file))
        data.read()
        lines: dict[str, dict[int, frozenset[str]]] = {}
        for measured in data.measured_files():
            try:
                rel = Path(measured).resolve().relative_to(repo).as_posix()
            except ValueError:
                continue
            if is_test_file(rel):
                continue
            by_line = {
                n: frozenset(c for c in contexts if c)
                for n, contexts in (data.contexts_by_lineno(measured) or {}).items()
            }
            by_line = {n: tests for n, tests in by_line.items() if tests}
            if by_line:
                lines[rel] = by_line
        return cls(lines)


@dataclass
class SuiteRun:
    tests: dict[str, TestOutcome] = field(default_factory=dict)
    """Every test the run finished (and every file that failed to collect), by node id."""
    output: str = ""
    exit_code: int | None = None
    timed_out: bool = False
    coverage: CoverageMap | None = None
    """Each test's lines, when the run was traced and coverage.py worked."""
    untraced: str | None = None
    """Why there is no coverage map, when one was asked for."""

    def with_outcome(self, outcome: Outcome) -> list[TestOutcome]:
        return [t for t in self.tests.values() if t.outcome == outcome]

    @property
    def failed(self) -> list[TestOutcome]:
        return self.with_outcome("failed")

    @property
    def passed(self) -> list[TestOutcome]:
        return self.with_outcome("passed")


def _plugin_folder(into: Path) -> Path:
    """``pantheon_tracer.py`` and a link to this coverage.py, for the tests' ``PYTHONPATH``."""
    import coverage

    folder = into / "plugin"
    folder.mkdir()
    shutil.copyfile(Path(__file__).with_name("tracer.py"), folder / "pantheon_tracer.py")
    (folder / "coverage").symlink_to(Path(coverage.__file__).parent, target_is_directory=True)
    return folder


def _outcomes(path: Path) -> dict[str, TestOutcome]:
    """One outcome per node id from the plugin's phase lines: failed when any phase failed (an
    expected failure is skipped), skipped when its setup or call was, else passed."""
    seen: dict[str, dict[str, object]] = {}
    try:
        rows = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        rows = []
    for row in rows:
        try:
            r = json.loads(row)
        except json.JSONDecodeError:
            continue  # the last line of a run killed mid-write
        test = seen.setdefault(r["test"], {"outcome": None, "text": ""})
        if r["outcome"] == "failed" and not r.get("xfail"):
            test["outcome"] = "failed"
            test["text"] = (str(test["text"]) + "\n" + r.get("text", "")).strip()
        elif r["outcome"] == "skipped" and test["outcome"] != "failed":
            test["outcome"] = "skipped"
        elif r["when"] == "call" and test["outcome"] is None:
            test["outcome"] = "passed"
    return {
        node: TestOutcome(node, v["outcome"], str(v["text"]))  # type: ignore[arg-type]
        for node, v in seen.items()
        if v["outcome"] is not None
    }


def run_suite(
    command: TestCommand,
    repo: Path,
    targets: Sequence[str] = (),
    *,
    timeout_s: float = 600.0,
    cover: bool = False,
) -> SuiteRun:
    """Run ``targets`` (the whole suite when empty) once with the tracing plugin, in the
    command's sandbox with a CPU limit as long as ``timeout_s`` (one process runs them all)."""
    repo = Path(repo).resolve()
    if not command.is_pytest:
        raise UntraceableError(
            f"the test command {command.text!r} is not pytest: its tests cannot be traced"
        )
    with tempfile.TemporaryDirectory(prefix="pantheon-suite-") as tmp:
        out = Path(tmp)
        plugin = _plugin_folder(out)
        env = {
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(plugin), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PANTHEON_TRACE_OUT": str(out),
            "COVERAGE_CORE": "ctrace",  # contexts need a tracer, not sys.monitoring
        }
        if cover:
            env["PANTHEON_TRACE_SOURCE"] = str(repo)
        sandbox = command.sandbox
        if sandbox is not None:
            sandbox = sandbox.with_limits(cpu_s=max(sandbox.limits.cpu_s, int(timeout_s) + 1))
        probe = replace(command, sandbox=sandbox)
        run = probe.run(
            repo,
            list(targets),
            timeout_s=timeout_s,
            writable=[out],
            env=env,
            pytest_options="-p pantheon_tracer",
        )
        found = SuiteRun(
            tests=_outcomes(out / "outcomes.jsonl"),
            output=run.output,
            exit_code=run.exit_code,
            timed_out=run.timed_out,
        )
        if cover:
            found.coverage, found.untraced = _coverage(out, repo, run.output)
    return found


def _coverage(out: Path, repo: Path, output: str) -> tuple[CoverageMap | None, str | None]:
    try:
        said = json.loads((out / "tracer.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        said = {"coverage": (out / "coverage").is_file(), "why": None}
    if not (out / "coverage").is_file():
        why = said.get("why") or "the tests wrote no coverage data"
        if not (out / "outcomes.jsonl").is_file():
            why = f"pytest did not load the tracing plugin: {output.strip()[-300:]}"
        return None, why
    try:
        return CoverageMap.read(out / "coverage", repo), said.get("why")
    except Exception as exc:  # a data file cut mid-write: say so, use what the outcomes say
        return None, f"the coverage data cannot be read: {type(exc).__name__}: {exc}"
