"""The training files the console's training screen shows, written with the trainer's own
models (a frozen clock: ``AT``), and the console driven on them with Pilot."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from night_fixture import NOW

from pantheon.console.app import PantheonConsole
from pantheon.console.screens.training import TrainingScreen
from pantheon.core.learn.files import (
    Evaluation,
    MineStats,
    ProgressRow,
    RegistryEntry,
    TrainingState,
    training_root,
    update_registry,
)
from pantheon.core.store.atomic import atomic_write_json

SIZE = (100, 30)  # the terminal the screens are driven in
AT = datetime(2026, 11, 24, 22, 15, tzinfo=UTC)
RUNNING = "doc.frontmatter-20261124T221500"
DONE = "text.stats-20261123T230000"


def write(path: Path, model) -> None:
    """One of the trainer's models, written as JSON at ``path``."""
    atomic_write_json(path, model.model_dump(mode="json"))


def progress_rows(first: int, last: int, steps: int) -> list[ProgressRow]:
    """Progress rows ``first``..``last`` of a training of ``steps`` steps, six seconds apart."""
    return [
        ProgressRow(
            step=i,
            steps=steps,
            epoch=i / steps * 2,
            loss=round(0.6 + 1.8 * 0.9**i + (0.05 if i % 3 == 0 else 0.0), 4),
            lr=2e-4,
            tokens=i * 4096,
            elapsed_s=i * 6.0,
            eta_s=(steps - i) * 6.0,
            at=AT + timedelta(seconds=i * 6),
        )
        for i in range(first, last + 1)
    ]


def append_progress(folder: Path, rows: list[ProgressRow]) -> None:
    """Append ``rows`` to a training's progress.jsonl, as the trainer does."""
    with open(folder / "progress.jsonl", "a") as fh:
        fh.write("".join(r.model_dump_json() + "\n" for r in rows))


def make_training(artifacts: Path) -> Path:
    """Two agents: doc.frontmatter training now (this process plays its trainer), text.stats
    trained, evaluated and promoted."""
    root = training_root(artifacts)
    write(
        root / "doc.frontmatter" / "mine.json",
        MineStats(agent="doc.frontmatter", examples=132, train=120, heldout=12, tasks=20, at=AT),
    )
    write(
        root / "text.stats" / "mine.json",
        MineStats(agent="text.stats", examples=60, train=54, heldout=6, tasks=12, at=AT),
    )
    running = root / RUNNING
    write(
        running / "state.json",
        TrainingState(
            id=RUNNING,
            agent="doc.frontmatter",
            status="running",
            base_model="smollm2-135m",
            pid=os.getpid(),
            step=20,
            steps=60,
            examples=120,
            heldout=12,
            started_at=AT,
            heldout_loss_before=1.912,
            promote=True,
        ),
    )
    append_progress(running, progress_rows(1, 20, 60))
    done = root / DONE
    evaluation = Evaluation(
        training=DONE,
        agent="text.stats",
        adapter=DONE,
        tasks=12,
        base_passed=6,
        adapter_passed=11,
        b=0,
        c=5,
        p_value=0.03125,
        alpha=0.05,
        promoted=True,
        reason="the adapter passed 5 tasks the base model failed, and failed none it passed",
    )
    write(
        done / "state.json",
        TrainingState(
            id=DONE,
            agent="text.stats",
            status="done",
            base_model="smollm2-135m",
            pid=None,
            step=40,
            steps=40,
            examples=54,
            heldout=6,
            started_at=AT - timedelta(days=1),
            finished_at=AT - timedelta(days=1) + timedelta(minutes=9),
            heldout_loss_before=1.508,
            heldout_loss_after=0.921,
            promote=True,
            evaluation=evaluation,
        ),
    )
    append_progress(done, progress_rows(1, 40, 40))
    entry = RegistryEntry(
        agent="text.stats",
        adapter=DONE,
        gguf=f"adapters/{DONE}.gguf",
        training=DONE,
        base_model="smollm2-135m",
        evidence=evaluation.model_dump(include={"tasks", "base_passed", "adapter_passed", "b", "c"})
        | {"p_value": evaluation.p_value},
        promoted_at=AT - timedelta(hours=23),
    )
    update_registry(artifacts, lambda registry: registry.agents.__setitem__("text.stats", entry))
    return artifacts


def console(artifacts: Path) -> tuple[PantheonConsole, list[tuple[list[str], Path]]]:
    """The console on ``artifacts`` at the frozen clock, and the trainings it launched (its
    launcher records them, and starts nothing)."""
    app = PantheonConsole(artifacts, watch=False, clock=lambda: NOW)
    launched: list[tuple[list[str], Path]] = []
    app.training_launcher = lambda argv, log: launched.append((argv, log))
    return app, launched


async def open_training(pilot) -> TrainingScreen:
    """Press ``t``: the training screen."""
    await pilot.pause()
    await pilot.press("t")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, TrainingScreen)
    return screen


def notes(app: PantheonConsole) -> list[str]:
    """The notifications the console has shown."""
    return [n.message for n in app._notifications]
