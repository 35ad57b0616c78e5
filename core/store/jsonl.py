"""JSON Lines, read one way: every JSONL file of the artifacts directory (``metrics/engine.jsonl``,
a node's ``calls.jsonl``, ``canaries.jsonl``) is read by :func:`read_jsonl`, or followed by
:class:`JsonlTail`, under one rule:

- one JSON object a line; blank lines are nothing;
- a line that is not an object — not JSON, not UTF-8, another JSON value, or (given a record
  type) an object that does not fit it — is a *bad line*: skipped, never fatal, and returned
  with its number and why, for the caller to count, log or show;
- the last line may lack its newline: a write cut short (a crash, a full disk), or one still
  arriving. A full read takes it when it parses and counts it bad when it does not; a tail read
  keeps it until its newline arrives.

What is returned is each line's object as written (a dict: extra fields kept); a record type
only checks it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

__all__ = ["BadLine", "JsonlTail", "jsonl_lines", "parse_jsonl", "read_jsonl"]

Check = Callable[[dict[str, Any]], str | None]
"""A caller's own test of a line's object: why it is not usable, or None."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line that could not be used."""

    number: int
    """1 for the first line read (for a tail read, the first line of this read)."""
    why: str
    """``is not JSON (...)``, ``is not an object``, ``does not fit CallRecord (...)``..."""

    def describe(self, path: Path | str) -> str:
        return f"{path} line {self.number} {self.why}"


def _value(
    line: bytes, record: type[BaseModel] | None, check: Check | None
) -> tuple[dict[str, Any] | None, str | None]:
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"is not JSON ({exc})"
    if not isinstance(value, dict):
        return None, "is not an object"
    if record is not None:
        try:
            record.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return None, f"does not fit {record.__name__} ({where}: {first['msg']})"
    if check is not None:
        why = check(value)
        if why:
            return None, why
    return value, None


def jsonl_lines(
    data: bytes, *, record: type[BaseModel] | None = None, check: Check | None = None
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """Each non-blank line of ``data`` in order: (its number, its object or None, why not)."""
    for i, line in enumerate(data.split(b"\n"), start=1):
        if line.strip():
            value, why = _value(line, record, check)
            yield i, value, (why or "is not usable") if value is None else None


def parse_jsonl(
    data: bytes,
    *,
    record: type[BaseModel] | None = None,
    check: Check | None = None,
    last: int | None = None,
) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """The objects of ``data``, oldest first, and its bad lines.

    ``last``: only the last that many usable objects, read from the end (a bad last line
    hides nothing, and the lines before those are not looked at)."""
    values: list[dict[str, Any]] = []
    bad: list[BadLine] = []
    if last is None:
        for number, value, why in jsonl_lines(data, record=record, check=check):
            if value is None:
                bad.append(BadLine(number, why or ""))
            else:
                values.append(value)
        return values, bad
    lines = data.split(b"\n")
    for i in range(len(lines) - 1, -1, -1):
        if len(values) >= last:
            break
        if not lines[i].strip():
            continue
        value, why = _value(lines[i], record, check)
        if value is None:
            bad.append(BadLine(i + 1, why or "is not usable"))
        else:
            values.append(value)
    values.reverse()
    bad.reverse()
    return values, bad


def read_jsonl(
    path: Path | str,
    *,
    record: type[BaseModel] | None = None,
    check: Check | None = None,
    last: int | None = None,
) -> tuple[list[dict[str, Any]], list[BadLine]]:
    """A JSONL file's objects, oldest first, and its bad lines; a missing file has none.

    Any other trouble reading the file (``OSError``) is the caller's to handle."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], []
    return parse_jsonl(data, record=record, check=check, last=last)


class JsonlTail:
    """Follows a JSONL file as it grows: its last ``tail_bytes`` first, then new lines only.

    A line still without its newline waits for the next read; a first read that starts in the
    middle of the file drops the cut first line (it is neither read nor counted bad); a file
    that shrank or was replaced (rotated, rewritten) is read again from its start, and
    ``restarted`` says so after that read.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        tail_bytes: int = 8 << 20,
        record: type[BaseModel] | None = None,
        check: Check | None = None,
    ) -> None:
        self.path = Path(path)
        self.tail_bytes = tail_bytes
        self.record = record
        self.check = check
        self.restarted = False
        self._offset: int | None = None
        self._rest = b""
        self._inode: int | None = None

    def read(self) -> tuple[list[dict[str, Any]], list[BadLine]]:
        """The objects of the lines completed since the last call, and the bad ones."""
        self.restarted = False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._offset, self._rest = None, b""
            return [], []
        if self._offset is not None and (st.st_size < self._offset or st.st_ino != self._inode):
            self._offset, self._rest = None, b""
            self.restarted = True
        self._inode = st.st_ino
        start = self._offset
        if start is None:
            start = max(0, st.st_size - self.tail_bytes)
        if st.st_size == start:
            self._offset = start
            return [], []
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(st.st_size - start)
        first_read = self._offset is None
        self._offset = start + len(data)
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        data, self._rest = data[:cut], data[cut:]
        if first_read and start > 0:
            data = data[data.find(b"\n") + 1 :]  # began mid-line
        return parse_jsonl(data, record=self.record, check=self.check)
