"""The model client: async, OpenAI-compatible, local only.

It talks to the embedded llama.cpp server, to vLLM on a GPU host, or to llama-cpp-python's
server, shaping each request the way that server wants it (JSON-schema output and LoRA adapters
are named differently by each). The HTTP client is injected, so tests use
``httpx.MockTransport``. Connection errors and 5xx answers are retried with exponential backoff
and jitter (a 429's ``Retry-After`` is honoured); then one clear error says which server is down
and since when.

A generation is streamed, so the client sees it progress token by token. No call waits in
silence: one that has shown no progress for ``stall_s`` — no token of its own, and no movement
of the server's own token counters (its Prometheus ``/metrics``), which is how a request that
waits for a slot or reads a long prompt still counts as alive — is cancelled (closing the stream
makes the server drop it) and posted again once; a second stall, or a call past ``deadline_s``,
raises ``ModelStalled``. A server that ignores ``stream`` and answers with one JSON body is read
as before.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx

from pantheon.core.errors import ModelServerError, ServerUnavailable
from pantheon.core.model.guard import Resolver, check_endpoint
from pantheon.core.model.stream import (
    CallWatch,
    StreamedCalls,
    cached_tokens,
    drafted_tokens,
    snippet,
)
from pantheon.core.model.turns import CpuTurns

__all__ = ["Backend", "CallWatch", "ChatReply", "LLMClient"]

log = logging.getLogger(__name__)

Message = dict[str, Any]


class Backend(StrEnum):
    """The model servers Pantheon knows how to talk to."""

    LLAMA_CPP = "llama.cpp"
    """llama.cpp's own llama-server (the embedded default)."""
    VLLM = "vllm"
    """vLLM's OpenAI-compatible server (GPU hosts)."""
    LLAMA_CPP_PYTHON = "llama-cpp-python"
    """llama-cpp-python's server."""
    OPENVINO = "openvino"
    """Pantheon's own server over OpenVINO GenAI (``core/model/ovserve.py``)."""


@dataclass(slots=True)
class ChatReply:
    """One answer of the model server."""

    text: str
    """The message content, as the model wrote it."""
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str
    adapter: str | None
    attempts: int = 1
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The whole response body."""
    endpoint: str | None = None
    """The server that answered (host:port): one of a pool's, or the client's own."""
    cached_tokens: int | None = None
    """Prompt tokens the server took from its prefix cache rather than evaluating them, by its
    own count (llama-server's ``timings.cache_n``; vLLM's and OpenAI's
    ``usage.prompt_tokens_details.cached_tokens``); None when it does not say."""
    drafted: tuple[int, int] | None = None
    """Speculation's tokens for this reply: drafted, and accepted of those (llama-server's
    ``timings``); None when the server did not speculate or does not say."""


def _retryable_status(code: int) -> bool:
    return code >= 500 or code == 429


class LLMClient(StreamedCalls):
    """An OpenAI-compatible chat client for one local model server."""

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:8011",
        *,
        backend: Backend | str = Backend.LLAMA_CPP,
        model: str | None = None,
        http: httpx.AsyncClient | None = None,
        timeout_s: float = 300.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        allow_hosts: tuple[str, ...] | list[str] = (),
        adapters: dict[str, int] | None = None,
        resolver: Resolver | None = None,
        stream: bool = True,
        stall_s: float = 120.0,
        deadline_s: float = 1800.0,
        warn_s: float = 60.0,
        retry_after_cap_s: float = 60.0,
    ) -> None:
        self.backend = Backend(backend)
        base = endpoint.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        self.base_url = base
        # the guard runs before anything can be sent
        self.where = check_endpoint(base, allow=allow_hosts, resolver=resolver)
        self.model = model
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.adapters: dict[str, int] = dict(adapters or {})
        """Adapter name -> llama.cpp adapter id (filled from the server when asked)."""
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._down_since: float | None = None
        self._context_size: int | None = None
        """The server's context once asked (0: it does not say)."""
        self.in_flight = 0
        """Chat requests sent and not answered yet (the engine's own view of the batch)."""
        self.turns: CpuTurns | None = None
        """The turns of the CPU this server shares with others (a night's embedded servers):
        a generation is posted only in this server's turn. None: whenever it comes."""
        self.prompt_tokens_total = 0
        self.completion_tokens_total = 0
        self.tokens_seen_total = 0
        """Generated tokens as they arrive: each streamed chunk when it comes, a reply that was
        not streamed when it ends. What ``--concurrency auto`` measures: the completions'
        totals move only when a call ends, in steps of whole replies."""
        self.cached_tokens_total = 0
        """Prompt tokens the server took from its cache (its own count, where it gives one)."""
        self.cache_counted_total = 0
        """Prompt tokens of the calls whose server said how many it took from its cache."""
        self.calls_answered = 0
        """Generations this server answered with a chat completion."""
        self.max_choices: int | None = None
        """The most choices one request may ask for (llama-server: its slots); None: any."""
        self.stream = stream
        """Stream generations (progress token by token); False asks for one JSON body."""
        self.stall_s = stall_s
        """A call with no progress (its own, or the server's) for this long is stalled."""
        self.deadline_s = deadline_s
        """No call runs longer than this, progress or not."""
        self.warn_s = warn_s
        """A call silent this long (or half ``stall_s``) is named once in the log."""
        self.retry_after_cap_s = retry_after_cap_s
        self.watches: dict[int, CallWatch] = {}
        """The calls in flight now, by id: what each has shown so far."""
        self._marks: deque[tuple[float, float | None]] = deque(maxlen=256)
        """(monotonic time, the server's work counters then), read while a call is silent."""
        self._timeout_s = timeout_s

    def routed(self, key: str | None) -> LLMClient:
        """The client one agent's calls use: with one server, this one (a
        :class:`~pantheon.core.model.pool.ServerPool` routes by ``key``)."""
        return self

    async def aclose(self) -> None:
        if self._own_http:
            await self._http.aclose()

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- request shaping ---------------------------------------------------------------------

    def shape(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "reply",
        adapter: str | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        max_tokens: int = 512,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The request body for this backend; ``extra`` adds the server's own fields."""
        body: dict[str, Any] = {
            "model": self.model or "default",
            "messages": messages,
            "temperature": temperature,
            "seed": seed,
            "max_tokens": max_tokens,
        }
        if schema is not None:
            if self.backend is Backend.LLAMA_CPP_PYTHON:
                body["response_format"] = {"type": "json_object", "schema": schema}
            elif self.backend is Backend.VLLM:
                body["structured_outputs"] = {"json": schema}
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "schema": schema, "strict": True},
                }
        if adapter is None and self.backend is Backend.LLAMA_CPP and self.adapters:
            # the server's own scales are not to be trusted to be zero: say so on every request
            body["lora"] = [{"id": i, "scale": 0.0} for i in sorted(self.adapters.values())]
        elif adapter is not None:
            if self.backend is Backend.VLLM:
                body["model"] = adapter  # vLLM serves each LoRA module under its own name
            elif self.backend is Backend.LLAMA_CPP:
                if adapter not in self.adapters:
                    raise ModelServerError(
                        f"adapter {adapter!r} is not loaded by the model server at {self.where}",
                        hint=f"loaded: {', '.join(self.adapters) or 'none'}",
                    )
                body["lora"] = [
                    {"id": i, "scale": 1.0 if name == adapter else 0.0}
                    for name, i in sorted(self.adapters.items(), key=lambda kv: kv[1])
                ]
            else:
                raise ModelServerError(
                    f"{self.backend} does not choose a LoRA adapter per request",
                    hint="serve adapters with llama.cpp's llama-server or vLLM",
                )
        if extra:
            body.update(extra)
        return body

    # -- calls -------------------------------------------------------------------------------

    def _not_answering(self, attempts: int, last: str) -> ServerUnavailable:
        since = datetime.fromtimestamp(self._down_since or time.time()).strftime("%H:%M:%S")
        return ServerUnavailable(
            f"model server at {self.where} is not answering since {since} "
            f"({attempts} attempt(s); last: {last})",
            hint="is it running? `pantheon serve --status` tells; `pantheon serve` starts it",
        )

    async def _request(self, method: str, path: str, **kw: Any) -> tuple[httpx.Response, int]:
        """Send with retries on connection errors and 5xx; return the response and attempts.

        When the retries run out, a server that cannot be reached (or says 503, not ready)
        raises ServerUnavailable — the work waits for it; one that answers with another error
        raises ModelServerError — the node fails with the reason.
        """
        attempt = 0
        delay = self.backoff_s
        while True:
            attempt += 1
            status = None
            try:
                resp = await self._http.request(method, self.base_url + path, **kw)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if not _retryable_status(resp.status_code):
                    self._down_since = None
                    return resp, attempt
                status = resp.status_code
                last = f"HTTP {resp.status_code}: {snippet(resp.text)}"
            self._spent(attempt, status, last)
            await asyncio.sleep(self._pause(delay, resp if status is not None else None))
            delay = min(delay * 2, self.max_backoff_s)

    async def chat(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        schema_name: str = "reply",
        adapter: str | None = None,
        temperature: float = 0.0,
        seed: int = 0,
        max_tokens: int = 512,
        extra: dict[str, Any] | None = None,
        label: str = "model call",
    ) -> ChatReply:
        """One chat completion; raises ModelServerError when the server fails or is down, and
        ModelStalled when the call stalls (``label`` names the caller in the log)."""
        await self._know_adapter(adapter)
        body = self.shape(
            messages,
            schema=schema,
            schema_name=schema_name,
            adapter=adapter,
            temperature=temperature,
            seed=seed,
            max_tokens=max_tokens,
            extra=extra,
        )
        data, attempts, latency, raw_text = await self._complete(body, label)
        return self._reply(data, 0, attempts, latency, adapter, raw_text)

    async def chat_n(
        self,
        messages: list[Message],
        *,
        n: int,
        adapter: str | None = None,
        temperature: float = 0.7,
        seed: int = 0,
        max_tokens: int = 512,
        schema: dict[str, Any] | None = None,
        schema_name: str = "reply",
        label: str = "model call",
    ) -> list[ChatReply]:
        """``n`` sampled completions of one prompt in one request: the server evaluates the
        prompt once (llama-server and vLLM take OpenAI's ``n``). A server that answers with
        fewer choices is asked for the rest one request at a time, with seeds ``seed + i``.

        llama-server's usage counts the first choice only; the others are counted with its
        ``/tokenize``, so every reply's ``completion_tokens`` is its own."""
        await self._know_adapter(adapter)
        same: dict[str, Any] = {
            "adapter": adapter,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "schema": schema,
            "schema_name": schema_name,
        }
        first = min(n, self.max_choices or n)
        body = self.shape(messages, seed=seed, extra={"n": first} if first > 1 else None, **same)
        same["label"] = label
        try:
            data, attempts, latency, raw_text = await self._complete(body, label)
        except ModelServerError as exc:
            # llama-server refuses more choices than it has slots, and says how many it takes
            most = re.search(r"'n'.*?<= *(\d+)", exc.message)
            if first > 1 and most and int(most.group(1)) < first:
                self.max_choices = max(1, int(most.group(1)))
                return await self.chat_n(messages, n=n, seed=seed, **same)
            raise
        count = len(data.get("choices") or [])
        replies = [self._reply(data, i, attempts, latency, adapter, raw_text) for i in range(count)]
        if len(replies) > 1:
            usage = data.get("usage") or {}
            total = int(usage.get("completion_tokens") or 0)
            own = data.get("choice_usage")
            if own and len(own) == len(replies):  # a stream said each choice's own count
                for r, tokens in zip(replies, own, strict=True):
                    r.completion_tokens = tokens
            elif self.backend is Backend.VLLM:
                for r in replies:  # vLLM's usage is the sum over the choices
                    r.completion_tokens = round(total / len(replies))
            else:
                for r in replies[1:]:
                    r.completion_tokens = await self.count_tokens(r.text)
        if len(replies) == first and first < n:  # the rest, a server's worth at a time
            replies += await self.chat_n(messages, n=n - first, seed=seed + first, **same)
        for i in range(len(replies), n):
            replies.append(await self.chat(messages, seed=seed + i, **same))
        return replies

    async def count_tokens(self, text: str) -> int:
        """The server's own token count of ``text`` (llama-server's /tokenize); 0 when it
        cannot say."""
        try:
            resp = await self._http.post(
                self.base_url + "/tokenize", json={"content": text}, timeout=30.0
            )
            return len(resp.json().get("tokens") or []) if resp.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, AttributeError):
            return 0

    def _reply(
        self,
        data: dict[str, Any],
        index: int,
        attempts: int,
        latency: float,
        adapter: str | None,
        raw_text: str,
    ) -> ChatReply:
        try:
            choice = data["choices"][index]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelServerError(
                f"model server at {self.where} answered something that is not a chat completion: "
                f"{snippet(raw_text)}"
            ) from None
        usage = data.get("usage") or {}
        return ChatReply(
            text=text,
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0) if index == 0 else 0,
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=latency,
            model=str(data.get("model") or self.model or ""),
            adapter=adapter,
            attempts=attempts,
            raw=data,
            endpoint=self.where,
            cached_tokens=cached_tokens(data) if index == 0 else None,
            drafted=drafted_tokens(data) if index == 0 else None,
        )

    async def _know_adapter(self, adapter: str | None) -> None:
        """llama-server names adapters by id: ask it for the ids of one not seen yet."""
        if (
            adapter is not None
            and self.backend is Backend.LLAMA_CPP
            and adapter not in self.adapters
        ):
            await self.load_adapter_ids()

    async def load_adapter_ids(self) -> dict[str, int]:
        """Ask llama-server which LoRA adapters it loaded (name: the file name without .gguf)."""
        resp, _ = await self._request("GET", "/lora-adapters")
        if resp.status_code >= 400:
            return self.adapters
        try:
            for item in resp.json():
                path = str(item.get("path", ""))
                name = path.rsplit("/", 1)[-1].removesuffix(".gguf")
                self.adapters[name] = int(item["id"])
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return self.adapters

    @property
    def down_since(self) -> float | None:
        """When the server stopped answering (None while it answers)."""
        return self._down_since

    async def server_slots(self) -> int | None:
        """How many requests the server decodes together, where it says (llama-server's and
        Pantheon's OpenVINO server's ``/props``: ``total_slots``); None when it does not."""
        try:
            resp = await self._http.get(self.base_url + "/props", timeout=5.0)
            slots = resp.json().get("total_slots") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return slots if isinstance(slots, int) and slots > 0 else None

    async def context_size(self) -> int | None:
        """The tokens one request may hold, prompt and reply together, where the server says
        (llama-server's ``/props``: ``default_generation_settings.n_ctx``, Pantheon's OpenVINO
        server's ``n_ctx``; vLLM's ``/v1/models``: ``max_model_len``); None when it does not.
        Asked once: a server keeps its context while it runs."""
        if self._context_size is not None:
            return self._context_size or None
        size = None
        try:
            resp = await self._http.get(self.base_url + "/props", timeout=5.0)
            if resp.status_code == 200:
                data = resp.json()
                size = (data.get("default_generation_settings") or {}).get("n_ctx") or data.get(
                    "n_ctx"
                )
            if not isinstance(size, int):
                resp = await self._http.get(self.base_url + "/v1/models", timeout=5.0)
                models = resp.json().get("data") if resp.status_code == 200 else None
                size = (models or [{}])[0].get("max_model_len")
        except (httpx.HTTPError, ValueError, AttributeError, IndexError):
            size = None
        self._context_size = size if isinstance(size, int) and size > 0 else 0
        return self._context_size or None

    async def health(self) -> bool:
        """True when the server says it is ready (no retries)."""
        # llama-cpp-python's server has no /health; its model list answers once it is up
        path = "/v1/models" if self.backend is Backend.LLAMA_CPP_PYTHON else "/health"
        try:
            resp = await self._http.get(self.base_url + path, timeout=5.0)
        except httpx.TransportError:
            ok = False
        else:
            ok = resp.status_code == 200
        if ok:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = time.time()
        return ok

    async def metrics_text(self) -> str:
        """The server's Prometheus /metrics text ("" when it has none)."""
        try:
            resp = await self._http.get(self.base_url + "/metrics", timeout=5.0)
        except httpx.TransportError:
            return ""
        return resp.text if resp.status_code == 200 else ""
