"""A verifier: a reviewer adapter that learns the one verdict token of a scored review (its loss
on that token only, both labels balanced) and is judged as a scorer — AUROC with and without
it on held-out changes, DeLong's paired test deciding the promotion. The pieces on their own,
then SmolLM2 trained and judged for real on a real llama-server."""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path

import httpx
import pytest
from helpers import scripted_model

from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.learn.files import TaskResult, read_registry, training_root
from pantheon.core.observe.quality import auroc
from pantheon.core.work.labelled import Labelled
from pantheon.trainer.labels import reviewer_examples
from pantheon.trainer.steps import first_token_only
from pantheon.trainer.verifier import decide_auroc, delong, judge_scores


def test_delong_measures_both_aurocs_and_a_real_gain_is_beyond_chance():
    rng = random.Random(3)
    labels = [i % 2 == 0 for i in range(60)]
    noise = [rng.random() for _ in labels]
    sharp = [0.7 + 0.3 * rng.random() if good else 0.3 * rng.random() for good in labels]
    base, adapter, p = delong(labels, noise, sharp)
    good = [s for s, lab in zip(noise, labels, strict=True) if lab]
    bad = [s for s, lab in zip(noise, labels, strict=True) if not lab]
    assert base == pytest.approx(auroc(good, bad))
    assert adapter == 1.0 and p < 1e-4
    same_base, same_adapter, same_p = delong(labels, noise, noise)
    assert same_base == same_adapter and same_p == 0.5
    _, _, worse = delong(labels, sharp, noise)
    assert worse > 0.999  # one-sided: a loss is never a gain
    with pytest.raises(ValueError, match="good and bad"):
        delong([True, True], [0.1, 0.2], [0.3, 0.4])


def _result(i: int, label: bool, base: float | None, adapter: float | None) -> TaskResult:
    return TaskResult(
        run=f"corpus:{i}",
        base=False,
        adapter=False,
        label=label,
        base_score=base,
        adapter_score=adapter,
    )


def test_the_promotion_needs_a_gain_chance_does_not_explain():
    sharp = [_result(i, i % 2 == 0, 0.5, 0.9 if i % 2 == 0 else 0.1) for i in range(40)]
    promoted, p, reason, aucs = decide_auroc(sharp, 0.05)
    assert p < 1e-4
    assert promoted and aucs == (0.5, 1.0) and "AUROC 0.50 → 1.00 on 40" in reason
    few = [_result(i, i % 2 == 0, 0.5, 0.6 if i == 0 else 0.5) for i in range(6)]
    promoted, _, reason, _ = decide_auroc(few, 0.05)
    assert not promoted and "chance explains" in reason
    one_label = [_result(i, True, 0.4, 0.9) for i in range(5)]
    assert decide_auroc(one_label, 0.05)[2].endswith("one label only: no AUROC")
    unscored = [*sharp[:2], _result(99, False, None, 0.2)]
    assert decide_auroc(unscored, 0.05)[3] is not None  # the unscored change is left out


def test_a_verifier_learns_from_the_verdict_token_only():
    item = ([1, 2, 3, 4, 5], 3)
    assert first_token_only(item) == ([1, 2, 3, 4, 5], 3, [True, False])
    assert first_token_only(([1, 2], 2)) == ([1, 2], 2)


def _change(i: int, right: bool, passed: bool) -> Labelled:
    return Labelled(
        flow="code",
        id=f"p{i}/{'good' if right else 'wrong_fix'}",
        key=f"file:p{i}.py",
        kind="good" if right else "wrong_fix",
        right=right,
        why="It fixes the comparison." if right else "It does not fix it.",
        task=f"Fix p{i}.",
        diff=f"--- a/p{i}.py\n+++ b/p{i}.py\n@@\n-    return a < b\n+    return a <= b\n",
        test_passed=passed,
        test_report=["3 passed in 0.01s"] if passed else ["1 failed, 2 passed in 0.02s"],
        test_output=None if passed else "E   assert False",
    )


def test_a_scored_reviewers_examples_are_one_word_verdicts_as_the_gates_pass_them():
    """The shipped flows' reviewers are scored: their examples answer pass or fail, and a
    defect the tests caught is shown as the gates pass a change (its task's real fix's report),
    a hard case read from the diff alone."""
    from pantheon.core.agents.builtin import default_registry

    changes = [_change(1, True, True), _change(1, False, False)]
    examples = reviewer_examples(
        default_registry(plugins=False), "review.peer", held=lambda key: False, changes=changes
    )
    assert len(examples) == 4  # two changes, two reviewers
    for example in examples:
        user, reply = example["messages"][1]["content"], example["messages"][-1]["content"]
        assert reply == ("pass" if example["label"] else "fail")
        assert user.endswith("Answer with one word: pass or fail.")
        assert "The tests passed.\n- 3 passed in 0.01s" in user and "FAILED" not in user


def _verdict_examples(n: int, split: str) -> list[dict]:
    """Scored reviews of tiny changes: the good ones fix a comparison, the bad ones return a
    fixed value for one input (a backdoor) — a pattern SmolLM2 can learn in a few steps."""
    out = []
    for i in range(n):
        good = i % 2 == 0
        line = "    return a < b" if good else f"    if a == {i}:\n        return True"
        diff = f"--- a/m{i}.py\n+++ b/m{i}.py\n@@\n-    return a > b\n+{line}\n"
        given = ReviewPeer.Input(task=f"Fix less({i}).", kind="code", test_passed=True)
        messages = review_messages(given, diff, "Judge the change.", scored=True)
        messages.append({"role": "assistant", "content": "pass" if good else "fail"})
        out.append(
            {
                "messages": messages,
                "split": split,
                "run": f"corpus:m{i}/{split}",
                "key": f"file:m{i}.py",
                "node": "codefix.review_a",
                "label": good,
            }
        )
    return out


def _scorer(p_of):
    def answer(body):
        adapted = any(lora["scale"] > 0 for lora in body.get("lora", []))
        p = p_of(body["messages"][1]["content"], adapted)
        top = [
            {"token": "pass", "logprob": math.log(p)},
            {"token": "fail", "logprob": math.log(1 - p)},
        ]
        choice = {
            "index": 0,
            "message": {"content": "pass"},
            "logprobs": {"content": [{"token": "pass", "logprob": top[0]["logprob"]}]},
        }
        choice["logprobs"]["content"][0]["top_logprobs"] = top
        return httpx.Response(200, json={"choices": [choice]})

    return scripted_model(answer)


def test_judging_scores_each_change_with_and_without_the_adapter():
    examples = _verdict_examples(10, "heldout")

    def p_of(prompt: str, adapted: bool) -> float:
        backdoor = "if a ==" in prompt
        if adapted:
            return 0.1 if backdoor else 0.9
        return 0.6

    llm, http = _scorer(p_of)
    llm.adapters = {"verifier": 0}

    async def go():
        try:
            return await judge_scores(llm, examples, "verifier", parallel=2)
        finally:
            await http.aclose()

    results = asyncio.run(go())
    assert len(results) == 10
    assert all(r.base_score == pytest.approx(0.6) for r in results)
    assert all((r.adapter_score > 0.5) is r.label and r.adapter for r in results)
    assert decide_auroc(results, 0.05)[3] == (0.5, 1.0)


@pytest.fixture(scope="module")
def verifier(tmp_path_factory, smollm2_path):
    """SmolLM2 trained as a verifier on the backdoor pattern, for real."""
    from helpers import quick_options

    from pantheon.trainer.train import start, train

    root = tmp_path_factory.mktemp("verifier")
    folder = training_root(root) / "review.peer"
    folder.mkdir(parents=True)
    data = _verdict_examples(48, "train") + _verdict_examples(16, "heldout")
    (folder / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in data))
    options = quick_options(max_steps=24, max_tokens=512, lr=2e-3)
    run = start(root, "review.peer", smollm2_path, options.model_copy(update={"focus": None}))
    state = train(root, run)
    return root, run, state


def test_a_verifier_trained_for_real_is_judged_by_auroc_on_a_real_server(verifier):
    """The default focus of one-word verdicts is the verdict token; the held-out loss falls;
    the real llama-server scores each held-out change with and without the adapter, and the
    evaluation is an AUROC comparison, promoted only on a gain beyond chance."""
    from pantheon.trainer.evaluate import evaluate
    from pantheon.trainer.registry import promote

    root, run, state = verifier
    assert state.status == "done" and state.options["focus"] == "verdict"
    assert state.heldout_loss_after < state.heldout_loss_before
    ev = evaluate(root, run, parallel=2)
    assert ev.judged_by == "scores" and ev.tasks == 16
    assert ev.base_auroc is not None and ev.adapter_auroc is not None
    assert all(r.adapter_score is not None for r in ev.results)
    assert ev.adapter_auroc > ev.base_auroc, ev.reason
    assert promote(root, run, ev) is ev.promoted
    assert ("review.peer" in read_registry(root).agents) is ev.promoted
    saved = json.loads((Path(run) / "evaluation.json").read_text())
    assert saved["adapter_auroc"] == ev.adapter_auroc


def test_a_promoted_verifier_answers_the_scored_reviewers_only(tmp_path, registry):
    """A verifier adapter learned one verdict word: the night's scored review nodes use it, a
    reasoned review of the same agent keeps the base model; an adapter judged by its tasks
    (not a verifier) is used by every node of its agent, as before."""
    from pantheon.core.learn.files import RegistryEntry, update_registry
    from pantheon.core.run.runner import Runner
    from pantheon.core.store.queue import JobQueue

    def promoted(judged_by: str) -> None:
        entry = RegistryEntry(
            agent="review.peer",
            adapter="review-peer-1",
            training="training/review.peer-1",
            base_model="m.gguf",
            evidence={"judged_by": judged_by},
        )
        update_registry(tmp_path, lambda r: r.agents.__setitem__("review.peer", entry))

    adapters = {"review.peer": "review-peer-1"}
    promoted("scores")
    assert read_registry(tmp_path).agents["review.peer"].verifier
    with JobQueue(tmp_path) as queue:
        runner = Runner(tmp_path, registry, queue, adapters=adapters)
        assert runner._params(ReviewPeer, {"scored": True})["adapter"] == "review-peer-1"
        assert "adapter" not in runner._params(ReviewPeer, {})
        assert "adapter" not in runner._params(ReviewPeer, {"scored": False})
        promoted("flow")
        runner = Runner(tmp_path, registry, queue, adapters=adapters)
        assert runner._params(ReviewPeer, {})["adapter"] == "review-peer-1"
