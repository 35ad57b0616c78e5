"""Trace mining: the night's green work becomes per-agent chat data sets.

A job's trace is **green** when its run finished, every test gate passed, both reviewers passed it
and the operator did not reject it in the morning review. Each model call a worker agent made in a
green run (its reply parsed and accepted) becomes one chat example: the messages the agent saw, and
the reply it gave as the last, assistant, message — a tool call is a reply like any other.
Reviewers are not trained on their own verdicts.

A code fix's run keeps one line per candidate in its ``calls.jsonl``; only the kept one (it passed
the real tests, and then both reviews) has no ``error``, so only it becomes an example: a failed
candidate is never a positive (it is counted as ``failed candidate``).

Reviewers never learn from their own verdicts. Their examples are the **canaries** (planted
changes whose right verdict is known: a fail) and the real changes the operator merged in the
morning review (a pass): the messages the reviewer saw, and a reply with the right verdict — its
own reply when it was right, else the right verdict with the reason the label gives. With
``corpus``, the labelled changes built from the shipped corpus join them (both verdicts, with
reasons that name what each change does: :mod:`pantheon.trainer.labels`), and ``codegen`` gets
the corpus's real fixes: each mutant's prompt, its tests run for real, and the fixed file
(:mod:`pantheon.trainer.fixes`).

Each job falls on one side of a deterministic split by **task**, not by run: a hash of the task's
key (the file the job works on — every HumanEval mutant of one problem has the same file name —
or the input's ``task_key``), so that no two sides share a task. Its examples train the adapter
or stay held out, and a held-out job, green or not, is a task to judge the adapter on. Examples
are deduplicated on their full text. Nothing here needs torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import ArtifactError, PantheonError
from pantheon.core.flows.flow import Flow, parse_flow
from pantheon.core.learn.files import MineStats, training_root
from pantheon.core.morning.review import node_output, read_decisions
from pantheon.core.store.atomic import atomic_write_json, atomic_write_text, read_json
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import CALLS_FILE, RUN_FILE
from pantheon.core.store.queue import Job, JobQueue
from pantheon.core.store.runs import RUNS, RunRecord

__all__ = ["MineResult", "heldout", "mine", "task_key"]

log = logging.getLogger(__name__)

DATA = "data.jsonl"
TASKS = "tasks.jsonl"
STATS = "mine.json"


def heldout(key: str, fraction: float) -> bool:
    """Whether a task is held out: the same answer on every machine and every night."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def task_key(inputs: dict[str, Any], run_name: str) -> str:
    """What makes two jobs the same task, for the split: the input's ``task_key``, else the
    name of the file it works on (``path``: every mutant of one HumanEval problem, and every
    night's job on one page, share it), else the run."""
    key = inputs.get("task_key")
    if isinstance(key, str) and key:
        return key
    path = inputs.get("path")
    if isinstance(path, str) and path.strip():
        return "file:" + PurePosixPath(path.strip()).name
    return "run:" + run_name


@dataclass
class _Agent:
    stats: MineStats
    examples: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    jobs: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)


@dataclass
class MineResult:
    agents: dict[str, MineStats]
    runs: int
    """Jobs looked at."""
    skipped: Counter[str]
    """Jobs that gave no example to any agent, by reason."""


def _calls(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The calls a node made, and how many lines were corrupt (or hold no messages)."""
    calls, bad = read_jsonl(
        path,
        check=lambda c: None if isinstance(c.get("messages"), list) else "holds no messages",
    )
    return calls, len(bad)


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
    agents: dict[str, _Agent] = {}
    skipped: Counter[str] = Counter()
    jobs: list[Job] = []
    by_run: dict[str, tuple[Job, Flow]] = {}
    if night:
        jobs = _mine_night(artifacts, registry, only, decisions, agents, skipped, by_run, fraction)
    _mine_reviewers(artifacts, by_run, decisions, agents, fraction, only)
    if corpus > 0:
        _mine_corpus(artifacts, by_run, agents, fraction, only, registry, corpus)
    now = datetime.now(UTC)
    for state in agents.values():
        _write(artifacts, state, now)
    return MineResult({k: v.stats for k, v in sorted(agents.items())}, len(jobs), skipped)


def _mine_night(
    artifacts: Path,
    registry: AgentRegistry,
    only: set[str] | None,
    decisions: dict[str, Any],
    agents: dict[str, _Agent],
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
                agents.setdefault(name, _Agent(MineStats(agent=name, fraction=fraction)))
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
    agents: dict[str, _Agent],
    fraction: float,
) -> str | None:
    """Add one job's examples and task; returns why it gave no example (None: it gave some)."""
    folder = artifacts / RUNS / job.run_name
    names = {flow.agents[n].name for n in workers}

    def leave(reason: str) -> str:
        for name in names:
            agents[name].stats.left_out[reason] = agents[name].stats.left_out.get(reason, 0) + 1
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
        calls, bad = _calls(folder / node / CALLS_FILE)
        if bad:
            state.stats.left_out["corrupt"] = state.stats.left_out.get("corrupt", 0) + bad
        for call in calls:
            raw = call.get("raw")
            if call.get("error") or not isinstance(raw, str) or not raw.strip():
                why = "unusable call"
                if call.get("kind") == "candidate":
                    why = "candidate not kept" if call.get("tests_passed") else "failed candidate"
                state.stats.left_out[why] = state.stats.left_out.get(why, 0) + 1
                continue
            messages = [
                {"role": str(m.get("role")), "content": str(m.get("content") or "")}
                for m in call["messages"]
                if isinstance(m, dict)
            ]
            messages.append({"role": "assistant", "content": raw})
            digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
            if digest in state.seen:
                state.stats.duplicates += 1
                continue
            state.seen.add(digest)
            if isinstance(call.get("model"), str):
                state.models[call["model"]] += 1
            state.examples.append(
                {
                    "messages": messages,
                    "split": "heldout" if held else "train",
                    "run": job.run_name,
                    "key": key,
                    "node": node,
                    "step": call.get("step"),
                }
            )
            gave = True
    return None if gave else "no usable call"


# -- reviewers: the labelled changes --------------------------------------------------------


def _reviewers(flow: Flow, only: set[str] | None) -> list[str]:
    return [
        n
        for n in flow.order
        if flow.agents[n].reviewer
        and flow.agents[n].uses_model
        and (only is None or flow.agents[n].name in only)
    ]


def _labelled(
    state: _Agent,
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
    calls, bad = _calls(folder / node / CALLS_FILE)
    if bad:
        state.stats.left_out["corrupt"] = state.stats.left_out.get("corrupt", 0) + bad
    if not calls:
        state.stats.left_out["no review call"] = state.stats.left_out.get("no review call", 0) + 1
        return False
    used = [c for c in calls if not c.get("error") and isinstance(c.get("parsed"), dict)]
    call = used[-1] if used else calls[0]
    raw = call.get("raw")
    parsed = call.get("parsed") if used else None
    if isinstance(parsed, dict) and parsed.get("passed") is right and isinstance(raw, str):
        reply, own = raw, True
    else:
        reply, own = json.dumps({"reasons": [why], "passed": right}, indent=2), False
    messages = [
        {"role": str(m.get("role")), "content": str(m.get("content") or "")}
        for m in call["messages"]
        if isinstance(m, dict)
    ]
    if not messages:
        state.stats.left_out["unusable call"] = state.stats.left_out.get("unusable call", 0) + 1
        return False
    messages.append({"role": "assistant", "content": reply})
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()
    if digest in state.seen:
        state.stats.duplicates += 1
        return False
    state.seen.add(digest)
    if isinstance(call.get("model"), str):
        state.models[call["model"]] += 1
    state.examples.append(
        {
            "messages": messages,
            "split": "heldout" if held else "train",
            "run": run,
            "key": key,
            "node": node,
            "label": right,
            "label_from": source,
            "own_reply": own,
        }
    )
    name = "pass" if right else "fail"
    state.stats.labels[name] = state.stats.labels.get(name, 0) + 1
    state.stats.green_jobs += 1
    return True


def _mine_reviewers(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    decisions: dict[str, Any],
    agents: dict[str, _Agent],
    fraction: float,
    only: set[str] | None,
) -> None:
    """The reviewers' labelled examples: every canary (the right verdict is a fail), and every
    real change the operator merged (a pass) or rejected (a fail) in the morning review. A
    verdict nobody checked is never learnt from."""
    from pantheon.core.observe.canaries import read_canaries
    from pantheon.core.work.canary import WHAT

    def state_of(flow: Flow, node: str) -> _Agent:
        name = flow.agents[node].name
        return agents.setdefault(name, _Agent(MineStats(agent=name, fraction=fraction)))

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


def _mine_corpus(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    agents: dict[str, _Agent],
    fraction: float,
    only: set[str] | None,
    registry: AgentRegistry,
    problems: int,
) -> None:
    """The shipped corpus's labelled changes, as examples for every reviewer of the shipped
    flows, and its real fixes, as examples for ``codegen`` (:mod:`pantheon.trainer.fixes`);
    their model is the one that answered that agent's calls in the night."""
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
            state.stats.left_out[why] = state.stats.left_out.get(why, 0) + n


def _add_corpus(
    artifacts: Path,
    by_run: dict[str, tuple[Job, Flow]],
    agents: dict[str, _Agent],
    fraction: float,
    name: str,
    found: list[dict[str, Any]],
) -> _Agent:
    """The corpus's examples for one agent, deduplicated against what it has."""
    state = agents.setdefault(name, _Agent(MineStats(agent=name, fraction=fraction)))
    for example in found:
        text = json.dumps(example["messages"], sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in state.seen:
            state.stats.duplicates += 1
            continue
        state.seen.add(digest)
        state.examples.append(example)
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
            calls, _ = _calls(artifacts / RUNS / run / node / CALLS_FILE)
            for call in calls:
                if isinstance(call.get("model"), str):
                    return call["model"]
    return None


def _write(artifacts: Path, state: _Agent, now: datetime) -> None:
    folder = training_root(artifacts) / state.stats.agent
    stats = state.stats
    stats.examples = len(state.examples)
    stats.train = sum(1 for e in state.examples if e["split"] == "train")
    stats.heldout = stats.examples - stats.train
    stats.tasks = len(state.tasks)
    stats.model = state.models.most_common(1)[0][0] if state.models else None
    stats.at = now
    atomic_write_text(
        folder / DATA, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in state.examples)
    )
    atomic_write_text(
        folder / TASKS, "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in state.tasks)
    )
    atomic_write_json(folder / STATS, stats.model_dump(mode="json"))


def read_examples(
    artifacts: Path, agent: str, folder: Path | None = None
) -> tuple[list[dict[str, Any]], int]:
    """An agent's mined examples (or the copy a training took of them, in ``folder``), and how
    many lines were corrupt."""
    path = (folder or training_root(artifacts) / agent) / DATA
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(
            f"no mined data for agent {agent!r} ({path} is missing)",
            hint=f"run: pantheon traces mine --artifacts {artifacts}",
        ) from None
    out, bad = [], 0
    for line in raw.splitlines():
        try:
            item = json.loads(line)
            msgs = item["messages"]
            if not (
                isinstance(msgs, list)
                and len(msgs) >= 2
                and msgs[-1].get("role") == "assistant"
                and item.get("split") in ("train", "heldout")
            ):
                raise ValueError("not a chat example")
            out.append(item)
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
    return out, bad


def read_tasks(artifacts: Path, agent: str, folder: Path | None = None) -> list[dict[str, Any]]:
    path = (folder or training_root(artifacts) / agent) / TASKS
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            task = json.loads(line)
        except ValueError:
            continue
        if isinstance(task, dict) and "input" in task and "flow_sha256" in task:
            out.append(task)
    return out
