"""``control.json``: the operator's controls, read by the engine on every tick.

The console and ``pantheon control`` write it; the engine writes it only to create it and to
pause merges by itself. Every write is atomic and flushed to disk. A file that cannot be used
pauses the queue and merges until it is fixed: an unattended night fails closed.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pantheon.core.errors import ArtifactError, ConfigError, PantheonError
from pantheon.core.ratelog import RepeatLog
from pantheon.core.store.atomic import atomic_write_json, locked, read_json
from pantheon.core.store.layout import CONTROL_FILE

__all__ = ["CONTROL_FILE", "UNUSABLE_EFFECT", "Control", "ControlFile", "ValueStore"]

log = logging.getLogger(__name__)
_repeats = RepeatLog(log)
"""Each reader (the merge gate makes one per merge) would otherwise say it again."""

LAST_GOOD_KEY = "control.last_good"
FLEET_KEY = "control.fleet"
"""The pauses every engine of a shared queue follows (:meth:`ControlFile.sync_pauses`)."""
PAUSE_FIELDS = ("queue_paused", "queue_paused_reason", "merges_paused", "merges_paused_reason")
"""The queue database's key for the last good controls."""
UNUSABLE_EFFECT = "the queue and merges are paused until it is fixed"
"""What a ``control.json`` that cannot be used does."""


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


class ValueStore(Protocol):
    """Where the last good controls are kept durably (the queue database)."""

    def get_value(self, key: str) -> str | None: ...

    def set_value(self, key: str, value: str) -> None: ...


class ControlFile:
    """Reads ``control.json`` cheaply (only when it changed) and writes it atomically.

    A file that cannot be used (corrupt, out of range, unreadable) fails closed: the controls
    in force are the last good ones with the queue and merges paused, the reason naming the
    file and what is wrong with it, until the file is fixed (or deleted: the defaults). With a
    ``store`` the last good controls outlive the process: ``remember()`` keeps them there, and a
    reader that never saw a good file (an engine started on a corrupt one) takes them from it.
    """

    def __init__(self, artifacts: Path, *, store: ValueStore | None = None) -> None:
        self.path = Path(artifacts) / CONTROL_FILE
        self.store = store
        self._raw: bytes | None = None
        self._current = Control()
        self._good: Control | None = None
        """The last good controls this reader read (or the defaults, for a missing file)."""
        self._stored: str | None = None
        self._recalled = False
        self.error: str | None = None
        """Why the file on disk cannot be used (the queue and merges are paused until it is
        fixed); None when it can."""
        self.error_since: datetime | None = None

    def read(self) -> Control:
        """The controls in force; a file that cannot be used sets ``error`` and fails closed.

        The file is small: it is read whole every time and parsed only when its bytes changed,
        so a rewrite within one tick of the file system's clock is never missed.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._raw = None
            self._usable()
            self._current = self._good = Control()
            return self._current
        except OSError as exc:
            self._raw = None
            return self._unusable(f"cannot read it ({exc.strerror or exc})")
        if raw == self._raw:
            return self._current
        self._raw = raw
        try:
            control = Control.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "file"
            return self._unusable(f"{where}: {first['msg']}" if raw.strip() else "it is empty")
        self._usable()
        self._current = self._good = control
        return control

    def _usable(self) -> None:
        if self.error is not None:
            _repeats.forget(str(self.path))
            log.info("%s is usable again; the controls in it apply", self.path)
        self.error = self.error_since = None

    def _unusable(self, why: str) -> Control:
        """The last good controls, the queue and merges paused with the reason."""
        error = f"{self.path} is not usable: {why}"
        if self.error_since is None:
            self.error_since = _now()
        if error != self.error:
            _repeats.error(str(self.path), "%s; %s", error, UNUSABLE_EFFECT)
        self.error = error
        base = self.last_good() or Control()
        self._current = base.model_copy(
            update={
                "queue_paused": True,
                "queue_paused_reason": error,
                "queue_paused_since": self.error_since,
                "merges_paused": True,
                "merges_paused_reason": error,
                "merges_paused_since": self.error_since,
            }
        )
        return self._current

    def last_good(self) -> Control | None:
        """The last good controls: those this reader last read, else those kept in the store."""
        if self._good is not None:
            return self._good
        if self.store is not None and not self._recalled:
            self._recalled = True
            try:
                text = self.store.get_value(LAST_GOOD_KEY)
                if text is not None:
                    self._good = Control.model_validate_json(text)
                    self._stored = text
            except (PantheonError, ValidationError) as exc:
                log.warning("the last good controls kept in the queue are not usable: %s", exc)
        return self._good

    def remember(self) -> bool:
        """Keep the controls in force in the store as the last good ones, when they changed
        since they were kept; True when they were written. Raises the store's error (a
        QueueError) when it cannot keep them; the next call tries again."""
        if self.store is None or self.error is not None or self._good is None:
            return False
        text = self._good.model_dump_json()
        if text == self._stored:
            return False
        self.store.set_value(LAST_GOOD_KEY, text)
        self._stored = text
        return True

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
                    self.write(Control().with_changes(by="defaults"))
        return self.read()

    def sync_pauses(self, store: ValueStore, local: Control) -> Control:
        """With a queue several hosts share: the pauses are the fleet's. A pause or resume
        made here later than the fleet's is published to the queue; one made on another host
        later is taken into this host's file (by ``fleet``). The last change wins; concurrency
        stays each host's own."""
        text = store.get_value(FLEET_KEY)
        fleet = json.loads(text) if text else None
        mine = {k: getattr(local, k) for k in PAUSE_FIELDS}
        at = local.updated_at.timestamp() if local.updated_at else 0.0
        if fleet is None or (
            local.updated_by not in ("fleet", "defaults")  # a new host never unpauses the fleet
            and at > float(fleet.get("at", 0))
            and mine != {k: fleet.get(k) for k in PAUSE_FIELDS}
        ):
            store.set_value(FLEET_KEY, json.dumps({**mine, "at": at, "by": local.updated_by}))
            return local
        theirs = {k: fleet.get(k) for k in PAUSE_FIELDS}
        if theirs == mine:
            return local
        log.info("pauses changed on another host (by %s): taken here", fleet.get("by"))
        return self.update(by="fleet", **theirs)
