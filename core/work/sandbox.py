"""A sandbox for code a model wrote: bubblewrap, no network, nothing writable but the worktree.

The repository's tests run the model's changes, so they run confined by bubblewrap (``bwrap``,
Debian's ``bubblewrap`` package):

- every namespace bwrap can unshare (``--unshare-all``: network, IPC, PID, UTS, user, cgroup):
  no network at all, not even the host's loopback, and no other process to see or signal;
- the whole file system read-only (``--ro-bind / /``), a fresh ``/dev`` and ``/proc``; the
  worktree (the run's working folder) is the only writable place, besides a private temporary
  folder (``TMPDIR``) that is removed after the run;
- no capabilities (``--cap-drop ALL``), a session of its own (``--new-session``), killed with
  its parent (``--die-with-parent``);
- a CPU-time limit (RLIMIT_CPU, 120 s by default: SIGXCPU, then SIGKILL a second later) and an
  address-space limit (RLIMIT_AS, 4 GiB) on every process in it, set by util-linux's ``prlimit``
  around bwrap (``resource.setrlimit`` in the child when there is no ``prlimit``).

:meth:`Sandbox.probe` runs ``bwrap ... true`` once per binary, exactly as a test run would be
wrapped, and remembers whether it works and why not: bwrap missing, or present but refused its
namespaces. :func:`code_sandbox` is the policy every runner of model-written code asks: the
sandbox, or :class:`SandboxError` with the way out, unless the operator chose to run code
unconfined (``--no-sandbox``, which sets ``PANTHEON_SANDBOX=off`` for the night's processes).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pantheon.core.errors import PantheonError

if TYPE_CHECKING:
    from pantheon.core.store.queue import JobQueue

__all__ = [
    "BWRAP_ENV",
    "CODE_AGENTS",
    "SANDBOX_ENV",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "SandboxStatus",
    "allow_unconfined",
    "code_jobs_pending",
    "code_sandbox",
    "missing_line",
    "runs_code",
    "unconfined_allowed",
]

SANDBOX_ENV = "PANTHEON_SANDBOX"
"""``off``: model-written code runs unconfined (what ``--no-sandbox`` sets); else it is confined."""
BWRAP_ENV = "PANTHEON_BWRAP"
"""The bwrap binary to use (a path or a name on PATH; default ``bwrap``)."""
CODE_AGENTS = ("codegen",)
"""Agents whose flows run model-written code (the test gate of such a flow runs it too)."""
PROBE_TIMEOUT_S = 30.0
WAY_OUT = (
    "`pantheon doctor --install` installs bubblewrap, or --no-sandbox runs code jobs unconfined"
)


class SandboxError(PantheonError):
    """Model-written code would run, and the sandbox for it is missing or broken."""

    title = "Sandbox error"


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """What every process in the sandbox may use."""

    cpu_s: int = 120
    """CPU seconds per process (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL one second later."""
    memory_bytes: int = 4 << 30
    """Address space per process (RLIMIT_AS). Python with torch imported maps about 0.6 GiB."""

    def __post_init__(self) -> None:
        if self.cpu_s < 1:
            raise ValueError(f"the CPU limit must be at least 1 s, not {self.cpu_s}")
        if self.memory_bytes < 64 << 20:
            raise ValueError(f"the memory limit must be at least 64 MiB, not {self.memory_bytes}")

    def describe(self) -> str:
        return f"{self.cpu_s} s CPU and {self.memory_bytes / (1 << 30):g} GiB per process"


@dataclass(frozen=True, slots=True)
class SandboxStatus:
    """Whether the sandbox works here, and what it is or why not."""

    active: bool
    reason: str
    """Active: bwrap's version and path; else why there is no sandbox (one clause)."""
    binary: str | None = None
    """bwrap's path, when one was found."""

    def __str__(self) -> str:
        return self.reason


_probes: dict[tuple[str, str | None], SandboxStatus] = {}
_probe_lock = threading.Lock()


def _cpu_exceeded(code: int | None) -> bool:
    return code in (-signal.SIGXCPU, 128 + signal.SIGXCPU)


@dataclass(frozen=True, slots=True)
class Sandbox:
    """bubblewrap, with the limits every confined process gets."""

    binary: str
    """bwrap's absolute path."""
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    prlimit: str | None = None
    """util-linux's ``prlimit``, which sets the limits around bwrap; None: ``setrlimit`` in the
    child before bwrap starts."""

    # -- finding it -------------------------------------------------------------------------

    @staticmethod
    def find(binary: str | None = None) -> tuple[str | None, str]:
        """bwrap's absolute path (or None) and the name it was looked up by."""
        name = binary or os.environ.get(BWRAP_ENV) or "bwrap"
        if os.sep in name:
            path = Path(name)
            found = str(path.resolve()) if path.is_file() and os.access(path, os.X_OK) else None
            return found, name
        return shutil.which(name), name

    @classmethod
    def probe(cls, binary: str | None = None, *, refresh: bool = False) -> SandboxStatus:
        """Whether the sandbox works: ``bwrap ... true`` is run once per binary (and again with
        ``refresh``) wrapped exactly as a test run is; a missing binary is looked for each time."""
        path, name = cls.find(binary)
        if path is None:
            where = f"no {name}" if os.sep in name else f"no `{name}` on PATH"
            return SandboxStatus(False, f"bwrap is not installed: {where}")
        prlimit = shutil.which("prlimit")
        key = (path, prlimit)
        with _probe_lock:
            if not refresh and key in _probes:
                return _probes[key]
            status = cls(path, prlimit=prlimit)._probe()
            _probes[key] = status
            return status

    @classmethod
    def detect(cls, binary: str | None = None, *, limits: SandboxLimits | None = None) -> Sandbox:
        """The working sandbox; SandboxError saying why there is none."""
        status = cls.probe(binary)
        if not status.active or status.binary is None:
            raise SandboxError(missing_line(status))
        return cls(status.binary, limits or SandboxLimits(), shutil.which("prlimit"))

    def _probe(self) -> SandboxStatus:
        version = "bwrap"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [self.binary, "--version"],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
            version = out.stdout.strip() or version
        with tempfile.TemporaryDirectory(prefix="pantheon-sandbox-probe-") as tmp:
            try:
                done = self.run(["true"], cwd=Path(tmp), timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                return SandboxStatus(
                    False,
                    f"{self.binary} did not finish `true` within {PROBE_TIMEOUT_S:.0f} s",
                    self.binary,
                )
            except OSError as exc:
                return SandboxStatus(
                    False, f"{self.binary} cannot start: {exc.strerror or exc}", self.binary
                )
        if done.returncode != 0:
            said = done.stderr.strip().splitlines()
            why = said[-1].removeprefix("bwrap: ") if said else f"exit {done.returncode}"
            return SandboxStatus(
                False, f"{self.binary} cannot set up its namespaces here: {why}", self.binary
            )
        return SandboxStatus(
            True,
            f"{version} ({self.binary}): no network, the file system read-only but the worktree, "
            f"{self.limits.describe()}",
            self.binary,
        )

    # -- using it ---------------------------------------------------------------------------

    def with_limits(self, **changes: int) -> Sandbox:
        """The same sandbox with other limits (``cpu_s=``, ``memory_bytes=``)."""
        return replace(self, limits=replace(self.limits, **changes))

    def wrap(
        self,
        argv: Sequence[str],
        cwd: Path,
        writable: Sequence[Path] = (),
        *,
        tmpdir: Path | None = None,
    ) -> list[str]:
        """``argv`` confined: run in ``cwd``, the one writable folder with ``writable`` (and
        ``tmpdir``, which becomes ``TMPDIR``). Without ``prlimit`` the limits are not in the
        command line: :meth:`run` sets them in the child."""
        cwd = Path(cwd).resolve()
        binds = [cwd, *(Path(p).resolve() for p in writable)]
        if tmpdir is not None:
            binds.append(Path(tmpdir).resolve())
        cmd: list[str] = []
        if self.prlimit:
            cpu, mem = self.limits.cpu_s, self.limits.memory_bytes
            cmd += [self.prlimit, f"--cpu={cpu}:{cpu + 1}", f"--as={mem}:{mem}", "--"]
        cmd += [
            self.binary,
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
        ]
        for path in dict.fromkeys(binds):
            cmd += ["--bind", str(path), str(path)]
        if tmpdir is not None:
            cmd += ["--setenv", "TMPDIR", str(Path(tmpdir).resolve())]
        return [*cmd, "--chdir", str(cwd), "--", *argv]

    def _set_limits(self) -> None:  # pragma: no cover - runs in the child, between fork and exec
        cpu, mem = self.limits.cpu_s, self.limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        writable: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` confined, its output captured as text, a private ``TMPDIR`` removed
        afterwards. A run past ``timeout`` raises :class:`subprocess.TimeoutExpired` (bwrap is
        killed, and everything in its PID namespace with it)."""
        environ = dict(os.environ if env is None else env)
        with tempfile.TemporaryDirectory(prefix="pantheon-sandbox-") as tmp:
            environ["TMPDIR"] = tmp
            return subprocess.run(
                self.wrap(argv, cwd, writable, tmpdir=Path(tmp)),
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=environ,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                preexec_fn=None if self.prlimit else self._set_limits,
            )

    def cpu_exceeded(self, returncode: int | None) -> bool:
        """Whether a run ended on its CPU-time limit (SIGXCPU)."""
        return _cpu_exceeded(returncode)


def missing_line(status: SandboxStatus) -> str:
    """The one line that says code cannot run confined here, and the two ways on."""
    if status.binary is None:
        return f"the sandbox for model-written code is missing ({status.reason}): {WAY_OUT}"
    return (
        f"the sandbox for model-written code does not work here ({status.reason}): allow user "
        "namespaces (a container started without them refuses bwrap), or --no-sandbox runs "
        "code jobs unconfined"
    )


def unconfined_allowed() -> bool:
    """Whether the operator chose unconfined runs of model-written code (PANTHEON_SANDBOX=off)."""
    return os.environ.get(SANDBOX_ENV, "").strip().lower() == "off"


def allow_unconfined() -> None:
    """Let model-written code run unconfined, in this process and the ones it starts."""
    os.environ[SANDBOX_ENV] = "off"


def code_sandbox(binary: str | None = None) -> Sandbox | None:
    """The sandbox model-written code runs in; None when the operator chose unconfined runs;
    SandboxError (one line: what is missing, and the way out) when it cannot be had."""
    if unconfined_allowed():
        return None
    return Sandbox.detect(binary)


def runs_code(flow_text: str) -> bool:
    """Whether a flow (its YAML text) runs model-written code: a node of a code agent, or a test
    gate of kind ``code``."""
    import yaml

    try:
        data = yaml.safe_load(flow_text)
    except yaml.YAMLError:
        return False
    nodes = data.get("nodes") if isinstance(data, dict) else None
    for node in nodes if isinstance(nodes, list) else []:
        if not isinstance(node, dict):
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        if node.get("agent") in CODE_AGENTS or (
            node.get("agent") == "test" and inputs.get("kind") == "code"
        ):
            return True
    return False


def code_jobs_pending(queue: JobQueue) -> int:
    """Jobs queued or running whose flow runs model-written code."""
    verdict: dict[str, bool] = {}
    count = 0
    for status in ("queued", "running"):
        offset = 0
        while batch := queue.jobs(status=status, limit=500, offset=offset):
            offset += len(batch)
            for job in batch:
                if job.flow_sha not in verdict:
                    try:
                        verdict[job.flow_sha] = runs_code(queue.flow_text(job.flow_sha)[1])
                    except PantheonError:
                        verdict[job.flow_sha] = job.flow == "codefix"
                count += verdict[job.flow_sha]
    return count
