"""The codefix flow on the demo repository: the tool loop fixes a function, real tests judge it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from helpers import (
    FIXED_CLAMP,
    WORDY_CLAMP,
    WRONG_CLAMP,
    calls_of,
    codefix_model,
    codefix_night,
    tool_loop_flow,
)

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.run.demo import prepare_demo_repo, repo_jobs


def test_the_demo_repository_and_its_jobs(tmp_path):
    repo = prepare_demo_repo(tmp_path / "demo")
    docs, code = repo_jobs(repo)
    assert len(docs) >= 100 and len(code) == 30 + 400
    assert code[30]["path"].startswith("code/he000m1/")
    assert prepare_demo_repo(tmp_path / "demo") == repo  # reused
    failing = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", code[0]["test"]],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert failing.returncode == 1, "every code task starts with a failing test"


def test_a_fixed_function_is_tested_for_real_and_merged(tmp_path, artifacts, registry):
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    clamp = code[0]
    assert clamp["path"].endswith("m01_clamp.py")
    llm, http = codefix_model([FIXED_CLAMP], [True, True])
    [job] = codefix_night(artifacts, registry, [clamp], llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    test = json.loads((out / "test" / "output.json").read_text())
    assert test["passed"] is True
    assert test["checks"] == {
        "tests unchanged": True,
        "no hard-coded test answers": True,
        "tests pass": True,
        "no other test broken": True,
    }
    # a demo task is a folder of its own: no other test runs its code
    assert test["reasons"][-1] == "no other test checked: no other test runs the changed code"
    merge = json.loads((out / "merge" / "output.json").read_text())
    assert merge["merged"] is True and merge["files"] == [clamp["path"]]
    check = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", clamp["test"]],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, "main now holds the fix"
    [call] = calls_of(out)
    assert call["kind"] == "candidate" and call["chosen"] is True and call["error"] is None
    assert call["tests_passed"] is True and call["temperature"] == 0.0
    # the model was shown the failing output and both files, in one prompt
    prompt = call["messages"][1]["content"]
    assert "assert 10 == 5" in prompt or "AssertionError" in prompt
    assert "def test_clamp" in prompt and "max(hi, min(lo, x))" in prompt
    assert llm.seen == [(0, 0.0)], "a greedy fix that passes asks for no more candidates"
    code_out = json.loads((out / "code" / "output.json").read_text())
    assert code_out["candidates"] == 1 and code_out["chosen"] == 0


def test_candidates_are_sampled_when_the_greedy_fix_fails_and_the_smallest_passing_is_kept(
    tmp_path, artifacts, registry
):
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    # seed 0 (greedy) is wrong, 1 garbage, 2 a long right fix, 3 the short right fix
    fixes = [WRONG_CLAMP, "I think the bug is in line 2.", WORDY_CLAMP, FIXED_CLAMP]
    llm, http = codefix_model(fixes, [True, True])
    [job] = codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    assert json.loads((out / "merge" / "output.json").read_text())["merged"] is True
    assert sorted(llm.seen) == [(0, 0.0)] + [(seed, 0.7) for seed in range(1, 8)], "k = 8"
    calls = sorted(calls_of(out), key=lambda c: c["candidate"])
    assert [c["tests_passed"] for c in calls] == [False, False, True, True] + [False] * 4
    assert [c["chosen"] for c in calls] == [False, False, False, True] + [False] * 4
    assert "its tests fail" in calls[0]["error"]
    assert "no ```python code block" in calls[1]["error"]
    assert "not kept: candidate 3 is a smaller change" in calls[2]["error"]
    assert calls[3]["error"] is None
    assert [c["request_n"] for c in calls] == [1] + [7] * 7, "the sampled ones: one request"
    assert calls[2]["completion_tokens"] == len(WORDY_CLAMP.split()), "each its own tokens"
    assert "max(lo, min(hi, x))" in (repo / code[0]["path"]).read_text()
    # the run detail shows each candidate with its test result, and which one was kept
    from pantheon.console.screens.run_detail import call_parts
    from pantheon.core.views.night import load_run

    [node] = [n for n in load_run(artifacts, out.name).nodes if n.id == "code"]
    titles = [title for title, _ in call_parts(node)]
    heads = [t for t in titles if t.startswith("candidate ")]
    assert heads[0].startswith("candidate 1 · T 0.0 · seed 0 · tests failed")
    assert heads[3].startswith("candidate 4 · T 0.7 · seed 3 · tests passed · KEPT")
    assert titles.count("  why not kept") == 7 and "  test output" in titles
    assert titles.count("  user") == 1, "the prompt is shown once, not once per candidate"


def test_no_candidate_that_passes_fails_codegen_with_each_reason(tmp_path, artifacts, registry):
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    llm, http = codefix_model([WRONG_CLAMP] * 8, [])
    [job] = codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["node"] == "code"
    assert "none of the 8 candidate fix(es) passes" in failed["error"]
    assert not (out / "merge").exists()
    assert all(c["error"] and not c["chosen"] for c in calls_of(out))


def test_the_tool_loop_form_still_fixes_and_a_fix_that_edits_its_test_never_passes(
    tmp_path, artifacts, registry
):
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    task = code[1]  # is_even
    cheat = [
        {
            "action": "tool",
            "tool": "write_file",
            "args": {"path": task["test"], "content": "def test_nothing():\n    assert True\n"},
        },
        {"action": "final", "answer": {"summary": "the tests pass now"}},
    ]
    llm, http = codefix_model(cheat, [])
    [job] = codefix_night(artifacts, registry, [task], llm, flow_path=tool_loop_flow(tmp_path))
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["node"] == "test"
    test = json.loads((out / "test" / "output.json").read_text())
    assert test["checks"]["tests unchanged"] is False, "the rewritten test itself passes"
    assert test["checks"]["tests pass"] is True
    assert any("edits test file" in r for r in test["reasons"])
    assert not (out / "merge").exists()


def test_a_wrong_fix_fails_on_the_real_tests_not_the_models_word(tmp_path, artifacts, registry):
    repo = prepare_demo_repo(tmp_path / "demo")
    _, code = repo_jobs(repo)
    task = code[1]  # is_even
    steps = [
        {
            "action": "tool",
            "tool": "edit_file",
            "args": {"path": task["path"], "old": "n % 2 == 1", "new": "n % 3 == 0"},
        },
        {"action": "final", "answer": {"summary": "fixed, trust me"}},
    ]
    llm, http = codefix_model(steps, [])
    flow = load_flow(tool_loop_flow(tmp_path), registry)
    with JobQueue(artifacts) as q:
        [job] = enqueue(q, flow, [task])
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run())
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["node"] == "test" and "failed" in failed["error"]
    assert not (out / "merge").exists()
    with JobQueue(artifacts) as q:
        assert q.get(job).status == "failed"
