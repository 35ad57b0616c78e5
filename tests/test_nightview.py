"""The headless view of a night: incremental reads of the queue and the metrics, runs whole."""

from __future__ import annotations

import json

from pantheon.core import JobQueue
from pantheon.core.store.queue import JobSummary
from pantheon.core.views.night import MetricsTail, NightView, RunFilter, load_run, table_jobs


def sample(ts: float, **kw) -> str:
    return json.dumps({"ts": ts, **kw}) + "\n"


def test_metrics_tail_reads_only_what_is_new(tmp_path):
    path = tmp_path / "metrics" / "engine.jsonl"
    path.parent.mkdir()
    path.write_text(sample(1, depth=1) + sample(2, depth=2))
    tail = MetricsTail(tmp_path)
    assert [s["depth"] for s in tail.read()] == [1, 2]
    assert tail.read() == []
    with open(path, "a") as fh:
        fh.write(sample(3, depth=3) + '{"ts": 4, "dep')  # the last line is still being written
    assert [s["depth"] for s in tail.read()] == [3]
    with open(path, "a") as fh:
        fh.write('th": 4}\nGARBAGE\n')
    assert [s["depth"] for s in tail.read()] == [4]
    assert tail.corrupt == 1
    path.write_text(sample(10, depth=10))  # rewritten: read from the start again
    assert [s["depth"] for s in tail.read()] == [10]
    assert [s["depth"] for s in tail.samples] == [10]


def test_metrics_tail_keeps_the_last_hour_and_starts_near_the_end(tmp_path):
    path = tmp_path / "metrics" / "engine.jsonl"
    path.parent.mkdir()
    path.write_text("".join(sample(t, depth=t) for t in range(0, 7200, 60)))
    tail = MetricsTail(tmp_path, tail_bytes=2000)
    tail.read()
    assert tail.samples[-1]["ts"] == 7140
    assert all(s["ts"] >= 7140 - 3600 for s in tail.samples)
    assert tail.corrupt == 0  # the cut first line is skipped, not counted


def test_the_view_reads_changed_jobs_only(night):
    view = NightView(night)
    assert len(view.refresh_all()) == 19
    assert view.refresh_jobs() == set()
    with JobQueue(night) as queue:
        (job,) = queue.claim(1, "test-host:1:x")
        queue.complete(job.id, "test-host:1:x")
    changed = view.refresh_jobs()
    assert changed == {job.id}
    assert view.jobs[job.id].status == "done"
    assert view.totals["done"] == 10


def test_the_nodes_in_flight_come_from_the_run_folder(night):
    view = NightView(night)
    view.refresh_all()
    assert view.in_flight[13] == (("stats", "text.stats"),)
    assert view.in_flight[14] == ()
    run = night / "runs" / "textstats-000013"
    (run / "stats" / "output.json").write_text('{"words": 60}')
    (run / "check").mkdir()
    (run / "check" / "input.json").write_text('{"words": 60}')
    assert view.refresh_in_flight() == {13}
    assert view.in_flight[13] == (("check", "check.min_words"),)
    assert view.refresh_in_flight() == set()


def test_a_corrupt_run_is_a_problem_not_an_exception(night):
    (night / "runs" / "textstats-000003" / "run.json").write_text("{")
    view = NightView(night)
    view.refresh_all()
    assert "textstats-000003" in view.problems
    assert "run.json" in view.problems["textstats-000003"]
    (night / "pantheon.db").write_bytes(b"this is not a database at all" * 100)
    view.refresh_jobs(full=True)
    assert view.queue_error and "corrupt" in view.queue_error
    assert len(view.jobs) == 19  # the last good rows stay


def test_load_run_reads_nodes_in_flow_order_with_agents(night):
    run = load_run(night, "textstats-000004")
    assert run.status == "failed"
    assert [(n.id, n.agent, n.status) for n in run.nodes] == [
        ("normalize", "text.normalize", "done"),
        ("stats", "text.stats", "done"),
        ("check", "check.min_words", "failed"),
    ]
    assert run.failed is not None and run.failed.node == "check"
    assert run.nodes[1].output["words"] == 12
    assert run.nodes[2].output["passed"] is False  # a gate that said no: its output is kept
    assert "fewer than 40" in run.failed.error


def test_load_run_reports_what_it_cannot_read(night):
    folder = night / "runs" / "textstats-000001"
    (folder / "stats" / "output.json").write_text('{"words": ')
    (folder / "stats" / "calls.jsonl").write_text('{"raw": "x"}\n[1, 2]\n')
    run = load_run(night, "textstats-000001")
    stats = next(n for n in run.nodes if n.id == "stats")
    assert stats.output is None
    assert any("output.json" in p for p in stats.problems)
    assert stats.calls[0].data == {"raw": "x"}
    assert stats.calls[1].problem and "not an object" in stats.calls[1].problem
    missing = load_run(night, "textstats-000099")
    assert missing.status == "unreadable" and "has not started" in missing.problems[0]


def job(id: int, status: str, **kw) -> JobSummary:
    base = dict(
        flow="docops",
        next_agent="codegen",
        node=None,
        attempts=1,
        created=0.0,
        started=None,
        finished=None,
        error=None,
    )
    base.update(kw)
    return JobSummary(id=id, status=status, **base)


def test_filters_parse_and_match():
    f = RunFilter.parse("status:failed  flow:DOC agent:review timeout")
    assert (f.status, f.flow, f.agent, f.words) == ("failed", "doc", "review", ("timeout",))
    assert str(f) == "status:failed flow:doc agent:review timeout"
    j = job(1, "failed", node="review_a", node_agent="review.peer", error="Timeout after 60 s")
    assert f.matches(j)
    assert not f.matches(job(2, "failed", node_agent="review.peer", error="bad reply"))
    assert RunFilter.parse("status:unreadable").matches(job(3, "done"), problem="torn run.json")
    assert RunFilter.parse("nothing:here").words == ("nothing:here",)


def test_the_table_puts_running_first_then_the_latest_then_the_queue():
    jobs = {
        1: job(1, "done", started=1, finished=10),
        2: job(2, "failed", started=2, finished=30),
        3: job(3, "running", started=20),
        4: job(4, "running", started=5),
        5: job(5, "queued"),
        6: job(6, "queued"),
    }
    shown, matched = table_jobs(jobs, {}, RunFilter())
    assert [j.id for j in shown] == [4, 3, 2, 1, 5, 6]
    shown, matched = table_jobs(jobs, {}, RunFilter(), limit=3)
    assert [j.id for j in shown] == [4, 3, 2] and matched == 6
