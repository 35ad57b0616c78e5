"""A model's reply turned into a changed file, or a clear reason why it gives none.

Three forms, each one code models are trained on:

- **whole file** (:attr:`FixForm.WHOLE_FILE`): one fenced ``python`` block with the corrected
  file — or only the corrected top-level functions, each replacing the one of its name;
- **SEARCH/REPLACE** blocks (:attr:`FixForm.SEARCH_REPLACE`), matched exactly, else line by
  line ignoring trailing spaces;
- **functions** (:func:`apply_functions`): the corrected functions or methods that a focused
  prompt showed (:mod:`pantheon.core.work.focus`), each put back in place at its indentation,
  so a module of any size is never asked back whole.
"""

from __future__ import annotations

import ast
import difflib
import re
import textwrap
from collections.abc import Sequence
from enum import StrEnum

__all__ = [
    "CandidateError",
    "FixForm",
    "apply_functions",
    "apply_reply",
    "diff_size",
    "file_diff",
    "python_blocks",
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


def python_blocks(reply: str) -> list[str]:
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
        blocks = python_blocks(reply)
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
        _parses(fixed)
    return _changed(fixed, original)


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


def file_diff(path: str, before: str, after: str, limit: int = 4000) -> str:
    """A change of one file as ``git diff`` shows it (cut at ``limit`` characters, and said so);
    empty when nothing changed."""
    body = "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{path}",
            tofile=f"b/{path}",
        )
    )
    if not body:
        return ""
    diff = f"diff --git a/{path} b/{path}\n{body}"
    return diff if len(diff) <= limit else diff[:limit] + "\n[… the diff goes on]\n"


def _defs(tree: ast.Module) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Every function of a reply by its bare name (a method inside a class too)."""
    out: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.setdefault(node.name, node)
    return out


def apply_functions(reply: str, original: str, shown: Sequence[tuple[str, int, int]]) -> str:
    """The file with each ``shown`` function (qualified name, first and last line) replaced by
    the reply's function of the same name, at the original's indentation."""
    if not reply.strip():
        raise CandidateError("the reply is empty")
    blocks = python_blocks(reply)
    if not blocks:
        raise CandidateError("the reply has no ```python code block")
    block = max(blocks, key=len)
    try:
        tree = ast.parse(textwrap.dedent(block))
    except SyntaxError as exc:
        raise CandidateError(f"the code does not parse: line {exc.lineno}: {exc.msg}") from None
    block = textwrap.dedent(block)
    given = _defs(tree)
    lines = original.splitlines(keepends=True)
    spans = []
    for name, first, last in shown:
        new = given.get(name.rsplit(".", 1)[-1])
        if new is None:
            continue
        start = min([new.lineno] + [d.lineno for d in new.decorator_list])
        text = "".join(block.splitlines(keepends=True)[start - 1 : new.end_lineno])
        text = textwrap.dedent(text)
        old = lines[first - 1]
        indent = old[: len(old) - len(old.lstrip())]
        spans.append((first, last, textwrap.indent(text.rstrip("\n") + "\n", indent)))
    if not spans:
        names = ", ".join(sorted(given)) or "no function"
        wanted = ", ".join(name for name, _, _ in shown)
        raise CandidateError(f"the reply defines {names}, none of the shown ({wanted})")
    for first, last, text in sorted(spans, reverse=True):
        lines[first - 1 : last] = [text]
    fixed = "".join(lines)
    _parses(fixed)
    return _changed(fixed, original)


def _parses(fixed: str) -> None:
    try:
        ast.parse(fixed)
    except SyntaxError as exc:
        raise CandidateError(
            f"the file does not parse after the change: line {exc.lineno}: {exc.msg}"
        ) from None


def _changed(fixed: str, original: str) -> str:
    if fixed.rstrip() == original.rstrip():
        raise CandidateError("the reply changes nothing")
    return fixed
