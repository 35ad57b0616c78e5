"""No regressions: the tests that passed before a change still pass after it.

The ``test`` gate runs, besides the job's own tests, the tests that ran the changed file when
the suite was traced (the job's ``guard``), or the whole suite when that map is missing. A test
that fails after the change is run again on the code as it was before it (the changed files
put back in a scratch copy): one that passed there is a regression, named in the gate's
reasons; one that failed there too is another job's bug, not this change's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pantheon.core.work.suite import run_suite
from pantheon.core.work.testcmd import TestCommand

__all__ = ["RegressionCheck", "check_regressions", "scratch_copy"]


def scratch_copy(root: Path, into: Path) -> Path:
    """A copy of the worktree ``root`` under ``into`` (no ``.git``, no caches)."""
    dest = into / "work"
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"), symlinks=True)
    return dest


@dataclass
class RegressionCheck:
    ran: int = 0
    """Tests run after the change (besides the job's own)."""
    broken: list[str] = field(default_factory=list)
    """Tests that passed before the change and fail after it, each with pytest's last word."""
    failing_before: int = 0
    """Tests that fail after the change and failed before it too (not this change's doing)."""
    timed_out: bool = False
    scope: str = "the whole suite"
    """What ran: the tests that cover the changed file, or the whole suite."""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.broken and not self.timed_out

    def reason(self) -> str:
        if self.timed_out:
            return f"the other tests ({self.scope}) did not finish within the time limit"
        if self.broken:
            shown = "; ".join(self.broken[:5]) + (" ..." if len(self.broken) > 5 else "")
            return f"the change breaks {len(self.broken)} other test(s): {shown}"
        if not self.ran and not self.failing_before:
            return f"no other test checked: {self.scope}"
        extra = f", {self.failing_before} failing before it too" if self.failing_before else ""
        return f"{self.ran} other test(s) ({self.scope}) still pass{extra}"


def _first_error(text: str) -> str:
    """pytest's first ``E`` line of a failure (the assertion or the exception), else its last."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    said = [line for line in lines if line.startswith("E ")]
    return " ".join((said[0] if said else lines[-1] if lines else "").split())[:160]


def check_regressions(
    command: TestCommand,
    root: Path,
    *,
    own: str,
    guard: Sequence[str] | None,
    original: Callable[[str], str | None],
    changed: Sequence[str],
    timeout_s: float = 300.0,
) -> RegressionCheck:
    """Run the tests of ``guard`` (every test when None) in the worktree ``root``, leaving out
    the job's own test file ``own``; each failure is checked against the code before the change
    (``original(path)`` of each ``changed`` file; None: it did not exist)."""
    t0 = time.perf_counter()
    own_file = own.split("::", 1)[0]
    targets = [t for t in (guard or []) if t != own_file]
    check = RegressionCheck(scope="the whole suite" if guard is None else "the covering tests")
    if guard is not None and not targets:
        check.scope = "no other test runs the changed code"
        return check
    after = run_suite(command, root, targets, timeout_s=timeout_s)
    others = {k: t for k, t in after.tests.items() if t.file != own_file}
    check.ran = sum(1 for t in others.values() if t.outcome != "skipped")
    check.timed_out = after.timed_out
    failing = [t for t in others.values() if t.outcome == "failed"]
    if failing and not after.timed_out:
        with tempfile.TemporaryDirectory(prefix="pantheon-before-") as tmp:
            copy = scratch_copy(root, Path(tmp))
            for rel in changed:
                text = original(rel)
                if text is None:
                    (copy / rel).unlink(missing_ok=True)
                else:
                    (copy / rel).write_text(text, encoding="utf-8")
            before = run_suite(command, copy, [t.test for t in failing], timeout_s=timeout_s)
        check.timed_out = before.timed_out
        for t in failing:
            was = before.tests.get(t.test)
            if was is not None and was.outcome == "failed":
                check.failing_before += 1
            else:
                check.broken.append(f"{t.test} ({_first_error(t.text)})")
    check.seconds = round(time.perf_counter() - t0, 2)
    return check
