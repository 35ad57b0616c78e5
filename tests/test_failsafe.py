"""An unattended night fails safe: a control.json it cannot use pauses the queue and merges, a full
disk pauses the night once and lets it go on by itself, and a repeated trouble is one line."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import until
from pydantic import BaseModel

from pantheon.core import Agent, Engine, JobQueue, NodeContext, enqueue, parse_flow
from pantheon.core.agents.gates import merge_refusal
from pantheon.core.errors import EXIT_DISK_FULL, ArtifactError, QueueError
from pantheon.core.observe.status import status_text
from pantheon.core.ratelog import RepeatLog
from pantheon.core.store.control import ControlFile
from pantheon.core.store.diskspace import DiskGuard, free_bytes, is_disk_full

UNUSABLE = "the queue and merges are paused until it is fixed"


class Slow(Agent):
    name = "t.slow"
    description = "waits, then returns n + 1"

    class Input(BaseModel):
        n: int = 0

    class Output(BaseModel):
        n: int

    class Params(BaseModel):
        delay_s: float = 0.0

    async def run(self, input, ctx: NodeContext):
        await asyncio.sleep(ctx.params.delay_s)
        return self.Output(n=input.n + 1)


def chain(delay_s: float) -> str:
    p = f"params: {{delay_s: {delay_s}}}"
    return f"""\
name: chain
input: {{n: int}}
nodes:
  - {{id: a, agent: t.slow, inputs: {{n: $input.n}}, {p}}}
  - {{id: b, agent: t.slow, inputs: {{n: $a.n}}, {p}}}
  - {{id: c, agent: t.slow, inputs: {{n: $b.n}}, {p}}}
"""


@pytest.fixture
def reg(registry):
    registry.register(Slow, origin="tests")
    return registry


def put(artifacts: Path, reg, n: int, delay_s: float = 0.0) -> list[int]:
    flow = parse_flow(chain(delay_s), reg, source="test.yaml")
    with JobQueue(artifacts) as q:
        return enqueue(q, flow, [{"n": i} for i in range(n)])


def statuses(artifacts: Path) -> dict[int, str]:
    with JobQueue(artifacts) as q:
        return {j.id: j.status for j in q.jobs(limit=10_000)}


def outputs_intact(artifacts: Path) -> None:
    """Every job is done, its run says so, and each node's output is the right one."""
    with JobQueue(artifacts) as q:
        jobs = q.jobs(limit=10_000)
    for job in jobs:
        assert job.status == "done", (job.id, job.status, job.error)
        run = artifacts / "runs" / job.run_name
        assert json.loads((run / "run.json").read_text())["status"] == "done"
        for i, node in enumerate("abc", start=1):
            out = json.loads((run / node / "output.json").read_text())
            assert out == {"n": job.input["n"] + i}, (job.run_name, node, out)


def controls_line(artifacts: Path) -> str:
    return next(line for line in status_text(artifacts).splitlines() if line.startswith("controls"))


def messages(caplog, text: str, level: str | None = None) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if text in r.getMessage() and (level is None or r.levelname == level)
    ]


# -- control.json fails closed -----------------------------------------------------------------


async def test_a_corrupt_control_file_at_start_pauses_the_queue_and_merges(artifacts, reg, caplog):
    put(artifacts, reg, 3)
    artifacts.mkdir(exist_ok=True)
    (artifacts / "control.json").write_text('{"concurrency": 2, "queue_paused": fals')
    engine = Engine(artifacts, reg, tick_s=0.02, metrics_every_s=0.05)
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.sleep(0.5)
        assert statuses(artifacts) == {1: "queued", 2: "queued", 3: "queued"}
        assert engine.stats.done == 0
        # the merge gate reads the file afresh, as it does for each change: it merges nothing
        why = merge_refusal(
            tests_passed=True, reviews=(True, True), control=ControlFile(artifacts).read()
        )
        assert why is not None and "control.json is not usable" in why
        assert engine.last_sample is not None and engine.last_sample["merges_paused"] is True
        text = status_text(artifacts)
        assert "QUEUE AND MERGES PAUSED" in text and UNUSABLE in text
        assert "control.json is not usable" in text
        assert len(messages(caplog, "is not usable", "ERROR")) == 1
        # fixed by hand: the night goes on with the new controls
        (artifacts / "control.json").write_text('{"concurrency": 2}')
        await until(lambda: set(statuses(artifacts).values()) == {"done"})
        assert engine.control.error is None
        assert controls_line(artifacts) == "controls   concurrency 2"
    finally:
        engine.request_stop()
        await task


def test_the_last_good_controls_survive_an_engine_restart(artifacts, reg):
    put(artifacts, reg, 2)
    ControlFile(artifacts).update(by="test", concurrency=3)
    first = Engine(artifacts, reg, until_empty=True, tick_s=0.02)
    asyncio.run(first.run())
    assert first.stats.done == 2
    (artifacts / "control.json").write_text("{torn")
    put(artifacts, reg, 1)

    async def second_engine() -> Engine:
        engine = Engine(artifacts, reg, tick_s=0.02, metrics_every_s=0.05)
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.4)
        engine.request_stop()
        await task
        return engine

    engine = asyncio.run(second_engine())
    assert engine.stats.done == 0 and statuses(artifacts)[3] == "queued"
    assert engine.last_sample is not None
    assert engine.last_sample["c"] == 3  # from the queue, not the defaults (4)
    assert engine.last_sample["merges_paused"] is True
    assert controls_line(artifacts).startswith("controls   concurrency 3 (the last good controls)")
    # deleted: the defaults, unpaused
    (artifacts / "control.json").unlink()
    assert controls_line(artifacts) == "controls   concurrency 4"


async def test_the_console_banner_says_why_the_queue_and_merges_are_paused(night):
    from night_fixture import NOW

    from pantheon.console.app import PantheonConsole
    from pantheon.widgets.control_banner import ControlBanner

    (night / "control.json").write_text('{"concurrency": 0}')
    app = PantheonConsole(night, watch=False, clock=lambda: NOW)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        banner = app.screen.query_one(ControlBanner)
        shown = str(banner.render())
        assert banner.display
        assert f"{night / 'control.json'} is not usable: concurrency" in shown
        assert UNUSABLE in shown
        assert shown.count("PAUSED") == 1  # one line, not the two pauses it makes
        (night / "control.json").write_text('{"concurrency": 2}')
        app.refresh_night()
        await pilot.pause()
        await until(lambda: not banner.display, timeout_s=5)


# -- a full disk ---------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 8 MiB (tmpfs), mounted for this test."""
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """Fill the disk to its last byte with one file."""
    path = disk / f"filler-{uuid.uuid4().hex[:6]}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    assert free_bytes(disk) == 0
    return path


def disk_engine(artifacts: Path, reg, **kw) -> Engine:
    kw.setdefault("until_empty", True)
    return Engine(
        artifacts,
        reg,
        tick_s=0.02,
        metrics_every_s=0.05,
        disk_min_free_bytes=256 * 1024,
        disk_check_every_s=0.05,
        **kw,
    )


async def test_a_full_disk_pauses_the_night_once_and_it_goes_on_by_itself(small_disk, reg, caplog):
    caplog.set_level(logging.INFO)
    artifacts = small_disk / "artifacts"
    put(artifacts, reg, 12, delay_s=0.05)
    ControlFile(artifacts).update(by="test", concurrency=3)
    engine = disk_engine(artifacts, reg)
    task = asyncio.create_task(engine.run())
    await until(lambda: engine.stats.done >= 2)
    filler = fill(small_disk)
    await until(lambda: engine.disk.paused is not None, timeout_s=5)
    await until(lambda: engine.running == 0, timeout_s=5)  # running jobs stop after their node
    before = outputs_written(artifacts)
    await asyncio.sleep(1.5)  # 30 metrics samples, 75 ticks, 30 disk checks
    assert outputs_written(artifacts) == before, "work went on while the disk was full"
    assert not task.done()
    assert len(messages(caplog, "paused on a full disk", "ERROR")) == 1
    [line] = messages(caplog, "paused on a full disk")
    assert str(artifacts) in line and " free (" in line
    assert "an engine here pauses under 64.0 MiB" in status_text(artifacts)  # its "disk" line
    assert not messages(caplog, "metrics sample skipped")
    assert not messages(caplog, "the queue is not usable")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING][1:]

    filler.unlink()
    stats = await asyncio.wait_for(task, 60)
    assert stats.exit_code == 0 and stats.failed == 0 and stats.done == 12
    assert stats.disk_pauses == 1
    assert len(messages(caplog, "has room again", "INFO")) == 1
    assert "the night goes on" in messages(caplog, "has room again")[0]
    outputs_intact(artifacts)


def outputs_written(artifacts: Path) -> list[tuple[str, int]]:
    """The output files written so far, per run: what the night has done."""
    runs = artifacts / "runs"
    return sorted((run.name, sum(1 for _ in run.glob("*/output.json"))) for run in runs.iterdir())


async def test_an_until_empty_night_on_a_full_disk_stops_with_its_own_code(small_disk, reg, caplog):
    artifacts = small_disk / "artifacts"
    put(artifacts, reg, 4)
    ControlFile(artifacts).ensure()
    filler = fill(small_disk)
    engine = disk_engine(artifacts, reg, disk_wait_s=1.0)
    started = time.monotonic()
    stats = await asyncio.wait_for(engine.run(), 30)
    waited = time.monotonic() - started
    assert stats.exit_code == EXIT_DISK_FULL == 75
    assert stats.exit_reason is not None and "stayed full" in stats.exit_reason
    assert str(artifacts) in stats.exit_reason
    assert 1.0 <= waited < 10
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and "paused on a full disk" in errors[0]
    assert errors[1] == stats.exit_reason
    filler.unlink()
    assert set(statuses(artifacts).values()) == {"queued"}  # nothing failed, nothing lost
    again = disk_engine(artifacts, reg)
    assert (await asyncio.wait_for(again.run(), 30)).done == 4
    outputs_intact(artifacts)


async def test_a_node_that_hit_a_full_disk_goes_back_to_the_queue(
    artifacts, reg, caplog, monkeypatch
):
    caplog.set_level(logging.INFO)
    [job] = put(artifacts, reg, 1)
    real_write = os.write
    hits = []

    def full_once(fd: int, data) -> int:
        """The disk is full for one write: that of node b's output.json."""
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not hits and "/b/" in path and "output.json" in path:
            hits.append(path)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_once)
    engine = disk_engine(artifacts, reg)
    stats = await asyncio.wait_for(engine.run(), 30)
    monkeypatch.undo()
    assert len(hits) == 1
    assert stats.failed == 0 and stats.done == 1 and stats.disk_pauses == 1
    with JobQueue(artifacts) as q:
        assert q.get(job).status == "done" and q.get(job).error is None
        assert [r for r in q.node_rows() if r[3] == "failed"] == []
    assert len(messages(caplog, "paused on a full disk", "ERROR")) == 1
    assert len(messages(caplog, "has room again", "INFO")) == 1
    outputs_intact(artifacts)


def test_what_counts_as_a_full_disk(tmp_path):
    with JobQueue(tmp_path) as q:
        q._db.execute("PRAGMA max_page_count = 12")
        with pytest.raises(QueueError) as full:
            q.set_value("k", "v" * 200_000)
    assert is_disk_full(full.value)
    assert is_disk_full(OSError(errno.EDQUOT, "quota"))
    assert is_disk_full("node 'b' could not be recorded: " + os.strerror(errno.ENOSPC))
    assert not is_disk_full(QueueError("the queue database x is locked by another process"))
    assert not is_disk_full(OSError(errno.EACCES, "denied"))
    assert not is_disk_full(None)


def test_the_guard_resumes_only_over_its_threshold(tmp_path):
    now = [0.0]
    guard = DiskGuard(tmp_path, min_free_bytes=1, check_every_s=5, clock=lambda: now[0])
    assert guard.trouble(OSError(errno.ENOSPC, "full")) and guard.paused is not None
    assert guard.check() is True  # checked when it paused: not again for 5 s
    now[0] = 6.0
    assert guard.check() is False and guard.paused is None
    huge = DiskGuard(tmp_path, min_free_bytes=2**62, check_every_s=0, clock=lambda: now[0])
    assert huge.check() is True and "under the" in huge.paused.why


# -- a trouble that repeats is one line --------------------------------------------------------


def test_a_repeated_message_is_one_line_a_window_with_a_count(caplog):
    caplog.set_level(logging.INFO)
    now = [0.0]
    repeats = RepeatLog(logging.getLogger("t.repeat"), window_s=60, clock=lambda: now[0])
    for i in range(150):  # one every 2 s for 5 minutes
        now[0] = i * 2.0
        repeats.warning("metrics", "metrics sample skipped: %s", f"disk full ({i})")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "metrics sample skipped: disk full (0)"
    assert lines[1] == "metrics sample skipped: disk full (30) (repeated 29 times in the last 60 s)"
    assert len(lines) == 5  # at 0, 60, 120, 180, 240 s
    repeats.warning("other", "another trouble")
    assert caplog.records[-1].getMessage() == "another trouble"  # keys are apart
    now[0] = 300.0
    repeats.done("metrics")  # over: what was held back is counted
    assert caplog.records[-1].getMessage() == (
        "metrics sample skipped: disk full (149) (repeated 29 times in the last 60 s)"
    )
    assert caplog.records[-1].levelname == "WARNING"
    held = 4 * 29 + 29
    assert held + len(lines) == 150
    repeats.warning("metrics", "metrics sample skipped: %s", "again")
    assert caplog.records[-1].getMessage() == "metrics sample skipped: again"


def test_the_engine_logs_a_failing_metrics_sample_once(artifacts, reg, caplog, monkeypatch):
    import pantheon.core.run.sampling as engine_module

    def denied(artifacts, sample):
        raise ArtifactError(f"cannot append to {artifacts}/metrics/engine.jsonl: Permission denied")

    monkeypatch.setattr(engine_module, "write_sample", denied)
    put(artifacts, reg, 4, delay_s=0.1)
    engine = Engine(artifacts, reg, until_empty=True, tick_s=0.02, metrics_every_s=0.01)
    asyncio.run(engine.run())
    skipped = messages(caplog, "metrics sample skipped")
    assert engine.stats.done == 4
    assert skipped[0].endswith("Permission denied")
    assert len(skipped) == 2, skipped  # the first, and the count at the end of the night
    assert "(repeated" in skipped[1]
