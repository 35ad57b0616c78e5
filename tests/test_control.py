"""control.json: the operator's controls, written atomically and read cheaply by the engine."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from pantheon.core.errors import ConfigError, PantheonError
from pantheon.core.store.atomic import TMP_PREFIX
from pantheon.core.store.control import Control, ControlFile


@pytest.fixture
def art(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts"
    path.mkdir()
    return path


def on_disk(art: Path) -> dict:
    return json.loads((art / "control.json").read_text())


def test_defaults_when_the_file_is_missing(art: Path) -> None:
    cf = ControlFile(art)
    control = cf.read()
    assert control == Control()
    assert (control.concurrency, control.queue_paused, control.merges_paused) == (4, False, False)
    assert cf.error is None
    assert cf.load_strict() == Control()
    assert not cf.path.exists()  # reading creates nothing


def test_update_writes_the_file_and_read_sees_it(art: Path) -> None:
    cf = ControlFile(art)
    returned = cf.update(by="pantheon control", concurrency=8)
    assert returned.concurrency == 8
    data = on_disk(art)
    assert data["concurrency"] == 8
    assert data["updated_by"] == "pantheon control"
    assert datetime.fromisoformat(data["updated_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert sorted(p.name for p in art.iterdir()) == [".control.lock", "control.json"]  # no temp
    assert cf.read().concurrency == 8
    assert ControlFile(art).read() == returned
    # A second update keeps what the first one set.
    cf.update(by="console", merges_paused=True)
    assert (cf.read().concurrency, cf.read().merges_paused) == (8, True)


def test_update_creates_a_missing_artifacts_folder(tmp_path: Path) -> None:
    cf = ControlFile(tmp_path / "new" / "artifacts")
    cf.update(by="t", concurrency=2)
    assert ControlFile(tmp_path / "new" / "artifacts").read().concurrency == 2


def test_read_rereads_a_file_changed_by_someone_else(art: Path) -> None:
    engine, console = ControlFile(art), ControlFile(art)
    console.update(by="console", concurrency=8)
    assert engine.read().concurrency == 8
    console.update(by="console", concurrency=16, queue_paused=True, queue_paused_reason="lunch")
    seen = engine.read()
    assert (seen.concurrency, seen.queue_paused, seen.queue_paused_reason) == (16, True, "lunch")
    # Edited by hand, too.
    (art / "control.json").write_text(json.dumps({"concurrency": 3}))
    assert engine.read().concurrency == 3
    # Deleted: back to the defaults.
    (art / "control.json").unlink()
    assert engine.read() == Control()


def test_read_rereads_a_same_size_rewrite_within_one_clock_tick(art: Path) -> None:
    """Two writes in the same timestamp tick with the same size must not look unchanged.

    File timestamps come from a coarse clock (a few ms), so a console that changes the
    concurrency twice in quick succession writes files of the same size and mtime.
    """
    engine = ControlFile(art)
    path = art / "control.json"
    path.write_text(json.dumps({"concurrency": 10}))
    st = os.stat(path)
    assert engine.read().concurrency == 10
    tmp = art / f"{TMP_PREFIX}control.json"
    tmp.write_text(json.dumps({"concurrency": 20}))  # the same size
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same tick
    os.replace(tmp, path)
    assert engine.read().concurrency == 20


def test_pausing_sets_since_and_reason_and_resuming_clears_them(art: Path) -> None:
    cf = ControlFile(art)
    before = datetime.now(UTC)
    paused = cf.update(by="console", queue_paused=True, queue_paused_reason="model server down")
    assert paused.queue_paused is True
    assert paused.queue_paused_reason == "model server down"
    assert paused.queue_paused_since is not None and paused.queue_paused_since >= before
    assert paused.merges_paused_since is None  # the other switch is untouched
    since = paused.queue_paused_since

    again = cf.update(by="console", queue_paused=True, queue_paused_reason="still down")
    assert again.queue_paused_since == since  # paused since the first pause
    assert again.queue_paused_reason == "still down"

    merges = cf.update(by="engine", merges_paused=True, merges_paused_reason="tests failing")
    assert merges.merges_paused_since is not None
    assert merges.queue_paused_since == since

    resumed = cf.update(by="console", queue_paused=False)
    assert resumed.queue_paused is False
    assert (resumed.queue_paused_since, resumed.queue_paused_reason) == (None, None)
    assert resumed.merges_paused is True and resumed.merges_paused_reason == "tests failing"
    data = on_disk(art)
    assert (data["queue_paused"], data["queue_paused_since"], data["queue_paused_reason"]) == (
        False,
        None,
        None,
    )
    assert ControlFile(art).read() == resumed

    resumed = cf.update(by="console", merges_paused=False)
    assert (resumed.merges_paused_since, resumed.merges_paused_reason) == (None, None)


def fails_closed(control: Control, art: Path) -> bool:
    """The queue and merges paused, each reason naming the file and saying it is not usable."""
    reasons = (control.queue_paused_reason or "", control.merges_paused_reason or "")
    return (
        control.queue_paused
        and control.merges_paused
        and all(f"{art / 'control.json'} is not usable" in r for r in reasons)
        and control.queue_paused_since is not None
    )


@pytest.mark.parametrize(
    "bad",
    ['{"concurrency": 12, "queue_pa', '{"concurrency": 0}', "[1, 2]", ""],
    ids=["truncated", "out of range", "not an object", "empty"],
)
def test_a_corrupt_file_pauses_the_queue_and_merges_until_it_is_fixed(art: Path, bad: str) -> None:
    cf = ControlFile(art)
    cf.update(by="console", concurrency=6)
    assert cf.read().queue_paused is False
    (art / "control.json").write_text(bad)
    kept = cf.read()
    assert kept.concurrency == 6  # the last good concurrency
    assert fails_closed(kept, art)
    assert cf.error is not None and str(art / "control.json") in cf.error
    assert cf.read() == kept  # read again: the same pause, the same time
    with pytest.raises(ConfigError) as info:
        cf.load_strict()
    assert str(art / "control.json") in str(info.value)
    with pytest.raises(ConfigError):
        cf.update(by="console", concurrency=2)  # never writes over a file it cannot read
    assert (art / "control.json").read_text() == bad
    # Fixed: the error goes away and the new controls apply.
    (art / "control.json").write_text(json.dumps({"concurrency": 9}))
    fixed = cf.read()
    assert (fixed.concurrency, fixed.queue_paused, fixed.merges_paused) == (9, False, False)
    assert cf.error is None


def test_a_corrupt_file_at_start_pauses_with_the_default_concurrency(art: Path) -> None:
    (art / "control.json").write_text("{oops")
    cf = ControlFile(art)
    control = cf.read()
    assert control.concurrency == Control().concurrency
    assert fails_closed(control, art)
    assert cf.error is not None and "control.json" in cf.error


def test_an_unreadable_file_pauses_too(art: Path) -> None:
    (art / "control.json").mkdir()  # reading it fails with an OSError, as root too
    cf = ControlFile(art)
    control = cf.read()
    assert fails_closed(control, art)
    assert "cannot read it" in (cf.error or "")
    (art / "control.json").rmdir()
    assert cf.read() == Control() and cf.error is None  # deleted: the defaults


def test_the_last_good_controls_are_kept_in_the_queue(art: Path) -> None:
    from pantheon.core.store.queue import JobQueue

    with JobQueue(art) as queue:
        engine = ControlFile(art, store=queue)
        engine.update(by="console", concurrency=3)
        engine.read()
        assert engine.remember() is True
        assert engine.remember() is False  # unchanged: not written again
        (art / "control.json").write_text('{"concurrency": "lots"}')
        engine.read()
        assert engine.remember() is False  # a corrupt file is never kept as good
    # another process, started on the corrupt file, never saw a good one
    with JobQueue(art) as queue:
        later = ControlFile(art, store=queue)
        control = later.read()
        assert control.concurrency == 3
        assert fails_closed(control, art)
    assert ControlFile(art).read().concurrency == Control().concurrency  # no store: defaults


def test_a_corrupt_file_is_logged_once_however_many_read_it(art: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    (art / "control.json").write_text("{oops")
    engine = ControlFile(art)
    for _ in range(50):
        engine.read()
    for _ in range(20):  # the merge gate reads it afresh for each change
        ControlFile(art).read()
    lines = [r for r in caplog.records if "is not usable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR"
    assert "the queue and merges are paused until it is fixed" in lines[0].getMessage()
    (art / "control.json").write_text("{}")
    engine.read()
    assert any("usable again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("concurrency", [0, -1, 1025, 5000])
def test_concurrency_out_of_range_is_refused(art: Path, concurrency: int) -> None:
    with pytest.raises(ValidationError):
        Control(concurrency=concurrency)
    cf = ControlFile(art)
    cf.update(by="console", concurrency=7)
    with pytest.raises((ValidationError, PantheonError)):
        cf.update(by="console", concurrency=concurrency)
    assert on_disk(art)["concurrency"] == 7
    assert ControlFile(art).read().concurrency == 7


def test_concurrency_bounds_are_accepted(art: Path) -> None:
    cf = ControlFile(art)
    assert cf.update(by="t", concurrency=1).concurrency == 1
    assert cf.update(by="t", concurrency=1024).concurrency == 1024
    assert ControlFile(art).read().concurrency == 1024


def test_ensure_creates_the_file_only_when_missing(art: Path) -> None:
    cf = ControlFile(art)
    created = cf.ensure()
    assert cf.path.exists()
    assert created.concurrency == Control().concurrency
    assert on_disk(art)["updated_by"] == "defaults"

    cf.update(by="console", concurrency=7)
    written = cf.path.read_bytes()
    assert ControlFile(art).ensure().concurrency == 7
    assert cf.path.read_bytes() == written

    # An unreadable file is the operator's to fix: ensure() does not overwrite it.
    cf.path.write_text("{broken")
    other = ControlFile(art)
    assert fails_closed(other.ensure(), art)
    assert other.error is not None
    assert cf.path.read_text() == "{broken"
