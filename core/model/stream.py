"""The streamed, watched generation: how the client posts one completion and waits for it.

A generation is streamed, so its progress is seen token by token. A call that shows no
progress for ``stall_s`` — no token of its own, and no movement of the server's own work
counters (its Prometheus ``/metrics``) — is cancelled (closing the stream makes the server drop
it) and posted again once; a second stall, or a call past ``deadline_s``, raises
``ModelStalled``. Server-sent events are assembled into the body a non-streamed answer has.
:class:`StreamedCalls` is the part of :class:`~pantheon.core.model.client.LLMClient` that does
this; the client holds the settings and the HTTP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from pantheon.core.errors import ModelServerError, ModelStalled, ServerUnavailable
from pantheon.core.model.turns import CpuTurns, Turn

__all__ = [
    "CallWatch",
    "StreamedCalls",
    "cached_tokens",
    "clock",
    "progress_value",
    "retry_after",
    "snippet",
]

log = logging.getLogger(__name__)


def retry_after(resp: httpx.Response, cap_s: float) -> float | None:
    """The seconds a 429 or 503 asks the client to wait (``Retry-After``: seconds or a date)."""
    value = resp.headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    return min(max(seconds, 0.0), cap_s)


@dataclass(slots=True)
class CallWatch:
    """What one model call has shown so far: the console and the night log read it."""

    label: str
    """Who waits (a node of a run, as ``docops-000012/write``)."""
    started: float = field(default_factory=time.time)
    """When the call was sent (epoch seconds)."""
    first_token: float | None = None
    tokens: int = 0
    """Content chunks received so far (about one token each)."""
    progress_at: float = field(default_factory=time.monotonic)
    """The last time the call or the server showed progress (monotonic)."""
    posts: int = 1
    warned: bool = False
    turn: Turn | None = None
    """Its server's turn on a CPU it shares, while the call holds it."""
    queued: bool = False
    """Waiting for its server's turn again (after a post the server did not answer)."""


_PROGRESS_COUNTERS = (
    # llama-server: decode batches run and tokens done; vLLM: tokens done
    "llamacpp:n_decode_total",
    "llamacpp:prompt_tokens_total",
    "llamacpp:tokens_predicted_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "openvino:prompt_tokens_total",
    "openvino:steps_total",
)


def progress_value(text: str) -> float | None:
    """The sum of the server's work counters in its /metrics text; None when it has none."""
    total = None
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in _PROGRESS_COUNTERS:
            try:
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
            except (ValueError, IndexError):
                continue
    return total


def cached_tokens(data: dict[str, Any]) -> int | None:
    """The server's own count of prompt tokens served from its cache, when it gives one
    (llama-server's ``timings.cache_n``, vLLM's ``usage.prompt_tokens_details.cached_tokens``)."""
    timings = data.get("timings")
    if isinstance(timings, dict) and isinstance(timings.get("cache_n"), int):
        return int(timings["cache_n"])
    details = (data.get("usage") or {}).get("prompt_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("cached_tokens"), int):
        return int(details["cached_tokens"])
    return None


def drafted_tokens(data: dict[str, Any]) -> tuple[int, int] | None:
    """Tokens the server drafted by speculation for this reply, and how many of them it
    accepted (llama-server's ``timings.draft_n`` and ``draft_n_accepted``); None without."""
    timings = data.get("timings")
    if not isinstance(timings, dict):
        return None
    drafted, accepted = timings.get("draft_n"), timings.get("draft_n_accepted")
    if isinstance(drafted, int) and isinstance(accepted, int):
        return drafted, accepted
    return None


def is_event_stream(resp: httpx.Response) -> bool:
    return resp.headers.get("content-type", "").startswith("text/event-stream")


def clock(seconds: float) -> str:
    """``4m12s`` (or ``37s``): how long a wait has lasted."""
    seconds = max(int(seconds), 0)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def snippet(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    if not flat:
        return "(an empty body)"
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _retryable_status(code: int) -> bool:
    return code >= 500 or code == 429


class StreamedCalls:
    """Posting generations under the stall watch (a part of the model client)."""

    if TYPE_CHECKING:  # what the client provides
        where: str
        base_url: str
        retries: int
        backoff_s: float
        max_backoff_s: float
        retry_after_cap_s: float
        stream: bool
        stall_s: float
        deadline_s: float
        warn_s: float
        in_flight: int
        turns: CpuTurns | None
        watches: dict[int, CallWatch]
        prompt_tokens_total: int
        completion_tokens_total: int
        tokens_seen_total: int
        cached_tokens_total: int
        cache_counted_total: int
        calls_answered: int
        _http: httpx.AsyncClient
        _down_since: float | None
        _timeout_s: float
        _marks: deque[tuple[float, float | None]]

        async def _request(
            self, method: str, path: str, **kw: Any
        ) -> tuple[httpx.Response, int]: ...

        def _not_answering(self, attempts: int, last: str) -> ServerUnavailable: ...

        async def metrics_text(self) -> str: ...

    def _spent(self, attempt: int, status: int | None, last: str) -> None:
        """Note a failed try; when the retries ran out, raise: ServerUnavailable for a server
        that cannot be reached (or says 503, not ready), ModelServerError for another error."""
        if (status is None or status == 503) and self._down_since is None:
            self._down_since = time.time()
        if attempt > self.retries:
            if status is None or status == 503:
                raise self._not_answering(attempt, last)
            raise ModelServerError(
                f"model server at {self.where} failed the request {attempt} time(s): {last}"
            )

    def _pause(self, delay: float, resp: httpx.Response | None) -> float:
        """The wait before the next try: the server's ``Retry-After`` when it gave one, else
        the backoff; with up to 25 % jitter, so many waiting calls do not return at once."""
        asked = retry_after(resp, self.retry_after_cap_s) if resp is not None else None
        base = asked if asked is not None else delay
        return base * (1.0 + 0.25 * random.random())

    async def _complete(
        self, body: dict[str, Any], label: str = "model call"
    ) -> tuple[dict[str, Any], int, float, str]:
        """Post one generation and wait for it, watched: see the module's docstring. With
        ``turns``, only when this server's turn on the CPU it shares has come."""
        if self.turns is None:
            return await self._complete_now(body, label, None)
        async with self.turns.turn(self.base_url) as turn:
            return await self._complete_now(body, label, turn)

    async def _complete_now(
        self, body: dict[str, Any], label: str, turn: Turn | None
    ) -> tuple[dict[str, Any], int, float, str]:
        t0 = time.perf_counter()
        watch = CallWatch(label=label, turn=turn)
        key = id(watch)
        self.watches[key] = watch
        self.in_flight += 1
        attempts = 0
        try:
            while True:
                try:
                    resp, tries, data = await self._watched(body, watch)
                except ModelStalled as exc:
                    if watch.posts > 1:
                        log.error("%s: %s", label, exc.message)
                        raise
                    watch.posts += 1
                    log.warning("%s: posted again after a stall", label)
                    # the closed stream has to reach the server first: never two at once
                    await asyncio.sleep(self._pause(1.0, None))
                    watch.progress_at = time.monotonic()
                    continue
                attempts += tries
                break
        finally:
            self.in_flight -= 1
            self.watches.pop(key, None)
        latency = time.perf_counter() - t0
        if resp.status_code >= 400:
            raise ModelServerError(
                f"model server at {self.where} refused the request: HTTP {resp.status_code}: "
                f"{_error_message(resp)}"
            )
        raw_text = json.dumps(data, ensure_ascii=False) if data is not None else resp.text
        if data is None:
            try:
                data = resp.json()
            except ValueError:
                data = None
        try:
            data["choices"][0]["message"]  # type: ignore[index]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelServerError(
                f"model server at {self.where} answered something that is not a chat completion: "
                f"{snippet(raw_text)}"
            ) from None
        assert data is not None
        usage = data.get("usage") or {}
        self.prompt_tokens_total += int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        self.completion_tokens_total += completion
        self.tokens_seen_total += max(0, completion - watch.tokens)  # what did not stream
        cached = cached_tokens(data)
        if cached is not None:
            self.cached_tokens_total += cached
            self.cache_counted_total += int(usage.get("prompt_tokens") or 0)
        self.calls_answered += 1
        return data, attempts + watch.posts - 1, latency, raw_text

    async def _watched(
        self, body: dict[str, Any], watch: CallWatch
    ) -> tuple[httpx.Response, int, dict[str, Any] | None]:
        """One post of a generation under the stall watch; raise ModelStalled when it stalls."""
        task = asyncio.ensure_future(self._post_generation(body, watch))
        tick = min(5.0, max(self.stall_s / 4, 0.05))
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=tick)
                if done:
                    return task.result()
                now = time.monotonic()
                silent = now - watch.progress_at
                waited = time.time() - watch.started
                if waited > self.deadline_s:
                    why = f"it ran past its deadline of {self.deadline_s:.3g} s"
                    raise self._stalled(watch, why)
                if watch.queued:  # waiting for its server's turn: no progress is expected
                    watch.progress_at = now
                    continue
                if silent >= min(self.warn_s, self.stall_s / 2) and not watch.warned:
                    watch.warned = True
                    log.info(
                        "%s: waiting on the model for %s (%d token(s) so far, at %s)",
                        watch.label,
                        clock(waited),
                        watch.tokens,
                        self.where,
                    )
                if silent >= self.stall_s / 2:
                    await self._server_value()  # the baseline, then the check
                if silent >= self.stall_s:
                    if self._moved_since(watch.progress_at):
                        watch.progress_at = now
                        continue
                    raise self._stalled(
                        watch,
                        f"no progress for {silent:.3g} s (no token from the call, and the "
                        "server's counters did not move)",
                    )
        finally:
            if not task.done():
                task.cancel()  # closes the connection: the server drops the request
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _stalled(self, watch: CallWatch, why: str) -> ModelStalled:
        waited = time.time() - watch.started
        again = " (posted twice)" if watch.posts > 1 else ""
        return ModelStalled(
            f"the model call stalled at {self.where}{again}: {why}; cancelled after "
            f"{clock(waited)}, {watch.tokens} token(s) received",
            waited_s=waited,
            hint="is the server hung? `pantheon serve --status` tells; its log is in "
            "ARTIFACTS/server/server.log",
        )

    async def _server_value(self) -> float | None:
        """The server's work counters now (read at most once a second, however many calls
        ask, and a few times within one stall); None when it has none or does not answer."""
        now = time.monotonic()
        if self._marks and now - self._marks[-1][0] < min(1.0, self.stall_s / 4):
            return self._marks[-1][1]
        text = ""
        with contextlib.suppress(asyncio.TimeoutError):
            text = await asyncio.wait_for(self.metrics_text(), timeout=5.0)
        value = progress_value(text)
        self._marks.append((time.monotonic(), value))
        return value

    def _moved_since(self, since: float) -> bool:
        """True when the server's counters changed after ``since`` (monotonic)."""
        seen = [v for at, v in self._marks if at >= since]
        if len(seen) < 2 or seen[0] is None or seen[-1] is None:
            return False
        return seen[-1] != seen[0]

    async def _post_generation(
        self, body: dict[str, Any], watch: CallWatch
    ) -> tuple[httpx.Response, int, dict[str, Any] | None]:
        """Post with retries on connection errors and 5xx (as ``_request``); a streamed
        answer is assembled into the body a non-streamed one would have had."""
        if not self.stream:
            resp, attempts = await self._request("POST", "/v1/chat/completions", json=body)
            return resp, attempts, None
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        url = self.base_url + "/v1/chat/completions"
        attempt = 0
        delay = self.backoff_s
        # the stall watch bounds the wait between chunks (the call's own tokens, and the
        # server's counters: a request queued behind busy slots waits while the server works,
        # as a loaded night's do); httpx's own read timeout is only the deadline's net
        timeout = httpx.Timeout(max(self._timeout_s, self.deadline_s), connect=5.0)
        while True:
            attempt += 1
            status = None
            try:
                async with self._http.stream("POST", url, json=body, timeout=timeout) as resp:
                    watch.progress_at = time.monotonic()
                    if not _retryable_status(resp.status_code):
                        self._down_since = None
                        if resp.status_code >= 400 or not is_event_stream(resp):
                            await resp.aread()
                            return resp, attempt, None
                        return resp, attempt, await self._read_stream(resp, watch)
                    await resp.aread()
                    status = resp.status_code
                    last = f"HTTP {resp.status_code}: {snippet(resp.text)}"
                    retry = resp
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ReadTimeout):
                    raise self._stalled(watch, f"no byte for {timeout.read:.0f} s") from None
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                retry = None
            self._spent(attempt, status, last)
            pause = self._pause(delay, retry)
            if watch.turn is None:
                await asyncio.sleep(pause)
            else:  # the other server of the CPU computes while this one does not answer
                watch.queued = True
                try:
                    async with watch.turn.away():
                        await asyncio.sleep(pause)
                finally:
                    watch.queued = False
            delay = min(delay * 2, self.max_backoff_s)
            watch.progress_at = time.monotonic()

    async def _read_stream(self, resp: httpx.Response, watch: CallWatch) -> dict[str, Any]:
        """The server-sent events of one streamed completion, as one completion body.

        Each choice's usage is its own where the server says so per choice (llama-server
        sends one usage chunk per choice); the body's ``usage`` is the first choice's, as a
        non-streamed llama-server answer has it."""
        texts: dict[int, list[str]] = {}
        logprobs: dict[int, list[Any]] = {}
        finish: dict[int, str | None] = {}
        usages: list[dict[str, Any]] = []
        owner: list[int | None] = []
        """The choice each usage chunk belongs to: the last one finished before it."""
        finished: list[int] = []
        extra: dict[str, Any] = {}
        model = ""
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise ModelServerError(
                    f"model server at {self.where} streamed something that is not JSON: "
                    f"{snippet(payload)}"
                ) from None
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk:
                err = chunk["error"]
                message = err.get("message") if isinstance(err, dict) else err
                raise ModelServerError(
                    f"model server at {self.where} failed the request while streaming: {message}"
                )
            watch.progress_at = time.monotonic()
            model = str(chunk.get("model") or model)
            for choice in chunk.get("choices") or []:
                index = int(choice.get("index") or 0)
                piece = (choice.get("delta") or {}).get("content")
                texts.setdefault(index, [])
                if piece:
                    if watch.first_token is None:
                        watch.first_token = time.time()
                    watch.tokens += 1
                    self.tokens_seen_total += 1
                    texts[index].append(piece)
                if isinstance(choice.get("logprobs"), dict):  # asked for: each token's
                    logprobs.setdefault(index, []).extend(choice["logprobs"].get("content") or [])
                if choice.get("finish_reason") is not None:
                    finish[index] = choice["finish_reason"]
                    finished.append(index)
            if chunk.get("usage"):
                usages.append(chunk["usage"])
                owner.append(finished[-1] if finished else None)
            if isinstance(chunk.get("timings"), dict):  # llama-server's: cache_n, prompt_n...
                extra["timings"] = chunk["timings"]
        order = sorted(texts)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": "".join(texts[i])},
                "finish_reason": finish.get(i),
                **({"logprobs": {"content": logprobs[i]}} if i in logprobs else {}),
            }
            for i in order
        ]
        data: dict[str, Any] = {"model": model, "choices": choices, **extra}
        if usages:
            data["usage"] = usages[0]
            mine = dict(zip(owner, usages, strict=True))
            if len(choices) > 1 and len(usages) == len(choices) and set(mine) == set(order):
                data["usage"] = mine[order[0]]
                data["choice_usage"] = [int(mine[i].get("completion_tokens") or 0) for i in order]
        return data


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    except ValueError:
        return snippet(resp.text)
