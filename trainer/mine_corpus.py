"""The shipped corpus's examples, mined beside a night's (``pantheon traces mine --corpus``).

The labelled changes built from the corpus (both verdicts, with reasons that name what each
change does: :mod:`pantheon.trainer.labels`) join every reviewer's examples, and ``codegen``
gets the corpus's real fixes: each mutant's prompt, its tests run for real, and the fixed file
(:mod:`pantheon.trainer.fixes`). Their model is the one that answered that agent's calls in the
night.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.flows.flow import Flow
from pantheon.core.learn.files import MineStats
from pantheon.core.store.layout import CALLS_FILE
from pantheon.core.store.queue import Job
from pantheon.core.store.runs import RUNS

from .examples import AgentData, heldout, read_calls

__all__ = ["mine_corpus"]

log = logging.getLogger(__name__)


def mine_corpus(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    agents: dict[str, AgentData],
    fraction: float,
    only: set[str] | None,
    registry: AgentRegistry,
    problems: int,
) -> None:
    """Add the labelled changes of ``problems`` corpus problems to every reviewer of the night's
    flows (``review.peer`` always), and their real fixes to ``codegen``."""
    from .fixes import corpus_fixes
    from .labels import corpus_changes, reviewer_examples

    def held(key: str) -> bool:
        return heldout(key, fraction)

    names = sorted(
        {cls.name for _, flow in by_run.values() for cls in flow.agents.values() if cls.reviewer}
        | {"review.peer"}
    )
    names = [n for n in names if only is None or n in only]
    if names:
        with tempfile.TemporaryDirectory(prefix="pantheon-labelled-") as tmp:
            log.info("building the labelled changes of %d corpus problem(s)", problems)
            changes = corpus_changes(Path(tmp), problems)
        for name in names:
            found = reviewer_examples(registry, name, held=held, changes=changes)
            if found:
                _add_corpus(artifacts, by_run, agents, fraction, name, found)
    if only is None or "codegen" in only:
        log.info("testing the real fixes of %d corpus problem(s)", problems)
        fixes, left = corpus_fixes(problems, held=held)
        state = _add_corpus(artifacts, by_run, agents, fraction, "codegen", fixes)
        for why, n in left.items():
            state.leave(why, n)


def _add_corpus(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    agents: dict[str, AgentData],
    fraction: float,
    name: str,
    found: list[dict[str, Any]],
) -> AgentData:
    """The corpus's examples for one agent, deduplicated against what it has."""
    state = agents.setdefault(name, AgentData(MineStats(agent=name, fraction=fraction)))
    for example in found:
        if not state.add(example):
            continue
        if "label" in example:
            label = "pass" if example["label"] else "fail"
            state.stats.labels[label] = state.stats.labels.get(label, 0) + 1
        state.stats.corpus += 1
    if not state.models:
        model = _model_of(artifacts, by_run, name)
        if model:
            state.models[model] += 1
    return state


def _model_of(artifacts: Path, by_run: dict[str, tuple[Job, Flow]], agent: str) -> str | None:
    """The model that answered one of ``agent``'s calls in the night (the first found)."""
    for run, (_, flow) in by_run.items():
        for node in flow.order:
            if flow.agents[node].name != agent:
                continue
            calls, _ = read_calls(artifacts / RUNS / run / node / CALLS_FILE)
            for call in calls:
                if isinstance(call.get("model"), str):
                    return call["model"]
    return None
