"""The codefix flow on the demo repository: the tool loop fixes a function, real tests judge it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.demo import prepare_demo_repo, repo_jobs
from pantheon.core.flows import packaged_flows_dir
from pantheon.core.llm import LLMClient


def scripted(codegen_steps, verdicts):
    def handler(request):
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok"})
        body = json.loads(request.content)
        system = body["messages"][0]["content"]
        if system.startswith("You review"):
            answer = {"passed": verdicts.pop(0), "reasons": ["looked at it"]}
        else:
            answer = codegen_steps.pop(0)
        return httpx.Response(200, json={"choices": [{"message": {"content": json.dumps(answer)}}]})

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return LLMClient("http://127.0.0.1:9", http=http, retries=0), http


def run(artifacts, registry, inputs, llm):
    flow = load_flow(packaged_flows_dir() / "codefix.yaml", registry)
    with JobQueue(artifacts) as q:
        ids = enqueue(q, flow, inputs)
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run())
    return ids


def test_the_demo_repository_and_its_jobs(tmp_path):
    repo = prepare_demo_repo(tmp_path / "demo")
    docs, code = repo_jobs(repo)
    assert len(docs) >= 100 and len(code) == 30
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
    steps = [
        {
            "action": "tool",
            "tool": "edit_file",
            "args": {
                "path": clamp["path"],
                "old": "max(hi, min(lo, x))",
                "new": "max(lo, min(hi, x))",
            },
        },
        {"action": "tool", "tool": "run_tests", "args": {"target": clamp["test"]}},
        {"action": "final", "answer": {"summary": "clamp keeps x between lo and hi"}},
    ]
    llm, http = scripted(steps, [True, True])
    [job] = run(artifacts, registry, [clamp], llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    assert json.loads((out / "test" / "output.json").read_text())["passed"] is True
    merge = json.loads((out / "merge" / "output.json").read_text())
    assert merge["merged"] is True
    check = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", clamp["test"]],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, "main now holds the fix"
    calls = [json.loads(x) for x in (out / "code" / "calls.jsonl").read_text().splitlines()]
    assert [c.get("kind", "model") for c in calls] == ["model", "tool", "model", "tool", "model"]


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
    llm, http = scripted(steps, [])
    [job] = run(artifacts, registry, [task], llm)
    asyncio.run(http.aclose())
    out = artifacts / "runs" / f"codefix-{job:06d}"
    failed = json.loads((out / "FAILED.json").read_text())
    assert failed["node"] == "test" and "failed" in failed["error"]
    assert not (out / "merge").exists()
    with JobQueue(artifacts) as q:
        assert q.get(job).status == "failed"
