"""Many model servers behind one client: spread by outstanding calls, an agent kept on its
server, a dead server's calls sent to the others, and back when it answers again."""

from __future__ import annotations

import asyncio
import json
import os
import signal

import httpx
import pytest
from helpers import pantheon, until
from pydantic import BaseModel

from pantheon.core import Agent, Engine, JobQueue, NodeContext, enqueue, parse_flow
from pantheon.core.errors import ServerUnavailable
from pantheon.core.model.client import LLMClient
from pantheon.core.model.pool import ServerPool
from pantheon.core.store.control import ControlFile


class FakeServer:
    """One scripted server: answers after ``delay_s``, or refuses connections while down."""

    def __init__(self, port: int, delay_s: float = 0.05) -> None:
        self.port = port
        self.delay_s = delay_s
        self.down = False
        self.answered = 0
        self.running = 0
        self.most_running = 0

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        if request.url.path == "/props":
            return httpx.Response(200, json={"total_slots": 4})
        body = json.loads(request.content)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
        self.answered += 1
        text = f"from {self.port}: {body['messages'][-1]['content']}"
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 3},
            },
        )

    def client(self) -> LLMClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return LLMClient(
            f"http://127.0.0.1:{self.port}", http=http, retries=1, backoff_s=0.01, stream=False
        )


def ask(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {n}"}]


@pytest.fixture
def two() -> tuple[FakeServer, FakeServer, ServerPool]:
    a, b = FakeServer(8101), FakeServer(8102)
    pool = ServerPool([a.client(), b.client()], probe_s=0.05, backoff_s=0.01, rounds=2)
    return a, b, pool


async def test_calls_without_an_agent_go_to_the_least_busy_server(two):
    a, b, pool = two
    replies = await asyncio.gather(*(pool.chat(ask(i)) for i in range(8)))
    assert a.answered == b.answered == 4
    assert {r.endpoint for r in replies} == {"127.0.0.1:8101", "127.0.0.1:8102"}
    assert pool.calls == {"127.0.0.1:8101": 4, "127.0.0.1:8102": 4}
    assert pool.prompt_tokens_total == 80 and pool.in_flight == 0
    assert await pool.server_slots() == 8  # the two servers' slots together
    await pool.aclose()


async def test_an_agent_stays_on_its_server_until_it_is_much_busier(two):
    *_, pool = two
    writer, reviewer = pool.routed("writer"), pool.routed("reviewer")
    first = await writer.chat(ask(0))
    other = await reviewer.chat(ask(1))
    assert first.endpoint != other.endpoint  # two agents, two homes
    # one at a time, an agent's calls all go home
    for i in range(5):
        assert (await writer.chat(ask(i))).endpoint == first.endpoint
    # a burst of one agent spills over once its home has `spill` more in flight than the other
    burst = await asyncio.gather(*(writer.chat(ask(i)) for i in range(10)))
    ends = [r.endpoint for r in burst]
    assert ends.count(first.endpoint) > ends.count(other.endpoint) > 0
    assert pool.home["writer"].where == first.endpoint  # its home is kept
    await pool.aclose()


async def test_a_dead_servers_calls_go_to_the_other_and_it_takes_calls_again_when_back(two):
    a, b, pool = two
    writer = pool.routed("writer")
    home = (await writer.chat(ask(0))).endpoint
    dead, alive = (a, b) if home.endswith("8101") else (b, a)
    dead.down = True
    replies = await asyncio.gather(*(writer.chat(ask(i)) for i in range(6)))
    assert all(r.endpoint.endswith(str(alive.port)) for r in replies)  # nothing failed
    assert pool.failovers >= 1
    assert [m.where for m in pool.up()] == [f"127.0.0.1:{alive.port}"]
    assert pool.down_since is None  # the pool still answers
    dead.down = False
    for _ in range(100):  # the probe finds it again
        await pool.chat(ask(9))
        if len(pool.up()) == 2:
            break
        await asyncio.sleep(0.02)
    assert len(pool.up()) == 2
    before = dead.answered
    await asyncio.gather(*(pool.chat(ask(i)) for i in range(6)))
    assert dead.answered > before
    await pool.aclose()


async def test_with_every_server_down_a_call_fails_naming_them_all(two):
    a, b, pool = two
    a.down = b.down = True
    with pytest.raises(ServerUnavailable) as exc:
        await pool.chat(ask(0))
    assert "none of the 2 model servers answers" in exc.value.message
    assert "127.0.0.1:8101" in exc.value.message and "127.0.0.1:8102" in exc.value.message
    assert pool.down_since is not None
    assert not await pool.health()
    a.down = False
    assert await pool.health() and pool.down_since is None
    await pool.aclose()


async def test_sampled_calls_are_routed_too(two):
    *_, pool = two
    replies = await pool.routed("codegen").chat_n(ask(0), n=1)
    assert len(replies) == 1 and replies[0].endpoint in pool.calls
    await pool.aclose()


def test_a_pool_is_of_one_backend():
    a = LLMClient("http://127.0.0.1:8101")
    b = LLMClient("http://127.0.0.1:8102", backend="vllm")
    with pytest.raises(ValueError, match="one backend"):
        ServerPool([a, b])
    with pytest.raises(ValueError, match="at least one"):
        ServerPool([])


def test_an_adapter_counts_as_loaded_when_every_server_has_it():
    a = LLMClient("http://127.0.0.1:8101", adapters={"docs": 0, "code": 1})
    b = LLMClient("http://127.0.0.1:8102", adapters={"code": 0})
    assert set(ServerPool([a, b]).adapters) == {"code"}


def test_the_command_line_takes_several_endpoints(tmp_path):
    from pantheon.console.cli import build_parser
    from pantheon.console.commands.settings_args import night_settings
    from pantheon.core.run.connect import connect

    args = build_parser().parse_args(
        ["night", "--endpoint", "http://127.0.0.1:8101", "--endpoint", "http://127.0.0.1:8102"]
    )
    ep = night_settings(args, "night").endpoint
    assert ep.urls == ("http://127.0.0.1:8101", "http://127.0.0.1:8102")
    pool = connect(tmp_path, ep)
    assert isinstance(pool, ServerPool)
    assert [m.where for m in pool.members] == ["127.0.0.1:8101", "127.0.0.1:8102"]
    assert all(m.retries == 1 for m in pool.members)  # a dead one is left quickly


# -- two real llama-servers ------------------------------------------------------------------


class Ask(Agent):
    """Asks the model for a few words and says which server answered."""

    name = "t.ask"
    description = "one short model call"

    class Input(BaseModel):
        n: int

    class Output(BaseModel):
        text: str
        endpoint: str

    async def run(self, input, ctx: NodeContext):
        messages = [{"role": "user", "content": f"Say the number {input.n} in words."}]
        reply = await ctx.model().chat(messages, max_tokens=8, label=f"ask {input.n}")
        return self.Output(text=reply.text, endpoint=reply.endpoint or "")


ASK = """\
name: ask
input: {n: int}
nodes:
  - {id: ask, agent: t.ask, inputs: {n: $input.n}}
"""


@pytest.mark.slow
async def test_an_engine_on_two_real_servers_loses_nothing_when_one_is_killed(tmp_path, registry):
    """Two llama-servers of SmolLM2 under the night's supervision, one pool: the calls go to
    both; one server is killed with SIGKILL mid-run, its calls go to the other, the supervisor
    starts it again, it takes calls again, and every job is done."""
    from pantheon.core.model.files import TEST_MODEL, ModelStore
    from pantheon.core.model.lifecycle import served
    from pantheon.core.model.server import ModelServer, ServerConfig
    from pantheon.core.run.connect import pool_of

    ModelStore().pull(TEST_MODEL)
    registry.register(Ask, origin="tests")
    artifacts = tmp_path / "a"

    def config() -> ServerConfig:
        return ServerConfig(model=TEST_MODEL, port=0, parallel=2, threads=1, ctx_per_slot=512)

    servers = [
        ModelServer(artifacts, config()),
        ModelServer(artifacts, config(), name="pool-2"),
    ]
    flow = parse_flow(ASK, registry, source="ask.yaml")
    with JobQueue(artifacts) as queue:
        enqueue(queue, flow, [{"n": i} for i in range(80)])
    ControlFile(artifacts).update(by="test", concurrency=4)
    async with served(servers, supervise_every_s=0.5) as states:
        pool = pool_of([st.endpoint for st in states], stall_s=30)
        pool.probe_s = 0.5
        first, second = (m.where for m in pool.members)
        engine = Engine(artifacts, registry, llm=pool, until_empty=True, tick_s=0.05)
        task = asyncio.create_task(engine.run())
        await until(lambda: engine.stats.done >= 8, timeout_s=120)
        assert pool.calls[first] > 0 and pool.calls[second] > 0  # both take calls
        os.kill(states[1].pid, signal.SIGKILL)
        await until(lambda: len(pool.up()) == 1, timeout_s=30)  # left out of the choice
        at_kill = pool.calls[second]
        await until(lambda: len(pool.up()) == 2, timeout_s=60)  # restarted, and found again
        await until(lambda: pool.calls[second] > at_kill, timeout_s=30)
        await asyncio.wait_for(task, 240)
        await pool.aclose()
        assert servers[1].state().restarts == 1
    assert engine.stats.done == 80 and engine.stats.failed == 0
    with JobQueue(artifacts) as queue:
        assert {j.status for j in queue.jobs(limit=100)} == {"done"}
    ends = {
        json.loads(p.read_text())["endpoint"]
        for p in (artifacts / "runs").glob("ask-*/ask/output.json")
    }
    assert ends == {first, second}


def test_a_night_of_several_servers_starts_each_with_its_share_of_the_cores(tmp_path):
    from pantheon.core.run.assemble import night_servers
    from pantheon.core.run.settings import Models, NightSettings

    settings = NightSettings(artifacts=tmp_path, models=Models(servers=2, code_model=None))
    servers = night_servers(settings, 4, announce=False)
    assert [s.name for s in servers] == [None, "pool-2"]
    cores = os.cpu_count() or 2
    assert all(s.config.threads == max(1, cores // 2) for s in servers)
    assert servers[0].dir != servers[1].dir  # each its own pid, port and log
    three = night_servers(
        NightSettings(artifacts=tmp_path, models=Models(servers=2, code_model="smollm2-135m")),
        4,
        announce=False,
    )
    assert [s.name for s in three] == [None, "pool-2", "code"]
    assert all(s.config.threads == max(1, cores // 3) for s in three)


def test_servers_with_an_endpoint_is_refused_clearly(tmp_path):
    out = pantheon(
        "night", "--demo", "--servers", "2", "--endpoint", "http://127.0.0.1:8101",
        "--artifacts", str(tmp_path / "a"), "--headless",
    )  # fmt: skip
    assert out.returncode != 0
    assert "name each server of yours with an --endpoint of its own" in out.stderr
    assert not (tmp_path / "a" / "pantheon.db").exists()  # refused before anything was made


def test_a_servers_port_is_outside_the_range_of_outgoing_connections():
    """A server restarted on its port must find it free: a port of the kernel's ephemeral range
    may by then be the local end of one of the pool's own connections to another server."""
    from pantheon.core.model.procs import ephemeral_range, free_port

    low, high = ephemeral_range()
    ports = [free_port() for _ in range(20)]
    assert len(set(ports)) == 20  # two servers starting at once never get the same port
    assert all(not low <= p <= high for p in ports)
