"""Judge an adapter the way the night judges work, then promote it only on a measured gain.

Each held-out job runs again through its real flow — the agent, the real tests, both reviewers —
once with the base model and once with the adapter, on a model server started for the purpose
(the base model, the adapter loaded beside it, each request choosing). A job starts from the
commit its original run started from, in a scratch clone of its repository, with merges paused:
the operator's repositories are never touched. A job is accepted when its run ends green.

The paired outcomes go through McNemar's exact test: of the jobs where the two disagree, ``c``
passed only with the adapter and ``b`` only without; the adapter is promoted when ``c > b`` and the
one-sided p-value of at least ``c`` of ``b + c`` by chance is under ``alpha``. Anything else —
no gain, a loss, a gain chance explains — keeps the registry as it was.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scipy.stats import binomtest

from pantheon.core.agents.base import AgentRegistry
from pantheon.core.agents.builtin import default_registry
from pantheon.core.errors import PantheonError
from pantheon.core.flows.flow import parse_flow
from pantheon.core.learn.files import (
    Evaluation,
    TaskResult,
    TrainingState,
    read_state,
)
from pantheon.core.model.client import LLMClient
from pantheon.core.model.lifecycle import serving
from pantheon.core.model.server import ModelServer, ServerConfig, artifact_name
from pantheon.core.morning.review import read_decisions
from pantheon.core.run.runner import Runner
from pantheon.core.store.atomic import atomic_write_json
from pantheon.core.store.control import Control, ControlFile
from pantheon.core.store.layout import branch_name
from pantheon.core.store.queue import JobQueue
from pantheon.core.work.git import GitError, GitRepo

from .examples import STATS, TASKS, read_examples, read_tasks
from .options import EvaluationError
from .verifier import decide_auroc, is_verifier_data

__all__ = [
    "EvaluationError",
    "base_commit",
    "evaluate",
    "interleaved_labels",
    "job_repo",
    "mcnemar",
]

log = logging.getLogger(__name__)


def mcnemar(b: int, c: int) -> float:
    """One-sided exact McNemar p-value: the chance of c or more of b + c pairs going its way."""
    if b + c == 0:
        return 1.0
    return float(binomtest(c, b + c, 0.5, alternative="greater").pvalue)


def decide(b: int, c: int, alpha: float) -> tuple[bool, float, str]:
    p = mcnemar(b, c)
    if b + c == 0:
        return False, p, "the adapter and the base model passed and failed the same tasks"
    if c <= b:
        return False, p, f"no gain: the adapter won {c} task(s) and lost {b}"
    if p >= alpha:
        return False, p, f"a gain chance explains: won {c}, lost {b}, p = {p:.3g} ≥ {alpha}"
    return True, p, f"a gain beyond chance: won {c}, lost {b}, p = {p:.3g} < {alpha}"


def job_repo(raw: str, artifacts: Path) -> Path | None:
    """The git repository a job's ``repo`` input names (absolute, or relative to the artifacts'
    parent or the working directory); None when there is none."""
    path = Path(raw)
    candidates = [path] if path.is_absolute() else [artifacts.parent / path, Path.cwd() / path]
    for candidate in candidates:
        if (candidate / ".git").exists():
            return candidate.resolve()
    return None


def base_commit(repo: GitRepo, branch: str, target: str) -> str | None:
    """The commit a job's branch started from: its first commit on the target's own history."""
    try:
        trunk = set(repo.git("rev-list", "--first-parent", f"refs/heads/{target}").split())
        for commit in repo.git("rev-list", "--first-parent", f"refs/heads/{branch}").split():
            if commit in trunk:
                return commit
    except GitError:
        return None
    return None


class _Variant:
    """One side of the comparison: its own artifacts, queue and scratch clones."""

    def __init__(self, root: Path, llm: LLMClient, registry: AgentRegistry, adapters: dict):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        ControlFile(root).write(
            Control(merges_paused=True, merges_paused_reason="evaluation", concurrency=1)
        )
        self.queue = JobQueue(root)
        self.runner = Runner(root, registry, self.queue, llm=llm, adapters=adapters)
        self.clones: dict[Path, GitRepo] = {}

    def clone(self, repo: GitRepo) -> GitRepo:
        if repo.path not in self.clones:
            dst = self.root / "repos" / f"{len(self.clones)}-{repo.path.name}"
            repo.git("clone", "--quiet", "--no-checkout", str(repo.path), str(dst))
            self.clones[repo.path] = GitRepo(dst)
        return self.clones[repo.path]


def evaluate(
    artifacts: Path,
    folder: Path,
    *,
    alpha: float = 0.05,
    limit: int | None = None,
    parallel: int = 4,
    registry: AgentRegistry | None = None,
    on_task: Callable[[TaskResult, int, int], None] | None = None,
    endpoint_timeout_s: float = 300.0,
    corpus: bool = False,
) -> Evaluation:
    """Run the held-out tasks with and without the adapter, as the agent is judged (its
    ``judged_by``); write ``evaluation.json``. ``corpus``: a code writer is judged on the held-out
    side of the shipped code corpus too."""
    artifacts, folder = Path(artifacts), Path(folder)
    state = read_state(folder)
    if state.status not in ("done", "evaluating") or not state.gguf:
        raise EvaluationError(
            f"training {state.id} has no finished adapter to judge (status {state.status})"
        )
    if state.alive and state.pid != os.getpid():
        raise EvaluationError(f"training {state.id} is being judged already (pid {state.pid})")
    if not 0 < alpha < 1 or parallel < 1 or (limit is not None and limit < 1):
        raise EvaluationError(
            "the significance must be between 0 and 1 (0.05 is 5 %), and --parallel and "
            "--limit at least 1"
        )
    own = folder if (folder / "data.jsonl").exists() else None
    examples = read_examples(artifacts, state.agent, own)[0]
    trained_runs = {e["run"] for e in examples if e["split"] == "train"}
    trained_keys = {e["key"] for e in examples if e["split"] == "train" and e.get("key")}
    registry = registry or default_registry()
    mode = _judged_by(registry, state.agent)
    work = folder / "eval"
    shutil.rmtree(work, ignore_errors=True)
    gguf = artifacts / state.gguf
    name = artifact_name(gguf)
    left_out = 0
    t0 = time.monotonic()
    if mode == "labels":
        labelled = [e for e in examples if e["split"] == "heldout" and "label" in e]
        if not labelled:
            raise EvaluationError(
                f"{state.agent} has no held-out labelled example to judge an adapter on",
                hint="a night with canaries (--canary-every) labels reviewer examples",
            )
        if is_verifier_data(labelled):  # a verifier: judged as a scorer, on every change
            mode, items = "scores", labelled[: limit or None]
        else:
            items = interleaved_labels(labelled)[: limit or None]
        if len({bool(e["label"]) for e in items}) < 2:
            said = "pass" if labelled[0]["label"] else "fail"
            raise EvaluationError(
                f"{state.agent}'s {len(labelled)} held-out labelled examples all say {said}: "
                "a reviewer that always said so would look right on every one",
                hint="mine with --corpus: the shipped corpus labels real fixes and planted defects",
            )
    elif mode == "pass@1":
        from .judges import code_tasks

        own_tasks = folder if (folder / TASKS).exists() else None
        raw = [
            t
            for t in read_tasks(artifacts, state.agent, own_tasks)
            if t.get("run") not in trained_runs
        ]
        fraction = _mined_fraction(artifacts, state.agent, folder) if corpus else None
        items, problems = code_tasks(artifacts, raw, trained_keys, corpus_fraction=fraction)
        for why in problems:
            log.warning("held-out task left out: %s", why)
        left_out = len(problems)
        items = items[: limit or None]
        if not items:
            raise EvaluationError(
                f"{state.agent} has no held-out code task to judge an adapter on",
                hint="mine a night in which this agent ran more jobs, or judge on the shipped "
                "corpus too (--corpus)",
            )
    else:
        tasks = read_tasks(artifacts, state.agent, folder if (folder / TASKS).exists() else None)
        # never judge on its own data, nor on a task it trained on
        items = [
            t
            for t in tasks
            if t.get("run") not in trained_runs and t.get("key") not in trained_keys
        ][: limit or None]
        if not items:
            raise EvaluationError(
                f"{state.agent} has no held-out tasks to judge an adapter on",
                hint="mine a night in which this agent ran more jobs",
            )
        decisions, _ = read_decisions(artifacts)
    server = ModelServer(
        work,
        ServerConfig(model=state.base_model, port=0, parallel=parallel, adapters=[str(gguf)]),
    )
    try:
        with serving(server, timeout_s=endpoint_timeout_s) as sstate:
            if mode == "flow":
                results = asyncio.run(
                    _run_all(
                        artifacts,
                        work,
                        state,
                        items,
                        sstate,
                        name,
                        registry,
                        decisions,
                        parallel,
                        on_task,
                    )
                )
            else:
                results = asyncio.run(
                    _run_judge(mode, registry, state.agent, items, sstate, name, parallel, on_task)
                )
            left_out += len(items) - len(results)
    finally:
        for side in ("base", "adapter"):  # the scratch clones and checkouts; the runs stay
            shutil.rmtree(work / side / "repos", ignore_errors=True)
            shutil.rmtree(work / side / "worktrees", ignore_errors=True)
    if not results:
        raise EvaluationError(
            f"none of {state.agent}'s {len(items)} held-out tasks could be judged "
            "(see the log for why)"
        )
    b = sum(1 for r in results if r.base and not r.adapter)
    c = sum(1 for r in results if r.adapter and not r.base)
    aucs = None
    if mode == "scores":
        promoted, p, reason, aucs = decide_auroc(results, alpha)
    else:
        promoted, p, reason = decide(b, c, alpha)
    evaluation = Evaluation(
        training=state.id,
        agent=state.agent,
        adapter=name,
        tasks=len(results),
        base_passed=sum(r.base for r in results),
        adapter_passed=sum(r.adapter for r in results),
        b=b,
        c=c,
        p_value=p,
        alpha=alpha,
        promoted=promoted,
        reason=reason,
        judged_by=mode,
        base_auroc=aucs[0] if aucs else None,
        adapter_auroc=aucs[1] if aucs else None,
        left_out=left_out,
        results=results,
        seconds=round(time.monotonic() - t0, 1),
        at=datetime.now(UTC),
    )
    atomic_write_json(folder / "evaluation.json", evaluation.model_dump(mode="json"))
    return evaluation


def interleaved_labels(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """As many examples labelled pass as labelled fail, alternating, each side in its given
    order. The labelled changes are mostly fails (every canary, five planted defects to each real
    fix of the corpus): on them a reviewer that failed everything would look right five times in
    six; on a balanced set it is right half the time, as one that passes everything."""
    passes = [e for e in examples if e["label"]]
    fails = [e for e in examples if not e["label"]]
    return [e for pair in zip(passes, fails, strict=False) for e in pair]


def _judged_by(registry: AgentRegistry, agent: str) -> str:
    try:
        return str(getattr(registry.get(agent), "judged_by", "flow"))
    except PantheonError:
        return "flow"


def _mined_fraction(artifacts: Path, agent: str, folder: Path) -> float:
    from pantheon.core.learn.files import MineStats, training_root
    from pantheon.core.store.atomic import read_json

    for where in (folder, training_root(artifacts) / agent):
        try:
            return MineStats.model_validate(read_json(where / STATS)).fraction
        except (OSError, PantheonError, ValueError):
            continue
    return 0.2


async def _run_judge(
    mode: str,
    registry: AgentRegistry,
    agent: str,
    items: list[Any],
    sstate: Any,
    adapter: str,
    parallel: int,
    on_task: Callable[[TaskResult, int, int], None] | None,
) -> list[TaskResult]:
    from .judges import judge_labels, judge_pass_at_1

    llm = LLMClient(sstate.endpoint, model=sstate.alias, adapters=sstate.adapters)
    try:
        if mode == "pass@1":
            return await judge_pass_at_1(llm, items, adapter, parallel=parallel, on_task=on_task)
        if mode == "scores":
            from .verifier import judge_scores

            return await judge_scores(llm, items, adapter, parallel=parallel, on_task=on_task)
        output = getattr(registry.get(agent), "Verdict", None) or registry.get(agent).Output
        return await judge_labels(llm, items, adapter, output, parallel=parallel, on_task=on_task)
    finally:
        await llm.aclose()


async def _run_all(
    artifacts: Path,
    work: Path,
    state: TrainingState,
    tasks: list[dict[str, Any]],
    sstate: Any,
    adapter: str,
    registry: AgentRegistry,
    decisions: dict[str, Any],
    parallel: int,
    on_task: Callable[[TaskResult, int, int], None] | None,
) -> list[TaskResult]:
    llm = LLMClient(sstate.endpoint, model=sstate.alias, adapters=sstate.adapters)
    variants = {
        "base": _Variant(work / "base", llm, registry, {}),
        "adapter": _Variant(work / "adapter", llm, registry, {state.agent: adapter}),
    }
    with JobQueue(artifacts, create=False) as source:
        prepared = []
        for task in tasks:
            try:
                prepared.append(
                    (task, _prepare(artifacts, source, task, variants, decisions, registry))
                )
            except (PantheonError, TypeError, KeyError, AttributeError) as exc:
                log.warning("held-out task %s left out: %s", task.get("run"), exc)
    if not prepared:
        raise EvaluationError(
            f"none of {state.agent}'s {len(tasks)} held-out tasks could be set up again "
            "(their repositories or branches are gone)"
        )
    from .judges import in_phases

    results: list[TaskResult] = []

    async def one(
        item: tuple[dict[str, Any], dict[str, int]], with_adapter: bool
    ) -> tuple[bool, str | None]:
        v = variants["adapter" if with_adapter else "base"]
        outcome = await v.runner.run(v.queue.get(item[1]["adapter" if with_adapter else "base"]))
        return outcome.status == "done", outcome.error

    try:
        async for (task, _), (base_ok, base_err), (ad_ok, ad_err) in in_phases(
            prepared, one, parallel=parallel
        ):
            result = TaskResult(
                run=task["run"],
                base=base_ok,
                adapter=ad_ok,
                base_error=base_err,
                adapter_error=ad_err,
            )
            results.append(result)
            if on_task is not None:
                on_task(result, len(results), len(prepared))
        return results
    finally:
        await llm.aclose()
        for v in variants.values():
            v.queue.close()


def _prepare(
    artifacts: Path,
    source: JobQueue,
    task: dict[str, Any],
    variants: dict[str, _Variant],
    decisions: dict[str, Any],
    registry: AgentRegistry,
) -> dict[str, int]:
    """Enqueue one held-out job in each variant, on a scratch clone at its original start."""
    flow_source, flow_text = source.flow_text(task["flow_sha256"])
    try:
        first_agent = parse_flow(flow_text, registry, source=flow_source).first_agent()
    except PantheonError as exc:
        raise EvaluationError(f"its flow cannot be read: {exc}") from exc
    raw_repo = task["input"].get("repo")
    if not raw_repo:  # a flow without a repository: the same input again
        return {
            key: variant.queue.enqueue(
                flow=task["flow"],
                flow_sha=task["flow_sha256"],
                flow_source=flow_source,
                flow_text=flow_text,
                first_agent=first_agent,
                inputs=[task["input"]],
            )[0]
            for key, variant in variants.items()
        }
    repo_path = job_repo(str(raw_repo), artifacts)
    if repo_path is None:
        raise EvaluationError(f"its repository {raw_repo} is gone")
    repo = GitRepo(repo_path)
    target = str(task["input"].get("target") or "main")
    branch = branch_name(task["flow"], task["job"])
    decision = decisions.get(task["run"])
    if decision is not None and decision.kept_as:
        branch = decision.kept_as
    base = base_commit(repo, branch, target)
    if base is None:
        raise EvaluationError(f"its branch {branch} (or {target}) is gone from {repo_path}")
    ids = {}
    for key, variant in variants.items():
        clone = variant.clone(repo)
        start = f"eval/{task['run']}"
        clone.git("branch", "--force", start, base)
        inputs = {**task["input"], "repo": str(clone.path), "target": start}
        (ids[key],) = variant.queue.enqueue(
            flow=task["flow"],
            flow_sha=task["flow_sha256"],
            flow_source=flow_source,
            flow_text=flow_text,
            first_agent=first_agent,
            inputs=[inputs],
        )
    return ids
