"""``training/<id>/evaluation.json``: an adapter's held-out evidence, task by task, and the
promotion decision it supports (re-exported by :mod:`pantheon.core.learn.files`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Evaluation", "TaskResult"]


class TaskResult(BaseModel):
    """One held-out job, run with the base model and with the adapter."""

    run: str
    base: bool
    adapter: bool
    base_error: str | None = None
    adapter_error: str | None = None
    base_change: str | None = None
    """A code task's fix that passed, as a unified diff of the file (what to read)."""
    adapter_change: str | None = None
    label: bool | None = None
    """A verifier's held-out change: its right verdict (True: pass)."""
    base_score: float | None = None
    """A verifier's held-out change: P(pass) from the base model, and from the adapter."""
    adapter_score: float | None = None


class Evaluation(BaseModel):
    """``training/<id>/evaluation.json``: the evidence behind a promotion decision.

    McNemar's exact test on the paired outcomes: ``b`` tasks only the base model passed, ``c``
    only the adapter passed; ``p_value`` is the one-sided binomial probability of at least ``c``
    of ``b + c`` discordant pairs going the adapter's way by chance.
    """

    model_config = ConfigDict(extra="ignore")

    training: str
    agent: str
    adapter: str
    tasks: int
    base_passed: int
    adapter_passed: int
    b: int
    c: int
    p_value: float
    alpha: float
    promoted: bool
    reason: str
    judged_by: str = "flow"
    """flow (each held-out job through its whole flow), pass@1 (one greedy code fix, the real
    tests judging), labels (a reviewer's verdicts against the known right ones) or scores (a
    verifier's P(pass): AUROC with and without the adapter, DeLong's paired test in place of
    McNemar's)."""
    base_auroc: float | None = None
    """scores: the base model's AUROC on the held-out changes, and the adapter's."""
    adapter_auroc: float | None = None
    left_out: int = 0
    """Held-out tasks that could not be judged (a repository gone, a server error)."""
    results: list[TaskResult] = Field(default_factory=list)
    seconds: float = 0.0
    at: datetime | None = None
