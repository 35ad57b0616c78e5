"""The OpenVINO backend: Pantheon's own OpenAI-compatible server over OpenVINO GenAI, against the
real thing on loopback with SmolLM2 (a Q4_1 GGUF file OpenVINO's reader takes)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import signal
import struct
from pathlib import Path

import httpx
import pytest
from helpers import pantheon
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from pantheon.core.errors import ModelServerError, ModelStoreError
from pantheon.core.model.client import LLMClient
from pantheon.core.model.files import TEST_MODEL, ModelStore
from pantheon.core.model.ggufinfo import openvino_problem, read_gguf_info
from pantheon.core.model.safecall import CallLog, call_model
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.observe.metrics import read_samples
from pantheon.core.observe.scrape import ServerScraper

HAVE_OPENVINO = importlib.util.find_spec("openvino_genai") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="the openvino extra is not installed (pip install '.[openvino]')"
)


def gguf_file(path: Path, arch: str, tensors: list[tuple[str, int]], *, cut: int = 0) -> Path:
    """A GGUF header as llama.cpp writes one: the architecture, then each tensor's name, shape
    and ggml type (no data: only the header is read)."""

    def string(s: str) -> bytes:
        raw = s.encode()
        return struct.pack("<Q", len(raw)) + raw

    body = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 3)
    body += string("general.architecture") + struct.pack("<I", 8) + string(arch)
    body += string("general.name") + struct.pack("<I", 8) + string("tiny")
    body += string("tokenizer.ggml.scores") + struct.pack("<IIQ", 9, 6, 3) + b"\0" * 12
    for name, kind in tensors:
        body += string(name) + struct.pack("<I", 2) + struct.pack("<QQ", 32, 32)
        body += struct.pack("<IQ", kind, 0)
    path.write_bytes(body[: len(body) - cut] if cut else body)
    return path


def test_the_header_says_what_a_real_model_file_holds():
    path = ModelStore().pull(TEST_MODEL)
    info = read_gguf_info(path)
    assert info.architecture == "llama"
    assert info.tensor_types == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    assert info.shape["block_count"] == 30
    assert info.kv_bytes_per_token() == 2 * 30 * 3 * (576 // 9) * 2  # k and v, f16, 3 kv heads
    assert openvino_problem(path) is None


def test_a_file_openvino_cannot_read_is_named_with_its_tensor_types(tmp_path):
    path = gguf_file(tmp_path / "m.gguf", "qwen2", [("a", 6), ("b", 6), ("c", 12), ("d", 0)])
    problem = openvino_problem(path)
    assert problem is not None
    assert "2 Q5_0 of 4 tensors" in problem and "Q4_K" in problem
    phi = gguf_file(tmp_path / "phi.gguf", "phi3", [("a", 2)])
    assert "architecture is phi3" in openvino_problem(phi)


def test_a_cut_or_foreign_file_is_a_clear_error(tmp_path):
    cut = gguf_file(tmp_path / "cut.gguf", "llama", [("a", 2)], cut=5)
    with pytest.raises(ModelStoreError, match="ends inside its GGUF header"):
        read_gguf_info(cut)
    other = tmp_path / "notes.gguf"
    other.write_text("hello")
    assert "not a GGUF model file" in openvino_problem(other)


@needs_openvino
def test_a_model_openvino_cannot_read_is_refused_before_any_server_starts(tmp_path):
    model = gguf_file(tmp_path / "q5.gguf", "qwen2", [("a", 6), ("b", 12)])
    srv = ModelServer(tmp_path / "art", ServerConfig(backend="openvino", model=str(model), port=0))
    with pytest.raises(ModelServerError) as info:
        srv.start(timeout_s=30)
    assert f"OpenVINO cannot serve {model}" in info.value.message
    assert "1 Q5_0 of 2 tensors" in info.value.message
    assert "llama.cpp" in (info.value.hint or "")
    assert srv.state() is None and srv.proc is None


@needs_openvino
def test_adapters_are_refused_on_openvino_with_the_reason(tmp_path):
    path = ModelStore().pull(TEST_MODEL)
    cfg = ServerConfig(backend="openvino", model=str(path), port=0, adapters=[str(tmp_path)])
    with pytest.raises(ModelServerError, match="serves no LoRA adapters"):
        ModelServer(tmp_path / "art", cfg).start(timeout_s=30)


# -- the real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ov_server(tmp_path_factory):
    if not HAVE_OPENVINO:
        pytest.skip("the openvino extra is not installed")
    ModelStore().pull(TEST_MODEL)
    artifacts = tmp_path_factory.mktemp("ov")
    srv = ModelServer(
        artifacts,
        ServerConfig(backend="openvino", model=TEST_MODEL, port=0, parallel=4, ctx_per_slot=1024),
    )
    state = srv.start(timeout_s=120)
    yield srv, state
    srv.stop()


def figure(metrics: str, name: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"no {name} in /metrics")


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=150)


pytestmark = pytest.mark.slow


async def test_schema_constrained_replies_validate(ov_server, tmp_path):
    _, state = ov_server
    log = CallLog(tmp_path)
    async with LLMClient(state.endpoint, model=state.alias, backend="openvino") as client:
        for name, age in (("Alice", 30), ("Bob", 41), ("Chloé", 7)):
            msgs = [{"role": "user", "content": f"Describe {name}, aged {age}, as JSON."}]
            person, reply = await call_model(client, msgs, Person, log=log, max_tokens=64)
            assert isinstance(person, Person)
            assert reply.finish_reason == "stop"
            assert reply.prompt_tokens > 10 and reply.completion_tokens > 0
    calls = log.read()
    assert len(calls) == 3 and all(c["error"] is None and c["parsed"] for c in calls)
    assert calls[0]["model"] == TEST_MODEL


async def test_concurrent_requests_overlap_in_the_servers_own_metrics(ov_server):
    _, state = ov_server
    async with LLMClient(state.endpoint, model=state.alias, backend="openvino") as client:
        before = figure(await client.metrics_text(), "openvino:generation_tokens_total")
        msgs = [{"role": "user", "content": "Count from one to forty in words."}]
        extra = {"ignore_eos": True}
        calls = [
            asyncio.create_task(client.chat(msgs, max_tokens=48, seed=i, extra=extra))
            for i in range(4)
        ]
        peak = 0.0
        while not all(c.done() for c in calls):
            peak = max(peak, figure(await client.metrics_text(), "openvino:num_requests_running"))
            await asyncio.sleep(0.05)
        replies = await asyncio.gather(*calls)
        after = figure(await client.metrics_text(), "openvino:generation_tokens_total")
    assert [r.completion_tokens for r in replies] == [48] * 4
    assert all(r.finish_reason == "length" for r in replies)
    assert peak > 1, f"requests never overlapped (peak num_requests_running {peak})"
    assert after - before == 4 * 48


async def test_the_scraper_reads_batch_and_tokens_from_the_openvino_dialect(ov_server):
    _, state = ov_server
    async with (
        httpx.AsyncClient() as http,
        LLMClient(state.endpoint, model=state.alias, backend="openvino") as client,
    ):
        scraper = ServerScraper(state.endpoint, http)
        await scraper.poll()
        msgs = [{"role": "user", "content": "Name three rivers."}]
        calls = [asyncio.create_task(client.chat(msgs, max_tokens=32, seed=i)) for i in range(3)]
        while not all(c.done() for c in calls):
            await scraper.poll()
            await asyncio.sleep(0.1)
        await asyncio.gather(*calls)
        await scraper.poll()
        figures = scraper.figures()
    assert figures["tokens"]["source"] == "openvino /metrics"
    assert figures["tokens"]["generated"] > 0
    assert figures["batch"]["value"] > 0


async def test_sampled_choices_and_a_streamed_answer_agree_with_one_body(ov_server):
    _, state = ov_server
    msgs = [{"role": "user", "content": "Name a fruit."}]
    async with LLMClient(state.endpoint, model=state.alias, backend="openvino") as streamed:
        replies = await streamed.chat_n(msgs, n=3, max_tokens=16, temperature=0.9, seed=3)
        greedy = await streamed.chat(msgs, max_tokens=16)
    assert len(replies) == 3 and all(r.text and r.completion_tokens > 0 for r in replies)
    # sampled choices under a schema: each its own grammar (one request's n sequences share
    # OpenVINO's grammar state and come out garbled)
    schema = {
        "type": "object",
        "properties": {"fruit": {"type": "string", "maxLength": 20}},
        "required": ["fruit"],
        "additionalProperties": False,
    }
    async with LLMClient(state.endpoint, model=state.alias, backend="openvino") as client:
        shaped = await client.chat_n(
            msgs, n=4, max_tokens=48, temperature=0.9, seed=5, schema=schema
        )
    assert len(shaped) == 4
    for reply in shaped:
        assert reply.finish_reason == "stop", reply.text
        assert set(json.loads(reply.text)) == {"fruit"}, reply.text
    async with LLMClient(
        state.endpoint, model=state.alias, backend="openvino", stream=False
    ) as plain:
        whole = await plain.chat(msgs, max_tokens=16)
    assert whole.text == greedy.text
    assert whole.completion_tokens == greedy.completion_tokens


async def test_bad_requests_get_the_reason_and_the_server_goes_on(ov_server):
    _, state = ov_server
    url = state.endpoint + "/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as http:
        resp = await http.post(url, content=b"{not json")
        assert resp.status_code == 400 and "not JSON" in resp.json()["error"]["message"]
        resp = await http.post(url, json={"messages": []})
        assert resp.status_code == 400 and "messages" in resp.json()["error"]["message"]
        long = [{"role": "user", "content": "lighthouse " * 1500}]
        resp = await http.post(url, json={"messages": long, "max_tokens": 8})
        assert resp.status_code == 400
        assert resp.json()["error"]["type"] == "exceed_context_size_error"
        resp = await http.post(
            url, json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        )
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] > 0
        models = (await http.get(state.endpoint + "/v1/models")).json()
        assert models["data"][0]["id"] == TEST_MODEL
    async with LLMClient(state.endpoint, backend="openvino") as client:
        assert await client.server_slots() == 4


async def test_a_client_that_goes_away_frees_its_slot(ov_server):
    _, state = ov_server
    body = {
        "messages": [{"role": "user", "content": "Write a long story."}],
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", state.endpoint + "/v1/chat/completions", json=body) as resp:
            seen = 0
            async for line in resp.aiter_lines():
                seen += line.startswith("data:")
                if seen > 5:
                    break
        for _ in range(100):
            text = (await http.get(state.endpoint + "/metrics")).text
            if figure(text, "openvino:num_requests_running") == 0:
                break
            await asyncio.sleep(0.05)
        assert figure(text, "openvino:num_requests_running") == 0
        assert figure(text, "openvino:generation_tokens_total") < 10_000


@needs_openvino
async def test_a_killed_server_is_restarted_and_answers_again(tmp_path):
    srv = ModelServer(
        tmp_path,
        ServerConfig(backend="openvino", model=TEST_MODEL, port=0, parallel=2, ctx_per_slot=512),
    )
    state = srv.start(timeout_s=120)
    try:
        assert state.backend == "openvino" and "ovserve" in " ".join(state.command)
        os.kill(state.pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)
        assert not srv.healthy()
        srv.config = srv.config.model_copy(update={"port": state.port})
        again = srv.restart_if_dead()
        assert again is not None and again.restarts == 1 and again.pid != state.pid
        async with LLMClient(again.endpoint, model=again.alias, backend="openvino") as client:
            reply = await client.chat([{"role": "user", "content": "Say hi."}], max_tokens=8)
        assert reply.completion_tokens > 0
        log = Path(again.log).read_text()
        assert "loaded SmolLM2-135M-Instruct.Q4_1.gguf on CPU" in log
        assert json.loads(Path(srv.state_path).read_text())["restarts"] == 1
    finally:
        srv.stop()


# -- the night on OpenVINO ----------------------------------------------------------------------


@needs_openvino
def test_a_night_refuses_a_model_openvino_cannot_read_before_it_starts(tmp_path):
    model = gguf_file(tmp_path / "q5.gguf", "qwen2", [("a", 6), ("b", 12)])
    out = pantheon(
        "night",
        "--demo",
        "--backend",
        "openvino",
        "--model",
        str(model),
        "--docs",
        "1",
        "--code",
        "0",
        "--headless",
        "--artifacts",
        str(tmp_path / "art"),
        timeout=300,
    )
    assert out.returncode != 0
    assert f"OpenVINO cannot serve {model}" in out.stderr and "1 Q5_0 of 2 tensors" in out.stderr
    assert not (tmp_path / "art" / "server" / "server.json").exists()
    assert not (tmp_path / "art" / "runs").exists() or not any(
        (tmp_path / "art" / "runs").iterdir()
    )


def test_promoted_adapters_are_said_not_served_on_openvino(tmp_path, monkeypatch, caplog):
    from pantheon.core.run import assemble
    from pantheon.core.run.settings import Models, NightSettings

    monkeypatch.setattr(assemble, "adapter_files", lambda *a, **k: ["/x/codegen.fix-1.gguf"])
    settings = NightSettings(artifacts=tmp_path, models=Models(backend="openvino", code_model=None))
    with caplog.at_level("WARNING"):
        servers = assemble.night_servers(settings, 4)
    assert [s.config.backend for s in servers] == ["openvino"]
    assert servers[0].config.adapters == []
    assert "codegen.fix-1 are not served: the OpenVINO backend serves no LoRA" in caplog.text
    llama = assemble.night_servers(
        NightSettings(artifacts=tmp_path, models=Models(code_model=None)), 4
    )
    assert llama[0].config.adapters == ["/x/codegen.fix-1.gguf"]


@needs_openvino
def test_a_demo_night_runs_on_the_openvino_server(tmp_path):
    artifacts = tmp_path / "night"
    out = pantheon(
        "night",
        "--demo",
        "--backend",
        "openvino",
        "--model",
        TEST_MODEL,
        "--docs",
        "2",
        "--code",
        "0",
        "--headless",
        "--artifacts",
        str(artifacts),
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert "starting the embedded model server (smollm2-135m, openvino)" in out.stderr
    assert "pass rate  " in out.stdout
    # the night's samples took the batch and tokens/s from the OpenVINO server's own /metrics
    samples = read_samples(artifacts)
    assert any((s.get("tokens") or {}).get("source") == "openvino /metrics" for s in samples)
    calls = [
        json.loads(line)
        for path in (artifacts / "runs").glob("*/*/calls.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(calls) >= 2 and all(c["model"] == TEST_MODEL for c in calls)
    assert sum(c["completion_tokens"] for c in calls) > 0
    assert "ovserve" in (artifacts / "server" / "server.log").read_text()
    assert not (artifacts / "server" / "server.json").exists()  # stopped with the night


async def test_a_one_token_reply_carries_its_likeliest_first_tokens_logprobs(ov_server):
    """The OpenVINO server answers logprobs for a one-token reply: the likeliest first tokens
    (a one-step beam search), most likely first, each a real log probability (they sum to at
    most 1), the reply being the first of them — in one body or streamed, and a scored verdict
    reads its P(pass) from them. A longer reply asking for logprobs is refused with why."""
    from pantheon.core.model.scoring import score_verdict

    _, state = ov_server
    url = state.endpoint + "/v1/chat/completions"
    ask = [
        {"role": "system", "content": "You answer with exactly one word: pass or fail."},
        {"role": "user", "content": "2 + 2 = 4. Is that right? Answer pass or fail."},
    ]
    body = {"messages": ask, "max_tokens": 1, "temperature": 0, "logprobs": True}
    async with httpx.AsyncClient(timeout=120) as http:
        resp = await http.post(url, json={**body, "top_logprobs": 20})
        assert resp.status_code == 200, resp.text
        choice = resp.json()["choices"][0]
        [first] = choice["logprobs"]["content"]
        top = first["top_logprobs"]
        assert len(top) == 20 and len({t["token"] for t in top}) == 20
        probs = [math.exp(t["logprob"]) for t in top]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert choice["message"]["content"] == first["token"] == top[0]["token"]
        greedy = await http.post(url, json={"messages": ask, "max_tokens": 1, "temperature": 0})
        assert greedy.json()["choices"][0]["message"]["content"] == first["token"]
        refused = await http.post(url, json={**body, "max_tokens": 8})
        assert refused.status_code == 400
        assert "logprobs for a one-token reply only" in refused.json()["error"]["message"]
    async with LLMClient(state.endpoint, model=state.alias, backend="openvino") as client:
        score = await score_verdict(client, ask)  # the client streams: the same tokens
    assert 0.0 <= score.p_pass <= 1.0 and 0.0 < score.mass <= 1.0
    assert score.said == first["token"]
    mass = {"pass": 0.0, "fail": 0.0}
    for t in top:
        word = t["token"].strip().lower()
        for w in mass:
            if word.startswith(w) or (len(word) >= 3 and w.startswith(word)):
                mass[w] += math.exp(t["logprob"])
    assert sum(mass.values()) > 0, top
    assert score.p_pass == pytest.approx(mass["pass"] / sum(mass.values()), abs=0.02)
