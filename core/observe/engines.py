"""Which engines drain the artifacts directory now: each writes a heartbeat file in
``ARTIFACTS/engines/`` every few seconds (its host, pid, role, the jobs it runs, the model
servers it asks) and removes it when it stops. ``pantheon status`` and the console read them; a
heartbeat older than :data:`SILENT_S` names an engine that went silent (killed, or its host
lost), whose jobs the others take back when their leases run out."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.store.atomic import atomic_write_json, read_json

__all__ = [
    "ENGINES_DIR",
    "SILENT_S",
    "EngineBeat",
    "Heartbeat",
    "engine_lines",
    "lines_of",
    "read_beats",
]

ENGINES_DIR = "engines"
BEAT_KEY = "engine-beat:"
"""The queue's small values under this prefix are the engines' heartbeats."""
SILENT_S = 30.0
"""A heartbeat older than this: the engine is silent."""


class EngineBeat(BaseModel):
    """One engine's heartbeat."""

    owner: str
    """The lease owner id its jobs carry in the queue (host, pid, a random part)."""
    host: str
    pid: int
    role: str
    """``night``, ``engine``, or ``engine (joined)``."""
    started: float
    beat: float
    running: list[int]
    """The jobs it runs now."""
    servers: list[str]
    """The model servers it asks (host:port)."""
    done: int = 0
    failed: int = 0

    @classmethod
    def now(cls, owner: str, role: str, started: float, **figures: object) -> EngineBeat:
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        return cls(
            owner=owner,
            host=host or socket.gethostname(),
            pid=int(pid) if pid.isdigit() else 0,
            role=role,
            started=started,
            beat=time.time(),
            **figures,  # type: ignore[arg-type]
        )


def _path(artifacts: Path, owner: str) -> Path:
    return Path(artifacts) / ENGINES_DIR / (re.sub(r"[^A-Za-z0-9_.-]", "-", owner) + ".json")


def write_beat(artifacts: Path, beat: EngineBeat) -> None:
    atomic_write_json(_path(artifacts, beat.owner), beat.model_dump(mode="json"))


def remove_beat(artifacts: Path, owner: str) -> None:
    _path(artifacts, owner).unlink(missing_ok=True)


def read_beats(
    artifacts: Path, queue: Any = None, also: Iterable[EngineBeat] = ()
) -> list[EngineBeat]:
    """Every engine's last heartbeat, oldest engine first: the files of this artifacts
    directory, and with ``queue`` the beats kept in it (every host's, for a shared queue), and
    ``also`` (read before). An unreadable one is left out."""
    found: dict[str, EngineBeat] = {}
    for beat in also:
        found[beat.owner] = beat

    def keep(beat: EngineBeat) -> None:
        if beat.owner not in found or found[beat.owner].beat < beat.beat:
            found[beat.owner] = beat

    for path in sorted((Path(artifacts) / ENGINES_DIR).glob("*.json")):
        try:
            keep(EngineBeat.model_validate(read_json(path)))
        except (OSError, ArtifactError, ValidationError, ValueError):
            continue
    if queue is not None:
        for text in queue.values(BEAT_KEY).values():
            with contextlib.suppress(ValidationError, ValueError):
                keep(EngineBeat.model_validate_json(text))
    return sorted(found.values(), key=lambda b: b.started)


def engine_lines(artifacts: Path, now: float | None = None, queue: Any = None) -> list[str]:
    """One line per engine: where it runs, what it runs, when it last beat."""
    return lines_of(read_beats(artifacts, queue), now)


def lines_of(beats: Iterable[EngineBeat], now: float | None = None) -> list[str]:
    """The engines' lines, as of ``now``."""
    now = time.time() if now is None else now
    lines = []
    for b in beats:
        ago = now - b.beat
        when = (
            f"beat {ago:.0f} s ago"
            if ago < SILENT_S
            else "SILENT since " + datetime.fromtimestamp(b.beat).strftime("%H:%M:%S")
        )
        servers = ", ".join(b.servers) or "no model server"
        lines.append(
            f"{b.host} pid {b.pid} ({b.role}): {len(b.running)} running, {b.done} done, "
            f"{b.failed} failed; {servers}; {when}"
        )
    return lines


class Heartbeat:
    """An engine's heartbeat file, written at most every ``every_s`` seconds (an object the
    engine holds); a write that fails (a full disk) is skipped, never fatal."""

    def __init__(self, artifacts: Path, owner: str, role: str, every_s: float = 2.0) -> None:
        self.artifacts = Path(artifacts)
        self.owner = owner
        self.role = role
        self.every_s = every_s
        self.started = time.time()
        self.last = -1e9

    def beat(
        self, running: list[int], servers: list[str], done: int, failed: int, queue: Any = None
    ) -> None:
        """The file, and with ``queue`` the same beat kept in it (read by every host)."""
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        self.last = now
        beat = EngineBeat.now(
            self.owner, self.role, self.started,
            running=running, servers=servers, done=done, failed=failed,
        )  # fmt: skip
        try:
            write_beat(self.artifacts, beat)
        except (OSError, ArtifactError):
            return
        if queue is not None:
            with contextlib.suppress(PantheonError):
                queue.set_value(BEAT_KEY + self.owner, beat.model_dump_json())

    def stop(self, queue: Any = None) -> None:
        with contextlib.suppress(OSError):
            remove_beat(self.artifacts, self.owner)
        if queue is not None:
            with contextlib.suppress(PantheonError):
                queue.delete_value(BEAT_KEY + self.owner)
