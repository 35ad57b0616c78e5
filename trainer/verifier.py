"""Judging a verifier: a reviewer adapter that learnt the one verdict token of a scored review.

A scored reviewer's verdict is a probability (P(pass), :mod:`pantheon.core.model.scoring`), so
a verifier is judged as a scorer, not by counting right words: each held-out labelled change is
scored by the base model and by the adapter, and each side's AUROC is measured over the same
changes. The two AUROCs are correlated (the same changes), so the gain goes through DeLong's
paired test (DeLong, DeLong and Clarke-Pearson, 1988): the adapter is promoted when its AUROC
is higher and the one-sided p-value of a gain that large by chance is under ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from scipy.stats import norm

from pantheon.core.errors import ModelServerError, PantheonError
from pantheon.core.learn.files import TaskResult
from pantheon.core.model.client import LLMClient
from pantheon.core.model.scoring import is_verdict, score_verdict

__all__ = ["decide_auroc", "delong", "is_verifier_data", "judge_scores"]

OnTask = Callable[[TaskResult, int, int], None]


def is_verifier_data(examples: Sequence[dict[str, Any]]) -> bool:
    """Whether labelled examples are a verifier's: every reply the one verdict word."""
    return bool(examples) and all(is_verdict(e["messages"][-1]["content"]) for e in examples)


def _placements(pos: Sequence[float], neg: Sequence[float]) -> tuple[list[float], list[float]]:
    """DeLong's structural components: for each positive, the share of negatives it outscores
    (ties half), and for each negative, the share of positives that outscore it."""

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = [sum(psi(x, y) for y in neg) / len(neg) for x in pos]
    v01 = [sum(psi(x, y) for x in pos) / len(pos) for y in neg]
    return v10, v01


def _cov(a: Sequence[float], b: Sequence[float]) -> float:
    n = len(a)
    if n < 2:
        return 0.0
    ma, mb = sum(a) / n, sum(b) / n
    return sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True)) / (n - 1)


def delong(
    labels: Sequence[bool], first: Sequence[float], second: Sequence[float]
) -> tuple[float, float, float]:
    """The AUROC of two scorers of the same examples (``labels``: True for a good change, the
    one that should score high) and the one-sided p-value of DeLong's paired test that the
    second's is higher than the first's by more than chance. Needs both labels."""
    pos = [i for i, good in enumerate(labels) if good]
    neg = [i for i, good in enumerate(labels) if not good]
    if not pos or not neg:
        raise ValueError("an AUROC needs good and bad examples both")
    comps = []
    for scores in (first, second):
        v10, v01 = _placements([scores[i] for i in pos], [scores[i] for i in neg])
        comps.append((sum(v10) / len(v10), v10, v01))
    (auc1, a10, a01), (auc2, b10, b01) = comps
    var = (_cov(a10, a10) + _cov(b10, b10) - 2 * _cov(a10, b10)) / len(pos) + (
        _cov(a01, a01) + _cov(b01, b01) - 2 * _cov(a01, b01)
    ) / len(neg)
    if var <= 0:
        p = 0.5 if auc2 == auc1 else (0.0 if auc2 > auc1 else 1.0)
    else:
        p = float(norm.sf((auc2 - auc1) / math.sqrt(var)))
    return auc1, auc2, p


def decide_auroc(results: Sequence[TaskResult], alpha: float) -> tuple[bool, float, str, Any]:
    """Promote on a significant AUROC gain: (promoted, p-value, the reason, (base, adapter)
    AUROCs or None when the held-out changes lack a label or a score)."""
    rows = [
        (r.label, r.base_score, r.adapter_score)
        for r in results
        if r.label is not None and r.base_score is not None and r.adapter_score is not None
    ]
    labels = [bool(label) for label, _, _ in rows]
    if not (any(labels) and not all(labels)):
        return False, 1.0, "the held-out changes scored hold one label only: no AUROC", None
    base, adapter, p = delong(labels, [b for _, b, _ in rows], [a for _, _, a in rows])
    aucs = (round(base, 4), round(adapter, 4))
    said = f"AUROC {base:.2f} → {adapter:.2f} on {len(rows)} held-out changes"
    if adapter <= base:
        return False, p, f"no gain: {said}", aucs
    if p >= alpha:
        return False, p, f"a gain chance explains: {said}, p = {p:.3g} ≥ {alpha}", aucs
    return True, p, f"a gain beyond chance: {said}, p = {p:.3g} < {alpha}", aucs


async def judge_scores(
    llm: LLMClient,
    examples: list[dict[str, Any]],
    adapter: str,
    *,
    parallel: int = 4,
    on_task: OnTask | None = None,
) -> list[TaskResult]:
    """Each held-out labelled change scored with the base model and with the adapter; right
    (``base``/``adapter``) when P(pass) is on the label's side of one half. A change a side
    cannot score is kept with that side's error and no score (never a guess)."""
    from .judges import judge_examples

    async def side(i: int, with_adapter: bool) -> tuple[float | None, str | None]:
        messages = examples[i]["messages"][:-1]
        try:
            score = await score_verdict(llm, messages, adapter=adapter if with_adapter else None)
        except ModelServerError:
            raise
        except PantheonError as exc:
            return None, exc.message[:300]
        return score.p_pass, None

    def result_of(run: str, example: dict[str, Any], base: tuple, with_adapter: tuple):
        (b_score, b_err), (a_score, a_err) = base, with_adapter
        label = bool(example["label"])

        def right(score: float | None) -> bool:
            return score is not None and (score >= 0.5) is label

        return TaskResult(
            run=run,
            base=right(b_score),
            adapter=right(a_score),
            base_error=b_err,
            adapter_error=a_err,
            label=label,
            base_score=b_score,
            adapter_score=a_score,
        )

    return await judge_examples(examples, side, result_of, parallel=parallel, on_task=on_task)
