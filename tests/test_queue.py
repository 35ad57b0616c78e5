"""The durable SQLite job queue: enqueue, claim with leases, finish, requeue, and its failures."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from pantheon.core.errors import QueueError
from pantheon.core.store.queue import DB_FILE, SCHEMA_VERSION, JobQueue, NodeRow, new_owner


@pytest.fixture
def art(tmp_path: Path) -> Path:
    return tmp_path / "artifacts"


@pytest.fixture
def queue(art: Path) -> Iterator[JobQueue]:
    with JobQueue(art) as q:
        yield q


def add(
    q: JobQueue,
    n: int = 1,
    *,
    flow: str = "alpha",
    agent: str = "writer",
    sha: str | None = None,
    text: str | None = None,
    priority: int = 0,
) -> list[int]:
    """Enqueue ``n`` jobs of a small fake flow."""
    return q.enqueue(
        flow=flow,
        flow_sha=sha or f"sha-{flow}",
        flow_source=f"/flows/{flow}.yaml",
        flow_text=text or f"name: {flow}\nnodes: []\n",
        first_agent=agent,
        inputs=[{"i": i, "flow": flow} for i in range(n)],
        priority=priority,
    )


def advance(q: JobQueue, job_id: int, node: str, agent: str, status: str, next_agent: str) -> None:
    """Record one finished node of a job and the agent it runs next."""
    q.advance(job_id, [NodeRow(node, agent, status, 0.5)], next_agent=next_agent)


def raw(art: Path, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
    """Read or write the database behind the queue's back, with a connection of its own."""
    with closing(sqlite3.connect(art / DB_FILE, isolation_level=None)) as db:
        return db.execute(sql, args).fetchall()


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- enqueue ------------------------------------------------------------------------------


def test_enqueue_many_in_one_call_returns_ids_in_order(queue: JobQueue) -> None:
    first = add(queue, 5)
    second = add(queue, 3, flow="beta")
    assert first == [1, 2, 3, 4, 5]
    assert second == [6, 7, 8]
    assert [queue.get(i).input for i in first] == [{"i": i, "flow": "alpha"} for i in range(5)]
    job = queue.get(7)
    assert (job.flow, job.status, job.next_agent, job.attempts) == ("beta", "queued", "writer", 0)
    assert job.run_name == "beta-000007"
    assert add(queue, 0) == []
    assert queue.pending() == 8


def test_flow_text_is_stored_once_per_sha(queue: JobQueue, art: Path) -> None:
    add(queue, 2, sha="abc123", text="name: alpha\nversion: 1\n")
    add(queue, 2, sha="abc123", text="name: alpha\nversion: 2 (edited later)\n")
    add(queue, 1, sha="def456", text="name: alpha\nversion: 3\n")
    assert queue.flow_text("abc123") == ("/flows/alpha.yaml", "name: alpha\nversion: 1\n")
    assert queue.flow_text("def456")[1] == "name: alpha\nversion: 3\n"
    assert raw(art, "SELECT COUNT(*) FROM flows") == [(2,)]
    assert {j.flow_sha for j in queue.jobs()} == {"abc123", "def456"}
    with pytest.raises(QueueError, match="not in"):
        queue.flow_text("0" * 64)


def test_get_unknown_job_raises_queue_error(queue: JobQueue) -> None:
    with pytest.raises(QueueError, match="no job 42"):
        queue.get(42)


# -- claim, complete, fail ----------------------------------------------------------------


def test_claim_marks_running_with_lease_and_counts_attempt(queue: JobQueue, art: Path) -> None:
    add(queue, 5)
    owner = new_owner()
    jobs = queue.claim(3, owner, lease_s=120)
    assert [j.id for j in jobs] == [1, 2, 3]
    assert all(j.status == "running" and j.attempts == 1 and j.started for j in jobs)
    rows = raw(art, "SELECT id, owner, lease_until FROM jobs WHERE status = 'running' ORDER BY id")
    assert [r[0] for r in rows] == [1, 2, 3]
    assert all(r[1] == owner for r in rows)
    now = time.time()
    assert all(now + 100 < r[2] < now + 140 for r in rows)
    # The others are still there for the next claim, and a claim of nothing claims nothing.
    assert queue.claim(0, owner) == []
    assert [j.id for j in queue.claim(10, owner)] == [4, 5]
    assert queue.claim(10, owner) == []


def test_complete_and_fail_set_status_and_free_the_lease(queue: JobQueue, art: Path) -> None:
    add(queue, 2)
    owner = new_owner()
    a, b = queue.claim(2, owner)
    assert queue.complete(a.id, owner) is True
    assert queue.fail(b.id, owner, "node b: boom") is True
    done, failed = queue.get(a.id), queue.get(b.id)
    assert (done.status, done.error) == ("done", None)
    assert (failed.status, failed.error) == ("failed", "node b: boom")
    assert done.finished is not None and failed.finished is not None
    assert raw(art, "SELECT owner, lease_until FROM jobs") == [(None, None), (None, None)]
    assert queue.pending() == 0
    # Finishing twice does nothing.
    assert queue.complete(a.id, owner) is False
    assert queue.fail(a.id, owner, "late") is False
    assert queue.get(a.id).status == "done"


def test_complete_and_fail_return_false_for_an_owner_without_the_lease(queue: JobQueue) -> None:
    add(queue, 1)
    owner, other = new_owner(), new_owner()
    (job,) = queue.claim(1, owner)
    assert queue.complete(job.id, other) is False
    assert queue.fail(job.id, other, "not mine") is False
    assert queue.get(job.id).status == "running"
    assert queue.get(job.id).error is None
    # Once given back, the former owner cannot finish it either.
    assert queue.release(owner) == 1
    assert queue.complete(job.id, owner) is False
    assert queue.get(job.id).status == "queued"


def test_counts_per_flow_and_per_agent(queue: JobQueue) -> None:
    add(queue, 3, flow="alpha", agent="writer")
    add(queue, 2, flow="beta", agent="critic")
    owner = new_owner()
    a, b = queue.claim(2, owner, prefer=["writer"])
    assert {a.next_agent, b.next_agent} == {"writer"}
    advance(queue, a.id, "draft", "writer", "done", "critic")
    advance(queue, b.id, "draft", "writer", "failed", "x")
    queue.fail(b.id, owner, "draft failed")

    counts = queue.counts()
    assert counts.by_flow == {
        "alpha": {"queued": 1, "running": 1, "done": 0, "failed": 1},
        "beta": {"queued": 2, "running": 0, "done": 0, "failed": 0},
    }
    # queued/running by the agent the job runs next; done/failed by the nodes each agent ran.
    assert counts.by_agent == {
        "writer": {"queued": 1, "running": 0, "done": 1, "failed": 1},
        "critic": {"queued": 2, "running": 1, "done": 0, "failed": 0},
    }
    assert counts.total == {"queued": 3, "running": 1, "done": 0, "failed": 1}
    assert queue.pending() == 4

    # Finishing a job records the nodes it ran with it; a refused finish records nothing.
    review = [NodeRow("review", "critic", "done", 2.0)]
    assert queue.complete(a.id, new_owner(), review) is False
    assert queue.counts().by_agent["critic"]["done"] == 0
    assert queue.complete(a.id, owner, review) is True
    counts = queue.counts()
    assert (counts.total["running"], counts.total["done"]) == (0, 1)
    assert counts.by_agent["critic"] == {"queued": 2, "running": 0, "done": 1, "failed": 0}


def test_claim_groups_by_the_agent_of_the_oldest_job(queue: JobQueue) -> None:
    add(queue, 2, flow="beta", agent="critic")  # 1, 2: the oldest
    add(queue, 2, flow="alpha", agent="writer")  # 3, 4
    add(queue, 2, flow="beta", agent="critic")  # 5, 6
    owner = new_owner()
    jobs = queue.claim(4, owner)
    assert [j.id for j in jobs] == [1, 2, 5, 6]
    assert {j.next_agent for j in jobs} == {"critic"}
    # When that agent has no more, the claim is topped up with the others, oldest first.
    add(queue, 1, agent="judge")  # 7
    assert [j.id for j in queue.claim(3, owner)] == [3, 4, 7]


def test_claim_prefers_the_agents_asked_for(queue: JobQueue) -> None:
    add(queue, 2, agent="critic")  # 1, 2: the oldest
    ids = add(queue, 3, agent="writer")  # 3, 4, 5
    owner = new_owner()
    # advance() moves a queued job on to another agent.
    advance(queue, 1, "n0", "critic", "done", "writer")
    jobs = queue.claim(3, owner, prefer=["writer"])
    assert [j.id for j in jobs] == [1, *ids[:2]]
    assert {j.next_agent for j in jobs} == {"writer"}
    assert [j.id for j in queue.claim(5, owner, prefer=["judge", "writer"])] == [5, 2]


def test_a_job_waiting_longer_than_max_wait_goes_first(queue: JobQueue, art: Path) -> None:
    add(queue, 1, agent="rare")  # 1
    add(queue, 3, agent="busy")  # 2, 3, 4
    owner = new_owner()
    # Not waited long enough: the preferred agent wins.
    assert [j.id for j in queue.claim(1, owner, prefer=["busy"], max_wait_s=300)] == [2]
    # The rare job has now waited ten minutes: it goes before the preferred agent's jobs.
    raw(art, "UPDATE jobs SET created = created - 600 WHERE id = 1")
    jobs = queue.claim(2, owner, prefer=["busy"], max_wait_s=300)
    assert [j.id for j in jobs] == [1, 3]


def test_higher_priority_jobs_are_claimed_first(queue: JobQueue) -> None:
    add(queue, 2)  # 1, 2
    add(queue, 1, priority=5)  # 3
    assert [j.id for j in queue.claim(3, new_owner())] == [3, 1, 2]


def test_concurrent_claims_never_share_a_job(art: Path) -> None:
    total, workers = 400, 4
    with JobQueue(art) as q:
        add(q, total // 2, agent="writer")
        add(q, total // 2, agent="critic")
    barrier = threading.Barrier(workers)
    got: list[list[int]] = [[] for _ in range(workers)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            with JobQueue(art) as q:  # sqlite connections are per thread
                owner = new_owner()
                barrier.wait()
                while batch := q.claim(3, owner):
                    got[k] += [j.id for j in batch]
                    for job in batch:
                        assert q.complete(job.id, owner)
                    time.sleep(0.002)  # let the others in, even on a machine that is busy
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    claimed = [i for ids in got for i in ids]
    assert len(claimed) == len(set(claimed)) == total
    assert set(claimed) == set(range(1, total + 1))
    assert sum(1 for ids in got if ids) >= 2  # both really claimed
    with JobQueue(art) as q:
        assert q.counts().total == {"queued": 0, "running": 0, "done": total, "failed": 0}


# -- leases, orphans, release, retry ------------------------------------------------------


def test_requeue_orphans_of_a_dead_engine(queue: JobQueue) -> None:
    add(queue, 2)
    dead = f"{socket.gethostname()}:{dead_pid()}:x"
    jobs = queue.claim(2, dead, lease_s=600)
    assert queue.requeue_orphans() == (2, 0)
    for job in jobs:
        again = queue.get(job.id)
        assert (again.status, again.attempts) == ("queued", 1)
    assert queue.complete(jobs[0].id, dead) is False
    assert [j.id for j in queue.claim(2, new_owner())] == [j.id for j in jobs]


def test_requeue_orphans_whose_lease_expired(queue: JobQueue) -> None:
    add(queue, 1)
    (job,) = queue.claim(1, new_owner(), lease_s=-1)  # a live owner, but the lease ran out
    assert queue.requeue_orphans() == (1, 0)
    assert queue.get(job.id).status == "queued"


def test_live_engine_with_valid_lease_is_not_requeued(queue: JobQueue) -> None:
    add(queue, 2)
    mine = queue.claim(1, new_owner(), lease_s=600)
    theirs = queue.claim(1, "another-host.example:1:abc", lease_s=600)  # not ours to judge
    assert queue.requeue_orphans() == (0, 0)
    assert {queue.get(j.id).status for j in mine + theirs} == {"running"}


def test_renew_keeps_a_lease_alive(queue: JobQueue) -> None:
    add(queue, 1)
    owner = new_owner()
    (job,) = queue.claim(1, owner, lease_s=-1)
    queue.renew(owner, [job.id], lease_s=600)
    assert queue.requeue_orphans() == (0, 0)
    assert queue.get(job.id).status == "running"


def test_requeue_orphans_fails_a_job_out_of_attempts(queue: JobQueue) -> None:
    add(queue, 2)
    for attempt in (1, 2):
        (job,) = queue.claim(1, new_owner(), lease_s=-1)
        assert (job.id, job.attempts) == (1, attempt)
        assert queue.requeue_orphans(max_attempts=3) == (1, 0)
    (job,) = queue.claim(1, new_owner(), lease_s=-1)
    # The third claim is left running; the engine dies again.
    assert queue.get(1).attempts == 3
    assert queue.requeue_orphans(max_attempts=3) == (0, 1)
    job = queue.get(1)
    assert job.status == "failed"
    assert job.error is not None and "abandoned after 3 attempts" in job.error
    assert job.finished is not None
    assert queue.get(2).status == "queued"


def test_release_gives_jobs_back_without_counting_the_attempt(queue: JobQueue) -> None:
    add(queue, 4)
    owner, other = new_owner(), new_owner()
    jobs = queue.claim(3, owner)
    queue.claim(1, other)
    assert queue.release(owner, [jobs[0].id]) == 1
    assert queue.get(jobs[0].id).status == "queued"
    assert queue.get(jobs[0].id).attempts == 0
    assert queue.release(other, [jobs[1].id]) == 0  # not other's to give back
    assert queue.release(owner) == 2
    assert [queue.get(j.id).attempts for j in jobs] == [0, 0, 0]
    assert queue.counts().total == {"queued": 3, "running": 1, "done": 0, "failed": 0}
    assert queue.claim(4, owner)[0].attempts == 1


def test_retry_failed_puts_failed_jobs_back(queue: JobQueue) -> None:
    add(queue, 3)
    owner = new_owner()
    a, b, c = queue.claim(3, owner)
    advance(queue, a.id, "draft", "writer", "done", "critic")
    advance(queue, a.id, "review", "critic", "failed", "end")
    queue.fail(a.id, owner, "review failed")
    queue.fail(b.id, owner, "draft failed")
    queue.complete(c.id, owner)

    assert queue.retry_failed([b.id]) == 1
    assert queue.get(b.id).status == "queued"
    assert queue.get(a.id).status == "failed"
    assert queue.retry_failed() == 1
    job = queue.get(a.id)
    assert (job.status, job.attempts, job.error, job.finished) == ("queued", 0, None, None)
    assert job.next_agent == "critic"  # it resumes at the node that failed
    assert queue.get(c.id).status == "done"
    assert queue.retry_failed() == 0


@pytest.mark.slow
def test_ten_thousand_jobs(queue: JobQueue) -> None:
    ids = queue.enqueue(
        flow="bulk",
        flow_sha="sha-bulk",
        flow_source="/flows/bulk.yaml",
        flow_text="name: bulk\n",
        first_agent="writer",
        inputs=({"n": n} for n in range(10_000)),
    )
    assert ids == list(range(1, 10_001))
    counts = queue.counts()
    assert counts.by_flow["bulk"]["queued"] == 10_000
    assert counts.by_agent["writer"]["queued"] == 10_000
    jobs = queue.claim(8, new_owner())
    assert [j.id for j in jobs] == list(range(1, 9))
    assert queue.counts().total == {"queued": 9_992, "running": 8, "done": 0, "failed": 0}
    assert [j.input for j in queue.jobs(status="queued", limit=2, offset=100)] == [
        {"n": 108},
        {"n": 109},
    ]


# -- failures -----------------------------------------------------------------------------


def test_corrupt_database_says_corrupt_and_names_the_file(art: Path) -> None:
    art.mkdir()
    (art / DB_FILE).write_bytes(b"this is not SQLite \x00\xff" * 300)
    with pytest.raises(QueueError) as info:
        JobQueue(art)
    assert "corrupt" in str(info.value)
    assert str(art / DB_FILE) in str(info.value)


def test_locked_database_says_locked_on_a_write(art: Path) -> None:
    with JobQueue(art) as q:
        add(q, 1)
    holder = sqlite3.connect(art / DB_FILE, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with JobQueue(art, timeout_s=0.2) as q:
            assert q.pending() == 1  # readers are not blocked (WAL)
            with pytest.raises(QueueError) as info:
                add(q, 1)
            assert "locked" in str(info.value)
            assert str(art / DB_FILE) in str(info.value)
            with pytest.raises(QueueError, match="locked"):
                q.claim(1, new_owner())
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    with JobQueue(art) as q:
        assert q.pending() == 1  # the failed write left nothing behind


def test_missing_queue_without_create_hints_at_enqueue(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(QueueError) as info:
        JobQueue(missing, create=False)
    assert str(missing / DB_FILE) in str(info.value)
    assert "pantheon enqueue" in str(info.value)
    assert not missing.exists()


@pytest.mark.parametrize("where", ["parent is a file", "artifacts is a file"])
def test_artifacts_path_blocked_by_a_file_is_a_queue_error(tmp_path: Path, where: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file\n")
    art = blocker / "artifacts" if where == "parent is a file" else blocker
    with pytest.raises(QueueError) as info:
        JobQueue(art)
    assert str(art) in str(info.value)


def test_queue_from_a_newer_pantheon_is_refused(art: Path) -> None:
    with JobQueue(art):
        pass
    raw(art, "PRAGMA user_version = 99")
    with pytest.raises(QueueError, match="newer Pantheon"):
        JobQueue(art)


def test_a_version_2_queue_gains_touched_times_and_readers_see_only_what_changed(
    art: Path,
) -> None:
    with JobQueue(art) as q:
        ids = q.enqueue(
            flow="f", flow_sha="s", flow_source="f.yaml", flow_text="t", first_agent="a",
            inputs=[{"n": i} for i in range(3)],
        )  # fmt: skip
    # the same queue as version 2 wrote it: no touched column
    with closing(sqlite3.connect(art / DB_FILE, isolation_level=None)) as db:
        db.executescript(
            "DROP INDEX jobs_by_touched; ALTER TABLE jobs DROP COLUMN touched;"
            "PRAGMA user_version = 2;"
        )
    with JobQueue(art) as q:
        assert raw(art, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
        assert all(t is not None for (t,) in raw(art, "SELECT touched FROM jobs"))
        later = time.time() + 0.5
        time.sleep(0.6)
        assert q.summaries(changed_since=later) == []
        [job] = q.claim(1, "host:1:x")
        assert [j.id for j in q.summaries(changed_since=later)] == [job.id]
        q.renew("host:1:x", [job.id])  # a lease renewal is nobody's news
        assert [j.id for j in q.summaries(changed_since=later)] == [job.id]
        assert len(q.summaries()) == len(ids)


def test_a_version_3_queue_gains_the_durable_values(art: Path) -> None:
    with JobQueue(art):
        pass
    with closing(sqlite3.connect(art / DB_FILE, isolation_level=None)) as db:
        db.executescript("DROP TABLE kv; PRAGMA user_version = 3;")
    with JobQueue(art) as q:
        assert q.get_value("control.last_good") is None
        q.set_value("control.last_good", '{"concurrency": 3}')
        q.set_value("control.last_good", '{"concurrency": 5}')  # replaced, not added
    with JobQueue(art, create=False) as q:
        assert q.get_value("control.last_good") == '{"concurrency": 5}'
    assert raw(art, "SELECT COUNT(*) FROM kv")[0][0] == 1
