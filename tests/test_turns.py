"""Model servers on one CPU take turns: one server's calls at a time, each batch whole, no side
starved; a night of two models starts each server with every core."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import datetime

import httpx
import pytest
from helpers import chat_response, pantheon

from pantheon.core.model.client import LLMClient
from pantheon.core.model.turns import CpuTurns

USAGE = {"prompt_tokens": 5, "completion_tokens": 1}


class Busy:
    """Which servers are answering at each moment, over scripted servers of one CPU."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.ports = 8201
        self.running: dict[str, int] = {}
        self.overlaps = 0
        self.most: dict[str, int] = {}
        self.order: list[str] = []

    def client(self, name: str, turns: CpuTurns | None) -> LLMClient:
        async def handler(request: httpx.Request) -> httpx.Response:
            self.running[name] = self.running.get(name, 0) + 1
            self.most[name] = max(self.most.get(name, 0), self.running[name])
            if any(n for k, n in self.running.items() if k != name):
                self.overlaps += 1
            self.order.append(name)
            try:
                await asyncio.sleep(self.delay_s)
            finally:
                self.running[name] -= 1
            return chat_response([name], usage=USAGE, finish_reason="stop")

        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        self.ports += 1
        client = LLMClient(f"http://127.0.0.1:{self.ports}", http=http, retries=0, stream=False)
        client.turns = turns
        return client


def ask(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {n}"}]


async def test_two_servers_in_turns_never_answer_at_once_and_each_batches_whole():
    busy, turns = Busy(), CpuTurns()
    writers, reviewers = busy.client("writers", turns), busy.client("reviewers", turns)
    calls = [writers.chat(ask(i)) for i in range(4)] + [reviewers.chat(ask(i)) for i in range(4)]
    replies = await asyncio.gather(*calls)
    assert [r.text for r in replies] == ["writers"] * 4 + ["reviewers"] * 4
    assert busy.overlaps == 0
    assert busy.most == {"writers": 4, "reviewers": 4}  # each server's calls went in together
    assert turns.turns == 2 and turns.holder is None and turns.active == 0
    await writers.chat(ask(9))
    await writers.chat(ask(10))  # the same server again and again: one more pass, not two
    assert turns.turns == 3


async def test_without_turns_the_same_calls_run_on_both_at_once():
    """The contrast that makes the test above mean something."""
    busy = Busy()
    writers, reviewers = busy.client("writers", None), busy.client("reviewers", None)
    await asyncio.gather(*(c.chat(ask(i)) for i in range(4) for c in (writers, reviewers)))
    assert busy.overlaps > 0


async def test_a_waiting_server_is_not_starved_by_new_calls_to_the_one_whose_turn_it_is():
    busy, turns = Busy(delay_s=0.1), CpuTurns()
    writers, reviewers = busy.client("writers", turns), busy.client("reviewers", turns)
    first = asyncio.create_task(writers.chat(ask(0)))
    await asyncio.sleep(0.02)  # the writers' turn
    review = asyncio.create_task(reviewers.chat(ask(1)))
    await asyncio.sleep(0.02)
    late = asyncio.create_task(writers.chat(ask(2)))  # after the reviewer: it waits its turn
    await asyncio.gather(first, review, late)
    assert busy.order == ["writers", "reviewers", "writers"]
    assert busy.overlaps == 0


async def test_a_cancelled_call_gives_up_its_place_and_its_turn():
    busy, turns = Busy(delay_s=0.1), CpuTurns()
    writers, reviewers = busy.client("writers", turns), busy.client("reviewers", turns)
    first = asyncio.create_task(writers.chat(ask(0)))
    await asyncio.sleep(0.02)
    waiting = asyncio.create_task(reviewers.chat(ask(1)))
    await asyncio.sleep(0.01)
    assert turns.waiting == 1
    waiting.cancel()  # cancelled while it waits
    with pytest.raises(asyncio.CancelledError):
        await waiting
    first.cancel()  # and one cancelled while its server answers
    with pytest.raises(asyncio.CancelledError):
        await first
    assert turns.holder is None and turns.active == 0 and turns.waiting == 0
    reply = await asyncio.wait_for(reviewers.chat(ask(2)), 2)  # nothing is left holding a turn
    assert reply.text == "reviewers"


async def test_a_failed_call_passes_the_turn_on():
    turns = CpuTurns()

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "bad request"}})

    broken = LLMClient(
        "http://127.0.0.1:8299",
        http=httpx.AsyncClient(transport=httpx.MockTransport(refuse)),
        retries=0,
        stream=False,
    )
    broken.turns = turns
    other = Busy().client("other", turns)
    results = await asyncio.gather(broken.chat(ask(0)), other.chat(ask(1)), return_exceptions=True)
    assert isinstance(results[0], Exception) and "refused the request" in str(results[0])
    assert results[1].text == "other"
    assert turns.holder is None and turns.active == 0


async def test_a_server_that_does_not_answer_gives_the_turn_up_while_its_call_waits():
    """The writers' server is down for its first two posts: while its call waits to post
    again, the reviewers' call runs, and the writers' call is answered once it is back."""
    busy, turns = Busy(delay_s=0.05), CpuTurns()
    reviewers = busy.client("reviewers", turns)
    posts = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal posts
        posts += 1
        if posts <= 2:
            raise httpx.ConnectError("connection refused", request=request)
        return chat_response(["writers"], usage=USAGE, finish_reason="stop")

    writers = LLMClient(
        "http://127.0.0.1:8298",
        http=httpx.AsyncClient(transport=httpx.MockTransport(flaky)),
        retries=4,
        backoff_s=0.3,
    )
    writers.turns = turns
    done: list[str] = []

    async def call(client: LLMClient, n: int) -> None:
        reply = await client.chat(ask(n))
        done.append(reply.text)

    first = asyncio.create_task(call(writers, 0))
    await asyncio.sleep(0.05)  # the writers' turn, their server not answering
    await asyncio.wait_for(asyncio.gather(first, call(reviewers, 1)), 10)
    assert done == ["reviewers", "writers"]  # the reviewers did not wait out the backoff
    assert posts == 3 and turns.holder is None and turns.active == 0


def test_a_night_of_two_models_on_few_cores_takes_turns_with_every_core(tmp_path):
    from pantheon.core.run.assemble import cores, cpu_turns, night_servers
    from pantheon.core.run.settings import Models, NightSettings

    def settings(**models) -> NightSettings:
        return NightSettings(artifacts=tmp_path, models=Models(**models))

    two = settings(code_model="qwen2.5-coder-1.5b")
    assert cpu_turns(two) == (cores() // 2 < 4)
    turns = settings(code_model="qwen2.5-coder-1.5b", cpu_share="turns")
    assert cpu_turns(turns)
    assert [s.config.threads for s in night_servers(turns, 4, announce=False)] == [cores(), cores()]
    split = settings(code_model="qwen2.5-coder-1.5b", cpu_share="split")
    assert not cpu_turns(split)
    half = max(1, cores() // 2)
    assert [s.config.threads for s in night_servers(split, 4, announce=False)] == [half, half]
    # one server has the machine to itself; a pool of one model splits it
    assert not cpu_turns(settings(code_model=None, cpu_share="turns"))
    assert not cpu_turns(settings(servers=2, code_model="qwen2.5-coder-1.5b"))


@pytest.mark.slow
def test_a_real_night_of_two_servers_in_turns_never_has_both_computing(tmp_path):
    """Two llama-servers of SmolLM2 (the writers' and the reviewers'), in turns: every call
    of the night is answered, and no call of one server overlaps a call of the other."""
    from pantheon.core.model.files import TEST_MODEL, ModelStore

    writers = str(ModelStore().pull(TEST_MODEL))  # its file: a server of its own
    artifacts = tmp_path / "night"
    out = pantheon(
        "night", "--demo", "--headless", "--docs", "2", "--code", "0",
        "--model", TEST_MODEL, "--code-model", writers, "--cpu-share", "turns",
        "--concurrency", "2", "--artifacts", str(artifacts),
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "take turns on the CPU" in out.stderr
    calls = []
    for path in (artifacts / "runs").glob("*/*/calls.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            # a model call: a reply, a scored verdict, or the reason asked after a low score
            if row.get("kind") not in (None, "score", "reason") or row.get("latency_s") is None:
                continue
            end = datetime.fromisoformat(row["at"]).timestamp()
            calls.append((row["endpoint"], end - row["latency_s"], end, path.parent.name))
    endpoints = {c[0] for c in calls}
    assert len(endpoints) == 2, endpoints  # the writers' server and the reviewers'
    assert {c[3] for c in calls} >= {"write", "review_a"}
    for a in calls:
        for b in calls:
            if a[0] != b[0]:  # calls of two servers: one ended before the other began
                assert a[2] <= b[1] + 0.2 or b[2] <= a[1] + 0.2, (a, b)
    branches = subprocess.run(
        ["git", "branch", "--list", "pantheon/*"],
        cwd=artifacts / "demo-repo",
        capture_output=True,
        text=True,
    ).stdout
    assert branches.count("pantheon/") == 2
