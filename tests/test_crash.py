"""The engine as a real process: kill -9 midway, start again, and nothing is lost or redone;
controls changed in control.json while it runs take effect."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import db_counts, pantheon, pantheon_popen, step_flow, wait_for

pytestmark = pytest.mark.slow


def _enqueue_steps(tmp_path: Path, artifacts: Path, jobs: int, delay_s: float) -> None:
    flow = tmp_path / "steps.yaml"
    flow.write_text(step_flow(delay_s))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(jobs)))
    done = pantheon("enqueue", str(flow), "--inputs", str(inputs), "--artifacts", str(artifacts))
    assert done.returncode == 0, done.stderr
    assert f"enqueued {jobs} job(s)" in done.stdout


def test_kill_9_midway_then_resume_every_job_ends_once(
    tmp_path, artifacts, with_plugin, monkeypatch
):
    count_file = tmp_path / "executions.log"
    monkeypatch.setenv("PANTHEON_COUNT_FILE", str(count_file))
    _enqueue_steps(tmp_path, artifacts, jobs=200, delay_s=0.01)
    assert pantheon("control", "--concurrency", "8", "--artifacts", str(artifacts)).returncode == 0

    engine = pantheon_popen("engine", "--artifacts", str(artifacts))
    try:
        wait_for(lambda: db_counts(artifacts)["done"] >= 60)
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.communicate(timeout=30)
    counts = db_counts(artifacts)
    assert 0 < counts["done"] < 200, counts
    assert counts["running"] > 0, "the kill left jobs mid-run"

    runs = artifacts / "runs"
    existed = {(p.parent.parent.name, p.parent.name) for p in runs.glob("*/*/output.json")}
    ran_before = Counter(tuple(line.split()[:2]) for line in count_file.read_text().splitlines())

    again = pantheon("engine", "--until-empty", "--artifacts", str(artifacts))
    assert again.returncode == 0, again.stderr
    assert "took back" in again.stderr

    assert db_counts(artifacts) == Counter({"done": 200})
    executions = Counter(tuple(line.split()[:2]) for line in count_file.read_text().splitlines())
    assert len(executions) == 600, "every node of every job ran"
    for run_name, node in existed:
        run_id = run_name.rsplit("-", 1)[1]
        assert executions[(run_id, node)] == 1, f"{run_name}/{node} had output.json and ran again"
    assert max(executions.values()) <= 2
    assert sum(executions.values()) - sum(ran_before.values()) < 600, "the restart resumed"

    for path in runs.rglob("*"):
        assert not path.name.startswith(".tmp-"), f"temp file left: {path}"
        if path.suffix == ".json":
            json.loads(path.read_text())  # no half-written file
    for run in runs.iterdir():
        record = json.loads((run / "run.json").read_text())
        n = record["input"]["n"]
        assert record["status"] == "done" and record["output"] == {"n": n + 3}


def test_controls_take_effect_while_the_engine_runs(tmp_path, artifacts, with_plugin):
    _enqueue_steps(tmp_path, artifacts, jobs=40, delay_s=0.15)
    control = ["control", "--artifacts", str(artifacts)]
    assert pantheon(*control, "--concurrency", "1").returncode == 0
    engine = pantheon_popen("engine", "--artifacts", str(artifacts), "--tick", "0.05")
    try:
        wait_for(lambda: db_counts(artifacts)["running"] == 1)
        time.sleep(0.5)
        assert db_counts(artifacts)["running"] == 1, "c = 1 runs one job at a time"

        assert pantheon(*control, "--concurrency", "4").returncode == 0
        wait_for(lambda: db_counts(artifacts)["running"] == 4, timeout=10)

        assert pantheon(*control, "--pause-queue", "maintenance").returncode == 0
        wait_for(lambda: db_counts(artifacts)["running"] == 0, timeout=10)
        queued = db_counts(artifacts)["queued"]
        time.sleep(0.5)
        assert db_counts(artifacts)["queued"] == queued > 0, "a paused queue claims nothing"
        status = pantheon("status", "--artifacts", str(artifacts))
        assert "QUEUE PAUSED (maintenance)" in status.stdout

        assert pantheon(*control, "--resume-queue").returncode == 0
        wait_for(lambda: db_counts(artifacts)["running"] > 0, timeout=10)
    finally:
        engine.send_signal(signal.SIGINT)
        _, err = engine.communicate(timeout=30)
    assert engine.returncode == 0, err
    assert "stopping after the nodes in flight" in err
    counts = db_counts(artifacts)
    assert counts["running"] == 0, "a graceful stop gives unfinished jobs back"
    assert counts["done"] + counts["queued"] == 40
