"""Where a failing test's bug most likely is: spectrum-based fault localization.

Every line of the repository's non-test code is scored by the tests that ran it
(:class:`~pantheon.core.work.suite.CoverageMap`) with the Ochiai measure,

    score = failed(line) / sqrt(failed_total * (failed(line) + passed(line)))

— high for lines that the failing tests run and few passing tests do. A function's score is
its best line's; functions are ranked by score, then by how many failing tests ran them, then
by the traceback (a function a failing test's traceback passes through comes first, the
deepest frame before the others). Lines outside any function count for their class, or for the
module (``<module>``).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pantheon.core.work.suite import CoverageMap

__all__ = ["HOT_LINES_KEPT", "Suspect", "code_units", "rank_suspects", "traceback_frames"]

HOT_LINES_KEPT = 8


@dataclass(frozen=True, slots=True)
class Suspect:
    path: str
    """The file, relative to the repository."""
    name: str
    """``function``, ``Class.method``, ``Class`` (its body) or ``<module>``."""
    start: int
    """Its first line (decorators included)."""
    end: int
    score: float
    """Ochiai: 1.0 when only failing tests ran its best line, and all of them did."""
    failing: int
    """The failing tests that ran it."""
    lines: tuple[int, ...] = ()
    """Its lines that score its best score, first in the file first (none when more than
    :data:`HOT_LINES_KEPT` tie): where in it the failing tests part from the passing ones."""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def code_units(source: str) -> list[tuple[str, int, int]]:
    """Every function and class of ``source`` with its qualified name and line span, outermost
    first (SyntaxError when it does not parse)."""
    tree = ast.parse(source)
    out: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                out.append((name, first, child.end_lineno or child.lineno))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _unit_of(units: list[tuple[str, int, int]], line: int) -> tuple[str, int, int] | None:
    """The innermost unit whose span holds ``line``."""
    best = None
    for unit in units:
        if unit[1] <= line <= unit[2] and (best is None or unit[1] >= best[1]):
            best = unit
    return best


_FRAME = re.compile(r'^(?:  File "([^"]+)", line (\d+)|([^\s:][^:\n]*\.py):(\d+)(?::|$))', re.M)


def traceback_frames(text: str, repo: Path) -> list[tuple[str, int]]:
    """The (relative path, line) frames of a failure's text that are in ``repo``, in order."""
    out = []
    for m in _FRAME.finditer(text):
        raw, line = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        path = Path(raw)
        path = path if path.is_absolute() else repo / path
        try:
            rel = path.resolve().relative_to(repo).as_posix()
        except (ValueError, OSError):
            continue
        out.append((rel, int(line)))
    return out


def _hot(scores: dict[int, float], top: float) -> tuple[int, ...]:
    """The lines that score ``top``, first in the file first; none when more than
    :data:`HOT_LINES_KEPT` do (they then say little about where the bug is)."""
    hot = sorted(line for line, score in scores.items() if score >= top - 1e-9)
    return tuple(hot) if len(hot) <= HOT_LINES_KEPT else ()


def rank_suspects(
    coverage: CoverageMap,
    failing: Collection[str],
    passing: Collection[str],
    *,
    repo: Path,
    frames: Sequence[tuple[str, int]] = (),
    also_failing: Collection[str] = (),
) -> list[Suspect]:
    """The functions ``failing`` ran, most suspicious first (none when they ran no code of the
    repository outside its tests). ``also_failing``: other failing tests counted as failing in
    the score (the lines ranked are still only those ``failing`` ran)."""
    mine = set(failing)
    failing, passing = mine | set(also_failing), set(passing)
    if not mine:
        return []
    best: dict[tuple[str, str], list] = {}
    units_of: dict[str, list[tuple[str, int, int]]] = {}
    for path, by_line in coverage.lines.items():
        for line, tests in by_line.items():
            if not tests & mine:
                continue
            ef = len(tests & failing)
            ep = len(tests & passing)
            score = ef / math.sqrt(len(failing) * (ef + ep))
            if path not in units_of:
                try:
                    units_of[path] = code_units((repo / path).read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                    units_of[path] = []
            unit = _unit_of(units_of[path], line) or ("<module>", 1, line)
            key = (path, unit[0])
            seen = best.get(key)
            if seen is None:
                best[key] = seen = [unit, score, ef, {}]
            else:
                if unit[0] == "<module>":
                    seen[0] = ("<module>", min(seen[0][1], line), max(seen[0][2], line))
                seen[1] = max(seen[1], score)
                seen[2] = max(seen[2], ef)
            seen[3][line] = score
    depth: dict[tuple[str, str], int] = {}
    for n, (path, line) in enumerate(frames):
        unit = _unit_of(units_of.get(path, []), line)
        if unit is not None:
            depth[(path, unit[0])] = n + 1  # deeper frames come later in a traceback
    suspects = [
        Suspect(path, unit[0], unit[1], unit[2], round(score, 4), ef, _hot(scores, score))
        for (path, _), (unit, score, ef, scores) in best.items()
    ]
    suspects.sort(
        key=lambda s: (-s.score, -s.failing, -depth.get((s.path, s.name), 0), s.path, s.start)
    )
    return suspects
