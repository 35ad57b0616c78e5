"""The model server's process, as seen from outside: is a pid still the process we started,
launching it so that it dies with its parent, free ports, and reading its log and command.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = [
    "alias_of",
    "die_with_parent",
    "ephemeral_range",
    "free_port",
    "launch",
    "log_tail",
    "pid_alive",
    "port_free",
    "proc_start",
]


def proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when unknown or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if not fields or fields[0] == "Z":
        return None
    return int(fields[19])


def pid_alive(pid: int | None, start: int | None = None) -> bool:
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
    now = proc_start(pid)
    if Path("/proc").is_dir() and now is None:
        return False  # gone between the two checks, or a zombie
    return start is None or now is None or now == start


_PR_SET_PDEATHSIG = 1
_launcher: ThreadPoolExecutor | None = None
_launcher_lock = threading.Lock()


def launch(*args: Any, **kw: Any) -> subprocess.Popen[bytes]:
    """``Popen`` from the one launcher thread, which lives as long as the process: the
    parent-death signal fires when the forking *thread* ends, so no short-lived thread may
    fork a server."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = ThreadPoolExecutor(1, thread_name_prefix="pantheon-server-launcher")
    return _launcher.submit(subprocess.Popen, *args, **kw).result()


def die_with_parent(parent: int):
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


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` of ``host`` can be bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel gives outgoing connections (Linux's ``ip_local_port_range``)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A free port for a server of ours, below the range the kernel takes outgoing connections'
    ports from: a server restarted on its port must find it free, and a port of that range may
    meanwhile be the local end of one of this process's own connections. Never the same port
    twice in one process (two servers starting at once)."""
    low, _ = ephemeral_range()
    with _port_lock:
        if low > 12_000:
            for port in random.sample(range(10_000, low), k=min(200, low - 10_000)):
                if port not in _handed_out and port_free(host, port):
                    _handed_out.add(port)
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # the kernel's choice
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        _handed_out.add(port)
        return port


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a log file (empty when it cannot be read)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def alias_of(cmd: list[str], fallback: str) -> str:
    """The model name a server command serves under (its alias flag), else ``fallback``."""
    for flag in ("-a", "--served-model-name", "--alias"):
        if flag in cmd:
            return cmd[cmd.index(flag) + 1]
    return fallback
