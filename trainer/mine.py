"""Trace mining: the night's green work becomes per-agent chat data sets.

A job's trace is **green** when its run finished, every test gate passed, both reviewers passed it
and the operator did not reject it in the morning review. Each model call a worker agent made in a
green run (its reply parsed and accepted) becomes one chat example: the messages the agent saw, and
the reply it gave as the last, assistant, message — a tool call is a reply like any other.

A code fix's run keeps one line per candidate in its ``calls.jsonl``; only the kept one (it passed
the real tests, and then both reviews) has no ``error``, so only it becomes an example: a failed
candidate is never a positive (it is counted as ``failed candidate``).

Reviewers are not trained on their own verdicts: their examples are the changes whose right
verdict is known (:mod:`pantheon.trainer.mine_reviews`). With ``corpus``, the shipped corpus's
labelled changes and real fixes join them (:mod:`pantheon.trainer.mine_corpus`).

Each job falls on one side of a split by task (:func:`~pantheon.trainer.examples.heldout`): its
examples train the adapter or stay held out, and a held-out job, green or not, is a task to judge
the adapter on. What is written, and how it is read back: :mod:`pantheon.trainer.examples`.
Nothing here needs torch.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.flows.flow import Flow, parse_flow
from pantheon.core.learn.files import MineStats
from pantheon.core.morning.review import node_output, read_decisions
from pantheon.core.store.atomic import read_json
from pantheon.core.store.layout import CALLS_FILE, RUN_FILE
from pantheon.core.store.queue import Job, JobQueue
from pantheon.core.store.runs import RUNS, RunRecord

from .examples import AgentData, chat_messages, heldout, read_calls, task_key, write_data_set
from .mine_corpus import mine_corpus
from .mine_reviews import mine_reviewers

__all__ = ["MineResult", "mine"]

log = logging.getLogger(__name__)


@dataclass
class MineResult:
    """What one mining did."""

    agents: dict[str, MineStats]
    """Each agent's figures, as written in its ``mine.json``."""
    runs: int
    """Jobs looked at."""
    skipped: Counter[str]
    """Jobs that gave no example to any agent, by reason."""


def mine(
    artifacts: Path,
    *,
    fraction: float = 0.2,
    registry: AgentRegistry | None = None,
    only: set[str] | None = None,
    corpus: int = 0,
) -> MineResult:
    """Mine every job of the artifacts directory; write ``training/<agent>/`` for each agent.
    ``corpus``: add the labelled changes of that many problems of the shipped corpus (and of its
    docs pages) to the reviewers' examples (:mod:`pantheon.trainer.labels`), and the real fixes
    of every mutant of those problems to ``codegen``'s (:mod:`pantheon.trainer.fixes`)."""
    artifacts = Path(artifacts)
    if not (0.0 < fraction < 1.0):
        raise PantheonError(f"the held-out fraction must be between 0 and 1, not {fraction}")
    registry = registry or default_registry()
    night = (artifacts / "pantheon.db").exists()
    if not night and corpus <= 0:
        raise ArtifactError(
            f"{artifacts} holds no night to mine (no pantheon.db)",
            hint="run a night first (pantheon night), or point --artifacts at one; --corpus "
            "mines the shipped corpus's labelled changes without one",
        )
    decisions, _ = read_decisions(artifacts)
    agents: dict[str, AgentData] = {}
    skipped: Counter[str] = Counter()
    jobs: list[Job] = []
    by_run: dict[str, tuple[Job, Flow]] = {}
    if night:
        jobs = _mine_night(artifacts, registry, only, decisions, agents, skipped, by_run, fraction)
    mine_reviewers(artifacts, by_run, decisions, agents, fraction, only)
    if corpus > 0:
        mine_corpus(artifacts, by_run, agents, fraction, only, registry, corpus)
    now = datetime.now(UTC)
    for state in agents.values():
        write_data_set(artifacts, state, now)
    return MineResult({k: v.stats for k, v in sorted(agents.items())}, len(jobs), skipped)


def _mine_night(
    artifacts: Path,
    registry: AgentRegistry,
    only: set[str] | None,
    decisions: dict[str, Any],
    agents: dict[str, AgentData],
    skipped: Counter[str],
    by_run: dict[str, tuple[Job, Flow]],
    fraction: float,
) -> list[Job]:
    """Every job of the night's queue: its workers' examples and tasks into ``agents``, why
    one gave none into ``skipped``, each readable run into ``by_run``; returns the jobs."""
    flows: dict[str, Flow | None] = {}
    with JobQueue(artifacts, create=False) as queue:
        jobs = queue.jobs(limit=10**9)

        def flow_of(job: Job) -> Flow | None:
            if job.flow_sha not in flows:
                try:
                    source, text = queue.flow_text(job.flow_sha)
                    flows[job.flow_sha] = parse_flow(text, registry, source=source)
                except PantheonError as exc:
                    log.warning("flow of %s cannot be read: %s", job.run_name, exc)
                    flows[job.flow_sha] = None
            return flows[job.flow_sha]

        for job in jobs:
            flow = flow_of(job)
            if flow is not None:
                by_run[job.run_name] = (job, flow)
            if flow is None:
                skipped["flow unreadable"] += 1
                continue
            workers = [
                n
                for n in flow.order
                if flow.agents[n].uses_model
                and not flow.agents[n].reviewer
                and (only is None or flow.agents[n].name in only)
            ]
            if not workers:
                continue
            for n in workers:
                name = flow.agents[n].name
                agents.setdefault(name, AgentData(MineStats(agent=name, fraction=fraction)))
            reason = _mine_job(artifacts, job, flow, workers, decisions, agents, fraction)
            if reason:
                skipped[reason] += 1
    return jobs


def _mine_job(
    artifacts: Path,
    job: Job,
    flow: Flow,
    workers: list[str],
    decisions: dict[str, Any],
    agents: dict[str, AgentData],
    fraction: float,
) -> str | None:
    """Add one job's examples and task; returns why it gave no example (None: it gave some)."""
    folder = artifacts / RUNS / job.run_name
    names = {flow.agents[n].name for n in workers}

    def leave(reason: str) -> str:
        for name in names:
            agents[name].leave(reason)
        return reason

    if job.status not in ("done", "failed"):
        return leave("unfinished")
    try:
        record = RunRecord.model_validate(read_json(folder / RUN_FILE))
    except FileNotFoundError:
        return leave("corrupt")
    except (ArtifactError, ValidationError):
        return leave("corrupt")
    key = task_key(record.input, job.run_name)
    held = heldout(key, fraction)
    if held:
        task = {
            "run": job.run_name,
            "key": key,
            "job": job.id,
            "flow": flow.name,
            "flow_sha256": job.flow_sha,
            "input": record.input,
            "status": record.status,
        }
        for name in names:
            agents[name].tasks.append(task)
    verdict = _verdict(flow, folder)
    if verdict == "green" and record.status != "done":
        verdict = "failed"
    decision = decisions.get(job.run_name)
    if verdict == "green" and decision is not None and decision.action != "merged":
        verdict = decision.action  # rejected or reverted by the operator: never learnt from
    if verdict != "green":
        return leave(verdict)
    gave = False
    for node in workers:
        state = agents[flow.agents[node].name]
        state.stats.green_jobs += 1
        calls, bad = read_calls(folder / node / CALLS_FILE)
        if bad:
            state.leave("corrupt", bad)
        for call in calls:
            raw = call.get("raw")
            if call.get("error") or not isinstance(raw, str) or not raw.strip():
                why = "unusable call"
                if call.get("kind") == "candidate":
                    why = "candidate not kept" if call.get("tests_passed") else "failed candidate"
                state.leave(why)
                continue
            messages = chat_messages(call)
            messages.append({"role": "assistant", "content": raw})
            example = {
                "messages": messages,
                "split": "heldout" if held else "train",
                "run": job.run_name,
                "key": key,
                "node": node,
                "step": call.get("step"),
            }
            if not state.add(example):
                continue
            if isinstance(call.get("model"), str):
                state.models[call["model"]] += 1
            gave = True
    return None if gave else "no usable call"


def _verdict(flow: Flow, folder: Path) -> str:
    """green, failed or disagreed, from the gates' outputs on disk."""
    reviews: list[bool] = []
    for node in flow.order:
        cls = flow.agents[node]
        if not cls.gate:
            continue
        out = node_output(folder, node)
        if out is None:
            return "failed"
        if cls.reviewer:
            reviews.append(bool(out.get("passed")))
        elif not out.get("passed"):
            return "failed"
    if len(reviews) >= 2 and len(set(reviews)) > 1:
        return "disagreed"
    if len(reviews) < 2 or not all(reviews):
        return "failed"
    return "green"
