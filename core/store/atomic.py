"""Atomic files: a reader never sees half a file, and a crash never leaves one.

Every write goes to a hidden temporary file in the same folder and is renamed over the target
(``os.replace`` is atomic on POSIX). With ``fsync=True`` the data is flushed to the disk before
the rename and the folder after it, so the write also survives a power cut; without it the write
survives any crash of the process (``kill -9`` included), and a reader that validates what it reads
treats a file torn by a power cut as missing.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pantheon.core.errors import ArtifactError

__all__ = [
    "TMP_PREFIX",
    "append_line",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "locked",
    "read_json",
    "remove_stale_temps",
]

TMP_PREFIX = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{id(data):x}")
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as exc:
        raise ArtifactError(
            f"cannot write {path}: {exc.strerror or exc}",
            hint=f"make {path.parent} writable, or point --artifacts at a folder you own",
        ) from exc
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ArtifactError(
                f"cannot write {path}: {exc.strerror or exc}",
                hint="is the disk full or read-only? the previous version of the file is intact",
            ) from exc
        raise
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_json(path: Path, value: Any, *, fsync: bool = False) -> None:
    """Write ``value`` as indented JSON, atomically."""
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"), fsync=fsync)


def read_json(path: Path) -> Any:
    """Read a JSON file; a truncated or garbled file raises ArtifactError naming it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(
            f"{path} is corrupt ({len(raw)} bytes, not valid JSON: {exc})",
            hint="the file was cut short or edited by hand; Pantheon treats it as missing",
        ) from exc


def append_line(path: Path, line: str) -> None:
    """Append one line with a single write (O_APPEND), so concurrent writers never interleave."""
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    try:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except FileNotFoundError:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ArtifactError(f"cannot append to {path}: {exc.strerror or exc}") from exc


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file beside what it guards).

    Where the lock file cannot be made (a read-only folder), go on without it: the write that
    follows fails with its own clear error.
    """
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files a crash left behind in ``folder`` (not recursive). Returns a count."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed += 1
    return removed
