"""The training screen's one key for the whole learn loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers_training import SIZE, console, make_training, notes, open_training

from pantheon.console.screens.dialogs import ConfirmScreen
from pantheon.core.learn.files import training_root


@pytest.fixture
def trained(night: Path) -> Path:
    """The frozen night, with training files in it."""
    return make_training(night)


async def test_l_asks_then_runs_the_whole_learn_loop_in_the_background(trained):
    # the fixture's doc.frontmatter trains now (this process plays its trainer)
    app, launched = console(trained)
    async with app.run_test(size=SIZE) as pilot:
        await open_training(pilot)
        await pilot.press("l")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.pause()
        assert launched == [], "never beside a running training"
        assert any("a training is running" in n for n in notes(app))

        for state in training_root(trained).glob("*/state.json"):
            data = json.loads(state.read_text())
            if data["status"] == "running":
                data["status"] = "interrupted"
                state.write_text(json.dumps(data))
        await pilot.press("l")
        assert "every agent with enough new green" in str(
            app.screen.query_one("#dialog-body").render()
        )
        await pilot.press("y")
        await pilot.pause()
        argv = [sys.executable, "-m", "pantheon.console", "learn", "--artifacts", str(trained)]
        assert launched == [(argv, training_root(trained) / "learn.log")]
        assert any("the learn loop runs in the background" in n for n in notes(app))
