"""``control.json``: the operator's controls, read by the engine on every tick.

The console and ``pantheon control`` write it; the engine writes it only to create it and to
pause merges by itself. Every write is atomic and flushed to disk.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .atomic import atomic_write_json, locked, read_json
from .errors import ArtifactError, ConfigError

__all__ = ["Control", "ControlFile"]

log = logging.getLogger(__name__)

CONTROL_FILE = "control.json"


def _now() -> datetime:
    return datetime.now(UTC)


class Control(BaseModel):
    """The operator's controls."""

    model_config = ConfigDict(extra="ignore")

    concurrency: int = Field(default=4, ge=1, le=1024)
    """How many jobs the engine runs at once (c)."""
    queue_paused: bool = False
    """When true, the engine claims no new jobs; running ones finish."""
    queue_paused_reason: str | None = None
    queue_paused_since: datetime | None = None
    merges_paused: bool = False
    """When true, the merge gate merges nothing; changes wait for the morning review."""
    merges_paused_reason: str | None = None
    merges_paused_since: datetime | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None

    def with_changes(self, *, by: str, **changes: object) -> Control:
        """A copy with ``changes`` applied, the pause times and reasons kept consistent."""
        data = self.model_dump()
        data.update(changes)
        now = _now()
        for what in ("queue", "merges"):
            key = f"{what}_paused"
            if key in changes:
                if changes[key] and not self.model_dump()[key]:
                    data[f"{key}_since"] = now
                elif not changes[key]:
                    data[f"{key}_since"] = None
                    data[f"{key}_reason"] = None
        data["updated_at"] = now
        data["updated_by"] = by
        return Control.model_validate(data)


class ControlFile:
    """Reads ``control.json`` cheaply (only when it changed) and writes it atomically."""

    def __init__(self, artifacts: Path) -> None:
        self.path = Path(artifacts) / CONTROL_FILE
        self._raw: bytes | None = None
        self._current = Control()
        self.error: str | None = None
        """Why the file on disk could not be used (the last good controls stay in force)."""

    def read(self) -> Control:
        """The controls in force; a corrupt file keeps the last good ones and sets ``error``.

        The file is small: it is read whole every time and parsed only when its bytes changed,
        so a rewrite within one tick of the file system's clock is never missed.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._raw = None
            self.error = None
            self._current = Control()
            return self._current
        except OSError as exc:
            self.error = f"cannot read {self.path}: {exc.strerror or exc}"
            return self._current
        if raw == self._raw:
            return self._current
        self._raw = raw
        try:
            self._current = Control.model_validate_json(raw)
            self.error = None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            why = f"{where}: {first['msg']}" if raw.strip() else "the file is empty"
            if self.error is None:
                log.error("%s is not usable (%s); keeping the last good controls", self.path, why)
            self.error = f"{self.path} is not usable: {why}"
        return self._current

    def load_strict(self) -> Control:
        """The controls on disk; raise ConfigError when the file is corrupt."""
        try:
            return Control.model_validate(read_json(self.path))
        except FileNotFoundError:
            return Control()
        except (ArtifactError, ValidationError) as exc:
            raise ConfigError(
                f"{self.path} is not usable: {str(exc).splitlines()[0]}",
                hint="fix it by hand, or delete it to go back to the defaults",
            ) from None

    def write(self, control: Control) -> None:
        atomic_write_json(self.path, control.model_dump(mode="json"), fsync=True)
        self._raw = None

    def update(self, *, by: str, **changes: object) -> Control:
        """Apply changes to what is on disk and write it back; ConfigError if they do not fit."""
        with locked(self.path.with_name(".control.lock")):
            try:
                control = self.load_strict().with_changes(by=by, **changes)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
                )
                raise ConfigError(f"control change refused: {problems}") from None
            self.write(control)
        return control

    def ensure(self) -> Control:
        """Create the file with the defaults when it does not exist."""
        if not self.path.exists():
            with locked(self.path.with_name(".control.lock")):
                if not self.path.exists():
                    self.write(Control().with_changes(by="engine"))
        return self.read()
