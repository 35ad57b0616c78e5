"""Each engine that drains the artifacts directory is seen: its heartbeat file, in
``pantheon status``; one killed is named silent."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import pantheon, pantheon_popen, wait_for

from pantheon.core.observe.engines import (
    ENGINES_DIR,
    SILENT_S,
    EngineBeat,
    engine_lines,
    read_beats,
    write_beat,
)


def test_each_engine_has_a_line_and_a_silent_one_says_since_when(tmp_path):
    now = time.time()
    write_beat(
        tmp_path,
        EngineBeat(
            owner="gpu-1:41:ab", host="gpu-1", pid=41, role="engine", started=now - 90,
            beat=now - 1, running=[3, 4], servers=["127.0.0.1:8000"], done=7, failed=1,
        ),
    )  # fmt: skip
    write_beat(
        tmp_path,
        EngineBeat(
            owner="cpu-2:7:cd", host="cpu-2", pid=7, role="engine (joined)", started=now - 60,
            beat=now - SILENT_S - 5, running=[5], servers=[],
        ),
    )  # fmt: skip
    (tmp_path / ENGINES_DIR / "torn.json").write_text("{not json")
    lines = engine_lines(tmp_path, now=now)
    assert len(lines) == 2, "the torn file is left out"
    assert lines[0].startswith("gpu-1 pid 41 (engine): 2 running, 7 done, 1 failed")
    assert "127.0.0.1:8000; beat 1 s ago" in lines[0]
    assert lines[1].startswith("cpu-2 pid 7 (engine (joined)): 1 running")
    assert "no model server; SILENT since" in lines[1]


def test_status_shows_both_engines_and_a_killed_one_stays_named(tmp_path):
    artifacts = str(tmp_path / "a")
    assert (
        pantheon("enqueue", "textstats", "--set", "text=x", "--artifacts", artifacts).returncode
        == 0
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    first = pantheon_popen("engine", "--artifacts", artifacts, "--tick", "0.05", **quiet)
    second = None
    try:
        wait_for(lambda: len(read_beats(tmp_path / "a")) == 1, timeout=60)
        second = pantheon_popen(
            "engine", "--join", "--artifacts", artifacts, "--tick", "0.05", **quiet
        )
        wait_for(lambda: len(read_beats(tmp_path / "a")) == 2, timeout=60)
        out = pantheon("status", "--artifacts", artifacts)
        assert out.returncode == 0, out.stderr
        lines = [x for x in out.stdout.splitlines() if " pid " in x]
        assert f"pid {first.pid} (engine)" in lines[0] and lines[0].startswith("engines    ")
        assert f"pid {second.pid} (engine (joined))" in lines[1]
        os.kill(second.pid, signal.SIGKILL)
        second.wait(timeout=30)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
        beats = read_beats(tmp_path / "a")
        assert [b.pid for b in beats] == [second.pid], "a clean stop removes its own file"
        later = engine_lines(tmp_path / "a", now=time.time() + 2 * SILENT_S)
        assert f"pid {second.pid}" in later[0] and "SILENT since" in later[0]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def test_an_engine_on_another_host_is_seen_through_the_shared_queue(tmp_path):
    """Its heartbeat is kept in the queue too: the status of this host's artifacts lists an
    engine whose files are on another host; a clean stop takes it out."""
    from pantheon.core.observe.engines import Heartbeat
    from pantheon.core.store.queue import JobQueue

    here, there = tmp_path / "here", tmp_path / "there"
    with JobQueue(here) as queue:
        beat = Heartbeat(there, "gpu-2:99:ef", "engine")
        beat.beat([4], ["127.0.0.1:8000"], 3, 0, queue)
        out = pantheon("status", "--artifacts", str(here))
        assert "gpu-2 pid 99 (engine): 1 running, 3 done, 0 failed" in out.stdout
        beat.stop(queue)
        assert "gpu-2" not in pantheon("status", "--artifacts", str(here)).stdout


async def test_the_console_lists_the_engines_whose_heartbeat_files_appear(tmp_path):
    """Two engines on this directory (its own SQLite queue): their heartbeat files are read
    with the rest of the night, off the UI thread, and the dashboard lists both; one that
    stops cleanly leaves the list."""
    from pantheon.console.app import PantheonConsole
    from pantheon.core.store.queue import JobQueue

    with JobQueue(tmp_path):
        pass
    app = PantheonConsole(tmp_path, debounce_ms=50)
    async with app.run_test(size=(140, 30)) as pilot:
        await pilot.pause(0.5)
        now = time.time()
        for pid in (41, 42):
            write_beat(
                tmp_path,
                EngineBeat(
                    owner=f"box:{pid}:ab",
                    host="box",
                    pid=pid,
                    role="engine",
                    started=now,
                    beat=now,
                    running=[],
                    servers=[],
                    done=pid - 40,
                    failed=0,
                ),
            )
        for _ in range(80):
            await pilot.pause(0.1)
            if app.snapshot is not None and len(app.snapshot.beats) == 2:
                break
        assert [b.pid for b in app.snapshot.beats] == [41, 42]
        await pilot.pause(1.2)
        engines = str(app.screen.query_one("#engines").render())
        assert "box pid 41" in engines and "box pid 42" in engines
        # a clean stop removes its file: the engine leaves the list, never shown silent
        (
            tmp_path / ENGINES_DIR / next(p.name for p in (tmp_path / ENGINES_DIR).glob("*41*"))
        ).unlink()
        for _ in range(80):
            await pilot.pause(0.1)
            if len(app.snapshot.beats) == 1:
                break
        assert [b.pid for b in app.snapshot.beats] == [42]
