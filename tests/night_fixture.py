"""A small real night, frozen in time, for console and view tests.

A real engine runs the shipped ``textstats`` flow over twelve texts (three are too short, so
their gate fails the run); then more jobs are queued and two are claimed as if an engine were
running them. Every time stamp is then set to a fixed clock (``BASE``), so what a screen shows
is the same on every machine: the console under test is given ``clock=lambda: NOW``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from pantheon.core import Engine, JobQueue, default_registry, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.store.runs import RunDir, RunRecord

BASE = 1_795_000_000.0
NOW = BASE + 900.0


def _texts(n: int) -> list[dict[str, str]]:
    out = []
    for i in range(n):
        words = 12 if i % 4 == 3 else 60 + i
        out.append({"title": f"doc {i}", "text": " ".join(f"word{j % 17}" for j in range(words))})
    return out


def make_night(artifacts: Path, *, queued: int = 5, running: int = 2) -> Path:
    """Build the frozen night in ``artifacts`` and return it."""
    registry = default_registry(plugins=False)
    flow = load_flow(packaged_flows_dir() / "textstats.yaml", registry)
    with JobQueue(artifacts) as queue:
        enqueue(queue, flow, _texts(12))
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.02).run())
    with JobQueue(artifacts) as queue:
        enqueue(queue, flow, _texts(queued + running))
        claimed = queue.claim(running, "fixture-host:1:fixture", lease_s=10_000_000)
    if claimed:  # the first one is half way: normalize done, stats in flight
        job = claimed[0]
        run = RunDir(artifacts, job.run_name)
        run.prepare()
        run.write_record(
            RunRecord(
                run_id=job.run_id,
                job_id=job.id,
                flow=job.flow,
                flow_sha256=job.flow_sha,
                status="running",
                input=job.input,
                nodes={"normalize": "pending", "stats": "pending", "check": "pending"},
            )
        )
        run.write_input("normalize", {"text": job.input["text"]})
        run.write_output("normalize", {"text": job.input["text"]})
        run.write_input("stats", {"text": job.input["text"]})
    freeze(artifacts)
    write_samples(artifacts)
    return artifacts


def freeze(artifacts: Path) -> None:
    """Every time in the queue and in run.json set from ``BASE``, job by job."""
    db = sqlite3.connect(artifacts / "pantheon.db")
    with db:
        for (job_id,) in db.execute("SELECT id FROM jobs").fetchall():
            t0 = BASE + job_id * 30
            db.execute(
                "UPDATE jobs SET created = ?, "
                "started = CASE WHEN started IS NULL THEN NULL ELSE ? END, "
                "finished = CASE WHEN finished IS NULL THEN NULL ELSE ? END WHERE id = ?",
                (BASE, t0, t0 + 7 + job_id % 5, job_id),
            )
        db.execute("UPDATE nodes SET finished = ?, seconds = 0.25", (BASE + 400,))
        db.execute("UPDATE reviews SET at = ?", (BASE + 400,))
    db.close()
    for run_json in (artifacts / "runs").glob("*/run.json"):
        data = json.loads(run_json.read_text())
        data["started_at"] = "2026-11-20T02:00:00+00:00"
        if data.get("finished_at"):
            data["finished_at"] = "2026-11-20T02:00:09+00:00"
        run_json.write_text(json.dumps(data, indent=2))
    for failed in (artifacts / "runs").glob("*/FAILED.json"):
        data = json.loads(failed.read_text())
        data["at"] = "2026-11-20T02:00:09+00:00"
        failed.write_text(json.dumps(data, indent=2))


def _share(caught: int, n: int) -> float | None:
    return round(caught / n, 4) if n else None


def write_samples(artifacts: Path, n: int = 40) -> None:
    """An hour of metric samples that rise and fall, the last at ``NOW - 1``."""
    path = artifacts / "metrics" / "engine.jsonl"
    path.parent.mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        ts = NOW - 1 - (n - 1 - i) * 60
        phase = (i % 10) / 10
        lines.append(
            json.dumps(
                {
                    "ts": ts,
                    "depth": 40 - i,
                    "done": i,
                    "running": 2 + i % 3,
                    "rho": round(0.5 + 0.4 * phase, 3),
                    "p_wait": round(0.2 + 0.3 * phase, 3),
                    "recommended_c": 4,
                    "drain_s": 600.0,
                    "kappa": round(0.9 - 0.01 * i, 3),
                    "kappa_pairs": 10 + i,
                    "c": 4,
                    "batch": {"value": 2.0 + phase * 2, "source": "llama.cpp /metrics"},
                    "tokens": {"generated": 20.0 + i, "prompt": 200.0, "source": "engine"},
                    "canaries": {"n": i // 8, "caught": i // 16, "share": _share(i // 16, i // 8)},
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")


def add_servers_sample(artifacts: Path) -> None:
    """Append a sample of a two-server pool, the second one down, after the night's last."""
    path = artifacts / "metrics" / "engine.jsonl"
    last = json.loads(path.read_text().splitlines()[-1])
    last["ts"] += 0.5
    last["servers"] = [
        {
            "where": "127.0.0.1:8011",
            "up": True,
            "batch": 3.5,
            "generated": 21.25,
            "prompt": 180.4,
            "in_flight": 3,
            "calls": 40,
        },
        {"where": "127.0.0.1:8012", "up": False, "in_flight": 0, "calls": 9},
    ]
    with path.open("a") as f:
        f.write(json.dumps(last) + "\n")
