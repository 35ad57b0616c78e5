"""The demo night: the shipped flows over the shipped corpus."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.flows.flow import load_flow, packaged_flows_dir
from pantheon.core.flows.submit import enqueue
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import CALLS_FILE, runs_path
from pantheon.core.store.queue import JobQueue
from pantheon.core.work.git import run_git

__all__ = [
    "agent_figures",
    "code_tasks",
    "corpus_tasks",
    "demo_inputs",
    "enqueue_night",
    "night_figures",
    "night_queued",
    "prepare_demo_repo",
    "repo_jobs",
]


def demo_inputs(corpus: Path | None = None) -> list[dict[str, str]]:
    """One input per Markdown document of the demo corpus: its title and text."""
    folder = corpus or packaged_flows_dir() / "corpus" / "docs"
    out = []
    for path in sorted(folder.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        first = text.splitlines()[0] if text else path.stem
        out.append({"title": first.lstrip("# ").strip(), "text": text})
    return out


def night_figures(artifacts: Path) -> str:
    """The model's share of a night, from the runs' calls.jsonl files (the nodes', and the
    canaries' reviews); a tool the model used is no model call."""
    calls = prompt = completion = failed = candidates = kept = cached = counted = 0
    latency = 0.0
    first = last = None
    for path in runs_path(artifacts).glob(f"**/{CALLS_FILE}"):
        try:
            records, _ = read_jsonl(path)
        except OSError:
            continue
        for call in records:
            if call.get("kind") == "tool":
                continue
            calls += 1
            if call.get("kind") in ("candidate", "sample"):  # one not kept is no unusable reply
                candidates += 1
                kept += 1 if call.get("chosen") else 0
            else:
                failed += 1 if call.get("error") else 0
            prompt += int(call.get("prompt_tokens") or 0)
            if isinstance(call.get("cached_tokens"), int):  # the server's own count
                cached += call["cached_tokens"]
                counted += int(call.get("prompt_tokens") or 0)
            completion += int(call.get("completion_tokens") or 0)
            latency += float(call.get("latency_s") or 0.0)
            at = call.get("at")
            if at:
                first = min(first or at, at)
                last = max(last or at, at)
    if not calls:
        return "model      no model calls"
    span = 0.0
    if first and last:
        span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    rate = f", {completion / span:.1f} generated tok/s over {span:.0f} s" if span > 0 else ""
    fixes = f", {candidates} of them candidates or samples ({kept} kept)" if candidates else ""
    cache = f" ({cached / counted:.0%} of them from the server's cache)" if counted else ""
    return (
        f"model      {calls} calls ({failed} unusable{fixes}), {prompt} prompt{cache} + "
        f"{completion} generated tokens, mean latency {latency / calls:.2f} s{rate}"
    )


def prepare_demo_repo(folder: Path) -> Path:
    """The demo's target repository: the corpus docs, the 30 hand-written code tasks and the
    generated HumanEval tasks, committed on ``main``.

    An existing demo repository is reused as it is (the night resumes on it).
    """
    folder = Path(folder)
    if (folder / ".git").exists():
        return folder
    corpus = packaged_flows_dir() / "corpus"
    (folder / "docs").mkdir(parents=True)
    for doc in sorted((corpus / "repo" / "docs").glob("*.md")):
        shutil.copyfile(doc, folder / "docs" / doc.name)
    for task in [*code_tasks(), *corpus_tasks()]:
        pkg = folder / "code" / task["id"]
        pkg.mkdir(parents=True)
        (pkg / f"{task['module']}.py").write_text(task["source"])
        (pkg / f"test_{task['module']}.py").write_text(task["test"])
    (folder / "README.md").write_text(
        "# kvlite\n\nThe demo repository of Pantheon's night: documentation pages that need "
        "frontmatter, small functions whose tests fail, and HumanEval's functions with one bug "
        "each (code/he*; HumanEval is (c) OpenAI, MIT licence).\n"
    )
    run_git(folder, "init", "-q", "-b", "main")
    run_git(folder, "add", "-A")
    run_git(folder, "commit", "-q", "-m", "The demo repository")
    return folder


def code_tasks() -> list[dict[str, str]]:
    """The demo's 30 hand-written code tasks."""
    path = packaged_flows_dir() / "corpus" / "code" / "tasks.yaml"
    return list(yaml.safe_load(path.read_text(encoding="utf-8")))


def corpus_tasks() -> list[dict[str, str]]:
    """The generated code corpus: HumanEval's solutions with one classic bug each
    (``pantheon.core.work.codecorpus``), in the same format as :func:`code_tasks`."""
    path = packaged_flows_dir() / "corpus" / "code" / "humaneval.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


DEMO_CODE_TASKS = 30
"""Code jobs of a demo night unless ``--code`` says otherwise: the hand-written tasks."""


def repo_jobs(repo: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The docops and codefix inputs for every doc and code task of a demo repository (its
    path absolute, so that whoever reads the runs later finds it from any folder). The code
    tasks are the hand-written ones first, then the generated corpus (those in the repository).
    Each task is a folder of its own that no other task's test imports, so its ``guard`` (the
    other tests the change must keep passing) is empty."""
    repo = Path(repo).resolve()
    docs = [
        {"repo": str(repo), "path": f"docs/{p.name}"}
        for p in sorted((Path(repo) / "docs").glob("*.md"))
    ]
    code = [
        {
            "repo": str(repo),
            "path": f"code/{t['id']}/{t['module']}.py",
            "test": f"code/{t['id']}/test_{t['module']}.py",
            "task": t["task"],
            "guard": [],
        }
        for t in [*code_tasks(), *corpus_tasks()]
        if (repo / "code" / t["id"]).is_dir()
    ]
    return docs, code


def night_queued(queue: JobQueue) -> bool:
    """Whether a night (docops or codefix jobs) is in the queue already: it resumes."""
    return bool({"docops", "codefix"} & set(queue.counts().by_flow))


def enqueue_night(
    queue: JobQueue,
    registry: AgentRegistry,
    repo: Path,
    *,
    docs: int | None = None,
    code: int | None = None,
    inputs: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None,
    remote: str | None = None,
) -> tuple[int, int]:
    """Enqueue a night on ``repo``: docops for its docs, codefix for its code tasks (the demo's,
    or ``inputs`` found in a user's repository by :mod:`pantheon.core.work.discover`).

    A night already in the queue is resumed, not enqueued twice. Returns (docs, code) enqueued.
    """
    if night_queued(queue):
        return 0, 0
    if inputs is None:
        doc_inputs, code_inputs = repo_jobs(repo)
        code = DEMO_CODE_TASKS if code is None else code
    else:
        doc_inputs, code_inputs = inputs
    doc_inputs = doc_inputs[:docs] if docs is not None else doc_inputs
    code_inputs = code_inputs[:code] if code is not None else code_inputs
    if remote:  # every job starts from the shared remote's target and lands on it
        doc_inputs = [{**one, "remote": remote} for one in doc_inputs]
        code_inputs = [{**one, "remote": remote} for one in code_inputs]
    flows = packaged_flows_dir()
    n_docs = len(enqueue(queue, load_flow(flows / "docops.yaml", registry), doc_inputs))
    n_code = len(enqueue(queue, load_flow(flows / "codefix.yaml", registry), code_inputs))
    return n_docs, n_code


def agent_figures(queue: JobQueue) -> str:
    """Pass rate per agent, from the nodes the night finished."""
    rows = []
    for agent, counts in sorted(queue.counts().by_agent.items()):
        done, failed = counts["done"], counts["failed"]
        if done + failed:
            rows.append(f"{agent} {done}/{done + failed} ({done / (done + failed):.0%})")
    return "pass rate  " + ", ".join(rows) if rows else "pass rate  -"
