"""How long the morning report takes on a big night: cold, warm (cached), and after changes.

    python bench/report.py                 # 10 000 docops runs
    python bench/report.py --runs 2000

Builds a night of ``--runs`` docops runs the way the engine leaves them: the queue (jobs, their
finished nodes, the review pairs) and each run's folder (run.json; the test, both reviews and
the merge gate's output.json; FAILED.json for the one run in ten a reviewer failed), one merged
change in two, the others waiting, and an hour of metric samples. Then times ``write_report``
(summary.json and report.html): with no cache, again with the cache, and after 1 % of the runs
changed (their run.json rewritten) and a few decisions were made. Target: under 5 s for 10 000.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from pantheon.core import JobQueue, default_registry, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.morning.report import CACHE_FILE, write_report
from pantheon.core.morning.review import DECISIONS_FILE
from pantheon.core.store.queue import NodeRow
from pantheon.core.store.runs import FailedRecord, RunDir, RunRecord, now_iso

NODES = [
    ("plan", "plan.validate"),
    ("write", "doc.frontmatter"),
    ("test", "test"),
    ("review_a", "review.peer"),
    ("review_b", "review.peer"),
    ("merge", "merge.gate"),
]


def build(artifacts: Path, runs: int) -> None:
    flow = load_flow(packaged_flows_dir() / "docops.yaml", default_registry(plugins=False))
    owner = "bench:1:x"
    with JobQueue(artifacts) as queue:
        queue.enqueue(
            flow=flow.name,
            flow_sha=flow.sha256,
            flow_source=flow.source,
            flow_text=flow.text,
            first_agent="plan.validate",
            inputs=[{"repo": "/srv/docs", "path": f"docs/page{i}.md"} for i in range(runs)],
        )
        while jobs := queue.claim(500, owner, lease_s=600):
            for job in jobs:
                failed = job.id % 10 == 0
                run = RunDir(artifacts, job.run_name)
                run.prepare()
                branch = f"pantheon/docops/{job.id}"
                run.write_input("test", {"kind": "docs"})
                run.write_output("test", {"passed": True, "reasons": ["ok"], "output": ""})
                for n, verdict in (("review_a", True), ("review_b", not failed)):
                    run.write_input(n, {})
                    run.write_output(n, {"passed": verdict, "reasons": ["looks right"]})
                nodes = [NodeRow(n, a, "done", 0.5) for n, a in NODES[:4]]
                if failed:
                    nodes.append(NodeRow("review_b", "review.peer", "failed", 0.5))
                    error = "review_b: review.peer did not pass: wrong title"
                    run.write_failed(
                        FailedRecord(
                            node="review_b",
                            agent="review.peer",
                            error=error,
                            artifact=f"runs/{job.run_name}/review_b/output.json",
                            at=now_iso(),
                        )
                    )
                    status, output = "failed", None
                else:
                    nodes += [NodeRow(n, a, "done", 0.5) for n, a in NODES[4:]]
                    merged = job.id % 2 == 0
                    output = {
                        "merged": merged,
                        "waiting": not merged,
                        "reason": "merged into main" if merged else "merges are paused",
                        "branch": branch,
                        "commit": "0" * 40 if merged else None,
                        "conflict": [],
                        "repo": "/srv/docs",
                        "target": "main",
                        "files": [job.input["path"]],
                        "added": 6,
                        "removed": 0,
                    }
                    run.write_input("merge", {})
                    run.write_output("merge", output)
                    status = "done"
                run.write_record(
                    RunRecord(
                        run_id=job.run_id,
                        job_id=job.id,
                        flow=job.flow,
                        flow_sha256=job.flow_sha,
                        status=status,
                        input=job.input,
                        output=output,
                        started_at=now_iso(),
                        finished_at=now_iso(),
                        nodes={n: "done" for n, _ in NODES},
                    )
                )
                review = (True, not failed)
                if failed:
                    queue.fail(job.id, owner, "review_b: did not pass", nodes, review)
                else:
                    queue.complete(job.id, owner, nodes, review)
    now = time.time()
    samples = [
        json.dumps({"ts": now - 3600 + 2 * i, "depth": runs - i, "done": i, "rho": 0.7,
                    "kappa": 0.9, "tokens": {"generated": 20.0}, "batch": {"value": 3.9}})
        for i in range(1800)
    ]  # fmt: skip
    (artifacts / "metrics").mkdir(exist_ok=True)
    (artifacts / "metrics" / "engine.jsonl").write_text("\n".join(samples) + "\n")


def timed(artifacts: Path) -> tuple[float, dict]:
    t = time.perf_counter()
    summary, _ = write_report(artifacts)
    return time.perf_counter() - t, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pantheon-report-bench-"))
    artifacts = root / "artifacts"
    try:
        t = time.perf_counter()
        build(artifacts, args.runs)
        print(f"night        {args.runs:,} docops runs, built in {time.perf_counter() - t:.1f} s")
        cold, summary = timed(artifacts)
        warm, _ = timed(artifacts)
        for job_id in range(1, args.runs + 1, 100):  # 1 % of the runs change
            path = artifacts / "runs" / f"docops-{job_id:06d}" / "run.json"
            path.write_text(path.read_text())
        with open(artifacts / DECISIONS_FILE, "a") as fh:
            for job_id in range(1, 50, 2):
                fh.write(json.dumps({
                    "run": f"docops-{job_id:06d}", "job": job_id, "action": "rejected",
                    "by": "bench", "at": now_iso(), "branch": f"pantheon/docops/{job_id}",
                    "target": "main", "repo": "/srv/docs"}) + "\n")  # fmt: skip
        changed, after = timed(artifacts)
        (artifacts / CACHE_FILE).unlink()
        print(
            f"summary      {len(summary['changes']):,} changes "
            f"({summary['figures']['merged']:,} merged, {summary['figures']['waiting']:,} "
            f"waiting), {len(summary['failures']):,} failures; after the decisions "
            f"{after['figures']['rejected']} rejected"
        )
        size = (artifacts / "report.html").stat().st_size
        print(f"report.html  {size / 1e6:.1f} MB, self-contained")
        print(f"cold         {cold:6.2f} s   (no cache: every run read)      target < 5 s")
        print(f"warm         {warm:6.2f} s   ({cold / warm:.1f}x faster: the cache)")
        print(f"1 % changed  {changed:6.2f} s   (100 runs read again, 25 decisions)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
