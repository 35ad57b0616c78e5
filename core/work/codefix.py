"""The code-fix harness: failing tests in, a tested fix out — built for small local models.

1. **Localize before asking.** The task's tests run first; the model is shown the task, the
   failing test's output (the assertion and the traceback), the test file and the whole file under
   test — one prompt, no exploration needed for a one-file fix.
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

import ast
import asyncio
import contextlib
import difflib
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pantheon.core.errors import ModelServerError, NodeError
from pantheon.core.model.client import ChatReply, LLMClient, Message
from pantheon.core.model.safecall import CallLog, stall_fields
from pantheon.core.work.hardcode import hard_coded, verdict
from pantheon.core.work.testcmd import TestCommand, TestRun

__all__ = [
    "Candidate",
    "FixForm",
    "FixResult",
    "apply_reply",
    "failure_excerpt",
    "fix_prompt",
    "run_fix",
]


class FixForm(StrEnum):
    WHOLE_FILE = "whole_file"
    SEARCH_REPLACE = "search_replace"


class CandidateError(Exception):
    """A reply that cannot be applied as a fix (with the reason)."""


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:\n```|\Z)", re.DOTALL)
_SEARCH_REPLACE = re.compile(
    r"<{5,9} ?SEARCH[^\n]*\n(.*?)\n?={5,9}[^\n]*\n(.*?)\n?>{5,9} ?REPLACE", re.DOTALL
)

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
) -> list[Message]:
    """The one prompt of a fix: the task, the file to fix, its failing tests' output (and the
    test file, when asked: small models then tend to answer with the test file itself)."""
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
        f"Its tests fail:\n```\n{failure}\n```\n\n{what}"
    )
    return [{"role": "system", "content": SYSTEM[form]}, {"role": "user", "content": user}]


def _python_blocks(reply: str) -> list[str]:
    return [
        body
        for lang, body in _FENCE.findall(reply)
        if lang.lower() in ("", "python", "py", "python3")
    ]


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    return {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }


def _splice(original: str, block: str) -> str:
    """A reply's code applied to the original file.

    The whole file when the block defines everything the file defines at the top level;
    otherwise each function or class of the block replaces the one of the same name (a reply
    with just the corrected function), and imports it adds go on top.
    """
    try:
        new_tree = ast.parse(block)
    except SyntaxError as exc:
        raise CandidateError(f"the code does not parse: line {exc.lineno}: {exc.msg}") from None
    old_tree = ast.parse(original)
    old_defs, new_defs = _top_level(old_tree), _top_level(new_tree)
    if not new_defs and old_defs:
        raise CandidateError("the code block defines no function of the file")
    if set(old_defs) <= set(new_defs):
        return block if block.endswith("\n") else block + "\n"
    common = [name for name in new_defs if name in old_defs]
    if not common:
        raise CandidateError(
            f"the code block defines {', '.join(sorted(new_defs))}, "
            f"none of the file's ({', '.join(sorted(old_defs))})"
        )
    lines = original.splitlines(keepends=True)
    spans = []
    for name in common:
        old = old_defs[name]
        first = min([old.lineno] + [d.lineno for d in getattr(old, "decorator_list", [])])
        spans.append(
            (
                first,
                old.end_lineno or old.lineno,
                ast.get_source_segment(block, new_defs[name], padded=False),
            )
        )
    for first, last, text in sorted(spans, reverse=True):
        lines[first - 1 : last] = [(text or "").rstrip("\n") + "\n"]
    out = "".join(lines)
    imports = [
        ast.get_source_segment(block, node)
        for node in new_tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    missing = [i for i in imports if i and i not in original]
    if missing:
        out = "\n".join(missing) + "\n" + out
    return out


def apply_reply(form: FixForm, reply: str, original: str) -> str:
    """The fixed file a reply gives, or CandidateError saying why it gives none."""
    if not reply.strip():
        raise CandidateError("the reply is empty")
    if form is FixForm.WHOLE_FILE:
        blocks = _python_blocks(reply)
        if not blocks:
            raise CandidateError("the reply has no ```python code block")
        # several blocks: the longest is the file (the others are usually a usage example)
        fixed = _splice(original, max(blocks, key=len))
    else:
        edits = _SEARCH_REPLACE.findall(reply)
        if not edits:
            raise CandidateError("the reply has no SEARCH/REPLACE block")
        fixed = original
        for search, replace in edits:
            if not search.strip():
                raise CandidateError("a SEARCH part is empty")
            count = fixed.count(search)
            if count != 1:
                # the model often drops trailing spaces or the final newline: match by lines
                hits = _line_match(fixed, search)
                if hits is None:
                    raise CandidateError(
                        f"a SEARCH part occurs {count} times in the file; it must occur once"
                    )
                a, b = hits
                fixed = fixed[:a] + replace + fixed[b:]
                continue
            fixed = fixed.replace(search, replace, 1)
        try:
            ast.parse(fixed)
        except SyntaxError as exc:
            raise CandidateError(
                f"the file does not parse after the change: line {exc.lineno}: {exc.msg}"
            ) from None
    if fixed == original or fixed.rstrip() == original.rstrip():
        raise CandidateError("the reply changes nothing")
    return fixed


def _line_match(text: str, search: str) -> tuple[int, int] | None:
    want = [line.rstrip() for line in search.strip("\n").splitlines()]
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    found = [
        i
        for i in range(len(lines) - len(want) + 1)
        if [line.rstrip() for line in lines[i : i + len(want)]] == want
    ]
    if len(found) != 1:
        return None
    i = found[0]
    end = starts[i + len(want)]
    if lines[i + len(want) - 1].endswith("\n"):
        end -= 1
    return starts[i], end


def diff_size(before: str, after: str) -> int:
    """Lines added and removed."""
    return sum(
        1
        for line in difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


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


@dataclass
class FixResult:
    chosen: Candidate
    candidates: list[Candidate]
    failure: str
    """The failing output the model was shown."""

    @property
    def passing(self) -> int:
        return sum(1 for c in self.candidates if c.passed)


def _scratch_copy(root: Path, into: Path) -> Path:
    dest = into / "work"
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(".git", "__pycache__"), symlinks=True)
    return dest


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
    }


def _take(cand: Candidate, reply: ChatReply, *, form: FixForm, original: str, max_tokens: int):
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
        cand.fixed = apply_reply(form, reply.text, original)
    except CandidateError as exc:
        cand.problem = str(exc)
        return
    cand.lines = diff_size(original, cand.fixed)


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
) -> FixResult:
    """Fix ``path`` in the worktree ``root`` until ``test_path`` passes; NodeError when no
    candidate does. The kept fix is written into ``root`` (nothing else is touched)."""
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
    # room for the whole file twice over and some prose; a sampled reply that rambles past it
    # is recorded as cut, never applied
    max_tokens = min(max_tokens, len(original) // 2 + 384)
    messages = fix_prompt(
        form,
        task=task,
        path=path,
        source=original,
        failure=failure,
        test_path=test_path,
        test=test,
    )
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
                copy = await asyncio.to_thread(_scratch_copy, root, work)
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

    async def ask(cands: list[Candidate]) -> None:
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
            _take(c, reply, form=form, original=original, max_tokens=max_tokens)
        await asyncio.gather(*(test_one(c, scratch) for c in cands))

    candidates = [Candidate(0, 0, 0.0)]
    with tempfile.TemporaryDirectory(prefix="pantheon-fix-") as tmp:
        scratch = Path(tmp)
        try:
            await ask(candidates)
            if not candidates[0].passed and k > 1:
                more = [Candidate(i, i, temperature) for i in range(1, k)]
                candidates += more
                await ask(more)
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
