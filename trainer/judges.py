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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pantheon.core.errors import ModelServerError, NodeError, PantheonError, ReplyError
from pantheon.core.learn.files import TaskResult
from pantheon.core.model.client import LLMClient
from pantheon.core.store.layout import branch_name
from pantheon.core.work.git import GitError, GitRepo

__all__ = ["CodeTask", "code_tasks", "judge_labels", "judge_pass_at_1"]

log = logging.getLogger(__name__)

OnTask = Callable[[TaskResult, int, int], None]


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


def _corpus_tasks(fraction: float, trained: set[str]) -> list[CodeTask]:
    from pantheon.core.run.demo import corpus_tasks

    from .mine import heldout, task_key

    out = []
    for t in corpus_tasks():
        path = f"code/{t['id']}/{t['module']}.py"
        test = f"code/{t['id']}/test_{t['module']}.py"
        key = task_key({"path": path}, t["id"])
        if key in trained or not heldout(key, fraction):
            continue
        out.append(
            CodeTask(
                key=key,
                run=f"corpus:{t['id']}",
                path=path,
                test=test,
                task=t["task"],
                files={path: t["source"], test: t["test"]},
            )
        )
    return out


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
        out += [c for c in _corpus_tasks(corpus_fraction, trained) if (c.path, c.test) not in seen]
    return out, problems


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
    from pantheon.core.work.codefix import run_fix
    from pantheon.core.work.testcmd import resolve_test_command

    gate = asyncio.Semaphore(max(1, parallel))
    done = 0
    results: list[TaskResult] = []

    async def side(task: CodeTask, name: str | None) -> tuple[bool, str | None]:
        async with gate:
            with tempfile.TemporaryDirectory(prefix="pantheon-judge-") as tmp:
                root = await asyncio.to_thread(task.materialize, Path(tmp) / "work")
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
                        adapter=name,
                        node="codegen",
                    )
                except NodeError as exc:
                    return False, exc.message[:300]
                return True, None

    async def pair(task: CodeTask) -> None:
        nonlocal done
        try:
            (b_ok, b_err), (a_ok, a_err) = await asyncio.gather(
                side(task, None), side(task, adapter)
            )
        except (ModelServerError, PantheonError, OSError, subprocess.CalledProcessError) as exc:
            log.warning("held-out task %s left out: %s", task.run, exc)
            return
        result = TaskResult(
            run=task.run, base=b_ok, adapter=a_ok, base_error=b_err, adapter_error=a_err
        )
        results.append(result)
        done += 1
        if on_task is not None:
            on_task(result, done, len(tasks))

    await asyncio.gather(*(pair(t) for t in tasks))
    order = {t.run: i for i, t in enumerate(tasks)}
    return sorted(results, key=lambda r: order.get(r.run, 0))


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

    gate = asyncio.Semaphore(max(1, parallel))
    done = 0
    results: list[TaskResult] = []

    async def side(messages: list[Any], label: bool, name: str | None) -> tuple[bool, str | None]:
        async with gate:
            try:
                verdict = await ask(
                    llm, messages, output, max_tokens=max_tokens, adapter=name, temperature=0.0
                )
            except ReplyError as exc:
                return False, f"no usable verdict: {exc.message}"[:300]
        got = bool(getattr(verdict, "passed", not label))
        return got is label, None if got is label else f"said {'pass' if got else 'fail'}"

    async def pair(i: int, example: dict[str, Any]) -> None:
        nonlocal done
        messages, label = example["messages"][:-1], bool(example["label"])
        try:
            (b_ok, b_err), (a_ok, a_err) = await asyncio.gather(
                side(messages, label, None), side(messages, label, adapter)
            )
        except ModelServerError as exc:
            log.warning("held-out example %s left out: %s", example.get("run"), exc)
            return
        run = f"{example.get('run')}/{example.get('node')}#{i}"
        result = TaskResult(run=run, base=b_ok, adapter=a_ok, base_error=b_err, adapter_error=a_err)
        results.append(result)
        done += 1
        if on_task is not None:
            on_task(result, done, len(examples))

    await asyncio.gather(*(pair(i, e) for i, e in enumerate(examples)))
    return sorted(results, key=lambda r: r.run)
