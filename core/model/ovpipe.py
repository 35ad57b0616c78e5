"""OpenVINO GenAI's continuous-batching pipeline, driven from one thread for an HTTP server.

:class:`OVPipeline` owns a ``ContinuousBatchingPipeline`` (a GGUF file read by OpenVINO's own
reader) and one thread that does every call on it: admit the requests that arrived, run one
``step()`` (a decode of every scheduled request at once: continuous batching, as llama-server's
slots), hand each request its new tokens, repeat. The event loop that serves HTTP talks to the
thread through :meth:`OVPipeline.submit` and :meth:`OVPipeline.cancel`, and reads each
:class:`Generation`'s events from an asyncio queue.

``step()`` holds Python's GIL while it runs, so the thread yields between steps: the HTTP loop
answers health checks and metrics scrapes within one step's time.

Only the server process imports this module: ``openvino_genai`` is imported when a pipeline is
made, so the engine never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Choices", "Generation", "OVPipeline", "Sampling", "ServerBusy"]

log = logging.getLogger(__name__)


class ServerBusy(Exception):
    """The pipeline cannot take a request now (it is loading, or it failed)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """What one request asks of the generation."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None
    """A JSON schema the reply must follow (OpenVINO's structured output, a grammar)."""
    ignore_eos: bool = False
    top_logprobs: int = 0
    """Above 0: one token, the likeliest ``top_logprobs`` first tokens each a sequence of its own
    with its log probability (a one-step beam search: OpenVINO GenAI gives no logits)."""


@dataclass(eq=False)
class Generation:
    """One request of the pipeline (one prompt, ``n`` sequences)."""

    id: int
    prompt_tokens: int
    n: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[Any, ...]] = field(default_factory=asyncio.Queue)
    """("delta", choice, text), ("done", choice, finish_reason, completion_tokens), ("error",
    message): put by the pipeline's thread, read by the handler."""
    choice: int = 0
    """The choice its sequence 0 is, in the HTTP request it serves."""
    ids: dict[int, list[int]] = field(default_factory=dict)
    sent: dict[int, str] = field(default_factory=dict)
    scores: dict[int, float] = field(default_factory=dict)
    """Each sequence's log probability (set before its "done" event)."""
    done: set[int] = field(default_factory=set)
    handle: Any = None
    config: Any = None
    prompt: Any = None

    def put(self, *event: Any) -> None:
        """From the pipeline's thread."""
        if event[0] in ("delta", "done"):
            event = (event[0], event[1] + self.choice, *event[2:])
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(eq=False)
class Choices:
    """One HTTP request's generations: one pipeline request, or one a sampled choice.

    OpenVINO's structured output keeps one grammar state a pipeline request, so ``n`` sampled
    sequences of one request under a JSON schema come out garbled (interleaved, invalid JSON);
    each sampled choice is a request of its own instead (seeds ``seed + i``; the prefix cache
    reads the shared prompt once)."""

    parts: list[Generation]
    events: asyncio.Queue[tuple[Any, ...]]

    @property
    def n(self) -> int:
        return sum(p.n for p in self.parts)

    @property
    def prompt_tokens(self) -> int:
        return self.parts[0].prompt_tokens


class OVPipeline:
    """The pipeline and its thread; counters for the server's ``/metrics``."""

    def __init__(
        self,
        model_path: Path,
        *,
        parallel: int = 4,
        ctx_per_slot: int = 4096,
        threads: int | None = None,
        device: str = "CPU",
        cache_gb: float | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.device = device
        self.cache_gb = cache_gb
        self.pipe: Any = None
        self.tokenizer: Any = None
        self._og: Any = None
        self.error: str | None = None
        """Why the pipeline cannot serve (a failed load or step); None while it can."""
        self.loaded_s: float | None = None
        self._inbox: list[Generation] = []
        self._cancels: list[Generation] = []
        self._active: dict[int, Generation] = {}
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self.on_fatal: Callable[[str], None] | None = None
        # the server's counters (read by /metrics from another thread: plain ints)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.requests_total = 0
        self.steps_total = 0
        self.running = 0
        self.waiting = 0
        self.cache_usage = 0.0

    # -- life ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.pipe is not None and self.error is None

    def start(self) -> None:
        """Load the model and run the step loop, in the pipeline's own thread."""
        self._thread = threading.Thread(target=self._main, name="openvino-pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _load(self) -> None:
        import openvino_genai as og

        self._og = og
        started = time.monotonic()
        sched = og.SchedulerConfig()
        sched.max_num_seqs = self.parallel
        sched.enable_prefix_caching = True
        sched.cache_size = self.cache_gb or kv_cache_gb(
            self.model_path, self.parallel * self.ctx_per_slot
        )
        sched.max_num_batched_tokens = max(2048, self.ctx_per_slot)
        properties: dict[str, Any] = {}
        if self.threads:
            properties["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.pipe = og.ContinuousBatchingPipeline(
            str(self.model_path), sched, self.device, properties
        )
        self.tokenizer = self.pipe.get_tokenizer()
        self.loaded_s = time.monotonic() - started
        log.info(
            "loaded %s on %s in %.1f s (%d slots, %d context tokens each)",
            self.model_path.name,
            self.device,
            self.loaded_s,
            self.parallel,
            self.ctx_per_slot,
        )

    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:
            self._fatal(f"OpenVINO cannot load {self.model_path}: {exc}")
            return
        try:
            self._loop()
        except Exception as exc:
            self._fatal(f"the OpenVINO pipeline failed: {type(exc).__name__}: {exc}")

    def _fatal(self, message: str) -> None:
        log.error("%s", message)
        self.error = message
        for gen in list(self._active.values()) + self._inbox:
            gen.put("error", message)
        self._active.clear()
        self._inbox.clear()
        if self.on_fatal is not None:
            self.on_fatal(message)

    # -- the step loop ---------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._admit()
            if not self.pipe.has_non_finished_requests():
                self.running = self.waiting = 0
                with self._cv:
                    self._cv.wait_for(
                        lambda: self._inbox or self._cancels or self._stop.is_set(), timeout=0.5
                    )
                continue
            self.pipe.step()
            self.steps_total += 1
            metrics = self.pipe.get_metrics()
            self.running = int(metrics.scheduled_requests)
            self.waiting = max(0, int(metrics.requests) - self.running)
            self.cache_usage = float(metrics.cache_usage)
            self._collect()
            time.sleep(0)  # hand the GIL to the HTTP loop between steps

    def _admit(self) -> None:
        with self._cv:
            new, self._inbox = self._inbox, []
            gone, self._cancels = self._cancels, []
        for gen in gone:
            if gen.handle is not None and gen.id in self._active:
                with contextlib.suppress(Exception):
                    gen.handle.cancel()
                self._active.pop(gen.id, None)
        for gen in new:
            if gen in gone:
                continue
            try:
                gen.handle = self.pipe.add_request(gen.id, gen.prompt, gen.config)
            except Exception as exc:  # a config the pipeline refuses: this request only
                gen.put("error", f"the pipeline refused the request: {exc}")
                continue
            self._active[gen.id] = gen
            self.prompt_tokens_total += gen.prompt_tokens

    def _collect(self) -> None:
        og = self._og
        for gen in list(self._active.values()):
            handle = gen.handle
            changed: set[int] = set()
            while handle.can_read():
                for index, out in handle.read().items():
                    ids = list(out.generated_ids)
                    gen.ids.setdefault(index, []).extend(ids)
                    self.generation_tokens_total += len(ids)
                    changed.add(index)
                    reason = out.finish_reason
                    gen.scores[index] = float(out.score)
                    if reason != og.GenerationFinishReason.NONE:
                        self._emit(gen, index)
                        gen.done.add(index)
                        gen.put("done", index, _finish(reason), len(gen.ids[index]))
                        changed.discard(index)
            for index in changed:
                self._emit(gen, index)
            status = handle.get_status()
            if status == og.GenerationStatus.RUNNING:
                continue
            if status == og.GenerationStatus.IGNORED:
                gen.put("error", "the pipeline had no room in its cache for the request")
            else:
                for index in range(gen.n):
                    if index not in gen.done:
                        self._emit(gen, index)
                        gen.done.add(index)
                        gen.put("done", index, "stop", len(gen.ids.get(index, [])))
            self.requests_total += 1
            self._active.pop(gen.id, None)

    def _emit(self, gen: Generation, index: int) -> None:
        """The new text of one choice (held back while it ends inside a UTF-8 character)."""
        text = self.tokenizer.decode(gen.ids.get(index, []))
        sent = gen.sent.get(index, "")
        if text.endswith("\ufffd") or not text.startswith(sent) or len(text) == len(sent):
            return
        gen.sent[index] = text
        gen.put("delta", index, text[len(sent) :])

    # -- requests --------------------------------------------------------------------------

    def prompt_of(self, messages: list[dict[str, Any]]) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        return [
            int(i) for i in self.tokenizer.encode(text, add_special_tokens=False).input_ids.data[0]
        ]

    def submit(self, prompt: str, sampling: Sampling) -> Choices:
        """Queue one generation; raises ValueError for a request that cannot be served (a
        prompt longer than a slot's context) and ServerBusy when the pipeline is not ready."""
        if not self.ready:
            raise ServerBusy(self.error or "the model is still loading")
        og = self._og
        tokens = self.tokenizer.encode(prompt, add_special_tokens=False).input_ids
        count = int(tokens.shape[1])
        if count >= self.ctx_per_slot:
            raise ValueError(
                f"the request exceeds the available context size: {count} prompt tokens, "
                f"{self.ctx_per_slot} a request"
            )

        def config(seed: int | None):
            cfg = og.GenerationConfig()
            cfg.max_new_tokens = max(1, min(sampling.max_tokens, self.ctx_per_slot - count))
            if sampling.temperature > 0:
                cfg.do_sample = True
                cfg.temperature = sampling.temperature
                cfg.top_p = sampling.top_p
            if seed is not None:
                cfg.rng_seed = seed & 0xFFFFFFFF
            if sampling.stop:
                cfg.stop_strings = set(sampling.stop)
            if sampling.ignore_eos:
                cfg.ignore_eos = True
            if sampling.schema is not None:
                cfg.structured_output_config = og.StructuredOutputConfig(
                    json_schema=json.dumps(sampling.schema)
                )
            if sampling.top_logprobs > 0:  # one step of a beam search: the likeliest tokens
                cfg.max_new_tokens = 1
                cfg.do_sample = False
                cfg.num_beams = cfg.num_return_sequences = sampling.top_logprobs
                cfg.length_penalty = 0.0
            return cfg

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        parts = []
        sampled = sampling.temperature > 0 and sampling.n > 1
        for i in range(sampling.n if sampled else 1):
            # a request of its own for each sampled choice (see Choices), seeds seed + i
            seed = None if sampling.seed is None else sampling.seed + i
            parts.append(
                Generation(
                    id=next(self._ids),
                    prompt_tokens=count,
                    n=max(1, sampling.top_logprobs),
                    loop=loop,
                    events=events,
                    choice=i,
                    config=config(seed),
                    prompt=tokens,
                )
            )
        with self._cv:
            self._inbox.extend(parts)
            self._cv.notify_all()
        return Choices(parts=parts, events=events)

    def cancel(self, request: Choices) -> None:
        """Drop a request nobody waits for (its client went away)."""
        with self._cv:
            self._cancels.extend(request.parts)
            self._cv.notify_all()


def kv_cache_gb(model_path: Path, tokens: int) -> int:
    """The KV cache, in whole GB, that holds ``tokens`` (every slot's whole context, as
    llama-server's ``-c``), from the model's own sizes; 1 GB a 16 k tokens when the file does
    not say them (a 1.5B model takes about 28 kB a token)."""
    from pantheon.core.model.ggufinfo import read_gguf_info

    try:
        per_token = read_gguf_info(model_path).kv_bytes_per_token()
    except Exception:
        per_token = None
    if not per_token:
        return max(1, -(-tokens // 16384))
    return max(1, -(-(per_token * tokens * 11 // 10) // (1 << 30)))


def _finish(reason: Any) -> str:
    name = getattr(reason, "name", str(reason)).upper()
    return {"LENGTH": "length", "TOOL_CALL": "tool_calls"}.get(name, "stop")
