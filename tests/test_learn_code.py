"""The learn loop on code: mining code fixes (the kept candidate only), reviewers' labels from
canaries and the morning review, the split by task, the pass@1 judge on the real tests, the
training's time budget and its stop on a diverging loss, the learn loop end to end, and the
morning report's learning section."""

from __future__ import annotations

import asyncio
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from test_codefix import FIXED_CLAMP, WORDY_CLAMP, WRONG_CLAMP, scripted

from pantheon.core import Engine, JobQueue, enqueue, load_flow
from pantheon.core.flows.flow import packaged_flows_dir
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
from pantheon.trainer.mine import heldout, mine, read_examples, task_key


def night(artifacts, registry, inputs, llm, **engine):
    flow = load_flow(packaged_flows_dir() / "codefix.yaml", registry)
    with JobQueue(artifacts) as q:
        ids = enqueue(q, flow, inputs)
    asyncio.run(Engine(artifacts, registry, until_empty=True, tick_s=0.01, llm=llm, **engine).run())
    return ids


@pytest.fixture
def demo(tmp_path):
    repo = prepare_demo_repo(tmp_path / "demo")
    return repo, repo_jobs(repo)[1]


# -- mining code fixes --------------------------------------------------------------------------


def test_only_the_kept_candidate_of_a_green_fix_is_learnt_from(demo, artifacts, registry):
    _repo, code = demo
    clamp = code[0]
    # the greedy fix is wrong, a sampled one is garbage, two pass: the smaller one is kept
    llm, http = scripted(
        [WRONG_CLAMP, "I think the bug is in line 2.", WORDY_CLAMP, FIXED_CLAMP], [True, True]
    )
    night(artifacts, registry, [clamp], llm)
    asyncio.run(http.aclose())
    # a second task no candidate fixes: it fails, and gives nothing
    llm, http = scripted([WRONG_CLAMP] * 8, [True, True])
    night(artifacts, registry, [{**code[1]}], llm)
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
    # the reviewers judged both changes, but nobody checked their verdicts: nothing to learn
    assert "review.peer" not in result.agents or result.agents["review.peer"].examples == 0


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
        llm, http = scripted([FIXED_CLAMP], [True, True])
        night(artifacts, registry, [code[0]], llm)
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
    llm, http = scripted([FIXED_CLAMP], [True] * 8)
    night(artifacts, registry, [code[0]], llm, canary_every=1)
    asyncio.run(http.aclose())
    canaries = (artifacts / "canaries.jsonl").read_text().splitlines()
    assert len(canaries) == 1 and json.loads(canaries[0])["verdicts"]

    mine(artifacts, fraction=0.01)
    examples, _ = read_examples(artifacts, "review.peer")
    # the canary: each reviewer's prompt, and the right verdict (a fail), not its own pass
    assert len(examples) == 2 and {e["node"] for e in examples} == {"review_a", "review_b"}
    for e in examples:
        reply = json.loads(e["messages"][-1]["content"])
        assert e["label"] is False and reply["passed"] is False and e["own_reply"] is False
        assert "special-cased" in reply["reasons"][0] or "wrong" in reply["reasons"][0]
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
    from pantheon.core.agents.review import ReviewPeer
    from pantheon.trainer.train import TrainOptions, check_data

    _repo, code = demo
    llm, http = scripted([FIXED_CLAMP], [True] * 8)
    night(artifacts, registry, [code[0]], llm)
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
        # the night's own prompt, and the right verdict with reasons that name the change
        assert e["messages"][0]["content"] == ReviewPeer.SYSTEM
        assert "Change:\n```diff" in e["messages"][1]["content"]
        verdict = ReviewPeer.Output.model_validate_json(e["messages"][-1]["content"])
        assert verdict.passed is e["label"] and not ReviewPeer.problems(verdict)
        if e["label_from"] == "corpus (good)" and e["node"].startswith("codefix"):
            assert verdict.reasons[0].startswith("Line ")
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
        assert r.base_change is None and r.adapter_change.startswith(f"--- a/{t.path}")
        assert any(ln.startswith("+") and before in ln for ln in r.adapter_change.splitlines())


def test_a_nights_code_task_is_judged_from_the_commit_it_started_from(demo, artifacts, registry):
    from pantheon.trainer.judges import code_tasks

    repo, code = demo
    llm, http = scripted([FIXED_CLAMP], [True, True])
    night(artifacts, registry, [code[0]], llm)
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


# -- the training's budget and its stops ---------------------------------------------------------


def test_check_loss_stops_on_nan_and_on_an_explosion():
    from pantheon.trainer.train import TrainingError, TrainOptions, check_loss

    options = TrainOptions(lr=0.01)
    check_loss(2.0, 1, [], options)
    check_loss(7.0, 6, [2.0, 2.1, 1.9, 2.2], options)  # under 4x
    with pytest.raises(TrainingError, match=r"became nan at step 3: the training diverged"):
        check_loss(float("nan"), 3, [2.0], options)
    with pytest.raises(TrainingError, match=r"exploded at step 9: 9.*over 4 times"):
        check_loss(9.0, 9, [2.0, 2.1, 1.9, 2.2], options)
    with pytest.raises(TrainingError, match="cannot work: rank 0"):
        TrainOptions(rank=0)


@pytest.fixture(scope="module")
def smollm2_path():
    pytest.importorskip("peft")
    from pantheon.core.model.files import TEST_MODEL, ModelStore

    return ModelStore().pull(TEST_MODEL)


def test_a_time_budget_stops_training_and_keeps_the_best_checkpoint(tmp_path, smollm2_path):
    from test_learn import HOUSE_TAG, house_artifacts, quick_options

    from pantheon.trainer.train import start, train

    root = house_artifacts(tmp_path, HOUSE_TAG)
    folder = start(root, "house.tag", smollm2_path, quick_options(max_minutes=0.002, eval_every=1))
    rows = []
    state = train(root, folder, on_step=rows.append)
    assert state.status == "done" and state.step < state.steps
    assert state.stopped.startswith("the time budget of 0.002 min ran out at step ")
    assert rows[-1].eta_s == 0 and rows[-1].heldout_loss is not None
    assert (root / state.gguf).exists(), "what it trained in its budget is the adapter"
    assert state.best_step == min(state.heldout_curve, key=lambda c: c[1])[0]


def test_a_time_budget_fits_the_learning_rate_schedule_to_the_steps_it_allows():
    """410 steps of data, 100 s of budget at 2 s a step: the warm-up and the decay span the 50
    steps the budget allows, not the 410 (which would stop the training part way up its
    warm-up); without a budget the schedule is transformers' cosine with warm-up."""
    torch = pytest.importorskip("torch")
    from transformers import get_cosine_schedule_with_warmup

    from pantheon.trainer.steps import Horizon

    budgeted = Horizon(410, 0.1, budget_s=100)
    budgeted.update(2, pace_s=2.0, spent_s=4.0)
    assert budgeted.steps == 50
    assert budgeted.factor(2) == pytest.approx(0.4) and budgeted.factor(5) == 1.0
    assert 0 < budgeted.factor(40) < 0.2 and budgeted.factor(50) == 0.0
    budgeted.update(49, pace_s=2.0, spent_s=99.0)
    assert budgeted.steps == 50  # at least the next step, never past the data's
    budgeted.update(3, pace_s=0.01, spent_s=6.0)
    assert budgeted.steps == 410

    whole = Horizon(410, 0.1)
    whole.update(2, pace_s=2.0, spent_s=4.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(opt, 41, 410).lr_lambdas[0]
    for step in (0, 1, 20, 41, 100, 300, 409, 410):
        assert whole.factor(step) == pytest.approx(reference(step))


def test_a_reviewer_trains_on_as_many_passes_as_fails():
    from pantheon.trainer.steps import balance_labels

    labelled = [{"run": f"r{i}", "label": i % 5 == 0} for i in range(20)]  # 4 passes, 16 fails
    got = balance_labels(labelled, seed=3)
    assert got[:20] == labelled  # every example once, then the rarer verdict again
    assert sum(e["label"] for e in got) == sum(not e["label"] for e in got) == 16
    assert {e["run"] for e in got if e["label"]} == {"r0", "r5", "r10", "r15"}
    assert balance_labels(labelled, seed=3) == got  # the same on every run
    # a writer's examples, and a set of one verdict, are left as they are
    writer = [{"run": "a"}, {"run": "b"}]
    assert balance_labels(writer) == writer
    fails = [{"run": "a", "label": False}]
    assert balance_labels(fails) == fails


def test_a_diverging_training_stops_with_the_reason(tmp_path, smollm2_path):
    from test_learn import HOUSE_TAG, house_artifacts, quick_options

    from pantheon.trainer.train import TrainingError, start, train

    root = house_artifacts(tmp_path, HOUSE_TAG)
    folder = start(
        root, "house.tag", smollm2_path, quick_options(lr=0.9, max_steps=10, explode=1.5)
    )
    with pytest.raises(TrainingError, match=r"diverged|exploded") as info:
        train(root, folder)
    state = json.loads((folder / "state.json").read_text())
    assert state["status"] == "failed" and "learning rate 0.9" in state["error"]
    assert str(info.value) in state["error"] and state["gguf"] is None


HEAD = '''"""Small numeric helpers."""


def is_even(n):
    """Whether n is even."""
    return n % 2 == 0


def clamp(x, lo, hi):
    """x, limited to the range lo..hi."""
'''
FILE = HEAD + "    return max(lo, x)\n"
FIX = f"```python\n{HEAD}    return min(hi, max(lo, x))\n```"


def test_a_code_writer_learns_from_the_lines_its_fix_changed_not_the_copied_ones(smollm2_path):
    from transformers import AutoTokenizer

    from pantheon.trainer.steps import encode, learnt, make_batch, new_line_spans

    messages = [
        {"role": "system", "content": "Fix the function. Reply with the whole file."},
        {"role": "user", "content": f"clamp.py:\n```python\n{FILE}```"},
        {"role": "assistant", "content": FIX},
    ]
    spans = new_line_spans(messages)
    assert [FIX[a:b] for a, b in spans] == ["    return min(hi, max(lo, x))\n"]
    tok = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    ids, n_prompt, keep = encode(tok, messages, 1024, spans)
    whole = encode(tok, messages, 1024)
    assert whole == (ids, n_prompt), "the same tokens; only what is learnt from differs"
    kept = tok.decode([t for t, k in zip(ids[n_prompt:], keep, strict=True) if k])
    assert "min(hi, max(lo, x))" in kept and "def clamp" not in kept
    assert keep[-1] and tok.eos_token in kept, "the end of the turn is learnt: it stops"
    assert learnt((ids, n_prompt, keep)) < learnt(whole) / 2
    labels = make_batch([(ids, n_prompt, keep)], 0, "cpu")["labels"][0].tolist()
    assert sum(x != -100 for x in labels) == sum(keep)
    # a reply that copies every line learns whole, never from nothing
    copy = [*messages[:2], {"role": "assistant", "content": f"```python\n{FILE}```"}]
    assert len(encode(tok, copy, 1024, new_line_spans(copy) or None)) == 2


def _tiny(kind: str):
    """A small random model of a real architecture, and a padded batch of two whose labels
    are partly masked, as a code writer's are."""
    import torch
    import transformers

    shape = dict(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    if kind == "qwen2":
        config = transformers.Qwen2Config(**shape, tie_word_embeddings=True)
    elif kind == "gemma2":  # its head caps the logits: the model's own loss is used
        config = transformers.Gemma2Config(**shape, head_dim=8, final_logit_softcapping=0.05)
    else:
        config = transformers.LlamaConfig(**shape)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    ids = torch.randint(0, 300, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 18:] = 0  # the second is padded
    labels = ids.clone()
    labels[:, :10] = -100  # the prompt
    labels[0, 14:17] = -100  # copied lines
    labels[1, 18:] = -100
    return model, {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma2"])
def test_the_loss_is_the_models_own_with_the_head_applied_only_where_it_learns(kind):
    pytest.importorskip("peft")
    import torch

    from pantheon.trainer.steps import reply_loss

    model, batch = _tiny(kind)
    with torch.no_grad():
        ours, theirs = reply_loss(model, batch), model(**batch).loss
    assert abs(float(ours) - float(theirs)) < 1e-5 * float(theirs)


def test_gradient_checkpointing_gives_the_same_gradients():
    pytest.importorskip("peft")
    import torch
    from peft import LoraConfig, get_peft_model

    from pantheon.trainer.steps import enable_checkpointing, reply_loss

    def is_checkpointing(model) -> bool:
        new = hasattr(type(model), "is_activation_checkpointing")
        return bool(getattr(model, f"is_{'activation' if new else 'gradient'}_checkpointing"))

    grads = []
    for recompute in (False, True):
        base, batch = _tiny("llama")
        if recompute:
            enable_checkpointing(base)
        assert is_checkpointing(base) == recompute
        with warnings.catch_warnings():  # peft's use of a renamed transformers call
            warnings.simplefilter("ignore", FutureWarning)
            config = LoraConfig(r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
            model = get_peft_model(base, config)
        torch.manual_seed(1)
        for name, p in model.named_parameters():  # B starts at zero: give A a gradient too
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        model.train()
        reply_loss(model, batch).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    plain, recomputed = grads
    assert plain.keys() == recomputed.keys() and plain
    for name, g in plain.items():
        assert torch.allclose(g, recomputed[name], rtol=1e-4, atol=1e-7), name
    assert any(float(g.abs().sum()) > 0 for g in plain.values())


def test_gradient_checkpointing_is_chosen_when_a_step_would_not_fit(monkeypatch):
    from types import SimpleNamespace

    from pantheon.trainer import steps
    from pantheon.trainer.options import TrainOptions

    qwen_05b = SimpleNamespace(
        hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_hidden_layers=24
    )
    step = steps.step_activations(qwen_05b, 2, 1536)
    assert step == 2 * steps.step_activations(qwen_05b, 1, 1536), "twice the batch, twice"
    monkeypatch.setattr(steps, "free_memory", lambda device: 2 * step)
    assert not steps.checkpointing_wanted(TrainOptions(batch=2, max_tokens=1536), qwen_05b)
    monkeypatch.setattr(steps, "free_memory", lambda device: step)
    assert steps.checkpointing_wanted(TrainOptions(batch=2, max_tokens=1536), qwen_05b)
    # the operator's choice wins either way
    wanted = TrainOptions(batch=2, max_tokens=1536, gradient_checkpointing=False)
    assert not steps.checkpointing_wanted(wanted, qwen_05b)
    monkeypatch.setattr(steps, "free_memory", lambda device: 100 * step)
    wanted = TrainOptions(batch=2, max_tokens=1536, gradient_checkpointing=True)
    assert steps.checkpointing_wanted(wanted, qwen_05b)


def test_code_writers_default_to_new_lines_and_the_others_to_the_whole_reply(tmp_path):
    from pantheon.trainer.train import _code_writer

    assert _code_writer("codegen") and not _code_writer("doc.frontmatter")
    assert not _code_writer("review.peer") and not _code_writer("no.such.agent")


# -- the learn loop, end to end -------------------------------------------------------------


def test_the_learn_loop_trains_judges_promotes_and_then_waits_for_new_data(tmp_path, smollm2_path):
    from test_learn import HOUSE_TAG, house_artifacts, house_registry, quick_options

    from pantheon.core.learn.files import MineStats
    from pantheon.trainer.loop import learn

    root = house_artifacts(tmp_path, HOUSE_TAG)
    stats = MineStats(agent="house.tag", examples=58, train=48, heldout=10, tasks=10)
    (training_root(root) / "house.tag" / "mine.json").write_text(stats.model_dump_json())
    lines = []
    kw = dict(options=quick_options(), registry=house_registry(), base=smollm2_path, fresh=False)
    run = learn(root, on_line=lines.append, **kw)
    [agent] = run.agents
    assert agent.action == "trained" and agent.promoted, lines
    ev = agent.evaluation
    assert ev["judged_by"] == "flow" and ev["adapter_passed"] > ev["base_passed"]
    assert agent.steps == 14 and agent.minutes is not None
    assert read_learn(root).agents[0].training == agent.training
    assert any("promoted" in line for line in lines)
    from pantheon.core.learn.files import read_registry

    assert read_registry(root).agents["house.tag"].adapter == agent.training
    # no new green example since: nothing to train
    [again] = learn(root, **kw).agents
    assert again.action == "skipped" and again.why.startswith("nothing new since")


def test_learn_on_a_night_without_enough_data_says_so_for_each_agent(demo, artifacts, registry):
    from conftest import pantheon

    _repo, code = demo
    llm, http = scripted([FIXED_CLAMP], [True, True])
    night(artifacts, registry, [code[0]], llm)
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
    from conftest import pantheon

    _repo, code = demo
    llm, http = scripted([WRONG_CLAMP] * 8, [True, True])  # the base model: fails
    night(artifacts, registry, [code[0]], llm)
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
    llm, http = scripted([FIXED_CLAMP], [True, True])
    llm.adapters = {evidence.adapter: 0}
    night(artifacts, registry, [code[0]], llm, adapters={"codegen": evidence.adapter})
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

    _repo, code = demo
    llm, http = scripted([FIXED_CLAMP], [True, True])
    night(artifacts, registry, [code[0]], llm)
    asyncio.run(http.aclose())
    args = cli.build_parser().parse_args(
        ["night", "--learn", "--learn-minutes", "5", "--artifacts", str(artifacts)]
    )
    assert args.learn and args.learn_minutes == 5
    assert cli._night_learn(args) == 0
    out = capsys.readouterr().out
    assert "learn: mined 1 job(s)" in out
    assert "learn: codegen: not trained: not enough data" in out
    assert read_learn(artifacts).agents[0].agent == "codegen"


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


def test_promoting_a_writer_trained_off_the_writers_model_says_how_a_night_uses_it():
    from pantheon.console.learn_cli import _writers_hint
    from pantheon.core.model.files import ModelStore

    small = str(ModelStore().path("qwen2.5-coder-0.5b"))
    hint = _writers_hint("codegen", small)
    assert hint is not None and "`pantheon night --code-model qwen2.5-coder-0.5b`" in hint
    assert _writers_hint("codegen", str(ModelStore().path("qwen2.5-coder-1.5b"))) is None
    assert _writers_hint("review.peer", small) is None  # the reviewers run on --model's server
