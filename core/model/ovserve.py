"""A local OpenAI-compatible model server on OpenVINO GenAI (``pantheon serve --backend openvino``).

Intel's own server (OVMS) is not on PyPI; its runtime is. This is a small server of the
project's own over :class:`~pantheon.core.model.ovpipe.OVPipeline`, on Starlette and uvicorn,
bound to loopback and started, supervised and stopped by
:class:`~pantheon.core.model.server.ModelServer` like llama-server:

- ``POST /v1/chat/completions``: the model's chat template, ``max_tokens``, ``temperature``,
  ``top_p``, ``seed``, ``n``, ``stop``, ``response_format`` (a JSON schema, through OpenVINO's
  structured output), streamed as server-sent events or in one body, with ``usage`` and each
  choice's ``finish_reason``; ``logprobs``/``top_logprobs`` for a one-token reply
  (:mod:`pantheon.core.model.ovtop`);
- ``GET /v1/models``, ``GET /health`` (503 while the model loads), ``POST /tokenize``,
  ``GET /props`` (its slots, as llama-server's);
- ``GET /metrics``: Prometheus text — requests running and waiting, prompt and generated token
  counters, decode steps — so the batch size and tokens/s come from the server itself.

    python -m pantheon.core.model.ovserve --model FILE.gguf --port 8011 --parallel 4

LoRA adapters are not served: OpenVINO GenAI (2026.4) leaves a model it reads from a GGUF file
unchanged by a LoRA adapter — a peft adapter's tensors, named as its reader names the layers, are
taken without a warning and change no output even scaled 300 times, so its quantized weights are
not matched. The night serves the base model on this backend and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pantheon.core.errors import ModelServerError
from pantheon.core.model.ggufinfo import openvino_problem
from pantheon.core.model.ovpipe import Choices, OVPipeline, Sampling, ServerBusy
from pantheon.core.model.ovtop import (
    MAX_TOP_LOGPROBS,
    logprobs_problem,
    one_token_body,
    one_token_events,
)

if TYPE_CHECKING:
    from pantheon.core.model.server import ServerConfig

__all__ = [
    "NO_ADAPTERS_WHY",
    "build_app",
    "main",
    "metrics_registry",
    "not_served",
    "openvino_command",
]

NO_ADAPTERS_WHY = "OpenVINO GenAI leaves a model it reads from a GGUF file unchanged by them"


def not_served(adapters: list[str], who: str = "the calls") -> str:
    """What to say of the promoted adapters a night or ``pantheon serve`` on OpenVINO drops."""
    names = ", ".join(Path(a).name.removesuffix(".gguf") for a in adapters)
    return (
        f"the promoted adapter(s) {names} are not served: the OpenVINO backend serves no LoRA "
        f"adapters ({NO_ADAPTERS_WHY}), so {who} use the base model; serve them with the "
        "llama.cpp backend"
    )


log = logging.getLogger("pantheon.ovserve")


class ChatRequest(BaseModel):
    """The part of OpenAI's chat completion request this server honours."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


def _error(status: int, message: str, kind: str = "invalid_request_error"):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status)


def _schema_of(fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fmt or fmt.get("type") in (None, "text"):
        return None
    if fmt.get("type") == "json_object":
        return fmt.get("schema") or {"type": "object"}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ValueError("response_format json_schema has no schema")
        return schema
    raise ValueError(f"response_format type {fmt.get('type')!r} is not supported")


def _messages(raw: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Messages for the chat template: content parts joined into one text."""
    out = []
    for m in raw:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(m.get("role"), str) or not isinstance(content, str | None):
            raise ValueError("each message needs a role and a text content")
        out.append({"role": m["role"], "content": content or ""})
    return out


# (name, kind, help, the pipeline's attribute)
_FIGURES = (
    ("openvino:prompt_tokens", "counter", "Prompt tokens read.", "prompt_tokens_total"),
    ("openvino:generation_tokens", "counter", "Tokens generated.", "generation_tokens_total"),
    ("openvino:requests", "counter", "Requests finished.", "requests_total"),
    ("openvino:steps", "counter", "Pipeline steps (batched decodes).", "steps_total"),
    ("openvino:num_requests_running", "gauge", "Requests scheduled in the last step.", "running"),
    ("openvino:num_requests_waiting", "gauge", "Requests waiting for room.", "waiting"),
    ("openvino:kv_cache_usage_ratio", "gauge", "KV cache in use.", "cache_usage"),
)


def metrics_registry(pipe: OVPipeline):
    """A Prometheus registry that reads the pipeline's counters and gauges at each scrape."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}

    class _Figures:
        def collect(self):
            for name, kind, text, attr in _FIGURES:
                yield families[kind](name, text, value=getattr(pipe, attr))

    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Figures())
    return registry


def build_app(pipe: OVPipeline, alias: str):
    """The Starlette application over one pipeline."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    async def health(_: Request):
        if pipe.error:
            return JSONResponse({"status": "error", "error": pipe.error}, 500)
        if not pipe.ready:
            return JSONResponse({"status": "loading model"}, 503)
        return JSONResponse({"status": "ok"})

    async def models(_: Request):
        data = [
            {"id": alias, "object": "model", "owned_by": "pantheon", "root": str(pipe.model_path)}
        ]
        return JSONResponse({"object": "list", "data": data})

    async def props(_: Request):
        # as llama-server's: what a client needs to know of the server's capacity
        return JSONResponse(
            {
                "total_slots": pipe.parallel,
                "n_ctx": pipe.ctx_per_slot,
                "model_path": str(pipe.model_path),
            }
        )

    from prometheus_client import generate_latest

    registry = metrics_registry(pipe)

    async def metrics(_: Request):
        return PlainTextResponse(
            generate_latest(registry).decode(), media_type="text/plain; version=0.0.4"
        )

    async def tokenize(request: Request):
        if not pipe.ready:
            return _error(503, "the model is still loading", "unavailable_error")
        try:
            body = await request.json()
            content = body["content"]
            if not isinstance(content, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _error(400, 'the body must be {"content": "<text>"}')
        return JSONResponse({"tokens": pipe.encode(content)})

    async def chat(request: Request):
        try:
            req = ChatRequest.model_validate(await request.json())
            messages = _messages(req.messages)
            schema = _schema_of(req.response_format)
        except json.JSONDecodeError:
            return _error(400, "the request body is not JSON")
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"{where}: {first['msg']}")
        except ValueError as exc:
            return _error(400, str(exc))
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        max_tokens = req.max_completion_tokens or req.max_tokens or pipe.ctx_per_slot
        top = 0
        if req.logprobs or req.top_logprobs:
            problem = logprobs_problem(max_tokens, req.n)
            if problem:
                return _error(400, problem)
            top = max(1, req.top_logprobs or 1)
        sampling = Sampling(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            n=req.n,
            stop=stop,
            schema=schema,
            ignore_eos=req.ignore_eos,
            top_logprobs=top,
        )
        if not pipe.ready:
            return _error(503, pipe.error or "the model is still loading", "unavailable_error")
        try:
            prompt = pipe.prompt_of(messages)
        except Exception as exc:  # the model's own template (Jinja) refuses these messages
            return _error(400, f"the model's chat template refused the messages: {exc}")
        try:
            gen = pipe.submit(prompt, sampling)
        except ServerBusy as exc:
            return _error(503, str(exc), "unavailable_error")
        except ValueError as exc:
            kind = "exceed_context_size_error" if "context size" in str(exc) else None
            return _error(400, str(exc), kind or "invalid_request_error")
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "created": int(time.time()),
            "model": alias,
        }
        copies = req.n if gen.n == 1 else 1  # greedy: n copies of the one answer
        usage = bool((req.stream_options or {}).get("include_usage"))
        if top:
            try:
                texts, finish, _ = await _gather(pipe, gen)
            except RuntimeError as exc:
                return _error(500, str(exc), "server_error")
            body = one_token_body(gen, texts, finish, head)
            if req.stream:
                return StreamingResponse(
                    one_token_events(body, usage), media_type="text/event-stream"
                )
            return JSONResponse(body)
        if req.stream:
            return StreamingResponse(
                _stream(pipe, gen, head, copies, usage), media_type="text/event-stream"
            )
        try:
            texts, finish, tokens = await _gather(pipe, gen)
        except RuntimeError as exc:
            return _error(500, str(exc), "server_error")
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": texts.get(i % gen.n, "")},
                "finish_reason": finish.get(i % gen.n),
            }
            for i in range(max(gen.n, copies))
        ]
        completion = sum(tokens.values()) * copies
        return JSONResponse(
            {
                **head,
                "object": "chat.completion",
                "choices": choices,
                "usage": {
                    "prompt_tokens": gen.prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": gen.prompt_tokens + completion,
                },
            }
        )

    routes = [
        Route("/health", health),
        Route("/v1/models", models),
        Route("/metrics", metrics),
        Route("/props", props),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes)


async def _gather(
    pipe: OVPipeline, gen: Choices
) -> tuple[dict[int, str], dict[int, str], dict[int, int]]:
    """Every choice's text, finish reason and tokens; RuntimeError when the pipeline failed it.
    What is left of a request that fails, or whose client goes away, is cancelled."""
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    tokens: dict[int, int] = {}
    try:
        while len(finish) < gen.n:
            event = await gen.events.get()
            if event[0] == "error":
                raise RuntimeError(event[1])
            if event[0] == "delta":
                texts[event[1]] = texts.get(event[1], "") + event[2]
            else:
                finish[event[1]], tokens[event[1]] = event[2], event[3]
    finally:
        if len(finish) < gen.n:
            pipe.cancel(gen)
    return texts, finish, tokens


async def _stream(
    pipe: OVPipeline, gen: Choices, head: dict[str, Any], copies: int, usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: a delta per new piece of text, a finish chunk per choice, and (when
    asked) each choice's usage after its finish, as llama-server streams it."""

    def chunk(choices: list[dict[str, Any]], **more: Any) -> str:
        body = {**head, "object": "chat.completion.chunk", "choices": choices, **more}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    indexes = range(max(gen.n, copies))
    finished = 0
    try:
        yield chunk(
            [{"index": i, "delta": {"role": "assistant"}, "finish_reason": None} for i in indexes]
        )
        while finished < gen.n:
            event = await gen.events.get()
            if event[0] == "error":
                failed = {"error": {"message": event[1], "type": "server_error"}}
                yield f"data: {json.dumps(failed)}\n\n"
                return
            own = [i for i in indexes if i % gen.n == event[1]]
            if event[0] == "delta":
                yield chunk(
                    [
                        {"index": i, "delta": {"content": event[2]}, "finish_reason": None}
                        for i in own
                    ]
                )
                continue
            finished += 1
            for i in own:
                yield chunk([{"index": i, "delta": {}, "finish_reason": event[2]}])
                if usage:
                    n = event[3]
                    yield chunk(
                        [],
                        usage={
                            "prompt_tokens": gen.prompt_tokens,
                            "completion_tokens": n,
                            "total_tokens": gen.prompt_tokens + n,
                        },
                    )
        yield "data: [DONE]\n\n"
    finally:
        if finished < gen.n:  # the client went away: free the slot
            pipe.cancel(gen)


def openvino_command(
    cfg: ServerConfig, model_path: Path, alias: str
) -> tuple[list[str], dict[str, str]]:
    """The command that starts this server for ``ModelServer``; what it cannot serve is
    refused here, before anything starts: the extra not installed, adapters, a GGUF file
    OpenVINO's reader does not take."""
    import importlib.util

    missing = [
        m for m in ("openvino_genai", "uvicorn", "starlette") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise ModelServerError(
            f"the OpenVINO backend needs {', '.join(missing)}, which is not installed",
            hint="from the project's folder: pip install '.[openvino]'",
        )
    if cfg.adapters:
        raise ModelServerError(
            f"the OpenVINO backend serves no LoRA adapters: {NO_ADAPTERS_WHY}",
            hint="serve adapters with the llama.cpp backend (the default) or vLLM",
        )
    problem = openvino_problem(model_path)
    if problem is not None:
        raise ModelServerError(
            f"OpenVINO cannot serve {model_path}: {problem}",
            hint="serve it with the llama.cpp backend, or a model `pantheon models` lists for "
            "openvino",
        )
    cmd = [
        sys.executable,
        "-m",
        "pantheon.core.model.ovserve",
        "--model",
        str(model_path),
        "--alias",
        alias,
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--parallel",
        str(cfg.parallel),
        "--ctx-per-slot",
        str(cfg.ctx_per_slot),
    ]
    if cfg.threads:
        cmd += ["--threads", str(cfg.threads)]
    return cmd + cfg.extra_args, {**os.environ, "PYTHONUNBUFFERED": "1"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pantheon.core.model.ovserve",
        description="An OpenAI-compatible server over OpenVINO GenAI (loopback, one model).",
    )
    p.add_argument("--model", type=Path, required=True, help="the GGUF model file")
    p.add_argument("--alias", help="the model's name in replies (default: the file's stem)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--parallel", type=int, default=4, help="requests decoded together")
    p.add_argument("--ctx-per-slot", type=int, default=4096, help="context tokens a request")
    p.add_argument("--threads", type=int, help="CPU inference threads (default: OpenVINO's)")
    p.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU)")
    p.add_argument("--cache-gb", type=int, help="KV cache size (default: every slot's context)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = _parse(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )
    pipe = OVPipeline(
        args.model,
        parallel=args.parallel,
        ctx_per_slot=args.ctx_per_slot,
        threads=args.threads,
        device=args.device,
        cache_gb=args.cache_gb,
    )
    # a pipeline that cannot go on ends the process: its supervisor starts a new one
    pipe.on_fatal = lambda message: os.kill(os.getpid(), signal.SIGTERM)
    app = build_app(pipe, args.alias or args.model.stem)
    pipe.start()
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    log.info("serving %s on http://%s:%d", args.model, args.host, args.port)
    asyncio.run(server.serve())
    pipe.stop()
    if pipe.error:
        log.error("stopped: %s", pipe.error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
