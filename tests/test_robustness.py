"""What goes wrong at night: reused pids, servers that fail, full disks, held locks, torn files."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
import time

import httpx
import pytest
from helpers import pantheon

from pantheon.core import (
    ArtifactError,
    Engine,
    JobQueue,
    ModelServerError,
    QueueError,
    ServerUnavailable,
    enqueue,
    load_flow,
    parse_flow,
)
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.procs import proc_start
from pantheon.core.model.server import ModelServer, ServerState
from pantheon.core.run.demo import demo_inputs
from pantheon.core.store.runs import RunDir

ECHO3 = """\
name: echo3
input: {n: int}
nodes:
  - {id: a, agent: util.echo, inputs: {payload: $input.n}}
  - {id: b, agent: util.echo, inputs: {payload: $a.payload}}
  - {id: c, agent: util.echo, inputs: {payload: $b.payload}}
"""


def put(artifacts, registry, text, inputs):
    with JobQueue(artifacts) as q:
        return enqueue(q, parse_flow(text, registry), inputs)


def test_stop_never_signals_a_process_that_reused_the_pid(tmp_path):
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        server = ModelServer(tmp_path)
        server.dir.mkdir(parents=True)
        state = ServerState(
            backend="llama.cpp",
            pid=stranger.pid,
            host="127.0.0.1",
            port=1,
            model="m",
            model_path="m",
            alias="m",
            parallel=1,
            command=["x"],
            log="l",
            started_at="t",
            pid_start=(proc_start(stranger.pid) or 0) + 12345,
        )
        server.state_path.write_text(state.model_dump_json())
        assert server.status()["running"] is False
        assert server.stop() is False
        time.sleep(0.1)
        assert stranger.poll() is None, "the stranger was killed"
    finally:
        stranger.kill()
        stranger.wait()


async def test_a_5xx_that_is_not_503_fails_the_call_instead_of_waiting():
    def handler(request):
        return httpx.Response(501, text="not implemented")

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = LLMClient("http://127.0.0.1:9", http=http, retries=1, backoff_s=0.001)
    with pytest.raises(ModelServerError) as info:
        await client.chat([{"role": "user", "content": "x"}])
    await http.aclose()
    assert not isinstance(info.value, ServerUnavailable)
    assert "failed the request 2 time(s): HTTP 501" in str(info.value)


async def test_a_job_the_server_never_answers_fails_after_its_tries(artifacts, registry):
    def handler(request):
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        return httpx.Response(503, json={"error": {"message": "busy"}})

    flow = load_flow(packaged_flows_dir() / "docmeta.yaml", registry)
    with JobQueue(artifacts) as q:
        [job] = enqueue(q, flow, [demo_inputs()[0]])
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    llm = LLMClient("http://127.0.0.1:9", http=http, retries=0)
    engine = Engine(
        artifacts, registry, until_empty=True, tick_s=0.01, llm=llm, health_every_s=0.01
    )
    engine.max_waits = 3
    stats = await asyncio.wait_for(engine.run(), 30)
    await http.aclose()
    assert stats.failed == 1
    with JobQueue(artifacts) as q:
        assert "did not answer this job in 3 tries" in q.get(job).error


def test_a_node_that_cannot_be_recorded_fails_its_run_cleanly(artifacts, registry, monkeypatch):
    [job] = put(artifacts, registry, ECHO3, [{"n": 1}])

    def full_disk(self, node, data):
        raise ArtifactError(f"cannot write {self.node_dir(node)}/output.json: No space left")

    monkeypatch.setattr(RunDir, "write_output", full_disk)
    stats = asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01).run())
    assert stats.failed == 1
    run = artifacts / "runs" / f"echo3-{job:06d}"
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    failed = json.loads((run / "FAILED.json").read_text())
    assert failed["node"] == "a" and "could not be recorded" in failed["error"]


def test_a_queue_locked_for_a_while_does_not_stop_the_engine(artifacts, registry, caplog):
    slow = ECHO3.replace(
        "inputs: {payload: $a.payload}}", "inputs: {payload: $a.payload}, params: {delay_s: 0.05}}"
    )
    put(artifacts, registry, slow, [{"n": i} for i in range(20)])

    def hold_the_lock() -> None:
        time.sleep(0.2)
        holder = sqlite3.connect(artifacts / "pantheon.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(1.0)
        holder.execute("COMMIT")
        holder.close()

    other = threading.Thread(target=hold_the_lock)
    other.start()
    try:
        engine = Engine(artifacts, registry, until_empty=True, tick_s=0.02, queue_timeout_s=0.1)
        stats = asyncio.run(engine.run())
    finally:
        other.join()
    assert stats.done == 20
    assert "the queue is not usable right now" in caplog.text


def test_a_full_disk_is_a_queue_error_not_a_rollback_traceback(artifacts):
    with JobQueue(artifacts) as q:
        q._db.execute("PRAGMA max_page_count = 12")
        with pytest.raises(QueueError, match="the disk is full"):
            q.enqueue(
                flow="f",
                flow_sha="s",
                flow_source="x",
                flow_text="t" * 100_000,
                first_agent="a",
                inputs=[{"x": "y" * 1000}] * 50,
            )


def test_an_upstream_node_run_again_makes_its_dependents_run_again(artifacts, registry):
    [job] = put(artifacts, registry, ECHO3, [{"n": 1}])
    run = artifacts / "runs" / f"echo3-{job:06d}"
    for node, value in (("a", 1), ("b", 999), ("c", 999)):
        (run / node).mkdir(parents=True)
        (run / node / "output.json").write_text(json.dumps({"payload": value}))
    (run / "a" / "output.json").write_text('{"payload": 1')  # torn
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01).run())
    record = json.loads((run / "run.json").read_text())
    assert record["nodes"] == {"a": "done", "b": "done", "c": "done"}
    assert json.loads((run / "c" / "output.json").read_text()) == {"payload": 1}


def test_a_startup_error_is_reported_as_itself(artifacts, registry, monkeypatch):
    from pantheon.core.store.control import ControlFile

    def broken(self):
        raise ArtifactError(f"cannot write {self.path}: Read-only file system")

    monkeypatch.setattr(ControlFile, "ensure", broken)
    with pytest.raises(ArtifactError, match="Read-only file system"):
        asyncio.run(Engine(artifacts, registry, until_empty=True).run())


async def test_llama_cpp_python_health_is_its_model_list():
    seen = []

    def handler(request):
        seen.append(request.url.path)
        return httpx.Response(200, json={"data": []})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    client = LLMClient("http://127.0.0.1:9", http=http, backend="llama-cpp-python")
    assert await client.health()
    await http.aclose()
    assert seen == ["/v1/models"]


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["serve", "--det"], "unrecognized arguments: --det", 2),
        (["serve", "--port", "99999"], "serve: --port: Input should be less than or equal", 1),
        (["serve", "--parallel", "0"], "serve: --parallel: Input should be greater", 1),
    ],
)
def test_serve_mistakes_are_one_clear_line(tmp_path, args, message, code):
    out = pantheon(*args, "--artifacts", str(tmp_path))
    assert out.returncode == code and message in out.stderr
    assert "Traceback" not in out.stderr


def test_an_inputs_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "in.jsonl"
    bad.write_bytes(b'\xff\xfe{"text": "x"}\n')
    out = pantheon("enqueue", "textstats", "--inputs", str(bad), "--artifacts", str(tmp_path))
    assert out.returncode == 1 and "not UTF-8 text" in out.stderr
