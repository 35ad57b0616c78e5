"""The shipped corpus's real fixes as a code writer's chat examples.

A night on this machine keeps a green fix every few minutes: 50 examples for ``codegen`` take
hours of code jobs. The generated code corpus (:func:`pantheon.core.run.demo.corpus_tasks`:
HumanEval's solutions, each with one classic bug) knows the right answer to each of its tasks:
the solution the bug was planted in. ``pantheon traces mine --corpus N`` turns every mutant of
``N`` of its problems into the example a code writer learns from: the prompt ``codegen`` sees for
that task in a night — the task, the file, the output of its failing tests, run for real in the
sandbox — and the reply it should give, the whole fixed file in one ``python`` block.

Nothing here is taken on trust: a mutant whose tests pass (a bug that means the same) and a fix
whose tests fail are left out, each tested as the judging tests a fix (each distinct fix once:
the mutants of one problem nearly always share it). The split is the night's,
by the file the task works on (every mutant of one problem falls on one side), so the held-out
problems the adapter is judged on (:func:`pantheon.trainer.judges.code_tasks`) are never trained
on.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pantheon.core.work.codefix import FixForm, failure_excerpt, fix_prompt
from pantheon.core.work.labelled import fixed_source, one_per_problem
from pantheon.core.work.testcmd import resolve_test_command

__all__ = ["SOURCE", "corpus_fixes"]

log = logging.getLogger(__name__)

SOURCE = "corpus (the real fix)"
"""What a corpus fix's example says it came from (``label_from`` in ``data.jsonl``)."""


def _problems(tasks: list[dict[str, str]], problems: int) -> set[str]:
    """The origins of ``problems`` HumanEval problems: the same fixed sample as the reviewers'."""
    return {t["origin"] for t in one_per_problem(tasks)[: max(0, problems)]}


def corpus_fixes(
    problems: int,
    *,
    held: Callable[[str], bool],
    workers: int = 2,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every mutant of ``problems`` corpus problems as a ``codegen`` chat example, and why any
    was left out (reason -> count). ``held(key)`` says which side of the split a task is on."""
    from pantheon.core.run.demo import corpus_tasks

    from .judges import CodeTask

    tasks = corpus_tasks()
    chosen = _problems(tasks, problems)
    groups: dict[str, list[dict[str, str]]] = {}
    for t in tasks:
        if t["origin"] in chosen:
            groups.setdefault(t["origin"], []).append(t)
    total = sum(len(g) for g in groups.values())
    done = 0
    lock = threading.Lock()

    def problem(group: list[dict[str, str]], tmp: Path) -> list[dict[str, Any] | str]:
        """Each mutant of one problem; each distinct fix tested once (they are nearly always
        one file: the solution the bugs were planted in)."""
        nonlocal done
        fixes: dict[str, bool] = {}
        out: list[dict[str, Any] | str] = []
        for t in group:
            out.append(one(t, tmp, fixes))
            with lock:
                done += 1
                if done % 50 == 0 or done == total:
                    log.info("tested %d of %d corpus mutants and their fixes", done, total)
        return out

    def one(t: dict[str, str], tmp: Path, fixes: dict[str, bool]) -> dict[str, Any] | str:
        task = CodeTask.from_corpus(t)
        path, test = task.path, task.test
        root = task.materialize(tmp / t["id"])
        command = resolve_test_command(root)
        before = command.run(root, test, timeout_s=60)
        if before.passed:
            return "the bug does not fail its tests"
        fixed = fixed_source(t)
        if fixed not in fixes:
            (root / path).write_text(fixed, encoding="utf-8")
            fixes[fixed] = command.run(root, test, timeout_s=60).passed
        if not fixes[fixed]:
            return "the real fix fails its tests"
        messages = fix_prompt(
            FixForm.WHOLE_FILE,
            task=t["task"],
            path=path,
            source=t["source"],
            failure=failure_excerpt(before.output),
            test_path=test,
        )
        reply = f"```python\n{fixed.rstrip()}\n```"
        return {
            "messages": [*messages, {"role": "assistant", "content": reply}],
            "split": "heldout" if held(task.key) else "train",
            "run": task.run,
            "key": task.key,
            "node": "codegen",
            "label_from": SOURCE,
        }

    with (
        tempfile.TemporaryDirectory(prefix="pantheon-fixes-") as tmp,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
    ):
        found = [x for g in pool.map(lambda g: problem(g, Path(tmp)), groups.values()) for x in g]
    left: dict[str, int] = {}
    out = []
    for item in found:
        if isinstance(item, str):
            left[item] = left.get(item, 0) + 1
        else:
            out.append(item)
    return out, left
