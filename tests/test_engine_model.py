"""The engine and the model server: no work is sent while it is down, and nothing is lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest
from helpers import until

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import TEST_MODEL, ModelStore
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.run.demo import demo_inputs

GOOD = '{"title": "Kvlite", "description": "How to use the store well.", "tags": ["kv"]}'


def _enqueue_docs(artifacts, registry, n=None):
    flow = load_flow(packaged_flows_dir() / "docmeta.yaml", registry)
    docs = [d for d in demo_inputs() if len(d["text"].split()) >= 40][:n]
    with JobQueue(artifacts) as q:
        return enqueue(q, flow, docs)


def _server_failures(artifacts):
    """The failed runs whose error is the model server's (never a dead server's fault)."""
    out = []
    for path in (artifacts / "runs").glob("*/FAILED.json"):
        error = json.loads(path.read_text())["error"]
        if "model server" in error or "not answering" in error:
            out.append(error)
    return out


def _statuses(artifacts):
    with JobQueue(artifacts) as q:
        return [j.status for j in q.jobs(limit=1000)]


async def test_no_work_while_the_server_is_down_then_it_drains(artifacts, registry):
    """MockTransport: /health fails a few times, then the server answers."""
    health = {"n": 0}

    def handler(request):
        if request.url.path == "/health":
            health["n"] += 1
            if health["n"] < 3:
                raise httpx.ConnectError("refused")
            return httpx.Response(200, json={"status": "ok"})
        content = GOOD
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})

    _enqueue_docs(artifacts, registry, n=3)
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    llm = LLMClient("http://127.0.0.1:9", http=http, retries=0)
    engine = Engine(
        artifacts, registry, until_empty=True, tick_s=0.01, llm=llm, health_every_s=0.05
    )
    task = asyncio.create_task(engine.run())
    await until(lambda: health["n"] >= 1)  # the engine asked, and the server is down
    assert _statuses(artifacts) == ["queued"] * 3, "no work is sent to a server that is down"
    stats = await asyncio.wait_for(task, 30)
    await http.aclose()
    assert stats.done == 3 and stats.model_waits >= 1


async def test_a_model_agent_without_a_server_fails_with_the_reason(artifacts, registry):
    [job] = _enqueue_docs(artifacts, registry, n=1)
    await Engine(artifacts, registry, until_empty=True, tick_s=0.01).run()
    failed = json.loads((artifacts / "runs" / f"docmeta-{job:06d}" / "FAILED.json").read_text())
    assert failed["node"] == "describe"
    assert "uses the model, but no model server is configured" in failed["error"]


@pytest.mark.slow
async def test_the_server_dies_mid_night_work_waits_and_nothing_is_lost(tmp_path, registry):
    ModelStore().pull(TEST_MODEL)
    artifacts = tmp_path / "a"
    ids = _enqueue_docs(artifacts, registry, n=4)  # some done, some in flight, some queued
    server = ModelServer(artifacts, ServerConfig(model=TEST_MODEL, port=0, parallel=2))
    state = await asyncio.to_thread(server.start)
    port = state.port
    llm = LLMClient(state.endpoint, retries=1, backoff_s=0.05)
    engine = Engine(artifacts, registry, until_empty=True, tick_s=0.05, llm=llm, health_every_s=0.1)
    task = asyncio.create_task(engine.run())
    try:
        for _ in range(400):
            await asyncio.sleep(0.05)
            if "done" in _statuses(artifacts):
                break
        os.kill(state.pid, signal.SIGKILL)
        await asyncio.to_thread(server.proc.wait, 10)
        await asyncio.sleep(1.5)
        statuses = _statuses(artifacts)
        assert not _server_failures(artifacts), "a dead server fails no job"
        assert "queued" in statuses or "running" in statuses
        server.config = server.config.model_copy(update={"port": port})
        await asyncio.to_thread(server.restart_if_dead)
        stats = await asyncio.wait_for(task, 240)
    finally:
        engine.request_stop(hard=True)
        await llm.aclose()
        await asyncio.to_thread(server.stop)
    # every job finished; one the small model's reply failed (a docs check) is no server failure
    assert set(_statuses(artifacts)) <= {"done", "failed"} and len(_statuses(artifacts)) == len(ids)
    assert "done" in _statuses(artifacts)
    assert not _server_failures(artifacts)
    assert stats.stopped >= 1, "jobs in flight when the server died went back to the queue"
    for job in ids:
        run = artifacts / "runs" / f"docmeta-{job:06d}"
        out = run / "describe" / "output.json"
        assert (
            json.loads(out.read_text())["title"] if out.exists() else (run / "FAILED.json").exists()
        )
