"""The model client over httpx.MockTransport: request shaping, retries, clear errors."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from pantheon.core import ModelServerError
from pantheon.core.errors import ModelStalled
from pantheon.core.model.client import Backend, LLMClient

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
MSGS = [{"role": "user", "content": "hi"}]


def completion(text='{"a": 1}', **extra):
    return {
        "model": "qwen",
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3},
        **extra,
    }


def make(handler, **kw):
    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    kw.setdefault("backoff_s", 0.001)
    return LLMClient(kw.pop("endpoint", "http://127.0.0.1:8011/v1"), http=http, **kw), http


async def test_llama_cpp_gets_openai_json_schema_and_lora_ids():
    bodies = []

    def handler(request):
        assert request.url.path == "/v1/chat/completions"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json=completion())

    client, http = make(handler, adapters={"codegen-v1": 0, "review-v2": 1})
    reply = await client.chat(MSGS, schema=SCHEMA, adapter="review-v2", max_tokens=64)
    await http.aclose()
    body = bodies[0]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    }
    assert body["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]
    assert body["temperature"] == 0.0 and body["seed"] == 0 and body["max_tokens"] == 64
    assert reply.text == '{"a": 1}' and reply.adapter == "review-v2"
    assert (reply.prompt_tokens, reply.completion_tokens, reply.model) == (5, 3, "qwen")


def test_a_request_without_an_adapter_turns_every_loaded_one_off():
    """llama-server applies loaded adapters at their global scale unless the request says not."""
    client = LLMClient("http://127.0.0.1:8011", adapters={"codegen-v1": 0, "review-v2": 1})
    assert client.shape(MSGS)["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]
    assert "lora" not in LLMClient("http://127.0.0.1:8011").shape(MSGS)


def test_vllm_and_llama_cpp_python_shapes():
    client = LLMClient("http://127.0.0.1:8000", backend=Backend.VLLM, model="qwen")
    body = client.shape(MSGS, schema=SCHEMA, adapter="codegen-v1")
    assert body["structured_outputs"] == {"json": SCHEMA}
    assert body["model"] == "codegen-v1"  # vLLM: a LoRA module is chosen by name
    assert "response_format" not in body and "lora" not in body
    pyclient = LLMClient("http://127.0.0.1:8000", backend="llama-cpp-python")
    assert pyclient.shape(MSGS, schema=SCHEMA)["response_format"] == {
        "type": "json_object",
        "schema": SCHEMA,
    }
    with pytest.raises(ModelServerError, match="does not choose a LoRA adapter"):
        pyclient.shape(MSGS, adapter="x")


async def test_an_unknown_adapter_is_looked_up_then_refused():
    def handler(request):
        if request.url.path == "/lora-adapters":
            return httpx.Response(200, json=[{"id": 0, "path": "/a/codegen-v1.gguf", "scale": 0}])
        return httpx.Response(200, json=completion())

    client, http = make(handler)
    reply = await client.chat(MSGS, adapter="codegen-v1")
    assert reply.adapter == "codegen-v1" and client.adapters == {"codegen-v1": 0}
    with pytest.raises(ModelServerError, match="adapter 'nope' is not loaded"):
        await client.chat(MSGS, adapter="nope")
    await http.aclose()


async def test_500s_then_success_is_retried():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "Loading model"}})
        return httpx.Response(200, json=completion())

    client, http = make(handler, retries=4)
    reply = await client.chat(MSGS)
    await http.aclose()
    assert len(calls) == 3 and reply.attempts == 3


async def test_connection_refused_ends_in_one_clear_error():
    calls = []

    def handler(request):
        calls.append(1)
        raise httpx.ConnectError("[Errno 111] Connection refused")

    client, http = make(handler, retries=2)
    with pytest.raises(ModelServerError) as info:
        await client.chat(MSGS)
    await http.aclose()
    assert len(calls) == 3
    msg = str(info.value)
    assert msg.startswith("model server at 127.0.0.1:8011 is not answering since ")
    assert "3 attempt(s); last: ConnectError" in msg
    assert "pantheon serve" in msg


async def test_a_4xx_is_not_retried_and_says_why():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(
            400, json={"error": {"message": "the request exceeds the available context size"}}
        )

    client, http = make(handler)
    with pytest.raises(ModelServerError, match="HTTP 400: the request exceeds the available"):
        await client.chat(MSGS)
    await http.aclose()
    assert len(calls) == 1


async def test_an_answer_that_is_not_a_completion():
    def handler(request):
        return httpx.Response(200, text="<html><body>proxy login</body></html>")

    client, http = make(handler)
    with pytest.raises(ModelServerError, match="not a chat completion: <html>"):
        await client.chat(MSGS)
    await http.aclose()


async def test_an_empty_content_is_an_empty_text_not_a_crash():
    def handler(request):
        return httpx.Response(
            200, json={"choices": [{"message": {"content": None}, "finish_reason": "length"}]}
        )

    client, http = make(handler)
    reply = await client.chat(MSGS)
    await http.aclose()
    assert reply.text == "" and reply.finish_reason == "length" and reply.prompt_tokens == 0


async def test_n_completions_in_one_request_each_with_its_own_tokens():
    bodies = []

    def handler(request):
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": json.loads(request.content)["content"]})
        body = json.loads(request.content)
        bodies.append(body)
        n = body.get("n", 1)
        return httpx.Response(
            200,
            json={
                "choices": [
                    {"index": i, "message": {"content": "x" * (i + 2)}, "finish_reason": "stop"}
                    for i in range(n)
                ],
                "usage": {"prompt_tokens": 50, "completion_tokens": 2},  # the first choice's
            },
        )

    client, http = make(handler)
    replies = await client.chat_n(MSGS, n=3, temperature=0.7, seed=1)
    await http.aclose()
    assert len(bodies) == 1 and bodies[0]["n"] == 3 and bodies[0]["seed"] == 1
    assert [r.text for r in replies] == ["xx", "xxx", "xxxx"]
    assert [r.completion_tokens for r in replies] == [2, 3, 4]
    assert [r.prompt_tokens for r in replies] == [50, 0, 0], "the prompt is counted once"


async def test_a_server_without_n_is_asked_for_the_rest_one_at_a_time():
    seeds = []

    def handler(request):
        body = json.loads(request.content)
        seeds.append((body["seed"], body.get("n", 1)))
        return httpx.Response(200, json=completion(f"reply {body['seed']}"))  # always one choice

    client, http = make(handler)
    replies = await client.chat_n(MSGS, n=3, temperature=0.7, seed=5)
    await http.aclose()
    assert seeds == [(5, 3), (6, 1), (7, 1)]
    assert [r.text for r in replies] == ["reply 5", "reply 6", "reply 7"]


async def test_more_choices_than_the_server_has_slots_are_asked_for_in_parts():
    asked = []

    def handler(request):
        body = json.loads(request.content)
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": [1]})
        n = body.get("n", 1)
        asked.append((body["seed"], n))
        if n > 4:
            return httpx.Response(
                400,
                json={
                    "error": {
                        "message": f"Field 'n': Value must be between 1 <= value <= 4, but got {n}"
                    }
                },
            )
        return httpx.Response(
            200,
            json={
                "choices": [{"index": i, "message": {"content": "x"}} for i in range(n)],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1},
            },
        )

    client, http = make(handler)
    replies = await client.chat_n(MSGS, n=7, temperature=0.7, seed=1)
    await http.aclose()
    assert len(replies) == 7
    assert asked == [(1, 7), (1, 4), (5, 3)], "refused, then the server's four, then the rest"
    assert client.max_choices == 4


# -- streaming, stalls, deadlines and Retry-After ---------------------------------------------


def sse(*chunks):
    """A text/event-stream body of these chunks, then [DONE]."""
    body = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def delta(index, content=None, finish=None):
    return {"choices": [{"index": index, "delta": {"content": content}, "finish_reason": finish}]}


async def test_a_streamed_answer_is_read_as_one_completion_with_each_choice_its_own_tokens():
    bodies = []

    def handler(request):
        bodies.append(json.loads(request.content))
        return sse(
            {"model": "qwen", **delta(1, '{"a"')},
            delta(0, '{"a": 1}'),
            delta(1, ": 22}"),
            delta(0, None, "stop"),
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}},
            delta(1, None, "length"),
            {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 7}},
        )

    client, http = make(handler)
    replies = await client.chat_n(MSGS, n=2, schema=SCHEMA, max_tokens=32)
    await http.aclose()
    assert bodies[0]["stream"] is True and bodies[0]["n"] == 2
    assert [r.text for r in replies] == ['{"a": 1}', '{"a": 22}']
    assert [r.finish_reason for r in replies] == ["stop", "length"]
    assert [r.completion_tokens for r in replies] == [3, 7]  # each its own, from the stream
    assert replies[0].prompt_tokens == 9 and replies[0].model == "qwen"


async def test_streamed_tokens_are_counted_as_they_come_not_when_the_call_ends():
    """What ``--concurrency auto`` measures: the completions' total moves once per reply."""
    gate = asyncio.Event()

    async def body():
        for piece in ('{"a"', ": 1", "}"):
            yield f"data: {json.dumps(delta(0, piece))}\n\n".encode()
        await gate.wait()
        yield f"data: {json.dumps(delta(0, None, 'stop'))}\n\n".encode()
        usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}
        yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()

    def handler(request):
        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    client, http = make(handler)
    call = asyncio.create_task(client.chat(MSGS))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if client.tokens_seen_total == 3:
            break
    assert (client.tokens_seen_total, client.completion_tokens_total) == (3, 0)
    gate.set()
    reply = await call
    assert reply.text == '{"a": 1}'
    assert (client.tokens_seen_total, client.completion_tokens_total) == (3, 3)
    # a reply that was not streamed counts when it ends
    plain, http2 = make(lambda r: httpx.Response(200, json=completion()), stream=False)
    await plain.chat(MSGS)
    assert plain.tokens_seen_total == plain.completion_tokens_total > 0
    await http.aclose()
    await http2.aclose()


async def test_an_error_in_the_stream_is_the_servers_error():
    client, http = make(lambda r: sse({"error": {"message": "context overflow"}}))
    with pytest.raises(ModelServerError, match="while streaming: context overflow"):
        await client.chat(MSGS)
    await http.aclose()


async def test_a_call_that_hangs_is_cancelled_posted_once_more_then_fails_as_a_stall(caplog):
    """The server takes the request and never answers: no silent wait, no third post, and
    never two copies of the call on the server at once."""
    out = {"now": 0, "most": 0, "posts": 0}

    async def handler(request):
        if request.url.path == "/metrics":
            return httpx.Response(404)
        out["posts"] += 1
        out["now"] += 1
        out["most"] = max(out["most"], out["now"])
        try:
            await asyncio.sleep(3600)
        finally:
            out["now"] -= 1  # the client closed the request: the server drops it
        return httpx.Response(200, json=completion())

    client, http = make(handler, stall_s=0.3, warn_s=0.1)
    t0 = time.monotonic()
    with (
        caplog.at_level("INFO", logger="pantheon.core.model"),
        pytest.raises(ModelStalled) as caught,
    ):
        await client.chat(MSGS, label="docops-000001/write")
    waited = time.monotonic() - t0
    await http.aclose()
    assert out["posts"] == 2 and out["most"] == 1 and out["now"] == 0
    assert 0.6 <= waited < 3.0, "two stalls of 0.3 s, not the read timeout's minutes"
    assert "no progress for" in caught.value.message and "posted twice" in caught.value.message
    assert caught.value.waited_s == pytest.approx(waited, abs=0.5)
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("docops-000001/write: waiting on the model for") for m in logged)
    assert any("posted again after a stall" in m for m in logged)
    assert client.in_flight == 0 and client.watches == {}


async def test_a_silent_call_lives_while_the_servers_counters_move():
    """A request waiting for a slot, or reading a long prompt, sends nothing: the server's own
    counters show it works, so the call is not a stall."""
    ticks = {"n": 0}

    async def handler(request):
        if request.url.path == "/metrics":
            ticks["n"] += 1
            return httpx.Response(200, text=f"llamacpp:n_decode_total {ticks['n']}\n")
        await asyncio.sleep(1.2)
        return httpx.Response(200, json=completion())

    client, http = make(handler, stall_s=0.3)
    reply = await client.chat(MSGS)
    await http.aclose()
    assert reply.text == '{"a": 1}' and ticks["n"] >= 2


async def test_no_call_runs_past_its_deadline_even_while_the_server_works():
    ticks = {"n": 0}

    async def handler(request):
        if request.url.path == "/metrics":
            ticks["n"] += 1
            return httpx.Response(200, text=f"llamacpp:n_decode_total {ticks['n']}\n")
        await asyncio.sleep(3600)

    client, http = make(handler, stall_s=0.2, deadline_s=0.8)
    t0 = time.monotonic()
    with pytest.raises(ModelStalled, match=r"past its deadline of 0\.8 s"):
        await client.chat(MSGS)
    await http.aclose()
    assert time.monotonic() - t0 < 4.0


async def test_a_429_waits_as_long_as_retry_after_says_with_jitter():
    calls = []

    def handler(request):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "0.4"}, text="slow down")
        return httpx.Response(200, json=completion())

    client, http = make(handler, backoff_s=0.001)
    reply = await client.chat(MSGS)
    await http.aclose()
    assert reply.text == '{"a": 1}' and reply.attempts == 2
    assert 0.4 <= calls[1] - calls[0] < 0.6
    client = LLMClient("http://127.0.0.1:8011", retry_after_cap_s=5.0)
    asked = httpx.Response(429, headers={"retry-after": "3600"})
    waits = {client._pause(1.0, asked) for _ in range(20)}
    assert all(5.0 <= w <= 6.25 for w in waits) and len(waits) > 1  # capped, and jittered


async def test_an_empty_reply_body_says_it_is_empty():
    client, http = make(lambda r: httpx.Response(200, text=""))
    with pytest.raises(ModelServerError, match=r"not a chat completion: \(an empty body\)"):
        await client.chat(MSGS)
    await http.aclose()
