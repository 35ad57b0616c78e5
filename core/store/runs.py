"""The run records: a run's folder under ``runs/`` and what it holds (the layout of the whole
artifacts directory, where engine, console, report and trainer meet, is in layout.py).

Every file is written atomically. A reader validates what it reads: a truncated or garbled file
is reported as corrupt and treated as missing, never trusted.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from pantheon.core.errors import ArtifactError
from pantheon.core.store.atomic import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temps,
)
from pantheon.core.store.layout import (
    ERROR_FILE,
    FAILED_FILE,
    INPUT_FILE,
    OUTPUT_FILE,
    RUN_FILE,
    RUNS,
    WAITING_FILE,
    run_path,
    runs_path,
)

__all__ = ["RUNS", "WAITING_FILE", "FailedRecord", "RunDir", "RunRecord", "iter_runs"]

RunStatus = Literal["running", "done", "failed", "stopped"]


class RunRecord(BaseModel):
    """``run.json``."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    job_id: int
    flow: str
    flow_sha256: str
    status: RunStatus
    input: dict[str, Any]
    output: dict[str, Any] | None = None
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 1
    nodes: dict[str, str] = {}
    """Node id -> ``done``, ``failed``, ``skipped`` (output already there) or ``pending``."""
    error: str | None = None


class FailedRecord(BaseModel):
    """``FAILED.json``: what stopped a run."""

    node: str
    agent: str
    error: str
    artifact: str
    """The path of the node's error.txt or output.json, relative to the artifacts directory."""
    at: str


class RunDir:
    """One run's folder."""

    def __init__(self, artifacts: Path, run_name: str, *, fsync: bool = False) -> None:
        self.artifacts = Path(artifacts)
        self.name = run_name
        self.path = run_path(self.artifacts, run_name)
        self.fsync = fsync

    def node_dir(self, node: str) -> Path:
        return self.path / node

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.artifacts)

    def prepare(self) -> bool:
        """Create the run's folder; in an existing one, remove the temp files a crash left.

        Returns True when the run is new (nothing on disk to resume from).
        """
        try:
            self.path.mkdir(parents=True)
            return True
        except FileExistsError:
            pass
        except FileNotFoundError:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ArtifactError(f"cannot create {self.path}: {exc.strerror or exc}") from None
            return True
        except OSError as exc:
            raise ArtifactError(
                f"cannot create {self.path}: {exc.strerror or exc}",
                hint="make the artifacts directory writable, or pass another --artifacts",
            ) from None
        remove_stale_temps(self.path)
        for entry in os.scandir(self.path):
            if entry.is_dir(follow_symlinks=False):
                remove_stale_temps(Path(entry.path))
        return False

    # -- run.json ---------------------------------------------------------------------------

    def read_record(self) -> RunRecord | None:
        """The run's record, or None when it is missing or corrupt."""
        try:
            return RunRecord.model_validate(read_json(self.path / RUN_FILE))
        except (FileNotFoundError, ArtifactError, ValidationError):
            return None

    def write_record(self, record: RunRecord) -> None:
        atomic_write_json(self.path / RUN_FILE, record.model_dump(mode="json"), fsync=self.fsync)

    # -- nodes ------------------------------------------------------------------------------

    def write_input(self, node: str, data: dict[str, Any]) -> None:
        folder = self.node_dir(node)
        folder.mkdir(exist_ok=True)
        atomic_write_json(folder / INPUT_FILE, data, fsync=self.fsync)

    def write_output(self, node: str, data: dict[str, Any]) -> None:
        atomic_write_json(self.node_dir(node) / OUTPUT_FILE, data, fsync=self.fsync)

    def clear_error(self, node: str) -> None:
        """Forget an earlier attempt's error of a node about to run again."""
        (self.node_dir(node) / ERROR_FILE).unlink(missing_ok=True)

    def write_error(self, node: str, text: str) -> Path:
        path = self.node_dir(node) / ERROR_FILE
        atomic_write_text(path, text.rstrip("\n") + "\n", fsync=self.fsync)
        return path

    def read_output(self, node: str, model: type[BaseModel]) -> tuple[BaseModel | None, str | None]:
        """A node's earlier output, validated; (None, why) when missing, corrupt or invalid."""
        path = self.node_dir(node) / OUTPUT_FILE
        try:
            data = read_json(path)
        except FileNotFoundError:
            return None, None
        except ArtifactError as exc:
            return None, exc.message
        try:
            return model.model_validate(data), None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return None, f"{path} does not fit {model.__name__} ({where}: {first['msg']})"

    def write_failed(self, failed: FailedRecord) -> None:
        atomic_write_json(self.path / FAILED_FILE, failed.model_dump(mode="json"), fsync=self.fsync)

    def clear_failed(self) -> None:
        (self.path / FAILED_FILE).unlink(missing_ok=True)

    def read_failed(self) -> FailedRecord | None:
        try:
            return FailedRecord.model_validate(read_json(self.path / FAILED_FILE))
        except (FileNotFoundError, ArtifactError, ValidationError):
            return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def iter_runs(artifacts: Path) -> list[tuple[str, RunRecord | None, str | None]]:
    """Every run folder as (name, record or None, why it could not be read)."""
    root = runs_path(artifacts)
    out: list[tuple[str, RunRecord | None, str | None]] = []
    try:
        entries = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except FileNotFoundError:
        return out
    for name in entries:
        path = root / name / RUN_FILE
        try:
            out.append((name, RunRecord.model_validate(read_json(path)), None))
        except FileNotFoundError:
            out.append((name, None, f"{path} is missing"))
        except ArtifactError as exc:
            out.append((name, None, exc.message))
        except ValidationError as exc:
            out.append((name, None, f"{path} does not fit run.json: {exc.errors()[0]['msg']}"))
    return out
