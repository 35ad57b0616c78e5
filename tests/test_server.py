"""The embedded model server for real: llama.cpp's llama-server with SmolLM2 on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import pantheon, pantheon_popen
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from pantheon.core import ModelServerError, ModelStoreError, ReplyError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import TEST_MODEL, ModelStore
from pantheon.core.model.safecall import CallLog, call_model
from pantheon.core.model.server import (
    ModelServer,
    ServerConfig,
    find_llama_binary,
    free_port,
    llama_environment,
)
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import CALLS_FILE

pytestmark = pytest.mark.slow


class Echo(BaseModel):
    text: str


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=150)


@pytest.fixture(scope="session")
def smollm2() -> str:
    ModelStore().pull(TEST_MODEL)
    return TEST_MODEL


@pytest.fixture(scope="session")
def server(tmp_path_factory, smollm2):
    artifacts = tmp_path_factory.mktemp("served")
    srv = ModelServer(artifacts, ServerConfig(model=smollm2, port=0, parallel=8, ctx_per_slot=1024))
    state = srv.start(timeout_s=120)
    yield state
    srv.stop()


def processing(metrics: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "llamacpp:requests_processing":
                return sample.value
    raise AssertionError("no llamacpp:requests_processing in /metrics")


def test_the_binary_needs_the_library_links_pantheon_makes():
    binary = find_llama_binary()
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    bare = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=env)
    fixed = subprocess.run(
        [str(binary), "--version"],
        capture_output=True,
        text=True,
        env=llama_environment(binary.parent, env),
    )
    assert fixed.returncode == 0, fixed.stderr
    assert "version:" in fixed.stderr
    if bare.returncode != 0:  # the package as pip built it
        assert "error while loading shared libraries" in bare.stderr


async def test_schema_constrained_replies_validate(server, tmp_path):
    log = CallLog(tmp_path)
    async with LLMClient(server.endpoint) as client:
        for name, age in (("Alice", 30), ("Bob", 41)):
            msgs = [{"role": "user", "content": f"Describe {name}, aged {age}, as JSON."}]
            person, reply = await call_model(client, msgs, Person, log=log, max_tokens=64)
            assert isinstance(person, Person)
            assert reply.completion_tokens > 0 and reply.prompt_tokens > 0
    calls = log.read()
    assert len(calls) == 2 and all(c["error"] is None and c["parsed"] for c in calls)
    assert calls[0]["model"] == TEST_MODEL


async def test_eight_concurrent_requests_really_overlap(server):
    async with LLMClient(server.endpoint) as client:
        msgs = [{"role": "user", "content": "Count from one to forty in words."}]
        calls = [asyncio.create_task(client.chat(msgs, max_tokens=96)) for _ in range(8)]
        peak = 0.0
        while not all(c.done() for c in calls):
            peak = max(peak, processing(await client.metrics_text()))
            await asyncio.sleep(0.05)
        replies = await asyncio.gather(*calls)
    assert all(r.completion_tokens > 0 for r in replies)
    assert peak > 1, f"requests never overlapped (peak requests_processing {peak})"


async def test_killing_the_server_mid_call_is_a_clear_error_and_a_restart_recovers(
    tmp_path, smollm2
):
    srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=0, parallel=2, ctx_per_slot=1024))
    state = srv.start(timeout_s=120)
    try:
        async with LLMClient(state.endpoint, retries=1, backoff_s=0.05) as client:
            msgs = [{"role": "user", "content": "Write a long story about a lighthouse."}]
            call = asyncio.create_task(client.chat(msgs, max_tokens=2000))
            await asyncio.sleep(0.5)
            os.kill(state.pid, signal.SIGKILL)
            with pytest.raises(ModelServerError) as info:
                await call
            assert f"model server at 127.0.0.1:{state.port} is not answering since" in str(
                info.value
            )
            srv.proc.wait(timeout=10)
            srv.config = srv.config.model_copy(update={"port": state.port})
            restarted = srv.restart_if_dead()
            assert restarted is not None and restarted.port == state.port
            reply = await client.chat([{"role": "user", "content": "Say hi."}], max_tokens=8)
            assert reply.completion_tokens > 0
    finally:
        srv.stop()


def test_a_taken_port_is_a_clear_error(tmp_path, smollm2):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=port))
        with pytest.raises(ModelServerError, match=f"port {port} on 127.0.0.1 is taken"):
            srv.start()
    assert srv.state() is None


def test_a_missing_binary_is_a_clear_error(tmp_path, smollm2, monkeypatch):
    monkeypatch.setenv("PANTHEON_LLAMA_BIN_DIR", str(tmp_path / "nowhere"))
    srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=free_port()))
    with pytest.raises(ModelServerError, match="llama-server is missing"):
        srv.start()


def test_a_model_file_with_a_wrong_hash_is_never_served(tmp_path, smollm2, monkeypatch):
    good = ModelStore().verified_path(smollm2)
    store = ModelStore(tmp_path / "store")
    store.root.mkdir()
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0x01
    (store.root / good.name).write_bytes(bytes(data))
    srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=free_port()), store=store)
    with pytest.raises(ModelStoreError, match="is refused: sha256"):
        srv.start()
    assert srv.proc is None and srv.state() is None


def test_serve_detach_status_stop_from_the_command_line(tmp_path, smollm2):
    a = str(tmp_path / "a")
    port = str(free_port())
    up = pantheon("serve", "--detach", "--model", smollm2, "--port", port, "--artifacts", a)
    try:
        assert up.returncode == 0, up.stderr
        assert f"model server ready at http://127.0.0.1:{port}" in up.stdout
        st = pantheon("serve", "--status", "--artifacts", a)
        assert st.returncode == 0 and ": healthy\n  supervised (pid" in st.stdout
        again = pantheon("serve", "--detach", "--model", smollm2, "--port", port, "--artifacts", a)
        assert "already running" in again.stdout
    finally:
        down = pantheon("serve", "--stop", "--artifacts", a)
    assert down.returncode == 0 and "model server stopped" in down.stdout
    st = pantheon("serve", "--status", "--artifacts", a)
    assert st.returncode == 1 and "no model server running" in st.stdout


def test_serve_refuses_a_public_host(tmp_path):
    out = pantheon("serve", "--host", "8.8.8.8", "--artifacts", str(tmp_path))
    assert out.returncode == 1 and "not a loopback or private address" in out.stderr


async def test_a_real_servers_metrics_during_a_real_run(server, tmp_path):
    """The sampler scrapes llama-server's own /metrics while four requests decode."""
    from pantheon.core.observe.metrics import MetricsSampler
    from pantheon.core.store.queue import JobQueue

    async with LLMClient(server.endpoint) as client:
        with JobQueue(tmp_path / "a") as queue:
            sampler = MetricsSampler(queue, llm=client)
            await sampler.poll()
            msgs = [{"role": "user", "content": "Count from one to thirty in words."}]
            calls = [asyncio.create_task(client.chat(msgs, max_tokens=64)) for _ in range(4)]
            while not all(c.done() for c in calls):
                await sampler.poll()
                await asyncio.sleep(0.2)
            await asyncio.gather(*calls)
            await sampler.poll()
            sample = sampler.sample(concurrency=4, merges_paused=False)
    assert sample["tokens"]["source"] == "llama.cpp /metrics"
    assert sample["tokens"]["generated"] > 0 and sample["tokens"]["prompt"] > 0
    assert sample["slots"] == 8  # llama-server's /props: the advice is bounded by them
    assert sample["batch"]["value"] >= 1
    assert sample["batch"]["source"].startswith("llama.cpp /metrics")


# -- servers die with their night -------------------------------------------------------------

OWNER = """
import sys, time
from pathlib import Path
from pantheon.core.model.server import ModelServer, ServerConfig
tied = sys.argv[2] == "tied"
srv = ModelServer(Path(sys.argv[1]), ServerConfig(model="{model}", port=0, parallel=1))
state = srv.start(timeout_s=120, tied=tied)
print(state.pid, flush=True)
if tied:
    time.sleep(3600)
"""


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """True when ``pid`` is no running process (gone, or a zombie nobody reaped) in time."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rfind(")") + 2] == "Z":
            return True
        time.sleep(0.1)
    return False


def _owner(artifacts, smollm2, how: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER.format(model=smollm2), str(artifacts), how],
        stdout=subprocess.PIPE,
        text=True,
    )
    return proc, int(proc.stdout.readline())


def test_a_server_dies_with_the_process_that_started_it_even_on_kill_9(tmp_path, smollm2):
    owner, pid = _owner(tmp_path, smollm2, "tied")
    assert not _gone(pid, within_s=0.5), "the server runs while its owner does"
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    assert _gone(pid), f"model server {pid} outlived the process that started it"


def test_a_server_left_running_is_named_an_orphan_then_adopted_and_stopped(tmp_path, smollm2):
    owner, pid = _owner(tmp_path, smollm2, "kept")
    owner.wait()
    owner.stdout.close()
    try:
        out = pantheon("serve", "--status", "--artifacts", str(tmp_path))
        assert out.returncode == 0, out.stderr
        assert f"ORPHAN: the process that started it (pid {owner.pid}) is gone" in out.stdout
        srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=0))
        state = srv.ensure()
        assert state.pid == pid and srv.started_here, "adopted: this night stops it"
        assert state.owner_pid == os.getpid()
        out = pantheon("serve", "--status", "--artifacts", str(tmp_path))
        assert "ORPHAN" not in out.stdout and f"works for pid {os.getpid()}" in out.stdout
        assert srv.stop()
        assert _gone(pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_kill_9_of_a_night_leaves_no_model_server_behind(tmp_path, smollm2):
    artifacts = tmp_path / "a"
    night = pantheon_popen(
        "night", "--demo", "--docs", "2", "--code", "0", "--model", smollm2, "--headless",
        "--artifacts", str(artifacts),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        state = None
        deadline = time.monotonic() + 180
        while state is None or not ModelServer(artifacts).healthy(state):
            assert night.poll() is None, "the night ended before its server was up"
            assert time.monotonic() < deadline, "the night's server never came up"
            time.sleep(0.2)
            state = ModelServer(artifacts).state()
    finally:
        night.send_signal(signal.SIGKILL)
        night.wait()
    assert _gone(state.pid), f"the night's model server {state.pid} outlived kill -9 of the night"


async def test_served_supervises_the_block_and_stops_what_it_started(tmp_path, smollm2):
    from pantheon.core.model.lifecycle import served

    srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=0, parallel=1))
    async with served([srv], supervise_every_s=0.2) as [state]:
        assert srv.healthy(state) and srv.started_here
        os.kill(state.pid, signal.SIGKILL)  # dies mid-block: the supervisor starts it again
        for _ in range(300):
            new = srv.state()
            if new is not None and new.pid != state.pid and srv.healthy(new):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the dead server was not started again")
        assert new.restarts == 1
    assert _gone(new.pid) and srv.state() is None, "stopped on the way out"


async def test_each_call_records_the_prompt_tokens_the_server_took_from_its_cache(server, tmp_path):
    """Two reviewers of one change share everything up to their own instructions: the second
    call's shared prefix comes from llama-server's cache, by its own count (timings.cache_n)."""
    from pantheon.core.observe.metrics import MetricsSampler, sample_text
    from pantheon.core.store.queue import JobQueue

    shared = "Change:\n```diff\n" + "\n".join(f"+line {i} of the diff" for i in range(60)) + "\n```"
    async with LLMClient(server.endpoint) as client:
        with JobQueue(tmp_path / "a") as queue:
            sampler = MetricsSampler(queue, llm=client)
            replies = []
            for ask in ("Say yes.", "Say no."):
                msgs = [{"role": "user", "content": f"{shared}\n\n{ask}"}]
                replies.append(await client.chat(msgs, max_tokens=8, temperature=0.0))
            sample = sampler.sample(concurrency=1, merges_paused=False)
    first, second = replies
    assert first.cached_tokens is not None and second.cached_tokens is not None
    assert second.cached_tokens > 0.6 * second.prompt_tokens, (first, second)
    assert second.cached_tokens > first.cached_tokens
    # the live sample's cache share is the server's own count over those calls
    cache = sample["cache"]
    assert cache["cached"] == first.cached_tokens + second.cached_tokens
    assert cache["prompt"] == first.prompt_tokens + second.prompt_tokens
    assert cache["share"] == round(cache["cached"] / cache["prompt"], 3) and cache["share"] > 0.3
    assert f"cache {cache['share']:.0%} of prompt" in sample_text(
        {**sample, "tokens": {"source": "x"}}
    )


def _faulting_binary(tmp_path: Path, *, always: bool = False, sig: str = "ILL") -> Path:
    """A llama-server that dies of SIGILL (or ``sig``) as a build with AMX kernels does on a CPU
    that advertises AMX but faults on it — unless it is told --no-repack (``always``: even
    then)."""
    real = find_llama_binary()
    libs = llama_environment(real.parent)["LD_LIBRARY_PATH"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "llama-server"
    spared = (
        "" if always else f'*" --no-repack "*) exec env LD_LIBRARY_PATH="{libs}" "{real}" "$@";;'
    )
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in {spared} *) kill -{sig} $$;; esac\n')
    wrapper.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("sig", ["ILL", "SEGV"])
async def test_a_cpu_that_faults_on_repacked_weights_gets_a_server_without_them(
    tmp_path, smollm2, monkeypatch, caplog, sig
):
    model = str(ModelStore().verified_path(smollm2))
    monkeypatch.setenv("PANTHEON_LLAMA_BIN_DIR", str(_faulting_binary(tmp_path, sig=sig)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    srv = ModelServer(tmp_path / "a", ServerConfig(model=model, port=0, parallel=2))
    try:
        state = srv.start(timeout_s=120)
        assert "--no-repack" in state.command
        assert f"died (SIG{sig}) while warming up" in caplog.text
        async with LLMClient(state.endpoint, model=state.alias) as client:
            reply = await client.chat([{"role": "user", "content": "Say hi."}], max_tokens=8)
        assert reply.completion_tokens > 0
    finally:
        srv.stop()
    # the next server of this build starts without repacking at once: nothing dies first
    caplog.clear()
    again = ModelServer(tmp_path / "b", ServerConfig(model=model, port=0, parallel=2))
    try:
        assert "--no-repack" in again.start(timeout_s=120).command
        assert "while warming up" not in caplog.text
    finally:
        again.stop()


def test_a_server_that_faults_even_without_repacking_is_a_clear_error(
    tmp_path, smollm2, monkeypatch
):
    model = str(ModelStore().verified_path(smollm2))
    monkeypatch.setenv("PANTHEON_LLAMA_BIN_DIR", str(_faulting_binary(tmp_path, always=True)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    srv = ModelServer(tmp_path / "a", ServerConfig(model=model, port=0))
    with pytest.raises(ModelServerError, match="exited with code -4 while starting"):
        srv.start(timeout_s=60)


PASSAGE = (
    "The night queue holds every job of the night. Each job runs its flow's nodes in order, "
    "and each node writes what it did into the artifacts directory, so a night that stops "
    "can be resumed where it stopped and nothing it wrote is lost."
)


async def test_the_server_drafts_tokens_from_its_context_and_each_call_says_how_many(
    server, tmp_path
):
    """Asked to repeat a passage it was shown, the model's reply is mostly text the context
    holds: llama-server drafts it by n-gram lookup and accepts much of it, and the call's row
    records both counts."""
    assert "--spec-type" in server.command
    ask = [
        {
            "role": "user",
            "content": f'Reply with JSON {{"text": "..."}}, the text being exactly this:\n\n'
            f"{PASSAGE}\n\n{PASSAGE}",
        }
    ]
    async with LLMClient(server.endpoint) as client:
        with contextlib.suppress(ReplyError):  # a garbled echo is still a recorded call
            await call_model(client, ask, Echo, log=CallLog(tmp_path), max_tokens=160)
    rows, _ = read_jsonl(tmp_path / CALLS_FILE)
    (row,) = rows
    assert row["drafted_tokens"] > 0, row
    assert 0 < row["accepted_drafts"] <= row["drafted_tokens"]


async def test_a_server_without_speculation_drafts_nothing(tmp_path, smollm2):
    srv = ModelServer(tmp_path, ServerConfig(model=smollm2, port=0, parallel=1, speculative="none"))
    state = srv.start(timeout_s=120)
    try:
        assert "--spec-type" not in state.command
        ask = [{"role": "user", "content": f"Repeat this text exactly:\n\n{PASSAGE}"}]
        async with LLMClient(state.endpoint) as client:
            reply = await client.chat(ask, max_tokens=60, temperature=0.0)
        assert reply.completion_tokens > 0 and reply.drafted is None
    finally:
        srv.stop()
