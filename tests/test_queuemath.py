"""Queue math against published values and independent formulas."""

from __future__ import annotations

import math

import pytest
from scipy.special import gammaln

from pantheon.core.observe.queuemath import (
    cohen_kappa,
    erlang_b,
    erlang_c,
    expected_accepted,
    expected_wait,
    recommended_concurrency,
    utilization,
)


def erlang_c_log_space(c: int, a: float) -> float:
    """An independent oracle: the textbook formula in log space (no overflow)."""
    log_terms = [k * math.log(a) - gammaln(k + 1) for k in range(c)]
    log_top = c * math.log(a) - gammaln(c + 1) + math.log(c / (c - a))
    m = max(*log_terms, log_top)
    total = sum(math.exp(t - m) for t in log_terms) + math.exp(log_top - m)
    return math.exp(log_top - m) / total


@pytest.mark.parametrize(
    ("c", "a", "published"),
    [
        (2, 1.0, 1 / 3),  # M/M/2 at ρ = 0.5: P(wait) = 1/3
        (1, 0.5, 0.5),  # M/M/1: P(wait) = ρ
        (10, 8.0, 0.4092),  # the classic call-centre table value
        (5, 4.0, 0.5541),
    ],
)
def test_erlang_c_matches_table_values(c, a, published):
    assert erlang_c(c, a) == pytest.approx(published, abs=5e-4)


@pytest.mark.parametrize(("c", "a"), [(50, 45.0), (200, 180.0), (200, 150.0), (1000, 990.0)])
def test_erlang_c_is_stable_at_large_c(c, a):
    value = erlang_c(c, a)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(erlang_c_log_space(c, a), rel=1e-9)


def test_erlang_edges():
    assert erlang_c(4, 0.0) == 0.0
    assert erlang_c(4, 4.0) == 1.0 and erlang_c(4, 9.0) == 1.0
    assert erlang_b(0, 3.0) == 1.0
    assert erlang_b(1, 1.0) == pytest.approx(0.5)


def test_rho_wait_and_the_concurrency_to_ask_for():
    assert utilization(1.0, 0.25, 8) == pytest.approx(0.5)
    assert utilization(1.0, 0.0, 8) is None
    # M/M/1: Wq = ρ / (μ - λ)
    assert expected_wait(0.5, 1.0, 1) == pytest.approx(1.0)
    assert expected_wait(2.0, 1.0, 2) == math.inf
    c = recommended_concurrency(8.0, 1.0, max_rho=0.8, max_p_wait=0.2)
    assert c >= 10 and 8.0 / c <= 0.8 and erlang_c(c, 8.0) <= 0.2
    assert erlang_c(c - 1, 8.0) > 0.2 or 8.0 / (c - 1) > 0.8
    assert recommended_concurrency(0.0, 1.0) == 1
    assert recommended_concurrency(1.0, 0.0) is None


def test_expected_accepted_with_dual_review():
    # one agent at 0.01 jobs/s whose work each reviewer passes 90% of the time, for 8 hours
    assert expected_accepted(8, [(0.01, 0.9)]) == pytest.approx(8 * 3600 * 0.01 * 0.81)


def _pairs(yy, yn, ny, nn):
    return [(1, 1)] * yy + [(1, 0)] * yn + [(0, 1)] * ny + [(0, 0)] * nn


@pytest.mark.parametrize(
    ("table", "kappa"),
    [
        ((20, 5, 10, 15), 0.4),  # p_o 0.7, p_e 0.5
        ((45, 15, 25, 15), 0.1304),  # same p_o 0.6, different κ ...
        ((25, 35, 5, 35), 0.2593),  # ... because the marginals differ
        ((50, 0, 0, 50), 1.0),
        ((0, 50, 50, 0), -1.0),
    ],
)
def test_cohen_kappa_worked_examples(table, kappa):
    assert cohen_kappa(_pairs(*table)).value == pytest.approx(kappa, abs=5e-4)


def test_cohen_kappa_degenerate_cases():
    none = cohen_kappa([])
    assert none.value is None and none.pairs == 0
    all_pass = cohen_kappa([("pass", "pass")] * 12)
    # p_e = 1: undefined, never counted as agreement
    assert all_pass.value is None and all_pass.pairs == 12 and all_pass.expected == 1.0
    assert all_pass.note == "no disagreement seen — reviewers never failed anything"
    assert all_pass.pass_share == 1.0
    never_pass = cohen_kappa([(False, False)] * 5)
    assert never_pass.value is None and "never passed anything" in never_pass.note
    one_sided = cohen_kappa([("pass", "pass")] * 9 + [("pass", "fail")])
    assert one_sided.value == pytest.approx(0.0)
