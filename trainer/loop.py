"""The learn loop in one call: mine the night, train the agents with enough new green examples,
judge each adapter on held-out work, promote the ones that win.

``pantheon night --learn`` runs it after the queue drains (the night's model servers stopped, so
the training has the machine), ``pantheon learn`` on any artifacts directory, and the console's
training screen in the background. Each agent is trained on the model that answered its calls,
within a time budget (a CPU host trains what it can overnight; the best checkpoint is kept), and
judged as its kind is judged (``Agent.judged_by``). What happened is ``training/learn.json``: per
agent, trained or why not, the evidence and the decision; the morning report shows it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pantheon.core.errors import PantheonError
from pantheon.core.learn.files import (
    LEARN,
    AgentLearn,
    Evaluation,
    LearnRun,
    MineStats,
    ProgressRow,
    TaskResult,
    list_trainings,
    read_learn,
    read_state,
    training_root,
)
from pantheon.core.store.atomic import atomic_write_json

__all__ = ["AgentLearn", "LearnRun", "base_model_of", "judge_and_promote", "learn", "read_learn"]

log = logging.getLogger(__name__)


def judge_and_promote(
    artifacts: Path,
    folder: Path,
    *,
    alpha: float = 0.05,
    limit: int | None = None,
    parallel: int = 4,
    corpus: bool = False,
    on_task: Callable[[TaskResult, int, int], None] | None = None,
    registry: Any = None,
) -> tuple[Evaluation, bool]:
    """Judge a finished training's adapter and promote it when it wins; its state says so."""
    from .evaluate import evaluate
    from .registry import promote

    state = read_state(folder)
    if state.alive and state.pid != os.getpid():
        raise PantheonError(f"training {state.id} is busy in process {state.pid}")
    state.status, state.pid = "evaluating", os.getpid()
    atomic_write_json(folder / "state.json", state.model_dump(mode="json"))
    try:
        ev = evaluate(
            artifacts,
            folder,
            alpha=alpha,
            limit=limit,
            parallel=parallel,
            on_task=on_task,
            corpus=corpus,
            registry=registry,
        )
        promoted = promote(artifacts, folder, ev)
    except BaseException as exc:
        state.status = "done"
        state.error = f"evaluation failed: {str(exc) or 'stopped by the operator'}"
        atomic_write_json(folder / "state.json", state.model_dump(mode="json"))
        raise
    state.status, state.error, state.evaluation = "done", None, ev
    atomic_write_json(folder / "state.json", state.model_dump(mode="json"))
    return ev, promoted


def mined_stats(artifacts: Path) -> dict[str, MineStats]:
    """What the last mining found for each agent (``training/<agent>/mine.json``)."""
    from pantheon.core.store.atomic import read_json

    from .examples import STATS

    out: dict[str, MineStats] = {}
    root = training_root(artifacts)
    for path in sorted(root.glob(f"*/{STATS}")) if root.is_dir() else []:
        try:
            stats = MineStats.model_validate(read_json(path))
        except (PantheonError, ValueError) as exc:
            log.warning("%s cannot be read: %s", path, exc)
            continue
        if path.parent.name == stats.agent:
            out[stats.agent] = stats
    return out


def base_model_of(artifacts: Path, stats: MineStats) -> Path | None:
    """The GGUF file of the model that answered the agent's calls: a night's server that ran
    it, else the model store's file of that name."""
    from pantheon.core.model.files import CATALOG, ModelStore
    from pantheon.core.model.server import ModelServer

    if stats.model is None:
        return None
    for server in ModelServer.each_in(artifacts):
        state = server.state()
        if state is not None and state.alias == stats.model and Path(state.model_path).exists():
            return Path(state.model_path)
    if stats.model in CATALOG:
        path = ModelStore().path(stats.model)
        return path if path.exists() else None
    return None


def learn(
    artifacts: Path,
    *,
    fraction: float = 0.2,
    agents: set[str] | None = None,
    options: Any = None,
    min_new: int = 1,
    alpha: float = 0.05,
    parallel: int = 4,
    corpus: bool = False,
    on_line: Callable[[str], None] | None = None,
    on_step: Callable[[ProgressRow], None] | None = None,
    on_task: Callable[[TaskResult, int, int], None] | None = None,
    stop: threading.Event | None = None,
    registry: Any = None,
    base: Path | None = None,
    fresh: bool = True,
) -> LearnRun:
    """Mine, then train, judge and promote each agent that has enough new green examples (on
    ``base``, or on the model that answered the agent's calls). ``fresh=False``: the data sets
    as they were mined before (``training/<agent>/``), not mined again."""
    from . import train as trainer
    from .mine import mine

    say = on_line or (lambda line: log.info("%s", line))
    options = options or trainer.TrainOptions()
    artifacts = Path(artifacts)
    run = LearnRun(started_at=datetime.now(UTC))
    path = training_root(artifacts) / LEARN

    def save() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, run.model_dump(mode="json"))

    if fresh:
        from .labels import CORPUS_PROBLEMS

        result = mine(
            artifacts,
            fraction=fraction,
            only=agents,
            registry=registry,
            corpus=CORPUS_PROBLEMS if corpus else 0,
        )
        found = result.agents
        say(
            f"mined {result.runs} job(s): "
            + (
                ", ".join(
                    f"{name} {s.train} to train on, {s.heldout} held out"
                    for name, s in found.items()
                )
                or "no agent that uses the model"
            )
        )
    else:
        found = {
            name: stats
            for name, stats in mined_stats(artifacts).items()
            if agents is None or name in agents
        }
    for name, stats in found.items():
        if stop is not None and stop.is_set():
            run.agents.append(AgentLearn(agent=name, action="skipped", why="stopped"))
            continue
        before = [s for s in list_trainings(artifacts, name) if s.status == "done"]
        new = stats.train - (before[-1].examples if before else 0)
        entry = AgentLearn(agent=name, action="skipped", why="", examples=stats.train, new=new)
        run.agents.append(entry)
        if stats.train < options.min_examples:
            entry.why = f"not enough data ({stats.train} < {options.min_examples} green examples)"
        elif before and new < min_new:
            entry.why = f"nothing new since {before[-1].id} ({stats.train} examples then and now)"
        elif (model := base or base_model_of(artifacts, stats)) is None:
            entry.why = f"its model {stats.model!r} is not on this machine"
        else:
            try:
                trainer.check_data(artifacts, name, options)
            except trainer.NotEnoughData as exc:
                entry.why = exc.message
            else:
                _train_one(
                    artifacts,
                    entry,
                    model,
                    options,
                    dict(alpha=alpha, parallel=parallel, corpus=corpus, registry=registry),
                    say,
                    on_step,
                    on_task,
                    stop,
                )
        if entry.action == "skipped":
            say(f"{name}: not trained: {entry.why}")
        save()
    run.finished_at = datetime.now(UTC)
    save()
    return run


def _train_one(
    artifacts: Path,
    entry: AgentLearn,
    model: Path,
    options: Any,
    judging: dict[str, Any],
    say: Callable[[str], None],
    on_step: Callable[[ProgressRow], None] | None,
    on_task: Callable[[TaskResult, int, int], None] | None,
    stop: threading.Event | None,
) -> None:
    from . import train as trainer

    folder = trainer.start(artifacts, entry.agent, model, options, promote=True)
    entry.training = folder.name
    say(f"{entry.agent}: training {folder.name} on {model.name} ({entry.examples} examples)")
    try:
        state = trainer.train(artifacts, folder, on_step=on_step, stop=stop)
    except PantheonError as exc:
        entry.action, entry.why = "failed", f"training failed: {exc.message}"
        say(f"{entry.agent}: {entry.why}")
        return
    entry.steps, entry.stopped = state.step, state.stopped
    entry.minutes = round(state.elapsed_s / 60, 1)
    say(
        f"{entry.agent}: trained {state.step} step(s) in {entry.minutes} min"
        + (f" ({state.stopped})" if state.stopped else "")
        + "; judging it against the base model"
    )
    try:
        ev, promoted = judge_and_promote(artifacts, folder, on_task=on_task, **judging)
    except PantheonError as exc:
        entry.action, entry.why = "failed", f"judging failed: {exc.message}"
        say(f"{entry.agent}: {entry.why}")
        return
    entry.action, entry.promoted = "trained", promoted
    entry.evaluation = ev.model_dump(mode="json", exclude={"results"})
    entry.why = ev.reason
    said = (
        f"AUROC base {ev.base_auroc:.2f}, adapter {ev.adapter_auroc:.2f} on {ev.tasks}"
        if ev.base_auroc is not None and ev.adapter_auroc is not None
        else f"base {ev.base_passed}/{ev.tasks}, adapter {ev.adapter_passed}/{ev.tasks}"
    )
    say(
        f"{entry.agent}: held out ({ev.judged_by}): {said}, p = {ev.p_value:.3g}: "
        + ("promoted" if promoted else "not promoted")
    )
