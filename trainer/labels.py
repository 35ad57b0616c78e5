"""The shipped corpus's labelled changes as a reviewer's chat examples.

A night labels only what its canaries and the morning review decide: a few fails, and passes only
when the operator merges by hand, so a reviewer adapter has little to learn from and often one
verdict only. ``pantheon traces mine --corpus`` (and ``pantheon learn --corpus``) adds the
labelled changes built from the shipped corpus (:mod:`pantheon.core.work.labelled`): for a sample
of the HumanEval problems, the real fix (a pass) and each planted defect (a fail), and for the
demo's docs pages, the reference frontmatter (a pass) and its planted defects (a fail).

Each change is shown to each reviewer node of the flow that reviews it (``codefix``'s and
``docops``'s, their instructions from the shipped flow files) through the night's own prompt
(:func:`pantheon.core.agents.review.review_messages`); the reply is the right verdict with the
reasons a careful reviewer gives, naming what the change does. The split is the night's: by
the file the task works on, so a problem is trained on or held out in both the night's data and
the corpus's, never both.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.flows.flow import Flow, load_flow, packaged_flows_dir
from pantheon.core.model.scoring import verdict_word
from pantheon.core.work.labelled import (
    Labelled,
    code_changes,
    one_per_problem,
    shipped_docs_changes,
)

__all__ = [
    "CORPUS_PROBLEMS",
    "as_gated",
    "corpus_changes",
    "reviewer_examples",
    "verdict_reasons",
]

CORPUS_PROBLEMS = 60
"""HumanEval problems a corpus mining takes by default (each gives about six changes)."""

FLOWS = {"code": "codefix.yaml", "docs": "docops.yaml"}


def corpus_changes(root: Path, problems: int = CORPUS_PROBLEMS) -> list[Labelled]:
    """The labelled changes of ``problems`` HumanEval problems (a fixed sample) and of every
    reference docs page, built and tested under ``root``."""
    from pantheon.core.run.demo import corpus_tasks

    tasks = one_per_problem(corpus_tasks())[: max(0, problems)]
    return code_changes(tasks, root / "code") + shipped_docs_changes(root / "docs")


def verdict_reasons(why: str) -> list[str]:
    """The reason as the reviewer's list: one short sentence each (the verdict's own limit)."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?])\s+(?=[A-Z])", why) if p.strip()]
    return [p if len(p) < 300 else p[:296].rstrip() + "…" for p in parts][:6] or [why[:296]]


def as_gated(given: ReviewPeer.Input, good: Labelled) -> ReviewPeer.Input:
    """A change as a scored reviewer sees it at night, where only what the gates pass reaches
    it: with the gates' report of its task's real fix (its tests passed). A defect the tests
    or checks caught becomes a hard case, judged on its diff alone — a wrong fix the tests
    would have failed is still a wrong fix — so a verifier learns to read the change, not
    the test result."""
    return given.model_copy(
        update={
            "test_passed": good.test_passed,
            "test_report": good.test_report,
            "test_output": None,
        }
    )


def _reviewers(flow: Flow, agent: str) -> list[tuple[str, ReviewPeer.Params]]:
    return [
        (node, ReviewPeer.Params.model_validate(flow.node(node).params))
        for node in flow.order
        if flow.agents[node].reviewer and flow.agents[node].name == agent
    ]


def reviewer_examples(
    registry: AgentRegistry,
    agent: str,
    *,
    problems: int = CORPUS_PROBLEMS,
    held: Any,
    changes: list[Labelled] | None = None,
) -> list[dict[str, Any]]:
    """One example per labelled change and reviewer node of ``agent`` in the shipped flows;
    ``held(key)`` says whether a task is held out. The examples come in a fixed order that mixes
    problems, kinds and nodes, so that judging the first N held-out ones samples them all."""
    flows = {kind: load_flow(packaged_flows_dir() / name, registry) for kind, name in FLOWS.items()}
    nodes = {kind: _reviewers(flow, agent) for kind, flow in flows.items()}
    if not any(nodes.values()):
        return []
    if changes is None:
        with tempfile.TemporaryDirectory(prefix="pantheon-labelled-") as tmp:
            changes = corpus_changes(Path(tmp), problems)
    passing = {c.key: c for c in changes if c.right and c.test_passed}
    out = []
    for change in changes:
        given = ReviewPeer.Input(
            task=change.task,
            kind=change.flow,  # type: ignore[arg-type]
            test_passed=change.test_passed,
            test_report=change.test_report,
            test_output=change.test_output,
        )
        reasoned = json.dumps(
            {"reasons": verdict_reasons(change.why), "passed": change.right}, indent=2
        )
        for node, params in nodes[change.flow]:
            shown = given
            if params.scored and change.key in passing:
                shown = as_gated(given, passing[change.key])
            messages = review_messages(
                shown, change.diff, params.instructions, page=change.page, scored=params.scored
            )
            reply = verdict_word(change.right) if params.scored else reasoned
            messages.append({"role": "assistant", "content": reply})
            out.append(
                {
                    "messages": messages,
                    "split": "heldout" if held(change.key) else "train",
                    "run": f"corpus:{change.id}",
                    "key": change.key,
                    "node": f"{FLOWS[change.flow].removesuffix('.yaml')}.{node}",
                    "label": change.right,
                    "label_from": f"corpus ({change.kind})",
                    "own_reply": False,
                }
            )
    return sorted(out, key=lambda e: hashlib.sha256(f"{e['run']}|{e['node']}".encode()).digest())
