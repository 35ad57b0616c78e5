"""SVG snapshots of every console screen on the frozen night (``--snapshot-update`` to accept).

The artifacts directory is given as the relative path ``artifacts`` (the test runs in its temp
folder) and the clock is fixed, so every snapshot is the same on every machine.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from night_fixture import NOW, add_servers_sample, make_night

from pantheon.console.app import PantheonConsole
from pantheon.core.store.control import Control, ControlFile


@pytest.fixture(scope="module")
def frozen_night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    night = make_night(tmp_path_factory.mktemp("night") / "artifacts")
    # a node that talked to the model, for the calls view
    node = night / "runs" / "textstats-000002" / "stats"
    call = {
        "step": 1,
        "backend": "llama.cpp",
        "model": "smollm2-135m",
        "adapter": None,
        "messages": [
            {"role": "system", "content": "Count the words. Reply with one JSON object."},
            {"role": "user", "content": "word0 word1 word2"},
        ],
        "raw": '{"words": 3}',
        "parsed": {"words": 3},
        "prompt_tokens": 31,
        "completion_tokens": 7,
        "latency_s": 0.42,
        "error": None,
    }
    (node / "calls.jsonl").write_text(json.dumps(call) + "\n")
    return night


@pytest.fixture
def here(frozen_night: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(frozen_night, tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    return tmp_path


def app(path: str = "artifacts") -> PantheonConsole:
    return PantheonConsole(Path(path), watch=False, clock=lambda: NOW)


class TestDashboard:
    def test_small_terminal(self, here, snap_compare):
        assert snap_compare(app(), terminal_size=(80, 24))

    def test_large_terminal(self, here, snap_compare):
        assert snap_compare(app(), terminal_size=(140, 40))

    def test_light_theme(self, here, snap_compare):
        async def light(pilot):
            pilot.app.theme = "textual-light"
            await pilot.pause()

        assert snap_compare(app(), terminal_size=(100, 30), run_before=light)

    def test_paused_banner(self, here, snap_compare):
        since = "2026-11-20T02:10:00+00:00"
        control = Control.model_validate(
            {
                "concurrency": 6,
                "merges_paused": True,
                "merges_paused_reason": "κ 0.41 < 0.6 over the last 20 pairs",
                "merges_paused_since": since,
                "queue_paused": True,
                "queue_paused_reason": "by the operator",
                "queue_paused_since": since,
            }
        )
        ControlFile(Path("artifacts")).write(control)
        assert snap_compare(app(), terminal_size=(100, 30))

    def test_two_servers_one_down(self, here, snap_compare):
        add_servers_sample(Path("artifacts"))
        assert snap_compare(app(), terminal_size=(120, 32))

    def test_failed_filter(self, here, snap_compare):
        assert snap_compare(app(), terminal_size=(100, 30), press=["s", "s"])

    def test_empty_state(self, here, snap_compare):
        assert snap_compare(app("no-night-yet"), terminal_size=(80, 24))


class TestRunDetail:
    def test_failed_run_opens_on_its_failure(self, here, snap_compare):
        async def open_failed(pilot):
            await pilot.press("s", "s", "enter")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()

        assert snap_compare(app(), terminal_size=(100, 30), run_before=open_failed)

    def test_model_calls(self, here, snap_compare):
        async def open_calls(pilot):
            await pilot.press("slash", *"textstats-000002", "enter", "enter")
            await pilot.app.workers.wait_for_complete()
            await pilot.pause()
            await pilot.press("down", "c")
            await pilot.pause()

        assert snap_compare(app(), terminal_size=(100, 30), run_before=open_calls)


class TestDialogs:
    def test_confirm(self, here, snap_compare):
        assert snap_compare(app(), terminal_size=(80, 24), press=["m"])

    def test_help(self, here, snap_compare):
        assert snap_compare(app(), terminal_size=(100, 30), press=["question_mark"])
