"""The reviewers' examples from a night: the changes whose right verdict is known.

Reviewers never learn from their own verdicts. Their examples are the **canaries** (planted
changes whose right verdict is known: a fail) and the real changes the operator merged (a pass)
or rejected (a fail) in the morning review: the messages the reviewer saw, and a reply with the
right verdict — its own reply when it was right, else the right verdict with the reason the label
gives. A verdict nobody checked is never learnt from.

A scored reviewer also learns from the night's **wrong fixes**: each candidate fix the writer
made whose tests failed is a real wrong fix of that task (a fail). It is shown as the run's
scored reviewers saw the change that passed the tests — the same task and the same passing
test report — so a verifier learns to read the diff, not the test result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.errors import ArtifactError
from pantheon.core.flows.flow import Flow
from pantheon.core.learn.files import MineStats
from pantheon.core.model.scoring import verdict_word
from pantheon.core.store.atomic import read_json
from pantheon.core.store.layout import CALLS_FILE, INPUT_FILE
from pantheon.core.store.queue import Job
from pantheon.core.store.runs import RUNS

from .examples import AgentData, chat_messages, heldout, read_calls, task_key

__all__ = ["mine_reviewers", "mine_wrong_fixes"]


def _reviewers(flow: Flow, only: set[str] | None) -> list[str]:
    """The flow's reviewer nodes that ask the model (those of ``only``'s agents, if given)."""
    return [
        n
        for n in flow.order
        if flow.agents[n].reviewer
        and flow.agents[n].uses_model
        and (only is None or flow.agents[n].name in only)
    ]


def _labelled(
    state: AgentData,
    folder: Path,
    node: str,
    right: bool,
    why: str,
    *,
    key: str,
    held: bool,
    run: str,
    source: str,
) -> bool:
    """One reviewer example from the node's calls: the messages it saw, and a reply with the
    right verdict (its own reply when it gave that verdict, else the label's)."""
    calls, bad = read_calls(folder / node / CALLS_FILE)
    if bad:
        state.leave("corrupt", bad)
    if not calls:
        state.leave("no review call")
        return False
    scored = [c for c in calls if c.get("kind") == "score"]
    if scored:  # a scored verdict: the one word, whatever the model would have said
        call = scored[-1]
        reply = verdict_word(right)
        own = isinstance(call.get("raw"), str) and call["raw"].strip().lower() == reply
    else:
        used = [c for c in calls if not c.get("error") and isinstance(c.get("parsed"), dict)]
        call = used[-1] if used else calls[0]
        raw = call.get("raw")
        parsed = call.get("parsed") if used else None
        if isinstance(parsed, dict) and parsed.get("passed") is right and isinstance(raw, str):
            reply, own = raw, True
        else:
            reply, own = json.dumps({"reasons": [why], "passed": right}, indent=2), False
    messages = chat_messages(call)
    if not messages:
        state.leave("unusable call")
        return False
    messages.append({"role": "assistant", "content": reply})
    example = {
        "messages": messages,
        "split": "heldout" if held else "train",
        "run": run,
        "key": key,
        "node": node,
        "label": right,
        "label_from": source,
        "own_reply": own,
    }
    if not state.add(example):
        return False
    if isinstance(call.get("model"), str):
        state.models[call["model"]] += 1
    name = "pass" if right else "fail"
    state.stats.labels[name] = state.stats.labels.get(name, 0) + 1
    state.stats.green_jobs += 1
    return True


def mine_reviewers(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    decisions: dict[str, Any],
    agents: dict[str, AgentData],
    fraction: float,
    only: set[str] | None,
) -> None:
    """Add the reviewers' labelled examples to ``agents``: every canary of a run in ``by_run``
    that reached a review, and every change of one that the operator merged or rejected."""
    from pantheon.core.observe.canaries import read_canaries
    from pantheon.core.work.canary import WHAT

    def state_of(flow: Flow, node: str) -> AgentData:
        name = flow.agents[node].name
        return agents.setdefault(name, AgentData(MineStats(agent=name, fraction=fraction)))

    for record in read_canaries(artifacts):
        found = by_run.get(str(record.get("run")))
        if found is None or not record.get("verdicts"):
            continue  # stopped by the gates before any review: nothing for a reviewer
        job, flow = found
        right = bool(record.get("right", False))
        what = str(record.get("what") or WHAT.get(str(record.get("kind")), "a planted defect"))
        why = f"The change is wrong: {what.split(': ', 1)[-1]}."
        key = task_key(job.input, job.run_name)
        for node in _reviewers(flow, only):
            if node in record["verdicts"]:
                _labelled(
                    state_of(flow, node),
                    artifacts / RUNS / job.run_name / "canary",
                    node,
                    right,
                    why,
                    key=key,
                    held=heldout(key, fraction),
                    run=job.run_name,
                    source=f"canary ({record.get('kind')})",
                )
    for run, decision in decisions.items():
        found = by_run.get(run)
        if found is None:
            continue
        job, flow = found
        right = decision.action == "merged"
        why = (
            "The change does what the task asks, and nothing else."
            if right
            else f"The change is wrong: {decision.why or 'the operator rejected it'}."
        )
        key = task_key(job.input, job.run_name)
        for node in _reviewers(flow, only):
            _labelled(
                state_of(flow, node),
                artifacts / RUNS / run,
                node,
                right,
                why,
                key=key,
                held=heldout(key, fraction),
                run=run,
                source=f"operator ({decision.action} by {decision.by})",
            )
    mine_wrong_fixes(artifacts, by_run, state_of, fraction, only)


def _wrong_fixes(folder: Path, flow: Flow) -> list[tuple[int, str]]:
    """(candidate, diff) of each distinct candidate fix of the run whose tests failed (read
    from the writers' calls: the nodes that change the workspace, not the gates)."""
    out: dict[str, int] = {}
    writers = [n for n in flow.order if flow.agents[n].uses_model and not flow.agents[n].gate]
    for node in writers:
        calls, _ = read_calls(folder / node / CALLS_FILE)
        for call in calls:
            diff = call.get("diff")
            if call.get("kind") != "candidate" or not isinstance(diff, str) or not diff.strip():
                continue
            if call.get("tests_passed") is False and not call.get("chosen"):
                out.setdefault(diff, int(call.get("candidate") or 0))
    return [(c, d) for d, c in out.items()]


def mine_wrong_fixes(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    state_of: Any,
    fraction: float,
    only: set[str] | None,
) -> None:
    """A fail example for each scored reviewer of a run that reviewed a change, per distinct
    candidate fix of that run whose tests failed: the reviewer's own input (the task and the
    passing test report) with the wrong fix's diff."""
    for run, (job, flow) in sorted(by_run.items()):
        folder = artifacts / RUNS / run
        scored = [n for n in _reviewers(flow, only) if flow.node(n).params.get("scored") is True]
        reviewed = [n for n in scored if (folder / n / INPUT_FILE).is_file()]
        wrong = _wrong_fixes(folder, flow) if reviewed else []
        if not wrong:
            continue
        key = task_key(job.input, job.run_name)
        for node in reviewed:
            state = state_of(flow, node)
            try:
                given = ReviewPeer.Input.model_validate(read_json(folder / node / INPUT_FILE))
            except (ArtifactError, ValidationError, ValueError):
                state.leave("unreadable review input")
                continue
            params = ReviewPeer.Params.model_validate(flow.node(node).params)
            for candidate, diff in wrong:
                messages = review_messages(given, diff, params.instructions, scored=True)
                messages.append({"role": "assistant", "content": verdict_word(False)})
                example = {
                    "messages": messages,
                    "split": "heldout" if heldout(key, fraction) else "train",
                    "run": f"{run}#candidate{candidate}",
                    "key": key,
                    "node": node,
                    "label": False,
                    "label_from": "wrong fix (its tests failed)",
                    "own_reply": False,
                }
                if state.add(example):
                    state.stats.labels["fail"] = state.stats.labels.get("fail", 0) + 1
