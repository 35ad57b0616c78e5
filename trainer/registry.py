"""The adapter registry's changes: a promotion, with its evidence, and a rollback to the agent's
previous adapter (or to the base model). ``adapters/registry.json`` is what the night reads."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from pantheon.core.learn.files import (
    ADAPTERS,
    Evaluation,
    Registry,
    RegistryEntry,
    read_registry,
    read_state,
    update_registry,
)

from .options import EvaluationError

__all__ = ["promote", "rollback"]


def promote(artifacts: Path, folder: Path, evaluation: Evaluation, *, force: bool = False) -> bool:
    """Record the adapter as its agent's in ``adapters/registry.json`` when the evidence says so.

    Returns whether it was promoted. The adapter's files are copied under ``adapters/`` so the
    training folder can be cleaned up without breaking the night.
    """
    if not evaluation.promoted and not force:
        return False
    artifacts = Path(artifacts)
    state = read_state(folder)
    dest = artifacts / ADAPTERS
    dest.mkdir(parents=True, exist_ok=True)
    gguf = peft = None
    if state.gguf:
        gguf = dest / Path(state.gguf).name
        tmp = dest / f".tmp-{gguf.name}"
        shutil.copyfile(artifacts / state.gguf, tmp)
        os.replace(tmp, gguf)
    if state.peft:
        peft = dest / state.id
        shutil.rmtree(peft, ignore_errors=True)
        shutil.copytree(artifacts / state.peft, peft)
    entry = RegistryEntry(
        agent=state.agent,
        adapter=evaluation.adapter,
        gguf=os.path.relpath(gguf, artifacts) if gguf else None,
        peft=os.path.relpath(peft, artifacts) if peft else None,
        training=state.id,
        base_model=state.base_model,
        evidence=evaluation.model_dump(mode="json", exclude={"results"}),
        promoted_at=datetime.now(UTC),
    )

    def change(reg: Registry) -> None:
        previous = reg.agents.get(state.agent)
        reg.agents[state.agent] = entry
        reg.history.append(
            {
                "at": entry.promoted_at.isoformat() if entry.promoted_at else None,
                "agent": state.agent,
                "action": "promoted" if evaluation.promoted else "promoted by hand",
                "adapter": entry.adapter,
                "entry": entry.model_dump(mode="json"),
                "previous": previous.adapter if previous else None,
            }
        )

    update_registry(artifacts, change)
    return True


def rollback(artifacts: Path, agent: str) -> RegistryEntry | None:
    """Give the agent its previous promoted adapter back (or none); returns what it now uses."""
    artifacts = Path(artifacts)
    if agent not in read_registry(artifacts).agents:
        raise EvaluationError(f"{agent} has no promoted adapter to roll back")
    now: list[RegistryEntry | None] = [None]

    def change(reg: Registry) -> None:
        current = reg.agents.pop(agent)
        # the promotions of this agent, newest first, before the current one
        earlier = [
            h
            for h in reversed(reg.history)
            if h.get("agent") == agent and h.get("entry") and h.get("adapter") != current.adapter
        ]
        rolled_back = {h.get("adapter") for h in reg.history if h.get("action") == "rolled back"}
        for h in earlier:
            if h["adapter"] in rolled_back:
                continue
            entry = RegistryEntry.model_validate(h["entry"])
            if entry.gguf is None or (artifacts / entry.gguf).exists():
                reg.agents[agent] = entry
                now[0] = entry
                break
        reg.history.append(
            {
                "at": datetime.now(UTC).isoformat(),
                "agent": agent,
                "action": "rolled back",
                "adapter": current.adapter,
                "previous": now[0].adapter if now[0] else None,
            }
        )

    update_registry(artifacts, change)
    return now[0]
