"""The learn loop on code: mining code fixes (the kept candidate only), reviewers' labels from
canaries and the morning review, the split by task, the pass@1 judge on the real tests, the learn
loop on a night of code, and the morning report's learning section. The training itself is in
test_learn_steps.py."""

from __future__ import annotations

import asyncio
import json
import re
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from helpers import FIXED_CLAMP, WORDY_CLAMP, WRONG_CLAMP, codefix_model, codefix_night, pantheon

from pantheon.core.learn.files import (
    Evaluation,
    RegistryEntry,
    read_learn,
    training_root,
    update_registry,
)
from pantheon.core.model.client import LLMClient
from pantheon.core.morning.report import build_summary
from pantheon.core.run.demo import corpus_tasks, prepare_demo_repo, repo_jobs
from pantheon.core.store.control import ControlFile
from pantheon.trainer.examples import heldout, read_examples, task_key
from pantheon.trainer.mine import mine


@pytest.fixture
def demo(tmp_path):
    repo = prepare_demo_repo(tmp_path / "demo")
    return repo, repo_jobs(repo)[1]


# -- mining code fixes --------------------------------------------------------------------------


def test_only_the_kept_candidate_of_a_green_fix_is_learnt_from(demo, artifacts, registry):
    _repo, code = demo
    clamp = code[0]
    # the greedy fix is wrong, a sampled one is garbage, two pass: the smaller one is kept
    llm, http = codefix_model(
        [WRONG_CLAMP, "I think the bug is in line 2.", WORDY_CLAMP, FIXED_CLAMP], [True, True]
    )
    codefix_night(artifacts, registry, [clamp], llm)
    asyncio.run(http.aclose())
    # a second task no candidate fixes: it fails, and gives nothing
    llm, http = codefix_model([WRONG_CLAMP] * 8, [True, True])
    codefix_night(artifacts, registry, [{**code[1]}], llm)
    asyncio.run(http.aclose())

    result = mine(artifacts, fraction=0.01)
    stats = result.agents["codegen"]
    examples, bad = read_examples(artifacts, "codegen")
    assert bad == 0 and [e["run"] for e in examples] == ["codefix-000001"]
    [example] = examples
    assert example["messages"][-1] == {"role": "assistant", "content": FIXED_CLAMP}
    assert (
        example["messages"][0]["role"] == "system" and "clamp" in example["messages"][1]["content"]
    )
    assert example["key"] == "file:m01_clamp.py"
    # the failed candidates and the passing one not kept are counted, never positives
    assert stats.left_out["failed candidate"] == 6 and stats.left_out["candidate not kept"] == 1
    assert stats.left_out["failed"] == 1  # the second job
    # nobody checked the reviewers' verdicts: they learn only the wrong fix (its tests failed)
    reviews, _ = read_examples(artifacts, "review.peer")
    assert {e["label_from"] for e in reviews} == {"wrong fix (its tests failed)"}


def test_a_scored_reviewer_learns_the_nights_wrong_fixes_shown_as_the_gates_pass_them(
    demo, artifacts, registry
):
    """Each distinct candidate whose tests failed is a real wrong fix of its task: a fail for
    each scored reviewer, shown with the task and the passing test report the reviewer saw (so
    its test result gives nothing away); a job nobody reviewed gives none."""
    _repo, code = demo
    wrong_too = "```python\ndef clamp(x, lo, hi):\n    return min(lo, max(hi, x))\n```"
    fixes = [WRONG_CLAMP, WRONG_CLAMP, wrong_too, "No code here.", FIXED_CLAMP]
    llm, http = codefix_model(fixes, [True, True])
    codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    llm, http = codefix_model([WRONG_CLAMP] * 8, [])
    codefix_night(artifacts, registry, [code[1]], llm)
    asyncio.run(http.aclose())

    stats = mine(artifacts, fraction=0.01).agents["review.peer"]
    examples, bad = read_examples(artifacts, "review.peer")
    assert bad == 0 and stats.labels == {"fail": 4}
    runs = sorted({e["run"] for e in examples})
    assert runs == ["codefix-000001#candidate0", "codefix-000001#candidate2"]
    assert {e["node"] for e in examples} == {"review_a", "review_b"}
    seen = json.loads((artifacts / "runs/codefix-000001/review_a/input.json").read_text())
    assert seen["test_passed"] is True
    for e in examples:
        prompt = e["messages"][-2]["content"]
        assert e["messages"][-1] == {"role": "assistant", "content": "fail"}
        assert e["label"] is False and e["own_reply"] is False
        assert "diff --git a/code/t01/m01_clamp.py b/code/t01/m01_clamp.py" in prompt
        assert "The tests passed." in prompt and "FAILED" not in prompt
        wrong = "+    return x\n" if e["run"].endswith("0") else "+    return min(lo, max(hi, x))"
        assert wrong in prompt and "max(lo, min(hi, x))" not in prompt.split("Change:")[1]


def test_the_split_is_by_task_not_by_run():
    # every mutant of one HumanEval problem is the same task: one side of the split
    by_problem = defaultdict(set)
    for t in corpus_tasks():
        key = task_key({"path": f"code/{t['id']}/{t['module']}.py"}, t["id"])
        by_problem[t["module"]].add(key)
    assert len(by_problem) > 100 and all(len(keys) == 1 for keys in by_problem.values())
    sides = {heldout(next(iter(k)), 0.2) for k in by_problem.values()}
    assert sides == {True, False}
    held = sum(heldout(next(iter(k)), 0.2) for k in by_problem.values()) / len(by_problem)
    assert 0.1 < held < 0.3
    # an explicit key wins; no path: the run
    assert task_key({"task_key": "x", "path": "a/b.py"}, "r1") == "x"
    assert task_key({"text": "hi"}, "r1") == "run:r1"
    assert task_key({"path": "docs/a.md"}, "r1") == task_key({"path": "other/a.md"}, "r2")


def test_two_nights_on_one_task_fall_on_the_same_side(demo, artifacts, registry):
    repo, code = demo
    for _ in range(2):  # the same task twice, as two nights would run it
        llm, http = codefix_model([FIXED_CLAMP], [True, True])
        codefix_night(artifacts, registry, [code[0]], llm)
        asyncio.run(http.aclose())
        (repo / code[0]["path"]).write_text(
            "def clamp(x, lo, hi):\n    return max(hi, min(lo, x))\n"
        )
    for fraction in (0.05, 0.5, 0.95):
        mine(artifacts, fraction=fraction)
        examples, _ = read_examples(artifacts, "codegen")
        assert len({e["split"] for e in examples}) == 1, fraction


# -- reviewers learn from labels only ----------------------------------------------------------


def test_reviewers_learn_only_from_canaries_and_the_operators_decisions(demo, artifacts, registry):
    from pantheon.core.morning.review import Change, merge_by_hand

    _repo, code = demo
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="review")
    # both reviewers pass everything: the real change, and the canary planted from it
    llm, http = codefix_model([FIXED_CLAMP], [True] * 8)
    codefix_night(artifacts, registry, [code[0]], llm, canary_every=1)
    asyncio.run(http.aclose())
    canaries = (artifacts / "canaries.jsonl").read_text().splitlines()
    assert len(canaries) == 1 and json.loads(canaries[0])["verdicts"]

    mine(artifacts, fraction=0.01)
    examples, _ = read_examples(artifacts, "review.peer")
    # the canary: each reviewer's prompt, and the right verdict (a fail), not its own pass
    assert len(examples) == 2 and {e["node"] for e in examples} == {"review_a", "review_b"}
    for e in examples:
        # the flow's reviewers are scored: the right verdict is the one word, not their pass
        assert e["messages"][-1]["content"] == "fail"
        assert e["label"] is False and e["own_reply"] is False
        assert e["label_from"].startswith("canary")
        assert "Change:" in e["messages"][1]["content"]
    # training on fails only would teach "always fail": refused
    from pantheon.trainer.train import NotEnoughData, TrainOptions, check_data

    with pytest.raises(NotEnoughData, match=r"every labelled example of review\.peer says fail"):
        check_data(artifacts, "review.peer", TrainOptions(min_examples=1))

    # the operator merges the real change in the morning: a pass, for both reviewers
    change = next(c for c in build_summary(artifacts)["changes"] if c["state"] == "waiting")
    merge_by_hand(artifacts, Change(**{**change, "reviews": (True, True)}), by="ana")
    mine(artifacts, fraction=0.01)
    examples, _ = read_examples(artifacts, "review.peer")
    labels = sorted((e["label"], e["own_reply"]) for e in examples)
    assert labels == [(False, False), (False, False), (True, True), (True, True)]
    assert check_data(artifacts, "review.peer", TrainOptions(min_examples=1))[0] == 4


def test_the_corpus_gives_the_reviewers_both_verdicts_split_as_the_night_is(
    demo, artifacts, registry
):
    from pantheon.core.agents.review import SCORED_SYSTEM
    from pantheon.trainer.train import TrainOptions, check_data

    _repo, code = demo
    llm, http = codefix_model([FIXED_CLAMP], [True] * 8)
    codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    # the night alone labels nothing for the reviewers: nobody checked their verdicts
    assert "review.peer" not in mine(artifacts, fraction=0.5).agents

    stats = mine(artifacts, fraction=0.5, corpus=3).agents["review.peer"]
    examples, _ = read_examples(artifacts, "review.peer")
    assert stats.corpus == len(examples) > 20
    assert stats.labels["pass"] > 0 and stats.labels["fail"] > stats.labels["pass"]
    nodes = {e["node"] for e in examples}
    assert {"codefix.review_a", "codefix.review_b", "docops.review_a"} <= nodes
    sides: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        sides[e["key"]].add(e["split"])
        assert e["split"] == ("heldout" if heldout(e["key"], 0.5) else "train")
        # the night's own scored prompt, and the right verdict as the one word asked for;
        # every change shown as the gates pass one, so the verdict comes from the diff
        assert e["messages"][0]["content"] == SCORED_SYSTEM
        assert "Change:\n```diff" in e["messages"][1]["content"]
        assert "FAILED" not in e["messages"][1]["content"]
        assert e["messages"][-1]["content"] == ("pass" if e["label"] else "fail")
    assert all(len(s) == 1 for s in sides.values())  # no task on both sides
    # both verdicts: a reviewer adapter may be trained on them
    assert check_data(artifacts, "review.peer", TrainOptions(min_examples=1))[0] == stats.train


def test_the_corpus_alone_gives_the_reviewers_labelled_examples_without_a_night(tmp_path):
    artifacts = tmp_path / "artifacts"
    result = mine(artifacts, fraction=0.5, corpus=2, only={"review.peer"})
    assert result.runs == 0 and set(result.agents) == {"review.peer"}
    stats = result.agents["review.peer"]
    assert stats.corpus == stats.train + stats.heldout > 10
    examples, _ = read_examples(artifacts, "review.peer")
    assert {e["label"] for e in examples} == {True, False}


def test_the_corpus_gives_codegen_the_real_fix_of_each_mutant_in_the_prompt_it_is_judged_with(
    tmp_path,
):
    from pantheon.trainer.fixes import SOURCE
    from pantheon.trainer.judges import CodeTask, judge_pass_at_1

    artifacts = tmp_path / "artifacts"
    result = mine(artifacts, fraction=0.5, corpus=4, only={"codegen"})
    stats = result.agents["codegen"]
    examples, _ = read_examples(artifacts, "codegen")
    by_id = {t["id"]: t for t in corpus_tasks()}
    origins = {by_id[e["run"].split(":", 1)[1]]["origin"] for e in examples}
    # every mutant of the four problems, each tested: none left out but for a reason
    mutants = [t for t in corpus_tasks() if t["origin"] in origins]
    assert len(origins) == 4 and stats.corpus == len(examples) > 4
    assert len(examples) + sum(stats.left_out.values()) == len(mutants)
    sides: dict[str, set[str]] = defaultdict(set)
    for e in examples:
        t = by_id[e["run"].split(":", 1)[1]]
        assert e["label_from"] == SOURCE and e["node"] == "codegen"
        assert e["split"] == ("heldout" if heldout(e["key"], 0.5) else "train")
        sides[t["origin"]].add(e["split"])
        prompt, reply = e["messages"][1]["content"], e["messages"][-1]["content"]
        failure = prompt.split("Its tests fail:\n```\n", 1)[1]
        assert t["source"].rstrip() in prompt and "Error" in failure  # its real failure
        fixed = reply.removeprefix("```python\n").removesuffix("\n```")
        assert fixed != t["source"].rstrip() and t["bug"].split(" -> ")[0] in fixed
    assert all(len(s) == 1 for s in sides.values())  # every mutant of a problem on one side

    # the prompt is the one the judging (and a night) sends for that task, to the character
    e = examples[0]
    t = by_id[e["run"].split(":", 1)[1]]
    path, test = f"code/{t['id']}/{t['module']}.py", f"code/{t['id']}/test_{t['module']}.py"
    files = {path: t["source"], test: t["test"]}
    task = CodeTask(e["key"], e["run"], path, test, t["task"], files=files)
    sent = []

    def handler(request):
        body = json.loads(request.content)
        sent.append(body["messages"])
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": 0,
                        "message": {"content": e["messages"][-1]["content"]},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            },
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    llm = LLMClient("http://127.0.0.1:9", http=http, retries=0, adapters={"ad": 0})
    [judged] = asyncio.run(judge_pass_at_1(llm, [task], "ad", parallel=1))
    asyncio.run(http.aclose())
    assert judged.base and judged.adapter  # the example's reply passes the real tests

    # but for the addresses pytest prints of the function under test
    def same(messages):
        return [re.sub(r"0x[0-9a-f]+", "0x…", m["content"]) for m in messages]

    assert same(sent[0]) == same(e["messages"][:-1])


# -- the pass@1 judge on the real tests ---------------------------------------------------------


def _answering(fixed_for_adapter: dict[str, str]):
    """A model server: with the adapter, the right file; without it, the file unchanged."""

    def handler(request):
        body = json.loads(request.content)
        prompt = body["messages"][1]["content"]
        source = prompt.split("```python\n", 1)[1].split("\n```", 1)[0]
        module = next(m for m in fixed_for_adapter if f"def {m}(" in source)
        text = (
            fixed_for_adapter[module]
            if body.get("lora") and any(x.get("scale") for x in body["lora"])
            else source
        )
        return httpx.Response(
            200,
            json={
                "choices": [
                    {
                        "index": 0,
                        "message": {"content": f"```python\n{text}\n```"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 20},
            },
        )

    http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return LLMClient("http://127.0.0.1:9", http=http, retries=0, adapters={"ad": 0}), http


def test_pass_at_1_judges_one_greedy_fix_on_the_real_tests_of_held_out_problems(tmp_path):
    from pantheon.trainer.judges import code_tasks, judge_pass_at_1

    tasks, problems = code_tasks(tmp_path, [], set(), corpus_fraction=0.2)
    assert not problems and len(tasks) > 40
    keys = {t.key for t in tasks}
    assert all(heldout(k, 0.2) for k in keys)
    # trained keys are never judged on
    fewer, _ = code_tasks(tmp_path, [], {tasks[0].key}, corpus_fraction=0.2)
    assert tasks[0].key not in {t.key for t in fewer}

    from pantheon.core.run.demo import corpus_tasks as shipped
    from pantheon.core.work.codecorpus import load_humaneval

    canonical = {p["entry_point"]: p["prompt"] + p["canonical_solution"] for p in load_humaneval()}
    picked = tasks[:3]
    by_id = {t["id"]: t for t in shipped()}
    fixes = {by_id[t.run.split(":", 1)[1]]["function"]: None for t in picked}
    for name in fixes:
        fixes[name] = canonical[name]
    llm, http = _answering(fixes)
    results = asyncio.run(judge_pass_at_1(llm, picked, "ad", parallel=2))
    asyncio.run(http.aclose())
    assert [r.run for r in results] == [t.run for t in picked]
    assert all(r.adapter and not r.base for r in results)
    assert all("changes nothing" in r.base_error for r in results)
    # the passing fix is kept to be read: the diff that reverts the planted bug
    for r, t in zip(results, picked, strict=True):
        before = by_id[t.run.split(":", 1)[1]]["bug"].split(" -> ", 1)[0]
        header = f"diff --git a/{t.path} b/{t.path}\n--- a/{t.path}"
        assert r.base_change is None and r.adapter_change.startswith(header)
        assert any(ln.startswith("+") and before in ln for ln in r.adapter_change.splitlines())


def test_a_nights_code_task_is_judged_from_the_commit_it_started_from(demo, artifacts, registry):
    from pantheon.trainer.judges import code_tasks

    repo, code = demo
    llm, http = codefix_model([FIXED_CLAMP], [True, True])
    codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    mine(artifacts, fraction=0.99)  # held out
    tasks = [
        json.loads(x)
        for x in (training_root(artifacts) / "codegen" / "tasks.jsonl").read_text().splitlines()
    ]
    [task], problems = code_tasks(artifacts, tasks, set())
    assert not problems and task.path == code[0]["path"]
    folder = task.materialize(Path(artifacts) / "scratch")
    # main holds the fix now; the task is set up as it was before it
    assert "max(hi, min(lo, x))" in (folder / task.path).read_text()
    assert "max(lo, min(hi, x))" in (repo / task.path).read_text()


def test_the_judges_ask_one_side_at_a_time_so_the_server_batches_each_whole():
    """llama-server does not batch requests whose adapters differ: the judging never has a base
    call and an adapter call in flight together, keeps `parallel` in flight, and hands back
    every pair in order; a task a side of which failed as the caller allows is left out."""
    from pantheon.trainer.judges import in_phases

    flight: list[bool] = []
    mixed, most = [], []

    async def side(i: int, with_adapter: bool) -> int:
        flight.append(with_adapter)
        mixed.append(len(set(flight)) > 1)
        most.append(len(flight))
        await asyncio.sleep(0.001 * (i % 3))
        flight.remove(with_adapter)
        if i == 5 and with_adapter:
            raise OSError("the sandbox could not start")
        return i * 10 + with_adapter

    async def collect(left_out=()):
        phases = in_phases(list(range(11)), side, parallel=3, left_out=left_out)
        return [x async for x in phases]

    got = asyncio.run(collect(left_out=(OSError,)))
    assert [i for i, _, _ in got] == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]  # 5 left out
    assert not any(mixed)
    assert max(most) == 3
    assert got[4][1:] == (40, 41)
    with pytest.raises(OSError, match="sandbox"):  # not one to leave out: it is raised
        asyncio.run(collect())


# -- the learn loop on a night of code ---------------------------------------------------------


def test_learn_on_a_night_without_enough_data_says_so_for_each_agent(demo, artifacts, registry):
    _repo, code = demo
    llm, http = codefix_model([FIXED_CLAMP], [True, True])
    codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    out = pantheon("learn", "--heldout", "0.01", "--artifacts", str(artifacts))
    assert out.returncode == 0, out.stderr
    assert "codegen: not trained: not enough data (1 < 50 green examples)" in out.stdout
    record = read_learn(artifacts)
    assert record is not None and record.agents[0].action == "skipped"


# -- the morning report's learning section ------------------------------------------------------


def test_the_report_shows_the_adapter_its_evidence_and_the_pass_rate_before_and_after(
    demo, artifacts, registry
):
    _repo, code = demo
    llm, http = codefix_model([WRONG_CLAMP] * 8, [True, True])  # the base model: fails
    codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    evidence = Evaluation(
        training="codegen-20261201T010000",
        agent="codegen",
        adapter="codegen-20261201T010000",
        tasks=80,
        base_passed=20,
        adapter_passed=34,
        b=2,
        c=16,
        p_value=0.0007,
        alpha=0.05,
        promoted=True,
        reason="a gain beyond chance: won 16, lost 2, p = 0.0007 < 0.05",
        judged_by="pass@1",
    )

    def change(reg):
        reg.agents["codegen"] = RegistryEntry(
            agent="codegen",
            adapter=evidence.adapter,
            training=evidence.training,
            base_model="m.gguf",
            evidence=evidence.model_dump(mode="json", exclude={"results"}),
        )

    update_registry(artifacts, change)
    # the next night: the adapter answers codegen's calls, and fixes the task
    llm, http = codefix_model([FIXED_CLAMP], [True, True])
    llm.adapters = {evidence.adapter: 0}
    codefix_night(artifacts, registry, [code[0]], llm, adapters={"codegen": evidence.adapter})
    asyncio.run(http.aclose())

    learning = build_summary(artifacts)["learning"]
    [row] = [a for a in learning["agents"] if a["agent"] == "codegen"]
    assert row["adapter"] == evidence.adapter
    assert row["evidence"]["judged_by"] == "pass@1" and row["evidence"]["c"] == 16
    assert row["night"]["base"] == {"done": 0, "failed": 1, "pass_rate": 0.0}
    assert row["night"][evidence.adapter] == {"done": 1, "failed": 0, "pass_rate": 1.0}
    out = pantheon("report", "--artifacts", str(artifacts))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("learning"))
    assert "codegen: codegen-20261201T010000" in line and "base 20/80, adapter 34/80" in line
    assert "nights: adapter 1/1, base 0/1" in line or "base 0/1" in line
    html = (artifacts / "report.html").read_text()
    assert 'id="learning"' in html and "pass@1: base 20/80 (25 %), adapter 34/80 (42 %)" in html


def test_night_learn_runs_the_loop_after_the_night(demo, artifacts, registry, capsys):
    from pantheon.console import cli
    from pantheon.console.commands.night import night_learn
    from pantheon.console.commands.settings_args import night_settings

    _repo, code = demo
    llm, http = codefix_model([FIXED_CLAMP], [True, True])
    codefix_night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    args = cli.build_parser().parse_args(
        ["night", "--learn", "--learn-minutes", "5", "--artifacts", str(artifacts)]
    )
    assert args.learn and args.learn_minutes == 5
    assert night_learn(args, night_settings(args, "night")) == 0
    out = capsys.readouterr().out
    assert "learn: mined 1 job(s)" in out
    assert "learn: codegen: not trained: not enough data" in out
    assert read_learn(artifacts).agents[0].agent == "codegen"
