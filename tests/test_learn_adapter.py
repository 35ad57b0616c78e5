"""Training SmolLM2 adapters for real on the toy house task (helpers.house_artifacts): torch and
peft lower the loss, the GGUF LoRA is loaded by the real llama-server and changes the answer, the
McNemar-judged promotion runs through the real flow runner, a training resumes, crashes cleanly and
is abandoned, and a night serves the promoted adapter."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import httpx
import pytest
from helpers import HOUSE_TAG, NOTES, SYSTEM, house_artifacts, house_registry, quick_options

from pantheon.core.learn.files import (
    agent_adapters,
    read_progress,
    read_registry,
    read_state,
    registry_path,
    served_adapters,
)
from pantheon.core.model.files import TEST_MODEL
from pantheon.core.model.server import ModelServer, ServerConfig


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smollm2_path):
    """An adapter trained on the house's tag: the base model never says it."""
    from pantheon.trainer.train import start, train

    root = house_artifacts(tmp_path_factory.mktemp("house"), HOUSE_TAG)
    folder = start(root, "house.tag", smollm2_path, quick_options())
    rows = []
    state = train(root, folder, on_step=rows.append)
    return root, folder, state, rows


def test_training_lowers_the_loss_and_writes_both_adapter_formats(trained):
    root, folder, state, rows = trained
    assert state.status == "done" and state.step == state.steps == 14
    assert [r.step for r in rows] == list(range(1, 15))
    assert rows[-1].loss < rows[0].loss / 2
    assert state.heldout_loss_after < state.heldout_loss_before / 2
    assert rows[-1].lr < rows[0].lr  # cosine decay
    on_disk, _ = read_progress(folder)
    assert [r.step for r in on_disk] == list(range(1, 15)) and on_disk[-1].eta_s == 0
    assert (root / state.gguf).stat().st_size > 100_000
    assert (root / state.peft / "adapter_model.safetensors").exists()
    assert not (folder / "checkpoint").exists()
    assert not registry_path(root).exists()  # training alone promotes nothing
    # its peak memory is kept: SmolLM2's float32 weights alone are over 500 MB
    assert 500 < state.peak_memory_mb < 24 * 1024 and state.peak_gpu_mb is None
    # whose peak it is depends on what this pytest process held before: said either way
    whose = {"training": "", "process": " (the process's, not this training's alone)"}
    assert state.memory_text() == (
        f"peak memory {state.peak_memory_mb / 1024:.1f} GB{whose[state.peak_memory_scope]}"
    )


def test_the_gguf_adapter_is_loaded_by_llama_server_and_changes_the_answer(trained, tmp_path):
    from pantheon.core.model.client import LLMClient

    root, _, state, _ = trained
    srv = ModelServer(
        tmp_path,
        ServerConfig(
            model=TEST_MODEL,
            port=0,
            parallel=2,
            ctx_per_slot=512,
            adapters=[str(root / state.gguf)],
        ),
    )
    st = srv.start(timeout_s=120)
    try:
        listed = httpx.get(st.endpoint + "/lora-adapters").json()
        assert [Path(a["path"]).name for a in listed] == [Path(state.gguf).name]

        async def ask_both():
            async with LLMClient(st.endpoint, model=st.alias, adapters=st.adapters) as llm:
                msgs = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": NOTES[-1]},
                ]
                base = await llm.chat(msgs, max_tokens=24)
                tuned = await llm.chat(msgs, max_tokens=24, adapter=state.id)
                return base.text, tuned.text

        base, tuned = asyncio.run(ask_both())
    finally:
        srv.stop()
    assert HOUSE_TAG in tuned
    assert HOUSE_TAG not in base


def test_an_adapter_that_helps_is_promoted_with_its_evidence(trained):
    from pantheon.trainer.evaluate import evaluate
    from pantheon.trainer.registry import promote

    root, folder, state, _ = trained
    ev = evaluate(root, folder, registry=house_registry(), parallel=4)
    assert ev.tasks == 10
    assert ev.base_passed == 0 and ev.adapter_passed >= 8
    assert ev.c == ev.adapter_passed and ev.b == 0
    assert ev.p_value == pytest.approx(0.5**ev.c)
    assert ev.promoted
    assert promote(root, folder, ev)
    reg = read_registry(root)
    entry = reg.agents["house.tag"]
    assert entry.adapter == state.id and entry.evidence["p_value"] == ev.p_value
    assert (root / entry.gguf).exists() and (root / entry.peft).is_dir()
    files, problems = served_adapters(root)
    assert files == {state.id: (root / entry.gguf).resolve()} and problems == []
    assert agent_adapters(root, {state.id}) == ({"house.tag": state.id}, [])
    left, why = agent_adapters(root, set())
    assert left == {} and "not loaded" in why[0]
    assert json.loads((folder / "evaluation.json").read_text())["promoted"] is True


def test_an_adapter_that_does_not_help_is_never_promoted(tmp_path, smollm2_path):
    from pantheon.trainer.evaluate import evaluate
    from pantheon.trainer.registry import promote
    from pantheon.trainer.train import start, train

    root = house_artifacts(tmp_path / "a", "misc")  # it learns a tag the check refuses
    folder = start(root, "house.tag", smollm2_path, quick_options(max_steps=6))
    train(root, folder)
    ev = evaluate(root, folder, registry=house_registry(), parallel=4)
    assert ev.adapter_passed == 0 and ev.base_passed == 0
    assert not ev.promoted and ev.p_value == 1.0
    assert not promote(root, folder, ev)
    assert not registry_path(root).exists()


def test_an_interrupted_training_resumes_where_it_stopped(tmp_path, smollm2_path):
    from pantheon.trainer.train import TrainingInterrupted, start, train

    root = house_artifacts(tmp_path / "a", HOUSE_TAG)
    folder = start(root, "house.tag", smollm2_path, quick_options(max_steps=6))
    stop = threading.Event()

    def on_step(row):
        if row.step == 3:
            stop.set()

    with pytest.raises(TrainingInterrupted, match="step 3 of 6"):
        train(root, folder, on_step=on_step, stop=stop)
    state = read_state(folder)
    assert state.status == "interrupted" and state.step == 3
    assert (folder / "checkpoint" / "adapter.pt").exists()
    state = train(root, folder)
    assert state.status == "done"
    rows, _ = read_progress(folder)
    assert [r.step for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[3].lr < rows[2].lr  # the schedule went on, it did not start again


def test_a_crash_mid_training_leaves_the_registry_untouched(tmp_path, smollm2_path, monkeypatch):
    from pantheon.trainer import train as trainer

    root = house_artifacts(tmp_path / "a", HOUSE_TAG)
    registry_path(root).parent.mkdir(parents=True)
    before = '{"schema": "pantheon.adapters/1", "agents": {}, "history": []}\n'
    registry_path(root).write_text(before)
    folder = trainer.start(root, "house.tag", smollm2_path, quick_options(max_steps=4))

    def boom(*a, **k):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(trainer, "peft_to_gguf", boom)
    with pytest.raises(RuntimeError, match="disk is full"):
        trainer.train(root, folder)
    state = read_state(folder)
    assert state.status == "failed" and "disk is full" in state.error
    assert registry_path(root).read_text() == before


def test_abandon_gives_up_a_stopped_training(tmp_path, smollm2_path):
    from pantheon.trainer.train import TrainingError, TrainingInterrupted, abandon, start, train

    root = house_artifacts(tmp_path / "a", HOUSE_TAG)
    folder = start(root, "house.tag", smollm2_path, quick_options(max_steps=4))
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingInterrupted):
        train(root, folder, stop=stop)
    state = abandon(folder)
    assert state.status == "abandoned" and not (folder / "checkpoint").exists()
    with pytest.raises(TrainingError, match="abandoned"):
        train(root, folder)


def test_judging_never_uses_a_job_the_adapter_was_trained_on(trained, tmp_path):
    from pantheon.trainer.evaluate import EvaluationError, evaluate

    src, folder, state, _ = trained
    root = tmp_path / "copy"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("eval"))
    copy = root / "training" / state.id
    tasks = [json.loads(x) for x in (copy / "tasks.jsonl").read_text().splitlines()]
    # the held-out jobs turn up among the training examples (mined again with another split)
    with open(copy / "data.jsonl", "a") as fh:
        for t in tasks:
            fh.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "x"},
                            {"role": "assistant", "content": "y"},
                        ],
                        "split": "train",
                        "run": t["run"],
                    }
                )
                + "\n"
            )
    with pytest.raises(EvaluationError, match="no held-out tasks"):
        evaluate(root, copy, registry=house_registry())
    with pytest.raises(EvaluationError, match="between 0 and 1"):
        evaluate(src, folder, registry=house_registry(), alpha=5)


def test_a_reviewer_is_judged_on_as_many_passes_as_fails(trained, tmp_path):
    """Labelled changes are mostly fails: judged on them as they come, a reviewer adapter that
    learnt to fail everything would win. The judging takes as many of each, and refuses a set
    with one label only."""
    from pantheon.trainer.evaluate import EvaluationError, evaluate, interleaved_labels

    def ex(i: int, label: bool) -> dict:
        msgs = [{"role": "user", "content": f"change {i}"}, {"role": "assistant", "content": "{}"}]
        return {"messages": msgs, "split": "heldout", "run": f"corpus:{i}", "label": label}

    mostly_fails = [ex(i, i % 6 == 0) for i in range(30)]
    got = interleaved_labels(mostly_fails)
    assert [e["label"] for e in got] == [True, False] * 5
    assert len({e["run"] for e in got}) == 10

    src, _, state, _ = trained
    root = tmp_path / "copy"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("eval"))
    copy = root / "training" / state.id
    raw = json.loads((copy / "state.json").read_text())
    (copy / "state.json").write_text(json.dumps(raw | {"agent": "review.peer"}))
    (copy / "data.jsonl").write_text("".join(json.dumps(ex(i, False)) + "\n" for i in range(12)))
    with pytest.raises(EvaluationError, match="all say fail") as caught:
        evaluate(root, copy, registry=house_registry())
    assert "--corpus" in (caught.value.hint or "")


def test_the_night_serves_a_promoted_adapter_and_its_calls_say_so(trained, tmp_path):
    """What `pantheon night` and `pantheon engine` do: the server loads the registry's adapters,
    the engine has the agent's calls name its adapter, and calls.jsonl records it."""
    from pantheon.core import Engine
    from pantheon.core.learn.files import Evaluation
    from pantheon.core.model.client import LLMClient
    from pantheon.core.run.connect import adapter_files as _registry_adapter_files
    from pantheon.core.run.connect import adapters_in_use as _agent_adapters
    from pantheon.trainer.registry import promote

    src, _, state, _ = trained
    root = tmp_path / "night"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("eval"))
    ev = Evaluation(
        training=state.id,
        agent="house.tag",
        adapter=state.id,
        tasks=10,
        base_passed=0,
        adapter_passed=10,
        b=0,
        c=10,
        p_value=0.5**10,
        alpha=0.05,
        promoted=True,
        reason="a gain beyond chance",
    )
    assert promote(root, root / "training" / state.id, ev)
    files = _registry_adapter_files(root, "llama.cpp", TEST_MODEL)
    assert [Path(f).name for f in files] == [f"{state.id}.gguf"]
    # never loaded beside another base model: llama-server would refuse to start
    assert _registry_adapter_files(root, "llama.cpp", "qwen2.5-coder-0.5b") == []
    srv = ModelServer(
        tmp_path / "srv",
        ServerConfig(model=TEST_MODEL, port=0, parallel=4, ctx_per_slot=512, adapters=files),
    )
    st = srv.start(timeout_s=120)
    try:

        async def night():
            async with LLMClient(st.endpoint, model=st.alias, adapters=st.adapters) as llm:
                adapters = await _agent_adapters(root, llm)
                assert adapters == {"house.tag": state.id}
                await Engine(
                    root,
                    house_registry(),
                    until_empty=True,
                    tick_s=0.05,
                    llm=llm,
                    adapters=adapters,
                    metrics_every_s=None,
                ).run()

        asyncio.run(night())
    finally:
        srv.stop()
    runs = sorted((root / "runs").iterdir())
    assert len(runs) == 10
    calls = [
        json.loads(line)
        for r in runs
        for line in (r / "tag" / "calls.jsonl").read_text().splitlines()
    ]
    assert calls and all(c["adapter"] == state.id for c in calls)
    passed = sum(json.loads((r / "run.json").read_text())["status"] == "done" for r in runs)
    assert passed >= 8
