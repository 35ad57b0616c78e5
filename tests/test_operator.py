"""The operator's night on real processes: `pantheon stop`, a second night refused with the
first one's pid, `--until` that starts no job it cannot finish, and a stopped night that exits
non-zero."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers import db_counts, pantheon, pantheon_popen, step_flow, wait_for

from pantheon.core.errors import EXIT_INTERRUPTED, ConfigError
from pantheon.core.run.deadline import Deadline, parse_until
from pantheon.core.run.nightlock import NightLock, NightRunning, night_holder

pytestmark = pytest.mark.slow


def _queue(tmp_path: Path, artifacts: Path, jobs: int, delay_s: float) -> None:
    flow = tmp_path / "steps.yaml"
    flow.write_text(step_flow(delay_s))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(jobs)))
    assert pantheon("enqueue", str(flow), "--inputs", str(inputs), "--artifacts", str(artifacts))
    assert pantheon("control", "--concurrency", "1", "--artifacts", str(artifacts)).returncode == 0


def test_stop_lets_the_job_in_flight_finish_and_the_night_exits_non_zero(
    tmp_path, artifacts, with_plugin
):
    _queue(tmp_path, artifacts, jobs=30, delay_s=0.2)
    engine = pantheon_popen("engine", "--until-empty", "--artifacts", str(artifacts))
    try:
        wait_for(lambda: db_counts(artifacts)["done"] >= 2)
        holder = night_holder(artifacts)
        assert holder is not None and holder.pid == engine.pid and holder.what == "engine"

        # a second engine on the same directory is refused, naming the first
        second = pantheon("engine", "--until-empty", "--artifacts", str(artifacts))
        assert second.returncode != 0
        assert f"a night already drains {artifacts} (engine pid {engine.pid}" in second.stderr
        assert "pantheon stop" in second.stderr

        stopped = pantheon("stop", "--artifacts", str(artifacts))
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopping the engine pid {engine.pid}" in stopped.stderr
        assert "the night has stopped" in stopped.stderr
    finally:
        if engine.poll() is None:
            engine.kill()
        _, err = engine.communicate(timeout=30)
    assert engine.returncode == EXIT_INTERRUPTED, err
    assert "stopped before the queue was empty" in err
    counts = db_counts(artifacts)
    assert counts["running"] == 0 and counts["queued"] > 0 and counts["done"] >= 2
    assert night_holder(artifacts) is None, "the lock went with the process"
    assert pantheon("stop", "--artifacts", str(artifacts)).returncode == 1  # nothing to stop


def test_an_engine_joins_a_night_only_on_purpose(tmp_path, artifacts, with_plugin):
    _queue(tmp_path, artifacts, jobs=20, delay_s=0.1)
    with NightLock(artifacts, "night"):
        refused = pantheon("engine", "--until-empty", "--artifacts", str(artifacts))
        assert refused.returncode != 0 and "a night already drains" in refused.stderr
        night = pantheon("night", "--repo", str(tmp_path), "--artifacts", str(artifacts))
        assert night.returncode != 0 and "a night already drains" in night.stderr
        joined = pantheon("engine", "--until-empty", "--join", "--artifacts", str(artifacts))
        assert joined.returncode == 0, joined.stderr
    assert db_counts(artifacts) == Counter({"done": 20})


def test_until_starts_no_job_that_cannot_finish_by_then(tmp_path, artifacts, with_plugin):
    _queue(tmp_path, artifacts, jobs=20, delay_s=0.4)  # three nodes: about 1.2 s a job
    until = (datetime.now().astimezone() + timedelta(seconds=5)).isoformat(timespec="seconds")
    t0 = time.monotonic()
    done = pantheon("engine", "--until-empty", "--until", until, "--artifacts", str(artifacts))
    took = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    counts = db_counts(artifacts)
    assert 1 <= counts["done"] <= 4 and counts["queued"] == 20 - counts["done"]
    assert "must be done by" in done.stderr and "none could finish in time" in done.stderr
    assert took < 5 + 6, "it ended about when it had to, not after the queue"


def test_until_reads_a_time_of_day_or_a_date_and_refuses_anything_else():
    now = datetime(2026, 12, 7, 23, 30).astimezone()
    assert parse_until("07:00", now) == now.replace(hour=7, minute=0) + timedelta(days=1)
    assert parse_until("23:45", now) == now.replace(minute=45)
    with pytest.raises(ConfigError, match="not a time"):
        parse_until("7 o'clock", now)
    with pytest.raises(ConfigError, match="already past"):
        parse_until("2020-01-01T07:00", now)


def test_the_deadline_goes_by_the_service_time_it_measured():
    now = datetime.now().astimezone()
    deadline = Deadline(now + timedelta(seconds=100))
    assert deadline.allows(now), "nothing measured yet: time left is enough"
    deadline.durations += [120.0, 140.0]
    assert not deadline.allows(now) and "a job takes 130 s" in deadline.why(3)
    assert Deadline(now + timedelta(seconds=200), [120.0]).allows(now)
    assert not Deadline(now - timedelta(seconds=1)).allows(now)


def test_the_lock_names_its_holder_and_refuses_a_second(tmp_path):
    with NightLock(tmp_path, "night") as lock:
        holder = night_holder(tmp_path)
        assert holder is not None and holder.what == "night"
        with pytest.raises(NightRunning, match="a night already drains"):
            NightLock(tmp_path, "engine").acquire()
        assert lock.path.is_file()
    assert night_holder(tmp_path) is None


_HOLDER = """
import sys, time
from pathlib import Path
from pantheon.core.run.nightlock import host_cpu

with host_cpu(Path(sys.argv[1]), on_wait=lambda h: None):
    print("holding", flush=True)
    time.sleep(120)
"""


def test_a_second_night_on_the_host_waits_for_the_cpu_and_says_for_whom(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv("PANTHEON_CPU_LOCK", str(tmp_path / "cpu.lock"))
    first = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path / "first")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "holding"
        artifacts = tmp_path / "second"
        night = pantheon_popen(
            "night", "--demo", "--headless", "--docs", "1", "--code", "0", "--model",
            "smollm2-135m", "--concurrency", "1", "--artifacts", str(artifacts),
        )  # fmt: skip
        try:
            said = ""
            while "waits for it to end" not in said:
                line = night.stderr.readline()
                assert line, f"the night ended without waiting: {said}"
                said += line
            assert f"night pid {first.pid}" in said and str(tmp_path / "first") in said
            assert night_holder(artifacts).pid == night.pid, "it holds its own artifacts"
            first.kill()  # the first night ends: the second takes the CPU and goes on
            first.wait(timeout=30)
            wait_for(lambda: (tmp_path / "cpu.lock").read_text().find(str(night.pid)) > 0)
        finally:
            night.terminate()
            night.communicate(timeout=120)
    finally:
        first.kill()
        first.communicate(timeout=30)


_NIGHT = """
import signal, sys, time
from pathlib import Path
from pantheon.core.run.nightlock import NightLock

got = []
signal.signal(signal.SIGTERM, lambda *a: got.append(1))
with NightLock(Path(sys.argv[1]), "night"):
    print("holding", flush=True)
    while not got:
        time.sleep(0.05)
    print("stopping", flush=True)
"""


async def test_s_in_the_console_stops_the_night_after_asking(tmp_path):
    import subprocess
    import sys

    from pantheon.console.app import PantheonConsole
    from pantheon.console.screens.dialogs import ConfirmScreen

    artifacts = tmp_path / "artifacts"
    app = PantheonConsole(artifacts, watch=False)
    async with app.run_test(size=(110, 32)) as pilot:
        await pilot.press("S")
        assert any("no night is running" in n.message for n in app._notifications)
        night = subprocess.Popen(
            [sys.executable, "-c", _NIGHT, str(artifacts)], stdout=subprocess.PIPE, text=True
        )
        try:
            assert night.stdout.readline().strip() == "holding"
            await pilot.press("S")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await pilot.pause()
            assert night.stdout.readline().strip() == "stopping", "it got SIGTERM"
        finally:
            night.kill()
            night.communicate(timeout=30)
