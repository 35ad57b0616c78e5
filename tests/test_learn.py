"""The learn loop on real things: mining real docops runs in a real git repository, training
SmolLM2 adapters with torch and peft, the GGUF LoRA loaded by the real llama-server, and the
McNemar-judged promotion through the real flow runner."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel, Field
from test_docops import fake_model, git, run_night

from pantheon.core import Agent, JobQueue, NodeContext, default_registry, enqueue
from pantheon.core.errors import ArtifactError
from pantheon.core.flows.flow import parse_flow
from pantheon.core.learn.files import (
    TrainingState,
    agent_adapters,
    read_progress,
    read_registry,
    read_state,
    registry_path,
    served_adapters,
    training_root,
)
from pantheon.core.model.files import TEST_MODEL, ModelStore
from pantheon.core.model.safecall import ask
from pantheon.core.model.server import ModelServer, ServerConfig
from pantheon.core.morning.review import Change, reject
from pantheon.trainer.mine import heldout, mine, read_examples

# -- mining -------------------------------------------------------------------------------------


@pytest.fixture
def mined(artifacts, registry, repo):
    """Seven docs all agree on (the seventh a copy of the first), one rejected in the morning, one
    the reviewers disagree on; one run.json corrupt, and a corrupt line in one calls.jsonl."""
    from pantheon.core.morning.report import build_summary
    from pantheon.core.store.control import ControlFile

    shutil.copy(repo / "docs" / "doc0.md", repo / "docs" / "same0.md")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a copy")
    llm, http = fake_model({"a": True, "b": True})
    paths = [f"docs/doc{i}.md" for i in range(6)]
    run_night(artifacts, registry, repo, [*paths, "docs/same0.md"], llm)
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="review")
    run_night(artifacts, registry, repo, ["docs/doc7.md"], llm)  # job 8: waits, then rejected
    asyncio.run(http.aclose())
    llm, http = fake_model({"a": True, "b": False})
    run_night(artifacts, registry, repo, ["docs/doc8.md"], llm)  # job 9: the reviewers disagree
    asyncio.run(http.aclose())
    change = next(c for c in build_summary(artifacts)["changes"] if c["job"] == 8)
    reject(artifacts, Change(**{**change, "reviews": (True, True)}), by="ana", why="wrong tags")
    runs = artifacts / "runs"
    (runs / "docops-000006" / "run.json").write_text('{"run_id": "000006", "fl')
    with open(runs / "docops-000005" / "write" / "calls.jsonl", "a") as fh:
        fh.write('{"messages": [truncated\n')
    return artifacts


def test_mining_keeps_only_green_work_and_says_why_the_rest_was_left_out(mined):
    # the split is by task (the page): doc0, doc3, doc5, doc7 and same0 are held out
    result = mine(mined, fraction=0.4)
    stats = result.agents["doc.frontmatter"]
    # jobs 1-5 and 7 are green; 7 repeats job 1's document, so its example is a duplicate
    assert stats.green_jobs == 6
    assert stats.duplicates == 1 and stats.examples == 5
    assert (stats.train, stats.heldout, stats.tasks) == (3, 2, 4)
    assert stats.left_out == {"corrupt": 2, "rejected": 1, "disagreed": 1}
    # reviewers learn nothing from their own verdicts: only from the operator's rejection of
    # job 8 (both had passed it), with the right verdict
    reviews, _ = read_examples(mined, "review.peer")
    assert len(reviews) == 2 and {e["run"] for e in reviews} == {"docops-000008"}
    for e in reviews:
        assert e["label"] is False and e["label_from"] == "operator (rejected by ana)"
        assert json.loads(e["messages"][-1]["content"]) == {
            "reasons": ["The change is wrong: wrong tags."],
            "passed": False,
        }

    examples, bad = read_examples(mined, "doc.frontmatter")
    assert bad == 0 and len(examples) == 5
    runs = {e["run"] for e in examples}
    assert runs == {f"docops-{i:06d}" for i in (1, 2, 3, 4, 5)}
    for e in examples:
        held = e["run"] in ("docops-000001", "docops-000004")
        assert e["split"] == ("heldout" if held else "train")
        assert e["split"] == ("heldout" if heldout(e["key"], 0.4) else "train")
        assert e["key"] == f"file:doc{int(e['run'][-1]) - 1}.md"
        roles = [m["role"] for m in e["messages"]]
        # the instructions, the worked example, the page, and the reply learnt from
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert json.loads(e["messages"][-1]["content"])["title"] == "A title"
    # held-out tasks are every finished held-out job, green or not
    tasks = [
        json.loads(x)
        for x in (training_root(mined) / "doc.frontmatter" / "tasks.jsonl").read_text().splitlines()
    ]
    assert {t["run"] for t in tasks} == {
        "docops-000001",
        "docops-000004",
        "docops-000007",
        "docops-000008",
    }
    assert all(Path(t["input"]["repo"]).is_absolute() for t in tasks)


def test_the_split_is_the_same_on_every_run(mined):
    mine(mined, fraction=0.4)
    first = (training_root(mined) / "doc.frontmatter" / "data.jsonl").read_bytes()
    mine(mined, fraction=0.4)
    assert (training_root(mined) / "doc.frontmatter" / "data.jsonl").read_bytes() == first


def test_traces_mine_from_the_command_line(mined):
    from conftest import pantheon

    out = pantheon("traces", "mine", "--artifacts", str(mined))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("doc.frontmatter"))
    assert line.split()[1] == "5"
    assert "1 disagreed" in line and "1 rejected" in line and "2 corrupt" in line
    js = json.loads(pantheon("traces", "mine", "--json", "--artifacts", str(mined)).stdout)
    assert js["agents"]["doc.frontmatter"]["examples"] == 5


def test_too_little_data_is_refused_clearly(mined):
    from conftest import pantheon

    mine(mined)
    out = pantheon("train", "doc.frontmatter", "--artifacts", str(mined))
    assert out.returncode == 1
    assert "not enough data for doc.frontmatter (" in out.stderr and "< 50" in out.stderr
    assert not any(p.name.startswith("doc.frontmatter-") for p in training_root(mined).iterdir())


def test_mining_a_folder_without_a_night_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no night to mine"):
        mine(tmp_path)


# -- a task an adapter can learn, to train and judge on for real ------------------------------

HOUSE_TAG = "pantheon-house"
SYSTEM = "Reply with one JSON object: tag (the house tag of this note)."
NOTES = [
    f"Note {i}: the {what} of the {where} was {how} on day {i}."
    for i, (what, where, how) in enumerate(
        (w, p, h)
        for w in ("backup", "index", "cache", "log", "lock")
        for p in ("store", "server", "queue", "client")
        for h in ("checked", "moved", "rebuilt", "cleared")
    )
]


class HouseTag(Agent):
    name = "house.tag"
    description = "Asks the model for a note's house tag."
    uses_model = True

    class Input(BaseModel):
        text: str

    class Output(BaseModel):
        tag: str = Field(min_length=1, max_length=40)

    class Params(BaseModel):
        max_tokens: int = 40
        adapter: str | None = None

    async def run(self, input, ctx: NodeContext):
        return await ask(
            ctx.model(),
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": input.text}],
            self.Output,
            log=ctx.calls,
            max_tokens=ctx.params.max_tokens,
            adapter=ctx.params.adapter,
        )


class HouseCheck(Agent):
    name = "house.check"
    description = "Gate: the tag is the house's."
    gate = True

    class Input(BaseModel):
        tag: str

    class Output(BaseModel):
        passed: bool
        reasons: list[str]

    async def run(self, input, ctx: NodeContext):
        ok = input.tag == HOUSE_TAG
        return self.Output(passed=ok, reasons=[f"tag {input.tag!r}"])


HOUSE_FLOW = """\
name: house
description: tag a note, check the tag
input:
  text: str
nodes:
  - id: tag
    agent: house.tag
    inputs: {text: $input.text}
  - id: check
    agent: house.check
    inputs: {tag: $tag.tag}
output: check
"""


def house_registry():
    reg = default_registry(plugins=False)
    reg.register(HouseTag)
    reg.register(HouseCheck)
    return reg


def house_artifacts(root: Path, reply_tag: str, n_train: int = 48, n_tasks: int = 10) -> Path:
    """Mined data for house.tag whose replies all give ``reply_tag``, and held-out jobs."""
    reg = house_registry()
    flow = parse_flow(HOUSE_FLOW, reg, source="house.yaml")
    notes_train, notes_held = NOTES[:n_train], NOTES[n_train : n_train + n_tasks]
    with JobQueue(root) as q:
        ids = enqueue(q, flow, [{"text": t} for t in notes_held])
        sha = q.get(ids[0]).flow_sha
    folder = training_root(root) / "house.tag"
    folder.mkdir(parents=True)
    lines = []
    for i, text in enumerate(notes_train + notes_held):
        msgs = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": json.dumps({"tag": reply_tag})},
        ]
        split = "train" if i < n_train else "heldout"
        lines.append(json.dumps({"messages": msgs, "split": split, "run": f"notes-{i:06d}"}))
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    tasks = [
        {
            "run": f"house-{j:06d}",
            "job": j,
            "flow": "house",
            "flow_sha256": sha,
            "input": {"text": t},
            "status": "failed",
        }
        for j, t in zip(ids, notes_held, strict=True)
    ]
    (folder / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return root


def quick_options(**kw):
    from pantheon.trainer.train import TrainOptions

    base = dict(
        rank=8,
        alpha=16,
        lr=3e-3,
        batch=8,
        max_steps=14,
        min_examples=20,
        checkpoint_every=5,
        max_tokens=128,
        warmup=0.0,
    )
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    pytest.importorskip("peft")
    return ModelStore().pull(TEST_MODEL)


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


def test_rollback_restores_the_previous_adapter(tmp_path):
    from pantheon.core.learn.files import Evaluation, TrainingState
    from pantheon.trainer.registry import promote, rollback

    root = tmp_path
    ids = []
    for n in (1, 2):
        tid = f"house.tag-2026112{n}T000000"
        folder = training_root(root) / tid
        (folder / "adapter").mkdir(parents=True)
        (folder / "adapter" / "adapter_config.json").write_text("{}")
        (folder / f"{tid}.gguf").write_bytes(b"GGUF")
        state = TrainingState(
            id=tid,
            agent="house.tag",
            status="done",
            base_model="m.gguf",
            gguf=f"training/{tid}/{tid}.gguf",
            peft=f"training/{tid}/adapter",
        )
        (folder / "state.json").write_text(state.model_dump_json())
        ev = Evaluation(
            training=tid,
            agent="house.tag",
            adapter=tid,
            tasks=10,
            base_passed=2,
            adapter_passed=9,
            b=0,
            c=7,
            p_value=0.0078,
            alpha=0.05,
            promoted=True,
            reason="gain",
        )
        assert promote(root, folder, ev)
        ids.append(tid)
    assert read_registry(root).agents["house.tag"].adapter == ids[1]
    assert rollback(root, "house.tag").adapter == ids[0]
    assert read_registry(root).agents["house.tag"].adapter == ids[0]
    assert rollback(root, "house.tag") is None
    assert "house.tag" not in read_registry(root).agents
    actions = [h["action"] for h in read_registry(root).history]
    assert actions == ["promoted", "promoted", "rolled back", "rolled back"]
    shutil.rmtree(training_root(root))  # the promoted files live on under adapters/
    assert all((root / "adapters" / f"{t}.gguf").exists() for t in ids)


def test_an_adapter_trained_on_another_model_says_which_and_is_not_used(tmp_path):
    from pantheon.core.learn.files import Registry, RegistryEntry

    small, big = tmp_path / "coder-0.5b.gguf", tmp_path / "coder-1.5b.gguf"
    entry = RegistryEntry(
        agent="codegen", adapter="codegen-1", training="codegen-1", base_model=str(small)
    )
    registry_path(tmp_path).parent.mkdir(parents=True)
    registry_path(tmp_path).write_text(Registry(agents={"codegen": entry}).model_dump_json())
    # served on the model it was trained on: used
    assert agent_adapters(tmp_path, {"codegen-1"}, model=small) == ({"codegen": "codegen-1"}, [])
    # the writers' server of a default night runs the bigger model: the base model, and why
    used, why = agent_adapters(tmp_path, set(), model=big)
    assert used == {}
    assert why == [
        "codegen: its promoted adapter codegen-1 was trained on coder-0.5b.gguf, and the server "
        "that answers codegen runs coder-1.5b.gguf, so it uses the base model (serve codegen on "
        "coder-0.5b.gguf to use the adapter)"
    ]


def test_a_corrupt_registry_is_a_clear_error_and_serves_no_adapter(tmp_path):
    registry_path(tmp_path).parent.mkdir(parents=True)
    registry_path(tmp_path).write_text('{"agents": {"x": ')
    with pytest.raises(ArtifactError, match=r"registry\.json is corrupt"):
        read_registry(tmp_path)
    files, problems = served_adapters(tmp_path)
    assert files == {} and "corrupt" in problems[0]


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


def test_mcnemar_is_one_sided_and_exact():
    from pantheon.trainer.evaluate import decide, mcnemar

    assert mcnemar(0, 5) == pytest.approx(1 / 32)
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(5, 0) == 1.0
    assert decide(0, 5, 0.05)[0] is True
    assert decide(0, 4, 0.05)[0] is False  # 1/16: a gain chance explains
    assert decide(3, 2, 0.05)[0] is False


def test_the_night_serves_a_promoted_adapter_and_its_calls_say_so(trained, tmp_path):
    """What `pantheon night` and `pantheon engine` do: the server loads the registry's adapters,
    the engine has the agent's calls name its adapter, and calls.jsonl records it."""
    from pantheon.core import Engine
    from pantheon.core.learn.files import Evaluation
    from pantheon.core.model.client import LLMClient
    from pantheon.core.run.night import adapter_files as _registry_adapter_files
    from pantheon.core.run.night import adapters_in_use as _agent_adapters
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


def test_the_learn_commands_explain_themselves(tmp_path):
    from conftest import pantheon

    a = str(tmp_path)
    out = pantheon("promote", "--list", "--artifacts", a)
    assert out.returncode == 0 and "every agent uses the base model" in out.stdout
    out = pantheon("promote", "--rollback", "doc.frontmatter", "--artifacts", a)
    assert out.returncode == 1 and "has no promoted adapter to roll back" in out.stderr
    out = pantheon("promote", "doc.frontmatter", "--artifacts", a)
    assert out.returncode == 1 and "pantheon train doc.frontmatter" in out.stderr
    out = pantheon("train", "--resume", "nope", "--artifacts", a)
    assert out.returncode == 1 and "no training 'nope'" in out.stderr
    out = pantheon("train", "--list", "--artifacts", a)
    assert out.returncode == 0 and "no training in" in out.stdout
    out = pantheon("train", "doc.frontmatter", "--artifacts", a)
    assert out.returncode == 1 and "no mined data for agent 'doc.frontmatter'" in out.stderr
    assert "pantheon traces mine" in out.stderr
    for command in ("traces", "train", "promote"):
        help_text = pantheon(command, "--help").stdout
        assert "--artifacts" in help_text and "usage: pantheon " + command in help_text


_PEAK_PROBE = """
import mmap, sys
from pantheon.trainer.memory import peak_memory, reset_peak_memory

block = mmap.mmap(-1, 400 * 2**20)  # 400 MiB mapped and touched, unmapped on close
for at in range(0, len(block), 4096):
    block[at] = 1
high, _ = peak_memory("cpu")
if sys.argv[1] == "free":
    block.close()  # handed straight back to the system, whatever the heap does
lowered = reset_peak_memory()
low, _ = peak_memory("cpu")
print(high, low, lowered)
"""


def _peak_probe(mode: str) -> tuple[float, float, bool]:
    """The probe in a process of its own: a pytest process that has loaded models keeps its
    own peak, whatever a test frees."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, mode], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    high, low, lowered = done.stdout.split()
    return float(high), float(low), lowered == "True"


def test_each_training_measures_its_own_peak_memory():
    pytest.importorskip("torch")
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("this kernel does not let a process reset its peak memory")
    high, low, lowered = _peak_probe("free")
    assert high - low > 300 and lowered  # the next training in the process starts afresh


def test_a_peak_the_reset_cannot_lower_is_said_to_be_the_processs():
    pytest.importorskip("torch")
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("this kernel does not let a process reset its peak memory")
    high, low, lowered = _peak_probe("hold")  # the 400 MiB are still held: nothing to lower
    assert abs(high - low) < 50 and not lowered
    state = TrainingState(
        id="t",
        agent="a",
        status="done",
        base_model="m",
        peak_memory_mb=high,
        peak_memory_scope="process",
    )
    assert state.memory_text() == (
        f"peak memory {high / 1024:.1f} GB (the process's, not this training's alone)"
    )
