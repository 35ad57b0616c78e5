"""How a repository runs its tests: one command per repository, run in its own environment.

The command comes from the job's input, else from the target's ``pyproject.toml``::

    [tool.pantheon]
    test = "python -m pytest -q"

else it is ``python -m pytest``. A ``python`` at the head of the command is the repository's own
interpreter — ``.venv/bin/python`` (or ``venv/``) inside the repository when there is one — and
otherwise the interpreter Pantheon runs on. ``{test}`` in the command is replaced by the test
file or node id; without it the target is appended. Every run has a time limit, no standard
input, no proxy variables, and writes no ``__pycache__`` or ``.pytest_cache`` into the worktree.
The tests run model-written code, so a resolved command runs them in the sandbox
(:mod:`pantheon.core.work.sandbox`: no network, nothing writable but the worktree, CPU and memory
limits) — or refuses, when it is missing, unless the operator chose unconfined runs.
:func:`check_runnable` says, before a night starts, when the command cannot run at all (no
pytest, a missing interpreter, a sandbox it cannot start in) — one clear error in place of every
job failing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pantheon.core.errors import PantheonError
from pantheon.core.work.sandbox import Sandbox, code_sandbox

__all__ = [
    "DEFAULT_TEST_COMMAND",
    "TestCommand",
    "TestCommandError",
    "TestRun",
    "check_runnable",
    "is_test_file",
    "resolve_test_command",
]

DEFAULT_TEST_COMMAND = "python -m pytest"
OUTPUT_CAP = 8000


class TestCommandError(PantheonError):
    """The repository's test command cannot run here."""

    title = "Test command error"
    __test__ = False


@dataclass(frozen=True, slots=True)
class TestRun:
    passed: bool
    exit_code: int | None
    output: str
    """The end of stdout and stderr together (at most OUTPUT_CAP characters)."""
    timed_out: bool = False
    __test__ = False


def _repo_python(repo: Path) -> str:
    for venv in (".venv", "venv"):
        candidate = repo / venv / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return sys.executable


@dataclass(frozen=True, slots=True)
class TestCommand:
    """A repository's test command, resolved."""

    text: str
    """The command as configured (``python -m pytest``)."""
    source: str
    """Where it came from: ``the job's input``, ``pyproject.toml [tool.pantheon]``, ``default``."""
    python: str
    """The interpreter ``python`` stands for."""
    sandbox: Sandbox | None = None
    """Where the tests run: in this sandbox, or unconfined (None: the operator's
    ``--no-sandbox``; :func:`resolve_test_command` never leaves it out otherwise)."""
    __test__ = False

    def argv(self, target: str | Sequence[str] = "") -> list[str]:
        """The command line for one target or several (each its own argument; ``{test}`` as
        a whole argument stands for all of them)."""
        targets = [target] if isinstance(target, str) else list(target)
        targets = [t for t in targets if t]
        parts = shlex.split(self.text)
        if parts and parts[0] in ("python", "python3"):
            parts[0] = self.python
        if any("{test}" in p for p in parts):
            out: list[str] = []
            for p in parts:
                if p == "{test}":
                    out += targets
                elif "{test}" in p:
                    out.append(p.replace("{test}", " ".join(targets)))
                else:
                    out.append(p)
            return [p for p in out if p]
        return [*parts, *targets]

    @property
    def is_pytest(self) -> bool:
        return "pytest" in self.text

    def run(
        self,
        cwd: Path,
        target: str | Sequence[str] = "",
        *,
        timeout_s: float = 60.0,
        writable: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        pytest_options: str = "",
    ) -> TestRun:
        """Run the tests in ``cwd`` (in the sandbox, where ``cwd`` and ``writable`` are the only
        folders they may write); a run past ``timeout_s`` is killed and reported as such.
        ``env`` adds variables; ``pytest_options`` go to pytest whatever the command line."""
        base = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env = {**base, **(env or {})}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        opts = env.get("PYTEST_ADDOPTS", "") + " -p no:cacheprovider " + pytest_options
        if self.is_pytest and not has_pytest_config(cwd):
            # a worktree under another project (ARTIFACTS/worktrees in a checkout, say) must
            # not pick up that project's pytest configuration
            opts += f" -c {shlex.quote(str(_empty_ini()))} --rootdir {shlex.quote(str(cwd))}"
        env["PYTEST_ADDOPTS"] = opts.strip()
        argv = self.argv(target)
        try:
            if self.sandbox is not None:
                done = self.sandbox.run(
                    argv, cwd=cwd, writable=writable, env=env, timeout=timeout_s
                )
            else:
                done = subprocess.run(
                    argv,
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout) + _text(exc.stderr)
            return TestRun(
                False,
                None,
                (out[-OUTPUT_CAP:] + f"\n[the tests did not finish within {timeout_s:.0f} s]"),
                timed_out=True,
            )
        except OSError as exc:
            raise TestCommandError(
                f"the test command {self.text!r} cannot start in {cwd}: {exc.strerror or exc}",
                hint='set it in the target\'s pyproject.toml: [tool.pantheon] test = "..."',
            ) from None
        output = done.stdout + done.stderr
        if self.sandbox is not None:
            head = argv[0] if argv else ""
            if done.returncode == 1 and done.stderr.startswith(f"bwrap: execvp {head}:"):
                raise TestCommandError(
                    f"the test command {self.text!r} cannot start in {cwd}: "
                    f"{done.stderr.strip().removeprefix('bwrap: ')}",
                    hint='set it in the target\'s pyproject.toml: [tool.pantheon] test = "..."',
                )
            if self.sandbox.cpu_exceeded(done.returncode):
                output += (
                    f"\n[killed by the sandbox's CPU time limit ({self.sandbox.limits.cpu_s} s)]"
                )
        return TestRun(done.returncode == 0, done.returncode, output[-OUTPUT_CAP:])


def is_test_file(path: str) -> bool:
    """A test file by pytest's naming: test_*.py, *_test.py, conftest.py, or under tests/."""
    parts = path.split("/")
    name = parts[-1]
    return (
        (name.startswith("test_") and name.endswith(".py"))
        or name.endswith("_test.py")
        or name == "conftest.py"
        or any(p in ("tests", "test") for p in parts[:-1])
    )


def has_pytest_config(folder: Path) -> bool:
    """Whether ``folder`` holds a pytest configuration of its own (pytest.ini, tox.ini's
    [pytest], setup.cfg's [tool:pytest], pyproject.toml's [tool.pytest.ini_options])."""
    folder = Path(folder)
    marks = {
        "pytest.ini": "",
        ".pytest.ini": "",
        "tox.ini": "[pytest]",
        "setup.cfg": "[tool:pytest]",
        "pyproject.toml": "[tool.pytest",
    }
    for name, mark in marks.items():
        path = folder / name
        if path.is_file():
            try:
                if mark in path.read_text(encoding="utf-8", errors="replace"):
                    return True
            except OSError:
                continue
    return False


def _empty_ini() -> Path:
    path = Path(tempfile.gettempdir()) / "pantheon-pytest-empty.ini"
    if not path.is_file():
        path.write_text("[pytest]\n", encoding="utf-8")
    return path


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def resolve_test_command(repo: Path, command: str | None = None) -> TestCommand:
    """The test command of ``repo``: the given one, its ``[tool.pantheon] test``, or the default,
    with the sandbox it runs in (SandboxError when it is missing and unconfined runs were not
    chosen)."""
    repo = Path(repo)
    python = _repo_python(repo)
    sandbox = code_sandbox()
    if command and command.strip():
        return TestCommand(command.strip(), "the job's input", python, sandbox)
    pyproject = repo / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TestCommandError(f"{pyproject} is not valid TOML: {exc}") from None
        table = data.get("tool", {}).get("pantheon", {})
        test = table.get("test") if isinstance(table, dict) else None
        if test is not None:
            if not isinstance(test, str) or not test.strip():
                raise TestCommandError(
                    f"{pyproject}: [tool.pantheon] test must be a command line (a string)"
                )
            return TestCommand(test.strip(), "pyproject.toml [tool.pantheon]", python, sandbox)
    return TestCommand(DEFAULT_TEST_COMMAND, "default", python, sandbox)


def check_runnable(command: TestCommand, cwd: Path) -> None:
    """TestCommandError when the command cannot run at all in ``cwd`` (checked once, up front)."""
    argv = command.argv()
    if not argv:
        raise TestCommandError("the test command is empty")
    exe = argv[0]
    if shutil.which(exe, path=os.environ.get("PATH")) is None and not Path(exe).is_file():
        raise TestCommandError(
            f"the test command {command.text!r} ({command.source}) cannot run: "
            f"{exe!r} is not installed or not on PATH"
        )
    if command.sandbox is not None:
        started = command.sandbox.run(["true"], cwd=cwd, timeout=60)
        if started.returncode != 0:
            said = started.stderr.strip().splitlines()
            raise TestCommandError(
                f"the test command {command.text!r} ({command.source}) cannot run in the "
                f"sandbox: {said[-1] if said else f'exit {started.returncode}'}",
                hint="pantheon doctor checks the sandbox; --no-sandbox runs code jobs unconfined",
            )
    if command.is_pytest and Path(exe).name.startswith("python"):
        argv = [exe, "-c", "import pytest"]
        if command.sandbox is not None:
            probe = command.sandbox.run(argv, cwd=cwd, timeout=60)
        else:
            probe = subprocess.run(
                argv, cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
            )
        if probe.returncode != 0:
            raise TestCommandError(
                f"the test command {command.text!r} ({command.source}) cannot run: "
                f"pytest is not installed for {exe}",
                hint=f"{exe} -m pip install pytest, or set [tool.pantheon] test in pyproject.toml",
            )
