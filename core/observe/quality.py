"""How much a scorer knows: AUROC with its confidence interval, and the threshold that lets a
chosen share of defects through.

A reviewer's scores on labelled changes — good ones (real fixes, right descriptions) and bad
ones (planted defects) — say how well it tells them apart, whatever threshold it is later run
at: AUROC is the probability that a good change scores above a bad one (ties count half). Its
95 % interval is Hanley and McNeil's (1982). A scorer whose interval holds 0.5 carries no
measured information, and is to be shown as such.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from pantheon.core.errors import ArtifactError
from pantheon.core.store.atomic import atomic_write_json

__all__ = [
    "CALIBRATION_FILE",
    "Calibration",
    "Quality",
    "Threshold",
    "auroc",
    "blind_gates",
    "calibration_figures",
    "calibration_path",
    "calibration_text",
    "fit_threshold",
    "latest_calibrations",
    "quality",
    "read_calibration",
    "write_calibration",
]


def auroc(good: Sequence[float], bad: Sequence[float]) -> float:
    """P(a good change scores above a bad one), ties counted half (the Mann-Whitney U over
    the product of the two counts). ValueError when either side is empty."""
    if not good or not bad:
        raise ValueError("AUROC needs scores of both good and bad changes")
    wins = 0.0
    for g in good:
        for b in bad:
            wins += 1.0 if g > b else 0.5 if g == b else 0.0
    return wins / (len(good) * len(bad))


@dataclass(frozen=True, slots=True)
class Quality:
    auroc: float
    low: float
    high: float
    good: int
    bad: int

    @property
    def informative(self) -> bool:
        """Whether the interval leaves 0.5 out: the scores tell good from bad beyond chance."""
        return self.low > 0.5 or self.high < 0.5

    def describe(self) -> str:
        text = (
            f"AUROC {self.auroc:.2f} (95% CI {self.low:.2f}–{self.high:.2f}; "
            f"{self.good} good, {self.bad} bad)"
        )
        return text if self.informative else f"{text}: no information (the interval holds 0.5)"


def quality(good: Sequence[float], bad: Sequence[float], z: float = 1.959964) -> Quality:
    """AUROC and its Hanley–McNeil interval, clipped to [0, 1]. At an AUROC of exactly 0 or 1
    the variance is taken half a pair in from the edge, so a perfect score on a few changes
    still has the width its counts deserve."""
    found = auroc(good, bad)
    n_good, n_bad = len(good), len(bad)
    edge = 0.5 / (n_good * n_bad)
    a = min(max(found, edge), 1 - edge)
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_good - 1) * (q1 - a * a) + (n_bad - 1) * (q2 - a * a)) / (
        n_good * n_bad
    )
    half = z * math.sqrt(max(var, 0.0))
    return Quality(found, max(0.0, found - half), min(1.0, found + half), n_good, n_bad)


@dataclass(frozen=True, slots=True)
class Threshold:
    value: float
    """Pass a change when its score is at least this."""
    defects_through: float
    """Share of the bad changes that score at or above it."""
    good_passed: float
    """Share of the good changes that score at or above it."""


def fit_threshold(
    good: Sequence[float], bad: Sequence[float], *, max_defects_through: float = 0.2
) -> Threshold:
    """The lowest threshold (so the most good changes pass) that lets at most
    ``max_defects_through`` of the bad changes through."""
    if not good or not bad:
        raise ValueError("a threshold needs scores of both good and bad changes")
    candidates = sorted({*good, *bad, math.nextafter(max(*good, *bad), math.inf)})
    for t in candidates:
        through = sum(b >= t for b in bad) / len(bad)
        if through <= max_defects_through:
            return Threshold(t, through, sum(g >= t for g in good) / len(good))
    raise AssertionError("unreachable: the last candidate lets nothing through")


class Calibration(BaseModel):
    """One reviewer's calibration on labelled changes (``ARTIFACTS/reviewers/calibration.json``
    holds a list of them): its threshold, fit on one half of the problems, and its quality,
    measured on the other half."""

    reviewer: str
    """The reviewer node (``review_a``), or ``gate`` for the two together (the lower score)."""
    kind: str
    """``code`` or ``docs``."""
    model: str
    adapter: str | None = None
    threshold: float
    max_defects_through: float
    auroc: float
    low: float
    high: float
    good: int
    bad: int
    defects_caught: float
    """Share of the held-out defects scored under the threshold."""
    good_passed: float
    """Share of the held-out good changes scored at or above it."""
    no_score: int = 0
    """Changes the model gave no verdict token for."""
    at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def informative(self) -> bool:
        return Quality(self.auroc, self.low, self.high, self.good, self.bad).informative

    def describe(self) -> str:
        q = Quality(self.auroc, self.low, self.high, self.good, self.bad).describe()
        if not self.informative:
            return q
        return (
            f"{q}; at threshold {self.threshold:.3f}: {self.defects_caught:.0%} of defects "
            f"caught, {self.good_passed:.0%} of good changes passed"
        )


CALIBRATION_FILE = Path("reviewers") / "calibration.json"


def calibration_path(artifacts: Path) -> Path:
    return Path(artifacts) / CALIBRATION_FILE


def read_calibration(artifacts: Path) -> list[Calibration]:
    """The calibrations of the artifacts directory: none when there is no file; ArtifactError
    naming the file when it cannot be read."""
    path = calibration_path(artifacts)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ArtifactError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return TypeAdapter(list[Calibration]).validate_json(text)
    except ValidationError as exc:
        raise ArtifactError(
            f"{path} is not a calibration file: {exc.errors()[0]['msg']}",
            hint="`pantheon reviewers calibrate` writes it again",
        ) from None


def write_calibration(artifacts: Path, calibrations: Sequence[Calibration]) -> Path:
    """Replace the calibrations of the same model, adapter, kind and reviewer; keep the rest."""
    path = calibration_path(artifacts)
    new = {(c.model, c.adapter, c.kind, c.reviewer) for c in calibrations}
    try:
        kept = [
            c
            for c in read_calibration(artifacts)
            if (c.model, c.adapter, c.kind, c.reviewer) not in new
        ]
    except ArtifactError:
        kept = []  # a corrupt file is replaced by what was just measured
    payload = [c.model_dump(mode="json") for c in [*kept, *calibrations]]
    atomic_write_json(path, payload)
    return path


def latest_calibrations(calibrations: Sequence[Calibration]) -> list[Calibration]:
    """The latest calibration of each kind and reviewer (whatever model it was measured on)."""
    latest: dict[tuple[str, str], Calibration] = {}
    for c in calibrations:
        key = (c.kind, c.reviewer)
        if key not in latest or c.at >= latest[key].at:
            latest[key] = c
    return [latest[key] for key in sorted(latest)]


def calibration_figures(artifacts: Path) -> list[dict[str, Any]]:
    """The latest calibrations as a metrics sample carries them (``informative`` included); an
    unreadable file gives none (``pantheon reviewers`` names the problem)."""
    try:
        found = read_calibration(artifacts)
    except ArtifactError:
        return []
    return [
        {**c.model_dump(mode="json"), "informative": c.informative}
        for c in latest_calibrations(found)
    ]


def blind_gates(figures: Sequence[dict[str, Any]], kinds: Iterable[str]) -> str | None:
    """Why the canaries of ``kinds`` say nothing the calibration did not: every one of those
    kinds has a gate calibration, and none carries information. None otherwise (a kind never
    calibrated, or a gate that is informative)."""
    gates = {f["kind"]: f for f in figures if f.get("reviewer") == "gate"}
    wanted = sorted(set(kinds))
    if not wanted or any(k not in gates or gates[k].get("informative") for k in wanted):
        return None
    return "; ".join(f"{k} gate {_auroc_text(gates[k])}" for k in wanted)


def _auroc_text(f: dict[str, Any]) -> str:
    return (
        f"AUROC {f.get('auroc', math.nan):.2f} (95% CI {f.get('low', math.nan):.2f}–"
        f"{f.get('high', math.nan):.2f}, {f.get('good', '?')} good and {f.get('bad', '?')} bad "
        "changes)"
    )


def calibration_text(figures: Sequence[dict[str, Any]]) -> str:
    """The gates' calibrations in one line, as ``pantheon status`` shows them."""
    gates = [f for f in figures if f.get("reviewer") == "gate"]
    if not gates:
        return "not calibrated (`pantheon reviewers calibrate` measures them)"
    parts = []
    for f in gates:
        said = f"{f['kind']} {_auroc_text(f)}"
        if f.get("informative"):
            said += (
                f", threshold {f['threshold']:.2f}: {f['defects_caught']:.0%} of defects caught, "
                f"{f['good_passed']:.0%} of good changes passed"
            )
        else:
            said += ": no information"
        parts.append(said)
    return "; ".join(parts)
