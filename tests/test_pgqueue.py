"""The queue on a real PostgreSQL server: claims through PgQueuer, leases taken over, a late
engine fenced off, every reader the SQLite queue has."""

from __future__ import annotations

import json
import time

import pytest
from helpers_pg import new_database, postgres_server

from pantheon.core.errors import QueueError
from pantheon.core.store.jobs import NodeRow
from pantheon.core.store.queue import JobQueue
from pantheon.core.store.queueurl import set_queue_url

pytest.importorskip("pgqueuer")


@pytest.fixture(scope="module")
def server():
    with postgres_server() as running:
        yield running.url


@pytest.fixture
def artifacts(server, tmp_path):
    set_queue_url(tmp_path, new_database(server))
    return tmp_path


def _enqueue(q, n, agent="writer", priority=0):
    return q.enqueue(
        flow="f", flow_sha="abc", flow_source="f.yaml", flow_text="name: f", first_agent=agent,
        inputs=[{"i": i} for i in range(n)], priority=priority,
    )  # fmt: skip


def test_two_engines_claim_disjoint_jobs_and_the_preferred_agent_first(artifacts):
    with JobQueue(artifacts) as a, JobQueue(artifacts) as b:
        assert type(a).__name__ == "PostgresQueue"
        ids = _enqueue(a, 4) + _enqueue(a, 2, agent="reviewer")
        first = a.claim(3, "host-a:1:x", prefer=["reviewer"])
        second = b.claim(10, "host-b:2:y")
        assert [j.next_agent for j in first[:2]] == ["reviewer", "reviewer"]
        assert {j.id for j in first} | {j.id for j in second} == set(ids)
        assert not {j.id for j in first} & {j.id for j in second}
        assert a.claim(5, "host-a:1:x") == []
        assert a.counts().total["running"] == 6 and a.pending() == 6
        assert json.loads(json.dumps(a.get(ids[0]).input)) == {"i": 0}


def test_a_dead_engine_s_job_is_taken_over_after_its_lease_and_its_late_result_refused(artifacts):
    with JobQueue(artifacts) as a, JobQueue(artifacts) as b:
        [kept, lost] = _enqueue(a, 2)
        mine = a.claim(2, "host-a:1:x", lease_s=1.0)
        assert {j.id for j in mine} == {kept, lost}
        time.sleep(1.5)
        a.renew("host-a:1:x", [kept], lease_s=60.0)  # it beats for one job only
        taken = b.claim(5, "host-b:2:y", lease_s=1.0)  # every engine has the same lease
        assert [j.id for j in taken] == [lost] and taken[0].attempts == 2
        assert not a.complete(lost, "host-a:1:x"), "a late engine cannot record it"
        assert b.complete(lost, "host-b:2:y", [NodeRow("n1", "writer", "done", 0.5)], (True, True))
        assert a.complete(kept, "host-a:1:x")
        assert a.counts().total == {"queued": 0, "running": 0, "done": 2, "failed": 0}
        assert a.review_pairs(5) == [(True, True)]
        assert a.node_agents(lost) == {"n1": ("writer", "done", 0.5)}


def test_release_gives_a_job_back_under_its_next_agent_and_retry_brings_a_failed_one(artifacts):
    with JobQueue(artifacts) as q:
        [job] = _enqueue(q, 1)
        q.claim(1, "host-a:1:x")
        q.advance(job, [NodeRow("write", "writer", "done", 1.0)], next_agent="reviewer")
        assert q.release("host-a:1:x") == 1
        [again] = q.claim(1, "host-b:2:y", prefer=["reviewer"])
        assert again.id == job and again.next_agent == "reviewer" and again.attempts == 1
        assert q.fail(job, "host-b:2:y", "the tests failed")
        assert q.jobs(status="failed")[0].error == "the tests failed"
        assert q.retry_failed() == 1
        assert [j.id for j in q.claim(1, "host-c:3:z")] == [job]
        changed = q.summaries(changed_since=time.time() - 60)
        assert [s.id for s in changed] == [job] and changed[0].status == "running"


def test_a_job_taken_over_too_often_fails_instead_of_killing_more_engines(artifacts):
    with JobQueue(artifacts) as q:
        [job] = _enqueue(q, 1)
        for n in range(3):
            assert [j.id for j in q.claim(1, f"host-{n}:1:x", lease_s=0.2)] == [job]
            time.sleep(0.4)
        assert q.claim(1, "host-9:1:x", lease_s=0.2) == []
        failed = q.get(job)
        assert failed.status == "failed" and failed.error.startswith("abandoned after 3 attempts")


def test_small_values_and_the_window(artifacts):
    with JobQueue(artifacts) as q:
        q.set_value("controls", "{}")
        q.set_value("controls", '{"c": 2}')
        assert q.get_value("controls") == '{"c": 2}' and q.get_value("none") is None
        _enqueue(q, 2)
        window = q.window(time.time() - 60)
        assert window["arrivals"] == 2 and window["finished"] == 0


def test_an_unreachable_server_is_one_clear_error(tmp_path):
    set_queue_url(tmp_path, "postgresql://postgres@127.0.0.1:9/none")
    with pytest.raises(QueueError) as caught:
        JobQueue(tmp_path)
    assert "the queue at postgresql://postgres@127.0.0.1:9/none cannot be reached" in str(
        caught.value
    )


def test_a_queue_written_by_a_newer_pantheon_is_refused(artifacts):
    import psycopg

    from pantheon.core.store.queueurl import queue_url

    JobQueue(artifacts).close()
    with psycopg.connect(queue_url(artifacts), autocommit=True) as conn:
        conn.execute("UPDATE pantheon_meta SET value = '99' WHERE key = 'schema'")
    with pytest.raises(QueueError) as caught:
        JobQueue(artifacts)
    assert "written by a newer Pantheon (schema 99 > 1)" in str(caught.value)


@pytest.mark.slow
def test_two_engine_processes_share_the_queue_and_one_killed_leaves_nothing_undone(
    server, tmp_path, with_plugin, monkeypatch
):
    """Two engines, each with its own artifacts directory, drain one PostgreSQL queue; one is
    killed with SIGKILL mid-night: the other takes its jobs after their lease and finishes
    them; every job is done once."""
    import signal
    from collections import Counter

    from helpers import pantheon, pantheon_popen, step_flow, wait_for

    url = new_database(server)
    count_file = tmp_path / "executions.log"
    monkeypatch.setenv("PANTHEON_COUNT_FILE", str(count_file))
    one, two = tmp_path / "host-1", tmp_path / "host-2"
    flow = tmp_path / "steps.yaml"
    flow.write_text(step_flow(0.1))
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(40)))
    queued = pantheon(
        "enqueue", str(flow), "--inputs", str(inputs), "--queue", url, "--artifacts", str(one)
    )
    assert queued.returncode == 0, queued.stderr
    for art in (one, two):
        assert pantheon("control", "--concurrency", "4", "--artifacts", str(art)).returncode == 0
    common = ["--queue", url, "--lease", "3", "--tick", "0.05"]
    first = pantheon_popen("engine", *common, "--artifacts", str(one))
    second = pantheon_popen("engine", *common, "--until-empty", "--artifacts", str(two))

    def done() -> int:
        with JobQueue(one) as q:
            return q.counts().total["done"]

    try:
        wait_for(lambda: done() >= 10, timeout=120)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    with JobQueue(two) as q:
        assert q.counts().total == {"queued": 0, "running": 0, "done": 40, "failed": 0}
        assert all(job.status == "done" for job in q.jobs(limit=100))
    executions = Counter(tuple(line.split()[:2]) for line in count_file.read_text().splitlines())
    assert len(executions) == 120, "every node of every job ran"
    assert max(executions.values()) <= 2, "at most the killed engine's nodes in flight ran again"
    ran_by = {p.parent.name for p in (one / "runs").glob("*/run.json")}
    ran_by_two = {p.parent.name for p in (two / "runs").glob("*/run.json")}
    assert ran_by and ran_by_two, "both engines drained it"


def test_two_engines_with_their_own_clones_drain_one_queue_and_merge_each_change_once(
    server, tmp_path
):
    """A night of real docops jobs in one PostgreSQL queue, drained by two engines, each with
    its own artifacts and its own clone of a bare remote: every page's change lands on the
    remote once, whichever engine ran it."""
    import asyncio
    import subprocess

    from helpers import docops_model, git, make_repo

    from pantheon.core import Engine, default_registry, enqueue, load_flow
    from pantheon.core.flows.flow import packaged_flows_dir

    pages = {f"docs/p{i}.md": f"# Page {i}\n\nWhat page {i} says.\n" for i in range(6)}
    seed = make_repo(tmp_path / "seed", pages)
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True)
    clones = []
    for name in ("host-a", "host-b"):
        subprocess.run(["git", "clone", "-q", str(bare), str(tmp_path / name)], check=True)
        clones.append(tmp_path / name)
    url = new_database(server)
    arts = [tmp_path / "art-a", tmp_path / "art-b"]
    for art in arts:
        set_queue_url(art, url)
    registry = default_registry()
    flow = load_flow(packaged_flows_dir() / "docops.yaml", registry)
    with JobQueue(arts[0]) as q:
        enqueue(q, flow, [{"repo": str(clones[0]), "path": p, "remote": "origin"} for p in pages])

    async def night() -> list[int]:
        engines, https = [], []
        for art, clone in zip(arts, clones, strict=True):
            llm, http = docops_model({"a": True, "b": True})
            https.append(http)
            engines.append(
                Engine(art, registry, until_empty=True, tick_s=0.01, llm=llm, clone=clone)
            )
        stats = await asyncio.gather(*(e.run() for e in engines))
        for http in https:
            await http.aclose()
        return [s.done for s in stats]

    done = asyncio.run(night())
    assert sum(done) == 6, done
    with JobQueue(arts[1]) as q:
        assert q.counts().total == {"queued": 0, "running": 0, "done": 6, "failed": 0}
    merges = git(bare, "log", "--merges", "--format=%P", "main").split("\n")
    assert len(merges) == 6 and len({m.split()[1] for m in merges}) == 6
    for page in pages:
        assert git(bare, "show", f"main:{page}").startswith("---"), page


def test_a_queue_server_lost_mid_night_pauses_the_claims_and_nothing_is_lost(
    tmp_path, caplog, with_plugin
):
    """PostgreSQL stops while the engine drains (its connection broken), and starts again:
    the engine says the queue is not usable, waits, reconnects and finishes every job."""
    import asyncio
    import threading

    from helpers import step_flow

    from pantheon.core import Engine, default_registry, enqueue, load_flow

    with postgres_server() as running:
        set_queue_url(tmp_path, new_database(running.url))
        registry = default_registry()
        flow_path = tmp_path / "steps.yaml"
        flow_path.write_text(step_flow(0.05))
        try:
            flow = load_flow(flow_path, registry)
        except Exception:
            pytest.skip("the count.step agent is not installed here")
        with JobQueue(tmp_path) as q:
            enqueue(q, flow, [{"n": i} for i in range(30)])

        def outage() -> None:
            running.stop()
            threading.Event().wait(2.0)
            running.start()

        async def night() -> int:
            engine = Engine(tmp_path, registry, until_empty=True, tick_s=0.02, lease_s=10)
            task = asyncio.create_task(engine.run())
            while engine.stats.done < 5:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(outage)
            await task
            return engine.stats.done

        with caplog.at_level("WARNING"):
            asyncio.run(night())
        assert "the queue is not usable right now" in caplog.text
        with JobQueue(tmp_path) as q:
            assert q.counts().total == {"queued": 0, "running": 0, "done": 30, "failed": 0}


def test_a_pause_on_one_host_holds_on_every_host_and_so_does_its_resume(server, tmp_path):
    """Two engines, each with its own artifacts, on one PostgreSQL queue: the operator pauses
    the queue on one host; the other host's controls say so within a tick; resumed on the
    second host, the first follows. Concurrency stays each host's own."""
    import asyncio

    from pantheon.core import Engine, default_registry
    from pantheon.core.store.control import ControlFile

    url = new_database(server)
    one, two = tmp_path / "one", tmp_path / "two"
    for art in (one, two):
        set_queue_url(art, url)
    ControlFile(two).update(by="operator", concurrency=2)

    async def until(check, timeout_s=10.0):
        end = time.monotonic() + timeout_s
        while not check():
            assert time.monotonic() < end, "the hosts did not agree in time"
            await asyncio.sleep(0.05)

    async def night() -> None:
        engines = [Engine(a, default_registry(), tick_s=0.02) for a in (one, two)]
        tasks = [asyncio.create_task(e.run()) for e in engines]
        await asyncio.sleep(0.3)
        ControlFile(one).update(by="operator", queue_paused=True, queue_paused_reason="upgrade")
        await until(lambda: ControlFile(two).read().queue_paused)
        seen = ControlFile(two).read()
        assert seen.queue_paused_reason == "upgrade" and seen.updated_by == "fleet"
        assert seen.concurrency == 2, "concurrency is each host's own"
        late = Engine(tmp_path / "three", default_registry(), tick_s=0.02)
        set_queue_url(tmp_path / "three", url)
        tasks.append(asyncio.create_task(late.run()))
        engines.append(late)
        await until(lambda: ControlFile(tmp_path / "three").read().queue_paused)
        assert ControlFile(one).read().queue_paused, "a host that joins does not unpause them"
        ControlFile(two).update(by="operator", queue_paused=False)
        await until(lambda: not ControlFile(one).read().queue_paused)
        for engine in engines:
            engine.request_stop()
        await asyncio.gather(*tasks)

    asyncio.run(night())


async def test_the_console_follows_a_shared_queue_that_other_hosts_change(server, tmp_path):
    """The console on one host's artifacts: a job another host claims and finishes, and that
    host's engine, show up with no file changing here."""
    from pantheon.console.app import PantheonConsole
    from pantheon.core.observe.engines import Heartbeat

    artifacts = tmp_path / "here"
    set_queue_url(artifacts, new_database(server))
    with JobQueue(artifacts) as q:
        [job] = _enqueue(q, 1)
    app = PantheonConsole(artifacts, debounce_ms=100)
    async with app.run_test(size=(140, 30)) as pilot:
        for _ in range(60):
            await pilot.pause(0.1)
            if app.snapshot is not None and app.snapshot.totals.get("queued") == 1:
                break
        assert app.snapshot is not None and app.snapshot.exists
        assert app.snapshot.totals["queued"] == 1
        with JobQueue(artifacts) as there:  # another host, the same queue
            there.claim(1, "gpu-2:99:ab")
            there.complete(job, "gpu-2:99:ab")
            Heartbeat(tmp_path / "there", "gpu-2:99:ab", "engine").beat([], [], 1, 0, there)
            Heartbeat(tmp_path / "there2", "gpu-3:98:cd", "engine").beat([], [], 0, 0, there)
        for _ in range(60):
            await pilot.pause(0.1)
            if app.snapshot.totals.get("done") == 1 and len(app.snapshot.beats) == 2:
                break
        assert app.snapshot.totals["done"] == 1
        await pilot.pause(1.2)
        engines = app.screen.query_one("#engines")
        assert engines.display and "gpu-2 pid 99" in str(engines.render())


class _DocsModelServer:
    """A real HTTP model server on loopback (a thread of the test) that answers as
    :func:`helpers.docops_model` does: the writer gets frontmatter, every reviewer passes."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from helpers import META, verdict_reply

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _json(self, code: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._json(200 if self.path == "/health" else 404, {"status": "ok"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
                if "messages" not in body:
                    self._json(404, {"error": "not here"})
                    return
                system = body["messages"][0]["content"]
                if system.startswith("You review"):
                    reply = verdict_reply(body, True, "fine")
                    if not isinstance(reply, str):
                        self._json(200, json.loads(reply.content))
                        return
                    text = reply
                else:
                    text = json.dumps(META)
                choices = [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}]
                usage = {"prompt_tokens": 9, "completion_tokens": 9}
                self._json(200, {"choices": choices, "usage": usage})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.slow
def test_two_engine_processes_merge_a_night_into_one_remote_through_one_queue(server, tmp_path):
    """Two real engine processes, each with its own artifacts and its own clone of a bare
    remote, drain one PostgreSQL queue of docops jobs; one is killed with SIGKILL mid-night and
    the other finishes: every page's change is on the remote, each merged once."""
    import signal
    import subprocess

    from helpers import git, make_repo, pantheon, pantheon_popen, wait_for

    pages = {f"docs/p{i:02d}.md": f"# Page {i}\n\nWhat page {i} says.\n" for i in range(16)}
    seed = make_repo(tmp_path / "seed", pages)
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(seed), str(bare)], check=True)
    clones = [tmp_path / "clone-a", tmp_path / "clone-b"]
    for clone in clones:
        subprocess.run(["git", "clone", "-q", str(bare), str(clone)], check=True)
    url = new_database(server)
    arts = [tmp_path / "art-a", tmp_path / "art-b"]
    inputs = tmp_path / "jobs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"repo": str(clones[0]), "path": p, "remote": "origin"}) + "\n"
            for p in pages
        )
    )
    queued = pantheon(
        "enqueue", "docops", "--inputs", str(inputs), "--queue", url, "--artifacts", str(arts[0])
    )
    assert queued.returncode == 0, queued.stderr
    model = _DocsModelServer()
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    common = ["--queue", url, "--endpoint", model.endpoint, "--lease", "3", "--tick", "0.05"]
    for art in arts:
        assert pantheon("control", "--concurrency", "2", "--artifacts", str(art)).returncode == 0
    first = pantheon_popen(
        "engine", *common, "--repo", str(clones[0]), "--artifacts", str(arts[0]), **quiet
    )
    second = None

    def done() -> int:
        with JobQueue(arts[0]) as q:
            return q.counts().total["done"]

    try:
        wait_for(lambda: done() >= 3, timeout=120)
        second = pantheon_popen(
            "engine", *common, "--until-empty", "--repo", str(clones[1]),
            "--artifacts", str(arts[1]), **quiet,
        )  # fmt: skip
        wait_for(lambda: done() >= 5, timeout=120)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err[-3000:]
    finally:
        model.close()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    with JobQueue(arts[1]) as q:
        failed = [f"{j.run_name}: {j.error}" for j in q.jobs(status="failed")]
        assert q.counts().total == {"queued": 0, "running": 0, "done": 16, "failed": 0}, failed
    landed: list[str] = []
    for merge in git(bare, "log", "--merges", "--format=%H", "main").split():
        landed += git(bare, "diff", "--name-only", f"{merge}^1", merge).split()
    assert sorted(landed) == sorted(pages), "every page's change landed, each once"
    for page in pages:
        assert git(bare, "show", f"main:{page}").startswith("---"), page
    assert list((arts[1] / "runs").glob("docops-*")), "the second engine ran some"
