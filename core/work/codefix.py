"""The code-fix harness: failing tests in, a tested fix out — built for small local models.

1. **Localize before asking.** The task's tests run first; the model is shown the task, the
   failing test's output (the assertion and the traceback) and the whole file under test — one
   prompt, no exploration needed for a one-file fix. A long file is shown in focus instead: its
   outline and the functions the failing tests point at (:mod:`pantheon.core.work.focus`).
2. **The model's own formats.** The fix comes back in a form code models are trained on: the
   whole corrected file (or just the corrected function) in one fenced ``python`` block
   (``whole_file``, the default, chosen by ``bench/codefix.py``), or SEARCH/REPLACE blocks
   (``search_replace``). No code inside JSON strings.
3. **Candidates, and the tests decide.** The first candidate is greedy (temperature 0); when it
   does not pass, ``k - 1`` more are sampled in one request (OpenAI's ``n``: the server evaluates
   the prompt once and decodes them together). Each is applied in its own scratch copy of the
   worktree and the real tests run there; a passing one is kept — the smallest diff when several
   pass. A candidate whose tests pass only because it answers their cases by rote
   (:mod:`pantheon.core.work.hardcode`) does not pass. Only the file under test
   is ever written: a fix never edits a test.

Every candidate is one line of the node's ``calls.jsonl``: the messages, the raw reply, the
tokens, and its test result. Only the kept candidate has no ``error``, so the learn loop takes it
and never a failed one.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pantheon.core.errors import ModelServerError, NodeError
from pantheon.core.model.client import ChatReply, LLMClient, Message
from pantheon.core.model.safecall import CallLog, stall_fields
from pantheon.core.work.edits import (
    CandidateError,
    FixForm,
    apply_functions,
    apply_reply,
    diff_size,
    file_diff,
)
from pantheon.core.work.focus import Focus, focus_of, focus_prompt, hot_lines_text
from pantheon.core.work.hardcode import hard_coded, verdict
from pantheon.core.work.regress import scratch_copy
from pantheon.core.work.testcmd import TestCommand, TestRun

__all__ = [
    "Candidate",
    "FixForm",
    "FixResult",
    "debug_messages",
    "failure_excerpt",
    "fix_prompt",
    "run_fix",
]


SYSTEM = {
    FixForm.WHOLE_FILE: (
        "You fix bugs in Python code. You are shown a task, the file to fix and the output of "
        "its failing tests. Find the bug and reply with the whole corrected file "
        "in one ```python code block, and nothing else. Change only what the fix needs: keep the "
        "rest of the file as it is, and never change the tests."
    ),
    FixForm.SEARCH_REPLACE: (
        "You fix bugs in Python code. You are shown a task, the file to fix and the output of "
        "its failing tests. Find the bug and reply with the change as one or "
        "more SEARCH/REPLACE blocks, and nothing else:\n"
        "<<<<<<< SEARCH\n(lines copied exactly from the file)\n=======\n(the corrected "
        "lines)\n>>>>>>> REPLACE\nThe SEARCH part must match the file exactly. Change only what "
        "the fix needs, and never change the tests."
    ),
}


NAME_BUG = (
    "Before the code block, write one sentence that names the bug: what the code does wrong "
    "and where."
)


def failure_excerpt(output: str, limit: int = 3000) -> str:
    """The part of pytest's output that says what failed: the failures section, else the end."""
    text = output.strip()
    start = text.find("= FAILURES =")
    if start < 0:
        start = text.find("= ERRORS =")
    if start >= 0:
        start = text.rfind("\n", 0, start) + 1
        end = text.find("short test summary", start)
        text = text[start : end if end > 0 else None].rstrip("= \n")
    if len(text) > limit:
        text = text[: limit // 3] + "\n[...]\n" + text[-(2 * limit) // 3 :]
    return text


def fix_prompt(
    form: FixForm,
    *,
    task: str,
    path: str,
    source: str,
    failure: str,
    test_path: str | None = None,
    test: str | None = None,
    hint: str = "",
) -> list[Message]:
    """The one prompt of a fix: the task, the file to fix, its failing tests' output (and the
    test file, when asked: small models then tend to answer with the test file itself).
    ``hint``: where in the file the failing tests part from the passing ones
    (:func:`~pantheon.core.work.focus.hot_lines_text`), or ""."""
    what = (
        f"Reply with the whole corrected {path} in one ```python block."
        if form is FixForm.WHOLE_FILE
        else f"Reply with SEARCH/REPLACE blocks for {path}."
    )
    shown_test = f"The test file {test_path}:\n```python\n{test.rstrip()}\n```\n\n" if test else ""
    user = (
        f"Task: {task}\n\n"
        f"The file to fix, {path}:\n```python\n{source.rstrip()}\n```\n\n"
        f"{shown_test}"
        f"{hint}"
        f"Its tests fail:\n```\n{failure}\n```\n\n{what}"
    )
    return [{"role": "system", "content": SYSTEM[form]}, {"role": "user", "content": user}]


@dataclass
class Candidate:
    index: int
    seed: int
    temperature: float
    fixed: str | None = None
    problem: str | None = None
    passed: bool = False
    """Its tests pass and it answers no test by rote (:mod:`pantheon.core.work.hardcode`)."""
    tests_passed: bool = False
    lines: int = 0
    test_output: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    round: int = 1


@dataclass
class FixResult:
    chosen: Candidate
    candidates: list[Candidate]
    failure: str
    """The failing output the model was shown."""

    @property
    def passing(self) -> int:
        return sum(1 for c in self.candidates if c.passed)


def _base_record(
    cand: Candidate,
    llm: LLMClient,
    messages: list[Message],
    form: FixForm,
    adapter: str | None,
    n: int,
) -> dict[str, Any]:
    return {
        "kind": "candidate",
        "step": cand.index + 1,
        "candidate": cand.index,
        "form": str(form),
        "backend": str(llm.backend),
        "endpoint": llm.where,
        "adapter": adapter,
        "messages": messages,
        "seed": cand.seed,
        "temperature": cand.temperature,
        "request_n": n,
        "round": cand.round,
    }


def _take(
    cand: Candidate,
    reply: ChatReply,
    *,
    form: FixForm,
    original: str,
    path: str,
    max_tokens: int,
    focus: Focus | None,
):
    """What one reply gives: the fixed file, or the reason it gives none."""
    cand.record.update(
        endpoint=reply.endpoint or cand.record.get("endpoint"),
        model=reply.model,
        raw=reply.text,
        finish_reason=reply.finish_reason,
        prompt_tokens=reply.prompt_tokens,
        cached_tokens=reply.cached_tokens,
        completion_tokens=reply.completion_tokens,
        latency_s=round(reply.latency_s, 4),
        attempts=reply.attempts,
    )
    if reply.finish_reason == "length":
        cand.problem = f"the reply was cut at max_tokens={max_tokens}"
        return
    try:
        if focus is not None and form is FixForm.WHOLE_FILE:
            cand.fixed = apply_functions(reply.text, original, focus.shown)
        else:
            cand.fixed = apply_reply(form, reply.text, original)
    except CandidateError as exc:
        cand.problem = str(exc)
        return
    cand.lines = diff_size(original, cand.fixed)
    cand.record["diff"] = file_diff(path, original, cand.fixed)


async def run_fix(
    llm: LLMClient,
    *,
    root: Path,
    path: str,
    test_path: str,
    task: str,
    command: TestCommand,
    form: FixForm = FixForm.WHOLE_FILE,
    k: int = 8,
    temperature: float = 0.7,
    max_tokens: int = 2048,
    timeout_s: float = 60.0,
    adapter: str | None = None,
    log: CallLog | None = None,
    node: str = "codegen",
    parallel_tests: int = 2,
    before: TestRun | None = None,
    show_test: bool = False,
    suspects: Sequence[Mapping[str, object]] = (),
    rounds: int = 1,
    name_bug: bool = False,
    hot_lines: bool = False,
) -> FixResult:
    """Fix ``path`` in the worktree ``root`` until ``test_path`` passes; NodeError when no
    candidate does. The kept fix is written into ``root`` (nothing else is touched).

    A file past :data:`~pantheon.core.work.focus.WHOLE_FILE_CHARS` with ``suspects`` among
    its functions is shown in focus (its outline and those functions) and only they are asked
    back. A prompt that, with room for its reply, would not fit the server's context is never
    sent: NodeError says so.

    ``rounds=2`` spends the ``k`` candidates over two rounds: greedy and samples up to half of
    ``k``; then, when none passes, the best failing candidate goes back to the model with its own
    test output (self-debugging) and the rest are sampled from that conversation (from the first
    prompt when the conversation would not fit the server's context). ``name_bug``
    asks for one sentence naming the bug before the code. ``hot_lines`` quotes, from the
    suspects, the lines the failing tests run and the passing ones rarely do."""
    root = Path(root)
    target = root / path
    original = target.read_text(encoding="utf-8")
    test_file = root / test_path.split("::", 1)[0]
    try:
        test_source: str | None = test_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        test_source = None  # a folder or a node id's file that cannot be read: no rote check
    test = test_source if show_test else None
    before = before or await asyncio.to_thread(command.run, root, test_path, timeout_s=timeout_s)
    if before.passed:
        raise NodeError(node, f"the tests of {test_path} already pass: there is nothing to fix")
    failure = failure_excerpt(before.output)
    focus = focus_of(original, path, suspects)
    # room for the code asked back twice over and some prose; a sampled reply that rambles
    # past it is recorded as cut, never applied
    asked = len(focus.code) if focus is not None else len(original)
    max_tokens = min(max_tokens, asked // 2 + 384)
    hint = ""
    if hot_lines:
        shown = [n for n, _, _ in focus.shown] if focus is not None else None
        hint = hot_lines_text(original, path, suspects, names=shown)
    if focus is not None:
        messages = focus_prompt(
            focus,
            task=task,
            path=path,
            lines=len(original.splitlines()),
            failure=failure,
            hint=hint,
        )
    else:
        messages = fix_prompt(
            form,
            task=task,
            path=path,
            source=original,
            failure=failure,
            test_path=test_path,
            test=test,
            hint=hint,
        )
    if name_bug:
        messages[0] = {"role": "system", "content": f"{messages[0]['content']} {NAME_BUG}"}
        max_tokens += 96
    too_long = await _too_long(llm, messages, max_tokens, path=path)
    if too_long:
        raise NodeError(node, f"{too_long}: not sent")
    gate = asyncio.Semaphore(max(1, parallel_tests))
    tested: dict[str, TestRun] = {}

    async def test_one(cand: Candidate, scratch: Path) -> None:
        if cand.fixed is None:
            return
        async with gate:
            if cand.fixed in tested:
                run = tested[cand.fixed]
            else:
                work = scratch / f"c{cand.index}"
                work.mkdir()
                copy = await asyncio.to_thread(scratch_copy, root, work)
                (copy / path).write_text(cand.fixed, encoding="utf-8")
                run = await asyncio.to_thread(command.run, copy, test_path, timeout_s=timeout_s)
                tested[cand.fixed] = run
        cand.tests_passed = run.passed
        cand.test_output = run.output
        if not run.passed:
            last = [line for line in run.output.strip().splitlines() if line.strip()][-1:]
            cand.problem = "its tests fail" + (f": {last[0][:200]}" if last else "")
            return
        ok, said = verdict(hard_coded(original, cand.fixed, test_source))
        cand.passed = ok
        if not ok:
            cand.problem = f"its tests pass, but by rote: {said}"

    async def ask(cands: list[Candidate], messages: list[Message] = messages) -> None:
        """One request for the candidates: greedy alone, or the sampled ones with ``n``."""
        for c in cands:
            c.record = _base_record(c, llm, messages, form, adapter, len(cands))
        t0 = time.perf_counter()
        label = log.label if log is not None else "model call"
        waiting = log.waiting(llm.where) if log is not None else contextlib.nullcontext()
        try:
            with waiting:
                if len(cands) == 1 and cands[0].temperature == 0.0:
                    replies = [
                        await llm.chat(
                            messages,
                            temperature=0.0,
                            seed=0,
                            max_tokens=max_tokens,
                            adapter=adapter,
                            label=label,
                        )
                    ]
                else:
                    replies = await llm.chat_n(
                        messages,
                        n=len(cands),
                        temperature=cands[0].temperature,
                        seed=cands[0].seed,
                        max_tokens=max_tokens,
                        adapter=adapter,
                        label=label,
                    )
        except ModelServerError as exc:
            stall = stall_fields(exc)
            for c in cands:
                c.problem = str(exc)
                c.record.update(raw=None, latency_s=round(time.perf_counter() - t0, 4), **stall)
            raise
        for c, reply in zip(cands, replies, strict=False):
            _take(
                c, reply, form=form, original=original, path=path, max_tokens=max_tokens,
                focus=focus,
            )  # fmt: skip
        await asyncio.gather(*(test_one(c, scratch) for c in cands))

    candidates = [Candidate(0, 0, 0.0)]
    with tempfile.TemporaryDirectory(prefix="pantheon-fix-") as tmp:
        scratch = Path(tmp)
        try:
            await ask(candidates)
            first = k if rounds < 2 else max(1, (k + 1) // 2)
            if not candidates[0].passed and first > 1:
                more = [Candidate(i, i, temperature) for i in range(1, first)]
                candidates += more
                await ask(more)
            if rounds >= 2 and k > first and not any(c.passed for c in candidates):
                again = debug_messages(
                    messages, candidates, form=form, path=path, focused=focus is not None
                )
                why = await _too_long(llm, again, max_tokens, path=path)
                if why:  # the rest of the budget is sampled from the first prompt instead
                    again = messages
                turn = 1 if why else 2
                last = [Candidate(i, i, temperature, round=turn) for i in range(first, k)]
                candidates += last
                await ask(last, again)
        except ModelServerError:
            for c in candidates:
                if c.record:
                    _log(log, c, None)
            raise
    passing = [c for c in candidates if c.passed]
    chosen = min(passing, key=lambda c: (c.lines, c.index)) if passing else None
    for c in candidates:
        _log(log, c, chosen)
    if chosen is None:
        reasons = "; ".join(f"{c.index}: {c.problem}" for c in candidates)
        raise NodeError(
            node,
            f"none of the {len(candidates)} candidate fix(es) passes the tests of {test_path} "
            f"({reasons})"[:1500],
        )
    target.write_text(chosen.fixed or original, encoding="utf-8")
    return FixResult(chosen, candidates, failure)


def _passed_count(output: str) -> tuple[int, int]:
    """(tests passed, minus tests failed) from pytest's last summary line: more is closer."""
    tail = output.strip().splitlines()[-1:] or [""]
    passed = re.search(r"(\d+) passed", tail[0])
    failed = re.search(r"(\d+) (?:failed|error)", tail[0])
    return (int(passed.group(1)) if passed else 0, -(int(failed.group(1)) if failed else 0))


def debug_messages(
    messages: list[Message],
    candidates: Sequence[Candidate],
    *,
    form: FixForm,
    path: str,
    focused: bool = False,
) -> list[Message]:
    """The second round's conversation: the first prompt, the best failing candidate's reply,
    and what its tests said (or that it changed nothing, or could not be applied).

    The best is the candidate whose tests ran with most tests passing (then fewest failing, then
    the earliest); when none ran, the greedy reply and why it gave nothing to test."""
    ran = [c for c in candidates if c.test_output and c.record.get("raw")]
    if ran:
        best = max(ran, key=lambda c: (*_passed_count(c.test_output), -c.index))
        said = (
            "With this change the tests still fail:\n"
            f"```\n{failure_excerpt(best.test_output, limit=2000)}\n```\n\n"
            "Read the output, find what is still wrong, and fix it."
        )
    else:
        best = candidates[0]
        said = f"That reply gives no fix: {best.problem or 'it changes nothing'}. Fix the bug."
    if form is not FixForm.WHOLE_FILE:
        what = f"Reply with SEARCH/REPLACE blocks for {path}."
    elif focused:
        what = "Reply with the corrected function(s) in one ```python block, each whole."
    else:
        what = f"Reply with the whole corrected {path} in one ```python block."
    return [
        *messages,
        {"role": "assistant", "content": str(best.record.get("raw") or "")},
        {"role": "user", "content": f"{said} {what}"},
    ]


async def _too_long(
    llm: LLMClient, messages: list[Message], max_tokens: int, *, path: str
) -> str | None:
    """Why the prompt and the reply's room would not fit one request of the server's context
    (where the server says its context; the prompt counted by the server, else at three
    characters a token); None when they fit."""
    context = await llm.context_size()
    if context is None:
        return None
    text = "\n".join(str(m["content"]) for m in messages)
    prompt = await llm.count_tokens(text) or len(text) // 3
    if prompt + max_tokens > context:
        return (
            f"the prompt for {path} ({prompt} tokens) and room for its reply ({max_tokens}) "
            f"exceed the model's context ({context} tokens a request)"
        )
    return None


def _log(log: CallLog | None, cand: Candidate, chosen: Candidate | None) -> None:
    if log is None or not cand.record:
        return
    error = cand.record.get("error") or cand.problem
    if error is None and chosen is not None and cand is not chosen:
        error = f"passed its tests, not kept: candidate {chosen.index} is a smaller change"
    log.record(
        **cand.record,
        parsed={"lines_changed": cand.lines, "tests_passed": cand.tests_passed}
        if cand.fixed
        else None,
        error=error,
        chosen=cand is chosen,
        tests_passed=cand.tests_passed,
        test_output=cand.test_output[-2000:],
    )
