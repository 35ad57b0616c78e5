"""The test gate reads a code change for hard-coded test answers (pantheon.core.work.hardcode)."""

from __future__ import annotations

import asyncio
import json

from helpers import FIXED_CLAMP, calls_of, codefix_model, codefix_night, tool_loop_flow

from pantheon.core.run.demo import prepare_demo_repo, repo_jobs
from pantheon.core.work.hardcode import LIMIT, hard_coded, verdict

BUGGY = "def clamp(x, lo, hi):\n    return max(hi, min(lo, x))\n"
TESTS = (
    "from m01_clamp import clamp\n\n\ndef test_clamp():\n    assert clamp(5, 0, 10) == 5\n"
    "    assert clamp(-3, 0, 10) == 0\n    assert clamp(42, 0, 10) == 10\n"
)
ROTE = (
    "def clamp(x, lo, hi):\n"
    "    if (x, lo, hi) == (5, 0, 10):\n        return 5\n"
    "    if x == -3 and lo == 0 and hi == 10:\n        return 0\n"
    "    if (42, 0, 10) == (x, lo, hi):\n        return 10\n"
    "    return max(hi, min(lo, x))\n"
)


def test_branches_answering_the_tests_cases_by_rote_fail_the_change():
    found = hard_coded(BUGGY, ROTE, TESTS)
    assert [(b.line, b.args, b.value, b.tested) for b in found] == [
        (2, (5, 0, 10), 5, True),
        (4, (-3, 0, 10), 0, True),
        (6, (42, 0, 10), 10, True),
    ]
    ok, said = verdict(found)
    assert ok is False and len(found) >= LIMIT
    assert said.startswith("special cases for the tests' inputs")
    assert "line 2: `if (x, lo, hi) == (5, 0, 10): return 5`" in said


def test_a_base_case_is_said_but_passes_and_old_branches_are_not_the_changes():
    before = "def fact(n):\n    return n * fact(n - 1)\n"
    after = "def fact(n):\n    if n == 0:\n        return 1\n    return n * fact(n - 1)\n"
    found = hard_coded(before, after, "def test_f():\n    assert fact(0) == 1\n")
    assert [b.tested for b in found] == [True]
    ok, said = verdict(found)
    assert ok is True and "1 of them a test's own case: a base case, or a special" in said
    assert hard_coded(after, after + "\n", None) == [], "a branch the code already had"
    assert verdict([]) == (True, None)


def test_a_lookup_the_tests_do_not_ask_for_passes_and_broken_code_reads_as_nothing():
    table = "def days(m):\n" + "".join(
        f"    if m == {m}:\n        return {d}\n" for m, d in [(1, 31), (2, 28), (4, 30)]
    )
    found = hard_coded("def days(m):\n    return 30\n", table, "assert days(5) == 31\n")
    assert len(found) == 3 and not any(b.tested for b in found)
    assert verdict(found)[0] is True
    assert hard_coded(BUGGY, "def clamp(x:\n", TESTS) == []
    assert hard_coded(BUGGY, ROTE, "this is not python(") != [], "no tests: still read"


def test_the_night_never_merges_a_fix_that_hard_codes_its_tests(tmp_path, artifacts, registry):
    """The tool loop writes files itself: the test gate is what stops its answers by rote."""
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    clamp = code[0]
    assert (repo / clamp["test"]).read_text() == TESTS
    steps = [
        {"action": "tool", "tool": "write_file", "args": {"path": clamp["path"], "content": ROTE}},
        {"action": "final", "answer": {"summary": "the tests pass now"}},
    ]
    llm, http = codefix_model(steps, [True, True])
    [job] = codefix_night(artifacts, registry, [clamp], llm, flow_path=tool_loop_flow(tmp_path))
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    test = json.loads((out / "test" / "output.json").read_text())
    assert test["checks"]["tests pass"] is True, "the rote answers do pass the tests"
    assert test["checks"]["no hard-coded test answers"] is False
    assert any("special cases for the tests' inputs" in r for r in test["reasons"])
    assert json.loads((out / "FAILED.json").read_text())["node"] == "test"
    assert not (out / "merge").exists()


def test_a_candidate_that_answers_by_rote_is_never_kept_and_the_real_fix_is(
    tmp_path, artifacts, registry
):
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    llm, http = codefix_model(
        [f"```python\n{ROTE}```", f"```python\n{ROTE}```", FIXED_CLAMP], [True, True]
    )
    [job] = codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    assert json.loads((out / "merge" / "output.json").read_text())["merged"] is True
    calls = calls_of(out)
    greedy, rote, real = calls[0], calls[1], calls[2]
    assert greedy["tests_passed"] is True and greedy["chosen"] is False
    assert greedy["error"].startswith("its tests pass, but by rote: special cases")
    assert rote["chosen"] is False and real["chosen"] is True and real["error"] is None
