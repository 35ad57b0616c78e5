"""No regressions: a fix that passes its own tests and breaks another test is refused with that
test's name; a test that failed before the change too is not its doing."""

from __future__ import annotations

import asyncio
import json

from helpers import git, make_repo, scripted_model, verdict_reply

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.work.discover import failing_test_jobs
from pantheon.core.work.regress import check_regressions
from pantheon.core.work.testcmd import resolve_test_command

FILES = {
    "calc.py": """
        def half(x):
            return x / 3


        def scale(x, k):
            return x * k
        """,
    "report.py": """
        from calc import scale


        def percent(x):
            return scale(x, 100)
        """,
    "other.py": "def one():\n    return 2\n",
    "test_calc.py": "from calc import half\n\ndef test_half():\n    assert half(8) == 4\n",
    "test_report.py": (
        "from report import percent\n\ndef test_percent():\n    assert percent(0.5) == 50\n"
    ),
    "test_other.py": "from other import one\n\ndef test_one():\n    assert one() == 1\n",
}
# passes test_calc.py, and breaks scale(), which test_report.py runs
BREAKING = "```python\ndef half(x):\n    return x / 2\n\n\ndef scale(x, k):\n    return x + k\n```"
RIGHT = "```python\ndef half(x):\n    return x / 2\n```"


def _changed(repo, text):
    (repo / "calc.py").write_text(text)
    return ["calc.py"]


def test_a_broken_test_is_named_and_a_test_failing_before_is_not_counted(tmp_path):
    repo = make_repo(tmp_path / "r", FILES)
    original = (repo / "calc.py").read_text()
    command = resolve_test_command(repo)
    changed = _changed(
        repo,
        "def half(x):\n    return x / 2\n\n\ndef scale(x, k):\n    return x + k\n",
    )
    check = check_regressions(
        command,
        repo,
        own="test_calc.py",
        guard=None,  # no coverage map: the whole suite
        original=lambda rel: original if rel == "calc.py" else None,
        changed=changed,
    )
    assert not check.passed
    assert check.broken == ["test_report.py::test_percent (E assert 100.5 == 50)"]
    assert check.failing_before == 1  # test_other.py's own bug
    assert check.ran == 2 and check.scope == "the whole suite"
    assert "breaks 1 other test(s): test_report.py::test_percent" in check.reason()

    _changed(repo, "def half(x):\n    return x / 2\n\n\ndef scale(x, k):\n    return x * k\n")
    check = check_regressions(
        command,
        repo,
        own="test_calc.py",
        guard=["test_report.py"],  # the covering tests only
        original=lambda rel: original,
        changed=["calc.py"],
    )
    assert check.passed and check.ran == 1 and check.scope == "the covering tests"
    assert check.reason() == "1 other test(s) (the covering tests) still pass"


def _night(artifacts, registry, job, reply):
    flow = load_flow(packaged_flows_dir() / "codefix.yaml", registry)

    def answer(body):
        if body["messages"][0]["content"].startswith("You review"):
            return verdict_reply(body, True, "fine")
        return reply

    llm, http = scripted_model(answer, usage={"prompt_tokens": 10, "completion_tokens": 5})
    with JobQueue(artifacts) as q:
        [jid] = enqueue(q, flow, [job])

    async def go():
        try:
            await Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm).run()
        finally:
            await http.aclose()

    asyncio.run(go())
    out = artifacts / "runs" / f"codefix-{jid:06d}"
    return json.loads((out / "test" / "output.json").read_text()), out


def test_the_night_refuses_a_fix_that_breaks_another_test(tmp_path, artifacts, registry):
    repo = make_repo(tmp_path / "r", FILES)
    found = failing_test_jobs(repo, resolve_test_command(repo))
    [job] = [j for j in found.jobs if j["test"] == "test_calc.py"]
    assert job["guard"] == ["test_report.py"], "found by coverage: report.py runs calc.scale"
    test, out = _night(artifacts, registry, job, BREAKING)
    assert test["passed"] is False
    assert test["checks"]["tests pass"] is True
    assert test["checks"]["no other test broken"] is False
    assert any("test_report.py::test_percent" in r for r in test["reasons"])
    assert not (out / "merge" / "output.json").exists() or not json.loads(
        (out / "merge" / "output.json").read_text()
    ).get("merged")
    assert "x * k" in git(repo, "show", "main:calc.py"), "main keeps the working scale()"


def test_the_night_merges_a_fix_that_keeps_the_other_tests(tmp_path, artifacts, registry):
    repo = make_repo(tmp_path / "r", FILES)
    found = failing_test_jobs(repo, resolve_test_command(repo))
    [job] = [j for j in found.jobs if j["test"] == "test_calc.py"]
    test, out = _night(artifacts, registry, job, RIGHT)
    assert test["passed"] is True and test["checks"]["no other test broken"] is True
    assert json.loads((out / "merge" / "output.json").read_text())["merged"] is True
    assert "x / 2" in git(repo, "show", "main:calc.py")
