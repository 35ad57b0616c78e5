"""Concurrency from the server's own curve (``--concurrency auto``).

:class:`ConcurrencyTuner` measures the night's throughput — generated tokens per second, and
jobs per second beside it — at one concurrency c at a time, while every one of the c workers is
busy (a measurement of an idle engine says nothing of the server), after a few seconds of
settling at each new c (its new jobs' prompts are read first, and the decode waits), and
climbs: c is doubled while a doubling pays at least ``gain`` more tokens/s; when one does not,
the c halfway between is tried once, and the tuner settles on the smallest c within ``gain`` of
the best it measured. It never goes above the server's slots (more only queues at the server).

The operator's word wins: once the concurrency in ``control.json`` is not the one the tuner set
(``+`` / ``-`` in the console, ``pantheon control --concurrency``), the tuner stops for the rest
of the night and says so.

The tuner is pure arithmetic over the figures it is given; the engine feeds it at each metrics
sample and writes the c it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ConcurrencyTuner", "Level"]

Phase = Literal["measuring", "settled", "operator"]


@dataclass
class Level:
    """What one concurrency gave while all its workers were busy."""

    c: int
    seconds: float = 0.0
    tokens: int = 0
    jobs: int = 0
    settling: float = 0.0
    """Busy seconds at c not counted yet: the first ones after c changed."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ConcurrencyTuner:
    start: int = 2
    ceiling: int | None = None
    """The server's slots (None: unknown, no bound but ``limit``)."""
    period_s: float = 30.0
    """Busy seconds measured at each c."""
    min_tokens: int = 200
    """Generated tokens a measurement needs, however long it took."""
    settle_s: float = 8.0
    """Busy seconds left out after each change of c: the new jobs' prompts are read first, and
    while they are, the decode of every slot waits (a higher c measures a dip, then its rate)."""
    gain: float = 0.10
    """A higher c must pay this much more tokens/s to be worth it."""
    limit: int = 64
    levels: dict[int, Level] = field(default_factory=dict)
    phase: Phase = "measuring"
    c: int | None = None
    """The concurrency the tuner set last (None before its first step)."""
    note: str = ""
    _mark: tuple[float, int, int] | None = None

    def __post_init__(self) -> None:
        self.start = max(1, min(self.start, self._top()))

    def _top(self) -> int:
        return max(1, min(self.limit, self.ceiling or self.limit))

    def step(
        self, now: float, *, concurrency: int, tokens: int, jobs: int, busy: bool
    ) -> int | None:
        """One look at the night: ``concurrency`` is what control.json says now, ``tokens``
        and ``jobs`` the totals generated and finished so far, ``busy`` whether every worker
        had a job since the last look. Returns the c to set, or None to leave it."""
        if self.phase == "operator":
            return None
        if self.c is None:
            self.c = self.start
            self._mark = (now, tokens, jobs)
            self.note = f"measuring c={self.c}"
            return self.c if self.c != concurrency else None
        if concurrency != self.c:
            self.phase = "operator"
            self.note = f"the operator set c={concurrency}: auto stops for this night"
            return None
        assert self._mark is not None
        at, tok0, jobs0 = self._mark
        self._mark = (now, tokens, jobs)
        if self.phase == "settled":
            return None
        if not busy:  # an engine with idle workers measures its queue, not the server
            return None
        level = self.levels.setdefault(self.c, Level(self.c))
        if level.settling < self.settle_s:
            level.settling += max(0.0, now - at)
            return None
        level.seconds += max(0.0, now - at)
        level.tokens += max(0, tokens - tok0)
        level.jobs += max(0, jobs - jobs0)
        if level.seconds < self.period_s or level.tokens < self.min_tokens:
            return None
        return self._decide()

    def _worth(self, c: int) -> float:
        return self.levels[c].tokens_per_s

    def _decide(self) -> int | None:
        assert self.c is not None
        measured = sorted(self.levels)
        best = max(measured, key=self._worth)
        # the smallest c within `gain` of the best: more concurrency that does not pay is
        # only latency and memory
        good = min(c for c in measured if self._worth(c) * (1 + self.gain) >= self._worth(best))
        top = self._top()
        nxt: int | None = None
        if good == max(measured) and good < top:
            nxt = min(good * 2, top)  # the highest c still paid: climb
        else:
            above = [c for c in measured if c > good]
            if above and above[0] - good > 1:
                mid = (good + above[0]) // 2
                if mid not in self.levels:
                    nxt = mid  # the knee lies between: look once halfway
        if nxt is None or nxt in self.levels:
            self.phase = "settled"
            self.note = f"settled on c={good}" + (
                f" (the server's {self.ceiling} slots)" if good == self.ceiling else ""
            )
            if good == self.c:
                return None
            self.c = good
            return good
        self.c = nxt
        self.note = f"measuring c={nxt}"
        return nxt

    def figures(self) -> dict[str, Any]:
        """For the metrics sample: the phase, the c set, and the curve measured so far."""
        return {
            "phase": self.phase,
            "c": self.c,
            "note": self.note,
            "curve": [
                {
                    "c": lv.c,
                    "tokens_per_s": round(lv.tokens_per_s, 2),
                    "jobs_per_s": round(lv.jobs_per_s, 4),
                    "seconds": round(lv.seconds, 1),
                }
                for _, lv in sorted(self.levels.items())
            ],
        }
