"""The training screen, driven with Pilot on training files written with the trainer's models."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from helpers_training import (
    AT,
    DONE,
    RUNNING,
    SIZE,
    append_progress,
    console,
    make_training,
    notes,
    open_training,
    progress_rows,
    write,
)
from night_fixture import NOW
from textual.widgets import DataTable, ProgressBar, Static

from pantheon.console.app import PantheonConsole
from pantheon.console.launch import launch_training
from pantheon.console.screens.dashboard import DashboardScreen
from pantheon.console.screens.dialogs import HELP, ConfirmScreen
from pantheon.console.screens.training import TrainingScreen
from pantheon.core.learn.files import MineStats, training_root
from pantheon.core.store.atomic import atomic_write_json
from pantheon.widgets.loss_plot import LossPlot


@pytest.fixture
def trained(night: Path) -> Path:
    """The frozen night, with training files in it."""
    return make_training(night)


async def until(pilot, predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out waiting for the training screen")


def table_rows(screen: TrainingScreen) -> dict[str, list[str]]:
    table = screen.query_one(DataTable)
    return {str(key.value): [str(c) for c in table.get_row(key)] for key in table.rows if key.value}


def text_of(screen: TrainingScreen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


async def test_t_opens_the_agents_with_their_data_adapter_and_training(trained):
    app, _ = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_training(pilot)
        rows = table_rows(screen)
        assert list(rows) == ["doc.frontmatter", "text.stats"]
        assert rows["doc.frontmatter"] == [
            "doc.frontmatter",
            "120",
            "12",
            "20",
            "base model",
            "",
            "running 20/60",
        ]
        assert rows["text.stats"][1:4] == ["54", "6", "12"]
        assert rows["text.stats"][4] == "20261123T230000"
        assert rows["text.stats"][5] == "6 → 11 of 12, p 0.031"
        assert rows["text.stats"][6] == "done 40/40"
        head = text_of(screen, "#training-head")
        assert head.startswith("2 agents · 1 adapter promoted · 1 training now")
        assert not screen.query_one("#training-problems").display


async def test_the_highlighted_training_shows_its_progress_and_follows_it(trained):
    app, _ = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_training(pilot)
        bar = screen.query_one(ProgressBar)
        assert (bar.progress, bar.total) == (20, 60)
        assert text_of(screen, "#training-step").strip() == "step 20/60"
        eta = text_of(screen, "#training-eta")
        assert "ETA 4m00s" in eta and "loss 0.819" in eta
        plot = screen.query_one(LossPlot)
        assert [s for s, _ in plot.points] == list(range(1, 21))
        assert "held-out loss 1.912 → …" in text_of(screen, "#training-result")
        reads = screen.files.reads
        append_progress(training_root(trained) / RUNNING, progress_rows(21, 25, 60))
        await until(pilot, lambda: bar.progress == 25)
        assert len(plot.points) == 25
        assert "ETA 3m30s" in text_of(screen, "#training-eta")
        assert screen.files.reads == reads, "new progress rows are read, not the whole overview"


async def test_evaluation_decision_and_a_failure(trained):
    app, _ = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_training(pilot)
        await pilot.press("down")
        await pilot.pause()
        assert screen.selected == "text.stats"
        result = text_of(screen, "#training-result")
        assert "held-out loss 1.508 → 0.921" in result
        assert "12 held-out tasks: base passed 6, adapter passed 11" in result
        assert "b 0 · c 5 · p 0.0312 (α 0.05)" in result
        assert "✓ promoted: the adapter passed 5 tasks the base model failed" in result
        assert "serving: " + DONE in result
        assert "took 4m00s" in text_of(screen, "#training-eta")
        state_file = training_root(trained) / DONE / "state.json"
        data = json.loads(state_file.read_text())
        data.update(status="failed", evaluation=None, error="CUDA out of memory at step 12")
        atomic_write_json(state_file, data)
        await until(pilot, lambda: "FAILED" in text_of(screen, "#training-result"))
        assert "FAILED: CUDA out of memory at step 12" in text_of(screen, "#training-result")
        assert table_rows(screen)["text.stats"][6] == "failed 40/40"


async def test_s_asks_then_launches_the_training_in_the_background(trained):
    app, launched = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        await open_training(pilot)
        await pilot.press("down", "enter")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert launched == []
        await pilot.press("s")
        assert isinstance(app.screen, ConfirmScreen)
        assert "54 examples" in str(app.screen.query_one("#dialog-body", Static).render())
        await pilot.press("y")
        await pilot.pause()
        assert launched == [
            (
                [
                    sys.executable,
                    "-m",
                    "pantheon.console",
                    "train",
                    "text.stats",
                    "--artifacts",
                    str(trained),
                    "--promote",
                ],
                training_root(trained) / "text.stats" / "launch.log",
            )
        ]
        assert isinstance(app.screen, TrainingScreen)
        assert any("training text.stats in the background" in n for n in notes(app))


async def test_an_agent_training_already_is_not_started_twice(trained):
    app, launched = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        await open_training(pilot)  # doc.frontmatter: its trainer (this process) is alive
        await pilot.press("s")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("doc.frontmatter is training already" in n for n in notes(app))
        app.start_training("doc.frontmatter")
        assert launched == []


async def test_an_agent_with_too_little_data_is_not_started(trained):
    write(
        training_root(trained) / "codegen" / "mine.json",
        MineStats(agent="codegen", examples=14, train=12, heldout=2, tasks=4, at=AT),
    )
    app, launched = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        await open_training(pilot)
        app.start_training("codegen")
        await pilot.pause()
        assert launched == []
        assert any("not enough data for codegen (12 < 50" in n for n in notes(app))


async def test_a_corrupt_mine_json_is_a_problem_line_not_a_crash(trained):
    broken = training_root(trained) / "broken.agent"
    broken.mkdir()
    (broken / "mine.json").write_text('{"agent": "broken.ag')
    app, _ = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_training(pilot)
        problems = screen.query_one("#training-problems", Static)
        assert problems.display
        line = str(problems.render())
        assert "broken.agent/mine.json is corrupt" in line
        assert line.count("mine.json") == 1
        assert list(table_rows(screen)) == ["doc.frontmatter", "text.stats"]


async def test_no_training_data_explains_how_to_get_some(night):
    app, launched = console(night)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_training(pilot)
        assert not screen.query_one(DataTable).display
        empty = text_of(screen, "#training-empty")
        assert "pantheon traces mine" in empty and "press s" in empty
        await pilot.press("s")
        await pilot.pause()
        assert launched == [] and not isinstance(app.screen, ConfirmScreen)


async def test_escape_goes_back_and_the_palette_and_help_know_the_screen(trained):
    app, _ = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        await open_training(pilot)
        await pilot.press("escape")
        assert isinstance(app.screen, DashboardScreen)
        await pilot.press("ctrl+p", *"training")
        await pilot.pause()
        await app.workers.wait_for_complete()  # the palette's search for what was typed
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, TrainingScreen)
    assert "| `t` | training" in HELP


def test_the_launcher_detaches_and_writes_the_log(tmp_path):
    log = tmp_path / "training" / "x" / "launch.log"
    proc = launch_training([sys.executable, "-c", "import os; print(os.getsid(0))"], log)
    assert proc.wait(timeout=30) == 0
    for _ in range(100):  # the waiting thread has reaped it
        if proc.returncode is not None:
            break
        time.sleep(0.01)
    assert log.read_text().strip() == str(proc.pid), "a session of its own"


def test_snapshot_of_the_training_screen(frozen_night, tmp_path, monkeypatch, snap_compare):
    shutil.copytree(frozen_night, tmp_path / "artifacts")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    make_training(Path("artifacts"))

    async def training(pilot):
        await open_training(pilot)
        await pilot.press("down")  # the trained, evaluated and promoted agent
        await pilot.pause()

    app = PantheonConsole(Path("artifacts"), watch=False, clock=lambda: NOW)
    assert snap_compare(app, terminal_size=SIZE, run_before=training)


@pytest.mark.parametrize(
    "points",
    [
        [(1, 2.0), (2, 1.5), (3, float("nan")), (4, 0.512)],
        [(i, 1.0) for i in range(1, 300)],
        [(i, 1 / i) for i in range(1, 300)],
        [(1, float("inf"))],
    ],
)
async def test_the_loss_plot_draws_any_loss(points):
    from textual.app import App

    class PlotApp(App[None]):
        def compose(self):
            yield LossPlot()

    app = PlotApp()
    async with app.run_test(size=(60, 10)) as pilot:
        plot = app.query_one(LossPlot)
        plot.points = tuple(points)
        await pilot.pause()
        lines = str(plot.render()).splitlines()
        assert all(len(line) <= plot.size.width for line in lines)
        finite = [v for _, v in points if v == v and v != float("inf")]
        if finite:
            assert lines[0].split()[0] in {f"{v:.3g}" for v in finite}  # the highest shown
            assert str(points[-1][0]) in lines[-1]
        else:
            assert "not a number" in lines[0]
