"""Queue math for the night: Erlang C, the concurrency to ask for, and reviewer agreement.

The engine is an M/M/c queue: jobs arrive at rate λ, each of the c workers finishes them at rate
μ, the offered load is a = λ/μ and the utilization ρ = λ/(cμ). Erlang C is the probability that a
job has to wait. It is computed through the Erlang B recursion, which never forms a factorial or a
power, so c = 200 (or 2 000) is as exact as c = 2.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "Kappa",
    "cohen_kappa",
    "erlang_b",
    "erlang_c",
    "expected_accepted",
    "expected_wait",
    "recommended_concurrency",
    "utilization",
    "wilson_interval",
]


def erlang_b(c: int, a: float) -> float:
    """Blocking probability of c servers with offered load a (Erlang B), by recursion."""
    if c < 0 or a < 0:
        raise ValueError("c and a must be >= 0")
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    return b


def erlang_c(c: int, a: float) -> float:
    """Probability of waiting with c servers and offered load a = λ/μ (Erlang C).

    1.0 when the queue is unstable (a >= c): every job waits, and the wait grows without bound.
    """
    if c <= 0:
        return 1.0
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    b = erlang_b(c, a)
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def utilization(lam: float, mu: float, c: int) -> float | None:
    """ρ = λ/(cμ); None when μ or c is not known yet."""
    if mu <= 0 or c <= 0:
        return None
    return lam / (c * mu)


def expected_wait(lam: float, mu: float, c: int) -> float | None:
    """Mean time in the queue Wq = C(c, a) / (cμ - λ); inf when unstable, None when unknown."""
    if mu <= 0 or c <= 0:
        return None
    if lam >= c * mu:
        return math.inf
    return erlang_c(c, lam / mu) / (c * mu - lam)


def recommended_concurrency(
    lam: float, mu: float, *, max_rho: float = 0.8, max_p_wait: float = 0.2, limit: int = 1024
) -> int | None:
    """The smallest c with ρ <= max_rho and P(wait) <= max_p_wait (None when μ is unknown)."""
    if mu <= 0:
        return None
    if lam <= 0:
        return 1
    a = lam / mu
    c = max(1, math.ceil(a / max_rho))
    while c <= limit:
        if a / c <= max_rho and erlang_c(c, a) <= max_p_wait:
            return c
        c += 1
    return limit


def expected_accepted(hours: float, agents: Iterable[tuple[float, float]]) -> float:
    """Accepted changes in ``hours`` with dual review: E ≈ T Σ μ_i p_i².

    ``agents`` gives, per agent, its service rate μ_i (jobs per second) and the probability p_i
    that one reviewer passes its work; a change is accepted only when both reviewers pass it.
    """
    seconds = hours * 3600.0
    return seconds * sum(mu * p * p for mu, p in agents)


@dataclass(frozen=True, slots=True)
class Kappa:
    value: float | None
    """Cohen's κ; None when there are no pairs, or when it is undefined (p_e = 1)."""
    pairs: int
    observed: float | None
    """p_o: the share of pairs on which both reviewers agree."""
    expected: float | None
    """p_e: the agreement expected by chance from each reviewer's own label frequencies."""
    pass_share: float | None = None
    """The share of all verdicts (both reviewers) that passed the change (boolean labels)."""
    note: str | None = None
    """Why κ has no value although there are pairs."""


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> Kappa:
    """Cohen's κ of two raters over the same items.

    κ = (p_o - p_e) / (1 - p_e). When p_e = 1 — both reviewers gave one and the same label to
    every item — κ is 0/0: undefined, not 1. Reviewers who passed everything have shown no
    disagreement, which is not evidence that they agree on anything; ``note`` says so and
    nothing counts it as agreement.
    """
    n = len(pairs)
    if n == 0:
        return Kappa(None, 0, None, None)
    agree = sum(1 for a, b in pairs if a == b)
    p_o = agree / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    p_e = sum(first[k] * second.get(k, 0) for k in first) / (n * n)
    labels = [x for pair in pairs for x in pair]
    share = (
        sum(1 for x in labels if x is True or x == "pass") / len(labels)
        if all(isinstance(x, bool) or x in ("pass", "fail") for x in labels)
        else None
    )
    if math.isclose(p_e, 1.0):
        label = labels[0]
        never = "failed" if label is True or label == "pass" else "passed"
        return Kappa(
            None, n, p_o, p_e, share, f"no disagreement seen — reviewers never {never} anything"
        )
    return Kappa((p_o - p_e) / (1.0 - p_e), n, p_o, p_e, share)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial share (95 % by default); (0, 1) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and means something at 0 or n
    successes out of a handful, which is what a night's few canaries give.
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
