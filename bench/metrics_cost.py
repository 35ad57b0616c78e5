"""The cost of one metrics sample with a big night in the database.

    python bench/metrics_cost.py                     # 10 000 jobs, half of them done
    python bench/metrics_cost.py --jobs 100000

Builds a queue of N jobs (half done, each with three finished nodes; a review pair per done job),
then times MetricsSampler.sample() — counts, the sliding window, per-agent figures and κ — against
a bare `SELECT COUNT(*)` on the same database as the baseline.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from pantheon.core.observe.metrics import MetricsSampler
from pantheon.core.store.queue import JobQueue


def build(artifacts: Path, jobs: int) -> None:
    rnd = random.Random(7)
    with JobQueue(artifacts) as q:
        ids = q.enqueue(
            flow="codefix",
            flow_sha="x",
            flow_source="bench",
            flow_text="-",
            first_agent="plan.validate",
            inputs=({"n": i} for i in range(jobs)),
        )
        now = time.time()
        done = ids[: jobs // 2]
        db = q._db
        db.execute("BEGIN")
        db.executemany(
            "UPDATE jobs SET status='done', started=?, finished=? WHERE id=?",
            [(now - 600 + i * 0.01, now - 590 + i * 0.01, i) for i in done],
        )
        db.executemany(
            "INSERT INTO nodes (job_id, node, agent, status, seconds, finished) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (i, node, agent, "done", rnd.uniform(0.5, 5), now - rnd.uniform(0, 600))
                for i in done
                for node, agent in (
                    ("plan", "plan.validate"),
                    ("code", "codegen"),
                    ("test", "test"),
                )
            ],
        )
        db.executemany(
            "INSERT INTO reviews (job_id, flow, first, second, at) VALUES (?, ?, ?, ?, ?)",
            [(i, "codefix", rnd.random() < 0.8, rnd.random() < 0.8, now - i * 0.01) for i in done],
        )
        db.execute("COMMIT")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp)
        build(artifacts, args.jobs)
        with JobQueue(artifacts) as q:
            sampler = MetricsSampler(q)
            times, base = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                sample = sampler.sample(concurrency=8, merges_paused=False)
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                q._db.execute("SELECT COUNT(*) FROM jobs").fetchone()
                base.append(time.perf_counter() - t0)
    med, worst = statistics.median(times) * 1000, max(times) * 1000
    b = statistics.median(base) * 1000
    print(
        f"jobs in the queue     {args.jobs} ({args.jobs // 2} done, "
        f"{3 * (args.jobs // 2)} nodes, {args.jobs // 2} review pairs)"
    )
    print(
        f"one sample            median {med:.2f} ms, worst {worst:.2f} ms "
        f"over {args.repeat} samples"
    )
    print(f"bare COUNT(*)         median {b:.3f} ms  (sample / count: {med / b:.0f}x)")
    print(
        f"sample                depth {sample['depth']}, κ {sample['kappa']} over "
        f"{sample['kappa_pairs']} pairs, {len(sample['agents'])} agents"
    )


if __name__ == "__main__":
    main()
