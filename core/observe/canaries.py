"""The canaries' record and scores: how often each reviewer, and the gate, caught the defects
planted by :mod:`pantheon.core.work.canary` (``artifacts/canaries.jsonl``, one line each)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pantheon.core.observe.queuemath import wilson_interval
from pantheon.core.store.atomic import append_line
from pantheon.core.store.jsonl import read_jsonl
from pantheon.core.store.layout import canaries_path

__all__ = [
    "DOCS_DEFECTS",
    "canaries_path",
    "canary_scores",
    "canary_text",
    "change_of_canary",
    "read_canaries",
    "record_canary",
]


def record_canary(artifacts: Path, record: dict[str, Any]) -> None:
    append_line(canaries_path(artifacts), json.dumps(record, sort_keys=True))


def read_canaries(artifacts: Path) -> list[dict[str, Any]]:
    """Every canary of the artifacts directory; a corrupt line is skipped, never fatal."""
    try:
        records, _ = read_jsonl(canaries_path(artifacts), check=_judged)
    except OSError:
        return []
    return records


def _judged(record: dict[str, Any]) -> str | None:
    return None if isinstance(record.get("verdicts"), dict) else "has no verdicts"


DOCS_DEFECTS = frozenset({"other_page", "cut", "copied"})
"""The planted defects of a docs change (the rest are of a code change)."""


def change_of_canary(record: dict[str, Any]) -> str:
    """``code`` or ``docs``: the kind of change a canary was planted in (records written before
    they said so are told by their defect)."""
    change = record.get("change")
    if change in ("code", "docs"):
        return change
    return "docs" if record.get("kind") in DOCS_DEFECTS else "code"


def _share(caught: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(caught, n)
    return {
        "n": n,
        "caught": caught,
        "missed": n - caught,
        "share": round(caught / n, 4) if n else None,
        "ci95": [round(lo, 4), round(hi, 4)] if n else None,
    }


def canary_scores(records: list[dict[str, Any]], *, window: int | None = None) -> dict[str, Any]:
    """Each reviewer's catch share over the canaries that passed the deterministic gates (the
    right verdict of each is a fail), and the gate's: a canary is caught when any reviewer
    failed it (a reviewer that gave no usable verdict stops the change too). Canaries the gates
    stopped before any review are counted apart (``stopped``): a reviewer never sees such a
    change. Wilson 95 % intervals."""
    if window is not None:
        records = records[-window:]
    stopped = sum(1 for rec in records if not rec["verdicts"])
    records = [rec for rec in records if rec["verdicts"]]
    reviewers: dict[str, list[int]] = {}
    errors: dict[str, int] = {}
    kinds: dict[str, list[int]] = {}
    changes: dict[str, list[int]] = {}
    gate = 0
    for rec in records:
        verdicts = rec["verdicts"]
        caught_any = False
        for node, verdict in sorted(verdicts.items()):
            passed = verdict.get("passed") if isinstance(verdict, dict) else None
            if passed is None:
                errors[node] = errors.get(node, 0) + 1
                caught_any = True
                continue
            tally = reviewers.setdefault(node, [0, 0])
            tally[1] += 1
            if passed is False:
                tally[0] += 1
                caught_any = True
        gate += caught_any
        k = kinds.setdefault(str(rec.get("kind")), [0, 0])
        k[0] += caught_any
        k[1] += 1
        c = changes.setdefault(change_of_canary(rec), [0, 0])
        c[0] += caught_any
        c[1] += 1
    return {
        **_share(gate, len(records)),
        "reviewers": {
            node: {**_share(*reviewers.get(node, [0, 0])), "errors": errors.get(node, 0)}
            for node in sorted({*reviewers, *errors})
        },
        "by_kind": {kind: _share(c, n) for kind, (c, n) in sorted(kinds.items())},
        "by_change": {change: _share(c, n) for change, (c, n) in sorted(changes.items())},
        "stopped": stopped,
    }


def canary_text(scores: dict[str, Any] | None) -> str:
    """The canaries in one line: what the gate caught, with its interval, and each reviewer."""
    n = (scores or {}).get("n") or 0
    stopped = (scores or {}).get("stopped") or 0
    gates = f"{stopped} more stopped by the gates before any review" if stopped else ""
    if not n:
        return gates or "none planted yet"
    assert scores is not None
    lo, hi = scores["ci95"]
    each = ", ".join(
        f"{node} {r['caught']}/{r['n']}" + (f" ({r['errors']} no verdict)" if r["errors"] else "")
        for node, r in scores["reviewers"].items()
    )
    return (
        f"{scores['caught']} of {n} caught ({scores['share']:.0%}, 95% CI {lo * 100:.0f}–{hi:.0%})"
        + (f"; {each}" if each else "")
        + (f"; {gates}" if gates else "")
    )
