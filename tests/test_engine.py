"""The runner and the engine, in process: artifacts, resume, failures, gates, controls."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import ClassVar

import pytest
from helpers import until
from pydantic import BaseModel

from pantheon.core import (
    Agent,
    Engine,
    JobQueue,
    NodeContext,
    default_registry,
    enqueue,
    parse_flow,
)
from pantheon.core.store.control import ControlFile


class Count(Agent):
    """Counts its executions per (run, node) in a class-level dict."""

    name = "t.count"
    description = "counts executions"
    calls: ClassVar[dict[tuple[str, str], int]] = {}
    delay: ClassVar[float] = 0.0
    active: ClassVar[int] = 0
    peak: ClassVar[int] = 0

    class Input(BaseModel):
        n: int = 0

    class Output(BaseModel):
        n: int

    async def run(self, input, ctx: NodeContext):
        key = (ctx.run_id, ctx.node)
        Count.calls[key] = Count.calls.get(key, 0) + 1
        Count.active += 1
        Count.peak = max(Count.peak, Count.active)
        try:
            await asyncio.sleep(Count.delay)
        finally:
            Count.active -= 1
        return self.Output(n=input.n + 1)


class Boom(Agent):
    name = "t.boom"
    description = "raises on an odd n"

    class Input(BaseModel):
        n: int

    class Output(BaseModel):
        n: int

    async def run(self, input, ctx):
        if input.n % 2:
            raise ValueError(f"odd n {input.n}")
        return self.Output(n=input.n)


class Liar(Agent):
    name = "t.liar"
    description = "returns an output that does not fit its schema"

    class Input(BaseModel):
        n: int

    class Output(BaseModel):
        n: int

    async def run(self, input, ctx):
        return {"n": "not a number"}


class Review(Agent):
    name = "t.review"
    description = "a gate that passes even n"
    gate = True

    class Input(BaseModel):
        n: int

    class Output(BaseModel):
        passed: bool
        reasons: list[str]

    async def run(self, input, ctx):
        Count.calls[(ctx.run_id, ctx.node)] = Count.calls.get((ctx.run_id, ctx.node), 0) + 1
        ok = input.n % 2 == 0
        return self.Output(passed=ok, reasons=[] if ok else [f"{input.n} is odd"])


@pytest.fixture(autouse=True)
def _reset_counts():
    Count.calls = {}
    Count.delay = 0.0
    Count.active = Count.peak = 0


@pytest.fixture
def reg(registry):
    for agent in (Count, Boom, Liar, Review):
        registry.register(agent, origin="tests")
    return registry


CHAIN = """\
name: chain
input: {n: int}
nodes:
  - {id: a, agent: t.count, inputs: {n: $input.n}}
  - {id: b, agent: t.count, inputs: {n: $a.n}}
  - {id: c, agent: t.count, inputs: {n: $b.n}}
"""

REVIEWED = """\
name: reviewed
input: {n: int}
nodes:
  - {id: work, agent: t.count, inputs: {n: $input.n}}
  - {id: r1, agent: t.review, inputs: {n: $input.n}, after: [work]}
  - {id: r2, agent: t.review, inputs: {n: $input.n}, after: [work]}
  - {id: merge, agent: t.count, inputs: {n: $work.n}, after: [r1, r2]}
"""


def put(artifacts: Path, reg, text: str, inputs: list[dict]) -> list[int]:
    flow = parse_flow(text, reg, source="test.yaml")
    with JobQueue(artifacts) as q:
        return enqueue(q, flow, inputs)


def drain(artifacts: Path, reg, **kw) -> Engine:
    engine = Engine(artifacts, reg, until_empty=True, tick_s=0.02, **kw)
    asyncio.run(engine.run())
    return engine


def statuses(artifacts: Path) -> dict[int, str]:
    with JobQueue(artifacts) as q:
        return {j.id: j.status for j in q.jobs(limit=10_000)}


def test_a_job_runs_every_node_and_records_it(artifacts, reg):
    [job] = put(artifacts, reg, CHAIN, [{"n": 1}])
    engine = drain(artifacts, reg)
    assert engine.stats.done == 1 and engine.stats.nodes_run == 3
    run = artifacts / "runs" / f"chain-{job:06d}"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done"
    assert record["output"] == {"n": 4}
    assert record["nodes"] == {"a": "done", "b": "done", "c": "done"}
    assert json.loads((run / "b" / "input.json").read_text()) == {"n": 2}
    assert json.loads((run / "c" / "output.json").read_text()) == {"n": 4}
    assert not list(run.rglob(".tmp-*"))
    with JobQueue(artifacts) as q:
        counts = q.counts()
    assert counts.by_flow["chain"]["done"] == 1
    assert counts.by_agent["t.count"]["done"] == 3


def test_a_node_with_valid_output_is_never_run_again(artifacts, reg):
    [job] = put(artifacts, reg, CHAIN, [{"n": 1}])
    run = artifacts / "runs" / f"chain-{job:06d}"
    (run / "a").mkdir(parents=True)
    (run / "a" / "output.json").write_text('{"n": 10}')
    drain(artifacts, reg)
    assert ("000001", "a") not in Count.calls
    assert Count.calls[("000001", "b")] == 1
    assert json.loads((run / "run.json").read_text())["output"] == {"n": 12}
    assert json.loads((run / "run.json").read_text())["nodes"]["a"] == "skipped"


def test_a_truncated_output_is_not_trusted_and_the_node_runs_again(artifacts, reg, caplog):
    [job] = put(artifacts, reg, CHAIN, [{"n": 1}])
    run = artifacts / "runs" / f"chain-{job:06d}"
    (run / "a").mkdir(parents=True)
    (run / "a" / "output.json").write_text('{"n": 1')
    (run / "run.json").write_text('{"run_id": "0000')
    drain(artifacts, reg)
    assert Count.calls[("000001", "a")] == 1
    assert "corrupt" in caplog.text and "output.json" in caplog.text
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["output"] == {"n": 4}


def test_a_failing_node_stops_its_run_and_the_others_go_on(artifacts, reg):
    flow = """\
name: boom
input: {n: int}
nodes:
  - {id: first, agent: t.boom, inputs: {n: $input.n}}
  - {id: after, agent: t.count, inputs: {n: $first.n}}
"""
    ids = put(artifacts, reg, flow, [{"n": 2}, {"n": 3}, {"n": 4}])
    engine = drain(artifacts, reg)
    assert engine.stats.done == 2 and engine.stats.failed == 1
    assert statuses(artifacts) == {ids[0]: "done", ids[1]: "failed", ids[2]: "done"}
    run = artifacts / "runs" / f"boom-{ids[1]:06d}"
    failed = json.loads((run / "FAILED.json").read_text())
    assert failed["node"] == "first" and failed["agent"] == "t.boom"
    assert "ValueError: odd n 3" in failed["error"]
    assert failed["artifact"] == f"runs/boom-{ids[1]:06d}/first/error.txt"
    assert "Traceback" in (run / "first" / "error.txt").read_text()
    assert not (run / "after").exists(), "nothing runs after a failed node"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    with JobQueue(artifacts) as q:
        assert "odd n 3" in q.get(ids[1]).error


def test_an_output_that_does_not_fit_is_a_recorded_error(artifacts, reg):
    flow = "name: liar\ninput: {n: int}\nnodes:\n  - {id: x, agent: t.liar, inputs: {n: $input.n}}"
    [job] = put(artifacts, reg, flow, [{"n": 1}])
    drain(artifacts, reg)
    error = (artifacts / "runs" / f"liar-{job:06d}" / "x" / "error.txt").read_text()
    assert "returned an output that does not fit" in error
    assert not (artifacts / "runs" / f"liar-{job:06d}" / "x" / "output.json").exists()


def test_both_reviewers_judge_and_a_failed_review_stops_the_merge(artifacts, reg):
    ids = put(artifacts, reg, REVIEWED, [{"n": 2}, {"n": 3}])
    drain(artifacts, reg)
    assert statuses(artifacts) == {ids[0]: "done", ids[1]: "failed"}
    bad = artifacts / "runs" / f"reviewed-{ids[1]:06d}"
    # both reviews ran and kept their verdicts; the merge did not run
    for r in ("r1", "r2"):
        assert json.loads((bad / r / "output.json").read_text())["passed"] is False
    assert not (bad / "merge").exists()
    failed = json.loads((bad / "FAILED.json").read_text())
    assert failed["node"] == "r1" and "3 is odd" in failed["error"]
    assert failed["artifact"].endswith("r1/output.json")


def test_ready_nodes_run_together(artifacts, reg):
    Count.delay = 0.05
    flow = """\
name: fan
input: {n: int}
nodes:
  - {id: a, agent: t.count, inputs: {n: $input.n}}
  - {id: b, agent: t.count, inputs: {n: $input.n}}
  - {id: c, agent: t.count, inputs: {n: $input.n}}
"""
    put(artifacts, reg, flow, [{"n": 1}])
    drain(artifacts, reg)
    assert Count.peak == 3


def test_concurrency_from_control_bounds_jobs_at_once(artifacts, reg):
    Count.delay = 0.02
    one_step = (
        "name: one\ninput: {n: int}\nnodes:\n  - {id: a, agent: t.count, inputs: {n: $input.n}}\n"
    )
    put(artifacts, reg, one_step, [{"n": i} for i in range(12)])
    ControlFile(artifacts).update(by="test", concurrency=3)
    drain(artifacts, reg)
    assert Count.peak == 3


def test_a_job_whose_agent_is_gone_fails_alone(artifacts, reg):
    put(artifacts, reg, CHAIN, [{"n": 1}])
    other = """\
name: solo
input: {text: str}
nodes:
  - {id: s, agent: text.stats, inputs: {text: $input.text}}
"""
    put(artifacts, reg, other, [{"text": "a b c"}])
    engine = drain(artifacts, default_registry(plugins=False))
    assert engine.stats.failed == 1 and engine.stats.done == 1
    failed = json.loads((artifacts / "runs" / "chain-000001" / "FAILED.json").read_text())
    assert "unknown agent 't.count'" in failed["error"]


def test_a_graceful_stop_gives_unfinished_jobs_back_and_they_resume(artifacts, reg):
    Count.delay = 0.05
    put(artifacts, reg, CHAIN, [{"n": i} for i in range(6)])

    async def stop_soon() -> Engine:
        engine = Engine(artifacts, reg, tick_s=0.02)
        task = asyncio.create_task(engine.run())
        await until(lambda: engine.running > 0)  # stopped with jobs in flight
        engine.request_stop()
        await task
        return engine

    first = asyncio.run(stop_soon())
    assert first.stats.stopped > 0
    assert "running" not in statuses(artifacts).values()
    before = dict(Count.calls)
    drain(artifacts, reg)
    assert set(statuses(artifacts).values()) == {"done"}
    for key, n in Count.calls.items():
        assert n == 1, f"{key} ran {n} times"
    assert set(before) <= set(Count.calls)


def test_a_paused_queue_claims_nothing(artifacts, reg):
    put(artifacts, reg, CHAIN, [{"n": 1}])
    ControlFile(artifacts).update(by="test", queue_paused=True, queue_paused_reason="maintenance")

    async def run_briefly() -> None:
        engine = Engine(artifacts, reg, tick_s=0.02)
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0.2)
        assert statuses(artifacts) == {1: "queued"}
        ControlFile(artifacts).update(by="test", queue_paused=False)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if statuses(artifacts) == {1: "done"}:
                break
        engine.request_stop()
        await task

    asyncio.run(run_briefly())
    assert statuses(artifacts) == {1: "done"}


def test_a_write_lock_held_elsewhere_does_not_stall_the_loop(artifacts, reg):
    """Another process holds the queue's write lock for 1.5 s while jobs run: the queue's
    bookkeeping waits, the event loop (every model call in flight) does not."""
    import sqlite3
    import threading
    import time

    Count.delay = 0.05
    put(artifacts, reg, CHAIN, [{"n": i} for i in range(8)])
    held = threading.Event()
    release = threading.Event()

    def hold_the_lock() -> None:
        db = sqlite3.connect(artifacts / "pantheon.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(10)
        db.execute("COMMIT")
        db.close()

    async def night() -> tuple[float, Engine]:
        engine = Engine(artifacts, reg, until_empty=True, tick_s=0.02, queue_timeout_s=5.0)
        task = asyncio.create_task(engine.run())
        await until(lambda: Count.calls)  # jobs in flight
        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        await asyncio.to_thread(held.wait, 5)
        worst, last = 0.0, time.monotonic()
        end = last + 1.5
        while time.monotonic() < end:  # the loop's own heartbeat while the lock is held
            await asyncio.sleep(0.01)
            now = time.monotonic()
            worst, last = max(worst, now - last), now
        release.set()
        await asyncio.to_thread(holder.join)
        await task
        return worst, engine

    worst, engine = asyncio.run(night())
    assert worst < 0.3, f"the event loop stalled {worst:.2f} s while the lock was held"
    assert engine.stats.done == 8
    assert set(statuses(artifacts).values()) == {"done"}
