"""The safe model call: a reply is data, never code.

A reply is stripped of code fences and prose, exactly one JSON object is taken from it, and that
object is validated against the agent's pydantic schema. Anything else — no object, two objects,
a truncated one, an HTML error page, an empty reply, fields that do not fit — is a clear, recorded
error. Nothing is ever evaluated, and nothing is guessed.

Every call, good or bad, is appended to the node's ``calls.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pantheon.core.errors import ArtifactError, ModelServerError, ModelStalled, ReplyError
from pantheon.core.model.client import ChatReply, LLMClient, Message
from pantheon.core.store.atomic import append_line, atomic_write_json
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import CALLS_FILE, WAITING_FILE
from pantheon.core.store.records import CallRecord

__all__ = ["CallLog", "ask", "call_model", "extract_json_object", "parse_reply"]

T = TypeVar("T", bound=BaseModel)

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _matching_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the one at ``start`` (strings respected), or None."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _objects_in(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    first_error: str | None = None
    i = 0
    while True:
        j = text.find("{", i)
        if j < 0:
            break
        end = _matching_brace(text, j)
        if end is None:
            raise ReplyError(
                f"the JSON object at character {j} is cut short (the reply ends inside it; "
                f"max_tokens too small?)",
                raw=text,
            )
        try:
            value, stop = decoder.raw_decode(text, j)
        except json.JSONDecodeError as exc:
            first_error = first_error or f"invalid JSON at character {exc.pos}: {exc.msg}"
            i = end + 1
            continue
        if isinstance(value, dict):
            found.append(value)
        i = stop
    if not found and first_error:
        raise ReplyError(f"the reply holds no valid JSON object ({first_error})", raw=text)
    return found


def extract_json_object(text: str) -> dict[str, Any]:
    """Exactly one JSON object from a model reply, or ReplyError saying why not."""
    stripped = text.strip()
    if not stripped:
        raise ReplyError("the reply is empty", raw=text)
    head = stripped[:200].lower()
    if head.startswith("<") and ("<html" in head or "<!doctype" in head or "<head" in head):
        title = _TITLE.search(stripped)
        what = f" ({' '.join(title.group(1).split())})" if title else ""
        raise ReplyError(f"the reply is an HTML page{what}, not JSON", raw=text)
    fenced = [body for lang, body in _FENCE.findall(stripped) if lang.lower() in ("", "json")]
    scope = "\n".join(fenced) if fenced else stripped
    if scope.lstrip().startswith("["):
        raise ReplyError("the reply is a JSON array; one JSON object was expected", raw=text)
    objects = _objects_in(scope)
    if not objects:
        raise ReplyError("the reply holds no JSON object", raw=text)
    if len(objects) > 1:
        raise ReplyError(
            f"the reply holds {len(objects)} JSON objects; exactly one was expected", raw=text
        )
    return objects[0]


def parse_reply(text: str, model: type[T]) -> T:
    """The reply's one JSON object, validated against ``model``."""
    obj = extract_json_object(text)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(object)'}: {e['msg']}" for e in exc.errors()
        )
        raise ReplyError(
            f"the reply's JSON does not fit {model.__name__}: {problems}", raw=text
        ) from None


class CallLog:
    """``<node>/calls.jsonl``: one line per model call; ``waiting.json`` while one is out."""

    def __init__(self, node_dir: Path) -> None:
        node_dir = Path(node_dir)
        self.path = node_dir / CALLS_FILE
        self.waiting_path = node_dir / WAITING_FILE
        self.label = f"{node_dir.parent.name}/{node_dir.name}"
        """How the log names the node's calls (``docops-000012/write``)."""
        self._out = 0

    @contextlib.contextmanager
    def waiting(self, endpoint: str) -> Iterator[None]:
        """Mark a call in flight for whoever watches the night (the console's running row),
        and clear the mark when it returns, however it ends."""
        self._out += 1
        if self._out == 1:
            with contextlib.suppress(ArtifactError, OSError):
                atomic_write_json(
                    self.waiting_path,
                    {"since": time.time(), "endpoint": endpoint, "pid": os.getpid()},
                )
        try:
            yield
        finally:
            self._out -= 1
            if self._out == 0:
                with contextlib.suppress(OSError):
                    self.waiting_path.unlink(missing_ok=True)

    def record(self, **fields: Any) -> None:
        """Append one call; a failed write is logged, never raised over the call's own outcome."""
        fields.setdefault("at", datetime.now(UTC).isoformat())
        try:
            append_line(self.path, json.dumps(fields, ensure_ascii=False, default=str))
        except ArtifactError as exc:
            log.warning("model call not recorded: %s", exc.message)

    def read(self) -> list[dict[str, Any]]:
        """The calls recorded so far; a corrupt line is skipped."""
        return read_jsonl(self.path, record=CallRecord)[0]


def _usable(
    reply: ChatReply, output: type[T], check: Callable[[T], list[str]] | None, max_tokens: int
) -> T:
    """The reply's object when it parses, fits and passes ``check``; else a ReplyError."""
    try:
        value = parse_reply(reply.text, output)
        problems = check(value) if check is not None else []
        if problems:
            raise ReplyError(
                "the reply breaks what was asked: " + "; ".join(problems), raw=reply.text
            )
    except ReplyError as exc:
        if reply.finish_reason == "length":
            exc.message += f" (the reply stopped at max_tokens={max_tokens})"
        raise
    return value


def _waiting(log: CallLog | None, client: LLMClient) -> contextlib.AbstractContextManager[None]:
    return log.waiting(client.where) if log is not None else contextlib.nullcontext()


def stall_fields(exc: BaseException) -> dict[str, Any]:
    """What a call record adds for a call that stalled (nothing for another failure)."""
    if isinstance(exc, ModelStalled):
        return {"stalled": True, "waited_s": round(exc.waited_s, 1)}
    return {}


def _drafts(reply: ChatReply) -> dict[str, int]:
    """The reply's speculation figures for its call row: none when the server drafted none."""
    if reply.drafted is None:
        return {}
    return {"drafted_tokens": reply.drafted[0], "accepted_drafts": reply.drafted[1]}


def _record_failure(
    log: CallLog, base: dict[str, Any], client: LLMClient, exc: ModelServerError, latency: float
) -> None:
    """A call the server failed, or that stalled: recorded with the reason (and the wait)."""
    log.record(
        **base,
        model=client.model,
        raw=None,
        parsed=None,
        error=str(exc),
        prompt_tokens=0,
        completion_tokens=0,
        latency_s=round(latency, 4),
        **stall_fields(exc),
    )


async def call_model(
    client: LLMClient,
    messages: list[Message],
    output: type[T],
    *,
    log: CallLog | None = None,
    adapter: str | None = None,
    max_tokens: int = 512,
    temperature: float = 0.0,
    seed: int = 0,
    constrained: bool = True,
    step: int | None = None,
    check: Callable[[T], list[str]] | None = None,
) -> tuple[T, ChatReply]:
    """Ask the model for one ``output`` object; record the call; raise on anything else.

    ``check`` names what a valid object still breaks (a limit asked for in the prompt, say):
    a reply that breaks anything is a ReplyError with those reasons, recorded as such."""
    schema = output.model_json_schema() if constrained else None
    base = {
        "step": step,
        "backend": str(client.backend),
        "endpoint": client.where,
        "adapter": adapter,
        "messages": messages,
        "schema": output.__name__,
    }
    t0 = time.perf_counter()
    try:
        with _waiting(log, client):
            reply = await client.chat(
                messages,
                schema=schema,
                schema_name=output.__name__,
                adapter=adapter,
                temperature=temperature,
                seed=seed,
                max_tokens=max_tokens,
                label=log.label if log is not None else "model call",
            )
    except ModelServerError as exc:
        if log is not None:
            _record_failure(log, base, client, exc, time.perf_counter() - t0)
        raise
    record = {
        **base,
        "endpoint": reply.endpoint or base["endpoint"],
        "model": reply.model,
        "raw": reply.text,
        "finish_reason": reply.finish_reason,
        "prompt_tokens": reply.prompt_tokens,
        "cached_tokens": reply.cached_tokens,
        "completion_tokens": reply.completion_tokens,
        **_drafts(reply),
        "latency_s": round(reply.latency_s, 4),
        "attempts": reply.attempts,
    }
    try:
        value = _usable(reply, output, check, max_tokens)
    except ReplyError as exc:
        if log is not None:
            log.record(**record, parsed=None, error=exc.message)
        raise
    if log is not None:
        log.record(**record, parsed=value.model_dump(mode="json"), error=None)
    return value, reply


async def ask(
    client: LLMClient,
    messages: list[Message],
    output: type[T],
    *,
    log: CallLog | None = None,
    corrective_retries: int = 1,
    **kw: Any,
) -> T:
    """``call_model`` with corrective retries: a reply that cannot be used is shown back to the
    model with the reason, once; if that fails too, the error stands (never a guess)."""
    try:
        value, _ = await call_model(client, messages, output, log=log, step=1, **kw)
        return value
    except ReplyError as first:
        error = first
    for attempt in range(corrective_retries):
        retry = [
            *messages,
            {"role": "assistant", "content": error.raw[:4000]},
            {
                "role": "user",
                "content": f"That reply could not be used: {error.message}. Answer again with "
                "exactly one JSON object that fits the schema, and nothing else.",
            },
        ]
        try:
            value, _ = await call_model(client, retry, output, log=log, step=attempt + 2, **kw)
            return value
        except ReplyError as exc:
            error = exc
    raise error


async def ask_sampled(
    client: LLMClient,
    messages: list[Message],
    output: type[T],
    *,
    k: int,
    temperature: float = 0.7,
    log: CallLog | None = None,
    check: Callable[[T], list[str]] | None = None,
    max_tokens: int = 512,
    adapter: str | None = None,
) -> T:
    """``ask`` first (greedy, then its corrective retry); when that reply still cannot be used,
    ``k`` replies sampled at ``temperature`` in one request (the server evaluates the prompt
    once), and the first that parses and passes ``check`` is taken. Each sample is a recorded
    call; when none fits, the greedy reply's error stands with the samples' reasons."""
    try:
        return await ask(
            client, messages, output, log=log, check=check, max_tokens=max_tokens, adapter=adapter
        )
    except ReplyError as exc:
        error = exc
    if k < 1:
        raise error
    t0 = time.perf_counter()
    try:
        with _waiting(log, client):
            replies = await client.chat_n(
                messages,
                n=k,
                adapter=adapter,
                temperature=temperature,
                seed=1,
                max_tokens=max_tokens,
                schema=output.model_json_schema(),
                schema_name=output.__name__,
                label=log.label if log is not None else "model call",
            )
    except ModelServerError as exc:
        if log is not None:
            base = {
                "step": "samples",
                "kind": "sample",
                "backend": str(client.backend),
                "endpoint": client.where,
                "adapter": adapter,
                "messages": messages,
                "schema": output.__name__,
            }
            _record_failure(log, base, client, exc, time.perf_counter() - t0)
        raise
    latency = (time.perf_counter() - t0) / max(len(replies), 1)
    reasons = []
    chosen: T | None = None
    for i, reply in enumerate(replies):
        record = {
            "step": f"sample {i + 1}",
            "kind": "sample",
            "backend": str(client.backend),
            "endpoint": reply.endpoint or client.where,
            "adapter": adapter,
            "messages": messages,
            "schema": output.__name__,
            "model": reply.model,
            "raw": reply.text,
            "finish_reason": reply.finish_reason,
            "temperature": temperature,
            "seed": 1 + i,
            "prompt_tokens": reply.prompt_tokens if i == 0 else 0,
            "cached_tokens": reply.cached_tokens if i == 0 else None,
            "completion_tokens": reply.completion_tokens,
            **(_drafts(reply) if i == 0 else {}),
            "latency_s": round(latency, 4),
        }
        try:
            value = _usable(reply, output, check, max_tokens)
        except ReplyError as exc:
            reasons.append(exc.message)
            if log is not None:
                log.record(**record, chosen=False, parsed=None, error=exc.message)
            continue
        if chosen is None:
            chosen = value
            if log is not None:
                log.record(**record, chosen=True, parsed=value.model_dump(mode="json"), error=None)
        elif log is not None:
            parsed = value.model_dump(mode="json")
            log.record(**record, chosen=False, parsed=parsed, error="not needed")
    if chosen is not None:
        return chosen
    error.message += f"; none of {len(replies)} sampled replies fits either ({reasons[0]})"
    raise error
