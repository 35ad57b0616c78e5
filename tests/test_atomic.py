"""Atomic files: whole old content or whole new content, never half a file, never a stray temp."""

from __future__ import annotations

import errno
import json
import os
import threading
from collections import Counter
from pathlib import Path

import pytest

from pantheon.core.errors import ArtifactError
from pantheon.core.store import atomic
from pantheon.core.store.atomic import (
    TMP_PREFIX,
    append_line,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    read_json,
    remove_stale_temps,
)


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX))


def test_write_replaces_old_content_completely(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    target.write_text("x" * 10_000)
    atomic_write_json(target, {"answer": 42, "name": "Ωmega"})
    assert target.read_text(encoding="utf-8") == '{\n  "answer": 42,\n  "name": "Ωmega"\n}\n'
    assert read_json(target) == {"answer": 42, "name": "Ωmega"}
    atomic_write_text(target, "short")
    assert target.read_bytes() == b"short"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert temps(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "result.json"
    atomic_write_json(target, {"version": 1})
    before = target.read_bytes()
    real_write = os.write
    calls: list[int] = []

    def disk_fills_up(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))  # a short write: some bytes land
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", disk_fills_up)
    with pytest.raises((OSError, ArtifactError)):
        atomic_write_json(target, {"version": 2, "payload": "y" * 5000})
    monkeypatch.undo()
    assert len(calls) == 2  # it went on after the short write, then failed
    assert target.read_bytes() == before
    assert read_json(target) == {"version": 1}
    assert temps(tmp_path) == []


def test_fsync_write_flushes_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync
    synced: list[int] = []

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", spy)
    target = tmp_path / "control.json"
    atomic_write_json(target, {"concurrency": 8}, fsync=True)
    assert len(synced) == 2  # the data before the rename, the folder after it
    assert read_json(target) == {"concurrency": 8}
    atomic_write_text(target, "plain", fsync=False)
    assert len(synced) == 2
    assert target.read_text() == "plain"
    assert temps(tmp_path) == []


def test_read_json_of_a_truncated_file_is_an_artifact_error(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "alpha-000001" / "result.json"
    atomic_write_json(target, {"items": list(range(50))})
    whole = target.read_bytes()
    target.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ArtifactError) as info:
        read_json(target)
    assert str(target) in str(info.value)
    assert "corrupt" in str(info.value)
    target.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ArtifactError, match="corrupt"):
        read_json(target)


def test_read_json_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "nope.json")


def test_append_line_from_many_threads_yields_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    threads, per_thread = 8, 200

    def line(t: int, i: int) -> str:
        return f"{t}:{i}:" + chr(ord("a") + t) * (100 + (i * 37) % 3000)

    def work(t: int) -> None:
        for i in range(per_thread):
            append_line(log, line(t, i))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=30)
    text = log.read_text()
    assert text.endswith("\n")
    got = Counter(text.splitlines())
    want = Counter(line(t, i) for t in range(threads) for i in range(per_thread))
    assert got == want


def test_append_line_adds_exactly_one_newline(tmp_path: Path) -> None:
    log = tmp_path / "one.log"
    append_line(log, "first\n")
    append_line(log, "second")
    assert log.read_text() == "first\nsecond\n"


def test_remove_stale_temps_removes_only_temp_files(tmp_path: Path) -> None:
    for name in (f"{TMP_PREFIX}result.json.123.abc", f"{TMP_PREFIX}x", "result.json", "a.tmp-b"):
        (tmp_path / name).write_text("data")
    (tmp_path / f"{TMP_PREFIX}folder").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / f"{TMP_PREFIX}deep").write_text("data")
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["result.json", "a.tmp-b", f"{TMP_PREFIX}folder", "sub"]
    )
    assert (tmp_path / "sub" / f"{TMP_PREFIX}deep").exists()  # not recursive
    assert remove_stale_temps(tmp_path) == 0
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_writing_into_a_missing_folder_creates_it(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c.json"
    atomic_write_json(target, [1, 2, 3])
    assert json.loads(target.read_text()) == [1, 2, 3]
    log = tmp_path / "x" / "y" / "z.log"
    append_line(log, "hello")
    assert log.read_text() == "hello\n"
    assert temps(target.parent) == []
