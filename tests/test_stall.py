"""A model server that takes a request and never answers: the wait is seen, bounded, recorded.

The server here is a real HTTP server on loopback that accepts the completion and then says
nothing; the engine runs a real docs flow against it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from night_fixture import NOW

from pantheon.console.app import PantheonConsole
from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.run.demo import demo_inputs
from pantheon.core.views.night import NightView
from pantheon.widgets.runs_table import RunsTable


class HangingServer:
    """Answers /health; takes every completion and holds it until the test ends."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.posts = 0
        self.open_now = 0
        self.most_open = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                code = 200 if self.path == "/health" else 404
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "ok"}')

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                outer.posts += 1
                outer.open_now += 1
                outer.most_open = max(outer.most_open, outer.open_now)
                try:
                    # hold the request; a client that gives up closes the socket
                    while not outer.release.wait(0.05):
                        if self._closed():
                            return
                finally:
                    outer.open_now -= 1

            def _closed(self) -> bool:
                import select

                ready, _, _ = select.select([self.connection], [], [], 0)
                return bool(ready) and not self.connection.recv(1, 2)  # MSG_PEEK: EOF

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HangingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _one_docs_job(artifacts: Path, registry) -> int:
    flow = load_flow(packaged_flows_dir() / "docmeta.yaml", registry)
    doc = next(d for d in demo_inputs() if len(d["text"].split()) >= 40)
    with JobQueue(artifacts) as q:
        [job] = enqueue(q, flow, [doc])
    return job


@pytest.mark.slow
async def test_a_hung_server_fails_the_node_as_a_stall_within_its_bound(
    artifacts, registry, caplog
):
    job = _one_docs_job(artifacts, registry)
    node = artifacts / "runs" / f"docmeta-{job:06d}" / "describe"
    with HangingServer() as server:
        llm = LLMClient(server.endpoint, retries=0, stall_s=1.5, warn_s=0.5)
        engine = Engine(artifacts, registry, until_empty=True, tick_s=0.02, llm=llm)
        t0 = time.monotonic()
        with caplog.at_level("INFO"):
            task = asyncio.create_task(engine.run())
            while not (node / "waiting.json").exists():
                assert not task.done(), "the engine stopped before it called the model"
                await asyncio.sleep(0.05)
            # what the console reads: the job waits on the model, since the call was sent
            view = NightView(artifacts)
            view.refresh_all()
            assert job in view.waiting and abs(view.waiting[job] - time.time()) < 5
            view.close()
            stats = await asyncio.wait_for(task, 30)
        took = time.monotonic() - t0
        await llm.aclose()
        posts, most_open = server.posts, server.most_open
    assert stats.failed == 1 and stats.done == 0
    assert posts == 2 and most_open == 1, "posted again once, never two at once"
    assert took < 10, f"bounded by two stalls of 1.5 s, not by a read timeout ({took:.1f} s)"
    failed = json.loads((node.parent / "FAILED.json").read_text())
    assert failed["node"] == "describe" and "stalled" in failed["error"]
    assert "no progress for" in failed["error"]
    [call] = [json.loads(line) for line in (node / "calls.jsonl").read_text().splitlines()]
    assert call["stalled"] is True and 2.5 < call["waited_s"] < 10
    assert not (node / "waiting.json").exists(), "the mark goes with the call"
    logged = [r.getMessage() for r in caplog.records]
    label = f"docmeta-{job:06d}/describe"
    assert any(m.startswith(f"{label}: waiting on the model for") for m in logged)
    assert any(m.startswith(f"{label}: the model call stalled") for m in logged)


async def test_the_running_row_says_how_long_the_job_waits_on_the_model(night):
    """The frozen night's first running job has its stats node in flight: a model call of that
    node sent 4m12s ago shows on its row."""
    [node] = [n for n in (night / "runs").glob("*/stats") if not (n / "output.json").exists()]
    (node / "waiting.json").write_text(json.dumps({"since": NOW - 252, "endpoint": "x"}))
    app = PantheonConsole(night, watch=False, clock=lambda: NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        table = app.screen.query_one(RunsTable)
        [row] = [r for r in table.rows if r.now.startswith("▶ stats")]
        assert row.note == "waiting on the model 4m12s"
        others = [r.note for r in table.rows if r.status == "running" and r is not row]
        assert all("waiting" not in n for n in others)
