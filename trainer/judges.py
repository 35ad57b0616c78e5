"""Judges of one agent's work, for an adapter's held-out evidence, apart from whole flows.

- **pass@1** (a code writer): each held-out code task is set up in a scratch folder as it was
  before the night touched it, and the agent's harness asks for **one** greedy fix — once with
  the base model, once with the adapter — that the real tests judge, in the sandbox. It measures
  what the adapter changes (the first answer), not what sampling and the reviewers add. The tasks
  are the night's held-out code jobs and, when asked (``corpus``), the held-out side of the
  shipped HumanEval corpus: every mutant of a problem whose key the split holds out, so an adapter
  is judged on problems it never saw.
- **labels** (a reviewer): each held-out labelled example (a canary, or a change the operator
  decided on) is shown again, and the verdict is right when it is the label's.

Each gives one :class:`TaskResult` per task: passed (right) with the base model, with the adapter.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pantheon.core.errors import ModelServerError, NodeError, PantheonError, ReplyError
from pantheon.core.learn.files import TaskResult
from pantheon.core.model.client import LLMClient
from pantheon.core.store.layout import branch_name
from pantheon.core.work.edits import file_diff
from pantheon.core.work.git import GitError, GitRepo

__all__ = [
    "CodeTask",
    "code_tasks",
    "corpus_heldout",
    "in_phases",
    "judge_examples",
    "judge_labels",
    "judge_pass_at_1",
    "one_fix",
]

log = logging.getLogger(__name__)

OnTask = Callable[[TaskResult, int, int], None]
T = TypeVar("T")
R = TypeVar("R")


async def in_phases(
    items: Sequence[T],
    side: Callable[[T, bool], Awaitable[R]],
    *,
    parallel: int,
    left_out: tuple[type[Exception], ...] = (),
    what: Callable[[T], object] = str,
) -> AsyncIterator[tuple[T, R, R]]:
    """Both sides of each item (``side(item, False)``: the base model; ``True``: the adapter),
    ``parallel`` calls at a time and one side at a time: over each chunk of ``2 * parallel``
    items, every base side, then every adapter side; yields (item, base, adapter) as each chunk
    ends. An item a side of which raised one of ``left_out`` is logged (``what(item)`` names it)
    and left out; any other exception is raised. llama-server does not batch requests whose
    adapters differ, so asking both sides of a task together splits every batch
    (bench/lora_serve.py, c = 4 on this machine: 30.3 tokens/s so, 35.0 one side at a time)."""
    gate = asyncio.Semaphore(max(1, parallel))

    async def gated(item: T, with_adapter: bool) -> R:
        async with gate:
            return await side(item, with_adapter)

    step = 2 * max(1, parallel)
    for start in range(0, len(items), step):
        part = items[start : start + step]
        sides = [
            await asyncio.gather(*(gated(i, ad) for i in part), return_exceptions=True)
            for ad in (False, True)
        ]
        for item, base, adapted in zip(part, *sides, strict=True):
            failed = next((x for x in (base, adapted) if isinstance(x, BaseException)), None)
            if failed is None:
                yield item, base, adapted
            elif isinstance(failed, left_out):
                log.warning("held-out %s left out: %s", what(item), failed)
            else:
                raise failed


@dataclass
class CodeTask:
    """One code task, as the agent first saw it."""

    key: str
    run: str
    """The night's run, or ``corpus:<id>`` for a task of the shipped corpus."""
    path: str
    test: str
    task: str
    test_command: str | None = None
    repo: Path | None = None
    commit: str | None = None
    """The commit to set the repository up from (a night's task)."""
    files: dict[str, str] | None = None
    """The files to write instead (a corpus task)."""

    @classmethod
    def from_corpus(cls, t: dict[str, str]) -> CodeTask:
        """A task of the shipped code corpus, laid out as in the demo repository."""
        from .examples import task_key

        path = f"code/{t['id']}/{t['module']}.py"
        test = f"code/{t['id']}/test_{t['module']}.py"
        return cls(
            key=task_key({"path": path}, t["id"]),
            run=f"corpus:{t['id']}",
            path=path,
            test=test,
            task=t["task"],
            files={path: t["source"], test: t["test"]},
        )

    def materialize(self, dest: Path) -> Path:
        """The task's files in ``dest``, as they were before the fix."""
        dest.mkdir(parents=True, exist_ok=True)
        if self.files is not None:
            for rel, text in self.files.items():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / rel).write_text(text, encoding="utf-8")
            return dest
        assert self.repo is not None and self.commit is not None
        archive = subprocess.run(
            ["git", "-C", str(self.repo), "archive", "--format=tar", self.commit],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise PantheonError(
                f"cannot read {self.commit[:12]} of {self.repo}: "
                f"{archive.stderr.decode(errors='replace').strip()}"
            )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        return dest


def corpus_heldout(fraction: float, trained: set[str] | None = None) -> list[CodeTask]:
    """The held-out side of the shipped code corpus at ``fraction`` (split by problem, as the
    mining splits it), less any task whose key was trained on."""
    from pantheon.core.run.demo import corpus_tasks

    from .examples import heldout

    tasks = [CodeTask.from_corpus(t) for t in corpus_tasks()]
    trained = trained or set()
    return [c for c in tasks if c.key not in trained and heldout(c.key, fraction)]


def code_tasks(
    artifacts: Path,
    tasks: list[dict[str, Any]],
    trained: set[str],
    *,
    corpus_fraction: float | None = None,
) -> tuple[list[CodeTask], list[str]]:
    """The code tasks to judge on: the night's held-out code jobs (set up from the commit their
    run started from), then the corpus's held-out side when ``corpus_fraction`` is given; none
    whose key was trained on. Returns them and why any was left out."""
    from .evaluate import base_commit, job_repo

    out: list[CodeTask] = []
    problems: list[str] = []
    seen: set[tuple[str, str]] = set()
    for t in tasks:
        inp = t.get("input") or {}
        key = str(t.get("key") or "")
        if key in trained:
            continue
        if not (inp.get("path") and inp.get("test") and inp.get("repo")):
            problems.append(f"{t.get('run')}: not a code task (no path, test or repo)")
            continue
        repo_path = job_repo(str(inp["repo"]), Path(artifacts))
        if repo_path is None:
            problems.append(f"{t.get('run')}: its repository {inp['repo']} is gone")
            continue
        target = str(inp.get("target") or "main")
        branch = branch_name(t["flow"], t["job"])
        try:
            commit = base_commit(GitRepo(repo_path), branch, target)
        except GitError as exc:
            problems.append(f"{t.get('run')}: {exc}")
            continue
        if commit is None:
            problems.append(f"{t.get('run')}: its branch {branch} is gone from {repo_path}")
            continue
        seen.add((inp["path"], inp["test"]))
        out.append(
            CodeTask(
                key=key,
                run=str(t["run"]),
                path=str(inp["path"]),
                test=str(inp["test"]),
                task=str(inp.get("task") or f"Fix {inp['path']}; its tests fail."),
                test_command=inp.get("test_command"),
                repo=repo_path,
                commit=commit,
            )
        )
    if corpus_fraction is not None:
        out += [c for c in corpus_heldout(corpus_fraction, trained) if (c.path, c.test) not in seen]
    return out, problems


async def one_fix(
    llm: LLMClient,
    task: CodeTask,
    adapter: str | None,
    *,
    max_tokens: int = 2048,
    timeout_s: float = 60.0,
) -> tuple[bool, str | None, str | None]:
    """One greedy fix of a task in a scratch folder, as codegen makes it in a night, the real
    tests judging: (passed, why not, the fix's diff when it passed)."""
    from pantheon.core.work.codefix import run_fix
    from pantheon.core.work.testcmd import resolve_test_command

    with tempfile.TemporaryDirectory(prefix="pantheon-judge-") as tmp:
        root = await asyncio.to_thread(task.materialize, Path(tmp) / "work")
        before = (root / task.path).read_text(encoding="utf-8")
        command = resolve_test_command(root, task.test_command)
        try:
            await run_fix(
                llm,
                root=root,
                path=task.path,
                test_path=task.test,
                task=task.task,
                command=command,
                k=1,
                max_tokens=max_tokens,
                timeout_s=timeout_s,
                adapter=adapter,
                node="codegen",
            )
        except NodeError as exc:
            return False, exc.message[:300], None
        after = (root / task.path).read_text(encoding="utf-8")
        return True, None, file_diff(task.path, before, after)


async def judge_pass_at_1(
    llm: LLMClient,
    tasks: list[CodeTask],
    adapter: str,
    *,
    parallel: int = 4,
    max_tokens: int = 2048,
    timeout_s: float = 60.0,
    on_task: OnTask | None = None,
) -> list[TaskResult]:
    """Each task's one greedy fix with the base model and with the adapter, the real tests
    judging. A task whose model call fails (the server, not the answer) is left out."""
    results: list[TaskResult] = []
    left_out = (ModelServerError, PantheonError, OSError, subprocess.CalledProcessError)

    async def side(task: CodeTask, with_adapter: bool) -> tuple[bool, str | None, str | None]:
        return await one_fix(
            llm,
            task,
            adapter if with_adapter else None,
            max_tokens=max_tokens,
            timeout_s=timeout_s,
        )

    phases = in_phases(
        tasks, side, parallel=parallel, left_out=left_out, what=lambda t: f"task {t.run}"
    )
    async for task, (b_ok, b_err, b_diff), (a_ok, a_err, a_diff) in phases:
        result = TaskResult(
            run=task.run,
            base=b_ok,
            adapter=a_ok,
            base_error=b_err,
            adapter_error=a_err,
            base_change=b_diff,
            adapter_change=a_diff,
        )
        results.append(result)
        if on_task is not None:
            on_task(result, len(results), len(tasks))
    return results


async def judge_labels(
    llm: LLMClient,
    examples: list[dict[str, Any]],
    adapter: str,
    output: type,
    *,
    parallel: int = 4,
    max_tokens: int = 512,
    on_task: OnTask | None = None,
) -> list[TaskResult]:
    """Each held-out labelled example's verdict, with the base model and with the adapter: right
    when it is the label's (a reply that cannot be used is wrong)."""
    from pantheon.core.model.safecall import ask

    async def side(i: int, with_adapter: bool) -> tuple[bool, str | None]:
        messages, label = examples[i]["messages"][:-1], bool(examples[i]["label"])
        try:
            verdict = await ask(
                llm,
                messages,
                output,
                max_tokens=max_tokens,
                adapter=adapter if with_adapter else None,
                temperature=0.0,
            )
        except ReplyError as exc:
            return False, f"no usable verdict: {exc.message}"[:300]
        got = bool(getattr(verdict, "passed", not label))
        return got is label, None if got is label else f"said {'pass' if got else 'fail'}"

    def result_of(run: str, example: dict[str, Any], base: tuple, with_adapter: tuple):
        (b_ok, b_err), (a_ok, a_err) = base, with_adapter
        return TaskResult(run=run, base=b_ok, adapter=a_ok, base_error=b_err, adapter_error=a_err)

    return await judge_examples(examples, side, result_of, parallel=parallel, on_task=on_task)


async def judge_examples(
    examples: list[dict[str, Any]],
    side: Callable[[int, bool], Awaitable[R]],
    result_of: Callable[[str, dict[str, Any], R, R], TaskResult],
    *,
    parallel: int = 4,
    on_task: OnTask | None = None,
) -> list[TaskResult]:
    """Each held-out labelled example judged by ``side(i, with_adapter)`` with the base model
    and with the adapter (:func:`in_phases`: a dead server stops it), made one result by
    ``result_of(run, example, base side, adapter side)``; sorted by run."""
    results: list[TaskResult] = []
    phases = in_phases(
        range(len(examples)),
        side,
        parallel=parallel,
        left_out=(ModelServerError,),
        what=lambda i: f"example {examples[i].get('run')}",
    )
    async for i, base, with_adapter in phases:
        example = examples[i]
        run = f"{example.get('run')}/{example.get('node')}#{i}"
        results.append(result_of(run, example, base, with_adapter))
        if on_task is not None:
            on_task(results[-1], len(results), len(examples))
    return sorted(results, key=lambda r: r.run)
