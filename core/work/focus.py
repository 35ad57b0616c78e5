"""A long file shown in focus: its outline, and the functions the failing tests point at.

A small model fixes a small file best when it sees it whole and gives it back whole
(:mod:`pantheon.core.work.codefix`). A module of a real library is often ten times the size a
4 096-token context holds twice. Past :data:`WHOLE_FILE_CHARS`, the prompt shows instead the
file's outline (its imports, classes and function signatures) and the most suspicious functions
by spectrum-based fault localization (:mod:`pantheon.core.work.localize`: the job's
``suspects``), and the reply gives back only those functions
(:func:`pantheon.core.work.edits.apply_functions`) — so a module of any size fits both ways.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pantheon.core.model.client import Message
from pantheon.core.work.localize import HOT_LINES_KEPT, code_units

__all__ = [
    "FOCUS_SYSTEM",
    "WHOLE_FILE_CHARS",
    "Focus",
    "focus_of",
    "focus_prompt",
    "hot_lines_text",
]

WHOLE_FILE_CHARS = 6000
"""Files up to this size are shown and asked back whole (about 1 700 tokens of code)."""
SHOWN_MOST = 3
"""Suspect functions shown at most."""
OUTLINE_LINES = 80

FOCUS_SYSTEM = (
    "You fix bugs in Python code. You are shown a task, the outline of a long file, the "
    "functions of it most likely to hold the bug, and the output of its failing tests. Find "
    "the bug and reply with the corrected function or functions, each whole and with its "
    "name unchanged, in one ```python code block, and nothing else. Change only what the fix "
    "needs, and never change the tests."
)


@dataclass(frozen=True)
class Focus:
    shown: list[tuple[str, int, int]]
    """The functions shown, each (qualified name, first line, last line), most suspicious
    first."""
    outline: str
    code: str
    """Their source, each headed by its place in the file."""


def _functions(source: str) -> dict[str, tuple[int, int]]:
    tree = ast.parse(source)
    spans = {name: (a, b) for name, a, b in code_units(source)}
    # a unit whose last part names a class is no function
    classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    return {n: span for n, span in spans.items() if n.rsplit(".", 1)[-1] not in classes}


def _outline(source: str, shown: set[str]) -> str:
    """Imports, class headers and function signatures, indented as in the file; past
    :data:`OUTLINE_LINES`, the signatures far from the shown functions are left out, each run
    of them said in one line."""
    lines = source.splitlines()
    entries: list[tuple[str, bool]] = []  # (text, kept whatever the length)
    for name, first, _ in code_units(source):
        head = first
        while head <= len(lines) and lines[head - 1].lstrip().startswith("@"):
            head += 1
        text = lines[head - 1].rstrip() if head <= len(lines) else ""
        mark = "  # shown below" if name in shown else ""
        entries.append((f"{text}{' ...' if text.endswith(':') else ''}{mark}", bool(mark)))
    near = {i + d for i, (_, mark) in enumerate(entries) if mark for d in range(-3, 4)} | {
        i for i, (text, _) in enumerate(entries) if text.lstrip().startswith("class ")
    }
    budget = OUTLINE_LINES - len(near)
    keep = [i in near or (budget := budget - 1) >= 0 for i in range(len(entries))]
    out: list[str] = []
    left = 0
    for (text, _), kept in zip(entries, keep, strict=True):
        if kept:
            if left:
                out.append(f"# ... {left} more definition(s)")
                left = 0
            out.append(text)
        else:
            left += 1
    if left:
        out.append(f"# ... {left} more definition(s)")
    imports = [
        line
        for line in lines
        if line.startswith("import ") or (line.startswith("from ") and " import " in line)
    ]
    return "\n".join([*imports, *([""] if imports else []), *out])


def focus_of(
    source: str,
    path: str,
    suspects: Sequence[Mapping[str, object]],
    *,
    whole_file_chars: int = WHOLE_FILE_CHARS,
) -> Focus | None:
    """The focused view of ``source`` (the file ``path``), or None when it is shown whole: it
    is small enough, it does not parse, or no suspect is a function of it."""
    if len(source) <= whole_file_chars:
        return None
    try:
        functions = _functions(source)
    except SyntaxError:
        return None
    names = [str(s.get("name")) for s in suspects if s.get("path") == path]
    names = list(dict.fromkeys(n for n in names if n in functions))
    if not names:
        return None
    lines = source.splitlines()
    shown: list[tuple[str, int, int]] = []
    size = 0
    for name in names[:SHOWN_MOST]:
        first, last = functions[name]
        chars = sum(len(line) + 1 for line in lines[first - 1 : last])
        if shown and size + chars > whole_file_chars:
            break
        shown.append((name, first, last))
        size += chars
    code = "\n\n".join(
        f"# {path}, lines {a}-{b}\n" + "\n".join(lines[a - 1 : b]) for _, a, b in shown
    )
    return Focus(shown, _outline(source, {n for n, _, _ in shown}), code)


def hot_lines_text(
    source: str,
    path: str,
    suspects: Sequence[Mapping[str, object]],
    *,
    names: Sequence[str] | None = None,
    most: int = HOT_LINES_KEPT,
) -> str:
    """The lines of ``path`` where the failing tests part from the passing ones (each
    suspect's ``lines``), quoted with their numbers, for the prompt; "" when the suspects name
    none or more than ``most``. ``names``: only these suspects (default: the first
    :data:`SHOWN_MOST` of ``path``)."""
    mine = [s for s in suspects if s.get("path") == path]
    mine = mine[:SHOWN_MOST] if names is None else [s for s in mine if s.get("name") in names]
    numbers = sorted({int(n) for s in mine for n in (s.get("lines") or ())})  # type: ignore[union-attr]
    text = source.splitlines()
    numbers = [n for n in numbers if 1 <= n <= len(text)]
    if not numbers or len(numbers) > most:
        return ""
    width = len(str(numbers[-1]))
    quoted = "\n".join(f"{n:>{width}} | {text[n - 1].rstrip()}" for n in numbers)
    return (
        "The lines the failing tests run and the passing tests rarely do (the bug is often on "
        f"one of them, or on the line that decides whether they run):\n```\n{quoted}\n```\n\n"
    )


def focus_prompt(
    focus: Focus, *, task: str, path: str, lines: int, failure: str, hint: str = ""
) -> list[Message]:
    """The one prompt of a focused fix (``hint``: :func:`hot_lines_text`, or "")."""
    names = ", ".join(f"`{n}`" for n, _, _ in focus.shown)
    user = (
        f"Task: {task}\n\n"
        f"The file to fix, {path}, is {lines} lines long. Its outline:\n"
        f"```python\n{focus.outline}\n```\n\n"
        "The functions its failing tests run that its passing tests rarely do, most "
        f"suspicious first:\n```python\n{focus.code}\n```\n\n"
        f"{hint}"
        f"Its tests fail:\n```\n{failure}\n```\n\n"
        f"Reply with the corrected function(s) of {names} in one ```python block: only the "
        "function(s) you change, each whole."
    )
    return [{"role": "system", "content": FOCUS_SYSTEM}, {"role": "user", "content": user}]
