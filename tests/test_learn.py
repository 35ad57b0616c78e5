"""The learn loop's data and bookkeeping on real things: mining real docops runs in a real git
repository, the adapters' registry (promotion, rollback, a corrupt file), the McNemar test, the
learn commands, and the peak memory a training measures. Training SmolLM2 adapters for real is in
test_learn_adapter.py."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import docops_model, docops_night, git, pantheon

from pantheon.core.errors import ArtifactError
from pantheon.core.learn.files import (
    TrainingState,
    agent_adapters,
    read_registry,
    registry_path,
    served_adapters,
    training_root,
)
from pantheon.core.morning.review import Change, reject
from pantheon.trainer.examples import heldout, read_examples
from pantheon.trainer.mine import mine

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
    llm, http = docops_model({"a": True, "b": True})
    paths = [f"docs/doc{i}.md" for i in range(6)]
    docops_night(artifacts, registry, repo, [*paths, "docs/same0.md"], llm)
    ControlFile(artifacts).update(by="op", merges_paused=True, merges_paused_reason="review")
    docops_night(artifacts, registry, repo, ["docs/doc7.md"], llm)  # job 8: waits, then rejected
    asyncio.run(http.aclose())
    llm, http = docops_model({"a": True, "b": False})
    docops_night(artifacts, registry, repo, ["docs/doc8.md"], llm)  # job 9: the reviewers disagree
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
        # the flow's reviewers are scored: the example is the verdict word they were asked for
        assert e["messages"][-1]["content"] == "fail"
        assert e["messages"][-2]["content"].endswith("Answer with one word: pass or fail.")

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
    out = pantheon("traces", "mine", "--artifacts", str(mined))
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("doc.frontmatter"))
    assert line.split()[1] == "5"
    assert "1 disagreed" in line and "1 rejected" in line and "2 corrupt" in line
    js = json.loads(pantheon("traces", "mine", "--json", "--artifacts", str(mined)).stdout)
    assert js["agents"]["doc.frontmatter"]["examples"] == 5


def test_too_little_data_is_refused_clearly(mined):
    mine(mined)
    out = pantheon("train", "doc.frontmatter", "--artifacts", str(mined))
    assert out.returncode == 1
    assert "not enough data for doc.frontmatter (" in out.stderr and "< 50" in out.stderr
    assert not any(p.name.startswith("doc.frontmatter-") for p in training_root(mined).iterdir())


def test_mining_a_folder_without_a_night_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="no night to mine"):
        mine(tmp_path)


# -- the registry of promoted adapters, the judging's statistic, the commands ----------------


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


def test_mcnemar_is_one_sided_and_exact():
    from pantheon.trainer.evaluate import decide, mcnemar

    assert mcnemar(0, 5) == pytest.approx(1 / 32)
    assert mcnemar(0, 0) == 1.0
    assert mcnemar(5, 0) == 1.0
    assert decide(0, 5, 0.05)[0] is True
    assert decide(0, 4, 0.05)[0] is False  # 1/16: a gain chance explains
    assert decide(3, 2, 0.05)[0] is False


def test_the_learn_commands_explain_themselves(tmp_path):
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


# -- the peak memory a training measures ------------------------------------------------------

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
