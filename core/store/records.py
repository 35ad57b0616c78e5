"""The records of the night's two busiest JSONL files, as pydantic models: a metrics sample (a
line of ``metrics/engine.jsonl``) and a model-call record (a line of a node's ``calls.jsonl``).

They describe the files as they are written — the engine's sampler writes the one, the call log
(:class:`~pantheon.core.model.safecall.CallLog`) the other — and every reader checks a line
against them (:func:`~pantheon.core.store.jsonl.read_jsonl` with ``record=``): the console, the
report, the learn loop. Every field may be missing, and fields beyond these are allowed, so an
older or newer file still reads; a line whose fields have the wrong type is a bad line.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CallRecord", "MetricsSample"]


class MetricsSample(BaseModel):
    """One line of ``metrics/engine.jsonl`` (see :mod:`pantheon.core.observe.metrics`)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    t: str | None = None
    """When, in ISO 8601."""
    ts: float | None = None
    """When, in epoch seconds."""
    depth: int | None = None
    """Jobs queued."""
    running: int | None = None
    done: int | None = None
    failed: int | None = None
    window_s: float | None = None
    """The window the rates are measured over."""
    lambda_: float | None = Field(default=None, alias="lambda")
    """Jobs arriving per second (λ)."""
    mu: float | None = None
    """Jobs one worker finishes per second (μ)."""
    c: int | None = None
    """Jobs run at once."""
    rho: float | None = None
    p_wait: float | None = None
    wait_s: float | None = None
    stable: bool | None = None
    recommended_c: int | None = None
    """The concurrency the queue math advises, bounded by the server's slots."""
    recommended_by: str | None = None
    """``slots`` when the server's slots bound the advice."""
    slots: int | None = None
    """Requests the model server decodes together, when known."""
    burst: bool | None = None
    """The window's jobs all arrived at once (a night enqueued in one go)."""
    drain_s: float | None = None
    tuning: dict[str, Any] | None = None
    """``--concurrency auto``: its phase, the c it set, its note and the measured curve (c,
    tokens/s, jobs/s, seconds)."""
    kappa: float | None = None
    kappa_pairs: int | None = None
    kappa_note: str | None = None
    review_pass_rate: float | None = None
    canaries: dict[str, Any] | None = None
    """The reviewers' scores on the canaries: n, caught, missed, share, per reviewer."""
    accepted_per_hour: float | None = None
    merges_paused: bool | None = None
    agents: dict[str, dict[str, Any]] | None = None
    """Per agent: nodes, λ, μ and pass rate over the window."""
    batch: dict[str, Any] | None = None
    """The model server's batch size: value and source, or why there is none."""
    tokens: dict[str, Any] | None = None
    """Tokens/s (prompt, generated) and source, or why there are none."""
    cache: dict[str, Any] | None = None
    """The share of prompt tokens the server took from its prefix cache since the last sample
    (share, cached, prompt, source), or why there is none."""
    servers: list[dict[str, Any]] | None = None
    """With several model servers: each one's where, up, batch, prompt and generated tokens/s,
    calls in flight and calls answered (``batch`` and ``tokens`` are their sums)."""


class CallRecord(BaseModel):
    """One line of a node's ``calls.jsonl``: a model call (``kind`` missing), one sampled reply
    (``sample``) or code-fix candidate (``candidate``), or a tool the model used (``tool``)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    at: str | None = None
    """When it was recorded, in ISO 8601."""
    kind: str | None = None
    step: int | str | None = None
    backend: str | None = None
    endpoint: str | None = None
    model: str | None = None
    adapter: str | None = None
    """The LoRA adapter that answered (None: the base model)."""
    messages: list[dict[str, Any]] | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    """The output model the reply was asked to fit."""
    raw: str | None = None
    """The reply's text."""
    parsed: Any = None
    error: str | None = None
    """Why the call gave nothing usable (None: it did)."""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float | None = None
    attempts: int | None = None
    chosen: bool | None = None
    """Of several replies or candidates, the one kept."""
    stalled: bool | None = None
    waited_s: float | None = None
    tool: str | None = None
    """For a tool call: its name, ``args`` and ``result``."""
    args: Any = None
    result: Any = None
